//! A scripted [`PushGateway`] for tests (a2 can only talk to Apple): per device token, the
//! answers to give, in order, each the very value a2 returns, optionally after a delay. A
//! token with nothing scripted is accepted. Every send is recorded with its exact JSON.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use a2::{request::payload::PayloadLike, ErrorBody, ErrorReason, Response};

use super::gateway::{Delivery, PushGateway, PushRequest, SendFuture};
use crate::store::devices::Environment;

/// One scripted answer, made when it is given (a2's types are not `Clone`).
type Outcome = Box<dyn FnOnce() -> Result<Delivery, a2::Error> + Send>;

struct Step {
    delay: Duration,
    outcome: Outcome,
}

/// What the fake was asked to send.
#[derive(Debug, Clone)]
pub struct SentPush {
    pub token: String,
    pub environment: Environment,
    pub topic: Option<String>,
    pub collapse_id: Option<String>,
    pub push_type: Option<String>,
    pub priority: Option<String>,
    /// `apns-expiration` (seconds since the epoch).
    pub expiration: Option<u64>,
    /// The exact JSON a2 would post.
    pub json: String,
    /// When the gateway was handed it.
    pub at: std::time::SystemTime,
}

impl SentPush {
    pub fn payload(&self) -> serde_json::Value {
        serde_json::from_str(&self.json).expect("payload is JSON")
    }
}

#[derive(Default)]
pub struct FakeGateway {
    scripts: Mutex<HashMap<String, VecDeque<Step>>>,
    sent: Mutex<Vec<SentPush>>,
    renewals: Mutex<Vec<Environment>>,
    /// What [`PushGateway::check`] reports (a gateway whose credentials did not load).
    broken: Option<String>,
    next_id: AtomicU64,
}

impl FakeGateway {
    pub fn new() -> Self {
        Self::default()
    }

    /// A gateway whose credentials "did not load": `check()` fails with `reason`.
    pub fn broken(reason: &str) -> Self {
        Self {
            broken: Some(reason.to_string()),
            ..Self::default()
        }
    }

    /// Scripts the next answer for `token`.
    pub fn then(
        &self,
        token: &str,
        outcome: impl FnOnce() -> Result<Delivery, a2::Error> + Send + 'static,
    ) -> &Self {
        self.then_after(token, Duration::ZERO, outcome)
    }

    /// Scripts the next answer for `token`, given after `delay`.
    pub fn then_after(
        &self,
        token: &str,
        delay: Duration,
        outcome: impl FnOnce() -> Result<Delivery, a2::Error> + Send + 'static,
    ) -> &Self {
        self.scripts
            .lock()
            .expect("scripts lock")
            .entry(token.to_string())
            .or_default()
            .push_back(Step {
                delay,
                outcome: Box::new(outcome),
            });
        self
    }

    /// Scripts `answer()` as the next `n` answers for `token`.
    pub fn then_times(
        &self,
        token: &str,
        n: usize,
        answer: fn() -> Result<Delivery, a2::Error>,
    ) -> &Self {
        for _ in 0..n {
            self.then(token, answer);
        }
        self
    }

    /// Every send so far, oldest first.
    pub fn sent(&self) -> Vec<SentPush> {
        self.sent.lock().expect("sent lock").clone()
    }

    /// How many sends so far (without copying them).
    pub fn sent_count(&self) -> usize {
        self.sent.lock().expect("sent lock").len()
    }

    pub fn sent_to(&self, token: &str) -> Vec<SentPush> {
        self.sent()
            .into_iter()
            .filter(|s| s.token == token)
            .collect()
    }

    /// The environments whose provider token was renewed, in order.
    pub fn renewals(&self) -> Vec<Environment> {
        self.renewals.lock().expect("renewals lock").clone()
    }

    /// Answers still scripted for `token`.
    pub fn scripted(&self, token: &str) -> usize {
        self.scripts
            .lock()
            .expect("scripts lock")
            .get(token)
            .map_or(0, VecDeque::len)
    }

    /// APNs' 200, as a2 returns it.
    pub fn accepted(apns_id: &str) -> Result<Delivery, a2::Error> {
        Ok(Delivery::Accepted(Response {
            code: 200,
            error: None,
            apns_id: Some(apns_id.to_string()),
        }))
    }

    /// An APNs refusal, as a2 returns it; `reason: None` is a body a2 could not parse.
    pub fn refused(code: u16, reason: Option<ErrorReason>, timestamp: Option<u64>) -> a2::Error {
        a2::Error::ResponseError(Response {
            code,
            error: reason.map(|reason| ErrorBody { reason, timestamp }),
            apns_id: Some(format!("refused-{code}")),
        })
    }

    /// A connection reset by the peer (a2 turns such I/O failures into an error).
    pub fn connection_reset() -> a2::Error {
        a2::Error::ReadError(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        ))
    }
}

impl PushGateway for FakeGateway {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn check(&self) -> Result<(), String> {
        self.broken.clone().map_or(Ok(()), Err)
    }

    fn send<'a>(&'a self, request: PushRequest<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let n = &request.notification;
            let options = n.options();
            let token = n.device_token().to_string();
            self.sent.lock().expect("sent lock").push(SentPush {
                at: std::time::SystemTime::now(),
                token: token.clone(),
                environment: request.environment,
                topic: options.apns_topic.map(str::to_string),
                collapse_id: options
                    .apns_collapse_id
                    .as_ref()
                    .map(|c| c.value.to_string()),
                push_type: options.apns_push_type.map(|t| t.to_string()),
                priority: options.apns_priority.as_ref().map(|p| p.to_string()),
                expiration: options.apns_expiration,
                json: n.to_json_string()?,
            });
            let step = self
                .scripts
                .lock()
                .expect("scripts lock")
                .get_mut(&token)
                .and_then(VecDeque::pop_front);
            match step {
                Some(step) => {
                    if !step.delay.is_zero() {
                        tokio::time::sleep(step.delay).await;
                    }
                    (step.outcome)()
                }
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    Self::accepted(&format!("fake-{id}"))
                }
            }
        })
    }

    fn renew_token(&self, environment: Environment) -> Result<(), String> {
        self.renewals
            .lock()
            .expect("renewals lock")
            .push(environment);
        Ok(())
    }
}

/// A fresh P-256 key in the PEM (PKCS#8) form of an APNs `.p8` file: it signs provider
/// tokens, and Apple knows nothing of it. For tests of the APNs gateway's set-up.
pub fn throwaway_p8_key() -> String {
    use base64::Engine;
    use ring::{rand::SystemRandom, signature};
    let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &SystemRandom::new(),
    )
    .expect("a P-256 key");
    let body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}
