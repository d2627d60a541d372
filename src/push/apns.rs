//! The APNs gateway: a2 with token (.p8) authentication, one shared client per environment
//! (clones share its HTTP/2 connection and its provider token), and a way to force a new
//! provider token, which a2 itself cannot do (its signer is private and renews only after
//! 55 minutes): the environment's client is built again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use a2::{Client, ClientConfig, Endpoint};

use super::gateway::{Delivery, LogGateway, PushGateway, PushRequest, SendFuture};
use crate::{
    config::{ApnsSettings, PushSettings},
    store::devices::Environment,
};

/// Apple refuses provider tokens renewed more often than every 20 minutes
/// (429 TooManyProviderTokenUpdates): a renewal asked for sooner keeps the current client.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(20 * 60);

pub struct ApnsGateway {
    /// The key and ids, or why they could not be loaded (then nothing is sent).
    credentials: Result<Credentials, String>,
    config: ClientConfig,
    /// One client per environment, built on first use and again on renewal.
    clients: Mutex<HashMap<Environment, Slot>>,
}

struct Credentials {
    /// The .p8 key (PKCS#8 PEM). Kept to build a client again; never logged.
    pem: Vec<u8>,
    key_id: String,
    team_id: String,
}

struct Slot {
    client: Client,
    /// When this client (and so its provider token) was made.
    made: Instant,
}

impl ApnsGateway {
    /// Reads the key and builds a client for each environment, which signs a first provider
    /// token: a key that cannot sign is found now. A failure is kept and reported by
    /// [`PushGateway::check`] (on `/health`); the server still starts.
    pub fn from_settings(settings: &ApnsSettings) -> Self {
        let mut gateway = Self {
            credentials: load(settings),
            config: ClientConfig {
                endpoint: Endpoint::Production,
                request_timeout_secs: Some(settings.request_timeout.as_secs().max(1)),
                pool_idle_timeout_secs: Some(settings.pool_idle_timeout.as_secs()),
            },
            clients: Mutex::new(HashMap::new()),
        };
        if gateway.credentials.is_ok() {
            for env in [Environment::Sandbox, Environment::Production] {
                if let Err(e) = gateway.client(env) {
                    gateway.credentials = Err(format!(
                        "the APNs key {} cannot sign provider tokens: {e}",
                        settings.key_path.trim()
                    ));
                    break;
                }
            }
        }
        match gateway.check() {
            Ok(()) => tracing::info!(
                key_id = %settings.key_id,
                team_id = %settings.team_id,
                topic = %settings.topic,
                "APNs gateway ready (token authentication)"
            ),
            Err(error) => {
                tracing::error!(%error, "APNs gateway cannot send; pushes wait in the outbox")
            }
        }
        gateway
    }

    /// The shared client of an environment, made if needed. Cloning it is cheap and keeps
    /// its connection and token.
    fn client(&self, env: Environment) -> Result<Client, a2::Error> {
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(slot) = clients.get(&env) {
            return Ok(slot.client.clone());
        }
        let client = self.make_client(env)?;
        clients.insert(
            env,
            Slot {
                client: client.clone(),
                made: Instant::now(),
            },
        );
        Ok(client)
    }

    fn make_client(&self, env: Environment) -> Result<Client, a2::Error> {
        let Ok(c) = &self.credentials else {
            return Err(a2::Error::InvalidCertificate);
        };
        let config = ClientConfig {
            endpoint: match env {
                Environment::Sandbox => Endpoint::Sandbox,
                Environment::Production => Endpoint::Production,
            },
            ..self.config.clone()
        };
        Client::token(c.pem.as_slice(), &c.key_id, &c.team_id, config)
    }
}

fn load(settings: &ApnsSettings) -> Result<Credentials, String> {
    let missing = [
        ("push.apns.key_id", &settings.key_id),
        ("push.apns.team_id", &settings.team_id),
    ]
    .into_iter()
    .filter(|(_, v)| v.trim().is_empty())
    .map(|(k, _)| k)
    .collect::<Vec<_>>();
    if !missing.is_empty() {
        return Err(format!(
            "push.apns.key_path is set but {} is empty",
            missing.join(" and ")
        ));
    }
    let path = crate::config::expand_home(std::path::Path::new(settings.key_path.trim()));
    let pem = std::fs::read(&path)
        .map_err(|e| format!("cannot read the APNs key {}: {e}", path.display()))?;
    if settings.topic.trim().is_empty() {
        tracing::warn!("push.apns.topic is empty: devices must register with a topic");
    }
    Ok(Credentials {
        pem,
        key_id: settings.key_id.trim().to_string(),
        team_id: settings.team_id.trim().to_string(),
    })
}

impl PushGateway for ApnsGateway {
    fn name(&self) -> &'static str {
        "apns"
    }

    fn check(&self) -> Result<(), String> {
        self.credentials.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    fn send<'a>(&'a self, request: PushRequest<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let client = self.client(request.environment)?;
            client
                .send(request.notification)
                .await
                .map(Delivery::Accepted)
        })
    }

    fn renew_token(&self, env: Environment) -> Result<(), String> {
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(slot) = clients.get(&env) {
            if slot.made.elapsed() < MIN_RENEWAL_INTERVAL {
                tracing::warn!(
                    environment = env.as_str(),
                    age_secs = slot.made.elapsed().as_secs(),
                    "APNs says the provider token expired, but it is recent: kept (check the clock)"
                );
                return Ok(());
            }
        }
        let client = self.make_client(env).map_err(|e| e.to_string())?;
        clients.insert(
            env,
            Slot {
                client,
                made: Instant::now(),
            },
        );
        tracing::info!(environment = env.as_str(), "APNs provider token renewed");
        Ok(())
    }

    fn needs_topic(&self) -> bool {
        true
    }
}

/// The gateway the settings ask for: APNs when `push.apns.key_path` is set, else the log.
pub fn gateway_from_settings(settings: &PushSettings) -> Arc<dyn PushGateway> {
    if settings.apns.key_path.trim().is_empty() {
        tracing::info!("no APNs key configured (push.apns.key_path): pushes go to the log");
        Arc::new(LogGateway)
    } else {
        Arc::new(ApnsGateway::from_settings(&settings.apns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(key_path: &str) -> ApnsSettings {
        ApnsSettings {
            key_path: key_path.into(),
            key_id: "ABC123DEFG".into(),
            team_id: "TEAM123456".into(),
            topic: "com.example.tether".into(),
            request_timeout: std::time::Duration::from_secs(20),
            pool_idle_timeout: std::time::Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn a_valid_key_makes_a_client_per_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("AuthKey.p8");
        std::fs::write(&path, crate::push::fake::throwaway_p8_key()).unwrap();
        let g = ApnsGateway::from_settings(&settings(path.to_str().unwrap()));
        assert_eq!(g.check(), Ok(()));
        assert_eq!(g.clients.lock().unwrap().len(), 2);
        assert!(g.needs_topic());
        // A renewal right after the start keeps the client (Apple would refuse it).
        let made = g.clients.lock().unwrap()[&Environment::Sandbox].made;
        g.renew_token(Environment::Sandbox).unwrap();
        assert_eq!(g.clients.lock().unwrap()[&Environment::Sandbox].made, made);
    }

    #[tokio::test]
    async fn an_unusable_key_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.p8");
        let g = ApnsGateway::from_settings(&settings(missing.to_str().unwrap()));
        let error = g.check().unwrap_err();
        assert!(error.contains("cannot read the APNs key"), "{error}");

        let garbage = dir.path().join("garbage.p8");
        std::fs::write(&garbage, "not a key").unwrap();
        let g = ApnsGateway::from_settings(&settings(garbage.to_str().unwrap()));
        let error = g.check().unwrap_err();
        assert!(error.contains("cannot sign provider tokens"), "{error}");
        // Sends fail as a configuration error, never reaching Apple.
        assert!(matches!(
            g.client(Environment::Production),
            Err(a2::Error::InvalidCertificate)
        ));

        let mut s = settings(missing.to_str().unwrap());
        s.key_id.clear();
        let error = ApnsGateway::from_settings(&s).check().unwrap_err();
        assert!(error.contains("push.apns.key_id"), "{error}");
    }
}
