//! The admin listener (issue #17): the management API's every route, its
//! refusals (token, hostile parameters). The console's sign-in, CSRF
//! and cross-site checks are in `admin_console.rs`, the browser scenarios in
//! `console_browser.rs`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::sidecar::{self, ADMIN_TOKEN, INBOUND_SECRET, SECRET};
use crate::support::{wait, Receiver, TestDb};

pub const T: Duration = Duration::from_secs(20);

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// An API call: (status, JSON body).
async fn api(method: &str, url: String, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = http()
        .request(method.parse().unwrap(), url)
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text}"));
    (status, body)
}

pub async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn without_a_token_the_admin_listener_is_not_bound_and_its_router_refuses_everything() {
    let db = TestDb::new().await;
    let mut config = sidecar::config_with_admin(&db);
    config.admin.as_mut().unwrap().token = None;
    let admin_config = config.admin.clone().unwrap();
    let database = config.database.clone();
    let s = sidecar::start(config).await;
    assert_eq!(s.admin, "", "no admin listener without a token");
    // A router built without a token (by a library user) refuses everything
    // and says how to set one.
    let stop = tokio_util::sync::CancellationToken::new();
    let router = pgwebhooks::admin::router(
        pgwebhooks::db::pool(database, 1),
        Default::default(),
        admin_config.clone(),
    );
    let (addr, _task) = pgwebhooks::admin::serve(router, &admin_config, stop.clone())
        .await
        .unwrap();
    let admin = format!("http://{addr}");
    for path in [
        "/console",
        "/console/login",
        "/api/v1/status",
        "/api/v1/openapi.json",
        "/anything",
    ] {
        let resp = http()
            .get(format!("{}{path}", admin))
            .bearer_auth("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        assert!(
            resp.text().await.unwrap().contains("Set PGWEBHOOKS_ADMIN_TOKEN"),
            "{path}"
        );
    }
    let resp = http()
        .post(format!("{}/console/login", admin))
        .body("token=")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // The inbound port never serves the console or the API.
    for path in ["/console", "/api/v1/status"] {
        let resp = http().get(format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "inbound {path}");
    }
    stop.cancel();
    s.stop().await;
}

#[tokio::test]
async fn the_api_refuses_a_missing_empty_or_wrong_token_and_cookies() {
    let db = TestDb::new().await;
    let s = sidecar::start(sidecar::config_with_admin(&db)).await;
    let url = format!("{}/api/v1/status", s.admin);
    let wrong = format!("{ADMIN_TOKEN}x");
    for (what, req) in [
        ("none", http().get(&url)),
        ("empty", http().get(&url).header("authorization", "Bearer ")),
        ("wrong", http().get(&url).bearer_auth(&wrong)),
        ("prefix", http().get(&url).bearer_auth(&ADMIN_TOKEN[..10])),
        (
            "basic",
            http()
                .get(&url)
                .header("authorization", format!("Basic {ADMIN_TOKEN}")),
        ),
        (
            "cookie",
            http()
                .get(&url)
                .header("cookie", format!("pgwebhooks_session={ADMIN_TOKEN}")),
        ),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer", "{what}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("token"),
            "{what}: {body}"
        );
    }
    let (status, body) = api("GET", url, None).await;
    assert_eq!(status, 200, "{body}");
    s.stop().await;
}

/// Every route of `/api/v1`, on a failing endpoint whose deliveries die
/// and are retried once it answers again.
#[tokio::test]
async fn every_api_route_does_what_the_cli_does_and_records_who_did_it() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (mut make, up) = Receiver::down_until_switched(500).await;
    let s = sidecar::start(sidecar::config_with_admin(&db)).await;
    let v1 = format!("{}/api/v1", s.admin);

    // Create (secret given: not echoed), get, list, update.
    let (st, created) = api(
        "POST",
        format!("{v1}/endpoints"),
        Some(json!({"url": make.url, "name": "make-appointments", "events": ["appointment.*"], "secret": SECRET,
                    "headers": {"x-make-apikey": "apikey-value-123", "idempotency-key": "{{type}}:{{data.id}}"}})),
    )
    .await;
    assert_eq!(st, 201, "{created}");
    assert!(created["secret"].is_null());
    let id = created["endpoint"]["id"].as_i64().unwrap();
    assert_eq!(
        created["endpoint"]["header_names"],
        json!(["idempotency-key", "x-make-apikey"])
    );
    let (st, bad) = api("POST", format!("{v1}/endpoints"), Some(json!({"url": "ftp://x"}))).await;
    assert_eq!(st, 400, "{bad}");
    let (st, bad) = api(
        "POST",
        format!("{v1}/endpoints"),
        Some(json!({"url": make.url, "name": "make-appointments"})),
    )
    .await;
    assert_eq!(st, 400, "duplicate name: {bad}");
    let (st, one) = api("GET", format!("{v1}/endpoints/{id}"), None).await;
    assert_eq!(
        (st, one["name"].as_str()),
        (StatusCode::OK, Some("make-appointments"))
    );
    let (st, list) = api("GET", format!("{v1}/endpoints"), None).await;
    assert_eq!((st, list["items"].as_array().unwrap().len()), (StatusCode::OK, 1));
    let (st, updated) = api(
        "PATCH",
        format!("{v1}/endpoints/{id}"),
        Some(json!({"tenant": "t1"})),
    )
    .await;
    assert_eq!(
        (st, updated["tenant_id"].as_str()),
        (StatusCode::OK, Some("t1")),
        "{updated}"
    );
    let (st, _) = api(
        "PATCH",
        format!("{v1}/endpoints/{id}"),
        Some(json!({"tenant": ""})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, bad) = api(
        "PATCH",
        format!("{v1}/endpoints/{id}"),
        Some(json!({"filter": "$.data.("})),
    )
    .await;
    assert_eq!(st, 400, "{bad}");

    // An event from a source row; the receiver answers 500 until switched: dead.
    c.execute(
        "SELECT webhooks.emit('appointment.created', '{\"id\": 42}', source_table => 'app.appointments', row_key => '42')",
        &[],
    )
    .await
    .unwrap();
    let dead: Value = wait::until("the delivery to die", T, || async {
        let (_, b) = api("GET", format!("{v1}/deliveries?status=dead"), None).await;
        b["items"]
            .as_array()
            .filter(|i| !i.is_empty())
            .map(|i| i[0].clone())
    })
    .await;
    let delivery = dead["id"].as_i64().unwrap();
    let event_id = dead["event_id"].as_str().unwrap().to_owned();
    for query in [
        format!("endpoint_id={id}"),
        "event_type=appointment.created".into(),
        format!("event_id={event_id}"),
        "source=appointments%2042".into(),
        "source=app.appointments:42".into(),
        "since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z".into(),
    ] {
        let (st, b) = api("GET", format!("{v1}/deliveries?{query}"), None).await;
        assert_eq!(st, 200, "{query}: {b}");
        assert_eq!(b["items"][0]["id"], delivery, "{query}: {b}");
    }
    for query in [
        "source=appointments%2043",
        "event_type=nope",
        "status=delivered",
        "until=2000-01-01T00:00:00Z",
    ] {
        let (_, b) = api("GET", format!("{v1}/deliveries?{query}"), None).await;
        assert_eq!(b["items"], json!([]), "{query}");
    }
    // The delivery: its event, every attempt with the receiver's answer,
    // the request with secrets masked.
    let (st, d) = api("GET", format!("{v1}/deliveries/{delivery}"), None).await;
    assert_eq!(st, 200);
    assert_eq!(d["event"]["payload"], json!({"id": 42}));
    assert_eq!(d["attempts"].as_array().unwrap().len(), 3, "{d}");
    assert_eq!(d["attempts"][0]["status_code"], 500);
    let headers = &d["request"]["headers"];
    let header = |n: &str| {
        headers
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == n)
            .map(|h| h["value"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        header("idempotency-key").as_deref(),
        Some("appointment.created:42")
    );
    assert!(header("x-make-apikey").unwrap().starts_with('•'));
    assert!(header("webhook-signature").unwrap().starts_with("v1,•"));
    let text = d.to_string();
    assert!(
        !text.contains("apikey-value-123") && !text.contains(SECRET),
        "no secret: {text}"
    );
    let body: Value = serde_json::from_str(d["request"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["data"], json!({"id": 42}));
    let (st, dl) = api("GET", format!("{v1}/dead-letters?endpoint_id={id}"), None).await;
    assert_eq!(
        (st, dl["items"][0]["id"].as_i64()),
        (StatusCode::OK, Some(delivery))
    );

    // Pause and resume.
    let (st, _) = api(
        "POST",
        format!("{v1}/endpoints/{id}/pause"),
        Some(json!({"reason": "maintenance"})),
    )
    .await;
    assert_eq!(st, 200);
    let (_, one) = api("GET", format!("{v1}/endpoints/{id}"), None).await;
    assert_eq!(
        (one["state"].as_str(), one["disabled_reason"].as_str()),
        (Some("paused"), Some("maintenance"))
    );
    let (st, b) = api("POST", format!("{v1}/endpoints/{id}/test"), None).await;
    assert_eq!(st, 409, "a paused endpoint is not tested: {b}");
    let (st, _) = api("POST", format!("{v1}/endpoints/{id}/resume"), None).await;
    assert_eq!(st, 200);

    // Retry one: it is delivered once the receiver answers.
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    make.drain();
    let (st, b) = api("POST", format!("{v1}/deliveries/{delivery}/retry"), None).await;
    assert_eq!((st, &b["requeued"]), (StatusCode::OK, &json!([delivery])), "{b}");
    wait::until("the retried delivery to be delivered", T, || async {
        let (_, d) = api("GET", format!("{v1}/deliveries/{delivery}"), None).await;
        (d["delivery"]["status"] == "delivered").then_some(())
    })
    .await;
    let got = make.next(T).await;
    assert_eq!(got.webhook_id(), event_id, "same webhook-id");
    let (st, b) = api("POST", format!("{v1}/deliveries/{delivery}/retry"), None).await;
    assert_eq!(st, 409, "delivered: {b}");
    let (st, b) = api(
        "POST",
        format!("{v1}/deliveries/retry"),
        Some(json!({"ids": [delivery, 999999]})),
    )
    .await;
    assert_eq!(
        (st, &b["not_requeued"]),
        (StatusCode::OK, &json!([delivery, 999999]))
    );
    let (st, b) = api("POST", format!("{v1}/endpoints/{id}/retry-dead"), None).await;
    assert_eq!((st, &b["requeued"]), (StatusCode::OK, &json!(0)));

    // Test, rotate, replay.
    let (st, b) = api("POST", format!("{v1}/endpoints/{id}/test"), None).await;
    assert_eq!(st, 202, "{b}");
    let test_delivery = b["delivery_id"].as_i64().unwrap();
    wait::until("the test delivery", T, || async {
        let (_, d) = api("GET", format!("{v1}/deliveries/{test_delivery}"), None).await;
        (d["delivery"]["status"] == "delivered").then_some(())
    })
    .await;
    let (st, b) = api("POST", format!("{v1}/endpoints/{id}/rotate-secret"), None).await;
    assert_eq!(st, 200);
    assert!(
        b["secret"].as_str().unwrap().starts_with("whsec_"),
        "a generated secret is shown once: {b}"
    );
    let (st, b) = api(
        "POST",
        format!("{v1}/endpoints/{id}/rotate-secret"),
        Some(json!({"secret": "short"})),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    let (_, one) = api("GET", format!("{v1}/endpoints/{id}"), None).await;
    assert_eq!(one["active_secrets"], 2, "the old secret overlaps");
    let (st, b) = api(
        "POST",
        format!("{v1}/endpoints/{id}/replay"),
        Some(json!({"since": "2000-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!((st, b["requeued"].as_i64()), (StatusCode::OK, Some(1)), "{b}");

    // Inbound callbacks and the status summary.
    c.batch_execute(
        "CREATE SCHEMA notes;
         CREATE FUNCTION notes.add(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('message', 'noted') $$;
         SELECT webhooks.inbound_route_set('notes', 'notes.add');",
    )
    .await
    .unwrap();
    let resp = http()
        .post(format!("{}/inbound/notes", s.base))
        .header("x-webhook-secret", INBOUND_SECRET)
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (st, b) = api("GET", format!("{v1}/inbound?route=notes"), None).await;
    assert_eq!(
        (st, b["items"][0]["message"].as_str()),
        (StatusCode::OK, Some("noted")),
        "{b}"
    );
    let (st, b) = api("GET", format!("{v1}/status"), None).await;
    assert_eq!(
        (st, b["endpoints"][0]["id"].as_i64()),
        (StatusCode::OK, Some(id)),
        "{b}"
    );

    // Delete: refused while deliveries wait unless forced; then gone.
    c.execute(
        "UPDATE webhooks.deliveries SET status = 'dead' WHERE id = $1",
        &[&delivery],
    )
    .await
    .unwrap();
    let (st, b) = api("DELETE", format!("{v1}/endpoints/{id}"), None).await;
    assert_eq!(st, 409, "{b}");
    let (st, b) = api("DELETE", format!("{v1}/endpoints/{id}?force=true"), None).await;
    assert_eq!((st, &b["deleted"]), (StatusCode::OK, &json!(true)), "{b}");
    let (st, _) = api("GET", format!("{v1}/endpoints/{id}"), None).await;
    assert_eq!(st, 404);

    // Every action is recorded: who, what, on what.
    let (_, b) = api("GET", format!("{v1}/actions?limit=200"), None).await;
    let actions: Vec<&str> = b["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for a in [
        "endpoint.create",
        "endpoint.update",
        "endpoint.pause",
        "endpoint.resume",
        "delivery.retry",
        "endpoint.retry_dead",
        "endpoint.test",
        "endpoint.rotate_secret",
        "endpoint.replay",
        "endpoint.delete",
    ] {
        assert!(actions.contains(&a), "{a} recorded: {actions:?}");
    }
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM webhooks.admin_actions WHERE actor <> 'api token'"
        )
        .await,
        0
    );
    s.stop().await;
}

#[tokio::test]
async fn hostile_parameters_and_bodies_get_a_clear_4xx_never_a_5xx() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let id = sidecar::endpoint(&c, "http://127.0.0.1:9/x", &["*"], "").await;
    let s = sidecar::start(sidecar::config_with_admin(&db)).await;
    let v1 = format!("{}/api/v1", s.admin);
    let huge = "9".repeat(5000);
    for (path, want) in [
        ("/deliveries?cursor=garbage".to_owned(), 400),
        ("/deliveries?cursor=ZDE".to_owned(), 200),    // "d1"
        ("/deliveries?cursor=eDE6Mg".to_owned(), 400), // another list's cursor
        ("/deliveries?limit=0".to_owned(), 400),
        ("/deliveries?limit=100000".to_owned(), 400),
        ("/deliveries?limit=abc".to_owned(), 400),
        ("/deliveries?status=%27%20OR%201%3D1".to_owned(), 400),
        ("/deliveries?event_type=%27%20OR%201%3D1%20--".to_owned(), 200),
        ("/deliveries?event_type=a%00b".to_owned(), 400),
        ("/deliveries?event_id=not-a-uuid".to_owned(), 400),
        ("/deliveries?endpoint_id=1e99".to_owned(), 400),
        ("/deliveries?since=yesterday".to_owned(), 400),
        ("/deliveries?source=appointments".to_owned(), 400),
        (
            "/deliveries?source=%27%3B%20DROP%20TABLE%20x%20%2742".to_owned(),
            200,
        ),
        (format!("/deliveries?event_type={huge}"), 400),
        (format!("/deliveries/{huge}"), 404),
        ("/deliveries/-1".to_owned(), 404),
        ("/deliveries/1%27".to_owned(), 404),
        ("/deliveries/0".to_owned(), 404),
        ("/deliveries/123456".to_owned(), 404),
        ("/endpoints/abc".to_owned(), 404),
        ("/dead-letters?cursor=eDE6Mg".to_owned(), 400),
        ("/dead-letters?cursor=ZDE".to_owned(), 200),
        ("/inbound?route=%00".to_owned(), 400),
        ("/actions?cursor=%FF%FE".to_owned(), 400),
        ("/nope".to_owned(), 404),
    ] {
        let (st, b) = api("GET", format!("{v1}{path}"), None).await;
        assert_eq!(st.as_u16(), want, "{path}: {b}");
        assert!(b["items"].is_array() || b["error"].is_string(), "{path}: {b}");
    }
    for (path, body) in [
        (format!("/endpoints/{id}/pause"), "{not json"),
        (format!("/endpoints/{id}/pause"), r#"{"reason": 5}"#),
        (format!("/endpoints/{id}/pause"), r#"{"unknown": 1}"#),
        (format!("/endpoints/{id}/pause"), r#"{"reason": "a\u0000b"}"#),
        (
            format!("/endpoints/{id}/replay"),
            r#"{"since": "'; DROP TABLE x"}"#,
        ),
        (format!("/endpoints/{id}/replay"), "{}"),
        ("/deliveries/retry".to_owned(), r#"{"ids": []}"#),
        ("/deliveries/retry".to_owned(), r#"{"ids": ["1"]}"#),
        (
            "/endpoints".to_owned(),
            r#"{"url": "http://127.0.0.1:9/x", "timeout_ms": 99999999}"#,
        ),
        (
            "/endpoints".to_owned(),
            r#"{"url": "http://127.0.0.1:9/x", "headers": {"webhook-signature": "x"}}"#,
        ),
        (
            "/endpoints".to_owned(),
            r#"{"url": "http://127.0.0.1:9/x", "body_template": {"a": "{{nope.x}}"}}"#,
        ),
        (
            "/endpoints".to_owned(),
            r#"{"url": "http://169.254.169.254/latest"}"#,
        ),
    ] {
        let resp = http()
            .post(format!("{v1}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let st = resp.status();
        let b: Value = resp.json().await.unwrap();
        assert_eq!(st, 400, "{path} {body}: {b}");
        assert!(b["error"].is_string());
    }
    assert_eq!(count(&c, "SELECT count(*) FROM webhooks.endpoints").await, 1);
    s.stop().await;
}

#[test]
fn run_refuses_a_weak_admin_token_and_the_inbound_address_and_help_documents_both() {
    let db_url = "postgres://nobody@127.0.0.1:1/none";
    for (env, expected) in [
        (
            vec![("PGWEBHOOKS_ADMIN_TOKEN", "short")],
            "PGWEBHOOKS_ADMIN_TOKEN must be at least 16",
        ),
        (
            vec![("PGWEBHOOKS_ADMIN_TOKEN", "with spaces but long enough")],
            "PGWEBHOOKS_ADMIN_TOKEN must be at least 16",
        ),
        (
            vec![
                ("PGWEBHOOKS_LISTEN", "127.0.0.1:9999"),
                ("PGWEBHOOKS_ADMIN_LISTEN", "127.0.0.1:9999"),
            ],
            "PGWEBHOOKS_ADMIN_LISTEN must differ from PGWEBHOOKS_LISTEN",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
            .arg("run")
            .env("DATABASE_URL", db_url)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "{env:?}: {err}");
        assert!(!err.contains("with spaces"), "the token is never printed: {err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "PGWEBHOOKS_ADMIN_LISTEN",
        "PGWEBHOOKS_ADMIN_TOKEN",
        "127.0.0.1:9477",
    ] {
        assert!(help.contains(var), "--help documents {var}");
    }
    assert!(!help.contains(":9090"), "not Prometheus's own port");
}

/// The deliveries' source search finds a table named the way ORMs name it
/// ("Task") however the operator types it (issue #23).
#[tokio::test]
async fn the_source_search_finds_tables_named_the_way_orms_name_them() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = crate::support::Receiver::ok().await;
    sidecar::endpoint(&c, &rx.url, &["*"], "").await;
    c.execute(
        "SELECT webhooks.emit('task.created', '{}', source_table => 'public.\"Task\"', row_key => 't2')",
        &[],
    )
    .await
    .unwrap();
    let s = sidecar::start(sidecar::config_with_admin(&db)).await;
    let v1 = format!("{}/api/v1", s.admin);
    for query in [
        "source=Task%20t2",
        "source=%22Task%22%20t2",
        "source=public.Task%20t2",
        "source=public.%22Task%22%20t2",
    ] {
        wait::until(query, T, || async {
            let (_, b) = api("GET", format!("{v1}/deliveries?{query}"), None).await;
            (b["items"].as_array().map(Vec::len) == Some(1)).then_some(())
        })
        .await;
    }
    let (_, b) = api("GET", format!("{v1}/deliveries?source=task%20t2"), None).await;
    assert_eq!(b["items"], json!([]), "a lower-case name is another table");
    s.stop().await;
}
