//! The outbox worker against a real SQLite file and the scripted fake gateway, one step
//! (`tick_at`) at a time: every row of the answer table of docs/push.md, retries and backoff, the 4096-byte
//! bound, restarts, and that nothing is pushed twice or to a disabled token.

use std::{sync::Arc, time::Duration};

use a2::ErrorReason as R;
use tokio::sync::Notify;

use super::{
    enqueue, fake::FakeGateway, Audience, LogGateway, PushEvent, PushGateway, PushKind,
    PushService, TickReport, WorkerConfig,
};
use crate::store::{
    self,
    devices::{self, DeviceRow, Environment},
    pushes::{self, AttemptRow, PushRow, PushStatus},
    sessions::{self, SessionRow},
    Store,
};

const T1: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const T2: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const T3: &str = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";
const T4: &str = "d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4";
const TOPIC: &str = "com.example.tether";
const HOUR: i64 = 3_600_000;

struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    fake: Arc<FakeGateway>,
    service: PushService,
    config: WorkerConfig,
    session: SessionRow,
}

fn config() -> WorkerConfig {
    WorkerConfig {
        max_attempts: 3,
        backoff_base: Duration::from_secs(2),
        backoff_max: Duration::from_secs(600),
        poll_interval: Duration::from_secs(5),
        batch_size: 50,
        concurrency: 16,
        preview_chars: 150,
        send_timeout: Duration::from_secs(5),
        default_topic: Some(TOPIC.into()),
    }
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

async fn harness_with(adjust: impl FnOnce(&mut WorkerConfig)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("tether.db"), 4).await.unwrap();
    let now = store::now_ms();
    let session = sessions::NewSession {
        id: "5d9d4d8e-8a43-4b1e-9d55-0c2f6f1a7b10",
        owner: "me",
        agent: "claude",
        project_path: "/home/me/projects/demo",
        title: Some("demo"),
        now,
        expires_at: now + 24 * 3600 * 1000,
    };
    sessions::insert(store.pool(), &session).await.unwrap();
    let session = sessions::get(store.pool(), "5d9d4d8e-8a43-4b1e-9d55-0c2f6f1a7b10")
        .await
        .unwrap()
        .unwrap();
    let mut config = config();
    adjust(&mut config);
    let fake = Arc::new(FakeGateway::new());
    let service = PushService::new(
        store.clone(),
        fake.clone(),
        config.clone(),
        Arc::new(Notify::new()),
    );
    Harness {
        _dir: dir,
        store,
        fake,
        service,
        config,
        session,
    }
}

impl Harness {
    async fn device(&self, owner: &str, token: &str) -> DeviceRow {
        devices::upsert(
            self.store.pool(),
            &devices::NewDevice {
                owner,
                token,
                environment: Environment::Sandbox,
                topic: None,
                name: None,
                token_id: None,
                now: store::now_ms(),
            },
        )
        .await
        .unwrap()
    }

    async fn event(&self, kind: PushKind, message_id: Option<i64>, text: &str) {
        let mut tx = self.store.pool().begin().await.unwrap();
        enqueue(
            &mut tx,
            &PushEvent::new(kind, &Audience::of(&self.session), message_id, text),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    /// Every push, oldest first.
    async fn rows(&self) -> Vec<PushRow> {
        let mut rows = pushes::list(
            self.store.pool(),
            &pushes::Filter {
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        rows.reverse();
        rows
    }

    async fn rows_to(&self, device: &DeviceRow) -> Vec<PushRow> {
        let mut rows = self.rows().await;
        rows.retain(|r| r.device_id == Some(device.id));
        rows
    }

    async fn attempts(&self, push_id: i64) -> Vec<AttemptRow> {
        pushes::attempts(self.store.pool(), push_id).await.unwrap()
    }

    async fn device_row(&self, d: &DeviceRow) -> DeviceRow {
        devices::get(self.store.pool(), d.id)
            .await
            .unwrap()
            .unwrap()
    }

    async fn tick_at(&self, now: i64) -> TickReport {
        self.service.tick_at(now).await.unwrap()
    }

    /// A new service on the same database, as after a restart.
    async fn restart(&self, gateway: Arc<dyn PushGateway>) -> PushService {
        let service = PushService::new(
            self.store.clone(),
            gateway,
            self.config.clone(),
            Arc::new(Notify::new()),
        );
        service.recover().await.unwrap();
        service
    }
}

fn refused(code: u16, reason: Option<R>, timestamp: Option<u64>) -> a2::Error {
    FakeGateway::refused(code, reason, timestamp)
}

#[tokio::test]
async fn a_delivered_push_records_the_answer_and_the_exact_payload() {
    let h = harness().await;
    let d = h.device("me", T1).await;
    h.fake.then(T1, || FakeGateway::accepted("apns-1"));
    h.event(
        PushKind::TurnCompleted,
        Some(7),
        "**Done**: see [the diff](http://x/y).",
    )
    .await;

    let now = store::now_ms();
    let report = h.tick_at(now).await;
    assert_eq!((report.claimed, report.sent, report.delivered), (1, 1, 1));

    let [row] = &h.rows_to(&d).await[..] else {
        panic!("one push")
    };
    assert_eq!(row.status, PushStatus::Delivered);
    assert_eq!(row.attempts, 1);
    assert_eq!(row.apns_id.as_deref(), Some("apns-1"));
    assert_eq!(row.last_status_code, Some(200));
    assert_eq!(row.text, "Done: see the diff.");
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 1);
    let s = &sent[0];
    assert_eq!(s.token, T1);
    assert_eq!(s.environment, Environment::Sandbox);
    assert_eq!(s.topic.as_deref(), Some(TOPIC));
    assert_eq!(s.collapse_id, Some(format!("tether-{}", row.id)));
    assert_eq!(s.push_type.as_deref(), Some("alert"));
    assert_eq!(s.priority.as_deref(), Some("10"));
    assert_eq!(
        row.payload.as_deref(),
        Some(s.json.as_str()),
        "ledger keeps the JSON sent"
    );
    let v = s.payload();
    assert_eq!(v["aps"]["alert"]["title"], "demo");
    assert_eq!(v["aps"]["alert"]["body"], "Done: see the diff.");
    assert_eq!(v["aps"]["thread-id"], h.session.id.as_str());
    assert_eq!(v["sessionId"], h.session.id.as_str());
    assert_eq!(v["messageId"], 7);
    assert_eq!(v["kind"], "turn_completed");

    let attempts = h.attempts(row.id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].action, "delivered");
    assert_eq!(attempts[0].status_code, Some(200));
    assert_eq!(attempts[0].apns_id.as_deref(), Some("apns-1"));

    assert_eq!(h.tick_at(now + HOUR).await, TickReport::default());
    assert_eq!(h.fake.sent().len(), 1, "delivered once");
}

#[tokio::test]
async fn one_push_per_event_and_active_device_of_the_owner() {
    let h = harness().await;
    let mine = h.device("me", T1).await;
    let disabled = h.device("me", T2).await;
    devices::disable(h.store.pool(), disabled.id, "test", None, store::now_ms())
        .await
        .unwrap();
    let theirs = h.device("you", T3).await;
    let mine_too = h.device("me", T4).await;

    h.event(PushKind::TurnCompleted, Some(10), "hello").await;
    h.event(PushKind::TurnCompleted, Some(10), "hello").await; // the same event again
    h.event(PushKind::TurnFailed, Some(9), "crashed").await;
    h.event(PushKind::ProcessExited, None, "exit 1").await;
    h.event(PushKind::ProcessExited, None, "exit 2").await; // a later exit: its own event

    let rows = h.rows().await;
    assert_eq!(rows.len(), 8, "4 events x 2 active devices of `me`");
    assert_eq!(h.rows_to(&mine).await.len(), 4);
    assert_eq!(h.rows_to(&mine_too).await.len(), 4);
    assert!(h.rows_to(&disabled).await.is_empty());
    assert!(h.rows_to(&theirs).await.is_empty());
    assert!(rows
        .iter()
        .all(|r| r.status == PushStatus::Pending && r.owner == "me"));

    let report = h.tick_at(store::now_ms()).await;
    assert_eq!(report.delivered, 8);
    assert_eq!(h.fake.sent_to(T1).len(), 4);
    assert!(h.fake.sent_to(T2).is_empty() && h.fake.sent_to(T3).is_empty());
}

#[tokio::test]
async fn a_token_apns_calls_bad_is_disabled_and_gets_nothing_more() {
    for reason in [R::BadDeviceToken, R::DeviceTokenNotForTopic] {
        let name = format!("{reason:?}");
        let h = harness().await;
        let bad = h.device("me", T1).await;
        let good = h.device("me", T2).await;
        h.event(PushKind::TurnCompleted, Some(1), "one").await;
        h.event(PushKind::TurnCompleted, Some(2), "two").await;
        h.fake
            .then(T1, move || Err(refused(400, Some(reason), None)));

        let now = store::now_ms();
        let report = h.tick_at(now).await;
        assert_eq!(report.disabled, 1, "{name}");
        assert_eq!(
            report.delivered, 2,
            "{name}: the other device is unaffected"
        );

        let d = h.device_row(&bad).await;
        assert!(!d.is_active(), "{name}");
        assert_eq!(d.disabled_reason, Some(format!("APNs: 400 {name}")));
        let rows = h.rows_to(&bad).await;
        assert_eq!(rows[0].status, PushStatus::Failed, "{name}");
        assert_eq!(rows[0].last_reason.as_deref(), Some(name.as_str()));
        assert_eq!(rows[0].attempts, 1);
        assert_eq!(h.attempts(rows[0].id).await[0].action, "disable_token");
        assert_eq!(
            rows[1].status,
            PushStatus::Cancelled,
            "{name}: its next push is not sent"
        );
        assert_eq!(rows[1].attempts, 0);

        // Nothing more for it: not this push, not a new event, not later.
        h.event(PushKind::TurnFailed, Some(3), "three").await;
        assert!(h.rows_to(&bad).await.len() == 2, "{name}: no new row");
        h.tick_at(now + HOUR).await;
        h.tick_at(now + 24 * HOUR).await;
        assert_eq!(h.fake.sent_to(T1).len(), 1, "{name}: never retried");
        assert_eq!(h.fake.sent_to(T2).len(), 3);
        assert!(h.device_row(&good).await.is_active());
    }
}

#[tokio::test]
async fn unregistered_disables_the_token_unless_it_registered_again_after() {
    let h = harness().await;
    let d = h.device("me", T1).await;
    let seen = d.last_seen_at as u64;

    // APNs saw the token die before the device registered (again): keep the device.
    h.fake.then(T1, move || {
        Err(refused(410, Some(R::Unregistered), Some(seen - 1_000)))
    });
    h.event(PushKind::TurnCompleted, Some(1), "one").await;
    let now = store::now_ms();
    let report = h.tick_at(now).await;
    assert_eq!((report.failed, report.disabled), (1, 0));
    assert!(h.device_row(&d).await.is_active());
    let rows = h.rows_to(&d).await;
    assert_eq!(rows[0].status, PushStatus::Failed, "a 410 is never retried");
    assert!(rows[0]
        .error
        .as_deref()
        .unwrap()
        .contains("registered again"));
    assert_eq!(
        h.attempts(rows[0].id).await[0].timestamp,
        Some(seen as i64 - 1_000)
    );

    // APNs saw it die after the last registration: disable.
    h.fake.then(T1, move || {
        Err(refused(410, Some(R::Unregistered), Some(seen + 1_000)))
    });
    h.event(PushKind::TurnCompleted, Some(2), "two").await;
    let report = h.tick_at(store::now_ms()).await;
    assert_eq!(report.disabled, 1);
    let disabled = h.device_row(&d).await;
    assert!(!disabled.is_active());
    assert_eq!(
        disabled.disabled_reason.as_deref(),
        Some("APNs: 410 Unregistered")
    );

    // 410 with a reason a2 cannot parse (ExpiredToken): the status decides, disable.
    let other = h.device("me", T2).await;
    h.fake.then(T2, || Err(refused(410, None, None)));
    h.event(PushKind::TurnCompleted, Some(3), "three").await;
    h.tick_at(store::now_ms()).await;
    let other = h.device_row(&other).await;
    assert!(!other.is_active());
    assert_eq!(other.disabled_reason.as_deref(), Some("APNs: 410"));
    h.tick_at(now + HOUR).await;
    assert_eq!(h.fake.sent_to(T1).len(), 2);
    assert_eq!(h.fake.sent_to(T2).len(), 1);
}

#[tokio::test]
async fn our_own_bugs_are_never_retried() {
    let h = harness().await;
    let cases: [(&str, u16, Option<R>); 4] = [
        (T1, 413, Some(R::PayloadTooLarge)),
        (T2, 400, Some(R::BadCollapseId)),
        (T3, 405, Some(R::MethodNotAllowed)),
        (T4, 400, None), // a body a2 could not read
    ];
    for (token, code, reason) in cases {
        h.device("me", token).await;
        h.fake.then(token, move || Err(refused(code, reason, None)));
    }
    h.event(PushKind::TurnCompleted, Some(1), "hello").await;
    let now = store::now_ms();
    let report = h.tick_at(now).await;
    assert_eq!((report.failed, report.retried, report.disabled), (4, 0, 0));
    for row in h.rows().await {
        assert_eq!(row.status, PushStatus::Failed);
        assert_eq!(row.attempts, 1);
        assert!(
            row.error.as_deref().unwrap().contains("not retried"),
            "{:?}",
            row.error
        );
        assert_eq!(h.attempts(row.id).await[0].action, "give_up");
    }
    h.tick_at(now + 24 * HOUR).await;
    assert_eq!(h.fake.sent().len(), 4, "none sent again");
    for d in devices::list(h.store.pool(), None).await.unwrap() {
        assert!(d.is_active(), "the token is not to blame");
    }
    assert!(h.service.status().ok);
}

#[tokio::test]
async fn an_expired_provider_token_is_renewed_and_the_push_retried_once() {
    let h = harness().await;
    h.device("me", T1).await;
    h.fake
        .then(T1, || {
            Err(refused(403, Some(R::ExpiredProviderToken), None))
        })
        .then(T1, || FakeGateway::accepted("after-renewal"));
    h.event(PushKind::TurnCompleted, Some(1), "hello").await;

    let report = h.tick_at(store::now_ms()).await;
    assert_eq!((report.sent, report.delivered), (2, 1));
    assert_eq!(h.fake.renewals(), vec![Environment::Sandbox]);
    let [row] = &h.rows().await[..] else { panic!() };
    assert_eq!(row.status, PushStatus::Delivered);
    assert_eq!(row.attempts, 2);
    assert_eq!(row.apns_id.as_deref(), Some("after-renewal"));
    let actions: Vec<String> = h
        .attempts(row.id)
        .await
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(actions, ["renew_token", "delivered"]);
    assert!(h.service.status().ok);
}

#[tokio::test]
async fn a_token_still_expired_after_renewal_stops_sending() {
    let h = harness().await;
    h.device("me", T1).await;
    h.fake.then_times(T1, 2, || {
        Err(refused(403, Some(R::ExpiredProviderToken), None))
    });
    h.event(PushKind::TurnCompleted, Some(1), "hello").await;

    let report = h.tick_at(store::now_ms()).await;
    assert!(report.stopped);
    assert_eq!(report.sent, 2, "retried once, not more");
    assert_eq!(h.fake.renewals().len(), 1);
    let status = h.service.status();
    assert!(!status.ok);
    assert!(status.error.unwrap().contains("clock"));
    let [row] = &h.rows().await[..] else { panic!() };
    assert_eq!(
        row.status,
        PushStatus::Pending,
        "kept for when the configuration is fixed"
    );
}

#[tokio::test]
async fn a_configuration_error_stops_sending_until_restart() {
    let cases = [
        (403, R::InvalidProviderToken),
        (403, R::BadCertificate),
        (403, R::BadCertificateEnvironment),
        (400, R::MissingTopic),
        (400, R::TopicDisallowed),
    ];
    for (code, reason) in cases {
        let name = format!("{reason:?}");
        let h = harness().await;
        for t in [T1, T2, T3] {
            h.device("me", t).await;
        }
        h.fake
            .then(T1, move || Err(refused(code, Some(reason), None)));
        h.event(PushKind::TurnCompleted, Some(1), "hello").await;

        let now = store::now_ms();
        let report = h.tick_at(now).await;
        assert!(report.stopped, "{name}");
        assert_eq!(
            (report.sent, report.released),
            (1, 2),
            "{name}: the rest not tried"
        );
        let status = h.service.status();
        assert_eq!((status.gateway, status.ok), ("fake", false));
        assert!(
            status.error.as_deref().unwrap().contains(&name),
            "{name}: {status:?}"
        );
        let rows = h.rows().await;
        assert!(
            rows.iter().all(|r| r.status == PushStatus::Pending),
            "{name}: none failed"
        );
        assert_eq!(
            rows.iter().map(|r| r.attempts).collect::<Vec<_>>(),
            [1, 0, 0]
        );
        assert_eq!(h.attempts(rows[0].id).await[0].action, "config_error");

        // Stopped: later steps send nothing, whatever is queued.
        h.event(PushKind::TurnCompleted, Some(2), "more").await;
        assert!(h.tick_at(now + HOUR).await.stopped);
        assert_eq!(h.fake.sent().len(), 1, "{name}");

        // A restart (with the configuration fixed) sends everything once.
        let fixed = Arc::new(FakeGateway::new());
        let service = h.restart(fixed.clone()).await;
        assert!(service.status().ok);
        let report = service.tick_at(now + HOUR).await.unwrap();
        assert_eq!(report.delivered, 6, "{name}");
        for t in [T1, T2, T3] {
            assert_eq!(fixed.sent_to(t).len(), 2, "{name}: one per event");
        }
    }
}

#[tokio::test]
async fn credentials_that_did_not_load_send_nothing() {
    let h = harness().await;
    h.device("me", T1).await;
    h.event(PushKind::TurnCompleted, Some(1), "hello").await;
    let broken = Arc::new(FakeGateway::broken("cannot read the APNs key /nope.p8"));
    let service = h.restart(broken.clone()).await;
    let status = service.status();
    assert!(!status.ok);
    assert_eq!(
        status.error.as_deref(),
        Some("cannot read the APNs key /nope.p8")
    );
    assert!(service.tick().await.unwrap().stopped);
    assert!(broken.sent().is_empty());
    assert_eq!(h.rows().await[0].status, PushStatus::Pending);
}

#[tokio::test]
async fn transient_answers_are_retried_with_backoff_until_delivered() {
    let h = harness().await;
    let transient: Vec<(String, fn() -> a2::Error)> = vec![
        ("429".into(), || {
            refused(429, Some(R::TooManyRequests), None)
        }),
        ("500".into(), || {
            refused(500, Some(R::InternalServerError), None)
        }),
        ("503".into(), || {
            refused(503, Some(R::ServiceUnavailable), None)
        }),
        ("503s".into(), || refused(503, Some(R::Shutdown), None)),
        ("502".into(), || refused(502, None, None)),
        ("timeout".into(), || a2::Error::RequestTimeout(20)),
        ("reset".into(), FakeGateway::connection_reset),
    ];
    let mut tokens = Vec::new();
    for (i, (_, error)) in transient.iter().enumerate() {
        let token = format!("{:064x}", i + 1);
        h.device("me", &token).await;
        let error = *error;
        h.fake.then(&token, move || Err(error()));
        tokens.push(token);
    }
    h.event(PushKind::TurnCompleted, Some(1), "hello").await;

    let now = store::now_ms();
    let report = h.tick_at(now).await;
    assert_eq!((report.retried, report.failed), (7, 0));
    for (row, (name, _)) in h.rows().await.iter().zip(&transient) {
        assert_eq!(row.status, PushStatus::Pending, "{name}");
        assert_eq!(row.attempts, 1);
        // base 2 s: the first retry is 1 to 2 s later (jitter in the upper half).
        let delay = row.next_attempt_at - now;
        assert!((1_000..=2_000).contains(&delay), "{name}: {delay} ms");
        assert!(
            row.error.as_deref().unwrap().ends_with("retrying"),
            "{name}"
        );
        assert_eq!(h.attempts(row.id).await[0].action, "retry");
    }
    let reset = &h.rows().await[6];
    assert!(reset.error.as_deref().unwrap().contains("connection reset"));
    assert_eq!(reset.last_status_code, None, "no answer came");

    // Not due yet: nothing is sent.
    assert_eq!(h.tick_at(now + 999).await.sent, 0);
    // Due: each sent again, once, and delivered.
    let report = h.tick_at(now + 2_000).await;
    assert_eq!(report.delivered, 7);
    h.tick_at(now + HOUR).await;
    for token in &tokens {
        assert_eq!(h.fake.sent_to(token).len(), 2, "exactly one retry");
    }
    let rows = h.rows().await;
    assert_eq!(rows.len(), 7, "a retry is the same row");
    assert!(rows
        .iter()
        .all(|r| r.status == PushStatus::Delivered && r.attempts == 2 && r.error.is_none()));
}

#[tokio::test]
async fn attempts_run_out_and_the_push_fails_visibly() {
    let h = harness().await;
    h.device("me", T1).await;
    h.fake.then_times(T1, 5, || {
        Err(refused(503, Some(R::ServiceUnavailable), None))
    });
    h.event(PushKind::TurnCompleted, Some(1), "hello").await;

    let t1 = store::now_ms();
    h.tick_at(t1).await;
    let first = h.rows().await[0].next_attempt_at - t1;
    let t2 = t1 + HOUR;
    h.tick_at(t2).await;
    let second = h.rows().await[0].next_attempt_at - t2;
    assert!((1_000..=2_000).contains(&first), "{first}");
    assert!((2_000..=4_000).contains(&second), "doubled: {second}");
    let report = h.tick_at(t2 + HOUR).await;
    assert_eq!(report.failed, 1);

    let [row] = &h.rows().await[..] else { panic!() };
    assert_eq!(row.status, PushStatus::Failed);
    assert_eq!(row.attempts, 3);
    assert_eq!(
        row.error.as_deref(),
        Some("gave up after 3 attempts; the last answer was 503 ServiceUnavailable")
    );
    h.tick_at(t2 + 24 * HOUR).await;
    assert_eq!(h.fake.sent_to(T1).len(), 3, "max_attempts = 3");
    assert_eq!(h.attempts(row.id).await.len(), 3);
}

#[tokio::test]
async fn slow_answers_are_awaited_and_hung_sends_time_out() {
    let h = harness_with(|c| c.send_timeout = Duration::from_millis(300)).await;
    h.device("me", T1).await;
    h.device("me", T2).await;
    h.fake.then_after(T1, Duration::from_millis(50), || {
        FakeGateway::accepted("slow")
    });
    h.fake.then_after(T2, Duration::from_secs(60), || {
        FakeGateway::accepted("never")
    });
    h.event(PushKind::TurnCompleted, Some(1), "hello").await;

    let started = std::time::Instant::now();
    let report = h.tick_at(store::now_ms()).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!((report.delivered, report.retried), (1, 1));
    let rows = h.rows().await;
    assert_eq!(rows[0].apns_id.as_deref(), Some("slow"));
    assert_eq!(rows[1].status, PushStatus::Pending);
    assert!(
        rows[1].error.as_deref().unwrap().contains("timed out"),
        "{:?}",
        rows[1].error
    );
}

#[tokio::test]
async fn after_a_restart_pending_and_half_sent_pushes_go_out_exactly_once() {
    let h = harness().await;
    let d = h.device("me", T1).await;
    for id in 1..=3 {
        h.event(PushKind::TurnCompleted, Some(id), "hello").await;
    }
    // The last run claimed one push and died before the answer.
    let claimed = pushes::claim_due(h.store.pool(), store::now_ms(), 1)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(h.rows().await[0].status, PushStatus::Sending);
    drop(h.service.clone());

    let gateway = Arc::new(FakeGateway::new());
    let service = h.restart(gateway.clone()).await;
    assert!(h
        .rows()
        .await
        .iter()
        .all(|r| r.status == PushStatus::Pending));
    let report = service.tick().await.unwrap();
    assert_eq!(report.delivered, 3);
    assert_eq!(
        service.tick_at(store::now_ms() + HOUR).await.unwrap().sent,
        0
    );

    let sent = gateway.sent_to(T1);
    assert_eq!(sent.len(), 3);
    let mut message_ids: Vec<i64> = sent
        .iter()
        .map(|s| s.payload()["messageId"].as_i64().unwrap())
        .collect();
    message_ids.sort_unstable();
    assert_eq!(message_ids, [1, 2, 3], "each event once");
    assert!(h
        .rows_to(&d)
        .await
        .iter()
        .all(|r| r.status == PushStatus::Delivered));
}

#[tokio::test]
async fn a_100_kb_reply_becomes_a_preview_within_4096_bytes() {
    for preview_chars in [150, 1_000_000] {
        let h = harness_with(|c| c.preview_chars = preview_chars).await;
        h.device("me", T1).await;
        let reply = format!(
            "# Report\n\n```\n{}\n```\n{}",
            "let x = \"quoted\\n\";\n".repeat(2_000),
            "**lorem** ipsum dolor sit amet 😀 ".repeat(2_000)
        );
        assert!(reply.len() > 100_000);
        h.event(PushKind::TurnCompleted, Some(5), &reply).await;
        let stored = &h.rows().await[0];
        assert!(stored.text.chars().count() <= super::payload::MAX_STORED_CHARS);

        h.tick_at(store::now_ms()).await;
        let [sent] = &h.fake.sent()[..] else { panic!() };
        assert!(
            sent.json.len() <= 4096,
            "{preview_chars}: {} bytes",
            sent.json.len()
        );
        let v = sent.payload();
        let body = v["aps"]["alert"]["body"].as_str().unwrap();
        assert!(body.starts_with("Report let x = \"quoted\\n\";"), "{body}");
        assert!(body.ends_with('…'));
        assert_eq!(v["messageId"], 5, "the app fetches the whole reply by id");
        if preview_chars == 150 {
            assert!(body.chars().count() <= 150);
        } else {
            assert!(
                sent.json.len() > 3_000,
                "as much as fits: {}",
                sent.json.len()
            );
        }
        assert_eq!(h.rows().await[0].status, PushStatus::Delivered);
    }
}

#[tokio::test]
async fn without_apns_pushes_are_logged_not_sent() {
    let h = harness().await;
    let d = h.device("me", T1).await;
    h.event(
        PushKind::TurnFailed,
        Some(3),
        "Not logged in · Please run /login",
    )
    .await;
    let service = h.restart(Arc::new(LogGateway)).await;
    assert_eq!(service.status().gateway, "log");
    let report = service.tick().await.unwrap();
    assert_eq!(report.logged, 1);
    let [row] = &h.rows_to(&d).await[..] else {
        panic!()
    };
    assert_eq!(row.status, PushStatus::Logged);
    assert_eq!(row.last_status_code, None, "Apple never saw it");
    assert_eq!(row.subtitle.as_deref(), Some("Turn failed"));
    let payload: serde_json::Value = serde_json::from_str(row.payload.as_deref().unwrap()).unwrap();
    assert_eq!(
        payload["aps"]["alert"]["body"],
        "Not logged in · Please run /login"
    );
    assert_eq!(h.attempts(row.id).await[0].action, "logged");
}

#[tokio::test]
async fn a_step_takes_at_most_batch_size_pushes() {
    let h = harness_with(|c| c.batch_size = 2).await;
    h.device("me", T1).await;
    for id in 1..=3 {
        h.event(PushKind::TurnCompleted, Some(id), "x").await;
    }
    let now = store::now_ms();
    assert_eq!(h.tick_at(now).await.claimed, 2);
    assert_eq!(h.tick_at(now).await.claimed, 1);
    assert_eq!(h.tick_at(now).await.claimed, 0);
}

#[tokio::test]
async fn the_loop_sends_when_woken_and_stops_on_shutdown() {
    let h = harness().await;
    h.device("me", T1).await;
    let wake = Arc::new(Notify::new());
    let service = PushService::new(
        h.store.clone(),
        h.fake.clone(),
        WorkerConfig {
            poll_interval: Duration::from_secs(3600),
            ..config()
        },
        wake.clone(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(service.run(async move {
        let _ = stopped.await;
    }));
    h.event(PushKind::TurnCompleted, Some(1), "hello").await;
    wake.notify_one();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.rows().await[0].status != PushStatus::Delivered {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not sent after a wake"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("worker stops")
        .unwrap();
}

#[tokio::test]
async fn a_warning_is_sent_only_while_it_stands_and_before_the_end() {
    let h = harness().await;
    h.device("me", T1).await;
    let end = h.session.expires_at;
    let warn = |h: &Harness| {
        let (store, session) = (h.store.clone(), h.session.clone());
        async move {
            let mut tx = store.begin_write().await.unwrap();
            let now = store::now_ms();
            assert!(
                sessions::mark_warned(&mut *tx, &session.id, session.expires_at, now)
                    .await
                    .unwrap()
            );
            let event = PushEvent {
                kind: PushKind::SessionExpiring,
                audience: &Audience::of(&session),
                message_id: None,
                text: "This session ends in 4h unless you keep it alive.",
                expires_at: Some(session.expires_at),
                approval_id: None,
            };
            enqueue(&mut tx, &event).await.unwrap();
            tx.commit().await.unwrap();
        }
    };

    // Kept alive before the worker got to it: the warning is dropped, not sent.
    warn(&h).await;
    sessions::extend(h.store.pool(), &h.session.id, end + HOUR)
        .await
        .unwrap();
    let report = h.tick_at(store::now_ms()).await;
    assert_eq!((report.claimed, report.cancelled, report.sent), (1, 1, 0));
    assert_eq!(h.rows().await[0].status, PushStatus::Cancelled);

    // Past its end (APNs' expiration), a warning is not sent either.
    sessions::extend(h.store.pool(), &h.session.id, end)
        .await
        .unwrap();
    warn(&h).await;
    let report = h.tick_at(end + 1).await;
    assert_eq!((report.claimed, report.failed, report.sent), (1, 1, 0));
    let row = &h.rows().await[1];
    assert_eq!(row.status, PushStatus::Failed);
    assert!(
        row.error.as_deref().unwrap().contains("APNs expiration"),
        "{row:?}"
    );
    assert!(h.fake.sent().is_empty());
}
