//! The names this server answers to, checked on every request against DNS rebinding (a page
//! whose own name was made to resolve to 127.0.0.1 sends that name as `Host`): IP literals,
//! `localhost`, the machine's own names and `server.allowed_hosts`; others answer 421
//! `host_not_allowed`. A WebSocket upgrade (which no same-origin rule protects) whose `Origin`
//! names another host answers 403 `origin_not_allowed`; one without `Origin` (a native
//! client) is fine.

use super::codes::ErrorCode;
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
};

use axum::{
    extract::{Request, State},
    http::{
        header::{HOST, ORIGIN, UPGRADE},
        Version,
    },
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::error::ApiError;

/// The host names (lower case, without a trailing dot) accepted besides IP literals.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    names: HashSet<String>,
}

impl AllowedHosts {
    /// `localhost`, this machine's name (as `hostname` prints it, its first label, and that
    /// label under `.local`), and `configured` (`server.allowed_hosts`).
    pub fn new(configured: &[String]) -> Self {
        let machine = nix::unistd::gethostname()
            .ok()
            .map(|name| name.to_string_lossy().into_owned());
        Self::with_machine_name(machine.as_deref(), configured)
    }

    fn with_machine_name(machine: Option<&str>, configured: &[String]) -> Self {
        let mut names: HashSet<String> = HashSet::from(["localhost".to_string()]);
        if let Some(full) = machine.map(normalize).filter(|n| !n.is_empty()) {
            let label = full.split('.').next().unwrap_or_default().to_string();
            names.insert(format!("{label}.local"));
            names.insert(label);
            names.insert(full);
        }
        names.extend(
            configured
                .iter()
                .map(|n| normalize(n))
                .filter(|n| !n.is_empty()),
        );
        Self { names }
    }

    /// Whether `authority` (a host, with or without a port) names this server.
    pub fn allows(&self, authority: &str) -> bool {
        match host_of(authority) {
            Some(Host::Ip) => true,
            Some(Host::Name(name)) => self.names.contains(&normalize(name)),
            None => false,
        }
    }

    /// The refusal of a request whose `Host` (or absolute URI, or WebSocket `Origin`) does
    /// not name this server.
    fn refusal(&self, req: &Request) -> Option<ApiError> {
        let mut hosts = req.headers().get_all(HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (_, Some(_)) => return Some(missing_host("send one Host header, not several")),
            // HTTP/1.0 may omit it (no browser does); HTTP/1.1 must send it.
            (None, _) if req.version() == Version::HTTP_10 => None,
            (None, _) => return Some(missing_host("an HTTP/1.1 request must send Host")),
            (Some(value), None) => Some(value.to_str().unwrap_or_default()),
        };
        let mut named = host
            .into_iter()
            .chain(req.uri().authority().map(|a| a.as_str()));
        if let Some(bad) = named.find(|h| !self.allows(h)) {
            tracing::debug!(host = %bad.escape_debug(), "a request for another host was refused");
            return Some(ApiError::new(
                ErrorCode::HostNotAllowed,
                "this server does not answer to that Host name; use its IP address, \
                 `localhost`, its machine name, or add the name to server.allowed_hosts",
            ));
        }
        let upgrade = req
            .headers()
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("websocket"));
        let origin = req.headers().get(ORIGIN);
        if upgrade && origin.is_some_and(|o| !self.allows_origin(o.to_str().unwrap_or_default())) {
            tracing::debug!("a WebSocket upgrade from another origin was refused");
            return Some(ApiError::new(
                ErrorCode::OriginNotAllowed,
                "a WebSocket may be opened only by a page of this server (its Origin must \
                 name a host it answers to), or by a client that sends no Origin",
            ));
        }
        None
    }

    /// Whether an `Origin` (`scheme://host[:port]`) names this server; `null` does not.
    fn allows_origin(&self, origin: &str) -> bool {
        origin.split_once("://").is_some_and(|(scheme, authority)| {
            !scheme.is_empty() && !authority.contains('/') && self.allows(authority)
        })
    }
}

fn missing_host(message: &str) -> ApiError {
    ApiError::new(ErrorCode::MissingHost, message)
}

/// Lower case, without the trailing dot of a fully qualified name.
fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

enum Host<'a> {
    Ip,
    Name(&'a str),
}

/// The host of `host[:port]` or `[v6][:port]`; None when it is neither.
fn host_of(authority: &str) -> Option<Host<'_>> {
    let port_ok = |port: &str| port.is_empty() || port.parse::<u16>().is_ok();
    if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(port_ok);
        return (port_ok && v6.parse::<Ipv6Addr>().is_ok()).then_some(Host::Ip);
    }
    let (host, port) = authority.split_once(':').unwrap_or((authority, ""));
    if host.is_empty() || !port_ok(port) {
        return None;
    }
    if host.parse::<IpAddr>().is_ok() {
        return Some(Host::Ip);
    }
    let name_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    name_ok.then_some(Host::Name(host))
}

/// The layer: 421 `host_not_allowed`, 400 `missing_host` or 403 `origin_not_allowed`
/// before anything else looks at the request.
pub(super) async fn check(
    State(hosts): State<Arc<AllowedHosts>>,
    req: Request,
    next: Next,
) -> Response {
    match hosts.refusal(&req) {
        Some(refused) => refused.into_response(),
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_localhost_and_the_machines_names_are_allowed() {
        let hosts = AllowedHosts::with_machine_name(
            Some("Anas-MacBook.example.com."),
            &["tether.tail1234.ts.net".to_string()],
        );
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8787",
            "192.168.1.5:8787",
            "[::1]",
            "[::1]:8787",
            "[fe80::1]:1",
            "localhost",
            "LOCALHOST:8787",
            "localhost.:8787",
            "anas-macbook",
            "anas-macbook.local:8787",
            "Anas-MacBook.example.com",
            "tether.tail1234.ts.net:443",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:8787",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:99999",
            "127.0.0.1:port",
            "",
            ":8787",
            "local host",
        ] {
            assert!(!hosts.allows(refused), "{refused}");
        }
    }

    #[test]
    fn an_origin_names_its_host() {
        let hosts = AllowedHosts::with_machine_name(None, &[]);
        assert!(hosts.allows_origin("http://localhost:8787"));
        assert!(hosts.allows_origin("https://127.0.0.1"));
        assert!(!hosts.allows_origin("https://evil.example"));
        assert!(!hosts.allows_origin("null"));
        assert!(!hosts.allows_origin("http://localhost/path"));
    }
}
