//! Faults the engine must survive without losing an event: a replica
//! killed with SIGKILL, Postgres restarting under it, a graceful stop with
//! attempts in flight.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::db::Cluster;
use crate::support::sidecar::{self, endpoint, Process, SECRET};
use crate::support::{count, wait, Receiver, Reply, TestDb};

fn spawn_sidecar(url: &str) -> Process {
    let child = sidecar::run_command(url)
        .env("PGWEBHOOKS_LISTEN", "127.0.0.1:0")
        .env("PGWEBHOOKS_ADMIN_LISTEN", "127.0.0.1:0")
        .env("PGWEBHOOKS_TIMEOUT", "1s")
        .env("PGWEBHOOKS_LEASE", "5s")
        .env("PGWEBHOOKS_POLL_INTERVAL", "200ms")
        .env("PGWEBHOOKS_RETRY_SCHEDULE", "100ms,200ms,400ms")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn pgwebhooks run");
    Process(child)
}

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut r = Receiver::start(|_| Reply::ok().delay(Duration::from_millis(2))).await;
    endpoint(&c, &r.url, &["*"], "max_in_flight = 8").await;
    c.execute(
        "SELECT webhooks.emit('kill.test', jsonb_build_object('n', g)) FROM generate_series(1, 3000) g",
        &[],
    )
    .await
    .unwrap();

    let mut first = spawn_sidecar(&db.url());
    wait::until(
        "the first replica to be mid-stream",
        Duration::from_secs(60),
        || {
            let n = r.count();
            async move { (n >= 300).then_some(()) }
        },
    )
    .await;
    first.kill();
    let before = r.count();
    assert!(before < 3000, "killed mid-stream ({before} delivered)");

    let mut second = spawn_sidecar(&db.url());
    let mut seen = HashSet::new();
    let mut total = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < 3000 {
        let got = tokio::time::timeout_at(deadline, r.next(Duration::from_secs(60)))
            .await
            .expect("all delivered in time");
        seen.insert(got.webhook_id());
        total += 1;
    }
    wait::until(
        "every delivery recorded, nothing claimed or pending",
        Duration::from_secs(60),
        || async {
            let delivered = count(
                &c,
                "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
            )
            .await;
            let open = count(
                &c,
                "SELECT count(*) FROM webhooks.deliveries WHERE status <> 'delivered'",
            )
            .await;
            let batches = count(&c, "SELECT count(*) FROM webhooks.fanout_batches").await;
            (delivered == 3000 && open == 0 && batches == 0).then_some(())
        },
    )
    .await;
    second.kill();
    // Duplicates are possible (at least once) but carry the same webhook-id:
    // the distinct ids received are exactly the events' ids.
    let events: HashSet<String> = c
        .query(
            "SELECT event_id::text FROM webhooks.events WHERE event_type = 'kill.test'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(events.len(), 3000);
    assert_eq!(seen, events, "every webhook-id received is an event's id");
    eprintln!(
        "SIGKILL: {before} before the kill, {} duplicates",
        total + r.drain().len() - 3000
    );
}

#[tokio::test]
async fn postgres_restarts_are_survived_without_restarting_the_sidecar() {
    let cluster = Cluster::start().await;
    let c = crate::support::db::connect_to(&cluster.config).await;
    let mut r = Receiver::ok().await;
    endpoint(&c, &r.url, &["*"], "").await;
    let mut config = pgwebhooks::sidecar::SidecarConfig::new(cluster.config.clone());
    config.claim.poll_interval = Duration::from_millis(200);
    config.deliver.timeout = Duration::from_secs(2);
    config.claim.lease = Duration::from_secs(10);
    config.deliver.allow_private_targets = true;
    let running = sidecar::start(config).await;
    let mut seen = HashSet::new();
    for (round, mode) in ["fast", "immediate", "fast", "none"].iter().enumerate() {
        let c = crate::support::db::connect_to(&cluster.config).await;
        c.execute(
            "SELECT webhooks.emit('restart.test', jsonb_build_object('round', $1::int, 'n', g)) FROM generate_series(1, 100) g",
            &[&(round as i32)],
        )
        .await
        .unwrap();
        let committed: HashSet<String> = c
            .query("SELECT event_id::text FROM webhooks.events", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        // Duplicates (same webhook-id) may arrive after a restart; wait until
        // every committed event has arrived at least once.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !committed.is_subset(&seen) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            seen.insert(r.next(left).await.webhook_id());
        }
        assert_eq!(committed.len(), 100 * (round + 1));
        if *mode != "none" {
            cluster.restart(mode);
        }
    }
    running.stop().await;
}

#[tokio::test]
async fn graceful_stop_lets_in_flight_attempts_finish() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut r = Receiver::start(|_| Reply::ok().delay(Duration::from_millis(800))).await;
    endpoint(&c, &r.url, &["*"], "").await;
    let running = sidecar::start(sidecar::config(&db)).await;
    c.execute(
        "SELECT webhooks.emit('slow', jsonb_build_object('n', g)) FROM generate_series(1, 5) g",
        &[],
    )
    .await
    .unwrap();
    r.take(5, Duration::from_secs(10)).await;
    running.stop().await; // while all five answers are still 800 ms away
    let delivered = count(
        &c,
        "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
    )
    .await;
    assert_eq!(
        delivered, 5,
        "in-flight attempts finished and were recorded before exit"
    );
    let listeners = count(&c, "SELECT count(*) FROM webhooks.listeners").await;
    assert_eq!(listeners, 0, "the replica said goodbye");
}

#[tokio::test]
#[cfg_attr(
    not(have_standardwebhooks),
    ignore = "needs the Standard Webhooks verifier (pip install standardwebhooks, then touch build.rs); .ci/run installs it"
)]
async fn the_reference_verifier_accepts_our_signatures() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut r = Receiver::ok().await;
    let id = endpoint(&c, &r.url, &["*"], "").await;
    // Two active secrets (a rotation in progress): both entries must verify.
    c.execute(
        "INSERT INTO webhooks.endpoint_secrets (endpoint_id, secret, created_at) VALUES ($1, 'whsec_c2Vjb25kLXNlY3JldC1mb3ItdGVzdHM=', now() + interval '1 second')",
        &[&id],
    )
    .await
    .unwrap();
    let running = sidecar::start(sidecar::config(&db)).await;
    c.execute(
        "SELECT webhooks.emit('verify.me', jsonb_build_object('n', g, 'text', 'ünïcødé \"quoted\"')) FROM generate_series(1, 20) g",
        &[],
    )
    .await
    .unwrap();
    let got = r.take(20, Duration::from_secs(20)).await;
    running.stop().await;
    for secret in [SECRET, "whsec_c2Vjb25kLXNlY3JldC1mb3ItdGVzdHM="] {
        let doc = serde_json::json!({
            "secret": secret,
            "requests": got.iter().map(|g| serde_json::json!({
                "headers": {
                    "webhook-id": g.header("webhook-id"),
                    "webhook-timestamp": g.header("webhook-timestamp"),
                    "webhook-signature": g.header("webhook-signature"),
                },
                "body": String::from_utf8(g.body.to_vec()).unwrap(),
            })).collect::<Vec<_>>(),
        });
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/verify_standardwebhooks.py"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(doc.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "reference verifier: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "verified 20");
    }
}
