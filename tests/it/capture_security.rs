//! Capture as an attacker would try it: a table's owner (the app's role, or
//! whoever has an SQL injection in the app) must never gain rights through
//! capture, and installing pgwebhooks must not break anyone's DDL.
//! Security audit C1, C2, H1, M1, M2, L7, I8.

use serde_json::Value;
use tokio_postgres::Client;

use crate::support::TestDb;

/// A login role owning schema `shop` in this test's database, member of
/// webhooks_app when `app` is true.
async fn owner(db: &TestDb, admin: &Client, app: bool) -> (String, Client) {
    let role = format!("{}_owner", db.name());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; CREATE SCHEMA shop AUTHORIZATION {role};{}",
            if app {
                format!(" GRANT webhooks_app TO {role};")
            } else {
                String::new()
            }
        ))
        .await
        .unwrap();
    let client = db.client_as(&role).await;
    (role, client)
}

async fn is_superuser(admin: &Client, role: &str) -> bool {
    admin
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .get(0)
}

/// A function that makes its caller's role superuser when it runs with a
/// superuser's rights, and says which role it ran as.
const PWN: &str = "CREATE FUNCTION shop.pwn() RETURNS text LANGUAGE plpgsql AS $$
    BEGIN
        IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);
        END IF;
        RETURN current_user::text;
    END $$";

async fn events(c: &Client) -> Vec<(String, Option<String>, Option<String>, Value)> {
    c.query(
        "SELECT event_type, source_table, row_key, payload FROM webhooks.events ORDER BY txid, seq",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[tokio::test]
async fn hostile_table_names_never_become_code() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (role, shop) = owner(&db, &admin, true).await;
    shop.batch_execute(PWN).await.unwrap();
    shop.batch_execute(
        "CREATE TABLE shop.orders (id bigint PRIMARY KEY, total numeric, status text);
         CREATE TABLE shop.notes (id bigint PRIMARY KEY, body text);
         SELECT webhooks.watch('shop.orders', 'order', '{\"status_column\": \"status\"}');",
    )
    .await
    .unwrap();
    admin
        .batch_execute("SELECT webhooks.watch('shop.notes', 'note')")
        .await
        .unwrap();

    // The renames of the audit: a newline that ends a comment, a dollar
    // quote that ends a body; by ALTER INDEX (no ALTER TABLE tag) and by
    // ALTER TABLE (the event trigger regenerates as a superuser).
    let newline = "orders\nDECLARE z text:=shop.pwn();--";
    let dollar = "\nBEGIN END$body$;ALTER ROLE x SUPERUSER;SELECT $body$";
    shop.batch_execute(&format!(
        "ALTER INDEX shop.orders RENAME TO \"{newline}\";
         ALTER TABLE shop.notes RENAME TO \"{dollar}\";
         ALTER TABLE shop.\"{newline}\" ADD COLUMN \"a$$b'c\nd\" text;
         ALTER TABLE shop.\"{newline}\" RENAME COLUMN status TO \"st$body$\nx\";"
    ))
    .await
    .unwrap();
    // The operator's routine deploy, as a superuser, and a full refresh.
    let mut migrator = db.client().await;
    pgwebhooks::db::migrate::run(&mut migrator, true).await.unwrap();
    admin.batch_execute("SELECT webhooks.rewatch()").await.unwrap();
    shop.batch_execute(&format!(
        "INSERT INTO shop.\"{newline}\" (id, total, \"st$body$\nx\") VALUES (1, 10, 'new');
         UPDATE shop.\"{newline}\" SET \"st$body$\nx\" = 'PAID' WHERE id = 1;
         INSERT INTO shop.\"{dollar}\" VALUES (1, 'hello');"
    ))
    .await
    .unwrap();
    admin
        .batch_execute(&format!(
            "INSERT INTO shop.\"{newline}\" (id, total) VALUES (2, 20)"
        ))
        .await
        .unwrap();

    assert!(!is_superuser(&admin, &role).await, "{role} became superuser");
    let ev = events(&admin).await;
    let types: Vec<&str> = ev.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        types,
        ["order.created", "order.paid", "note.created", "order.created"]
    );
    let quoted = |name: &str| format!("shop.\"{name}\"");
    assert_eq!(ev[0].1.as_deref(), Some(quoted(newline).as_str()));
    assert_eq!(ev[2].1.as_deref(), Some(quoted(dollar).as_str()));
    assert_eq!(ev[1].3["st$body$\nx"], "PAID");
    // No function of ours was generated from a name.
    let generated: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'webhooks'::regnamespace
                AND (prosrc LIKE '%shop%' OR proname ~ '^capture_[0-9]')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(generated, 0);
}

#[tokio::test]
async fn a_cast_to_json_runs_with_no_rights() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (role, shop) = owner(&db, &admin, false).await;
    // The audit's C2, plus a try at SET ROLE and at the signing secrets.
    shop.batch_execute(
        "CREATE TYPE shop.item_state AS ENUM ('new', 'sold');
         CREATE TABLE shop.items (id bigint PRIMARY KEY, state shop.item_state NOT NULL DEFAULT 'new');
         CREATE FUNCTION shop.state_json(shop.item_state) RETURNS json LANGUAGE plpgsql AS $$
         DECLARE
             seen text := current_user::text;
         BEGIN
             IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                 EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);
             END IF;
             BEGIN
                 PERFORM 1 FROM webhooks.endpoint_secrets;
                 seen := seen || ' read secrets';
             EXCEPTION WHEN insufficient_privilege THEN
                 seen := seen || ' no secrets';
             END;
             BEGIN
                 EXECUTE 'SET ROLE postgres';
                 seen := seen || ' set role';
             EXCEPTION WHEN OTHERS THEN
                 seen := seen || ' no set role';
             END;
             RETURN to_json(seen);
         END $$;
         CREATE CAST (shop.item_state AS json) WITH FUNCTION shop.state_json(shop.item_state);",
    )
    .await
    .unwrap();
    admin
        .batch_execute("SELECT webhooks.watch('shop.items', 'item')")
        .await
        .unwrap();
    // The owner writes; so does a superuser (its session would let a
    // function SET ROLE to anything); a superuser tries to resend the row,
    // and the owner does.
    shop.batch_execute("INSERT INTO shop.items VALUES (1)")
        .await
        .unwrap();
    admin
        .batch_execute("INSERT INTO shop.items VALUES (2)")
        .await
        .unwrap();
    let err = admin
        .batch_execute("SELECT webhooks.resend('shop.items', '1')")
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501", "{err:?}");
    admin
        .batch_execute(&format!("GRANT webhooks_app TO {role}"))
        .await
        .unwrap();
    shop.batch_execute("SELECT webhooks.resend('shop.items', '1')")
        .await
        .unwrap();
    assert!(!is_superuser(&admin, &role).await, "{role} became superuser");
    let ev = events(&admin).await;
    assert_eq!(ev.len(), 3);
    // The cast is the owner's code: it runs in the owner's session only,
    // never with the superuser's, capture's or the migrate role's rights;
    // the superuser's row is captured as its text, marked.
    assert_eq!(ev[0].3["state"], format!("{role} no secrets no set role"));
    assert_eq!(ev[1].3, serde_json::json!({"row": "(2,new)"}));
    assert_eq!(ev[2].3["state"], format!("{role} no secrets no set role"));
}

#[tokio::test]
async fn roles_without_rights_on_webhooks_keep_their_ddl() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    // A role with no grant at all on schema webhooks.
    let other = format!("{}_other", db.name());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {other} LOGIN; CREATE SCHEMA other_s AUTHORIZATION {other};
             GRANT TEMPORARY ON DATABASE {} TO {other};",
            db.name()
        ))
        .await
        .unwrap();
    let o = db.client_as(&other).await;
    o.batch_execute(
        "CREATE TABLE other_s.t (id int PRIMARY KEY, v text);
         ALTER TABLE other_s.t ADD COLUMN w int;
         ALTER TABLE other_s.t RENAME TO t2;
         DROP TABLE other_s.t2;
         CREATE TEMP TABLE tt (a int);
         ALTER TABLE tt ADD COLUMN b int;
         DROP TABLE tt;",
    )
    .await
    .unwrap();

    // The owner of a watched table, without rights on webhooks either: the
    // table was watched for it by a superuser.
    let (role, shop) = owner(&db, &admin, false).await;
    shop.batch_execute("CREATE TABLE shop.orders (id bigint PRIMARY KEY, total numeric, api_token text)")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT webhooks.watch('shop.orders', 'order', '{\"exclude\": [\"api_token\"]}')")
        .await
        .unwrap();
    // Postgres takes ALTER VIEW … RENAME COLUMN and ALTER INDEX … RENAME on a
    // table too: neither may re-include the excluded column.
    shop.batch_execute(
        "INSERT INTO shop.orders VALUES (1, 10, 'secret-a');
         ALTER TABLE shop.orders ADD COLUMN note text;
         ALTER VIEW shop.orders RENAME COLUMN api_token TO token;
         ALTER INDEX shop.orders RENAME TO purchases;
         ALTER TABLE shop.purchases RENAME COLUMN id TO purchase_id;
         INSERT INTO shop.purchases VALUES (2, 20, 'secret-b', 'n');
         CREATE INDEX ON shop.purchases (total);
         ALTER TABLE shop.purchases DROP COLUMN note;",
    )
    .await
    .unwrap();
    let ev = events(&admin).await;
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1].1.as_deref(), Some("shop.purchases"));
    assert_eq!(ev[1].2.as_deref(), Some("2"), "the renamed key still keys events");
    assert!(!ev[1].3.to_string().contains("secret-"), "{}", ev[1].3);
    shop.batch_execute("DROP TABLE shop.purchases").await.unwrap();
    let watched: i64 = admin
        .query_one("SELECT count(*) FROM webhooks.watched", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(watched, 0, "a dropped table is no longer watched");
    assert!(!is_superuser(&admin, &role).await);
    assert!(!is_superuser(&admin, &other).await);
}

#[tokio::test]
async fn only_a_tables_owner_may_watch_it_and_only_webhooks_app_may_emit() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (_, shop) = owner(&db, &admin, true).await;
    shop.batch_execute(
        "CREATE TABLE shop.orders (id bigint PRIMARY KEY, total numeric);
         GRANT USAGE ON SCHEMA shop TO PUBLIC; GRANT SELECT, INSERT ON shop.orders TO PUBLIC;",
    )
    .await
    .unwrap();
    let intruder = format!("{}_intruder", db.name());
    let plain = format!("{}_plain", db.name());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {intruder} LOGIN IN ROLE webhooks_app; CREATE ROLE {plain} LOGIN;
             CREATE SCHEMA plain_s AUTHORIZATION {plain}; GRANT USAGE ON SCHEMA webhooks TO {plain};"
        ))
        .await
        .unwrap();
    let i = db.client_as(&intruder).await;
    for sql in [
        "SELECT webhooks.watch('shop.orders', 'order')",
        "SELECT webhooks.unwatch('shop.orders')",
    ] {
        let err = i.batch_execute(sql).await.unwrap_err();
        let e = err.as_db_error().unwrap();
        assert_eq!(e.code().code(), "42501", "{sql}: {e}");
        assert!(e.message().contains("only the owner of shop.orders"), "{e}");
    }
    // The owner may; then the intruder's writes are captured like anyone's.
    shop.batch_execute("SELECT webhooks.watch('shop.orders', 'order')")
        .await
        .unwrap();
    i.batch_execute("INSERT INTO shop.orders VALUES (1, 1)")
        .await
        .unwrap();
    let err = i
        .batch_execute("SELECT webhooks.unwatch('shop.orders')")
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");

    // Without webhooks_app: no emit, no attaching capture to one's own table
    // to forge events.
    let p = db.client_as(&plain).await;
    for sql in [
        "SELECT webhooks.emit('payment.success', '{\"forged\": true}', 'tenant-b')",
        "CREATE TABLE plain_s.t (id int PRIMARY KEY);
         CREATE TRIGGER x AFTER INSERT ON plain_s.t FOR EACH STATEMENT EXECUTE FUNCTION webhooks.capture('payment', '{}')",
        "SELECT webhooks.wake()",
        "SELECT webhooks.emit_many('[{\"type\": \"payment.success\", \"data\": {}}]')",
    ] {
        let err = p.batch_execute(sql).await.unwrap_err();
        assert_eq!(
            err.as_db_error().unwrap().code().code(),
            "42501",
            "{sql}: {err}"
        );
    }
    let ev = events(&admin).await;
    assert_eq!(ev.len(), 1);
}

#[tokio::test]
async fn key_changes_and_truncate_are_captured() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE SCHEMA bank;
         CREATE TABLE bank.acct (id int PRIMARY KEY, owner text, balance int);
         CREATE TABLE bank.pairs (a int, b text, v int, PRIMARY KEY (a, b));
         SELECT webhooks.watch('bank.acct', 'acct');
         SELECT webhooks.watch('bank.pairs', 'pair', '{\"names\": {\"truncate\": \"pairs_cleared\"}}');
         INSERT INTO bank.acct VALUES (1, 'alice', 10), (2, 'bob', 20);
         UPDATE bank.acct SET id = 101, balance = 0 WHERE id = 1;
         UPDATE bank.acct SET balance = balance + 1;
         TRUNCATE bank.acct;
         INSERT INTO bank.pairs VALUES (1, 'x', 1);
         UPDATE bank.pairs SET b = 'y';
         TRUNCATE bank.pairs;",
    )
    .await
    .unwrap();
    let ev = events(&c).await;
    // Within one statement the order of rows is the join's: compare sorted.
    let mut got: Vec<(&str, Option<&str>)> = ev.iter().map(|e| (e.0.as_str(), e.2.as_deref())).collect();
    got.sort();
    let mut want = vec![
        ("acct.created", Some("1")),
        ("acct.created", Some("2")),
        ("acct.deleted", Some("1")),
        ("acct.created", Some("101")),
        ("acct.updated", Some("2")),
        ("acct.updated", Some("101")),
        ("acct.truncated", None),
        ("pair.created", Some("[1, \"x\"]")),
        ("pair.deleted", Some("[1, \"x\"]")),
        ("pair.created", Some("[1, \"y\"]")),
        ("pairs_cleared", None),
    ];
    want.sort();
    assert_eq!(got, want);
    // The deleted half carries the old row, the created half the new one.
    let find = |t: &str, k: &str| {
        ev.iter()
            .find(|e| e.0 == t && e.2.as_deref() == Some(k))
            .map(|e| e.3.clone())
            .unwrap()
    };
    assert_eq!(find("acct.deleted", "1")["balance"], 10);
    assert_eq!(find("acct.created", "101")["balance"], 0);
}

/// webhooks.plain_capture() has no SET clause, so it runs with the writer's
/// search_path: a writer that puts a schema of its own first, defining every
/// function, operator and type name capture uses (each one raises), plus
/// temporary tables named like the transition tables, changes nothing
/// capture calls or reads — per statement and per row, with the NOTIFY and
/// the origin check on their paths.
#[tokio::test]
async fn a_hostile_search_path_changes_nothing_capture_calls() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let (role, shop) = owner(&db, &admin, false).await;
    shop.batch_execute(
        "CREATE TABLE shop.orders (id bigint PRIMARY KEY, total numeric, note text);
         CREATE TABLE shop.lines (id bigint PRIMARY KEY, qty int, at date);",
    )
    .await
    .unwrap();
    admin
        .batch_execute(
            "SELECT webhooks.watch('shop.orders', 'order');
             SELECT webhooks.watch('shop.lines', 'line', '{\"per_row\": true}');
             INSERT INTO webhooks.listeners (replica, idle) VALUES ('idle', true);",
        )
        .await
        .unwrap();
    let plain: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid IN ('shop.orders'::regclass, 'shop.lines'::regclass)
                AND tgfoid = 'webhooks.plain_capture()'::regprocedure",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 4, "both tables' inserts and deletes take plain_capture()");

    // Every name plain_capture() and the outbox's defaults use, and more.
    let mut traps = String::from(
        "GRANT USAGE ON SCHEMA shop TO PUBLIC;
         CREATE FUNCTION shop.trap(what text) RETURNS void LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'hijacked: %', what; END $$;",
    );
    for (name, args, ret) in [
        ("to_jsonb", "anyelement", "jsonb"),
        ("to_json", "anyelement", "json"),
        ("row_to_json", "record", "json"),
        ("current_setting", "text, boolean", "text"),
        ("pg_notify", "text, text", "void"),
        ("cardinality", "anyarray", "int"),
        ("quote_ident", "text", "text"),
        ("nextval", "regclass", "bigint"),
        ("pg_current_xact_id", "", "xid8"),
        ("now", "", "timestamptz"),
        ("clock_timestamp", "", "timestamptz"),
        ("gen_random_uuid", "", "uuid"),
        ("uuid_send", "uuid", "bytea"),
        ("int8send", "bigint", "bytea"),
        ("set_bit", "bytea, bigint, int", "bytea"),
        ("encode", "bytea, text", "text"),
        ("date_part", "text, timestamptz", "float8"),
        ("textcat", "text, text", "text"),
        ("texteq", "text, text", "boolean"),
        ("pg_sequence_last_value", "regclass", "bigint"),
    ] {
        traps.push_str(&format!(
            "CREATE FUNCTION shop.{name}({args}) RETURNS {ret} LANGUAGE plpgsql AS
                 $$ BEGIN PERFORM shop.trap('{name}'); END $$;"
        ));
    }
    for (i, (op, left, right, ret)) in [
        ("=", "text", "text", "boolean"),
        ("<>", "text", "text", "boolean"),
        ("=", "name", "text", "boolean"),
        ("->>", "jsonb", "text", "text"),
        ("->", "jsonb", "text", "jsonb"),
        ("||", "text", "text", "text"),
        (">", "integer", "integer", "boolean"),
        (">", "bigint", "integer", "boolean"),
        ("*", "float8", "float8", "float8"),
    ]
    .iter()
    .enumerate()
    {
        traps.push_str(&format!(
            "CREATE FUNCTION shop.op{i}(a {left}, b {right}) RETURNS {ret} LANGUAGE plpgsql AS
                 $$ BEGIN PERFORM shop.trap('operator {op}'); END $$;
             CREATE OPERATOR shop.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = shop.op{i});"
        ));
    }
    for ty in ["text", "jsonb", "bool", "int8", "uuid", "regclass"] {
        traps.push_str(&format!(
            "CREATE DOMAIN shop.{ty} AS pg_catalog.int4 CHECK (VALUE < 0);"
        ));
    }
    shop.batch_execute(&traps).await.unwrap();
    // A fresh session of the writer: capture is compiled under that path.
    let w = db.client_as(&role).await;
    w.batch_execute(
        "SET search_path = shop, pg_catalog, pg_temp;
         CREATE TEMP TABLE new_rows (id bigint, total numeric, note pg_catalog.text);
         CREATE TEMP TABLE old_rows (id bigint, total numeric, note pg_catalog.text);
         INSERT INTO pg_temp.new_rows VALUES (666, 0, 'spoofed');
         INSERT INTO pg_temp.old_rows VALUES (667, 0, 'spoofed');
         SET webhooks.origin = 'inbound/forged';
         INSERT INTO shop.orders VALUES (1, 10, 'one');
         INSERT INTO shop.orders VALUES (2, 20, 'two'), (3, 30, 'three');
         DELETE FROM shop.orders WHERE id = 2;
         INSERT INTO shop.lines VALUES (1, 5, '2026-01-01'), (2, 6, NULL);
         DELETE FROM shop.lines WHERE id = 1;",
    )
    .await
    .unwrap_or_else(|e| panic!("a write under the hostile path failed: {e:?}"));

    assert!(!is_superuser(&admin, &role).await, "{role} became superuser");
    let rows = admin
        .query(
            "SELECT event_type, source_table, row_key, payload, origin IS NULL, event_id::text ~ '^[0-9a-f]{8}-[0-9a-f]{4}-7'
               FROM webhooks.events ORDER BY txid, seq",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String, Value, bool, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    let ev = |t: &str, s: &str, k: &str, p: Value| (t.to_owned(), s.to_owned(), k.to_owned(), p, true, true);
    use serde_json::json;
    assert_eq!(
        got,
        [
            ev(
                "order.created",
                "shop.orders",
                "1",
                json!({"id": 1, "total": 10, "note": "one"})
            ),
            ev(
                "order.created",
                "shop.orders",
                "2",
                json!({"id": 2, "total": 20, "note": "two"})
            ),
            ev(
                "order.created",
                "shop.orders",
                "3",
                json!({"id": 3, "total": 30, "note": "three"})
            ),
            ev(
                "order.deleted",
                "shop.orders",
                "2",
                json!({"id": 2, "total": 20, "note": "two"})
            ),
            ev(
                "line.created",
                "shop.lines",
                "1",
                json!({"id": 1, "qty": 5, "at": "2026-01-01"})
            ),
            ev(
                "line.created",
                "shop.lines",
                "2",
                json!({"id": 2, "qty": 6, "at": null})
            ),
            ev(
                "line.deleted",
                "shop.lines",
                "1",
                json!({"id": 1, "qty": 5, "at": "2026-01-01"})
            ),
        ]
    );
}
