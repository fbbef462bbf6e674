//! Postgres out of disk (issue #24): the tables the sidecar records into
//! live on a small filesystem of their own (a tmpfs tablespace), which a
//! filler table then fills, so Postgres itself answers `53100 could not
//! extend file … No space left on device`. The sidecar keeps running,
//! stops claiming while it cannot record, says so on `/readyz` and
//! `/api/v1/status`, and once space is back records what it kept and
//! resumes by itself: every event delivered once, none lost.
//!
//! Mounting needs root (the test cluster's server runs as `postgres`);
//! without it the test is compiled as ignored (`build.rs`).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::db::{connect_to, Cluster};
use crate::support::disk::SmallDisk;
use crate::support::sidecar::{self, endpoint, ADMIN_TOKEN};
use crate::support::{wait, Receiver};

async fn get(url: String, token: Option<&str>) -> (u16, Value) {
    pgwebhooks::deliver::http::install_crypto_provider();
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[cfg_attr(not(have_root), ignore = "mounts a small tmpfs: run the tests as root")]
#[tokio::test]
async fn a_full_disk_pauses_claiming_and_recording_resumes_by_itself() {
    let cluster = Cluster::start().await;
    let c = connect_to(&cluster.config).await;
    let disk = SmallDisk::mount("2m");
    disk.hold_tables(&c, &["webhooks.deliveries", "webhooks.attempts"])
        .await;
    c.batch_execute("CREATE TABLE filler (x text) TABLESPACE small")
        .await
        .unwrap();
    let mut receiver = Receiver::ok().await;
    endpoint(&c, &receiver.url, &["disk.test"], "").await;

    let mut config = pgwebhooks::sidecar::SidecarConfig::new(cluster.config.clone());
    config.claim.poll_interval = Duration::from_millis(100);
    config.claim.lease = Duration::from_secs(60);
    config.deliver.allow_private_targets = true;
    config.inbound = sidecar::inbound_config();
    config.admin = sidecar::admin_config();
    let running = sidecar::start(config).await;
    let emit = |n: i32| {
        format!(
            "SELECT webhooks.emit('disk.test', jsonb_build_object('n', g)) FROM generate_series({}, {}) g",
            n,
            n + 49
        )
    };
    c.batch_execute(&emit(1)).await.unwrap();
    let first = receiver.take(50, Duration::from_secs(20)).await;
    let (status, _) = get(format!("{}/readyz", running.base), None).await;
    assert_eq!(status, 200);

    // Fill the small disk (Postgres says so itself), then write on.
    let full = c
        .batch_execute("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 100000)")
        .await
        .expect_err("2 MB cannot hold 100 MB");
    assert_eq!(full.code().map(|s| s.code()), Some("53100"), "{full:?}");
    let mut n = 51;
    let (status, ready) = wait::until(
        "/readyz says Postgres refuses writes",
        Duration::from_secs(30),
        || {
            let (c, base, sql) = (&c, running.base.clone(), emit(n));
            n += 50;
            async move {
                c.batch_execute(&sql).await.unwrap();
                let (status, body) = get(format!("{base}/readyz"), None).await;
                (status == 503).then_some((status, body))
            }
        },
    )
    .await;
    let problem = ready["problem"].as_str().unwrap_or_default().to_owned();
    assert!(
        problem.contains("disk full (SQLSTATE 53100)"),
        "{status}: {ready}"
    );
    assert!(problem.contains("No space left on device"), "{problem}");
    let (_, api) = get(format!("{}/api/v1/status", running.admin), Some(ADMIN_TOKEN)).await;
    assert!(
        api["writes_refused"]
            .as_str()
            .is_some_and(|w| w.contains("53100")),
        "{api}"
    );

    // Claiming waits: over a few poll intervals (the window is the
    // absence under test), nothing new is sent though events keep coming.
    let sent_when_refused = receiver.count();
    c.batch_execute(&emit(n)).await.unwrap();
    let written = n + 49;
    tokio::time::sleep(Duration::from_secs(2)).await; // 20 poll intervals: the absence under test
    assert_eq!(
        receiver.count(),
        sent_when_refused,
        "requests were sent while their outcomes could not be recorded"
    );

    // Space is back: it resumes by itself, and records what it kept.
    c.batch_execute("DROP TABLE filler").await.unwrap();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for r in first {
        *seen.entry(r.json()["data"]["n"].as_i64().unwrap()).or_default() += 1;
    }
    wait::until(
        "every event delivered and recorded",
        Duration::from_secs(60),
        || {
            for r in receiver.drain() {
                *seen.entry(r.json()["data"]["n"].as_i64().unwrap()).or_default() += 1;
            }
            let all_seen = (1..=written as i64).all(|k| seen.contains_key(&k));
            let c = &c;
            async move {
                let recorded: i64 = c
                    .query_one(
                        "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                (all_seen && recorded == written as i64).then_some(())
            }
        },
    )
    .await;
    let twice: Vec<_> = seen.iter().filter(|(_, k)| **k > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    let (status, body) = get(format!("{}/readyz", running.base), None).await;
    assert_eq!((status, body.get("problem")), (200, None), "{body}");
    running.stop().await;
}
