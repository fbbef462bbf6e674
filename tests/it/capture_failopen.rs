//! Capture never breaks the app's writes and never misses a change (issue
//! #23): fail-open shaping, payload functions written the natural way,
//! schema drift, every table shape (partitions, inheritance, no key, COPY,
//! upserts). Every write here is made by the app's own unprivileged login
//! role, never by a superuser, unless the test is about a superuser.

use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::support::TestDb;

/// A login role that owns schema `shop`, member of webhooks_app (as the
/// README and docs/capture.md set an app up), and a connection as it that
/// keeps its notices.
async fn app_role(db: &TestDb, admin: &Client) -> (String, Client, crate::support::Notices) {
    let role = format!("{}_app", db.name());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN IN ROLE webhooks_app; CREATE SCHEMA shop AUTHORIZATION {role};"
        ))
        .await
        .unwrap();
    let (c, notices) = db.client_with_notices(&role).await;
    (role, c, notices)
}

#[derive(Debug)]
struct Ev {
    event_type: String,
    source_table: Option<String>,
    row_key: Option<String>,
    payload: Value,
    previous: Option<Value>,
    shape_error: Option<String>,
}

async fn events(admin: &Client, like: &str) -> Vec<Ev> {
    admin
        .query(
            "SELECT event_type, source_table, row_key, payload, previous, shape_error FROM webhooks.events
              WHERE event_type LIKE $1 ORDER BY txid, seq",
            &[&like],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Ev {
            event_type: r.get(0),
            source_table: r.get(1),
            row_key: r.get(2),
            payload: r.get(3),
            previous: r.get(4),
            shape_error: r.get(5),
        })
        .collect()
}

async fn health(admin: &Client, table: &str) -> (bool, Option<String>, i64) {
    let r = admin
        .query_one(
            "SELECT degraded, last_error, failures FROM webhooks.watched WHERE target = $1::text::regclass",
            &[&table],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

const SHOP: &str = "
    CREATE TABLE shop.customers (id bigint PRIMARY KEY, name text NOT NULL, email text);
    CREATE TABLE shop.orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES shop.customers,
                              total numeric NOT NULL, card_token text, note text);
    -- Written the natural way: LANGUAGE sql STABLE, no SECURITY DEFINER,
    -- no SET search_path, a join to another of the owner's tables.
    CREATE FUNCTION shop.order_payload(o shop.orders) RETURNS jsonb LANGUAGE sql STABLE AS $$
        SELECT jsonb_build_object('order', jsonb_build_object('id', o.id, 'total', o.total),
                                  'customer', (SELECT jsonb_build_object('name', c.name, 'email', c.email)
                                                 FROM shop.customers c WHERE c.id = o.customer_id))
    $$;
    SELECT webhooks.watch('shop.orders', 'order', '{\"payload\": \"shop.order_payload\", \"exclude\": [\"card_token\"]}');
    INSERT INTO shop.customers VALUES (1, 'Ada', 'ada@example.test');";

/// Failures 1 and 2 of the issue: a natural payload function works for the
/// app's role; one that lacks a right (another writer), or raises for one
/// row, never fails the write: the change is captured with the row's own
/// JSON (exclude still applied) and the error, the writer gets a WARNING,
/// the table shows as degraded with one operational event per minute, and
/// it is healthy again once shaping succeeds; resend then shapes the row.
#[tokio::test]
async fn a_natural_payload_function_works_and_a_failing_one_fails_open() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (role, app, notices) = app_role(&db, &admin).await;
    app.batch_execute(SHOP).await.unwrap();
    app.batch_execute("INSERT INTO shop.orders VALUES (10, 1, 25, 'tok_1', 'gift')")
        .await
        .unwrap();
    let ev = events(&admin, "order.%").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(
        ev[0].payload,
        json!({"order": {"id": 10, "total": 25}, "customer": {"name": "Ada", "email": "ada@example.test"}}),
        "joined"
    );
    assert_eq!(ev[0].shape_error, None);
    assert!(!health(&admin, "shop.orders").await.0);
    assert!(notices.take().iter().all(|n| !n.starts_with("WARNING")));

    // Another login role that may insert orders but not read customers.
    let clerk = format!("{}_clerk", db.name());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {clerk} LOGIN;
             GRANT USAGE ON SCHEMA shop TO {clerk};
             GRANT INSERT, UPDATE ON shop.orders TO {clerk};"
        ))
        .await
        .unwrap();
    let (clerk_c, clerk_notices) = db.client_with_notices(&clerk).await;
    clerk_c
        .batch_execute(
            "INSERT INTO shop.orders VALUES (11, 1, 30, 'tok_2', NULL), (12, 1, 31, 'tok_3', NULL)",
        )
        .await
        .expect("the clerk's write commits");
    let ev = events(&admin, "order.%").await;
    assert_eq!(ev.len(), 3, "both rows captured");
    for e in &ev[1..] {
        assert_eq!(e.event_type, "order.created");
        assert!(
            e.payload.get("card_token").is_none(),
            "exclude applies to the fallback: {}",
            e.payload
        );
        assert_eq!(e.payload["customer_id"], 1, "the row's own JSON: {}", e.payload);
        let err = e.shape_error.as_deref().unwrap_or("");
        assert!(err.contains("permission denied for table customers"), "{err}");
    }
    assert_eq!(ev[1].row_key.as_deref(), Some("11"));
    let warned = clerk_notices.take();
    assert!(
        warned
            .iter()
            .any(|n| n.starts_with("WARNING") && n.contains("could not be shaped")),
        "{warned:?}"
    );
    let (degraded, error, failures) = health(&admin, "shop.orders").await;
    assert!(degraded);
    assert!(error
        .unwrap_or_default()
        .contains("permission denied for table customers"));
    assert_eq!(failures, 2);

    // A function that raises for one row of three: the two others keep
    // their shape; the statement commits.
    app.batch_execute(
        "CREATE OR REPLACE FUNCTION shop.order_payload(o shop.orders) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
         BEGIN
             IF o.total > 1000 THEN RAISE EXCEPTION 'order % is too big to describe', o.id; END IF;
             RETURN jsonb_build_object('id', o.id, 'total', o.total);
         END $$;
         INSERT INTO shop.orders VALUES (20, 1, 5, NULL, NULL), (21, 1, 5000, NULL, NULL), (22, 1, 7, NULL, NULL);",
    )
    .await
    .unwrap();
    let ev = events(&admin, "order.%").await;
    let last: Vec<&Ev> = ev[3..].iter().collect();
    assert_eq!(last.len(), 3);
    assert_eq!(last[0].payload, json!({"id": 20, "total": 5}));
    assert_eq!(last[2].payload, json!({"id": 22, "total": 7}));
    assert_eq!(last[1].payload["total"], 5000);
    assert!(last[1]
        .shape_error
        .as_deref()
        .unwrap()
        .contains("order 21 is too big to describe"));
    assert!(notices.take().iter().any(|n| n.contains("1 of the rows")));

    // One webhooks.capture.failed for all of that (rate-limited per minute).
    let ops = events(&admin, "webhooks.capture.failed").await;
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0].payload["table"], "shop.orders");
    assert!(ops[0].payload["error"]
        .as_str()
        .unwrap()
        .contains("permission denied"));

    // Fixed: the next write is shaped and the table is healthy again; the
    // owner resends the row that was captured unshaped.
    app.batch_execute(
        "CREATE OR REPLACE FUNCTION shop.order_payload(o shop.orders) RETURNS jsonb LANGUAGE sql STABLE AS $$
             SELECT jsonb_build_object('id', o.id, 'total', o.total) $$;
         INSERT INTO shop.orders VALUES (23, 1, 9, NULL, NULL);
         SELECT webhooks.resend('shop.orders', '21');",
    )
    .await
    .unwrap();
    assert!(!health(&admin, "shop.orders").await.0, "healthy again");
    let ev = events(&admin, "order.%").await;
    assert_eq!(ev.last().unwrap().payload, json!({"id": 21, "total": 5000}));
    assert_eq!(ev.last().unwrap().event_type, "order.created");
    let _ = role;
}

/// Failure 3: the app's own migration drops or renames what the payload
/// function or the options name. The ALTER succeeds, writes keep
/// committing, and what broke is said (a WARNING at the DDL where it can
/// be seen there, degraded in webhooks.watched).
#[tokio::test]
async fn schema_drift_never_fails_the_app() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (_, app, notices) = app_role(&db, &admin).await;
    app.batch_execute(
        "CREATE TABLE shop.tickets (id bigint PRIMARY KEY, title text, note text, org text, state text);
         CREATE FUNCTION shop.ticket_payload(t shop.tickets) RETURNS jsonb LANGUAGE sql STABLE AS $$
             SELECT jsonb_build_object('id', t.id, 'note', t.note) $$;
         CREATE TABLE shop.notes (id bigint PRIMARY KEY, body text, org text, state text);
         SELECT webhooks.watch('shop.tickets', 'ticket', '{\"payload\": \"shop.ticket_payload\"}');
         SELECT webhooks.watch('shop.notes', 'note', '{\"tenant_column\": \"org\", \"status_column\": \"state\"}');
         INSERT INTO shop.tickets VALUES (1, 'a', 'n', 'o', 's');",
    )
    .await
    .unwrap();
    // The column the payload function names goes.
    app.batch_execute(
        "ALTER TABLE shop.tickets DROP COLUMN note;
         INSERT INTO shop.tickets (id, title) VALUES (2, 'after the migration');
         UPDATE shop.tickets SET title = 'still working' WHERE id = 1;",
    )
    .await
    .expect("the app's migration and later writes succeed");
    let ev = events(&admin, "ticket.%").await;
    assert_eq!(
        ev.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        ["ticket.created", "ticket.created", "ticket.updated"]
    );
    assert_eq!(ev[1].payload["title"], "after the migration");
    let warned = notices.take();
    assert!(
        warned.iter().any(|n| n.starts_with("WARNING")
            && n.contains("payload function shop.ticket_payload(shop.tickets) no longer fits the table")),
        "said at the DDL: {warned:?}"
    );
    // (the function's own words)
    let err = ev[1].shape_error.as_deref().unwrap();
    assert!(
        err.starts_with("42P01: missing FROM-clause entry for table \"t\""),
        "{err}"
    );
    assert_eq!(ev[2].previous, Some(json!({"title": "a"})));
    assert!(health(&admin, "shop.tickets").await.0);

    // The payload function itself is dropped.
    app.batch_execute(
        "DROP FUNCTION shop.ticket_payload(shop.tickets);
         INSERT INTO shop.tickets (id, title) VALUES (3, 'no function');
         ALTER TABLE shop.tickets ADD COLUMN extra int;
         INSERT INTO shop.tickets (id, title) VALUES (4, 'after an ALTER');",
    )
    .await
    .unwrap();
    let ev = events(&admin, "ticket.%").await;
    assert_eq!(ev[3].payload["title"], "no function");
    assert!(ev[3].shape_error.is_some());
    let warned = notices.take();
    assert!(
        warned
            .iter()
            .any(|n| n.contains("payload function shop.ticket_payload(shop.tickets) is gone")),
        "{warned:?}"
    );
    assert_eq!(
        ev[4].payload["title"], "after an ALTER",
        "the row as JSON, unmarked: the option is gone"
    );
    assert!(
        health(&admin, "shop.tickets").await.0,
        "degraded until watch() is called again"
    );
    app.batch_execute("SELECT webhooks.watch('shop.tickets', 'ticket')")
        .await
        .unwrap();
    assert!(!health(&admin, "shop.tickets").await.0);

    // The tenant and status columns go.
    app.batch_execute(
        "INSERT INTO shop.notes VALUES (1, 'x', 'acme', 'open');
         ALTER TABLE shop.notes DROP COLUMN org, DROP COLUMN state;
         INSERT INTO shop.notes VALUES (2, 'y');
         UPDATE shop.notes SET body = 'z' WHERE id = 1;",
    )
    .await
    .unwrap();
    let warned = notices.take();
    assert!(
        warned
            .iter()
            .any(|n| n.starts_with("WARNING") && n.contains("\"tenant_column\" named column \"org\"")),
        "{warned:?}"
    );
    let ev = events(&admin, "note.%").await;
    assert_eq!(
        ev.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        ["note.created", "note.created", "note.updated"]
    );
    let (degraded, error, _) = health(&admin, "shop.notes").await;
    assert!(degraded);
    assert!(error
        .unwrap()
        .contains("\"status_column\" named column \"state\""));
}

/// Failure 4 (audit N5, N6): a partitioned table captures writes through
/// the parent and straight into any partition, at any level, existing or
/// created or attached later, as the parent's entity and source table;
/// detaching a partition stops its capture; per_row is refused there with
/// its reason, and new partitions can always be created.
#[tokio::test]
async fn partitions_are_captured_whichever_table_a_write_names() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (_, app, _) = app_role(&db, &admin).await;
    app.batch_execute(
        "CREATE TABLE shop.\"Visits\" (id int, at date NOT NULL, who text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE shop.visits_2026 PARTITION OF shop.\"Visits\" FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')
             PARTITION BY RANGE (at);
         CREATE TABLE shop.visits_2026_h1 PARTITION OF shop.visits_2026 FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');
         CREATE TABLE shop.visits_2026_h2 PARTITION OF shop.visits_2026 FOR VALUES FROM ('2026-07-01') TO ('2027-01-01');
         SELECT webhooks.watch('shop.\"Visits\"', 'visit');
         INSERT INTO shop.\"Visits\" VALUES (1, '2026-02-01', 'via the parent');
         INSERT INTO shop.visits_2026 VALUES (2, '2026-03-01', 'via the middle');
         INSERT INTO shop.visits_2026_h2 VALUES (3, '2026-08-01', 'straight into a leaf');
         UPDATE shop.visits_2026_h1 SET who = 'updated in the leaf' WHERE id = 1;
         DELETE FROM shop.visits_2026_h2 WHERE id = 3;",
    )
    .await
    .unwrap();
    let ev = events(&admin, "visit.%").await;
    assert_eq!(
        ev.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        [
            "visit.created",
            "visit.created",
            "visit.created",
            "visit.updated",
            "visit.deleted"
        ]
    );
    assert!(
        ev.iter()
            .all(|e| e.source_table.as_deref() == Some("shop.\"Visits\"")),
        "{ev:?}"
    );
    assert_eq!(ev[3].previous, Some(json!({"who": "via the parent"})));
    assert_eq!(ev[2].row_key.as_deref(), Some("[3, \"2026-08-01\"]"));
    let watched: Vec<String> = admin
        .query("SELECT target::text FROM webhooks.watched", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        watched,
        ["shop.\"Visits\""],
        "partitions are not listed on their own"
    );

    // A partition created later, one attached later (columns in another
    // order), one detached.
    app.batch_execute(
        "CREATE TABLE shop.visits_2027 PARTITION OF shop.\"Visits\" FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
         INSERT INTO shop.visits_2027 VALUES (4, '2027-05-01', 'new partition');
         CREATE TABLE shop.visits_2028 (who text, at date NOT NULL, id int NOT NULL);
         ALTER TABLE shop.\"Visits\" ATTACH PARTITION shop.visits_2028 FOR VALUES FROM ('2028-01-01') TO ('2029-01-01');
         INSERT INTO shop.visits_2028 (id, at, who) VALUES (5, '2028-05-01', 'attached');
         ALTER TABLE shop.\"Visits\" DETACH PARTITION shop.visits_2027;
         INSERT INTO shop.visits_2027 VALUES (6, '2027-06-01', 'detached: not captured');",
    )
    .await
    .unwrap();
    let ev = events(&admin, "visit.%").await;
    assert_eq!(ev.len(), 7, "{ev:?}");
    assert_eq!(
        ev[5].payload,
        json!({"id": 4, "at": "2027-05-01", "who": "new partition"})
    );
    assert_eq!(
        ev[6].payload,
        json!({"id": 5, "at": "2028-05-01", "who": "attached"})
    );
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'shop.visits_2027'::regclass AND tgname LIKE 'webhooks%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "a detached partition keeps no capture trigger");

    // per_row on a partitioned table (N6) is refused, with the reason:
    // Postgres clones row triggers onto every new partition as the role
    // that creates it, which may not call capture's functions.
    app.batch_execute(
        "CREATE TABLE shop.pings (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE shop.pings_1 PARTITION OF shop.pings FOR VALUES FROM (0) TO (100);",
    )
    .await
    .unwrap();
    let err = app
        .batch_execute("SELECT webhooks.watch('shop.pings', 'ping', '{\"per_row\": true}')")
        .await
        .unwrap_err();
    let msg = err.as_db_error().unwrap().message();
    assert!(
        msg.contains("\"per_row\" is for tables that are not partitioned"),
        "{msg}"
    );
    app.batch_execute(
        "SELECT webhooks.watch('shop.pings', 'ping');
         CREATE TABLE shop.pings_2 PARTITION OF shop.pings FOR VALUES FROM (100) TO (200);
         INSERT INTO shop.pings VALUES (150, 'via the parent');
         INSERT INTO shop.pings_2 VALUES (151, 'into the new partition');
         UPDATE shop.pings_2 SET v = 'changed' WHERE id = 151;
         SELECT webhooks.rewatch();",
    )
    .await
    .unwrap();
    let ev = events(&admin, "ping.%").await;
    assert_eq!(
        ev.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        ["ping.created", "ping.created", "ping.updated"]
    );
    assert!(ev.iter().all(|e| e.source_table.as_deref() == Some("shop.pings")));

    // A partition is not watched on its own: the message says what to do.
    let err = app
        .batch_execute("SELECT webhooks.watch('shop.pings_1', 'p')")
        .await
        .unwrap_err();
    assert!(err
        .as_db_error()
        .unwrap()
        .message()
        .contains("is a partition of shop.pings"));

    // A payload function on a partitioned table shapes rows written
    // straight into a partition too.
    app.batch_execute(
        "CREATE FUNCTION shop.ping_payload(p shop.pings) RETURNS jsonb LANGUAGE sql STABLE AS $$
             SELECT jsonb_build_object('ping', p.id) $$;
         SELECT webhooks.watch('shop.pings', 'ping', '{\"payload\": \"shop.ping_payload\"}');
         INSERT INTO shop.pings_1 VALUES (7, 'leaf');",
    )
    .await
    .unwrap();
    let ev = events(&admin, "ping.%").await;
    assert_eq!(ev.last().unwrap().payload, json!({"ping": 7}));
    assert_eq!(ev.last().unwrap().shape_error, None);

    // Into a partition attached with its columns in another order, with a
    // function that fails for one of two rows: row by row, by name.
    app.batch_execute(
        "CREATE OR REPLACE FUNCTION shop.ping_payload(p shop.pings) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
         BEGIN
             IF p.v = 'bad' THEN RAISE EXCEPTION 'ping % is bad', p.id; END IF;
             RETURN jsonb_build_object('ping', p.id, 'v', p.v);
         END $$;
         CREATE TABLE shop.pings_3 (v text, id int NOT NULL);
         ALTER TABLE shop.pings ATTACH PARTITION shop.pings_3 FOR VALUES FROM (200) TO (300);
         INSERT INTO shop.pings_3 (id, v) VALUES (201, 'good'), (202, 'bad');",
    )
    .await
    .unwrap();
    let ev = events(&admin, "ping.%").await;
    let last = &ev[ev.len() - 2..];
    assert_eq!(last[0].payload, json!({"ping": 201, "v": "good"}));
    assert_eq!(last[1].payload, json!({"id": 202, "v": "bad"}));
    assert!(last[1]
        .shape_error
        .as_deref()
        .unwrap()
        .contains("ping 202 is bad"));
    assert!(last
        .iter()
        .all(|e| e.source_table.as_deref() == Some("shop.pings")));
}

/// The other table shapes docs/capture.md names: inheritance children (a
/// child is a table of its own: writes naming it are captured only if it
/// is watched; writes through the parent that reach its rows are the
/// parent's), tables without a primary key (inserts and deletes, no row
/// key), COPY (one event per row), and INSERT … ON CONFLICT DO UPDATE (one
/// event per row: created, or updated with the previous values).
#[tokio::test]
async fn every_table_shape_is_captured_as_the_readme_says() {
    use futures_util::SinkExt;
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (_, app, _) = app_role(&db, &admin).await;
    app.batch_execute(
        "CREATE TABLE shop.animals (id int PRIMARY KEY, name text);
         CREATE TABLE shop.dogs (breed text) INHERITS (shop.animals);
         SELECT webhooks.watch('shop.animals', 'animal');
         INSERT INTO shop.animals VALUES (1, 'generic');
         INSERT INTO shop.dogs VALUES (2, 'rex', 'collie');
         UPDATE shop.animals SET name = upper(name);
         CREATE TABLE shop.log (at timestamptz DEFAULT now(), line text);
         SELECT webhooks.watch('shop.log', 'line', '{\"ops\": [\"insert\", \"delete\"]}');
         INSERT INTO shop.log (line) VALUES ('one'), ('one');
         DELETE FROM shop.log;
         CREATE TABLE shop.stock (sku text PRIMARY KEY, qty int NOT NULL);
         SELECT webhooks.watch('shop.stock', 'stock');
         INSERT INTO shop.stock VALUES ('a', 1);
         INSERT INTO shop.stock VALUES ('a', 5), ('b', 2)
             ON CONFLICT (sku) DO UPDATE SET qty = excluded.qty;",
    )
    .await
    .unwrap();
    let ev = events(&admin, "animal.%").await;
    assert_eq!(
        ev.iter()
            .map(|e| (e.event_type.as_str(), e.row_key.as_deref()))
            .collect::<Vec<_>>(),
        [
            ("animal.created", Some("1")),
            ("animal.updated", Some("1")),
            ("animal.updated", Some("2"))
        ],
        "the child's insert is not captured; the parent's update reaches the child's row"
    );
    let ev = events(&admin, "line.%").await;
    assert_eq!(
        ev.iter()
            .map(|e| (e.event_type.as_str(), e.row_key.as_deref()))
            .collect::<Vec<_>>(),
        [
            ("line.created", None),
            ("line.created", None),
            ("line.deleted", None),
            ("line.deleted", None)
        ]
    );
    let ev = events(&admin, "stock.%").await;
    assert_eq!(
        ev.iter()
            .map(|e| (e.event_type.as_str(), e.row_key.as_deref()))
            .collect::<Vec<_>>(),
        [
            ("stock.created", Some("a")),
            ("stock.updated", Some("a")),
            ("stock.created", Some("b"))
        ],
        "one event per row of the upsert, of the right type (the UPDATE's statement trigger fires first)"
    );
    assert_eq!(ev[1].previous, Some(json!({"qty": 1})));

    // COPY, as the app's role.
    let sink = app
        .copy_in::<_, &'static [u8]>("COPY shop.stock (sku, qty) FROM STDIN")
        .await
        .unwrap();
    let mut sink = Box::pin(sink);
    sink.send(&b"c\t1\nd\t2\ne\t3\n"[..]).await.unwrap();
    let rows = sink.as_mut().finish().await.unwrap();
    assert_eq!(rows, 3);
    let ev = events(&admin, "stock.%").await;
    assert_eq!(
        ev[3..]
            .iter()
            .map(|e| e.row_key.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["c", "d", "e"]
    );
}

/// docs/capture.md's advice for logical replication subscribers: a capture
/// trigger set to fire ALWAYS (or disabled) keeps that setting when the
/// DDL hook refreshes capture, both for the ALTER that sets it and for a
/// later ALTER that changes the table; watching again with the same
/// options changes nothing.
#[tokio::test]
async fn a_capture_trigger_set_to_fire_always_stays_so() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (_, app, _) = app_role(&db, &admin).await;
    app.batch_execute(
        "CREATE TABLE shop.subs (id bigint PRIMARY KEY, v text);
         SELECT webhooks.watch('shop.subs', 'sub');
         ALTER TABLE shop.subs ENABLE ALWAYS TRIGGER webhooks_capture_insert;
         ALTER TABLE shop.subs DISABLE TRIGGER webhooks_capture_delete;",
    )
    .await
    .unwrap();
    let q = "SELECT tgname::text, tgenabled::text::\"char\" FROM pg_trigger WHERE tgrelid = 'shop.subs'::regclass ORDER BY 1";
    let read = || async {
        admin
            .query(q, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i8>(1) as u8 as char))
            .collect::<Vec<(String, char)>>()
    };
    let want = vec![
        ("webhooks_capture_delete".to_owned(), 'D'),
        ("webhooks_capture_insert".to_owned(), 'A'),
        ("webhooks_capture_truncate".to_owned(), 'O'),
        ("webhooks_capture_update".to_owned(), 'O'),
    ];
    assert_eq!(read().await, want, "the ALTERs that set it");
    app.batch_execute(
        "ALTER TABLE shop.subs ADD COLUMN w int;
         SELECT webhooks.watch('shop.subs', 'sub');
         SELECT webhooks.rewatch();",
    )
    .await
    .unwrap();
    assert_eq!(read().await, want, "a later ALTER, watch() again, rewatch()");
    // New options recreate the triggers and keep the settings where the
    // trigger is still there.
    app.batch_execute("ALTER TABLE shop.subs RENAME COLUMN v TO value")
        .await
        .unwrap();
    assert_eq!(read().await, want, "a rename (new arguments)");
}
