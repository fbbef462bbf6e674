//! Inbound callbacks over real HTTP: authentication, every error status,
//! idempotency under duplicates and concurrency, and no echo back to Make.

use std::time::{Duration, SystemTime};

use pgwebhooks::deliver::sign::SigningKey;
use serde_json::{json, Value};

use crate::support::sidecar::{self, endpoint, INBOUND_SECRET};
use crate::support::{wait, Receiver, TestDb};

/// A route whose handler stores notes and rejects a note without text.
async fn notes_route(c: &tokio_postgres::Client) {
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
    assert_eq!(notes(&c).await, 0, "nothing partly applied");
    let rejected: i64 = c
        .query_one(
            "SELECT count(*) FROM webhooks.inbound WHERE status = 'rejected'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rejected, 2, "rejections are recorded for the DBA");

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

/// Whether a Python tool is on this machine; `.ci/run` installs them and
/// sets PGWEBHOOKS_REQUIRE_PY_TOOLS, so there a missing tool fails the test.
pub fn python_tool(check: &[&str], install: &str) -> bool {
    let present = std::process::Command::new(check[0])
        .args(&check[1..])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        assert!(
            std::env::var_os("PGWEBHOOKS_REQUIRE_PY_TOOLS").is_none(),
            "required here: pip install {install}"
        );
        eprintln!("skipped: pip install {install} to run this test");
    }
    present
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_or_schema_violation() {
    if !python_tool(&["schemathesis", "--version"], "schemathesis") {
        return;
    }
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
