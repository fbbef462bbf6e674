//! What operators do: status, retry, resend, replay, pause and resume,
//! retention while the sidecar runs, the circuit breaker, metrics.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::sidecar::{self, endpoint, statuses};
use crate::support::{one, wait, Receiver, Reply, TestDb};

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn status_and_a_dead_letter_retried_from_the_command_line() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (mut r, up) = Receiver::down_until_switched(500).await;
    let id = endpoint(&c, &r.url, &["*"], "").await;
    let s = sidecar::start(sidecar::config(&db)).await;
    c.execute("SELECT webhooks.emit('order.created', '{\"n\": 1}')", &[])
        .await
        .unwrap();
    r.take(3, T).await; // three attempts, then dead
    wait::until("a dead letter", T, || async {
        (statuses(&c, id).await == [("dead".into(), 1)]).then_some(())
    })
    .await;

    let (ok, out, err) = db.cli(&["status"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("dead letters: 1") && out.contains("pgwebhooks retry --dead"),
        "{out}"
    );
    // The last failure's reason, not only counts (#14.4).
    assert!(
        out.lines()
            .any(|l| l.contains("last failure") && l.contains("ago (") && l.contains("HTTP 500")),
        "{out}"
    );
    let dead: i64 = one(&c, "SELECT count(*) FROM webhooks.dead_letters").await;
    assert_eq!(dead, 1);
    let failures: i64 = one(
        &c,
        "SELECT count(*) FROM webhooks.failures WHERE status_code = 500",
    )
    .await;
    assert_eq!(failures, 3);

    up.store(true, Ordering::SeqCst);
    let (ok, out, _) = db.cli(&["retry", "--dead"]).await;
    assert!(ok && out.contains("re-queued 1"), "{out}");
    r.next(T).await;
    wait::until("delivered after the retry", T, || async {
        (statuses(&c, id).await == [("delivered".into(), 1)]).then_some(())
    })
    .await;
    let (ok, _, err) = db.cli(&["retry", "424242"]).await;
    assert!(!ok && err.contains("delivery 424242: not re-queued"), "{err}");
    let health: String = one(&c, "SELECT state FROM webhooks.endpoint_health").await;
    assert_eq!(health, "enabled");
    s.stop().await;
}

#[tokio::test]
async fn resend_is_a_new_event_and_replay_sends_the_originals() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE public_tasks (id bigint PRIMARY KEY, title text, token text);
         SELECT webhooks.watch('public_tasks', 'task', '{\"exclude\": [\"token\"]}');
         INSERT INTO public_tasks VALUES (7, 'first', 'secret-token');",
    )
    .await
    .unwrap();
    let mut a = Receiver::ok().await;
    let mut b = Receiver::ok().await;
    endpoint(&c, &a.url, &["*"], "").await;
    let e_b = endpoint(&c, &b.url, &["*"], "").await;
    let s = sidecar::start(sidecar::config(&db)).await;
    let original = a.next(T).await;
    b.next(T).await;

    // resend: a fresh event for the row as it is now.
    c.execute("UPDATE public_tasks SET title = 'renamed' WHERE id = 7", &[])
        .await
        .unwrap();
    a.next(T).await;
    b.next(T).await;
    let (ok, out, err) = db
        .cli(&["resend", "public_tasks", "7", "--event", "task.created"])
        .await;
    assert!(ok, "{err}");
    let new_id = out.lines().last().unwrap().to_owned();
    let resent = a.next(T).await;
    assert_eq!(resent.webhook_id(), new_id);
    assert_ne!(resent.webhook_id(), original.webhook_id());
    assert_eq!(resent.json()["type"], "task.created");
    assert_eq!(resent.json()["data"]["title"], "renamed");
    assert!(
        resent.json()["data"].get("token").is_none(),
        "excluded columns stay out"
    );
    b.next(T).await;

    // replay: the past events again, to one endpoint, with their original ids.
    let (ok, out, err) = db
        .cli(&["replay", "--endpoint", &e_b.to_string(), "--since", "1 hour ago"])
        .await;
    assert!(ok && out.contains("re-queued 3"), "{out}{err}");
    let replayed: HashSet<String> = b.take(3, T).await.iter().map(|r| r.webhook_id()).collect();
    let all: HashSet<String> = c
        .query("SELECT event_id::text FROM webhooks.events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(replayed, all);
    s.stop().await;
    assert!(a.drain().is_empty(), "the replay went to one endpoint only");

    let (ok, _, err) = db.cli(&["resend", "no_such_table", "1"]).await;
    assert!(!ok && err.contains("no table named 'no_such_table'"), "{err}");
    let (ok, _, err) = db
        .cli(&[
            "replay",
            "--endpoint",
            &e_b.to_string(),
            "--since",
            "yesterday-ish",
        ])
        .await;
    assert!(!ok && err.contains("invalid input syntax"), "{err}");
}

#[tokio::test]
async fn a_disabled_endpoint_gets_nothing_then_catches_up() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut r = Receiver::ok().await;
    let id = endpoint(&c, &r.url, &["*"], "").await;
    let s = sidecar::start(sidecar::config(&db)).await;
    assert!(db.cli(&["endpoint", "disable", &id.to_string()]).await.0);
    c.execute(
        "SELECT webhooks.emit('x', jsonb_build_object('n', g)) FROM generate_series(1, 20) g",
        &[],
    )
    .await
    .unwrap();
    wait::until("the backlog waits", T, || async {
        (statuses(&c, id).await == [("pending".into(), 20)]).then_some(())
    })
    .await;
    assert_eq!(r.drain().len(), 0);
    assert!(db.cli(&["endpoint", "enable", &id.to_string()]).await.0);
    r.take(20, T).await;
    s.stop().await;
}

#[tokio::test]
async fn retention_removes_only_delivered_history_while_running() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut ok = Receiver::ok().await;
    let mut gone = Receiver::start(|_| Reply::status(400)).await;
    endpoint(&c, &ok.url, &["kept.*", "old.*"], "").await;
    let bad = endpoint(&c, &gone.url, &["kept.*"], "").await;
    let mut config = sidecar::config(&db);
    config.maintain.retention = Some(Duration::from_millis(500));
    config.maintain.retention_every = Duration::from_millis(100);
    config.maintain.tick = Duration::from_millis(100);
    let s = sidecar::start(config).await;
    c.execute(
        "SELECT webhooks.emit('old.done', jsonb_build_object('n', g)) FROM generate_series(1, 50) g",
        &[],
    )
    .await
    .unwrap();
    c.execute("SELECT webhooks.emit('kept.failed', '{}')", &[])
        .await
        .unwrap();
    ok.take(51, T).await;
    gone.next(T).await;
    wait::until("delivered history removed", T, || async {
        let old: i64 = one(&c, "SELECT count(*) FROM webhooks.events WHERE event_type = 'old.done'").await;
        let attempts: i64 = one(&c, "SELECT count(*) FROM webhooks.attempts a JOIN webhooks.deliveries d ON d.id = a.delivery_id AND d.status = 'delivered'").await;
        (old == 0 && attempts == 0).then_some(())
    })
    .await;
    // The failed delivery (a dead letter) and its event stay until handled.
    assert_eq!(statuses(&c, bad).await, [("failed".into(), 1)]);
    let kept: i64 = one(
        &c,
        "SELECT count(*) FROM webhooks.events WHERE event_type = 'kept.failed'",
    )
    .await;
    assert_eq!(kept, 1);
    // New events keep flowing while retention runs.
    c.execute("SELECT webhooks.emit('old.more', '{}')", &[])
        .await
        .unwrap();
    ok.next(T).await;
    s.stop().await;
}

#[tokio::test]
async fn the_breaker_pauses_a_failing_endpoint_and_resumes_it() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (mut r, up) = Receiver::down_until_switched(503).await;
    let id = endpoint(&c, &r.url, &["*"], "").await;
    let mut config = sidecar::config_with_inbound(&db);
    config.deliver.retry_schedule = vec![Duration::from_secs(3600)];
    config.breaker.failures = 5;
    config.breaker.window = Duration::ZERO;
    config.breaker.probe = Duration::from_millis(200);
    config.maintain.tick = Duration::from_millis(100);
    let s = sidecar::start(config).await;
    c.execute(
        "SELECT webhooks.emit('x', jsonb_build_object('n', g)) FROM generate_series(1, 10) g",
        &[],
    )
    .await
    .unwrap();
    wait::until("circuit open", T, || async {
        let state: String = one(&c, "SELECT state FROM webhooks.endpoint_health").await;
        (state == "circuit open").then_some(())
    })
    .await;
    let reason: String = c
        .query_one(
            "SELECT disabled_reason FROM webhooks.endpoints WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reason.starts_with("circuit open"), "{reason}");
    // Outcomes reach /metrics once the recorder has written them.
    let names = [
        "pgwebhooks_deliveries_total",
        "pgwebhooks_attempt_duration_seconds",
        "pgwebhooks_breaker_trips_total",
    ];
    wait::until("the metrics", T, || async {
        let metrics = reqwest::get(format!("{}/metrics", s.base))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        names.iter().all(|n| metrics.contains(n)).then_some(())
    })
    .await;
    up.store(true, Ordering::SeqCst);
    wait::until("resumed and drained", T, || async {
        (statuses(&c, id).await == [("delivered".into(), 10)]).then_some(())
    })
    .await;
    let enabled: bool = c
        .query_one("SELECT enabled FROM webhooks.endpoints WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(enabled);
    s.stop().await;
    // What the receiver saw, probes and retries included, is exactly the
    // ten events: every one arrived, nothing else did.
    let ids: HashSet<String> = r.drain().iter().map(|x| x.webhook_id()).collect();
    let events: HashSet<String> = c
        .query(
            "SELECT event_id::text FROM webhooks.events WHERE event_type = 'x'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(events.len(), 10);
    assert_eq!(ids, events);
}

#[tokio::test]
async fn an_ordered_endpoint_gets_each_rows_events_in_order_under_retries() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE public_orders (id int PRIMARY KEY, step int NOT NULL);
         SELECT webhooks.watch('public_orders', 'order');",
    )
    .await
    .unwrap();
    // The first attempt of order 1's first event fails: its later events must wait.
    let mut r = Receiver::start(|x| {
        let body = x.json();
        if body["data"]["id"] == 1 && body["data"]["step"] == 0 && body["type"] == "order.created" && x.n < 2
        {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    })
    .await;
    let id = endpoint(&c, &r.url, &["*"], "ordered = true").await;
    let s = sidecar::start(sidecar::config(&db)).await;
    c.batch_execute(
        "INSERT INTO public_orders VALUES (1, 0), (2, 0);
         UPDATE public_orders SET step = 1;
         UPDATE public_orders SET step = 2;
         UPDATE public_orders SET step = 3 WHERE id = 2;",
    )
    .await
    .unwrap();
    let got = r.take(8, T).await; // 7 events + 1 failed attempt
    let order_of = |row: i64| -> Vec<i64> {
        got.iter()
            .filter(|x| x.json()["data"]["id"] == row && (x.n >= 2 || row != 1))
            .map(|x| x.json()["data"]["step"].as_i64().unwrap())
            .collect()
    };
    let steps_1: Vec<i64> = got
        .iter()
        .filter(|x| x.json()["data"]["id"] == 1)
        .map(|x| x.json()["data"]["step"].as_i64().unwrap())
        .collect();
    assert_eq!(
        steps_1,
        [0, 0, 1, 2],
        "order 1: the failed first event, its retry, then the rest"
    );
    assert_eq!(order_of(2), [0, 1, 2, 3], "order 2 in order");
    // Order 2 was not held up by order 1's retry.
    let first_retry = got
        .iter()
        .position(|x| x.json()["data"]["id"] == 1 && x.n >= 1)
        .unwrap();
    assert!(
        got[..first_retry].iter().any(|x| x.json()["data"]["id"] == 2),
        "other rows flow meanwhile"
    );
    wait::until("all delivered", T, || async {
        (statuses(&c, id).await == [("delivered".into(), 7)]).then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn status_names_a_write_transaction_that_holds_fan_out_back() {
    let db = TestDb::new().await;
    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT webhooks.emit('held', '{}')", &[])
        .await
        .unwrap();
    wait::until(
        "status to name the open transaction",
        Duration::from_secs(40),
        || async {
            let (ok, out, _) = db.cli(&["status"]).await;
            (ok && out.contains("warning: write transaction")).then_some(())
        },
    )
    .await;
    tx.rollback().await.unwrap();
    let (ok, out, _) = db.cli(&["status"]).await;
    assert!(ok && !out.contains("warning: write transaction"), "{out}");
}

/// L4: a Make.com URL is a credential. The views and `status` show
/// endpoints without a name by scheme and host only; `webhooks.url_redact`
/// and the CLI's redaction agree.
#[tokio::test]
async fn views_and_status_never_show_an_endpoints_path_or_query() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let make = endpoint(&c, "https://hook.eu1.make.com/abcSECRETTOKENxyz", &["*"], "").await;
    let keyed = endpoint(&c, "http://127.0.0.1:9/hook?key=SECRETKEY", &["*"], "").await;
    let named = endpoint(&c, "https://example.com/SECRETPATH", &["*"], "name = 'crm'").await;
    let labels = |view: &'static str| {
        let c = &c;
        async move {
            c.query(
                &format!("SELECT endpoint_id, endpoint FROM webhooks.{view} WHERE endpoint_id IS NOT NULL ORDER BY 1"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
        }
    };
    let expected = vec![
        (make, "https://hook.eu1.make.com/…".to_owned()),
        (keyed, "http://127.0.0.1:9/…".to_owned()),
        (named, "crm".to_owned()),
    ];
    assert_eq!(labels("backlog").await, expected);
    assert_eq!(labels("endpoint_health").await, expected);
    let (ok, out, err) = db.cli(&["status"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("https://hook.eu1.make.com/…"), "{out}");
    assert!(!out.contains("SECRET"), "{out}");

    for url in [
        "https://hook.eu1.make.com/abcSECRETTOKENxyz",
        "https://example.com:8443/hook?key=SECRET",
        "https://example.com?key=SECRET",
        "https://example.com#SECRET",
        "http://user:SECRET@example.com/x",
        "http://a@b@example.com",
        "http://[::1]:8080/",
        "https://example.com",
        "no scheme SECRET",
        "a/b://SECRET",
    ] {
        let sql: String = c
            .query_one("SELECT webhooks.url_redact($1)", &[&url])
            .await
            .unwrap()
            .get(0);
        assert_eq!(sql, pgwebhooks::deliver::target::redact(url), "{url}");
        assert!(!sql.contains("SECRET"), "{url}: {sql}");
    }
}

/// I3: deleting an endpoint (`endpoint delete --force`, or SQL) takes its
/// deliveries and their attempts with it: nothing is left to count as
/// backlog or dead letters, or to keep events from retention.
#[tokio::test]
async fn removing_an_endpoint_leaves_no_orphan_deliveries() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (mut r, _up) = Receiver::down_until_switched(500).await;
    let gone = endpoint(&c, &r.url, &["*"], "").await;
    let by_sql = endpoint(&c, &r.url, &["*"], "").await;
    let s = sidecar::start(sidecar::config(&db)).await;
    c.execute(
        "SELECT webhooks.emit('order.created', '{}') FROM generate_series(1, 2)",
        &[],
    )
    .await
    .unwrap();
    r.take(12, T).await; // 2 events x 2 endpoints x 3 attempts
    wait::until("four dead letters", T, || async {
        (one::<i64>(&c, "SELECT count(*) FROM webhooks.dead_letters").await == 4).then_some(())
    })
    .await;
    s.stop().await;
    // And one still pending (never attempted).
    c.execute("SELECT webhooks.replay($1, now() - interval '1 hour')", &[&gone])
        .await
        .unwrap();
    // Waiting deliveries: refused without --force (`remove` is `delete`'s alias).
    let (ok, _, err) = db.cli(&["endpoint", "remove", &gone.to_string()]).await;
    assert!(
        !ok && err.contains("not deleted") && err.contains("--force"),
        "{err}"
    );
    let (ok, out, err) = db
        .cli(&["endpoint", "remove", "--force", &gone.to_string()])
        .await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("endpoint {gone} deleted, with its 2 deliveries")),
        "{out}"
    );
    let (ok, _, err) = db.cli(&["endpoint", "delete", &gone.to_string()]).await;
    assert!(!ok && err.contains(&format!("no endpoint {gone}")), "{err}");
    c.execute("DELETE FROM webhooks.endpoints WHERE id = $1", &[&by_sql])
        .await
        .unwrap();
    let orphans: (i64, i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM webhooks.deliveries), (SELECT count(*) FROM webhooks.attempts),
                        (SELECT count(*) FROM webhooks.endpoint_secrets)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(orphans, (0, 0, 0));
    // Only events wait (for a sidecar to fan them out): the record of the
    // forced delete, and the dead-letter notices the sidecar had not fanned
    // out when it stopped.
    let unfanned: i64 = one(&c, "SELECT events FROM webhooks.fanout_pending()").await;
    let notices: i64 = one(
        &c,
        "SELECT count(*) FROM webhooks.events WHERE event_type = 'webhooks.delivery.dead'",
    )
    .await;
    assert!((1..=1 + notices).contains(&unfanned), "{unfanned} of {notices}");
    let (ok, out, _) = db.cli(&["status"]).await;
    assert!(
        ok && out.contains("dead letters: 0")
            && out.contains(&format!("backlog: {unfanned} waiting"))
            && out.contains(&format!("{unfanned} not yet fanned out")),
        "{out}"
    );
    let record: serde_json::Value = one(
        &c,
        "SELECT payload FROM webhooks.events WHERE event_type = 'webhooks.endpoint.deleted'",
    )
    .await;
    assert_eq!(record["dropped"], 2, "{record}");
    // The events are free for retention now (the two orders, and the
    // notices already fanned out).
    let removed: i64 = one(&c, "SELECT events FROM webhooks.retention_run(interval '0')").await;
    assert_eq!(removed, 2 + notices + 1 - unfanned);
}

/// pgwebhooks' own functions fail with SQLSTATEs a script can match:
/// WH404 for what does not exist, WH409 for what cannot be done now, the
/// standard 22023 for a bad argument.
#[tokio::test]
async fn operations_fail_with_sqlstates_of_their_own() {
    use pgwebhooks::db::sqlstate;
    let app = crate::support::TestApp::new().await;
    let c = &app.c;
    c.batch_execute(
        "CREATE SCHEMA shop; CREATE TABLE shop.orders (id int PRIMARY KEY, state text);
         SELECT webhooks.watch('shop.orders', 'order');",
    )
    .await
    .unwrap();
    let id = app.add_endpoint("http://127.0.0.1:9/hook", &["*"], "").await;
    c.execute("SELECT webhooks.endpoint_pause($1, 'maintenance')", &[&id])
        .await
        .unwrap();
    let cases = [
        (
            "SELECT webhooks.replay(999999, now() - interval '1 hour')",
            sqlstate::NOT_FOUND,
        ),
        ("SELECT webhooks.endpoint_test(999999)", sqlstate::NOT_FOUND),
        ("SELECT webhooks.resend('shop.orders', '42')", sqlstate::NOT_FOUND),
        ("SELECT webhooks.emit('Not A Type!', '{}')", "22023"),
    ];
    for (sql, want) in cases {
        let e = c.execute(sql, &[]).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some(want), "{sql}: {e}");
    }
    let e = c
        .execute("SELECT webhooks.endpoint_test($1)", &[&id])
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some(sqlstate::CONFLICT), "{e}");
}

/// The last hour's figures (endpoint_health, the console's series and
/// latency) come from the per-minute rollup the attempts' trigger keeps
/// (V16), and agree with the attempts themselves: counts exactly, the p95
/// within its histogram bucket. On upgrade, the rollup is filled once from
/// the attempts already there.
#[tokio::test]
async fn the_hours_figures_come_from_a_rollup_that_agrees_with_the_attempts() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let ep = endpoint(&c, "http://127.0.0.1:9/rollup", &["*"], "").await;
    // Three statements (as three recorder flushes would), spread over the
    // last hour, and some older attempts the hour must not count.
    for (n, ago, status) in [
        (150, "10 seconds", 200),
        (60, "20 minutes", 503),
        (90, "50 minutes", 200),
        (40, "3 hours", 200),
    ] {
        c.execute(
            &format!(
                "WITH e AS (SELECT webhooks.emit('x', '{{}}') AS id, g FROM generate_series(1, {n}) g),
                      d AS (INSERT INTO webhooks.deliveries (event_id, endpoint_id, status, attempts)
                            SELECT id, $1, 'delivered', 1 FROM e RETURNING id)
                 INSERT INTO webhooks.attempts (delivery_id, attempt, started_at, duration_ms, status_code, endpoint_id)
                 SELECT d.id, 1, now() - interval '{ago}' - (d.id % 7) * interval '1 second',
                        (d.id * 37 % 400) + 0.5, {status}, $1 FROM d"
            ),
            &[&ep],
        )
        .await
        .unwrap();
    }
    let exact = "SELECT count(*), count(*) FILTER (WHERE status_code BETWEEN 200 AND 299),
                        0,
                        percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)
                   FROM webhooks.attempts WHERE started_at > now() - interval '1 hour'";
    let health = "SELECT attempts_1h, succeeded_1h, avg_latency_ms, p95_latency_ms::float8
                    FROM webhooks.endpoint_health WHERE endpoint_id = $1";
    let check = |label: &'static str| {
        let c = &c;
        async move {
            let e = c.query_one(exact, &[]).await.unwrap();
            let h = c.query_one(health, &[&ep]).await.unwrap();
            assert_eq!(e.get::<_, i64>(0), 300, "{label}");
            assert_eq!(
                (h.get::<_, i64>(0), h.get::<_, i64>(1)),
                (e.get::<_, i64>(0), e.get::<_, i64>(1)),
                "{label}: attempts and 2xx in the last hour"
            );
            let avg =
                "SELECT (SELECT avg_latency_ms::text FROM webhooks.endpoint_health WHERE endpoint_id = $1),
                              (SELECT round(avg(duration_ms)::numeric, 1)::text FROM webhooks.attempts
                                WHERE started_at > now() - interval '1 hour')";
            let a = c.query_one(avg, &[&ep]).await.unwrap();
            assert_eq!(
                a.get::<_, String>(0),
                a.get::<_, String>(1),
                "{label}: average latency"
            );
            let (p95, exact_p95): (f64, f64) = (h.get(3), e.get(3));
            // 250 ms .. 500 ms is one bucket: the estimate stays inside it
            // and near the exact value.
            assert!(
                (250.0..=400.5).contains(&p95) && (p95 - exact_p95).abs() < 40.0,
                "{label}: p95 {p95} vs exact {exact_p95}"
            );
        }
    };
    check("as written").await;

    // An upgrade from before V16: no trigger, no rollup; migrate fills it
    // from the attempts once, then keeps it.
    c.batch_execute(
        "DROP TRIGGER webhooks_attempt_minutes ON webhooks.attempts;
         TRUNCATE webhooks.attempt_minutes;",
    )
    .await
    .unwrap();
    let mut m = db.client().await;
    pgwebhooks::db::migrate::run(&mut m, false).await.unwrap();
    check("filled by migrate").await;
    pgwebhooks::db::migrate::run(&mut m, false).await.unwrap();
    check("not filled twice").await;
    let pool = pgwebhooks::db::pool(pgwebhooks::db::DbConfig::from(db.config().clone()), 1);
    let pooled = pool.get().await.unwrap();
    let per_minute: i64 = pgwebhooks::db::console::per_minute(&pooled)
        .await
        .unwrap()
        .iter()
        .map(|(_, _, n, _)| n)
        .sum();
    assert_eq!(per_minute, 300, "the console's hour series");
}
