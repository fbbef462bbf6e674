//! Operational events (issue #15 item 6): pgwebhooks tells receivers that
//! subscribe to `webhooks.…` when an endpoint is paused, resumed, tripped or
//! closed, and when deliveries go dead — never the endpoint it is about.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::support::sidecar::{self, endpoint};
use crate::support::{wait, Receiver, Reply, TestDb};

const T: Duration = Duration::from_secs(20);

async fn ops_events(c: &tokio_postgres::Client) -> Vec<(String, Value, Option<String>)> {
    c.query(
        "SELECT event_type, payload, origin FROM webhooks.events WHERE event_type LIKE 'webhooks.%' ORDER BY txid, seq",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test]
async fn pauses_resumes_trips_and_dead_letters_are_told() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut ops = Receiver::ok().await;
    // Make's answer while the scenario is off; it is turned back on before
    // the operator resumes the endpoint (else the waiting delivery, retried
    // on resume, would pause it again).
    let scenario_on = Arc::new(AtomicBool::new(false));
    let on = scenario_on.clone();
    let mut gone = Receiver::start(move |_| {
        if on.load(Ordering::SeqCst) {
            Reply::ok()
        } else {
            Reply::status(410).body("There is no scenario listening")
        }
    })
    .await;
    let mut failing = Receiver::start(|_| Reply::status(500)).await;
    let ops_id = endpoint(&c, &ops.url, &["webhooks.*"], "name = 'ops'").await;
    let gone_id = endpoint(&c, &gone.url, &["order.*"], "make = true, name = 'make-orders'").await;
    let failing_id = endpoint(&c, &failing.url, &["order.*"], "name = 'flaky'").await;
    let mut ops2 = Receiver::ok().await;
    endpoint(&c, &ops2.url, &["webhooks.endpoint.*"], "name = 'ops2'").await;
    let running = sidecar::start(sidecar::config(&db)).await;

    c.batch_execute("SELECT webhooks.emit('order.created', '{\"n\": 1}')")
        .await
        .unwrap();
    gone.next(T).await;
    failing.take(3, T).await; // 3 attempts: dead
                              // Paused (Make's 410) and the dead letter reach the ops endpoint.
    let got = ops.take(2, T).await;
    let mut types: Vec<String> = got
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    assert_eq!(types, ["webhooks.delivery.dead", "webhooks.endpoint.paused"]);
    let paused = got
        .iter()
        .find(|r| r.json()["type"] == "webhooks.endpoint.paused")
        .unwrap()
        .json();
    assert_eq!(paused["data"]["endpoint"]["id"], gone_id);
    assert_eq!(paused["data"]["endpoint"]["name"], "make-orders");
    assert!(
        paused["data"]["reason"].as_str().unwrap().contains("410"),
        "{paused}"
    );
    let dead = got
        .iter()
        .find(|r| r.json()["type"] == "webhooks.delivery.dead")
        .unwrap()
        .json();
    assert_eq!(dead["data"]["endpoint"]["id"], failing_id);
    assert_eq!(dead["data"]["count"], 1, "{dead}");
    let dead_delivery: i64 = c
        .query_one(
            "SELECT d.id FROM webhooks.deliveries d JOIN webhooks.events e USING (event_id)
              WHERE d.endpoint_id = $1 AND e.event_type = 'order.created'",
            &[&failing_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead["data"]["firstDeliveryId"], dead_delivery);
    assert!(dead["data"]["firstEventId"].is_string(), "{dead}");

    // At most one dead-letter event per endpoint per minute; the rest are
    // counted into the next (driven with the function's own clock).
    for (at, ids) in [
        ("2030-01-01 00:00:00+00", "[1, 2]"),
        ("2030-01-01 00:00:10+00", "[3]"),
        ("2030-01-01 00:00:30+00", "[4, 5]"),
        ("2030-01-01 00:01:01+00", "[6]"),
    ] {
        c.execute(
            "SELECT webhooks.dead_notice(
                 (SELECT jsonb_agg(jsonb_build_object('endpoint', $1::bigint, 'delivery', d,
                                                      'event', gen_random_uuid()))
                    FROM jsonb_array_elements($2::text::jsonb) d), $3::text::timestamptz)",
            &[&ops_id, &ids, &at],
        )
        .await
        .unwrap();
    }
    let told: Vec<Value> = ops_events(&c)
        .await
        .into_iter()
        .filter(|e| e.0 == "webhooks.delivery.dead" && e.1["endpoint"]["id"] == ops_id)
        .map(|e| e.1)
        .collect();
    assert_eq!(told.len(), 2, "{told:?}");
    assert_eq!(
        (told[0]["count"].clone(), told[0]["firstDeliveryId"].clone()),
        (2.into(), 1.into())
    );
    assert_eq!(
        (told[1]["count"].clone(), told[1]["firstDeliveryId"].clone()),
        (4.into(), 3.into())
    );

    // The scenario is turned back on and an operator resumes the Make
    // endpoint; the breaker trips and closes on the ops endpoint itself: each
    // is told, never to the endpoint it is about.
    scenario_on.store(true, Ordering::SeqCst);
    c.batch_execute(&format!(
        "SELECT webhooks.endpoint_resume({gone_id});
         SELECT webhooks.endpoint_trip({ops_id}, 'failing: 5 in a row');
         SELECT webhooks.endpoint_close_breaker({ops_id});"
    ))
    .await
    .unwrap();
    // The delivery that waited through the pause goes on resume.
    assert_eq!(gone.next(T).await.json()["type"], "order.created");
    let resumed = ops.next(T).await.json();
    assert_eq!(resumed["type"], "webhooks.endpoint.resumed");
    assert_eq!(resumed["data"]["endpoint"]["id"], gone_id);
    let got = ops2.take(4, T).await;
    let mut types: Vec<String> = got
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "webhooks.endpoint.circuit_closed",
            "webhooks.endpoint.circuit_opened",
            "webhooks.endpoint.paused",
            "webhooks.endpoint.resumed"
        ],
        "ops2 takes webhooks.endpoint.* only"
    );
    let opened = got
        .iter()
        .find(|r| r.json()["type"] == "webhooks.endpoint.circuit_opened")
        .unwrap()
        .json();
    assert_eq!(opened["data"]["reason"], "failing: 5 in a row");
    assert_eq!(opened["data"]["endpoint"]["id"], ops_id);
    // Every event was fanned out by now (ops2 got the last one); once the
    // three that reached the ops endpoint are recorded, none about the ops
    // endpoint is among its deliveries. (Counted as deliveries: a slow answer
    // may be retried with the same webhook-id.)
    let to_ops = || async {
        c.query(
            "SELECT e.event_type FROM webhooks.deliveries d JOIN webhooks.events e USING (event_id)
              WHERE d.endpoint_id = $1 ORDER BY e.event_type",
            &[&ops_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
    };
    wait::until("the ops endpoint's three deliveries recorded", T, || async {
        (to_ops().await.len() == 3).then_some(())
    })
    .await;
    assert_eq!(
        to_ops().await,
        [
            "webhooks.delivery.dead",
            "webhooks.endpoint.paused",
            "webhooks.endpoint.resumed"
        ],
        "paused, dead and resumed; not its own trip and close"
    );
    let about_itself: i64 = c
        .query_one(
            "SELECT count(*) FROM webhooks.deliveries d JOIN webhooks.events e USING (event_id)
              WHERE e.event_type LIKE 'webhooks.%' AND e.origin = 'webhooks/endpoint/' || d.endpoint_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        about_itself, 0,
        "no operational event went to the endpoint it is about"
    );
    running.stop().await;
}
