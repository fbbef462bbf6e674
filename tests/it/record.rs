//! The recorder: batched writes of outcomes, and no poison flush.

use std::sync::Arc;
use std::time::SystemTime;

use pgwebhooks::event::Source;
use pgwebhooks::listen::Signals;
use pgwebhooks::record::{self, AttemptInfo, Outcome, Status};

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
