//! The HTTP listener: tether's own accept loop over hyper's HTTP/1 connections, so that no
//! client can take the server from the others (a header read timeout, a connection cap that
//! makes room for newcomers, a loop that survives running out of file descriptors) and so that
//! shutdown has a hard deadline (answers 503 while draining, closes what is left after it).
//! With TLS, each connection's own task (never the accept loop) shakes hands first, within
//! the header read timeout, and hyper then reads the decrypted stream. A request's body must
//! arrive within its own time once the handler waits on it ([`ClientBody`]), and a
//! connection whose handler waits on its client for the body may be closed to make room, as
//! an idle one. Hyper answers a request head it cannot read (400, 414, 431) by itself with no
//! body; the connection's writer gives that answer the JSON error shape (`parse_errors`).
//! The cap's size is `conn_cap`'s; the head limits checked below hyper's are `head_limits`'.

use super::{
    codes::ErrorCode,
    conn_cap,
    error::ApiError,
    head_limits::HeadLimits,
    parse_errors::{bare_parse_error, json_parse_error},
};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::Request as AxumRequest,
    http::{header::CONNECTION, Extensions, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response as AxumResponse},
    Router,
};
use http_body::{Frame, SizeHint};
use hyper::{body::Incoming, server::conn::http1, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::{AbortHandle, JoinSet},
    time::Instant,
};
use tokio_rustls::TlsAcceptor;

use crate::config::Settings;

/// How long after `server.shutdown_grace` connections may still be finishing their
/// answers (a waiting chat told its turn was interrupted) before they are closed regardless.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(2);
/// Pause after accept() failed for want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) and
/// idle connections were closed to make room (the time for their sockets to be dropped), and
/// between looks for a connection to close while a newcomer waits at the cap.
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);
/// Pause after such a failure when nothing could be closed: try again later, do not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);
/// At the cap, how long a new connection may wait for another to become closable (newer
/// ones are not closed before they have been read) before it is closed itself. The loop
/// accepts nothing meanwhile; later clients wait in the listen queue.
const NEWCOMER_WAIT: Duration = Duration::from_secs(1);
/// The youngest a connection that has received nothing may be to be closed for another.
const EVICT_MIN_AGE: Duration = Duration::from_millis(500);
/// Hyper's own limit on a request's headers is this many times `server.max_headers`, so
/// that a request over the configured count reaches tether's check, which answers 431 in
/// JSON (hyper's own answer past its limit has no body).
const HEADER_COUNT_MARGIN: usize = 2;
/// At most one warning about failing accepts in this long (a flood would fill the log).
const WARN_EVERY: Duration = Duration::from_secs(5);

/// The HTTP side of shutdown, as handlers and connections see it: once started, event streams
/// end, new requests answer 503 `shutting_down`, and idle connections close.
#[derive(Clone, Debug)]
pub struct Drain {
    rx: watch::Receiver<bool>,
}

/// Starts the [`Drain`] (held by whoever waits for the shutdown signal).
#[derive(Debug)]
pub struct DrainTrigger {
    tx: watch::Sender<bool>,
}

impl Drain {
    pub fn new() -> (DrainTrigger, Drain) {
        let (tx, rx) = watch::channel(false);
        (DrainTrigger { tx }, Drain { rx })
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown has begun (never, if the trigger is dropped unused).
    pub async fn started(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl DrainTrigger {
    pub fn start(&self) {
        self.tx.send_replace(true);
    }
}

/// The bound listener and the limits it enforces.
pub struct Server {
    listener: TcpListener,
    /// Most connections open at once (`server.max_connections`, perhaps lowered for the
    /// open-file limit, and again when accept() runs out of descriptors).
    cap: usize,
    /// Descriptors to keep free when the cap has to shrink.
    reserve: usize,
    header_read_timeout: Duration,
    /// `server.body_read_timeout` and `server.body_read_timeout_anonymous`.
    body_timeouts: BodyTimeouts,
    /// `server.max_headers`, with room above it so that our own check answers in JSON
    /// (see `HEADER_COUNT_MARGIN`).
    max_headers: usize,
    /// Hyper's read buffer, room for the largest head (see [`HeadLimits`]).
    max_buf_size: usize,
    /// `server.shutdown_grace` + [`DRAIN_MARGIN`]: the longest the HTTP drain takes.
    drain_limit: Duration,
    /// HTTPS: every connection shakes hands first (`server.tls`); None for plain HTTP.
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Serves HTTPS with `tls`, plain HTTP without.
    pub fn new(listener: TcpListener, settings: &Settings, tls: Option<TlsAcceptor>) -> Self {
        let reserve = conn_cap::reserved(settings);
        let cap = conn_cap::connection_cap(settings.server.max_connections, reserve);
        Self {
            listener,
            cap,
            reserve,
            header_read_timeout: settings.server.header_read_timeout(),
            body_timeouts: BodyTimeouts {
                with_token: settings.server.body_read_timeout(),
                anonymous: settings.server.body_read_timeout_anonymous(),
            },
            max_headers: settings
                .server
                .max_headers
                .saturating_mul(HEADER_COUNT_MARGIN),
            max_buf_size: HeadLimits::hyper_buffer(&settings.server),
            drain_limit: settings.server.shutdown_grace + DRAIN_MARGIN,
            tls,
        }
    }

    /// Serves `router` until the drain has started and then either `sessions_stopped` has
    /// resolved with no request left in flight, or the drain limit has passed. Connections
    /// still open then are closed.
    pub async fn serve(
        mut self,
        router: Router,
        drain: Drain,
        sessions_stopped: impl Future<Output = ()> + Send,
    ) {
        let mut tasks = JoinSet::new();
        let mut conns = Registry::default();
        let mut sessions_stopped = std::pin::pin!(sessions_stopped);
        let mut sessions_done = false;
        let mut deadline: Option<Instant> = None;
        let mut paused_until: Option<Instant> = None;
        let mut last_warning: Option<Instant> = None;
        // A connection accepted at the cap, waiting for one to be closed for it.
        let mut newcomer: Option<(TcpStream, Instant)> = None;
        tracing::debug!(max_connections = self.cap, "accepting connections");
        loop {
            if deadline.is_some() && sessions_done && conns.none_in_flight() {
                tracing::info!(open = conns.len(), "HTTP drained");
                break;
            }
            if let Some((stream, since)) = newcomer.take() {
                if conns.len() < self.cap || conns.evict_oldest_idle() {
                    let state = Arc::new(ConnState::default());
                    let service = ConnService {
                        router: router.clone(),
                        state: state.clone(),
                        peer: stream.peer_addr().ok(),
                        body_timeouts: self.body_timeouts,
                    };
                    let limits = ConnLimits {
                        header_read_timeout: self.header_read_timeout,
                        max_headers: self.max_headers,
                        max_buf_size: self.max_buf_size,
                    };
                    let abort = tasks.spawn(serve_connection(
                        stream,
                        self.tls.clone(),
                        service,
                        limits,
                        drain.clone(),
                    ));
                    conns.add(abort, state);
                } else if since.elapsed() >= NEWCOMER_WAIT {
                    // Every connection has had a request in flight all this time (not one
                    // waiting on its client: those are bounded per owner): this one is
                    // closed, not another.
                    metrics::counter!("tether_http_connections_refused_total").increment(1);
                    tracing::debug!(
                        open = conns.len(),
                        "connection cap reached; refused a connection"
                    );
                } else {
                    // The newest connections have not been read yet; one soon will be.
                    newcomer = Some((stream, since));
                    paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                }
            }
            tokio::select! {
                Some(done) = tasks.join_next_with_id() => {
                    let task = match &done {
                        Ok((id, ())) => *id,
                        Err(e) => e.id(),
                    };
                    conns.finished(task);
                }
                () = drain.started(), if deadline.is_none() => {
                    deadline = Some(Instant::now() + self.drain_limit);
                    tracing::info!(open = conns.len(), "HTTP draining: new requests answer 503");
                }
                () = &mut sessions_stopped, if !sessions_done => sessions_done = true,
                () = sleep_until(deadline), if deadline.is_some() => {
                    tracing::warn!(
                        open = conns.len(),
                        in_flight = conns.in_flight(),
                        "shutdown grace passed; closing the connections still open"
                    );
                    break;
                }
                () = sleep_until(paused_until), if paused_until.is_some() => paused_until = None,
                accepted = self.listener.accept(), if paused_until.is_none() && newcomer.is_none() => match accepted {
                    Ok((stream, _)) => newcomer = Some((stream, Instant::now())),
                    Err(e) if is_connection_error(&e) => {
                        tracing::debug!(error = %e, "a connection failed before it was accepted");
                    }
                    Err(e) => {
                        // Out of descriptors (or memory): shrink the cap to what the process
                        // can hold beside its reserve, close idle connections to make room,
                        // and pause rather than spin on an accept that keeps failing.
                        let shrunk = conns
                            .holding()
                            .saturating_sub(self.reserve)
                            .max(conn_cap::MIN_CONNECTIONS);
                        let before = self.cap;
                        self.cap = self.cap.min(shrunk);
                        let mut evicted = 0;
                        while (evicted == 0 || conns.len() >= self.cap) && conns.evict_oldest_idle() {
                            evicted += 1;
                        }
                        let pause = if evicted > 0 { ACCEPT_PAUSE } else { ACCEPT_BACKOFF };
                        paused_until = Some(Instant::now() + pause);
                        if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                            last_warning = Some(Instant::now());
                            tracing::warn!(
                                error = %e,
                                open = conns.len(),
                                evicted,
                                max_connections = self.cap,
                                was = before,
                                "accept failed for want of resources; closed idle connections"
                            );
                        }
                    }
                },
            }
        }
        // Whatever is still open past the deadline (or idle once drained) is closed now.
        tasks.shutdown().await;
        metrics::gauge!("tether_http_connections").set(0.0);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Errors of one connection (it was gone before we took it), not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// One connection, served until it ends, is evicted (its task aborted), or shutdown closes
/// it. A connection accepted while draining answers its one request (503) and closes.
async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    service: ConnService,
    limits: ConnLimits,
    drain: Drain,
) {
    // Events are small and should not wait for more to fill a packet.
    let _ = stream.set_nodelay(true);
    let header_read_timeout = limits.header_read_timeout;
    let Some(acceptor) = tls else {
        return serve_http(stream, service, limits, drain).await;
    };
    // The handshake is bounded like a request header, and until it ends the connection
    // counts as one whose client has sent nothing yet: once older than `EVICT_MIN_AGE` it
    // may be closed to make room.
    let state = service.state.clone();
    let mut handshake = std::pin::pin!(tokio::time::timeout(
        header_read_timeout,
        acceptor.accept(stream)
    ));
    let shaken = std::future::poll_fn(|cx| {
        let shaken = handshake.as_mut().poll(cx);
        if shaken.is_pending() {
            state.polled.store(true, Ordering::SeqCst);
        }
        shaken
    })
    .await;
    let stream = match shaken {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            metrics::counter!("tether_http_tls_handshakes_failed_total").increment(1);
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics::counter!("tether_http_tls_handshakes_failed_total").increment(1);
            tracing::debug!(
                timeout = ?header_read_timeout,
                "TLS handshake not done in time; connection closed"
            );
            return;
        }
    };
    // Hyper has yet to read what may already have come after the handshake: not closable
    // until it has (as a plain connection before its first read).
    state.polled.store(false, Ordering::SeqCst);
    serve_http(stream, service, limits, drain).await
}

/// What hyper is told of a connection's limits.
#[derive(Clone, Copy)]
struct ConnLimits {
    header_read_timeout: Duration,
    /// Hyper's own count of headers, above `server.max_headers` (see `HEADER_COUNT_MARGIN`).
    max_headers: usize,
    max_buf_size: usize,
}

/// HTTP/1 on a connection (plain, or after its TLS handshake), until it ends.
async fn serve_http<S>(stream: S, service: ConnService, limits: ConnLimits, drain: Drain)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = service.state.clone();
    let mut draining = drain.is_draining();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_buf_size)
        .keep_alive(!draining);
    let stream = Counted {
        inner: stream,
        state: state.clone(),
        replacing: None,
    };
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut drain_started = std::pin::pin!(drain.started());
    let done = std::future::poll_fn(|cx| {
        if !draining && drain_started.as_mut().poll(cx).is_ready() {
            draining = true;
            // Closes it now if idle, else after the answer in progress.
            conn.as_mut().graceful_shutdown();
        }
        let done = conn.as_mut().poll(cx);
        if done.is_pending() {
            // It has read what the client sent so far: from now on, when no request is in
            // flight, it waits on its client and may be closed to make room.
            state.polled.store(true, Ordering::SeqCst);
        }
        done
    })
    .await;
    if let Err(e) = done {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The open connections, oldest first, and those closed to make room whose tasks have not
/// ended yet (their sockets are not yet released).
#[derive(Default)]
struct Registry {
    next: u64,
    by_age: BTreeMap<u64, Conn>,
    by_task: HashMap<tokio::task::Id, u64>,
    closing: HashSet<tokio::task::Id>,
}

struct Conn {
    abort: AbortHandle,
    state: Arc<ConnState>,
}

/// What the accept loop needs to know of a connection to choose one to close.
struct ConnState {
    /// Requests from the end of their header until their answer has been sent or dropped.
    in_flight: AtomicUsize,
    /// Its request's handler waits on the client for more of the body ([`ClientBody`]): as
    /// harmless to close as an idle connection.
    reading_body: AtomicBool,
    /// Its task has read what had arrived and waits for more: a connection not yet polled
    /// (a newcomer whose header is already in its socket) is never closed to make room.
    polled: AtomicBool,
    /// When it was accepted, and whether its client has sent anything (with TLS: anything
    /// past the handshake): a connection that has received nothing and is younger than
    /// `EVICT_MIN_AGE` is never closed to make room (a client writes its request just after
    /// connecting; on a loaded machine that can come after the connection was first polled).
    accepted: Instant,
    received: AtomicBool,
}

impl Default for ConnState {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            reading_body: AtomicBool::new(false),
            polled: AtomicBool::new(false),
            accepted: Instant::now(),
            received: AtomicBool::new(false),
        }
    }
}

impl ConnState {
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waiting on its client: for a request header (idle between requests, or a header that
    /// is still arriving, where a slowloris client stays), or for the body of the request in
    /// flight (where a slow-body client stays).
    fn waits_on_client(&self) -> bool {
        self.polled.load(Ordering::SeqCst)
            && (self.in_flight() == 0 || self.reading_body.load(Ordering::SeqCst))
            && (self.received.load(Ordering::SeqCst) || self.accepted.elapsed() >= EVICT_MIN_AGE)
    }
}

impl Registry {
    fn len(&self) -> usize {
        self.by_age.len()
    }

    /// Sockets held: open connections and those still closing.
    fn holding(&self) -> usize {
        self.by_age.len() + self.closing.len()
    }

    fn add(&mut self, abort: AbortHandle, state: Arc<ConnState>) {
        let id = self.next;
        self.next += 1;
        self.by_task.insert(abort.id(), id);
        self.by_age.insert(id, Conn { abort, state });
        metrics::gauge!("tether_http_connections").set(self.len() as f64);
    }

    fn finished(&mut self, task: tokio::task::Id) {
        if let Some(id) = self.by_task.remove(&task) {
            self.by_age.remove(&id);
            metrics::gauge!("tether_http_connections").set(self.len() as f64);
        } else {
            self.closing.remove(&task);
        }
    }

    fn in_flight(&self) -> usize {
        self.by_age.values().map(|c| c.state.in_flight()).sum()
    }

    fn none_in_flight(&self) -> bool {
        self.by_age.values().all(|c| c.state.in_flight() == 0)
    }

    /// Closes the oldest connection that waits on its client (for a request header, or for
    /// a body). False when there is none (every connection has a request in flight that does
    /// not wait on its client, or is brand new).
    fn evict_oldest_idle(&mut self) -> bool {
        let Some(id) = self
            .by_age
            .iter()
            .find(|(_, c)| c.state.waits_on_client())
            .map(|(id, _)| *id)
        else {
            return false;
        };
        let conn = self.by_age.remove(&id).expect("found above");
        self.by_task.remove(&conn.abort.id());
        self.closing.insert(conn.abort.id());
        conn.abort.abort();
        metrics::counter!("tether_http_connections_evicted_total").increment(1);
        metrics::gauge!("tether_http_connections").set(self.len() as f64);
        true
    }
}

/// The router as hyper calls it for one connection, counting the requests in flight there
/// (from the end of their header until their answer's body has been sent or dropped).
#[derive(Clone)]
struct ConnService {
    router: Router,
    state: Arc<ConnState>,
    /// The client's address, given to each request as [`Peer`].
    peer: Option<SocketAddr>,
    body_timeouts: BodyTimeouts,
}

/// The address a request came from (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<CountedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = InFlight::new(self.state.clone());
        let mut router = self.router.clone();
        let clock = BodyClock::default();
        let (parts, incoming) = req.into_parts();
        let body = ClientBody {
            inner: incoming,
            clock: clock.clone(),
            conn: self.state.clone(),
            timeouts: self.body_timeouts,
            deadline: None,
        };
        let mut req = Request::from_parts(parts, Body::new(body));
        req.extensions_mut().insert(clock);
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(Peer(peer));
        }
        Box::pin(async move {
            // The router is always ready (axum's `Router::poll_ready` is `Ready`).
            let res = tower_service::Service::call(&mut router, req).await?;
            Ok(res.map(|body| CountedBody {
                body,
                _guard: guard,
            }))
        })
    }
}

/// How long a request's body may take to arrive once its handler waits on it.
#[derive(Debug, Clone, Copy)]
struct BodyTimeouts {
    /// `server.body_read_timeout`: the caller showed a valid token.
    with_token: Duration,
    /// `server.body_read_timeout_anonymous`: it did not (yet), as anyone may.
    anonymous: Duration,
}

/// A request's body clock, shared by its [`ClientBody`] and the request (an extension):
/// the handler's token check marks it trusted (a longer time), and the edge reads whether it
/// ran out to answer 408.
#[derive(Debug, Clone, Default)]
pub struct BodyClock(Arc<ClockState>);

#[derive(Debug, Default)]
struct ClockState {
    trusted: AtomicBool,
    /// The time it had, once it ran out (milliseconds; 0 while it has not).
    ran_out_after_ms: std::sync::atomic::AtomicU64,
}

impl BodyClock {
    /// The request of `extensions` came with a valid token: its body gets
    /// `server.body_read_timeout` rather than the anonymous one, if its clock has not
    /// started yet (the token is read before the body).
    pub fn trust(extensions: &Extensions) {
        if let Some(clock) = extensions.get::<BodyClock>() {
            clock.0.trusted.store(true, Ordering::SeqCst);
        }
    }

    /// The time the body had, if it did not arrive within it.
    fn ran_out(&self) -> Option<Duration> {
        match self.0.ran_out_after_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// A request's body as hyper reads it from the client, with its time limit: the clock
/// starts the first time the handler waits for more, and the body must then be complete
/// within its timeout, else it ends with [`BodyTimedOut`]. While the handler waits, the
/// connection counts as one that waits on its client (closable to make room).
struct ClientBody {
    inner: Incoming,
    clock: BodyClock,
    conn: Arc<ConnState>,
    timeouts: BodyTimeouts,
    /// Set the first time the body was not ready.
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
}

/// A body that did not arrive in time (its request is answered 408 `body_timeout`).
#[derive(Debug)]
pub struct BodyTimedOut(Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body did not arrive within {:?}", self.0)
    }
}

impl std::error::Error for BodyTimedOut {}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.conn.reading_body.store(false, Ordering::SeqCst);
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let (deadline, limit) = this.deadline.get_or_insert_with(|| {
            let limit = if this.clock.0.trusted.load(Ordering::SeqCst) {
                this.timeouts.with_token
            } else {
                this.timeouts.anonymous
            };
            (Box::pin(tokio::time::sleep(limit)), limit)
        });
        if deadline.as_mut().poll(cx).is_ready() {
            this.conn.reading_body.store(false, Ordering::SeqCst);
            let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
            this.clock.0.ran_out_after_ms.store(ms, Ordering::SeqCst);
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(*limit)))));
        }
        this.conn.reading_body.store(true, Ordering::SeqCst);
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        self.conn.reading_body.store(false, Ordering::SeqCst);
    }
}

/// 408 `body_timeout` (and close) for a request whose body did not arrive in time, whatever
/// its handler made of the failed read. A layer of the router.
pub async fn answer_body_timeouts(req: AxumRequest, next: Next) -> AxumResponse {
    let clock = req.extensions().get::<BodyClock>().cloned();
    let res = next.run(req).await;
    let Some(limit) = clock.as_ref().and_then(BodyClock::ran_out) else {
        return res;
    };
    tracing::debug!(limit_secs = limit.as_secs(), "a request body was too slow");
    metrics::counter!("tether_http_body_timeouts_total").increment(1);
    let mut res = ApiError::new(
        ErrorCode::BodyTimeout,
        format!(
            "the request body did not arrive within {}s (server.body_read_timeout, or \
             server.body_read_timeout_anonymous without a valid token)",
            limit.as_secs()
        ),
    )
    .into_response();
    res.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    res
}

/// One request in flight on a connection, until dropped.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(conn: Arc<ConnState>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An answer's body that keeps its request counted as in flight until it is done.
struct CountedBody {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket (or its TLS stream, whose bytes are the requests' once decrypted),
/// noting when its client first sent something, and giving hyper's own answer to a request
/// head it could not read (see [`bare_parse_error`]) the JSON error body.
struct Counted<S> {
    inner: S,
    state: Arc<ConnState>,
    /// The JSON answer being written in place of hyper's bodiless one, and how much of it
    /// has been written.
    replacing: Option<(Vec<u8>, usize)>,
}

impl<S: AsyncWrite + Unpin> Counted<S> {
    /// Writes the JSON answer in place of `data` (hyper's bare one) when it is one, and
    /// answers for all of `data` once it is written; None when `data` is anything else.
    fn poll_replace(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Option<Poll<std::io::Result<usize>>> {
        if self.replacing.is_none() {
            let status = (self.state.in_flight() == 0)
                .then(|| bare_parse_error(data))
                .flatten()?;
            self.replacing = Some((json_parse_error(status), 0));
        }
        let (answer, written) = self.replacing.as_mut()?;
        while *written < answer.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => {
                    return Some(Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => return Some(Poll::Pending),
            }
        }
        self.replacing = None;
        Some(Poll::Ready(Ok(data.len())))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.received.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(replaced) = self.poll_replace(cx, data) {
            return replaced;
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // Hyper's bare answer is one buffer (its head).
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next()) {
            if let Some(replaced) = self.poll_replace(cx, only) {
                return replaced;
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_starts_once_and_is_seen_by_every_clone() {
        let (trigger, drain) = Drain::new();
        let other = drain.clone();
        assert!(!other.is_draining());
        let waiting = tokio::spawn(async move { other.started().await });
        trigger.start();
        waiting.await.unwrap();
        assert!(drain.is_draining());
        drain.started().await; // already started: resolves at once
    }
}
