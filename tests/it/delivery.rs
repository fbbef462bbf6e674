//! The delivery engine end to end: real Postgres, real receivers on
//! loopback, the sidecar as production runs it.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use pgwebhooks::sign::{self, SigningKey};

use crate::support::sidecar::{self, endpoint, statuses, SECRET};
use crate::support::{wait, Receiver, Reply, TestDb};

const T: Duration = Duration::from_secs(20);

async fn emit(c: &tokio_postgres::Client, n: i32, event_type: &str) {
    c.execute(
        "SELECT webhooks.emit($1, jsonb_build_object('n', g, 'phone', '0912345678')) FROM generate_series(1, $2) g",
        &[&event_type, &n],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn every_event_reaches_every_matching_endpoint_signed() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (mut all, mut appts) = (Receiver::ok().await, Receiver::ok().await);
    let mut none = Receiver::ok().await;
    endpoint(&c, &all.url, &["*"], "").await;
    endpoint(&c, &appts.url, &["appointment.*"], "masked_fields = '{phone}'").await;
    endpoint(&c, &none.url, &["ticket.*"], "").await;
    let running = sidecar::start(sidecar::config(&db)).await;

    emit(&c, 3, "appointment.created").await;
    emit(&c, 2, "message.sent").await;
    let got_all = all.take(5, T).await;
    let got_appts = appts.take(3, T).await;

    let key = SigningKey::parse(SECRET).unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for r in got_all.iter().chain(&got_appts) {
        sign::verify(
            std::slice::from_ref(&key),
            r.header("webhook-id"),
            r.header("webhook-timestamp"),
            r.header("webhook-signature"),
            &r.body,
            now,
            60,
        )
        .expect("signature verifies");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("user-agent").unwrap().starts_with("pgwebhooks/"));
        let body = r.json();
        assert_eq!(body["id"], r.webhook_id());
        for k in ["id", "type", "timestamp", "tenant_id", "data"] {
            assert!(body.get(k).is_some(), "body lacks {k}: {body}");
        }
    }
    assert!(got_all.iter().all(|r| r.json()["data"]["phone"] == "0912345678"));
    assert!(
        got_appts
            .iter()
            .all(|r| r.json()["data"]["phone"] == "0912***5678"),
        "masked per endpoint"
    );
    assert!(got_appts
        .iter()
        .all(|r| r.json()["type"] == "appointment.created"));

    // Everything is recorded: one delivered row per pair, one attempt each.
    wait::until("deliveries recorded", T, || async {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 8).then_some(())
    })
    .await;
    let attempts: i64 = c
        .query_one("SELECT count(*) FROM webhooks.attempts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 8);
    wait::until("batches completed", T, || async {
        let n: i64 = c
            .query_one("SELECT count(*) FROM webhooks.fanout_batches", &[])
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
    running.stop().await;
    assert!(none.drain().is_empty(), "no ticket events were written");
}

#[tokio::test]
async fn retries_follow_status_codes_and_retry_after() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // First answer 503, then 200.
    let mut flaky = Receiver::start(|r| if r.n == 0 { Reply::status(503) } else { Reply::ok() }).await;
    // 429 with Retry-After: 1, then 200.
    let mut limited = Receiver::start(|r| {
        if r.n == 0 {
            Reply::status(429).header("retry-after", "1")
        } else {
            Reply::ok()
        }
    })
    .await;
    // 400: never retried.
    let mut bad = Receiver::start(|_| Reply::status(400).body("no such field")).await;
    // Always 500: dead after 3 attempts (schedule of two delays).
    let mut down = Receiver::start(|_| Reply::status(500)).await;
    let e_flaky = endpoint(&c, &flaky.url, &["a"], "").await;
    let e_limited = endpoint(&c, &limited.url, &["b"], "").await;
    let e_bad = endpoint(&c, &bad.url, &["c"], "").await;
    let e_down = endpoint(&c, &down.url, &["d"], "").await;
    let running = sidecar::start(sidecar::config(&db)).await;
    for t in ["a", "b", "c", "d"] {
        emit(&c, 1, t).await;
    }
    let f = flaky.take(2, T).await;
    assert_eq!(
        f[0].webhook_id(),
        f[1].webhook_id(),
        "same webhook-id on every retry"
    );
    let l = limited.take(2, T).await;
    assert!(
        l[1].at - l[0].at >= Duration::from_millis(950),
        "Retry-After honoured: {:?}",
        l[1].at - l[0].at
    );
    down.take(3, T).await;
    bad.take(1, T).await;

    wait::until("final states", T, || async {
        let s = (
            statuses(&c, e_flaky).await,
            statuses(&c, e_limited).await,
            statuses(&c, e_bad).await,
            statuses(&c, e_down).await,
        );
        (s.0 == [("delivered".into(), 1)]
            && s.1 == [("delivered".into(), 1)]
            && s.2 == [("failed".into(), 1)]
            && s.3 == [("dead".into(), 1)])
        .then_some(())
    })
    .await;
    let dead = c
        .query_one(
            "SELECT d.id, d.attempts, d.last_status, (SELECT count(*) FROM webhooks.attempts a WHERE a.delivery_id = d.id)
               FROM webhooks.deliveries d WHERE endpoint_id = $1",
            &[&e_down],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            dead.get::<_, i32>(1),
            dead.get::<_, Option<i32>>(2),
            dead.get::<_, i64>(3)
        ),
        (3, Some(500), 3)
    );
    let failed_excerpt: String = c
        .query_one(
            "SELECT response_excerpt FROM webhooks.attempts a JOIN webhooks.deliveries d ON d.id = a.delivery_id
              WHERE d.endpoint_id = $1",
            &[&e_bad],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed_excerpt, "no such field");
    assert!(bad.drain().is_empty(), "a 400 is not retried");

    // A dead delivery stays visible and can be retried: it goes out again.
    let id: i64 = dead.get(0);
    c.execute("SELECT webhooks.delivery_retry(ARRAY[$1::bigint])", &[&id])
        .await
        .unwrap();
    down.take(1, T).await;
    running.stop().await;
}

#[tokio::test]
async fn make_rules_gone_queue_full_size_and_pacing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut gone =
        Receiver::start(|_| Reply::status(410).body("There is no scenario listening for this webhook."))
            .await;
    let mut full = Receiver::start(|r| {
        if r.n == 0 {
            Reply::status(400).body("Queue is full.")
        } else {
            Reply::ok()
        }
    })
    .await;
    let mut paced = Receiver::ok().await;
    let e_gone = endpoint(&c, &gone.url, &["gone"], "make = true").await;
    endpoint(&c, &full.url, &["full", "big"], "make = true").await;
    let _e_paced = endpoint(
        &c,
        &paced.url,
        &["paced"],
        "rate_limit = 20, rate_window = '1 second'",
    )
    .await;
    let running = sidecar::start(sidecar::config(&db)).await;

    emit(&c, 3, "gone").await;
    gone.next(T).await;
    wait::until("endpoint paused by 410", T, || async {
        let r = c
            .query_one(
                "SELECT enabled, disabled_reason FROM webhooks.endpoints WHERE id = $1",
                &[&e_gone],
            )
            .await
            .unwrap();
        let reason: Option<String> = r.get(1);
        (!r.get::<_, bool>(0) && reason.is_some_and(|r| r.contains("410"))).then_some(())
    })
    .await;
    wait::until("the gone endpoint's deliveries wait", T, || async {
        (statuses(&c, e_gone).await == [("pending".into(), 3)]).then_some(())
    })
    .await;

    emit(&c, 1, "full").await;
    let f = full.take(2, T).await;
    assert_eq!(f[0].webhook_id(), f[1].webhook_id(), "Queue is full is retried");

    c.execute(
        "SELECT webhooks.emit('big', jsonb_build_object('blob', repeat('x', 6 * 1024 * 1024)))",
        &[],
    )
    .await
    .unwrap();
    wait::until("oversized body refused", T, || async {
        let r = c
            .query_opt(
                "SELECT d.status, d.last_error FROM webhooks.deliveries d JOIN webhooks.events e USING (event_id)
                  WHERE e.event_type = 'big'",
                &[],
            )
            .await
            .unwrap()?;
        let (status, error): (String, Option<String>) = (r.get(0), r.get(1));
        (status == "failed" && error.is_some_and(|e| e.contains("5 MB"))).then_some(())
    })
    .await;

    emit(&c, 60, "paced").await;
    let got = paced.take(60, T).await;
    // Never more than 20 in any 1-second window.
    for (i, r) in got.iter().enumerate() {
        let in_window = got[i..]
            .iter()
            .filter(|x| x.at - r.at < Duration::from_millis(1000))
            .count();
        assert!(in_window <= 20, "{in_window} requests within 1 s of request {i}");
    }
    running.stop().await;
    assert_eq!(full.drain().len(), 0, "the oversized body was never sent");
    assert!(gone.drain().len() <= 2, "a paused endpoint gets nothing more");
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_hold_up_others() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let _hung = Receiver::start(|_| Reply::ok().delay(Duration::from_secs(60))).await;
    let mut fast = Receiver::ok().await;
    endpoint(&c, &_hung.url, &["*"], "timeout_ms = 5000, max_in_flight = 4").await;
    endpoint(&c, &fast.url, &["*"], "").await;
    let running = sidecar::start(sidecar::config(&db)).await;
    emit(&c, 200, "x").await;
    // All 200 reach the fast receiver within 4 s (take fails otherwise)…
    fast.take(200, Duration::from_secs(4)).await;
    // …while the hung one has answered none of its own.
    let hung_done: i64 = c
        .query_one(
            "SELECT count(*) FROM webhooks.deliveries d JOIN webhooks.endpoints e ON e.id = d.endpoint_id
              WHERE e.url = $1 AND d.status = 'delivered'",
            &[&_hung.url],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hung_done, 0, "the hung receiver answered nothing yet");
    running.stop().await;
}

#[tokio::test]
async fn two_sidecars_deliver_5000_events_without_duplicates() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut r = Receiver::ok().await;
    endpoint(&c, &r.url, &["*"], "").await;
    let mut a = sidecar::config(&db);
    a.replica = "replica-a".into();
    let mut b = sidecar::config(&db);
    b.replica = "replica-b".into();
    let (ra, rb) = (sidecar::start(a).await, sidecar::start(b).await);
    for _ in 0..10 {
        emit(&c, 500, "bulk").await;
    }
    let got = r.take(5000, Duration::from_secs(60)).await;
    let ids: HashSet<String> = got.iter().map(|r| r.webhook_id()).collect();
    assert_eq!(ids.len(), 5000, "5000 distinct events");
    ra.stop().await;
    rb.stop().await;
    assert!(r.drain().is_empty(), "no duplicate arrived later");
    let by_replica: Vec<(String, i64)> = c
        .query(
            "SELECT replica, count(*) FROM webhooks.attempts GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        by_replica.iter().map(|x| x.1).sum::<i64>(),
        5000,
        "{by_replica:?}"
    );
}

/// The sidecar calls `fanout_probe()` at every idle wait and the backlog's
/// `fanout_pending()` for its gauges, thousands of times per session. After
/// five calls Postgres may switch a plpgsql statement to a generic plan,
/// which for "events past the cursor" was a sequential scan of the whole
/// outbox: each idle wait then cost time in proportion to the history (the
/// benchmark's soak: p50 2.5 ms → 20.6 ms over 300,000 events). Both must
/// keep reading the index however often they are called.
#[tokio::test]
async fn the_idle_probe_and_the_backlog_count_never_scan_the_outbox() {
    let db = TestDb::new().await;
    let c = db.client().await;
    emit(&c, 5000, "history.kept").await;
    c.batch_execute(
        "ANALYZE webhooks.events;
         UPDATE webhooks.fanout_cursor SET (txid, seq) =
             (SELECT txid, seq FROM webhooks.events ORDER BY txid DESC, seq DESC LIMIT 1);",
    )
    .await
    .unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    for _ in 0..12 {
        let has_work: bool = c
            .query_one("SELECT has_work FROM webhooks.fanout_probe()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!has_work);
        let pending: i64 = c
            .query_one("SELECT events FROM webhooks.fanout_pending()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(pending, 0);
    }
    // This transaction's own scans of the outbox.
    let (seq_scans, idx_scans): (i64, i64) = c
        .query_one(
            "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables
              WHERE relid = 'webhooks.events'::regclass",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(seq_scans, 0, "sequential scans of webhooks.events");
    assert!(idx_scans >= 24, "{idx_scans} index scans");
}

/// Issue #15 item 8: on Make endpoints 403 and 404 (like 410) pause the
/// endpoint with the answer as the reason; elsewhere they fail the event.
#[tokio::test]
async fn make_gone_answers_pause_the_endpoint_with_the_answer() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut forbidden = Receiver::start(|_| Reply::status(403).body("Webhook is disabled.")).await;
    let mut missing = Receiver::start(|_| Reply::status(404).body("Webhook not found.")).await;
    let mut plain = Receiver::start(|_| Reply::status(403).body("nope")).await;
    let e403 = endpoint(&c, &forbidden.url, &["gone"], "make = true").await;
    let e404 = endpoint(&c, &missing.url, &["gone"], "make = true").await;
    let eplain = endpoint(&c, &plain.url, &["gone"], "").await;
    let running = sidecar::start(sidecar::config(&db)).await;
    emit(&c, 2, "gone").await;
    forbidden.next(T).await;
    missing.next(T).await;
    plain.take(2, T).await;
    for (id, status, answer) in [
        (e403, "403", "Webhook is disabled."),
        (e404, "404", "Webhook not found."),
    ] {
        wait::until("the Make endpoint is paused with its answer", T, || async {
            let r = c
                .query_one(
                    "SELECT enabled, disabled_reason FROM webhooks.endpoints WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            let reason: Option<String> = r.get(1);
            (!r.get::<_, bool>(0) && reason.is_some_and(|r| r.contains(status) && r.contains(answer)))
                .then_some(())
        })
        .await;
        wait::until("its deliveries wait", T, || async {
            (statuses(&c, id).await == [("pending".into(), 2)]).then_some(())
        })
        .await;
    }
    wait::until("the plain endpoint failed both", T, || async {
        (statuses(&c, eplain).await == [("failed".into(), 2)]).then_some(())
    })
    .await;
    let enabled: bool = c
        .query_one("SELECT enabled FROM webhooks.endpoints WHERE id = $1", &[&eplain])
        .await
        .unwrap()
        .get(0);
    assert!(enabled, "a non-Make endpoint is never paused by a 403");
    running.stop().await;
}

/// pgwebhooks' own events (`webhooks.…`) go only to endpoints whose
/// patterns name them; a bare `*` does not take them.
#[tokio::test]
async fn a_bare_star_takes_no_operational_event() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (mut star, mut ops) = (Receiver::ok().await, Receiver::ok().await);
    endpoint(&c, &star.url, &["*"], "").await;
    endpoint(&c, &ops.url, &["webhooks.*"], "").await;
    let running = sidecar::start(sidecar::config(&db)).await;
    // (emit() refuses webhooks.* types: they are pgwebhooks' own.)
    c.batch_execute(
        "INSERT INTO webhooks.events (event_type, payload) VALUES ('webhooks.endpoint.paused', '{\"n\": 1}');
         SELECT webhooks.wake();",
    )
    .await
    .unwrap();
    emit(&c, 1, "order.created").await;
    let to_ops = ops.take(1, T).await;
    let to_star = star.take(1, T).await;
    assert_eq!(to_ops[0].json()["type"], "webhooks.endpoint.paused");
    assert_eq!(to_star[0].json()["type"], "order.created");
    // Both events were fanned out (the star's came second): nothing more.
    wait::until("both deliveries recorded", T, || async {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 2).then_some(())
    })
    .await;
    assert_eq!((star.count(), ops.count()), (1, 1));
    // The SQL side (replay) agrees.
    let wants: Vec<bool> = c
        .query(
            "SELECT webhooks.endpoint_wants(e, t, NULL, NULL) FROM webhooks.endpoints e,
                    unnest(ARRAY['webhooks.endpoint.paused', 'order.created']) t ORDER BY e.id, t",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(wants, [true, false, false, true]);
    running.stop().await;
}
