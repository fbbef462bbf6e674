//! Upgrading in place to fail-open capture (V15), the way a Helm upgrade
//! does it: `migrate` runs while the sidecar delivers and the app writes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwebhooks::db::migrate;

use crate::support::{receiver::Receiver, sidecar, wait, TestDb};

/// Tables watched as a release before V15 left them: a payload-function
/// table with capture() triggers of 17 arguments and no shaping trigger,
/// EXECUTE and schema USAGE granted to webhooks_capture, and a partitioned
/// table with triggers on the parent only. `migrate` runs while a writer
/// inserts into both and the sidecar delivers: no app write fails, every
/// event is delivered once under the id it was written with, and afterwards
/// the payload table is shaped by capture_shape(), writes straight into a
/// partition are captured, and the old grants are gone.
#[tokio::test]
async fn v15_upgrades_in_place_while_the_app_writes_and_the_sidecar_delivers() {
    let db = TestDb::new().await;
    let mut admin = db.client().await;
    let app = format!("{}_app", db.name());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {app} LOGIN IN ROLE webhooks_app; CREATE SCHEMA shop AUTHORIZATION {app};"
        ))
        .await
        .unwrap();
    let a = db.client_as(&app).await;
    a.batch_execute(
        "CREATE TABLE shop.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total numeric);
         CREATE FUNCTION shop.order_payload(o shop.orders) RETURNS jsonb LANGUAGE sql STABLE SECURITY DEFINER
             SET search_path = shop, pg_temp AS $$ SELECT jsonb_build_object('order', o.id, 'total', o.total) $$;
         SELECT webhooks.watch('shop.orders', 'order', '{\"payload\": \"shop.order_payload\"}');
         CREATE TABLE shop.visits (id bigint GENERATED ALWAYS AS IDENTITY, at date NOT NULL, PRIMARY KEY (id, at))
             PARTITION BY RANGE (at);
         CREATE TABLE shop.visits_2026 PARTITION OF shop.visits FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         SELECT webhooks.watch('shop.visits', 'visit');",
    )
    .await
    .unwrap();
    // Back to how a release before V15 left them (what its watch() wrote).
    admin
        .batch_execute(
            "DO $$
             DECLARE
                 r record;
                 args text;
             BEGIN
                 FOR r IN SELECT g.tgname, g.tgrelid::regclass AS rel FROM pg_trigger g
                           WHERE g.tgname LIKE 'webhooks%'
                             AND g.tgrelid IN ('shop.orders'::regclass, 'shop.visits'::regclass, 'shop.visits_2026'::regclass) LOOP
                     EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.rel);
                 END LOOP;
                 args := format('%L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L',
                     'order', '{\"payload\": \"shop.order_payload(shop.orders)\"}',
                     format('{\"payload\": %s}', 'shop.order_payload(shop.orders)'::regprocedure::oid),
                     'order.created', 'order.updated', 'order.deleted', '', '', '{}', '{id}', '', '',
                     'order.truncated', 'shop.order_payload(shop.orders)'::regprocedure::oid::text, 'shop.orders', '', 'id');
                 EXECUTE format('CREATE TRIGGER webhooks_capture_insert AFTER INSERT ON shop.orders
                                 REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION webhooks.capture(%s)', args);
                 args := format('%L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L',
                     'visit', '{}', '{}', 'visit.created', 'visit.updated', 'visit.deleted', '', '', '{}', '{id,at}',
                     '', '', 'visit.truncated', '', 'shop.visits', '', 'id');
                 EXECUTE format('CREATE TRIGGER webhooks_capture_insert AFTER INSERT ON shop.visits
                                 REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION webhooks.capture(%s)', args);
             END $$;
             GRANT EXECUTE ON FUNCTION shop.order_payload(shop.orders) TO webhooks_capture;
             GRANT USAGE ON SCHEMA shop TO webhooks_capture;",
        )
        .await
        .unwrap();
    let old_args: i64 = admin
        .query_one(
            "SELECT max(cardinality(webhooks.trigger_args(tgargs)))::bigint FROM pg_trigger WHERE tgname LIKE 'webhooks%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(old_args, 17, "set up as before V15");

    let mut receiver = Receiver::ok().await;
    let endpoint = sidecar::endpoint(&admin, &receiver.url, &["order.*", "visit.*"], "").await;
    let running = sidecar::start(sidecar::config(&db)).await;

    // The app writes all along: one order and one visit per transaction.
    let stop = Arc::new(AtomicBool::new(false));
    let (written, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let writer = {
        let (stop, written, failed) = (stop.clone(), written.clone(), failed.clone());
        let c = db.client_as(&app).await;
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match c
                    .batch_execute(
                        "BEGIN; INSERT INTO shop.orders (total) VALUES (1);
                         INSERT INTO shop.visits (at) VALUES ('2026-05-01'); COMMIT;",
                    )
                    .await
                {
                    Ok(()) => written.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        eprintln!("app write failed: {e:?}");
                        let _ = c.batch_execute("ROLLBACK").await;
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        })
    };
    wait::until(
        "the app has written before the upgrade",
        Duration::from_secs(20),
        || {
            let w = written.clone();
            async move { (w.load(Ordering::SeqCst) >= 20).then_some(()) }
        },
    )
    .await;
    migrate::run(&mut admin, false).await.unwrap();
    let at_upgrade = written.load(Ordering::SeqCst);
    wait::until(
        "the app has written after the upgrade",
        Duration::from_secs(20),
        || {
            let w = written.clone();
            async move { (w.load(Ordering::SeqCst) >= at_upgrade + 20).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no app write failed");

    // Straight into the partition, now captured.
    a.batch_execute("INSERT INTO shop.visits_2026 (id, at) VALUES (1000000, '2026-06-01')")
        .await
        .unwrap();
    let events: Vec<(String, String, Option<String>, serde_json::Value)> = admin
        .query(
            "SELECT event_id::text, event_type, shape_error, payload FROM webhooks.events
              WHERE event_type NOT LIKE 'webhooks.%' ORDER BY txid, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let n = written.load(Ordering::SeqCst);
    assert_eq!(
        events.len(),
        2 * n + 1,
        "one event per write, the partition's included"
    );
    let got = receiver.take(events.len(), Duration::from_secs(60)).await;
    let mut ids: Vec<String> = got.iter().map(|r| r.webhook_id()).collect();
    ids.sort();
    let mut want: Vec<String> = events.iter().map(|e| e.0.clone()).collect();
    want.sort();
    assert_eq!(
        ids, want,
        "each event delivered once, under the id it was written with"
    );
    let total = events.len() as i64;
    wait::until("every delivery recorded", Duration::from_secs(20), || {
        let c = &admin;
        async move { (sidecar::statuses(c, endpoint).await == [("delivered".to_owned(), total)]).then_some(()) }
    })
    .await;
    running.stop().await;
    assert!(receiver.drain().is_empty(), "nothing delivered twice");

    // After the upgrade: shaped by capture_shape(), no marker.
    let last_order = events.iter().rev().find(|e| e.1 == "order.created").unwrap();
    assert_eq!(last_order.2, None);
    assert!(last_order.3.get("order").is_some(), "{}", last_order.3);
    let shaping: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'shop.orders'::regclass
                AND tgfoid = 'webhooks.capture_shape()'::regprocedure",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(shaping > 0);
    let grants: String = admin
        .query_one(
            "SELECT coalesce((SELECT proacl::text FROM pg_proc WHERE oid = 'shop.order_payload(shop.orders)'::regprocedure), '')
                 || coalesce((SELECT nspacl::text FROM pg_namespace WHERE nspname = 'shop'), '')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!grants.contains("webhooks_capture"), "{grants}");
}
