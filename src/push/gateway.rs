//! The seam between the outbox and Apple: the [`PushGateway`] trait (APNs through a2, the
//! log, or a scripted fake in tests, all answering with a2's own outcome types), the log
//! gateway, and [`classify`], the one place that decides what each answer means.

use std::{future::Future, pin::Pin};

use a2::{request::payload::PayloadLike, ErrorReason};

use super::payload::Notification;
use crate::store::devices::Environment;

/// What a gateway's send resolves to.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Delivery, a2::Error>> + Send + 'a>>;

/// One notification to one device.
#[derive(Debug, Clone)]
pub struct PushRequest<'a> {
    /// The APNs host the device token belongs to.
    pub environment: Environment,
    /// The payload, the device token and the headers (topic, push type, priority, collapse id).
    pub notification: Notification<'a>,
}

/// A send that did not fail.
#[derive(Debug)]
pub enum Delivery {
    /// APNs accepted it (200), as `a2::Client::send` returns it.
    Accepted(a2::Response),
    /// The log gateway wrote it to the log: it was not sent to Apple.
    Logged,
}

/// Sends notifications. Answers are a2's: `Ok` for 200, `Err(a2::Error::ResponseError)` for
/// APNs' refusals, other `a2::Error`s for transport and local failures, so the worker's
/// handling is the same for the real client and a fake.
pub trait PushGateway: Send + Sync {
    /// `apns`, `log` or `fake`: shown on `/health`.
    fn name(&self) -> &'static str;

    /// Whether the gateway can send at all (credentials loaded); the reason if not.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    fn send<'a>(&'a self, request: PushRequest<'a>) -> SendFuture<'a>;

    /// Replaces the provider token (JWT) used for `environment` with a new one, after APNs
    /// answered `ExpiredProviderToken`.
    fn renew_token(&self, _environment: Environment) -> Result<(), String> {
        Ok(())
    }

    /// Whether devices need an APNs topic (the bundle id) to be reachable.
    fn needs_topic(&self) -> bool {
        false
    }
}

/// What the worker does with a push after an answer (the answer table of docs/push.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// 200: record the apns-id, mark delivered.
    Delivered,
    /// The log gateway took it: mark logged (not sent to Apple).
    Logged,
    /// 400 BadDeviceToken / DeviceTokenNotForTopic, 410: disable the token, never retry.
    /// With a 410's timestamp (ms), only if the device did not register again after it.
    DisableToken {
        unless_registered_after: Option<i64>,
    },
    /// 429, 5xx, transport errors: retry with backoff, up to the attempt limit.
    Retry,
    /// 403 ExpiredProviderToken: renew the provider token and retry once.
    RenewTokenAndRetry,
    /// 413, other 400s, 405, local errors: our bug. Never retried; logged loudly.
    GiveUp,
    /// 403 InvalidProviderToken and other credential or topic errors: stop sending with
    /// this credential and report it on `/health`.
    ConfigError,
}

impl Action {
    /// The name recorded in `push_attempts.action`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Logged => "logged",
            Self::DisableToken { .. } => "disable_token",
            Self::Retry => "retry",
            Self::RenewTokenAndRetry => "renew_token",
            Self::GiveUp => "give_up",
            Self::ConfigError => "config_error",
        }
    }
}

/// An answer, classified, with what is recorded about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub action: Action,
    /// The HTTP status; `None` when no answer came (transport error) or for the log gateway.
    pub status_code: Option<u16>,
    /// APNs' reason (`BadDeviceToken`, …) when its body could be read.
    pub reason: Option<String>,
    pub apns_id: Option<String>,
    /// The 410 body's timestamp (ms since the epoch).
    pub timestamp: Option<i64>,
    /// Transport or local error text.
    pub error: Option<String>,
}

impl Answer {
    /// A short description for the ledger and the log: `410 Unregistered`, `503`,
    /// `transport error: …`.
    pub fn describe(&self) -> String {
        match (self.status_code, &self.reason, &self.error) {
            (Some(code), Some(reason), _) => format!("{code} {reason}"),
            (Some(code), None, _) => code.to_string(),
            (None, _, Some(error)) => error.clone(),
            (None, _, None) => self.action.as_str().to_string(),
        }
    }
}

/// Decides what an answer means. The reason decides when APNs sent a readable one; else
/// (a2 could not parse the body) the HTTP status alone does.
pub fn classify(outcome: &Result<Delivery, a2::Error>) -> Answer {
    let mut answer = Answer {
        action: Action::GiveUp,
        status_code: None,
        reason: None,
        apns_id: None,
        timestamp: None,
        error: None,
    };
    match outcome {
        Ok(Delivery::Logged) => answer.action = Action::Logged,
        Ok(Delivery::Accepted(r)) => {
            answer.action = Action::Delivered;
            answer.status_code = Some(r.code);
            answer.apns_id = r.apns_id.clone();
        }
        Err(a2::Error::ResponseError(r)) => {
            answer.status_code = Some(r.code);
            answer.apns_id = r.apns_id.clone();
            answer.reason = r.error.as_ref().map(|e| format!("{:?}", e.reason));
            answer.timestamp = r
                .error
                .as_ref()
                .and_then(|e| e.timestamp)
                .and_then(|t| i64::try_from(t).ok());
            answer.action = match r.error.as_ref().map(|e| &e.reason) {
                Some(reason) => by_reason(reason, answer.timestamp),
                None => by_status(r.code, None),
            };
        }
        Err(e) => {
            answer.error = Some(format!("{e}"));
            answer.action = match e {
                // No answer from APNs: the connection dropped, timed out or could not open.
                a2::Error::ConnectionError(_)
                | a2::Error::ClientError(_)
                | a2::Error::RequestTimeout(_)
                | a2::Error::ReadError(_) => Action::Retry,
                // The key cannot sign a provider token, or TLS cannot be set up.
                a2::Error::SignerError(_)
                | a2::Error::UnexpectedKey(_)
                | a2::Error::Tls(_)
                | a2::Error::InvalidCertificate => Action::ConfigError,
                // The request could not be built: a bug of ours, retrying changes nothing.
                a2::Error::SerializeError(_)
                | a2::Error::InvalidOptions(_)
                | a2::Error::BuildRequestError(_)
                | a2::Error::ResponseError(_) => Action::GiveUp,
            };
        }
    }
    answer
}

fn by_reason(reason: &ErrorReason, timestamp: Option<i64>) -> Action {
    use ErrorReason as R;
    match reason {
        R::BadDeviceToken | R::DeviceTokenNotForTopic => Action::DisableToken {
            unless_registered_after: None,
        },
        R::Unregistered => Action::DisableToken {
            unless_registered_after: timestamp,
        },
        R::ExpiredProviderToken => Action::RenewTokenAndRetry,
        R::InvalidProviderToken
        | R::MissingProviderToken
        | R::BadCertificate
        | R::BadCertificateEnvironment
        | R::MissingTopic
        | R::TopicDisallowed
        | R::Forbidden => Action::ConfigError,
        R::TooManyRequests
        | R::TooManyProviderTokenUpdates
        | R::InternalServerError
        | R::ServiceUnavailable
        | R::Shutdown
        // APNs closed an idle connection: nothing wrong with the push.
        | R::IdleTimeout => Action::Retry,
        R::PayloadTooLarge
        | R::BadCollapseId
        | R::BadExpirationDate
        | R::BadMessageId
        | R::BadPriority
        | R::BadTopic
        | R::DuplicateHeaders
        | R::MissingDeviceToken
        | R::PayloadEmpty
        | R::BadPath
        | R::MethodNotAllowed => Action::GiveUp,
    }
}

/// The action for an HTTP status when the reason is unknown.
fn by_status(code: u16, timestamp: Option<i64>) -> Action {
    match code {
        200 => Action::Delivered,
        // 410 Unregistered or ExpiredToken (a reason a2 0.10 does not know).
        410 => Action::DisableToken {
            unless_registered_after: timestamp,
        },
        403 => Action::ConfigError,
        429 => Action::Retry,
        500..=599 => Action::Retry,
        _ => Action::GiveUp, // 400, 405, 413 and anything unexpected
    }
}

/// The gateway used when no APNs key is configured: each push is written to the log and
/// marked `logged`, so the outbox, the ledger and the triggers work without Apple.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogGateway;

impl PushGateway for LogGateway {
    fn name(&self) -> &'static str {
        "log"
    }

    fn send<'a>(&'a self, request: PushRequest<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let json = request.notification.to_json_string()?;
            tracing::info!(
                device = %token_prefix(request.notification.device_token()),
                environment = request.environment.as_str(),
                topic = request.notification.options().apns_topic.unwrap_or(""),
                payload = %json,
                "push (log gateway: not sent to Apple)"
            );
            Ok(Delivery::Logged)
        })
    }
}

/// The first characters of a device token, for logs: a whole token is never logged.
pub fn token_prefix(token: &str) -> String {
    let prefix: String = token.chars().take(8).collect();
    format!("{prefix}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use a2::{ErrorBody, Response};

    fn refused(code: u16, reason: Option<ErrorReason>, timestamp: Option<u64>) -> Answer {
        classify(&Err(a2::Error::ResponseError(Response {
            code,
            error: reason.map(|reason| ErrorBody { reason, timestamp }),
            apns_id: Some("a-id".into()),
        })))
    }

    /// Every row of the answer table of docs/push.md, and the reasons it groups.
    #[test]
    fn classifies_every_answer_of_the_apns_table() {
        use ErrorReason as R;
        let disable = Action::DisableToken {
            unless_registered_after: None,
        };
        // 200: accepted.
        let ok = classify(&Ok(Delivery::Accepted(Response {
            code: 200,
            error: None,
            apns_id: Some("5e1b".into()),
        })));
        assert_eq!(ok.action, Action::Delivered);
        assert_eq!(ok.apns_id.as_deref(), Some("5e1b"));
        assert_eq!(ok.describe(), "200");
        // 400 BadDeviceToken, DeviceTokenNotForTopic: disable, never retry.
        assert_eq!(refused(400, Some(R::BadDeviceToken), None).action, disable);
        assert_eq!(
            refused(400, Some(R::DeviceTokenNotForTopic), None).action,
            disable
        );
        // 410 Unregistered: disable unless registered after the timestamp.
        let gone = refused(410, Some(R::Unregistered), Some(1_700_000_000_000));
        assert_eq!(
            gone.action,
            Action::DisableToken {
                unless_registered_after: Some(1_700_000_000_000)
            }
        );
        assert_eq!(gone.timestamp, Some(1_700_000_000_000));
        assert_eq!(gone.describe(), "410 Unregistered");
        // 410 ExpiredToken: a2 cannot parse that reason (error: None); the status decides.
        assert_eq!(refused(410, None, None).action, disable);
        // 413, other 400s, 405: our bug, no retry.
        for (code, reason) in [
            (413, R::PayloadTooLarge),
            (400, R::BadCollapseId),
            (400, R::BadExpirationDate),
            (400, R::BadMessageId),
            (400, R::BadPriority),
            (400, R::BadTopic),
            (400, R::DuplicateHeaders),
            (400, R::MissingDeviceToken),
            (400, R::PayloadEmpty),
            (404, R::BadPath),
            (405, R::MethodNotAllowed),
        ] {
            let a = refused(code, Some(reason), None);
            assert_eq!(a.action, Action::GiveUp, "{}", a.describe());
        }
        // 403 ExpiredProviderToken: renew, retry once.
        assert_eq!(
            refused(403, Some(R::ExpiredProviderToken), None).action,
            Action::RenewTokenAndRetry
        );
        // Configuration errors: stop sending for the credential.
        for (code, reason) in [
            (403, R::InvalidProviderToken),
            (403, R::MissingProviderToken),
            (403, R::BadCertificate),
            (403, R::BadCertificateEnvironment),
            (403, R::Forbidden),
            (400, R::MissingTopic),
            (400, R::TopicDisallowed),
        ] {
            let a = refused(code, Some(reason), None);
            assert_eq!(a.action, Action::ConfigError, "{}", a.describe());
        }
        // 429 TooManyRequests: retry later with backoff.
        assert_eq!(
            refused(429, Some(R::TooManyRequests), None).action,
            Action::Retry
        );
        assert_eq!(
            refused(429, Some(R::TooManyProviderTokenUpdates), None).action,
            Action::Retry
        );
        // 500, 503 ServiceUnavailable, Shutdown: transient.
        for (code, reason) in [
            (500, R::InternalServerError),
            (503, R::ServiceUnavailable),
            (503, R::Shutdown),
            (400, R::IdleTimeout),
        ] {
            let a = refused(code, Some(reason), None);
            assert_eq!(a.action, Action::Retry, "{}", a.describe());
        }
        // Timeouts and connection resets: transient, recorded with the error text.
        let timeout = classify(&Err(a2::Error::RequestTimeout(20)));
        assert_eq!(timeout.action, Action::Retry);
        assert_eq!(timeout.status_code, None);
        assert!(
            timeout.describe().contains("timed out"),
            "{}",
            timeout.describe()
        );
        let reset = classify(&Err(a2::Error::ReadError(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        ))));
        assert_eq!(reset.action, Action::Retry);
        // Local errors: the request could not be built (bug) or the key cannot sign (config).
        assert_eq!(
            classify(&Err(a2::Error::InvalidOptions("x".into()))).action,
            Action::GiveUp
        );
        assert_eq!(
            classify(&Err(a2::Error::InvalidCertificate)).action,
            Action::ConfigError
        );
        // The log gateway.
        assert_eq!(classify(&Ok(Delivery::Logged)).action, Action::Logged);
    }

    /// An unparseable body (`error: None`): the HTTP status alone decides.
    #[test]
    fn unparseable_bodies_are_decided_by_status() {
        let cases = [
            (400, Action::GiveUp),
            (403, Action::ConfigError),
            (405, Action::GiveUp),
            (413, Action::GiveUp),
            (
                410,
                Action::DisableToken {
                    unless_registered_after: None,
                },
            ),
            (429, Action::Retry),
            (500, Action::Retry),
            (502, Action::Retry),
            (503, Action::Retry),
            (418, Action::GiveUp),
        ];
        for (code, action) in cases {
            let a = refused(code, None, None);
            assert_eq!(a.action, action, "{code}");
            assert_eq!(a.reason, None);
            assert_eq!(a.describe(), code.to_string());
        }
    }
}
