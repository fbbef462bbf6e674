//! Inbound callbacks over real HTTP: authentication, every error status,
//! idempotency under duplicates and concurrency, and no echo back to Make.

use std::time::{Duration, SystemTime};

use pgwebhooks::sign::SigningKey;
use serde_json::{json, Value};

use crate::support::sidecar::{self, endpoint, INBOUND_SECRET};
use crate::support::{wait, Receiver, TestDb};

/// A route whose handler stores notes and rejects a note without text.
pub(crate) async fn notes_route(c: &tokio_postgres::Client) {
    c.batch_execute(
        "CREATE SCHEMA notes;
         CREATE TABLE notes.notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, text text NOT NULL, n int);
         SELECT webhooks.watch('notes.notes', 'note');
         CREATE FUNCTION notes.add(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
         DECLARE new_id bigint;
         BEGIN
             IF p->>'text' IS NULL THEN
                 RAISE EXCEPTION 'text is required' USING ERRCODE = 'WH422';
             END IF;
             IF p->>'text' = 'boom' THEN
                 RAISE EXCEPTION 'secret internal detail' USING ERRCODE = 'XX000';
             END IF;
             INSERT INTO notes.notes (text, n) VALUES (p->>'text', (p->>'n')::int) RETURNING id INTO new_id;
             RETURN jsonb_build_object('message', 'note stored', 'noteId', new_id);
         END $$;
         SELECT webhooks.inbound_route_set('notes', 'notes.add');",
    )
    .await
    .unwrap();
}

async fn notes(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM notes.notes", &[])
        .await
        .unwrap()
        .get(0)
}

fn http() -> reqwest::Client {
    pgwebhooks::deliver::http::install_crypto_provider();
    reqwest::Client::new()
}

async fn post(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn authentication_every_carrier_and_nothing_applied_without_it() {
    let db = TestDb::new().await;
    let c = db.client().await;
    notes_route(&c).await;
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let url = format!("{}/inbound/notes", s.base);
    let h = http();
    let body = |t: &str| json!({"text": t});

    let (st, b) = post(
        h.post(&url)
            .header("x-webhook-secret", INBOUND_SECRET)
            .json(&body("a")),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["success"], true);
    assert_eq!(b["message"], "note stored");
    assert!(b["timestamp"].is_string());
    assert_eq!(
        post(
            h.post(&url)
                .header("x-make-apikey", INBOUND_SECRET)
                .json(&body("b"))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(h.post(&url).bearer_auth(INBOUND_SECRET).json(&body("c")))
            .await
            .0,
        200
    );
    assert_eq!(
        post(h.post(format!("{url}?secret={INBOUND_SECRET}")).json(&body("d")))
            .await
            .0,
        200
    );
    // A Standard Webhooks signature made with the secret.
    let raw = serde_json::to_vec(&body("e")).unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let key = SigningKey::parse(INBOUND_SECRET).unwrap();
    let signed = |ts: i64, id: &str| {
        h.post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", key.sign(id, ts, &raw))
            .body(raw.clone())
    };
    assert_eq!(post(signed(now, "msg_1")).await.0, 200);
    assert_eq!(notes(&c).await, 5);

    // Wrong by one character, missing, replayed with an old timestamp: 401.
    let wrong = format!("{}X", &INBOUND_SECRET[..INBOUND_SECRET.len() - 1]);
    let (st, b) = post(h.post(&url).header("x-webhook-secret", &wrong).json(&body("f"))).await;
    assert_eq!((st, b["success"].clone()), (401, json!(false)));
    assert_eq!(post(h.post(&url).json(&body("g"))).await.0, 401);
    assert_eq!(
        post(h.post(format!("{url}?secret={wrong}")).json(&body("h")))
            .await
            .0,
        401
    );
    assert_eq!(post(signed(now - 3600, "msg_2")).await.0, 401);
    assert_eq!(notes(&c).await, 5, "nothing applied without the secret");
    s.stop().await;
}

#[tokio::test]
async fn every_error_status_and_no_internals_leak() {
    let db = TestDb::new().await;
    let c = db.client().await;
    notes_route(&c).await;
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let url = format!("{}/inbound/notes", s.base);
    let h = http();
    let auth = |r: reqwest::RequestBuilder| r.header("x-webhook-secret", INBOUND_SECRET);

    let (st, b) = post(
        auth(h.post(&url))
            .header("content-type", "application/json")
            .body("{\"text\": "),
    )
    .await;
    assert_eq!(st, 400);
    assert!(b["error"].as_str().unwrap().contains("malformed JSON"));
    assert_eq!(post(auth(h.post(&url)).body("[1, 2]")).await.0, 400);
    assert_eq!(
        post(auth(h.post(&url)).body("{\"text\": \"nul \\u0000 inside\"}"))
            .await
            .0,
        400
    );
    assert_eq!(
        post(auth(h.post(format!("{}/inbound/nope", s.base))).json(&json!({})))
            .await
            .0,
        404
    );
    assert_eq!(
        post(auth(h.post(format!("{}/api/webhooks/make/payments-typo", s.base))).json(&json!({})))
            .await
            .0,
        404
    );
    let big = json!({"text": "x".repeat(70 * 1024)});
    assert_eq!(post(auth(h.post(&url)).json(&big)).await.0, 413);
    let (st, b) = post(auth(h.post(&url)).json(&json!({"n": 1}))).await;
    assert_eq!((st, b["error"].as_str()), (422, Some("text is required")));
    let (st, b) = post(auth(h.post(&url)).json(&json!({"text": "x", "n": "not a number"}))).await;
    assert_eq!(st, 422, "a data error in the handler is the caller's: {b}");
    let (st, b) = post(auth(h.post(&url)).json(&json!({"text": "boom"}))).await;
    assert_eq!(st, 500);
    assert!(
        !b.to_string().contains("secret internal detail"),
        "no internals in a 500: {b}"
    );
    assert!(
        b["inboundId"].is_i64(),
        "a 500 names the record the DBA can read: {b}"
    );
    assert_eq!(notes(&c).await, 0, "nothing partly applied");
    let rejected: i64 = c
        .query_one(
            "SELECT count(*) FROM webhooks.inbound WHERE status = 'rejected'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rejected, 3, "rejections and failures are recorded for the DBA");

    let health = h.get(format!("{}/healthz", s.base)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    wait::until("readyz", Duration::from_secs(10), || async {
        let r = h.get(format!("{}/readyz", s.base)).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let doc: Value = h
        .get(format!("{}/openapi.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(pgwebhooks::inbound::OPENAPI).unwrap()
    );
    for r in pgwebhooks::inbound::MAKE_ROUTES {
        assert!(
            doc["paths"][format!("/api/webhooks/make/{r}")].is_object(),
            "{r} documented"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn duplicates_sequential_and_concurrent_are_applied_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    notes_route(&c).await;
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let url = format!("{}/inbound/notes", s.base);
    let h = http();
    let send = |key: Option<&'static str>, text: &'static str| {
        let mut r = h
            .post(&url)
            .header("x-webhook-secret", INBOUND_SECRET)
            .json(&json!({"text": text}));
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        post(r)
    };
    let (st1, first) = send(None, "same body").await;
    let (st2, second) = send(None, "same body").await;
    assert_eq!((st1, st2), (200, 200));
    assert_eq!(second["noteId"], first["noteId"], "the first result, again");
    assert_eq!(second["duplicate"], true);
    assert_eq!(notes(&c).await, 1);

    // Twenty at once with one idempotency key: applied once, 200 for all.
    let all = futures_join(20, || send(Some("key-1"), "concurrent")).await;
    assert!(all.iter().all(|(st, _)| *st == 200), "{all:?}");
    let ids: std::collections::HashSet<String> = all.iter().map(|(_, b)| b["noteId"].to_string()).collect();
    assert_eq!(ids.len(), 1, "every answer carries the one result");
    assert_eq!(notes(&c).await, 2);

    // Injection-shaped strings are data, never SQL.
    let evil = "'); DROP TABLE notes.notes; --";
    let (st, _) = post(
        h.post(&url)
            .header("x-webhook-secret", INBOUND_SECRET)
            .json(&json!({"text": evil})),
    )
    .await;
    assert_eq!(st, 200);
    let stored: String = c
        .query_one("SELECT text FROM notes.notes ORDER BY id DESC LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, evil);
    s.stop().await;
}

async fn futures_join<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|_| tokio::spawn(f())).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn writes_made_by_a_callback_are_not_echoed_to_make() {
    let db = TestDb::new().await;
    let c = db.client().await;
    notes_route(&c).await;
    let mut make = Receiver::ok().await;
    let mut audit = Receiver::ok().await;
    endpoint(&c, &make.url, &["note.*"], "ignore_origins = '{inbound/*}'").await;
    endpoint(&c, &audit.url, &["note.*"], "").await;
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let h = http();
    let (st, _) = post(
        h.post(format!("{}/inbound/notes", s.base))
            .header("x-webhook-secret", INBOUND_SECRET)
            .json(&json!({"text": "from make"})),
    )
    .await;
    assert_eq!(st, 200);
    c.execute("INSERT INTO notes.notes (text) VALUES ('from the app')", &[])
        .await
        .unwrap();
    let got = audit.take(2, Duration::from_secs(20)).await;
    assert_eq!(got[0].json()["data"]["text"], "from make");
    let from_make = make.next(Duration::from_secs(20)).await;
    assert_eq!(
        from_make.json()["data"]["text"],
        "from the app",
        "the callback's own write was not echoed"
    );
    let origins: Vec<Option<String>> = c
        .query("SELECT origin FROM webhooks.events ORDER BY txid, seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(origins, [Some("inbound/notes".to_owned()), None]);
    s.stop().await;
    assert!(make.drain().is_empty());
}

#[tokio::test]
#[cfg_attr(
    not(have_schemathesis),
    ignore = "needs schemathesis (pip install schemathesis, then touch build.rs); .ci/run installs it"
)]
async fn schemathesis_finds_no_server_error_or_schema_violation() {
    let db = TestDb::new().await;
    let c = db.client().await;
    notes_route(&c).await;
    // Reference data the example app's handlers can use.
    c.batch_execute(
        "INSERT INTO app.users (email, name) VALUES ('ada@example.com', 'Ada');
         INSERT INTO app.courses (title, access_days) VALUES ('Rust 101', 365);",
    )
    .await
    .unwrap();
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let out = tokio::process::Command::new("schemathesis")
        .args(["run", &format!("{}/openapi.json", s.base), "--checks"])
        .arg("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth")
        .args(["--header", &format!("x-webhook-secret: {INBOUND_SECRET}")])
        .args(["--max-examples", "25", "--seed", "7", "--request-timeout", "10", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    s.stop().await;
    // It ran every operation of the document (not zero by a wrong URL).
    assert!(report.contains("Tested: 10"), "unexpected report:\n{report}");
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Hardening (security audit H2, L1, L2, L3, L6, L9, M3, M5, I7; issue #14)
// ---------------------------------------------------------------------------

/// [`config_with_inbound`](sidecar::config_with_inbound) with another global secret.
fn with_secret(db: &TestDb, secret: Option<&str>) -> pgwebhooks::sidecar::SidecarConfig {
    let mut config = sidecar::config_with_inbound(db);
    config.inbound.as_mut().unwrap().secret = secret.map(pgwebhooks::config::Secret::new);
    config
}

#[tokio::test]
async fn empty_secret_and_empty_credentials_let_nobody_in() {
    let db = TestDb::new().await;
    let c = db.client().await;
    notes_route(&c).await;
    // What `PGWEBHOOKS_INBOUND_SECRET=` used to configure.
    let s = sidecar::start(with_secret(&db, Some(""))).await;
    let url = format!("{}/inbound/notes", s.base);
    let h = http();
    let body = json!({"text": "injected by anyone"});
    for (what, req) in [
        ("?secret=", h.post(format!("{url}?secret="))),
        ("empty header", h.post(&url).header("x-webhook-secret", "")),
        ("empty apikey", h.post(&url).header("x-make-apikey", " ")),
        ("Bearer ", h.post(&url).header("authorization", "Bearer ")),
    ] {
        let (st, b) = post(req.json(&body)).await;
        assert_eq!(st, 401, "{what}: {b}");
    }
    assert_eq!(notes(&c).await, 0, "nothing applied");
    s.stop().await;

    // The process treats an empty secret as unset, and refuses a short one.
    let out = sidecar::run_command(&db.url())
        .env("PGWEBHOOKS_LISTEN", "127.0.0.1:0")
        .env("PGWEBHOOKS_ADMIN_LISTEN", "127.0.0.1:0")
        .env("PGWEBHOOKS_INBOUND_SECRET", "s3cret")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("PGWEBHOOKS_INBOUND_SECRET") && stderr.contains("at least 16"),
        "{stderr}"
    );
}

#[tokio::test]
async fn route_secrets_must_be_16_printable_characters_and_v6_disables_weak_ones() {
    let db = TestDb::new().await;
    let c = db.client().await;
    notes_route(&c).await;
    for weak in ["", "   ", "short", "fifteen-chars-x", "sixteen chars xx"] {
        let e = c
            .execute(
                "SELECT webhooks.inbound_route_set('notes', 'notes.add', '{}', $1)",
                &[&weak],
            )
            .await
            .unwrap_err();
        let msg = e.as_db_error().unwrap().message().to_owned();
        assert!(
            msg.contains("at least 16 printable characters"),
            "{weak:?}: {msg}"
        );
        let e = c
            .execute("UPDATE webhooks.inbound_routes SET secret = $1", &[&weak])
            .await
            .unwrap_err();
        assert_eq!(
            e.as_db_error().unwrap().constraint(),
            Some("inbound_routes_secret_check")
        );
    }
    c.execute(
        "SELECT webhooks.inbound_route_set('notes', 'notes.add', '{}', 'route-secret-0123456789')",
        &[],
    )
    .await
    .unwrap();

    // V6 on a database that holds a weak route secret: the route is
    // disabled (not switched to the global secret), and the constraint holds.
    let old = TestDb::empty().await;
    let o = old.client().await;
    o.batch_execute(include_str!("../../migrations/V1__outbox.sql"))
        .await
        .unwrap();
    o.batch_execute(include_str!("../../migrations/V2__inbound.sql"))
        .await
        .unwrap();
    o.batch_execute(
        "INSERT INTO webhooks.inbound_routes (route, handler, secret) VALUES
             ('weak', 'pg_catalog.now', ''), ('good', 'pg_catalog.now', 'good-secret-0123456789'),
             ('global', 'pg_catalog.now', NULL)",
    )
    .await
    .unwrap();
    o.batch_execute(include_str!("../../migrations/V6__inbound_hardening.sql"))
        .await
        .unwrap();
    let rows: Vec<(String, bool, Option<String>)> = o
        .query(
            "SELECT route, enabled, secret FROM webhooks.inbound_routes ORDER BY route",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        [
            ("global".to_owned(), true, None),
            ("good".to_owned(), true, Some("good-secret-0123456789".to_owned())),
            ("weak".to_owned(), false, None),
        ]
    );
}

#[tokio::test]
async fn signed_callbacks_need_a_webhook_id_and_ignore_the_idempotency_key() {
    let db = TestDb::new().await;
    let c = db.client().await;
    notes_route(&c).await;
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let url = format!("{}/inbound/notes", s.base);
    let h = http();
    let raw = serde_json::to_vec(&json!({"text": "signed once"})).unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let key = SigningKey::parse(INBOUND_SECRET).unwrap();
    let signed = |id: &str, replay: &str| {
        h.post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", key.sign(id, now, &raw))
            .header("idempotency-key", replay)
            .body(raw.clone())
    };
    // Signed with an empty id, replayed under fresh Idempotency-Keys.
    for replay in ["replay-1", "replay-2", "replay-3"] {
        let (st, b) = post(signed("", replay)).await;
        assert_eq!(st, 401, "{b}");
        assert!(b["error"].as_str().unwrap().contains("webhook-id"), "{b}");
    }
    assert_eq!(notes(&c).await, 0);
    // Signed with an id: the unsigned Idempotency-Key changes nothing.
    let (st, first) = post(signed("msg_once", "replay-1")).await;
    assert_eq!(st, 200, "{first}");
    let (st, again) = post(signed("msg_once", "replay-2")).await;
    assert_eq!((st, &again["duplicate"]), (200, &json!(true)), "{again}");
    assert_eq!(again["noteId"], first["noteId"]);
    assert_eq!(notes(&c).await, 1, "applied once");
    s.stop().await;
}

#[tokio::test]
async fn unauthenticated_requests_cost_no_database_work_and_unknown_routes_answer_401() {
    let db = TestDb::new().await;
    let c = db.client().await;
    notes_route(&c).await;
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let h = http();
    for i in 0..300 {
        let route = if i % 2 == 0 { "notes" } else { "nosuchroute" };
        let (st, b) = post(
            h.post(format!("{}/inbound/{route}", s.base))
                .json(&json!({"text": "x"})),
        )
        .await;
        assert_eq!(st, 401, "{route}: {b}");
    }
    let (st, _) = post(
        h.post(format!("{}/inbound/nosuchroute", s.base))
            .header("x-webhook-secret", "not-the-secret-at-all")
            .json(&json!({})),
    )
    .await;
    assert_eq!(st, 401, "a wrong secret learns nothing either");
    // The global secret's holder may learn that a route does not exist.
    let (st, _) = post(
        h.post(format!("{}/inbound/nosuchroute", s.base))
            .header("x-webhook-secret", INBOUND_SECRET)
            .json(&json!({})),
    )
    .await;
    assert_eq!(st, 404);
    s.stop().await;
    // Backends write their table statistics when they exit.
    wait::until("the sidecar's connections closed", Duration::from_secs(20), || async {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
    c.batch_execute("SELECT pg_stat_clear_snapshot()").await.unwrap();
    let scans: i64 = c
        .query_one(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables
              WHERE relid = 'webhooks.inbound_routes'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        scans < 30,
        "301 unauthenticated requests read the routes {scans} times"
    );
}

#[tokio::test]
async fn clients_that_pipeline_and_never_read_cannot_hold_every_slot() {
    let db = TestDb::new().await;
    let mut config = sidecar::config_with_inbound(&db);
    let inbound = config.inbound.as_mut().unwrap();
    inbound.max_connections = 4;
    inbound.read_timeout = Duration::from_secs(2);
    let s = sidecar::start(config).await;
    let addr: std::net::SocketAddr = s.base.trim_start_matches("http://").parse().unwrap();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(2048).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        stalled.push(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let one = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n";
            let many: Vec<u8> = one.iter().copied().cycle().take(one.len() * 500).collect();
            let _ = stream.write_all(&many).await;
            // Never read; hold the socket until the test ends.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(stream);
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let h = reqwest::Client::builder()
        .timeout(Duration::from_secs(8))
        .build()
        .unwrap();
    let health = h.get(format!("{}/healthz", s.base)).send().await;
    assert!(
        health.as_ref().is_ok_and(|r| r.status() == 200),
        "healthz while 4 clients never read: {health:?} after {:?}",
        started.elapsed()
    );
    for t in stalled {
        t.abort();
    }
    s.stop().await;
}

#[tokio::test]
async fn handlers_must_be_jsonb_to_jsonb_and_the_apps_own() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE FUNCTION public.two(p jsonb, extra int DEFAULT 1) RETURNS jsonb LANGUAGE sql AS 'SELECT p';
         CREATE FUNCTION public.texty(p text) RETURNS text LANGUAGE sql AS 'SELECT p';
         CREATE FUNCTION public.fine(p jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT p';",
    )
    .await
    .unwrap();
    for (handler, expect) in [
        ("public.two", "must be a function (payload jsonb) RETURNS jsonb"),
        ("public.texty", "must be a function (payload jsonb) RETURNS jsonb"),
        ("pg_catalog.jsonb_strip_nulls", "is in schema pg_catalog"),
        ("webhooks.config_changed", "is in schema webhooks"),
    ] {
        let e = c
            .execute(
                "SELECT webhooks.inbound_route_set('leak', $1::text::regproc)",
                &[&handler],
            )
            .await
            .unwrap_err();
        let msg = e.as_db_error().unwrap().message().to_owned();
        assert!(msg.contains(expect), "{handler}: {msg}");
    }
    c.execute("SELECT webhooks.inbound_route_set('fine', 'public.fine')", &[])
        .await
        .unwrap();
}

/// A route whose handler sleeps for `p.sleep` seconds.
async fn sleepy_route(c: &tokio_postgres::Client) {
    c.batch_execute(
        "CREATE SCHEMA sleepy;
         CREATE FUNCTION sleepy.nap(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep((p->>'sleep')::float8); RETURN '{}'; END $$;
         SELECT webhooks.inbound_route_set('sleepy', 'sleepy.nap');",
    )
    .await
    .unwrap();
}

async fn busy_applies(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE state <> 'idle' AND query LIKE '%inbound_apply%'
            AND pid <> pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn a_slow_apply_is_cancelled_on_timeout_and_bounded_by_a_statement_timeout() {
    let db = TestDb::new().await;
    let c = db.client().await;
    sleepy_route(&c).await;
    let h = http();
    for (apply, statement) in [(1, 60), (30, 1)] {
        let mut config = sidecar::config_with_inbound(&db);
        let inbound = config.inbound.as_mut().unwrap();
        inbound.apply_timeout = Duration::from_secs(apply);
        inbound.statement_timeout = Duration::from_secs(statement);
        let s = sidecar::start(config).await;
        let started = std::time::Instant::now();
        let (st, b) = post(
            h.post(format!("{}/inbound/sleepy", s.base))
                .header("x-webhook-secret", INBOUND_SECRET)
                .json(&json!({"sleep": 30})),
        )
        .await;
        assert_eq!(st, 503, "{b}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        wait::until(
            "the timed-out apply is no longer running",
            Duration::from_secs(5),
            || async { (busy_applies(&c).await == 0).then_some(()) },
        )
        .await;
        let (st, b) = post(
            h.post(format!("{}/inbound/sleepy", s.base))
                .header("x-webhook-secret", INBOUND_SECRET)
                .json(&json!({"sleep": 0})),
        )
        .await;
        assert_eq!(st, 200, "{b}");
        s.stop().await;
    }
    let slow: i64 = c
        .query_one(
            "SELECT count(*) FROM webhooks.inbound WHERE payload->>'sleep' = '30'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slow, 0, "nothing of a timed-out apply stays");
}

#[tokio::test]
async fn same_key_with_another_body_is_409_and_key_parts_are_unambiguous() {
    let db = TestDb::new().await;
    let c = db.client().await;
    notes_route(&c).await;
    c.batch_execute("SELECT webhooks.inbound_route_set('notes', 'notes.add', '{kind,ref}')")
        .await
        .unwrap();
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let h = http();
    let send = |body: Value| {
        post(
            h.post(format!("{}/inbound/notes", s.base))
                .header("x-webhook-secret", INBOUND_SECRET)
                .json(&body),
        )
    };
    let (st, first) = send(json!({"kind": "a", "ref": 1, "text": "first"})).await;
    assert_eq!(st, 200, "{first}");
    // The same callback again (key order does not matter): a duplicate.
    let (st, b) = send(json!({"text": "first", "ref": 1, "kind": "a"})).await;
    assert_eq!((st, &b["duplicate"]), (200, &json!(true)), "{b}");
    // Same key, another body: refused, not silently dropped.
    let (st, b) = send(json!({"kind": "a", "ref": 1, "text": "second"})).await;
    assert_eq!(st, 409, "{b}");
    assert_eq!(b["success"], false);
    assert_eq!(b["inboundId"], first["inboundId"]);
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .starts_with("a different callback with the same idempotency key"),
        "{b}"
    );
    // "a|b","c" and "a","b|c" are different keys.
    assert_eq!(send(json!({"kind": "x|y", "ref": "z", "text": "1"})).await.0, 200);
    let (st, b) = send(json!({"kind": "x", "ref": "y|z", "text": "2"})).await;
    assert_eq!(st, 200, "{b}");
    assert_ne!(b["duplicate"], true);
    assert_eq!(notes(&c).await, 3);
    s.stop().await;
}

#[tokio::test]
async fn example_appointments_two_reschedules_both_apply() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO app.users (email, name) VALUES ('ada@example.com', 'Ada');
         INSERT INTO app.courses (title, access_days) VALUES ('Rust 101', 365);
         INSERT INTO app.appointments (user_id, course_id, scheduled_at) VALUES (1, 1, '2030-01-01T10:00:00Z');",
    )
    .await
    .unwrap();
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let h = http();
    let url = format!("{}/api/webhooks/make/appointments", s.base);
    for at in ["2030-02-01T10:00:00Z", "2030-03-15T10:00:00Z"] {
        let (st, b) = post(
            h.post(&url)
                .header("x-webhook-secret", INBOUND_SECRET)
                .json(&json!({
            "eventType": "appointment.rescheduled", "appointmentId": 1,
            "status": "rescheduled", "newScheduledAt": at})),
        )
        .await;
        assert_eq!(st, 200, "{b}");
        assert_ne!(b["duplicate"], true, "{b}");
    }
    let second: bool = c
        .query_one(
            "SELECT scheduled_at = '2030-03-15T10:00:00Z' FROM app.appointments WHERE id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(second, "the second reschedule was applied");
    s.stop().await;
}

#[tokio::test]
async fn retention_removes_old_rejected_callbacks_too() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO webhooks.inbound (route, idempotency_key, status, payload, received_at) VALUES
             ('r', 'old-applied', 'applied', '{}', now() - interval '30 days'),
             ('r', 'old-rejected', 'rejected', '{}', now() - interval '30 days'),
             ('r', 'new-rejected', 'rejected', '{}', now())",
    )
    .await
    .unwrap();
    let removed: i64 = c
        .query_one("SELECT inbound FROM webhooks.retention_run('7 days')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(removed, 2);
    let left: Vec<String> = c
        .query("SELECT idempotency_key FROM webhooks.inbound", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["new-rejected"]);
}

#[tokio::test]
async fn handlers_with_unqualified_names_work_and_a_500_names_its_record() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE SCHEMA shop;
         CREATE TABLE shop.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text NOT NULL);
         CREATE FUNCTION shop.order_add(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
         DECLARE new_id bigint;
         BEGIN
             IF p->>'item' = 'boom' THEN
                 INSERT INTO no_such_table VALUES (1);
             END IF;
             INSERT INTO orders (item) VALUES (p->>'item') RETURNING id INTO new_id;
             RETURN jsonb_build_object('orderId', new_id);
         END $$;
         SELECT webhooks.inbound_route_set('orders', 'shop.order_add');",
    )
    .await
    .unwrap();
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let h = http();
    let send = |item: &str| {
        post(
            h.post(format!("{}/inbound/orders", s.base))
                .header("x-webhook-secret", INBOUND_SECRET)
                .json(&json!({"item": item})),
        )
    };
    let (st, b) = send("book").await;
    assert_eq!((st, &b["orderId"]), (200, &json!(1)), "{b}");
    let (st, b) = send("boom").await;
    assert_eq!(st, 500, "{b}");
    assert_eq!(b["error"], "internal error");
    let id = b["inboundId"].as_i64().expect("the 500 names its record");
    let error: String = c
        .query_one("SELECT error FROM webhooks.inbound WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("no_such_table"), "{error}");
    s.stop().await;
}

/// Nested idempotency fields (`'{event,task.id,task.status}'`) are paths
/// into the body, not keys that are never found (every callback then fell
/// back to its body's hash); a field that could never match is refused
/// when the route is set.
#[tokio::test]
async fn nested_idempotency_fields_are_paths_into_the_body() {
    let db = TestDb::new().await;
    let c = db.client().await;
    notes_route(&c).await;
    c.batch_execute("SELECT webhooks.inbound_route_set('notes', 'notes.add', '{event,task.id,task.status}')")
        .await
        .unwrap();
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let h = http();
    let send = |body: Value| {
        post(
            h.post(format!("{}/inbound/notes", s.base))
                .header("x-webhook-secret", INBOUND_SECRET)
                .json(&body),
        )
    };
    let task = |status: &str, text: &str| json!({"event": "task_updated", "task": {"id": 7, "status": status}, "text": text});
    let (st, first) = send(task("open", "first")).await;
    assert_eq!(st, 200, "{first}");
    // Another status: another key, applied.
    let (st, b) = send(task("done", "second")).await;
    assert_eq!(st, 200, "{b}");
    assert_ne!(b["duplicate"], true, "{b}");
    // The same task and status with another body: the key is the fields',
    // not the body's hash, so this is a conflict, not a new callback.
    let (st, b) = send(task("open", "changed")).await;
    assert_eq!(st, 409, "{b}");
    assert_eq!(b["inboundId"], first["inboundId"]);
    let keys: Vec<String> = c
        .query("SELECT idempotency_key FROM webhooks.inbound ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        keys[..2],
        [
            r#"fields:["task_updated","7","open"]"#,
            r#"fields:["task_updated","7","done"]"#
        ]
    );
    assert_eq!(notes(&c).await, 2);
    s.stop().await;

    for fields in ["{task..id}", "{.id}", "{task.}", "{\"\"}", "{\"?\"}"] {
        let err = c
            .execute(
                "SELECT webhooks.inbound_route_set('notes', 'notes.add', $1::text::text[])",
                &[&fields],
            )
            .await
            .unwrap_err();
        let db_err = err.as_db_error().unwrap();
        assert!(
            db_err
                .message()
                .contains("is not a key or a dotted path into the body"),
            "{fields}: {db_err:?}"
        );
        assert!(db_err.hint().unwrap().contains("task.id"), "{fields}");
    }
}

/// The task tracker's inbound endpoint (`?secret=`, reference 003) answers
/// a missing secret with `Unauthorized: Missing secret parameter` and a
/// wrong one with `Unauthorized: Invalid secret`; its replacement route
/// answers the same texts, so what read them keeps working.
#[tokio::test]
async fn the_401_texts_are_the_reference_apps() {
    let db = TestDb::new().await;
    let c = db.client().await;
    notes_route(&c).await;
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let h = http();
    let url = format!("{}/inbound/notes", s.base);
    let body = json!({"event": "task_created", "task": {"id": "test123"}, "text": "x"});
    for (what, req, error) in [
        (
            "no secret",
            h.post(&url),
            "Unauthorized: Missing secret parameter",
        ),
        (
            "empty secret",
            h.post(format!("{url}?secret=")),
            "Unauthorized: Missing secret parameter",
        ),
        (
            "wrong secret",
            h.post(format!("{url}?secret=not-the-secret-0123")),
            "Unauthorized: Invalid secret",
        ),
        (
            "wrong header",
            h.post(&url).header("x-webhook-secret", "not-the-secret-0123"),
            "Unauthorized: Invalid secret",
        ),
    ] {
        let (st, b) = post(req.json(&body)).await;
        assert_eq!((st, b["error"].as_str()), (401, Some(error)), "{what}: {b}");
    }
    let (st, b) = post(h.post(format!("{url}?secret={INBOUND_SECRET}")).json(&body)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(notes(&c).await, 1);
    s.stop().await;
}
