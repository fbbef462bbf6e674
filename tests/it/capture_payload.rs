//! `watch()` option `payload`: the event's data computed by a function of
//! the app's, inside the writing transaction (issue #15, item 1).

use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::support::TestDb;

/// The salon: appointments joined with their customer and stylist.
const SALON: &str = "
    CREATE TABLE salon.customers (id bigint PRIMARY KEY, name text, phone text);
    CREATE TABLE salon.stylists (id bigint PRIMARY KEY, name text);
    CREATE TABLE salon.appointments (
        id bigint PRIMARY KEY, customer_id bigint REFERENCES salon.customers, stylist_id bigint REFERENCES salon.stylists,
        status text NOT NULL DEFAULT 'pending', notes text);
    CREATE FUNCTION salon.appointment_payload(a salon.appointments) RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = salon, pg_temp AS $$
        SELECT jsonb_build_object(
            'appointment', jsonb_build_object('id', a.id, 'status', a.status),
            'customer', (SELECT jsonb_build_object('name', c.name,
                                                   'phone', left(c.phone, 4) || '***' || right(c.phone, 3))
                           FROM customers c WHERE c.id = a.customer_id),
            'stylist', (SELECT jsonb_build_object('name', s.name) FROM stylists s WHERE s.id = a.stylist_id),
            'notes', a.notes)
    $$;";

async fn setup(db: &TestDb, admin: &Client) -> (String, Client) {
    let role = format!("{}_salon", db.name());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN IN ROLE webhooks_app; CREATE SCHEMA salon AUTHORIZATION {role};"
        ))
        .await
        .unwrap();
    let c = db.client_as(&role).await;
    c.batch_execute(SALON).await.unwrap();
    (role, c)
}

async fn events(c: &Client) -> Vec<(String, Value, Option<Value>)> {
    c.query(
        "SELECT event_type, payload, previous FROM webhooks.events ORDER BY txid, seq",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test]
async fn a_payload_function_shapes_data_inside_the_writing_transaction() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (_, salon) = setup(&db, &admin).await;
    salon
        .batch_execute(
            "SELECT webhooks.watch('salon.appointments', 'appointment',
                 '{\"payload\": \"salon.appointment_payload\", \"status_column\": \"status\", \"exclude\": [\"notes\"]}');
             ALTER TABLE salon.appointments ADD COLUMN junk int;
             ALTER TABLE salon.appointments DROP COLUMN junk;
             BEGIN;
             INSERT INTO salon.customers VALUES (1, 'Ada', '0912345678');
             INSERT INTO salon.stylists VALUES (7, 'Grace');
             INSERT INTO salon.appointments (id, customer_id, stylist_id, notes) VALUES (42, 1, 7, 'private');
             COMMIT;
             UPDATE salon.appointments SET status = 'confirmed' WHERE id = 42;
             UPDATE salon.appointments SET notes = 'still private' WHERE id = 42;
             DELETE FROM salon.appointments WHERE id = 42;",
        )
        .await
        .unwrap();
    let ev = events(&admin).await;
    let types: Vec<&str> = ev.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        types,
        [
            "appointment.created",
            "appointment.confirmed",
            "appointment.updated",
            "appointment.deleted"
        ]
    );
    // The joins saw the customer and stylist written in the same transaction.
    assert_eq!(
        ev[0].1,
        json!({"appointment": {"id": 42, "status": "pending"},
               "customer": {"name": "Ada", "phone": "0912***678"}, "stylist": {"name": "Grace"}})
    );
    assert_eq!(ev[1].1["appointment"]["status"], "confirmed");
    // previous holds the changed columns of the row, excluded ones left out.
    assert_eq!(ev[1].2, Some(json!({"status": "pending"})));
    assert_eq!(ev[2].2, Some(json!({})), "the change was to an excluded column");
    // A delete passes the old row.
    assert_eq!(ev[3].1["appointment"]["status"], "confirmed");
    assert!(
        ev.iter().all(|e| e.1.get("notes").is_none()),
        "exclude applies to data"
    );

    // resend uses it too, and a renamed function is followed.
    salon
        .batch_execute(
            "INSERT INTO salon.appointments (id, customer_id, stylist_id) VALUES (43, 1, 7);
             ALTER FUNCTION salon.appointment_payload(salon.appointments) RENAME TO appt_payload;
             UPDATE salon.appointments SET status = 'done' WHERE id = 43;",
        )
        .await
        .unwrap();
    // (as the table's owner: its payload function runs in no other session)
    salon
        .batch_execute("SELECT webhooks.resend('salon.appointments', '43')")
        .await
        .unwrap();
    let ev = events(&admin).await;
    let last = &ev[ev.len() - 2..];
    assert_eq!(last[0].1["appointment"]["status"], "done");
    assert_eq!(last[1].0, "appointment.done");
    assert_eq!(last[1].1["customer"]["name"], "Ada", "resend: {}", last[1].1);
}

#[tokio::test]
async fn payload_function_problems_are_refused_when_configured() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (_, salon) = setup(&db, &admin).await;
    let other = format!("{}_other", db.name());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {other};
             CREATE FUNCTION salon.as_text(a salon.appointments) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;
             CREATE FUNCTION salon.two(a salon.appointments, b int) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{{}}'::jsonb $$;
             CREATE FUNCTION salon.wrong_row(c salon.customers) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{{}}'::jsonb $$;
             CREATE FUNCTION salon.theirs(a salon.appointments) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{{}}'::jsonb $$;
             ALTER FUNCTION salon.as_text(salon.appointments) OWNER TO {role};
             ALTER FUNCTION salon.wrong_row(salon.customers) OWNER TO {role};
             ALTER FUNCTION salon.theirs(salon.appointments) OWNER TO {other};",
            role = format!("{}_salon", db.name()),
        ))
        .await
        .unwrap();
    for (payload, code, part) in [
        (
            "\"salon.nope\"",
            "42883",
            "there is no function salon.nope(salon.appointments)",
        ),
        ("\"salon.wrong_row\"", "42883", "there is no function"),
        ("\"salon.as_text\"", "22023", "must return jsonb"),
        (
            "\"salon.two(salon.appointments, int)\"",
            "22023",
            "exactly one argument",
        ),
        (
            "\"salon.theirs\"",
            "42501",
            "only its owner may make capture call it",
        ),
        ("42", "22023", "must name a function"),
        ("\"\"", "22023", "must name a function"),
    ] {
        let err = salon
            .batch_execute(&format!(
                "SELECT webhooks.watch('salon.appointments', 'appointment', '{{\"payload\": {payload}}}')"
            ))
            .await
            .unwrap_err();
        let e = err.as_db_error().unwrap();
        assert_eq!(e.code().code(), code, "{payload}: {e}");
        assert!(e.message().contains(part), "{payload}: {}", e.message());
    }
    let watched: i64 = admin
        .query_one("SELECT count(*) FROM webhooks.watched", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(watched, 0, "a refused watch() leaves nothing behind");

    // A payload function that raises fails the app's write only when the
    // table asks for it ({"on_error": "fail"}); fail-open is
    // capture_failopen.rs's.
    salon
        .batch_execute(
            "CREATE FUNCTION salon.strict(a salon.appointments) RETURNS jsonb LANGUAGE plpgsql AS $$
             BEGIN
                 IF a.customer_id IS NULL THEN RAISE EXCEPTION 'appointment % has no customer', a.id; END IF;
                 RETURN jsonb_build_object('id', a.id);
             END $$;
             SELECT webhooks.watch('salon.appointments', 'appointment',
                                   '{\"payload\": \"salon.strict\", \"on_error\": \"fail\"}');",
        )
        .await
        .unwrap();
    let err = salon
        .batch_execute("INSERT INTO salon.appointments (id) VALUES (1)")
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("appointment 1 has no customer"),
        "{err}"
    );
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM salon.appointments", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the write failed whole: never a silent drop");
    let err = salon
        .batch_execute(
            "SELECT webhooks.watch('salon.appointments', 'appointment', '{\"on_error\": \"maybe\"}')",
        )
        .await
        .unwrap_err();
    let msg = err.as_db_error().unwrap().message();
    assert!(msg.contains("\"on_error\" must be"), "{msg}");
}

#[tokio::test]
async fn a_payload_function_never_runs_with_more_than_its_owners_rights() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (role, salon) = setup(&db, &admin).await;
    // An invoker function runs as the writer, in the writer's session: the
    // owner's own writes run it as the owner. A superuser's writes to the
    // owner's table never run it (it could escalate through them, as a
    // trigger of the owner's own could): the rows are captured as they
    // are, marked. It never runs as webhooks_capture.
    salon
        .batch_execute(&format!(
            "CREATE FUNCTION salon.greedy(a salon.appointments) RETURNS jsonb LANGUAGE plpgsql AS $$
             BEGIN
                 IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                     EXECUTE 'ALTER ROLE {role} SUPERUSER';
                 END IF;
                 BEGIN
                     EXECUTE 'RESET ROLE; SET ROLE postgres';
                     EXECUTE 'ALTER ROLE {role} SUPERUSER';
                 EXCEPTION WHEN OTHERS THEN NULL;
                 END;
                 RETURN jsonb_build_object('ran_as', current_user::text);
             END $$;
             SELECT webhooks.watch('salon.appointments', 'appointment', '{{\"payload\": \"salon.greedy\"}}');
             INSERT INTO salon.customers VALUES (1, 'Ada', '0912345678');
             INSERT INTO salon.appointments (id, customer_id) VALUES (1, 1);"
        ))
        .await
        .unwrap();
    admin
        .batch_execute("INSERT INTO salon.appointments (id, customer_id) VALUES (2, 1)")
        .await
        .unwrap();
    let rows = admin
        .query(
            "SELECT payload, shape_error FROM webhooks.events ORDER BY txid, seq",
            &[],
        )
        .await
        .unwrap();
    let first: Value = rows[0].get(0);
    assert_eq!(first, json!({"ran_as": role}));
    let second: Value = rows[1].get(0);
    let marker: Option<String> = rows[1].get(1);
    assert_eq!(second["id"], 2, "the row as it is: {second}");
    assert!(
        marker
            .as_deref()
            .unwrap_or("")
            .contains("not shaped: written in a session of superuser"),
        "{marker:?}"
    );
    // A superuser's resend is refused, saying who may; the owner's works.
    let err = admin
        .batch_execute("SELECT webhooks.resend('salon.appointments', '1')")
        .await
        .unwrap_err();
    let msg = err.as_db_error().unwrap().message();
    assert!(msg.contains("runs only in the owner's own session"), "{msg}");
    salon
        .batch_execute("SELECT webhooks.resend('salon.appointments', '2')")
        .await
        .unwrap();
    let ev = events(&admin).await;
    assert_eq!(ev.last().unwrap().1, json!({"ran_as": role}));
    let sup: bool = admin
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .get(0);
    assert!(!sup);
}
