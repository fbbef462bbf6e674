//! One table owner's capture can never reach another's (issue #23, the
//! second audit's N1–N4 and L7), and the names ORMs give tables are found.
//! Every attack is made as an unprivileged login role, as the audit made it.

use serde_json::Value;
use tokio_postgres::Client;

use crate::support::TestDb;

/// Two tenants: login roles, each owning a schema, both in webhooks_app.
async fn tenants(db: &TestDb, admin: &Client) -> (String, Client, String, Client) {
    let (a, b) = (format!("{}_ta", db.name()), format!("{}_tb", db.name()));
    admin
        .batch_execute(&format!(
            "CREATE ROLE {a} LOGIN IN ROLE webhooks_app; CREATE SCHEMA a AUTHORIZATION {a};
             CREATE ROLE {b} LOGIN IN ROLE webhooks_app; CREATE SCHEMA b AUTHORIZATION {b};"
        ))
        .await
        .unwrap();
    let (ca, cb) = (db.client_as(&a).await, db.client_as(&b).await);
    (a, ca, b, cb)
}

async fn payloads(admin: &Client, source: &str) -> Vec<(String, Value, Option<String>)> {
    admin
        .query(
            "SELECT event_type, payload, shape_error FROM webhooks.events
              WHERE source_table = $1 AND event_type NOT LIKE 'webhooks.%' ORDER BY txid, seq",
            &[&source],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The careful tenant B of the audit: a SECURITY DEFINER payload function
/// that reads its customers, EXECUTE revoked from PUBLIC.
const CAREFUL_B: &str = "
    CREATE TABLE b.customers(id int PRIMARY KEY, name text, card text);
    INSERT INTO b.customers VALUES (1, 'Alice Secret', '4111-1111-1111-1111');
    CREATE TABLE b.appointments(id int PRIMARY KEY, customer_id int, at timestamptz);
    CREATE FUNCTION b.appointment_payload(x b.appointments) RETURNS jsonb LANGUAGE sql STABLE SECURITY DEFINER
      SET search_path = b, pg_temp AS $$ SELECT jsonb_build_object('appointment', to_jsonb(x), 'customer',
      (SELECT jsonb_build_object('name', c.name, 'card', c.card) FROM customers c WHERE c.id = x.customer_id)) $$;
    REVOKE EXECUTE ON FUNCTION b.appointment_payload(b.appointments) FROM PUBLIC;
    SELECT webhooks.watch('b.appointments', 'appointment', '{\"payload\": \"b.appointment_payload\"}');";

/// N1 and N2: tenant A's payload function tries to call B's and to write
/// forged events. It runs with A's rights only: both fail, A's own write
/// still commits (fail-open, marked), and nothing of B's leaks.
#[tokio::test]
async fn one_owners_capture_cannot_call_anothers_code_or_forge_events() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (_, ta, tb_role, tb) = tenants(&db, &admin).await;
    tb.batch_execute(CAREFUL_B).await.unwrap();
    let acl: (Option<String>, Option<String>) = {
        let r = admin
            .query_one(
                "SELECT (SELECT proacl::text FROM pg_proc WHERE oid = 'b.appointment_payload(b.appointments)'::regprocedure),
                        (SELECT nspacl::text FROM pg_namespace WHERE nspname = 'b')",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        !format!("{acl:?}").contains("webhooks_capture"),
        "watch() granted capture a way into B: {acl:?}"
    );
    ta.batch_execute(
        "CREATE TABLE a.probe(id int PRIMARY KEY, cid int);
         CREATE FUNCTION a.probe_payload(r a.probe) RETURNS jsonb LANGUAGE plpgsql AS $$
         DECLARE out jsonb; BEGIN
           EXECUTE format('select b.appointment_payload(row(1, %s, now())::b.appointments)', r.cid) INTO out;
           RETURN jsonb_build_object('leak', out, 'as', current_user); END $$;
         CREATE TABLE a.forge(id int PRIMARY KEY);
         CREATE FUNCTION a.forge_payload(r a.forge) RETURNS jsonb LANGUAGE plpgsql AS $$ BEGIN
           INSERT INTO webhooks.events(event_type, tenant_id, origin, source_table, row_key, payload)
           VALUES ('payment.success', 'tenant-B', 'inbound/payments', 'app.payments', '42', '{\"forged\": true}');
           RETURN '{}'; END $$;
         SELECT webhooks.watch('a.probe', 'probe', '{\"payload\": \"a.probe_payload\"}');
         SELECT webhooks.watch('a.forge', 'forge', '{\"payload\": \"a.forge_payload\"}');
         INSERT INTO a.probe VALUES (1, 1);
         INSERT INTO a.forge VALUES (1);",
    )
    .await
    .expect("A's own writes commit");
    let probe = payloads(&admin, "a.probe").await;
    assert_eq!(probe.len(), 1);
    assert!(!probe[0].1.to_string().contains("Alice"), "{:?}", probe[0]);
    assert!(
        probe[0].2.as_deref().unwrap().contains("permission denied"),
        "{:?}",
        probe[0]
    );
    let forged: i64 = admin
        .query_one(
            "SELECT count(*) FROM webhooks.events
              WHERE event_type = 'payment.success' OR (origin IS NOT NULL AND event_type <> 'webhooks.capture.failed')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(forged, 0, "no forged event");
    let forge = payloads(&admin, "a.forge").await;
    assert!(forge[0]
        .2
        .as_deref()
        .unwrap()
        .contains("permission denied for table events"));

    // emit() takes no webhooks.* type (pgwebhooks' own), from anyone.
    let err = ta
        .batch_execute("SELECT webhooks.emit('webhooks.endpoint.deleted', '{\"endpointId\": 1}')")
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "22023");
    let err = ta
        .batch_execute("SELECT webhooks.watch('a.forge', 'webhooks.endpoint')")
        .await
        .unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("pgwebhooks' own"));

    // Who may emit for which tenant: open until the operator lists a
    // tenant's emitters; then only sessions of those roles.
    ta.batch_execute("SELECT webhooks.emit('note.added', '{}', 'tenant-B')")
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "INSERT INTO webhooks.tenant_emitters VALUES ('tenant-B', '{tb_role}')"
        ))
        .await
        .unwrap();
    let err = ta
        .batch_execute("SELECT webhooks.emit('note.added', '{}', 'tenant-B')")
        .await
        .unwrap_err();
    let e = err.as_db_error().unwrap();
    assert_eq!(e.code().code(), "42501");
    assert!(
        e.message().contains("may not emit events for tenant tenant-B"),
        "{}",
        e.message()
    );
    tb.batch_execute("SELECT webhooks.emit('note.added', '{}', 'tenant-B')")
        .await
        .unwrap();
    ta.batch_execute("SELECT webhooks.emit('note.added', '{}', 'tenant-A')")
        .await
        .unwrap();
}

/// N3: a trigger written by hand cannot call capture at all, so it can
/// neither forge event types nor break another table's ALTER, rewatch()
/// or resend; a trigger function of an older release that is still there
/// is ignored by webhooks.watched and the DDL hook.
#[tokio::test]
async fn a_hand_written_capture_trigger_is_refused_and_breaks_nobody() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (_, ta, _, tb) = tenants(&db, &admin).await;
    tb.batch_execute(CAREFUL_B).await.unwrap();
    ta.batch_execute("CREATE TABLE a.brk(id int PRIMARY KEY)")
        .await
        .unwrap();
    for f in ["capture", "plain_capture", "capture_shape"] {
        let err = ta
            .batch_execute(&format!(
                "CREATE TRIGGER zz AFTER INSERT ON a.brk REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
                 EXECUTE FUNCTION webhooks.{f}('brk', 'not json', 'nope')"
            ))
            .await
            .unwrap_err();
        assert_eq!(err.as_db_error().unwrap().code().code(), "42501", "{f}: {err:?}");
    }
    // capture_install() called directly does exactly what watch() does.
    let err = ta
        .batch_execute(
            "SELECT webhooks.capture_install('a.brk', 'brk', '{\"names\": {\"insert\": \"webhooks.x\"}}')",
        )
        .await
        .unwrap_err();
    assert!(err.as_db_error().is_some(), "{err:?}");

    // A trigger with bad arguments, as a superuser could still write one
    // (or an older release allowed): everyone's DDL goes on.
    admin
        .batch_execute(
            "CREATE TRIGGER zz AFTER INSERT ON a.brk REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
             EXECUTE FUNCTION webhooks.capture('brk', 'not json', 'nope')",
        )
        .await
        .unwrap();
    tb.batch_execute(
        "ALTER TABLE b.appointments ADD COLUMN note text;
         SELECT webhooks.rewatch();
         INSERT INTO b.appointments VALUES (1, 1, now(), 'x');",
    )
    .await
    .expect("B's DDL, rewatch and writes are not broken by A's trigger");
    admin
        .batch_execute("ALTER TABLE b.appointments ADD COLUMN note2 text")
        .await
        .unwrap();
    let watched: Vec<String> = admin
        .query("SELECT target::text FROM webhooks.watched ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(watched, ["b.appointments"]);
}

/// N4: resend reads a row with row-level security off, so a policy of
/// the table's owner never runs with the operator's rights; L7: the DDL
/// hook cannot be switched off by a setting, so a renamed excluded column
/// stays excluded.
#[tokio::test]
async fn resend_never_runs_an_owners_policy_and_ddl_is_always_followed() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (a, ta, _, _) = tenants(&db, &admin).await;
    let ops = format!("{}_ops", db.name());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {ops} LOGIN CREATEROLE IN ROLE webhooks_sidecar"
        ))
        .await
        .unwrap();
    ta.batch_execute(&format!(
        "CREATE TABLE a.rl(id int PRIMARY KEY, v text);
         SELECT webhooks.watch('a.rl', 'rl');
         INSERT INTO a.rl VALUES (1, 'x');
         CREATE FUNCTION a.rls_pwn() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN
           IF (SELECT rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
             EXECUTE 'grant webhooks_sidecar to {a}'; END IF;
           RETURN true; END $$;
         GRANT USAGE ON SCHEMA a TO {ops}; GRANT SELECT ON a.rl TO {ops};
         ALTER TABLE a.rl ENABLE ROW LEVEL SECURITY; CREATE POLICY p ON a.rl USING (a.rls_pwn());"
    ))
    .await
    .unwrap();
    let op = db.client_as(&ops).await;
    let err = op
        .batch_execute("SELECT webhooks.resend('a.rl', '1')")
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("row-level security"),
        "{err:?}"
    );
    let member: bool = admin
        .query_one("SELECT pg_has_role($1, 'webhooks_sidecar', 'member')", &[&a])
        .await
        .unwrap()
        .get(0);
    assert!(!member, "the owner's policy ran as the operator");

    // L7: the setting that used to skip the hook changes nothing.
    ta.batch_execute(
        "CREATE TABLE a.tasks(id int PRIMARY KEY, title text, token text);
         SELECT webhooks.watch('a.tasks', 'task', '{\"exclude\": [\"token\"]}');
         SET webhooks.in_on_ddl = 'on';
         ALTER TABLE a.tasks RENAME COLUMN token TO tok2;
         RESET webhooks.in_on_ddl;
         INSERT INTO a.tasks VALUES (2, 'after skip', 'sk_live_2');",
    )
    .await
    .unwrap();
    let ev = payloads(&admin, "a.tasks").await;
    assert!(!ev[0].1.to_string().contains("sk_live_2"), "{:?}", ev[0].1);
}

/// Prisma and TypeORM name tables in quoted mixed case ("Task"): resend
/// finds them as the operator types them, watch()'s messages and the
/// console's search name them right.
#[tokio::test]
async fn tables_named_the_way_orms_name_them_are_found() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "CREATE TABLE \"Task\" (id text PRIMARY KEY, title text);
             CREATE TABLE task (id text PRIMARY KEY, title text);
             SELECT webhooks.watch('\"Task\"', 'task');
             INSERT INTO \"Task\" VALUES ('t2', 'from prisma');",
        )
        .await
        .unwrap();
    for name in ["Task", "\"Task\"", "public.Task", "public.\"Task\""] {
        let (ok, _, err) = db.cli(&["resend", name, "t2"]).await;
        assert!(ok, "{name}: {err}");
    }
    let sources: Vec<String> = admin
        .query("SELECT DISTINCT source_table FROM webhooks.events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sources, ["public.\"Task\""]);
    let (ok, _, err) = db.cli(&["resend", "task", "t2"]).await;
    assert!(!ok && err.contains("task is not watched"), "{err}");
    let err = admin
        .batch_execute("SELECT webhooks.watch('\"Task\"', 'task', '{\"exclude\": [\"Title\"]}')")
        .await
        .unwrap_err();
    let msg = err.as_db_error().unwrap().message();
    assert!(msg.contains("which public.\"Task\" does not have"), "{msg}");
}
