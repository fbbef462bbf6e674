//! The recorder: batched writes of outcomes, and no poison flush.

use std::sync::Arc;
use std::time::SystemTime;

use pgwebhooks::job::{AttemptInfo, Outcome, Source, Status};
use pgwebhooks::listen::Signals;
use pgwebhooks::record;

use crate::support::sidecar::endpoint;
use crate::support::TestDb;

fn delivered(event_id: uuid::Uuid, endpoint_id: i64, batch: i64) -> Outcome {
    Outcome {
        source: Source::Batch(batch),
        event_id,
        endpoint_id,
        status: Status::Delivered,
        attempts: 1,
        next_attempt_at: None,
        code: Some(200),
        error: None,
        attempt: Some(AttemptInfo {
            started_at: SystemTime::now(),
            duration_ms: 1.0,
            excerpt: None,
        }),
        ordered: false,
    }
}

/// Regression: the same (event, endpoint) twice in one flush (a batch taken
/// over by the same replica while Postgres was away) once hit the attempts
/// primary key and blocked recording forever.
#[tokio::test]
async fn the_same_pair_twice_in_one_flush_is_recorded_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let ep = endpoint(&c, "http://127.0.0.1:9/", &["*"], "").await;
    let event_id: uuid::Uuid = c
        .query_one("SELECT webhooks.emit('x', '{}')", &[])
        .await
        .unwrap()
        .get(0);
    let pool = pgwebhooks::db::pool(db.config().clone(), 2);
    let (recorder, mut task) = record::channel(pool, "r1".into(), Arc::new(Signals::default()));
    recorder.batch(1, 1);
    recorder.batch(2, 1);
    recorder.record(delivered(event_id, ep, 1));
    recorder.record(delivered(event_id, ep, 2));
    let flushed = task.run_once().await.expect("one flush, no key violation");
    assert_eq!(flushed.inserted, 1);
    let (deliveries, attempts): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM webhooks.deliveries), (SELECT count(*) FROM webhooks.attempts)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((deliveries, attempts), (1, 1));
}

/// H3 regression: a receiver whose answer holds NUL bytes (which Postgres
/// refuses in `text`) once made the recorder drop whole buffers, every
/// endpoint's outcomes with them, and those deliveries went out again at
/// every lease expiry. Now the excerpt is sanitized, everything is
/// recorded once, and the innocent endpoint gets each event once.
#[tokio::test]
async fn a_receiver_answering_nul_bytes_poisons_nothing() {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::time::Duration;

    use crate::support::sidecar;
    use crate::support::{wait, Receiver, Reply};

    const N: usize = 10;
    let db = TestDb::new().await;
    let c = db.client().await;
    let nul = Receiver::start(|_| Reply::ok().body("ok\0\0")).await;
    // Fails each event once (retry path, delivery_record), NULs both times.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let flaky = Receiver::start(move |r| {
        if seen.lock().unwrap().insert(r.webhook_id()) {
            Reply::status(503).body("down\0")
        } else {
            Reply::ok().body("\0up")
        }
    })
    .await;
    let mut innocent = Receiver::ok().await;
    let bad = endpoint(&c, &nul.url, &["nul.*"], "").await;
    let retried = endpoint(&c, &flaky.url, &["nul.*"], "").await;
    let good = endpoint(&c, &innocent.url, &["nul.*"], "").await;
    let running = sidecar::start(sidecar::config(&db)).await;
    c.execute(
        "SELECT webhooks.emit('nul.test', jsonb_build_object('n', g)) FROM generate_series(1, $1) g",
        &[&(N as i32)],
    )
    .await
    .unwrap();

    let expected = [
        (bad, N as i64, N as i64),
        (retried, N as i64, 2 * N as i64),
        (good, N as i64, N as i64),
    ];
    wait::until("every delivery recorded as delivered, with its attempts", Duration::from_secs(20), || async {
        let rows = c
            .query(
                "SELECT ep.id,
                        (SELECT count(*) FROM webhooks.deliveries d WHERE d.endpoint_id = ep.id AND d.status = 'delivered'),
                        (SELECT count(*) FROM webhooks.attempts a WHERE a.endpoint_id = ep.id)
                   FROM webhooks.endpoints ep ORDER BY ep.id",
                &[],
            )
            .await
            .unwrap();
        let got: Vec<(i64, i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        (got == expected).then_some(())
    })
    .await;
    let excerpts: Vec<String> = c
        .query(
            "SELECT DISTINCT response_excerpt FROM webhooks.attempts WHERE endpoint_id IN ($1, $2) ORDER BY 1",
            &[&bad, &retried],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(excerpts, ["down\u{FFFD}", "ok\u{FFFD}\u{FFFD}", "\u{FFFD}up"]);
    let batches: i64 = c
        .query_one("SELECT count(*) FROM webhooks.fanout_batches", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(batches, 0, "every batch completed");
    // Nothing is sent again (a redelivery would follow a lost record).
    tokio::time::sleep(Duration::from_millis(500)).await; // settle: a duplicate would arrive now
    running.stop().await;
    let got = innocent.drain();
    let ids: HashSet<String> = got.iter().map(|r| r.webhook_id()).collect();
    assert_eq!(
        (got.len(), ids.len()),
        (N, N),
        "each event once to the innocent endpoint"
    );
    assert_eq!(nul.count(), N);
    assert_eq!(flaky.count(), 2 * N);
}

/// The isolation path: one outcome Postgres refuses (a timestamp out of
/// its range) among good ones. The others are recorded, the bad one alone
/// is given up, the flush succeeds and the batch completes; before, the
/// whole flush failed and, five tries later, the whole buffer was dropped.
#[tokio::test]
async fn one_refused_outcome_is_isolated_and_the_rest_recorded() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let eps = [
        endpoint(&c, "http://127.0.0.1:9/a", &["*"], "").await,
        endpoint(&c, "http://127.0.0.1:9/b", &["*"], "").await,
        endpoint(&c, "http://127.0.0.1:9/c", &["*"], "").await,
        endpoint(&c, "http://127.0.0.1:9/d", &["*"], "").await,
    ];
    let event_id: uuid::Uuid = c
        .query_one("SELECT webhooks.emit('x', '{}')", &[])
        .await
        .unwrap()
        .get(0);
    let batch: i64 = c
        .query_one(
            "INSERT INTO webhooks.fanout_batches (from_txid, from_seq, to_txid, to_seq, claimed_by, lease_until)
             VALUES ('0', 0, '0', 0, 'r1', now() + interval '1 hour') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let pool = pgwebhooks::db::pool(db.config().clone(), 2);
    let (recorder, mut task) = record::channel(pool, "r1".into(), Arc::new(Signals::default()));
    recorder.batch(batch, eps.len());
    let mut bad = delivered(event_id, eps[1], batch);
    bad.status = Status::Pending;
    // Before 4713 BC: Postgres refuses it (22008), whatever the text.
    bad.next_attempt_at =
        SystemTime::UNIX_EPOCH.checked_sub(std::time::Duration::from_secs(7000 * 366 * 86400));
    let mut nul = delivered(event_id, eps[2], batch);
    nul.attempt.as_mut().unwrap().excerpt = Some("a\0b".into());
    nul.error = Some(pgwebhooks::job::AttemptError::Transport("e\0".into()));
    recorder.record(delivered(event_id, eps[0], batch));
    recorder.record(bad);
    recorder.record(nul);
    recorder.record(delivered(event_id, eps[3], batch));
    let flushed = task.run_once().await.expect("the flush succeeds");
    assert_eq!((flushed.inserted, flushed.batches_completed), (3, 1));
    let rows: Vec<(i64, String, Option<String>)> = c
        .query(
            "SELECT d.endpoint_id, d.status, a.response_excerpt FROM webhooks.deliveries d
               JOIN webhooks.attempts a ON a.delivery_id = d.id ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        [
            (eps[0], "delivered".to_owned(), None),
            (eps[2], "delivered".to_owned(), Some("a\u{FFFD}b".to_owned())),
            (eps[3], "delivered".to_owned(), None),
        ]
    );
    // Nothing left over for the next flush.
    assert_eq!(task.run_once().await.unwrap(), record::Flushed::default());
}

/// I2: an outcome whose lease is no longer ours (taken over, or rescued
/// after it expired) leaves the delivery alone but keeps its attempt row:
/// the request really was sent.
#[tokio::test]
async fn a_lost_lease_keeps_the_attempt_row_and_leaves_the_delivery_alone() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let ep = endpoint(&c, "http://127.0.0.1:9/", &["*"], "").await;
    c.execute("SELECT webhooks.emit('x', '{}') FROM generate_series(1, 2)", &[])
        .await
        .unwrap();
    // One delivery leased by another replica, one whose lease expired and
    // was rescued (pending, nobody's).
    let ids: Vec<i64> = c
        .query(
            "INSERT INTO webhooks.deliveries (event_id, endpoint_id, status, attempts, claimed_by, lease_until,
                                              next_attempt_at, last_error)
             SELECT e.event_id, $1, s.status, 1, s.claimed_by, s.lease_until, now(), 'first try'
               FROM (SELECT event_id, row_number() OVER (ORDER BY seq) AS n FROM webhooks.events) e
               JOIN (VALUES (1::bigint, 'delivering', 'other', now() + interval '1 hour'),
                            (2, 'pending', NULL, NULL)) AS s(n, status, claimed_by, lease_until) ON s.n = e.n
             ORDER BY e.n RETURNING id",
            &[&ep],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let before = c
        .query("SELECT d::text FROM webhooks.deliveries d ORDER BY id", &[])
        .await
        .unwrap();
    let updated: i32 = c
        .query_one(
            "SELECT webhooks.delivery_record('r1', $1, '{delivered,delivered}', '{2,2}',
                                             ARRAY[NULL, NULL]::timestamptz[], '{200,200}',
                                             ARRAY[NULL, NULL]::text[], ARRAY[now(), now()], '{5,6}', '{ok,ok}')",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(updated, 0, "neither lease is r1's");
    let after = c
        .query("SELECT d::text FROM webhooks.deliveries d ORDER BY id", &[])
        .await
        .unwrap();
    let text = |rows: &[tokio_postgres::Row]| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>();
    assert_eq!(text(&before), text(&after), "the deliveries are untouched");
    let attempts: Vec<(i64, i32, i32, String, i64)> = c
        .query(
            "SELECT delivery_id, attempt, status_code, replica, endpoint_id FROM webhooks.attempts ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        attempts,
        [
            (ids[0], 2, 200, "r1".to_owned(), ep),
            (ids[1], 2, 200, "r1".to_owned(), ep)
        ]
    );
}
