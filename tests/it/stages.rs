//! Each stage driven one pass at a time (`Stages::assemble`, nothing
//! spawned): fan-out, retries, rescue (lease expiry set with the SQL
//! functions' own `now`, no process killed), breaker probes, maintenance
//! and the recorder.

use std::time::Duration;

use pgwebhooks::sidecar::Stages;

use serde_json::json;

use crate::support::sidecar;
use crate::support::{count, wait, Receiver, TestApp};

const T: Duration = Duration::from_secs(20);

/// Flushes the recorder until `sql` counts `want` (outcomes arrive as the
/// lanes' attempts finish), failing after [`T`].
async fn recorded(stages: &mut Stages, c: &tokio_postgres::Client, sql: &str, want: i64) {
    let deadline = std::time::Instant::now() + T;
    loop {
        stages.recorder.run_once().await.unwrap();
        if count(c, sql).await == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {sql} = {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval, bounded by the deadline
    }
}

/// `fanout_once` until it claims a batch: events become claimable once
/// every older transaction of the cluster (other tests' too) has ended.
async fn fanout(stages: &Stages) -> pgwebhooks::sidecar::Claimed {
    wait::until("a batch to claim", T, || async {
        let claimed = stages.claimer.fanout_once().await.unwrap();
        (claimed.events > 0).then_some(claimed)
    })
    .await
}

#[tokio::test]
async fn fanout_once_claims_a_batch_and_its_jobs_are_recorded() {
    let app = TestApp::new().await;
    let c = &app.c;
    let mut r = Receiver::ok().await;
    app.add_endpoint(&r.url, &["order.*"], "").await;
    let mut stages = Stages::assemble(sidecar::config(&app.db)).await.unwrap();
    app.seed("order.created", 3).await;
    app.emit("other.thing", json!({})).await;

    // Two transactions: one batch each, or one for both.
    let mut claimed = fanout(&stages).await;
    if claimed.events < 4 {
        let more = fanout(&stages).await;
        claimed.events += more.events;
        claimed.jobs += more.jobs;
    }
    assert_eq!((claimed.events, claimed.jobs), (4, 3), "4 events, 3 subscribed");
    assert_eq!(r.take(3, T).await.len(), 3);
    recorded(
        &mut stages,
        c,
        "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
        3,
    )
    .await;
    // The batch is complete and nothing is left to claim.
    assert_eq!(count(c, "SELECT count(*) FROM webhooks.fanout_batches").await, 0);
    let again = stages.claimer.fanout_once().await.unwrap();
    assert_eq!((again.events, again.jobs), (0, 0));
}

#[tokio::test]
async fn retry_once_claims_due_deliveries_only() {
    let app = TestApp::new().await;
    let c = &app.c;
    let mut r = Receiver::ok().await;
    let id = app.add_endpoint(&r.url, &["*"], "").await;
    c.batch_execute("SELECT webhooks.emit('a', '{}'); SELECT webhooks.emit('b', '{}')")
        .await
        .unwrap();
    // Two pending deliveries: one due now, one in an hour.
    c.execute(
        "INSERT INTO webhooks.deliveries (event_id, endpoint_id, status, attempts, next_attempt_at)
         SELECT event_id, $1, 'pending', 1,
                CASE event_type WHEN 'a' THEN now() ELSE now() + interval '1 hour' END
           FROM webhooks.events",
        &[&id],
    )
    .await
    .unwrap();
    let mut stages = Stages::assemble(sidecar::config(&app.db)).await.unwrap();

    let claimed = stages.claimer.retry_once().await.unwrap();
    assert_eq!(claimed.jobs, 1, "only the due one");
    assert_eq!(r.next(T).await.json()["type"], "a");
    recorded(
        &mut stages,
        c,
        "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered' AND attempts = 2",
        1,
    )
    .await;
    assert_eq!(stages.claimer.retry_once().await.unwrap().jobs, 0);
}

#[tokio::test]
async fn rescue_takes_over_an_expired_batch_and_an_expired_delivery_lease() {
    let app = TestApp::new().await;
    let c = &app.c;
    let mut r = Receiver::ok().await;
    let id = app.add_endpoint(&r.url, &["*"], "").await;
    c.batch_execute("SELECT webhooks.emit('batch.event', '{}'); SELECT webhooks.emit('retry.event', '{}')")
        .await
        .unwrap();
    // A replica that has since died claimed both two minutes ago under a
    // one-minute lease (once they are claimable: every older transaction
    // of the cluster has ended)…
    wait::until("the events to be claimable", T, || async {
        let leased = count(
            c,
            "SELECT count(*) FROM webhooks.batch_claim('gone-replica', 100, interval '1 minute',
                                                        clock_timestamp() - interval '2 minutes')",
        )
        .await;
        (leased > 0).then(|| assert_eq!(leased, 2, "both events, one batch"))
    })
    .await;
    // …recorded one as a retry it then held, and its lease ran out too.
    c.execute(
        "INSERT INTO webhooks.deliveries (event_id, endpoint_id, status, attempts, claimed_by, lease_until)
         SELECT event_id, $1, 'delivering', 1, 'gone-replica', now() - interval '1 second'
           FROM webhooks.events WHERE event_type = 'retry.event'",
        &[&id],
    )
    .await
    .unwrap();
    let mut stages = Stages::assemble(sidecar::config(&app.db)).await.unwrap();
    // Fan-out has nothing: the cursor is past the leased batch.
    assert_eq!(stages.claimer.fanout_once().await.unwrap().events, 0);

    let rescued = stages.claimer.rescue_cycle().await.unwrap();
    assert_eq!((rescued.batches, rescued.deliveries), (1, 1), "{rescued:?}");
    assert_eq!(r.next(T).await.json()["type"], "batch.event");
    assert_eq!(stages.claimer.retry_once().await.unwrap().jobs, 1);
    assert_eq!(r.next(T).await.json()["type"], "retry.event");
    recorded(
        &mut stages,
        c,
        "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
        2,
    )
    .await;
    let again = stages.claimer.rescue_cycle().await.unwrap();
    assert_eq!((again.batches, again.deliveries), (0, 0));
}

#[tokio::test]
async fn a_probe_closes_an_open_circuit_when_the_endpoint_answers() {
    let app = TestApp::new().await;
    let c = &app.c;
    let mut r = Receiver::ok().await;
    let id = app.add_endpoint(&r.url, &["x"], "").await;
    app.emit("x", json!({})).await;
    c.execute(
        "INSERT INTO webhooks.deliveries (event_id, endpoint_id, status, attempts, next_attempt_at)
         SELECT event_id, $1, 'pending', 3, now() FROM webhooks.events",
        &[&id],
    )
    .await
    .unwrap();
    c.execute("SELECT webhooks.endpoint_trip($1, 'failing: test')", &[&id])
        .await
        .unwrap();
    let mut config = sidecar::config(&app.db);
    config.breaker.probe = Duration::from_secs(3600);
    let mut stages = Stages::assemble(config).await.unwrap();

    let probed = stages.prober.run_once().await.unwrap();
    assert_eq!((probed.probes, probed.closed), (1, 1));
    assert_eq!(r.next(T).await.json()["type"], "x");
    let enabled: bool = c
        .query_one("SELECT enabled FROM webhooks.endpoints WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(enabled, "circuit closed");
    recorded(
        &mut stages,
        c,
        "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
        1,
    )
    .await;
    // Closed: nothing left to probe.
    assert_eq!(stages.prober.run_once().await.unwrap().probes, 0);
}

#[tokio::test]
async fn maintenance_removes_delivered_history_past_retention() {
    let app = TestApp::new().await;
    let c = &app.c;
    let mut r = Receiver::ok().await;
    app.add_endpoint(&r.url, &["*"], "").await;
    let mut config = sidecar::config(&app.db);
    config.maintain.retention = Some(Duration::from_millis(1));
    config.maintain.retention_every = Duration::ZERO;
    let mut stages = Stages::assemble(config).await.unwrap();
    app.emit("old", json!({})).await;
    assert_eq!(fanout(&stages).await.jobs, 1);
    r.next(T).await;
    recorded(
        &mut stages,
        c,
        "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
        1,
    )
    .await;

    let deadline = std::time::Instant::now() + T;
    let removed = loop {
        let m = stages.maintainer.run_once().await.unwrap();
        if m.retention.deliveries == 1 {
            break m.retention;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention removed nothing: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval, bounded by the deadline
    };
    assert_eq!(removed.attempts, 1, "{removed:?}");
    assert_eq!(count(c, "SELECT count(*) FROM webhooks.deliveries").await, 0);
}

/// Dead letters have a retention of their own (`PGWEBHOOKS_RETENTION_FAILED`,
/// audit N7): failed and dead deliveries given up long enough ago go, with
/// their attempts; pending and delivered ones are not touched by it.
#[tokio::test]
async fn maintenance_removes_dead_letters_past_their_own_retention() {
    let app = TestApp::new().await;
    let c = &app.c;
    let ep = app.add_endpoint("http://127.0.0.1:9/a", &["*"], "").await;
    c.execute(
        "WITH e AS (SELECT webhooks.emit('x', jsonb_build_object('n', g)) AS id, g FROM generate_series(1, 4) g),
              d AS (INSERT INTO webhooks.deliveries (event_id, endpoint_id, status, attempts, updated_at)
                    SELECT id, $1, (ARRAY['failed', 'dead', 'pending', 'delivered'])[g], 1,
                           now() - interval '2 days' FROM e RETURNING id)
         INSERT INTO webhooks.attempts (delivery_id, attempt, started_at, duration_ms, error, endpoint_id)
         SELECT id, 1, now() - interval '2 days', 1, 'gone', $1 FROM d",
        &[&ep],
    )
    .await
    .unwrap();
    // A dead letter given up only now stays.
    c.execute(
        "INSERT INTO webhooks.deliveries (event_id, endpoint_id, status, attempts)
         VALUES (webhooks.emit('x', '{}'), $1, 'dead', 3)",
        &[&ep],
    )
    .await
    .unwrap();
    let mut config = sidecar::config(&app.db);
    config.maintain.retention = None;
    config.maintain.retention_failed = Some(Duration::from_secs(24 * 3600));
    config.maintain.retention_every = Duration::ZERO;
    let mut stages = Stages::assemble(config).await.unwrap();
    let removed = stages.maintainer.run_once().await.unwrap().retention;
    assert_eq!(
        (removed.deliveries, removed.attempts, removed.events),
        (2, 2, 0),
        "{removed:?}"
    );
    let left: Vec<(String, i64)> = c
        .query(
            "SELECT d.status || CASE WHEN d.updated_at > now() - interval '1 day' THEN ' (new)' ELSE '' END,
                    (SELECT count(*) FROM webhooks.attempts a WHERE a.delivery_id = d.id)
               FROM webhooks.deliveries d ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        left,
        [
            ("dead (new)".into(), 0),
            ("delivered".into(), 1),
            ("pending".into(), 1)
        ]
    );
    // Off: dead letters stay until handled.
    let mut config = sidecar::config(&app.db);
    config.maintain.retention = None;
    config.maintain.retention_failed = None;
    let mut stages = Stages::assemble(config).await.unwrap();
    assert_eq!(stages.maintainer.run_once().await.unwrap().retention.total(), 0);
}

#[tokio::test]
async fn subscriptions_reload_when_the_config_version_moves() {
    let app = TestApp::new().await;
    let first = app.add_endpoint("http://127.0.0.1:9/a", &["*"], "").await;
    let stages = Stages::assemble(sidecar::config(&app.db)).await.unwrap();
    let loaded = stages.subscriptions.current();
    assert_eq!(loaded.endpoints.len(), 1);
    assert!(loaded.get(first).is_some());

    // Unchanged version: the cached copy, not a reload.
    let same = stages.claimer.snapshot_at(Some(loaded.version)).await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&same, &loaded));

    // A new endpoint moves the version; the stage reloads and every reader
    // of the shared copy sees it.
    let second = app.add_endpoint("http://127.0.0.1:9/b", &["order.*"], "").await;
    let version: i64 = app.one("SELECT version FROM webhooks.config_version").await;
    assert!(version > loaded.version);
    let fresh = stages.claimer.snapshot_at(Some(version)).await.unwrap();
    assert_eq!(fresh.version, version);
    assert!(fresh.get(second).is_some());
    assert_eq!(stages.subscriptions.current().version, version);
}

/// Outcomes the recorder has not yet written count against
/// `max_in_memory`: while the database takes none of them (the recorder is
/// not run here), fan-out stops claiming once that many wait, instead of
/// letting them pile up in memory; once they are written it goes on, and
/// every event is delivered and recorded once.
#[tokio::test]
async fn fanout_pauses_while_outcomes_wait_to_be_written() {
    let app = TestApp::new().await;
    let c = &app.c;
    let mut r = Receiver::ok().await;
    app.add_endpoint(&r.url, &["order.*"], "").await;
    let mut config = sidecar::config(&app.db);
    config.claim.batch_size = 2;
    config.claim.max_in_memory = 4;
    config.claim.linger = Duration::ZERO;
    let mut stages = Stages::assemble(config).await.unwrap();
    for i in 0..20 {
        app.emit("order.created", json!({ "i": i })).await;
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let fanout = tokio::spawn(stages.claimer.clone().run_fanout(shutdown.clone()));
    // Claiming stops once 4 outcomes wait (and the attempts in flight then
    // add theirs): at most 4 - 1 waiting + 4 - 1 in flight + one batch.
    wait::until("claiming to stop with outcomes unwritten", T, || async {
        let (waiting, in_flight) = (
            stages.claimer.recorder.unrecorded(),
            stages.dispatcher.in_memory(),
        );
        (waiting >= 4 && in_flight == 0).then_some(())
    })
    .await;
    // Nothing more is claimed while they wait: watched over many of the
    // claim loop's 50 ms checks (what is checked is an absence, so it can
    // only be watched for a while), once a claim already under way when
    // the limit was reached has had time to land.
    let window = Duration::from_millis(600);
    tokio::time::sleep(window).await;
    let waiting = stages.claimer.recorder.unrecorded();
    assert!(
        waiting <= 8,
        "{waiting} outcomes unwritten (limit 4, batches of 2)"
    );
    tokio::time::sleep(window).await;
    assert_eq!(stages.claimer.recorder.unrecorded(), waiting, "claiming went on");
    assert_eq!(
        r.count(),
        waiting,
        "only what was claimed before the pause arrived"
    );
    assert!(waiting < 20);
    // Writing them lets fan-out go on, to the end.
    recorded(
        &mut stages,
        c,
        "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
        20,
    )
    .await;
    assert_eq!(stages.claimer.recorder.unrecorded(), 0);
    assert_eq!(r.take(20, T).await.len(), 20);
    shutdown.cancel();
    fanout.await.unwrap();
}
