//! Fencing (issue #24): a replica that was frozen or cut off past its
//! claim's fence releases the work instead of sending it, so a request
//! goes out twice only if it was already on the wire when the fault hit.

use std::sync::Arc;
use std::time::Duration;

use pgwebhooks::db;
use pgwebhooks::deliver::{DeliverConfig, Deliverer, PAST_FENCE};
use pgwebhooks::job::{Job, Source, Status};
use pgwebhooks::listen::Signals;
use pgwebhooks::record;

use crate::support::sidecar::endpoint;
use crate::support::{wait, Receiver, TestDb};

fn job_of(claim: &db::delivery::ClaimedRetry, endpoint: Arc<pgwebhooks::endpoints::Endpoint>) -> Job {
    Job {
        source: Source::Retry {
            delivery_id: claim.delivery_id,
            used: claim.used,
        },
        event: claim.event.clone().expect("the event is in the outbox"),
        endpoint,
        attempt: claim.attempt,
        send_by: claim.send_by,
    }
}

#[tokio::test]
async fn a_claim_past_its_fence_is_released_not_sent() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let receiver = Receiver::ok().await;
    let ep = endpoint(&c, &receiver.url, &["*"], "").await;
    let delivery: i64 = c
        .query_one(
            "INSERT INTO webhooks.deliveries (event_id, endpoint_id, status, next_attempt_at)
             SELECT webhooks.emit('order.created', '{}'), $1, 'pending', now() RETURNING id",
            &[&ep],
        )
        .await
        .unwrap()
        .get(0);
    let pool = db::pool(db.config().clone(), 2);
    let client = pool.get().await.unwrap();
    let endpoints = db::endpoints::load(&client).await.unwrap();
    let endpoint = endpoints.get(ep).cloned().unwrap();
    let deliverer = Deliverer::new(DeliverConfig {
        allow_private_targets: true,
        ..Default::default()
    });
    let (recorder, mut task) = record::channel(pool.clone(), "frozen".into(), Arc::new(Signals::default()));

    let lease = Duration::from_secs(2);
    let claimed = db::delivery::delivery_claim(&client, "frozen", &[ep], &[1], lease)
        .await
        .unwrap();
    let [claim] = &claimed[..] else {
        panic!("one delivery claimed: {claimed:?}")
    };
    assert_eq!(claim.delivery_id, delivery);
    // The replica stops between claiming and sending, until its fence (a
    // quarter of the lease before the server's lease ends) has passed.
    wait::until(
        "the monotonic clock to pass the claim's fence",
        Duration::from_secs(10),
        || async { (tokio::time::Instant::now() >= claim.send_by).then_some(()) },
    )
    .await;
    let (outcome, _) = deliverer.attempt(&job_of(claim, endpoint.clone())).await;
    assert_eq!(
        (outcome.status, outcome.attempt.is_none()),
        (Status::Pending, true)
    );
    assert_eq!(
        outcome.error.as_ref().map(ToString::to_string).as_deref(),
        Some(PAST_FENCE)
    );
    recorder.record(outcome);
    task.run_once().await.unwrap();
    assert_eq!(receiver.count(), 0, "nothing was sent");

    // Released: claimable again at once, no attempt spent; sent within its fence.
    let claimed = db::delivery::delivery_claim(&client, "other", &[ep], &[1], lease)
        .await
        .unwrap();
    let [again] = &claimed[..] else {
        panic!("claimable again: {claimed:?}")
    };
    assert_eq!((again.delivery_id, again.attempt), (delivery, claim.attempt));
    let (outcome, _) = deliverer.attempt(&job_of(again, endpoint)).await;
    assert_eq!(outcome.status, Status::Delivered);
    assert_eq!(receiver.count(), 1);
}
