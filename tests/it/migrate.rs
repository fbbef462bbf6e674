//! `migrate`: idempotent, safe concurrently, and in agreement with the
//! readable definitions in sql/schema.sql.

use crate::support::TestDb;
use pgwebhooks::db::migrate;
use tokio_postgres::Client;

#[tokio::test]
async fn migrate_twice_and_concurrently_is_harmless() {
    let db = TestDb::empty().await;
    let (mut a, mut b) = (db.client().await, db.client().await);
    let (ra, rb) = tokio::join!(migrate::run(&mut a, true), migrate::run(&mut b, true));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        ra.applied.len() + rb.applied.len(),
        migrate::embedded_count(),
        "each migration applied exactly once: {ra:?} {rb:?}"
    );
    let again = migrate::run(&mut a, true).await.unwrap();
    assert!(again.applied.is_empty());
    assert!(migrate::is_current(&a).await.unwrap());
    let public: i64 = a
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(public, 0, "nothing of ours in public");
}

/// Everything a schema holds, as comparable text.
async fn catalog(c: &Client, schema: &str) -> Vec<String> {
    c.query(
        "SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
                || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
                || ' ' || c.relkind::text || c.relpersistence::text
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE c.relnamespace = $1::text::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
            AND c.relkind IN ('r', 'p', 'v', 'm') AND c.relname <> 'refinery_schema_history'
         UNION ALL
         SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
          WHERE c.relnamespace = $1::text::regnamespace AND c.relname <> 'refinery_schema_history'
         UNION ALL
         SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
           FROM pg_constraint WHERE connamespace = $1::text::regnamespace
            AND conrelid <> coalesce(to_regclass($1::text || '.refinery_schema_history'), 0)
         UNION ALL
         SELECT 'options ' || c.relname || ' ' || c.reloptions::text FROM pg_class c
          WHERE c.relnamespace = $1::text::regnamespace AND c.reloptions IS NOT NULL
         UNION ALL
         SELECT 'function ' || p.oid::regprocedure || ' ' || md5(p.prosrc) FROM pg_proc p
          WHERE p.pronamespace = $1::text::regnamespace
         UNION ALL
         SELECT 'view ' || c.relname || ' ' || md5(pg_get_viewdef(c.oid)) FROM pg_class c
          WHERE c.relnamespace = $1::text::regnamespace AND c.relkind = 'v'
         ORDER BY 1",
        &[&schema],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.get(0))
    .collect()
}

/// What the migrations add up to, as `pg_dump` writes it: every table,
/// sequence and index of schema `webhooks` (functions, views and triggers
/// are `sql/*.sql`'s), without the dump's version-specific settings.
async fn dump_tables(db: &TestDb, c: &tokio_postgres::Client) -> String {
    let tables: Vec<String> = c
        .query(
            "SELECT 'webhooks.' || relname FROM pg_class
              WHERE relnamespace = 'webhooks'::regnamespace
                AND (relkind IN ('r', 'p')
                     -- sequences of their own (a column's come with its table)
                     OR (relkind = 'S' AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                                        WHERE d.objid = pg_class.oid AND d.deptype IN ('a', 'i'))))
              ORDER BY relname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() > 5, "{tables:?}");
    let pg_dump = pgwebhooks::localpg::find("pg_dump").expect("pg_dump beside the server");
    let out = std::process::Command::new(pg_dump)
        .args(["--schema-only", "--no-owner", "--no-privileges", "--no-comments"])
        .args(tables.iter().flat_map(|t| ["--table", t.as_str()]))
        .arg(db.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut body = String::new();
    for line in text.lines() {
        // Triggers call functions, which are sql/*.sql's, not the migrations'.
        let skip = line.starts_with("--")
            || line.starts_with("CREATE TRIGGER ")
            || line.starts_with("SET ")
            || line.starts_with("SELECT pg_catalog.set_config")
            || line.starts_with("\\");
        if skip || (line.is_empty() && (body.is_empty() || body.ends_with("\n\n"))) {
            continue;
        }
        body.push_str(line);
        body.push('\n');
    }
    format!("{SCHEMA_HEADER}{}\n", body.trim_end())
}

const SCHEMA_HEADER: &str = "\
-- What migrations/ add up to: every table, sequence and index pgwebhooks
-- owns, as pg_dump writes them from a migrated database. Generated: not
-- applied by `pgwebhooks migrate` and never edited by hand. After changing
-- migrations/, rewrite it with
--   PGWEBHOOKS_REWRITE_SCHEMA=1 cargo test --test it sql_schema
-- (the test `sql_schema_is_what_the_migrations_add_up_to` fails until then).
-- Why each table and index is there is said in its migration.
CREATE SCHEMA IF NOT EXISTS webhooks;

";

/// `sql/schema.sql` is generated from a migrated database; with
/// `PGWEBHOOKS_REWRITE_SCHEMA=1` this test writes it instead of comparing.
#[tokio::test]
async fn sql_schema_is_what_the_migrations_add_up_to() {
    let db = TestDb::empty().await;
    let mut c = db.client().await;
    migrate::run(&mut c, false).await.unwrap();
    let dumped = dump_tables(&db, &c).await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/schema.sql");
    if std::env::var_os("PGWEBHOOKS_REWRITE_SCHEMA").is_some() {
        std::fs::write(path, &dumped).unwrap();
        return;
    }
    let file = std::fs::read_to_string(path).unwrap();
    assert!(
        file == dumped,
        "sql/schema.sql is not what migrations/ add up to: rewrite it with \
         PGWEBHOOKS_REWRITE_SCHEMA=1 cargo test --test it sql_schema\n--- migrated:\n{dumped}"
    );
}

#[tokio::test]
async fn migrations_agree_with_sql_schema_definition() {
    let migrated = TestDb::empty().await;
    let mut m = migrated.client().await;
    migrate::run(&mut m, false).await.unwrap();

    let readable = TestDb::empty().await;
    let r = readable.client().await;
    r.batch_execute(include_str!("../../sql/schema.sql"))
        .await
        .unwrap();
    for (file, sql) in migrate::SQL_FILES {
        r.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let (a, b) = (catalog(&m, "webhooks").await, catalog(&r, "webhooks").await);
    let only_migrated: Vec<_> = a.iter().filter(|x| !b.contains(x)).collect();
    let only_readable: Vec<_> = b.iter().filter(|x| !a.contains(x)).collect();
    assert!(
        only_migrated.is_empty() && only_readable.is_empty(),
        "sql/schema.sql and migrations/ disagree.\nonly in migrations: {only_migrated:#?}\nonly in sql/schema.sql: {only_readable:#?}"
    );
    assert!(a.len() > 50, "the catalog query saw the schema: {}", a.len());
}

#[tokio::test]
async fn cli_migrate_with_example_then_again() {
    let db = TestDb::empty().await;
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
            .args(["migrate", "--example"])
            .env("DATABASE_URL", db.url())
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied V1__outbox"));
    let second = run();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("migrations: up to date"));
    let c = db.client().await;
    let app: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'app'::regnamespace AND relkind = 'r'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(app >= 10, "example tables installed: {app}");

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .env_remove("PGWEBHOOKS_CONFIG")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("DATABASE_URL is not set"));
}

/// A database from before V5 (generated per-table capture functions, options
/// in a table) is moved to webhooks.capture() by `migrate`: the generated
/// code is gone, the options kept, and events pending in the outbox stay.
#[tokio::test]
async fn migrate_moves_generated_capture_to_the_capture_function() {
    let db = TestDb::empty().await;
    let mut c = db.client().await;
    migrate::run(&mut c, false).await.unwrap();
    // What a V4 install looked like for one watched table, rebuilt by hand:
    // its options table, a generated SECURITY DEFINER function and trigger.
    c.batch_execute(
        "CREATE SCHEMA shop;
         CREATE TABLE shop.orders (id bigint PRIMARY KEY, total numeric, secret text);
         CREATE TABLE webhooks.watched_v4 (target regclass PRIMARY KEY, entity text NOT NULL,
                                           options jsonb NOT NULL DEFAULT '{}');
         INSERT INTO webhooks.watched_v4 VALUES ('shop.orders', 'order', '{\"exclude\": [\"secret\"]}');",
    )
    .await
    .unwrap();
    let oid: u32 = c
        .query_one("SELECT 'shop.orders'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    c.batch_execute(&format!(
        "CREATE FUNCTION webhooks.capture_{oid}_insert() RETURNS trigger LANGUAGE plpgsql
             SECURITY DEFINER AS $f$ BEGIN
               INSERT INTO webhooks.events (event_type, payload) VALUES ('legacy', '{{}}');
               RETURN NULL; END $f$;
         CREATE TRIGGER webhooks_capture_insert AFTER INSERT ON shop.orders
             FOR EACH STATEMENT EXECUTE FUNCTION webhooks.capture_{oid}_insert();
         INSERT INTO shop.orders VALUES (1, 10, 's1');"
    ))
    .await
    .unwrap();

    migrate::run(&mut c, false).await.unwrap();
    c.batch_execute("INSERT INTO shop.orders VALUES (2, 20, 's2')")
        .await
        .unwrap();
    let events: Vec<(String, Option<serde_json::Value>)> = c
        .query(
            "SELECT event_type, payload FROM webhooks.events ORDER BY txid, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].0, "legacy", "the pending event is kept");
    assert_eq!(events[1].0, "order.created");
    assert!(events[1].1.as_ref().unwrap().get("secret").is_none());
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'webhooks'::regnamespace
                AND proname ~ '^capture_[0-9]+_' ",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "generated functions dropped");
    assert!(c
        .query_opt(
            "SELECT 1 FROM pg_class WHERE oid = to_regclass('webhooks.watched_v4')",
            &[]
        )
        .await
        .unwrap()
        .is_none());
    let watched: String = c
        .query_one("SELECT options::text FROM webhooks.watched", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(watched, r#"{"exclude": ["secret"]}"#);
}

/// V7 on a database where endpoints were deleted before it: the orphan
/// deliveries and attempts go first, then the foreign keys can be added.
#[tokio::test]
async fn v7_removes_orphans_then_adds_the_foreign_keys() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // As before V7 (and V13, which replaced the attempts' foreign key).
    c.batch_execute(
        "ALTER TABLE webhooks.attempts DROP CONSTRAINT attempts_endpoint_id_fkey;
         ALTER TABLE webhooks.attempts ALTER COLUMN endpoint_id DROP NOT NULL;
         ALTER TABLE webhooks.deliveries DROP CONSTRAINT deliveries_endpoint_id_fkey;
         INSERT INTO webhooks.endpoints (id, url) VALUES (1, 'http://127.0.0.1:9/');
         SELECT webhooks.emit('x', '{}');
         INSERT INTO webhooks.deliveries (id, event_id, endpoint_id, status)
              SELECT 10, event_id, 1, 'delivered' FROM webhooks.events
              UNION ALL SELECT 11, event_id, 2, 'dead' FROM webhooks.events;
         INSERT INTO webhooks.attempts (delivery_id, attempt, started_at, duration_ms)
              VALUES (10, 1, now(), 1), (11, 1, now(), 1), (12, 1, now(), 1);",
    )
    .await
    .unwrap();
    c.batch_execute(include_str!("../../migrations/V7__delivery_hardening.sql"))
        .await
        .unwrap();
    let left: Vec<(String, i64)> = c
        .query(
            "SELECT 'delivery', id FROM webhooks.deliveries UNION ALL SELECT 'attempt', delivery_id FROM webhooks.attempts
              ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(left, [("attempt".to_owned(), 10), ("delivery".to_owned(), 10)]);
    let orphan = c
        .execute(
            "INSERT INTO webhooks.deliveries (event_id, endpoint_id, status) SELECT event_id, 2, 'pending' FROM webhooks.events",
            &[],
        )
        .await;
    assert_eq!(
        orphan.unwrap_err().code(),
        Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
    );
    // Then V13, as an old installation upgrading goes on to.
    c.batch_execute(include_str!(
        "../../migrations/V13__attempts_follow_their_endpoint.sql"
    ))
    .await
    .unwrap();
    let kept: Vec<(i64, i64)> = c
        .query("SELECT delivery_id, endpoint_id FROM webhooks.attempts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(kept, [(10, 1)], "the attempt takes its delivery's endpoint");
}

/// V13 on attempts written before attempts.endpoint_id existed: each gets
/// its delivery's endpoint, and deleting an endpoint still deletes its
/// deliveries and their attempts (now through attempts.endpoint_id); an
/// attempt naming no endpoint, or one that does not exist, is refused.
#[tokio::test]
async fn v13_attempts_follow_their_endpoint() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "ALTER TABLE webhooks.attempts DROP CONSTRAINT attempts_endpoint_id_fkey;
         ALTER TABLE webhooks.attempts ALTER COLUMN endpoint_id DROP NOT NULL;
         ALTER TABLE webhooks.attempts ADD CONSTRAINT attempts_delivery_id_fkey FOREIGN KEY (delivery_id)
             REFERENCES webhooks.deliveries (id) ON DELETE CASCADE;
         INSERT INTO webhooks.endpoints (id, url) VALUES (1, 'http://127.0.0.1:9/'), (2, 'http://127.0.0.1:10/');
         SELECT webhooks.emit('x', '{}');
         INSERT INTO webhooks.deliveries (id, event_id, endpoint_id, status)
              SELECT 10, event_id, 1, 'delivered' FROM webhooks.events
              UNION ALL SELECT 11, event_id, 2, 'dead' FROM webhooks.events;
         INSERT INTO webhooks.attempts (delivery_id, attempt, started_at, duration_ms, endpoint_id)
              VALUES (10, 1, now(), 1, NULL), (11, 1, now(), 1, NULL), (11, 2, now(), 1, 2);",
    )
    .await
    .unwrap();
    c.batch_execute(include_str!(
        "../../migrations/V13__attempts_follow_their_endpoint.sql"
    ))
    .await
    .unwrap();
    let rows = |sql: &'static str| {
        let c = &c;
        async move {
            c.query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
                .collect::<Vec<_>>()
        }
    };
    let q = "SELECT delivery_id, endpoint_id FROM webhooks.attempts ORDER BY delivery_id, attempt";
    assert_eq!(rows(q).await, [(10, 1), (11, 2), (11, 2)]);
    c.execute("DELETE FROM webhooks.endpoints WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(rows(q).await, [(10, 1)]);
    assert_eq!(
        rows("SELECT id, endpoint_id FROM webhooks.deliveries").await,
        [(10, 1)]
    );
    for bad in ["NULL", "3"] {
        let e = c
            .execute(
                &format!(
                    "INSERT INTO webhooks.attempts (delivery_id, attempt, started_at, duration_ms, endpoint_id)
                     VALUES (10, 2, now(), 1, {bad})"
                ),
                &[],
            )
            .await
            .unwrap_err();
        let want = if bad == "NULL" {
            tokio_postgres::error::SqlState::NOT_NULL_VIOLATION
        } else {
            tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION
        };
        assert_eq!(e.code(), Some(&want), "endpoint_id {bad}: {e}");
    }
}

/// V10 on an outbox with work pending: events written before it (random
/// ids, a watched table still on webhooks.capture()), two of them in a
/// batch leased by a replica that died, two not yet fanned out. After the
/// upgrade every one is delivered exactly once under the webhook-id it was
/// written with, new events get time-ordered ids, and the table moves to
/// webhooks.plain_capture().
#[tokio::test]
async fn v10_delivers_events_pending_across_it_with_their_ids() {
    use crate::support::{receiver::Receiver, sidecar, wait};
    use std::time::Duration;

    let db = TestDb::new().await;
    let mut c = db.client().await;
    // As before V10: random ids, and capture() for the table's inserts.
    c.batch_execute(
        "ALTER TABLE webhooks.events ALTER COLUMN event_id SET DEFAULT gen_random_uuid();
         CREATE SCHEMA shop;
         CREATE TABLE shop.orders (id bigint PRIMARY KEY, total numeric);
         SELECT webhooks.watch('shop.orders', 'order');
         DO $$
         DECLARE
             a text;
         BEGIN
             SELECT string_agg(quote_literal(x), ', ' ORDER BY o) INTO a
               FROM pg_trigger t, unnest(webhooks.trigger_args(t.tgargs)) WITH ORDINALITY u(x, o)
              WHERE t.tgrelid = 'shop.orders'::regclass AND t.tgname = 'webhooks_capture_insert';
             DROP TRIGGER webhooks_capture_insert ON shop.orders;
             EXECUTE format('CREATE TRIGGER webhooks_capture_insert AFTER INSERT ON shop.orders
                             REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
                             EXECUTE FUNCTION webhooks.capture(%s)', a);
         END
         $$;
         SELECT webhooks.emit('old.one', '{\"n\": 1}');",
    )
    .await
    .unwrap();
    // Each its own transaction: a batch claims only committed events.
    c.batch_execute("INSERT INTO shop.orders VALUES (1, 10)")
        .await
        .unwrap();
    // (Claimable once no older transaction of the cluster is still running.)
    wait::until("a batch leased", Duration::from_secs(30), || {
        let c = &c;
        async move {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM webhooks.batch_claim('replica-that-died', 2, '0 seconds')",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (n > 0).then_some(())
        }
    })
    .await;
    c.batch_execute("SELECT webhooks.emit('old.three', '{\"n\": 3}')")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO shop.orders VALUES (2, 20)")
        .await
        .unwrap();
    let before: Vec<(String, String)> = c
        .query(
            "SELECT event_id::text, event_type FROM webhooks.events ORDER BY txid, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(before.len(), 4);
    assert!(
        before.iter().all(|(id, _)| id.as_bytes()[14] == b'4'),
        "random ids: {before:?}"
    );
    let leased: i64 = c
        .query_one("SELECT count(*) FROM webhooks.fanout_batches", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(leased, 1);

    c.batch_execute(include_str!("../../migrations/V10__time_ordered_event_ids.sql"))
        .await
        .unwrap();
    migrate::run(&mut c, false).await.unwrap();
    let function: String = c
        .query_one(
            "SELECT tgfoid::regproc::text FROM pg_trigger
              WHERE tgrelid = 'shop.orders'::regclass AND tgname = 'webhooks_capture_insert'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(function, "webhooks.plain_capture");
    c.batch_execute(
        "SELECT webhooks.emit('new.five', '{\"n\": 5}');
         INSERT INTO shop.orders VALUES (3, 30);",
    )
    .await
    .unwrap();
    let all: Vec<(String, String)> = c
        .query(
            "SELECT event_id::text, event_type FROM webhooks.events ORDER BY txid, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(all[..4], before[..], "the old events and their ids are untouched");
    assert_eq!(all.len(), 6);
    assert!(
        all[4..].iter().all(|(id, _)| id.as_bytes()[14] == b'7'),
        "time-ordered ids: {all:?}"
    );

    let mut receiver = Receiver::ok().await;
    let endpoint = sidecar::endpoint(&c, &receiver.url, &["*"], "").await;
    let running = sidecar::start(sidecar::config(&db)).await;
    let got = receiver.take(6, Duration::from_secs(30)).await;
    let mut ids: Vec<String> = got.iter().map(|r| r.webhook_id()).collect();
    ids.sort();
    let mut want: Vec<String> = all.iter().map(|(id, _)| id.clone()).collect();
    want.sort();
    assert_eq!(ids, want, "each event delivered under the id it was written with");
    let statuses = wait::until("every delivery recorded", Duration::from_secs(10), || {
        let c = &c;
        async move {
            let s = sidecar::statuses(c, endpoint).await;
            (s == [("delivered".to_owned(), 6)]).then_some(s)
        }
    })
    .await;
    assert_eq!(statuses, [("delivered".to_owned(), 6)]);
    running.stop().await;
    assert_eq!(receiver.drain().len(), 0, "nothing delivered twice");
}

/// Issue #25: migrating with the app's own role (no superuser, no
/// CREATEROLE) on a cluster where pgwebhooks never ran. The first refusal
/// lists every grant at once and changes nothing; once a superuser ran
/// them, migrate succeeds and says that the DDL event trigger was skipped
/// and what that means; after one superuser run it is there and nothing is
/// said.
#[tokio::test]
async fn a_non_superuser_migrate_lists_every_missing_right_at_once() {
    // A cluster of its own: the shared one already has pgwebhooks' roles.
    let pg = std::thread::spawn(|| pgwebhooks::localpg::LocalPg::start("pgwebhooks-roles", &["fsync=off"]))
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
    let superuser = crate::support::db::connect_to(&pg.config("postgres")).await;
    for sql in [
        "CREATE ROLE tracker LOGIN",
        "CREATE DATABASE tracker OWNER tracker",
    ] {
        superuser.batch_execute(sql).await.unwrap();
    }
    let migrate_as = |user: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
            .arg("migrate")
            .env(
                "DATABASE_URL",
                format!("postgres://{user}@127.0.0.1:{}/tracker", pg.port),
            )
            .env_remove("PGWEBHOOKS_CONFIG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let in_tracker = crate::support::db::connect_to(&pg.config("tracker")).await;

    let (ok, _, err) = migrate_as("tracker");
    assert!(!ok, "{err}");
    let statements: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split_once("  -- "))
        .map(|(sql, _)| sql.trim())
        .collect();
    assert_eq!(
        statements,
        [
            "CREATE ROLE webhooks_capture NOLOGIN;",
            "CREATE ROLE webhooks_app NOLOGIN;",
            "CREATE ROLE webhooks_sidecar NOLOGIN;",
            "GRANT webhooks_capture TO tracker;",
        ],
        "{err}"
    );
    assert!(
        err.contains("nothing was changed")
            && err.contains("DDL event trigger")
            && err.contains("webhooks.rewatch()"),
        "{err}"
    );
    let schema: bool = in_tracker
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'webhooks')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!schema, "a refused migrate changes nothing");

    // The list, run as given, is all it takes: one round.
    for sql in &statements {
        superuser.batch_execute(sql).await.unwrap();
    }
    let (ok, out, err) = migrate_as("tracker");
    assert!(ok, "{out}\n{err}");
    assert!(
        err.contains("warning: the DDL event trigger was skipped (creating it needs a superuser")
            && err.contains("schema drift is not detected automatically")
            && err.contains("SELECT webhooks.rewatch()")
            && err.contains("once as a superuser"),
        "{err}"
    );
    let triggers = || async {
        let n: i64 = in_tracker
            .query_one(
                "SELECT count(*) FROM pg_event_trigger WHERE evtname = 'webhooks_ddl'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    assert_eq!(triggers().await, 0);

    // Once as a superuser: the trigger is there, and the app role's next
    // runs keep it and say nothing about it.
    let (ok, out, err) = migrate_as("postgres");
    assert!(ok && !err.contains("DDL event trigger"), "{out}\n{err}");
    assert_eq!(triggers().await, 1);
    let (ok, out, err) = migrate_as("tracker");
    assert!(ok && !err.contains("DDL event trigger"), "{out}\n{err}");
    assert_eq!(triggers().await, 1);
}
