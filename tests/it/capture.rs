//! webhooks.watch(): what each write puts in the outbox, and when writers
//! send a NOTIFY.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::support::{wait, TestDb};

#[derive(Debug, PartialEq)]
struct Event {
    event_type: String,
    tenant_id: Option<String>,
    origin: Option<String>,
    row_key: Option<String>,
    payload: Value,
    previous: Option<Value>,
}

async fn events(client: &Client) -> Vec<Event> {
    client
        .query(
            "SELECT event_type, tenant_id, origin, row_key, payload, previous FROM webhooks.events ORDER BY txid, seq",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| Event {
            event_type: r.get(0),
            tenant_id: r.get(1),
            origin: r.get(2),
            row_key: r.get(3),
            payload: r.get(4),
            previous: r.get(5),
        })
        .collect()
}

fn types(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

async fn table(client: &Client) {
    client
        .batch_execute(
            "CREATE SCHEMA crm;
             CREATE TABLE crm.tickets (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 title text NOT NULL,
                 status text NOT NULL DEFAULT 'OPEN',
                 org text,
                 api_token text,
                 notes text)",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn created_updated_deleted_with_previous_values() {
    let db = TestDb::new().await;
    let c = db.client().await;
    table(&c).await;
    c.execute("SELECT webhooks.watch('crm.tickets', 'ticket')", &[])
        .await
        .unwrap();
    c.batch_execute(
        "INSERT INTO crm.tickets (title) VALUES ('printer');
         UPDATE crm.tickets SET title = 'printer on fire';
         DELETE FROM crm.tickets;",
    )
    .await
    .unwrap();
    let ev = events(&c).await;
    assert_eq!(types(&ev), ["ticket.created", "ticket.updated", "ticket.deleted"]);
    assert_eq!(ev[0].row_key.as_deref(), Some("1"));
    assert_eq!(ev[0].payload["title"], "printer");
    assert_eq!(ev[0].payload["status"], "OPEN");
    assert_eq!(ev[0].previous, None);
    assert_eq!(ev[1].payload["title"], "printer on fire");
    assert_eq!(ev[1].previous, Some(json!({"title": "printer"})));
    assert_eq!(ev[2].payload["title"], "printer on fire");
    assert!(ev.iter().all(|e| e.origin.is_none() && e.tenant_id.is_none()));
}

#[tokio::test]
async fn status_column_names_tenant_and_excluded_columns() {
    let db = TestDb::new().await;
    let c = db.client().await;
    table(&c).await;
    c.execute(
        "SELECT webhooks.watch('crm.tickets', 'task', $1)",
        &[&json!({
            "status_column": "status",
            "tenant_column": "org",
            "exclude": ["api_token"],
            "names": {"insert": "task_created", "update": "task_updated", "status": "task_status_changed", "delete": "task_deleted"}
        })],
    )
    .await
    .unwrap();
    c.batch_execute(
        "INSERT INTO crm.tickets (title, org, api_token) VALUES ('a', 'acme', 'tok-1');
         UPDATE crm.tickets SET title = 'b';
         UPDATE crm.tickets SET status = 'IN_PROGRESS';
         DELETE FROM crm.tickets;",
    )
    .await
    .unwrap();
    let ev = events(&c).await;
    assert_eq!(
        types(&ev),
        [
            "task_created",
            "task_updated",
            "task_status_changed",
            "task_deleted"
        ]
    );
    assert!(ev.iter().all(|e| e.tenant_id.as_deref() == Some("acme")));
    assert!(
        ev.iter().all(|e| e.payload.get("api_token").is_none()),
        "excluded column leaked: {ev:?}"
    );
    assert_eq!(ev[2].previous, Some(json!({"status": "OPEN"})));

    // Without a "status" name, a status change emits <entity>.<new value, lower-case>.
    c.execute(
        "SELECT webhooks.watch('crm.tickets', 'appointment', '{\"status_column\": \"status\"}')",
        &[],
    )
    .await
    .unwrap();
    c.batch_execute(
        "INSERT INTO crm.tickets (title, api_token) VALUES ('c', 'tok-2');
         UPDATE crm.tickets SET status = 'Confirmed';
         UPDATE crm.tickets SET status = 'Confirmed', notes = 'x';",
    )
    .await
    .unwrap();
    let ev = events(&c).await;
    assert_eq!(
        &types(&ev)[4..],
        [
            "appointment.created",
            "appointment.confirmed",
            "appointment.updated"
        ]
    );
    // Calling watch() again replaced the options: the token is no longer excluded.
    assert_eq!(ev[4].payload["api_token"], "tok-2");
}

#[tokio::test]
async fn updates_that_change_nothing_watched_emit_nothing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    table(&c).await;
    c.execute(
        "SELECT webhooks.watch('crm.tickets', 'ticket', '{\"columns\": [\"title\"], \"ops\": [\"insert\", \"update\"]}')",
        &[],
    )
    .await
    .unwrap();
    c.batch_execute(
        "INSERT INTO crm.tickets (title) VALUES ('a'), ('b');
         UPDATE crm.tickets SET title = title;
         UPDATE crm.tickets SET notes = 'not watched';
         UPDATE crm.tickets SET title = 'A' WHERE title = 'a';
         DELETE FROM crm.tickets;",
    )
    .await
    .unwrap();
    let ev = events(&c).await;
    assert_eq!(types(&ev), ["ticket.created", "ticket.created", "ticket.updated"]);
    assert_eq!(ev[2].previous, Some(json!({"title": "a"})));
    assert_eq!(ev[2].row_key.as_deref(), Some("1"));
}

/// Capture turns each row into JSON once per side: a column whose type has
/// a cast to json counts the casts (one per to_jsonb() of its row). The
/// planner used to write to_jsonb(r) in again wherever the row's JSON was
/// used, so an insert built it twice and an update of a 10-column row once
/// more for every column (the changed-columns filter).
#[tokio::test]
async fn a_rows_json_is_built_once_per_row_and_side() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE SCHEMA crm;
         CREATE TYPE crm.mood AS ENUM ('calm', 'busy');
         CREATE SEQUENCE crm.json_casts;
         CREATE FUNCTION crm.mood_json(crm.mood) RETURNS json LANGUAGE sql VOLATILE AS $$
             SELECT to_json($1::text || ' #' || nextval('crm.json_casts'))
         $$;
         CREATE CAST (crm.mood AS json) WITH FUNCTION crm.mood_json(crm.mood);
         -- Capture runs casts with webhooks_capture's rights only.
         GRANT USAGE ON SCHEMA crm TO webhooks_capture;
         GRANT USAGE ON SEQUENCE crm.json_casts TO webhooks_capture;
         CREATE TABLE crm.visits (id int PRIMARY KEY, mood crm.mood NOT NULL DEFAULT 'calm',
             a int DEFAULT 0, b int DEFAULT 0, c int DEFAULT 0, d int DEFAULT 0,
             e int DEFAULT 0, f int DEFAULT 0, g int DEFAULT 0, h int DEFAULT 0);
         SELECT webhooks.watch('crm.visits', 'visit');",
    )
    .await
    .unwrap();
    let casts = || async {
        let r = c
            .query_one(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM crm.json_casts",
                &[],
            )
            .await
            .unwrap();
        r.get::<_, i64>(0)
    };
    let mut seen = 0;
    for (statement, rows_json) in [
        ("INSERT INTO crm.visits (id) VALUES (1), (2), (3)", 3),
        ("UPDATE crm.visits SET a = 1 WHERE id = 1", 2),
        ("UPDATE crm.visits SET b = b + 1", 6),
        ("DELETE FROM crm.visits WHERE id = 3", 1),
    ] {
        c.batch_execute(statement).await.unwrap();
        let now = casts().await;
        assert_eq!(
            now - seen,
            rows_json,
            "{statement}: rows turned into JSON (one cast to json each)"
        );
        seen = now;
    }
    let ev = events(&c).await;
    assert_eq!(
        types(&ev),
        [
            "visit.created",
            "visit.created",
            "visit.created",
            "visit.updated",
            "visit.updated",
            "visit.updated",
            "visit.updated",
            "visit.deleted"
        ]
    );
    // The payload carries the cast's value, from the one JSON built (each
    // cast numbers itself, so the old and new rows' moods differ too).
    assert_eq!(ev[0].payload["mood"], "calm #1");
    assert_eq!(ev[3].previous.as_ref().map(|p| &p["a"]), Some(&json!(0)));
    assert_eq!(ev[7].payload["b"], 1);
}

#[tokio::test]
async fn rolled_back_writes_emit_nothing_and_origin_is_recorded() {
    let db = TestDb::new().await;
    let mut c = db.client().await;
    table(&c).await;
    c.execute("SELECT webhooks.watch('crm.tickets', 'ticket')", &[])
        .await
        .unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO crm.tickets (title) VALUES ('never')", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(events(&c).await, []);

    // The origin counts only with this transaction's own inbound record, as
    // webhooks.inbound_apply() writes it; a bare SET is ignored (any session
    // can set it).
    let tx = c.transaction().await.unwrap();
    let id: i64 = tx
        .query_one(
            "INSERT INTO webhooks.inbound (route, idempotency_key, status, payload)
             VALUES ('support-tickets', 'k1', 'applied', '{}') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tx.execute(
        "SELECT set_config('webhooks.inbound_id', $1, true)",
        &[&id.to_string()],
    )
    .await
    .unwrap();
    tx.batch_execute(
        "SELECT set_config('webhooks.origin', 'inbound/support-tickets', true);
         INSERT INTO crm.tickets (title) VALUES ('from make')",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    c.execute("INSERT INTO crm.tickets (title) VALUES ('from the app')", &[])
        .await
        .unwrap();
    let ev = events(&c).await;
    assert_eq!(ev[0].origin.as_deref(), Some("inbound/support-tickets"));
    assert_eq!(ev[1].origin, None, "the origin setting is transaction-local");

    // Forged: the setting alone; another transaction's record; another route.
    let old_id: i64 = c
        .query_one("SELECT id FROM webhooks.inbound", &[])
        .await
        .unwrap()
        .get(0);
    for forged in [
        "SELECT set_config('webhooks.origin', 'inbound/payments', true)".to_owned(),
        format!(
            "SELECT set_config('webhooks.origin', 'inbound/support-tickets', true), \
                    set_config('webhooks.inbound_id', '{old_id}', true)"
        ),
        // A record of this transaction, but for another route.
        "INSERT INTO webhooks.inbound (route, idempotency_key, status, payload)
             VALUES ('support-tickets', 'k2', 'applied', '{}');
         SELECT set_config('webhooks.origin', 'inbound/payments', true),
                set_config('webhooks.inbound_id', currval('webhooks.inbound_id_seq')::text, true)"
            .to_owned(),
    ] {
        let tx = c.transaction().await.unwrap();
        tx.batch_execute(&forged).await.unwrap();
        tx.batch_execute(
            "INSERT INTO crm.tickets (title) VALUES ('forged');
             SELECT webhooks.emit('ticket.note', '{}')",
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let forged: Vec<Option<String>> = c
        .query(
            "SELECT origin FROM webhooks.events WHERE payload->>'title' = 'forged' OR event_type = 'ticket.note'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(forged, vec![None; 6], "a forged origin is never recorded");
}

#[tokio::test]
async fn watch_rejects_bad_options_clearly() {
    let db = TestDb::new().await;
    let c = db.client().await;
    table(&c).await;
    c.execute("CREATE TABLE crm.log (line text)", &[]).await.unwrap();
    for (sql, expected) in [
        (
            "SELECT webhooks.watch('crm.tickets', 'ticket', '{\"colums\": [\"title\"]}')",
            "unknown option \"colums\"",
        ),
        (
            "SELECT webhooks.watch('crm.tickets', 'ticket', '{\"columns\": [\"nope\"]}')",
            "column \"nope\"",
        ),
        (
            "SELECT webhooks.watch('crm.tickets', 'ticket', '{\"ops\": [\"upsert\"]}')",
            "\"ops\" must be",
        ),
        (
            "SELECT webhooks.watch('crm.tickets', 'ticket', '{\"status_column\": 3}')",
            "must be a column name",
        ),
        (
            "SELECT webhooks.watch('crm.tickets', 'bad entity')",
            "invalid entity",
        ),
        ("SELECT webhooks.watch('crm.log', 'log')", "has no primary key"),
        ("SELECT webhooks.watch('crm.missing', 'x')", "does not exist"),
    ] {
        let err = c.execute(sql, &[]).await.expect_err(sql);
        let msg = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(msg.contains(expected), "{sql}: got {msg:?}");
    }
    // Without update capture, a table with no primary key is fine.
    c.execute(
        "SELECT webhooks.watch('crm.log', 'log', '{\"ops\": [\"insert\"]}')",
        &[],
    )
    .await
    .unwrap();
    c.execute("INSERT INTO crm.log VALUES ('x')", &[]).await.unwrap();
    assert_eq!(types(&events(&c).await), ["log.created"]);
    assert!(c
        .query_one("SELECT webhooks.unwatch('crm.log')", &[])
        .await
        .unwrap()
        .get::<_, bool>(0));
    c.execute("INSERT INTO crm.log VALUES ('y')", &[]).await.unwrap();
    assert_eq!(events(&c).await.len(), 1, "unwatch stops capture");
}

/// A connection that LISTENs on `webhooks` and forwards notification payloads.
async fn listener(db: &TestDb) -> (Client, mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) = db.config().connect(NoTls).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = msg {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute("LISTEN webhooks").await.unwrap();
    (client, rx)
}

/// Notifications received up to a fence: a later transaction's NOTIFY, which
/// Postgres delivers after every notification committed before it.
async fn notifications_before_fence(
    writer: &Client,
    rx: &mut mpsc::UnboundedReceiver<String>,
) -> Vec<String> {
    writer.batch_execute("NOTIFY webhooks, 'fence'").await.unwrap();
    let mut seen = Vec::new();
    wait::until("the fence notification", Duration::from_secs(10), || {
        while let Ok(p) = rx.try_recv() {
            seen.push(p);
        }
        let done = seen.iter().any(|p| p == "fence");
        async move { done.then_some(()) }
    })
    .await;
    seen.retain(|p| p != "fence");
    seen
}

#[tokio::test]
async fn bulk_insert_emits_every_event_and_one_notification_only_when_idle() {
    let db = TestDb::new().await;
    let c = db.client().await;
    table(&c).await;
    c.execute("SELECT webhooks.watch('crm.tickets', 'ticket')", &[])
        .await
        .unwrap();
    let (_listen, mut rx) = listener(&db).await;

    // No listener has said it is idle: writers skip the NOTIFY entirely.
    c.execute(
        "INSERT INTO crm.tickets (title) SELECT 't' || g FROM generate_series(1, 100) g",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        notifications_before_fence(&c, &mut rx).await,
        Vec::<String>::new()
    );

    // An idle listener gets exactly one notification for a 10,000-row statement.
    c.execute(
        "INSERT INTO webhooks.listeners (replica, idle) VALUES ('test', true)",
        &[],
    )
    .await
    .unwrap();
    let n = c
        .execute(
            "INSERT INTO crm.tickets (title) SELECT 't' || g FROM generate_series(1, 10000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 10_000);
    assert_eq!(notifications_before_fence(&c, &mut rx).await, vec![String::new()]);
    let count: i64 = c
        .query_one(
            "SELECT count(DISTINCT row_key) FROM webhooks.events WHERE event_type = 'ticket.created'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 10_100);
}

#[tokio::test]
async fn capture_survives_alter_table_and_refuses_silent_breakage() {
    let db = TestDb::new().await;
    let c = db.client().await;
    table(&c).await;
    c.execute(
        "SELECT webhooks.watch('crm.tickets', 'ticket', '{\"status_column\": \"status\", \"exclude\": [\"api_token\"]}')",
        &[],
    )
    .await
    .unwrap();
    // Add, rename (the key too), drop unrelated columns: capture keeps working.
    c.batch_execute(
        "ALTER TABLE crm.tickets ADD COLUMN channel text DEFAULT 'email';
         ALTER TABLE crm.tickets RENAME COLUMN id TO ticket_id;
         ALTER TABLE crm.tickets DROP COLUMN notes;
         INSERT INTO crm.tickets (title, api_token) VALUES ('after', 'tok');
         UPDATE crm.tickets SET status = 'CLOSED';",
    )
    .await
    .unwrap();
    let ev = events(&c).await;
    assert_eq!(types(&ev), ["ticket.created", "ticket.closed"]);
    assert_eq!(ev[0].payload["channel"], "email");
    assert_eq!(ev[0].row_key.as_deref(), Some("1"));
    assert!(ev[0].payload.get("api_token").is_none());

    // Renaming an excluded column keeps it excluded (options follow columns
    // by attribute number), by ALTER TABLE and by the ALTER VIEW spelling.
    c.batch_execute(
        "ALTER TABLE crm.tickets RENAME COLUMN api_token TO token;
         INSERT INTO crm.tickets (title, token) VALUES ('renamed', 'secret-1');
         ALTER VIEW crm.tickets RENAME COLUMN token TO tok;
         INSERT INTO crm.tickets (title, tok) VALUES ('renamed again', 'secret-2');",
    )
    .await
    .unwrap();
    let ev = events(&c).await;
    assert_eq!(ev.len(), 4);
    for e in &ev[2..] {
        assert!(
            !e.payload.to_string().contains("secret-"),
            "excluded column leaked: {}",
            e.payload
        );
    }
    // Dropping the status column the options name is the app's own
    // migration: it succeeds (capture never fails a DDL), says what it
    // broke, shows the table as degraded, and updates are .updated now.
    c.batch_execute("ALTER TABLE crm.tickets DROP COLUMN status; UPDATE crm.tickets SET title = 'x'")
        .await
        .unwrap();
    let (degraded, error): (bool, Option<String>) = {
        let r = c
            .query_one(
                "SELECT degraded, last_error FROM webhooks.watched WHERE target = 'crm.tickets'::regclass",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(degraded);
    let error = error.unwrap_or_default();
    assert!(
        error.contains("\"status_column\" named column \"status\", which is gone"),
        "{error}"
    );
    let ev = events(&c).await;
    assert_eq!(ev.last().unwrap().event_type, "ticket.updated");
    // Dropping the table forgets it.
    c.batch_execute("DROP TABLE crm.tickets").await.unwrap();
    let watched: i64 = c
        .query_one("SELECT count(*) FROM webhooks.watched", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(watched, 0);
}

/// id, type, payload, previous, tenant, source table, row key.
type EmittedRow = (
    uuid::Uuid,
    String,
    Value,
    Option<Value>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// `emit_many`: one statement, ids in order, one wake; bad input is
/// refused naming it, and nothing of the call is written.
#[tokio::test]
async fn emit_many_writes_a_set_in_order_and_refuses_bad_events_whole() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let app = format!("{}_app", db.name());
    c.batch_execute(&format!("CREATE ROLE {app} LOGIN IN ROLE webhooks_app"))
        .await
        .unwrap();
    let a = db.client_as(&app).await;
    let ids: Vec<uuid::Uuid> = a
        .query(
            "SELECT webhooks.emit_many(jsonb_build_array(
                 jsonb_build_object('type', 'order.created', 'data', jsonb_build_object('n', 1),
                                    'source_table', 'shop.orders', 'row_key', '1', 'tenant_id', 't1'),
                 jsonb_build_object('type', 'order.updated', 'data', 'null'::jsonb,
                                    'previous', jsonb_build_object('n', 0)),
                 jsonb_build_object('type', 'order.deleted', 'data', '{}'::jsonb, 'previous', NULL)))",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 3);
    let rows = c
        .query(
            "SELECT event_id, event_type, payload, previous, tenant_id, source_table, row_key
               FROM webhooks.events ORDER BY txid, seq",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<EmittedRow> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        ids,
        "ids in the array's order"
    );
    assert_eq!(
        got[0],
        (
            ids[0],
            "order.created".into(),
            json!({"n": 1}),
            None,
            Some("t1".into()),
            Some("shop.orders".into()),
            Some("1".into())
        )
    );
    assert_eq!(
        (got[1].2.clone(), got[1].3.clone()),
        (Value::Null, Some(json!({"n": 0})))
    );
    assert_eq!(got[2].3, None, "a JSON null previous is none");

    for (bad, names) in [
        (
            "'{\"type\": \"x\", \"data\": {}}'",
            "must be a JSON array, got object",
        ),
        ("NULL", "must be a JSON array, got NULL"),
        (
            "'[{\"type\": \"ok\", \"data\": 1}, {\"type\": \"no data\"}]'",
            "invalid event {\"type\": \"no data\"}",
        ),
        ("'[{\"data\": 1}]'", "invalid event {\"data\": 1}"),
        ("'[{\"type\": \"x;DROP\", \"data\": 1}]'", "invalid event"),
        ("'[{\"type\": 7, \"data\": 1}]'", "invalid event"),
        ("'[\"order.created\"]'", "invalid event \"order.created\""),
    ] {
        let err = a
            .batch_execute(&format!("SELECT webhooks.emit_many({bad})"))
            .await
            .unwrap_err();
        let e = err.as_db_error().unwrap();
        assert_eq!(e.code().code(), "22023", "{bad}: {e}");
        assert!(e.message().contains(names), "{bad}: {}", e.message());
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM webhooks.events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "a refused call writes nothing, not even its good events");
    // An empty set is no event and no error.
    a.batch_execute("SELECT webhooks.emit_many('[]')").await.unwrap();
}

/// The trigger functions and levels capture uses on a table, by event.
async fn triggers(c: &Client, table: &str) -> Vec<(String, String, bool)> {
    c.query(
        "SELECT CASE WHEN tgtype::int & 4 <> 0 THEN 'insert' WHEN tgtype::int & 8 <> 0 THEN 'delete'
                     WHEN tgtype::int & 16 <> 0 THEN 'update' ELSE 'truncate' END,
                tgfoid::regproc::text, tgtype::int & 1 = 1
           FROM pg_trigger WHERE tgrelid = $1::text::regclass AND NOT tgisinternal ORDER BY 1",
        &[&table],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// `per_row` captures a plain table's inserts and deletes with row-level
/// triggers: the same events, in the same order, as the statement-level
/// capture, for one row or many; updates stay statement-level; a table with
/// a column of a type a user created keeps webhooks.capture() (with its SET
/// clauses), per row too; and the option is checked.
#[tokio::test]
async fn per_row_capture_emits_what_statement_capture_does() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE SCHEMA shop;
         CREATE TYPE shop.state AS ENUM ('new', 'paid');
         CREATE TABLE shop.by_statement (id bigint PRIMARY KEY, total numeric, note text, at date);
         CREATE TABLE shop.by_row (LIKE shop.by_statement);
         ALTER TABLE shop.by_row ADD PRIMARY KEY (id);
         CREATE TABLE shop.typed (id bigint PRIMARY KEY, state shop.state NOT NULL DEFAULT 'new');
         SELECT webhooks.watch('shop.by_statement', 'order');
         SELECT webhooks.watch('shop.by_row', 'order', '{\"per_row\": true}');
         SELECT webhooks.watch('shop.typed', 'item', '{\"per_row\": true}');",
    )
    .await
    .unwrap();
    assert_eq!(
        triggers(&c, "shop.by_statement").await,
        [
            ("delete".into(), "webhooks.plain_capture".into(), false),
            ("insert".into(), "webhooks.plain_capture".into(), false),
            ("truncate".into(), "webhooks.capture".into(), false),
            ("update".into(), "webhooks.capture".into(), false),
        ]
    );
    assert_eq!(
        triggers(&c, "shop.by_row").await,
        [
            ("delete".into(), "webhooks.plain_capture".into(), true),
            ("insert".into(), "webhooks.plain_capture".into(), true),
            ("truncate".into(), "webhooks.capture".into(), false),
            ("update".into(), "webhooks.capture".into(), false),
        ]
    );
    assert_eq!(
        triggers(&c, "shop.typed").await,
        [
            ("delete".into(), "webhooks.capture".into(), true),
            ("insert".into(), "webhooks.capture".into(), true),
            ("truncate".into(), "webhooks.capture".into(), false),
            ("update".into(), "webhooks.capture".into(), false),
        ]
    );

    let writes = |t: &str| {
        format!(
            "INSERT INTO shop.{t} VALUES (1, 10, 'a', '2026-01-01');
             INSERT INTO shop.{t} SELECT g, g * 10, 'n' || g, NULL FROM generate_series(2, 4) g;
             UPDATE shop.{t} SET total = 11 WHERE id = 1;
             DELETE FROM shop.{t} WHERE id IN (2, 3);
             DELETE FROM shop.{t} WHERE id = 4;"
        )
    };
    c.batch_execute(&writes("by_statement")).await.unwrap();
    let by_statement = events(&c).await;
    c.batch_execute("TRUNCATE webhooks.events").await.unwrap();
    c.batch_execute(&writes("by_row")).await.unwrap();
    let by_row = events(&c).await;
    assert_eq!(
        types(&by_row),
        [
            "order.created",
            "order.created",
            "order.created",
            "order.created",
            "order.updated",
            "order.deleted",
            "order.deleted",
            "order.deleted"
        ]
    );
    assert_eq!(by_row, by_statement);
    assert_eq!(
        by_row[0].payload,
        json!({"id": 1, "total": 10, "note": "a", "at": "2026-01-01"})
    );
    let keys: Vec<_> = by_row.iter().map(|e| e.row_key.as_deref().unwrap()).collect();
    assert_eq!(keys, ["1", "2", "3", "4", "1", "2", "3", "4"]);
    let sources: Vec<String> = c
        .query("SELECT DISTINCT source_table FROM webhooks.events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sources, ["shop.by_row"]);

    c.batch_execute(
        "TRUNCATE webhooks.events;
         INSERT INTO shop.typed VALUES (1, 'new'), (2, 'paid');
         DELETE FROM shop.typed WHERE id = 1;",
    )
    .await
    .unwrap();
    let typed = events(&c).await;
    assert_eq!(types(&typed), ["item.created", "item.created", "item.deleted"]);
    assert_eq!(typed[1].payload, json!({"id": 2, "state": "paid"}));

    for (options, says) in [
        (r#"{"per_row": "yes"}"#, "\"per_row\" must be true or false"),
        (r#"{"per_row": true, "exclude": ["note"]}"#, "\"per_row\" needs"),
        (
            r#"{"per_row": true, "tenant_column": "note"}"#,
            "\"per_row\" needs",
        ),
    ] {
        let err = c
            .execute(
                "SELECT webhooks.watch('shop.by_row', 'order', $1::text::jsonb)",
                &[&options],
            )
            .await
            .unwrap_err();
        let msg = err.as_db_error().unwrap().message().to_owned();
        assert!(msg.contains(says), "{options}: {msg}");
    }
    // Watched again without it: statement-level again.
    c.batch_execute("SELECT webhooks.watch('shop.by_row', 'order')")
        .await
        .unwrap();
    assert!(triggers(&c, "shop.by_row").await.iter().all(|t| !t.2));
}

/// Per row, a writer still sends a NOTIFY only while a listener is idle.
#[tokio::test]
async fn per_row_capture_notifies_only_when_idle() {
    let db = TestDb::new().await;
    let c = db.client().await;
    table(&c).await;
    c.execute(
        "SELECT webhooks.watch('crm.tickets', 'ticket', '{\"per_row\": true}')",
        &[],
    )
    .await
    .unwrap();
    let (_listen, mut rx) = listener(&db).await;
    c.execute("INSERT INTO crm.tickets (title) VALUES ('busy')", &[])
        .await
        .unwrap();
    assert_eq!(
        notifications_before_fence(&c, &mut rx).await,
        Vec::<String>::new()
    );
    c.batch_execute(
        "INSERT INTO webhooks.listeners (replica, idle) VALUES ('test', true);
         INSERT INTO crm.tickets (title) SELECT 't' || g FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    assert_eq!(notifications_before_fence(&c, &mut rx).await, vec![String::new()]);
    assert_eq!(events(&c).await.len(), 51);
}

/// Writers read "is some listener idle?" from webhooks.listeners_idle, a
/// count every change to webhooks.listeners keeps (listener_set, _forget,
/// _rescue, a plain INSERT/DELETE/TRUNCATE): it never says idle when
/// nobody is, nor busy when somebody is.
#[tokio::test]
async fn the_idle_count_follows_the_listeners() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let idle = || async {
        let r = c
            .query_one(
                "SELECT coalesce(pg_sequence_last_value('webhooks.listeners_idle'), 0), webhooks.someone_idle()",
                &[],
            )
            .await
            .unwrap();
        (r.get::<_, i64>(0), r.get::<_, Option<bool>>(1).unwrap_or(false))
    };
    assert_eq!(idle().await, (0, false), "nobody has said anything");
    let steps: [(&str, (i64, bool)); 8] = [
        ("SELECT webhooks.listener_set('a', true)", (1, true)),
        ("SELECT webhooks.listener_set('b', true)", (2, true)),
        ("SELECT webhooks.listener_set('a', false)", (1, true)),
        ("SELECT webhooks.listener_forget('b')", (0, false)),
        (
            "INSERT INTO webhooks.listeners (replica, idle) VALUES ('test', true)",
            (1, true),
        ),
        (
            "DELETE FROM webhooks.listeners WHERE replica = 'test'",
            (0, false),
        ),
        (
            "INSERT INTO webhooks.listeners (replica, idle) VALUES ('t2', true)",
            (1, true),
        ),
        ("TRUNCATE webhooks.listeners", (0, false)),
    ];
    for (sql, want) in steps {
        c.batch_execute(sql).await.unwrap();
        assert_eq!(idle().await, want, "after {sql}");
    }
}
