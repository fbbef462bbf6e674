//! One stuck replica must not stall the others (issue #24): a replica cut
//! off from Postgres at any moment — here by a proxy that stops moving its
//! bytes, as a partition or a frozen process looks to the server — leaves
//! no transaction open behind it, so fan-out's horizon (the oldest running
//! xid) keeps moving and the other replica delivers what is written
//! meanwhile, well before any server-side timeout could have helped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::proxy::Proxy;
use crate::support::sidecar::{self, endpoint};
use crate::support::{wait, Receiver, TestDb};

/// The sidecar's backends in a state a frozen client could leave them in:
/// inside a transaction, waiting on the client.
const STUCK: &str = "SELECT count(*) FROM pg_stat_activity
                      WHERE application_name IN ('victim', 'survivor')
                        AND state IN ('idle in transaction', 'idle in transaction (aborted)')";

#[tokio::test]
async fn a_replica_cut_off_mid_write_holds_no_one_back() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut receiver = Receiver::ok().await;
    endpoint(&c, &receiver.url, &["tick.written"], "").await;
    let upstream = db.config().get_ports()[0];
    let proxy = Proxy::start(upstream).await;

    // A long lease: the server-side bounds derived from it (idle in
    // transaction 12 s, lock wait 12 s, TCP user timeout 20 s) are far
    // beyond the few seconds each check below allows.
    let replica = |name: &str, port: u16| {
        let mut pg = tokio_postgres::Config::new();
        pg.host("127.0.0.1")
            .port(port)
            .user(db.config().get_user().unwrap())
            .dbname(db.name())
            .application_name(name);
        let mut config = sidecar::config(&db);
        config.database = pg.into();
        config.replica = name.to_owned();
        config.claim.lease = Duration::from_secs(60);
        config
    };
    crate::inbound::notes_route(&c).await;
    let mut with_inbound = replica("victim", proxy.port);
    with_inbound.inbound = sidecar::config_with_inbound(&db).inbound;
    let victim = sidecar::start(with_inbound).await;
    let survivor = sidecar::start(replica("survivor", upstream)).await;

    // Writes go on throughout; a watcher looks for a transaction of ours
    // left waiting on its client, which is what held fan-out back.
    let written = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, written, stop) = (db.client().await, written.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = written.load(Ordering::SeqCst) + 1;
                c.execute(
                    "SELECT webhooks.emit('tick.written', jsonb_build_object('n', $1::bigint))",
                    &[&n],
                )
                .await
                .unwrap();
                written.store(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(3)).await; // the app's pace, not a wait
            }
        })
    };
    // Callbacks go on too: each one's apply writes in a transaction of ours.
    let callbacks = {
        let (url, stop) = (format!("{}/inbound/notes", victim.base), stop.clone());
        tokio::spawn(async move {
            pgwebhooks::deliver::http::install_crypto_provider();
            let http = reqwest::Client::new();
            let mut applied = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let sent = http
                    .post(&url)
                    .header("x-webhook-secret", sidecar::INBOUND_SECRET)
                    .json(&serde_json::json!({"text": "from Make"}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                applied += u32::from(sent.is_ok_and(|r| r.status() == 200));
            }
            applied
        })
    };
    let watcher = {
        let (c, stop) = (db.client().await, stop.clone());
        tokio::spawn(async move {
            let mut seen = 0i64;
            while !stop.load(Ordering::SeqCst) {
                seen = seen.max(c.query_one(STUCK, &[]).await.unwrap().get(0));
                tokio::task::yield_now().await;
            }
            seen
        })
    };

    let mut delivered: HashMap<i64, usize> = HashMap::new();
    for round in 0..6 {
        // Cut the victim off at whatever it is doing while deliveries flow.
        let before = written.load(Ordering::SeqCst);
        wait::until("deliveries flowing", Duration::from_secs(10), || {
            let ok = receiver.count() > 0 && written.load(Ordering::SeqCst) > before + 20 + round;
            async move { ok.then_some(()) }
        })
        .await;
        note(&mut delivered, receiver.drain());
        proxy.hold();
        let cut = written.load(Ordering::SeqCst);
        // What is written after the cut reaches the receiver through the
        // survivor, within a few seconds — not the 12 s the server would
        // take to end a transaction the victim left open.
        let target = cut + 30;
        wait::until(
            &format!(
                "round {round}: the survivor delivers events {cut}..{target} while the victim is cut off"
            ),
            Duration::from_secs(5),
            || {
                note(&mut delivered, receiver.drain());
                let done = (cut + 1..=target).all(|n| delivered.contains_key(&n));
                async move { done.then_some(()) }
            },
        )
        .await;
        proxy.release();
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let last = written.load(Ordering::SeqCst);
    wait::until("every event delivered", Duration::from_secs(30), || {
        note(&mut delivered, receiver.drain());
        let done = (1..=last).all(|n| delivered.contains_key(&n));
        async move { done.then_some(()) }
    })
    .await;
    let stuck = watcher.await.unwrap();
    assert!(
        callbacks.await.unwrap() > 0,
        "callbacks were applied through the victim"
    );
    victim.stop().await;
    survivor.stop().await;
    note(&mut delivered, receiver.drain());
    let twice: Vec<_> = delivered.iter().filter(|(_, k)| **k > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(
        stuck, 0,
        "a transaction of the sidecar's sat waiting on its client (idle in transaction)"
    );
}

/// Counts deliveries by the event's `n`.
fn note(delivered: &mut HashMap<i64, usize>, received: Vec<crate::support::receiver::Received>) {
    for r in received {
        let n = r.json()["data"]["n"].as_i64().expect("the event's n");
        *delivered.entry(n).or_default() += 1;
    }
}

/// 200 ms each way between a replica and Postgres (a replica in another
/// region, a congested link): every round trip takes 400 ms, and delivery
/// still goes on, each event sent once, no lease lost (a lost lease would
/// show as a batch taken over and sent again, or an attempt recorded
/// twice).
#[tokio::test]
async fn a_replica_far_from_postgres_keeps_delivering_and_its_leases() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut receiver = Receiver::ok().await;
    endpoint(&c, &receiver.url, &["tick.written"], "").await;
    let proxy = Proxy::start(db.config().get_ports()[0]).await;
    proxy.delay(Duration::from_millis(200));
    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1")
        .port(proxy.port)
        .user(db.config().get_user().unwrap())
        .dbname(db.name());
    let mut config = sidecar::config(&db);
    config.database = pg.into();
    let far = sidecar::start(config).await;
    for round in 0..3 {
        c.execute(
            "SELECT webhooks.emit('tick.written', jsonb_build_object('n', $1::int * 100 + g)) FROM generate_series(1, 100) g",
            &[&round],
        )
        .await
        .unwrap();
    }
    let mut delivered = HashMap::new();
    note(&mut delivered, receiver.take(300, Duration::from_secs(60)).await);
    wait::until("every outcome recorded", Duration::from_secs(30), || async {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 300).then_some(())
    })
    .await;
    far.stop().await;
    note(&mut delivered, receiver.drain());
    assert_eq!(delivered.len(), 300);
    let twice: Vec<_> = delivered.iter().filter(|(_, k)| **k > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    let (attempts, batches): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM webhooks.attempts), (SELECT count(*) FROM webhooks.fanout_batches)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        (attempts, batches),
        (300, 0),
        "one attempt per event, every batch completed"
    );
}
