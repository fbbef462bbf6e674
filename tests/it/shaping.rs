//! Shaping what a receiver gets: body templates, header templates and
//! names, content filters, and `endpoint update` — configured with the real
//! binary, delivered by the sidecar to real receivers.

use std::time::{Duration, SystemTime};

use base64::Engine;
use hmac::{Hmac, Mac};
use pgwebhooks::sign::{self, SigningKey};
use serde_json::{json, Value};

use crate::support::sidecar::{self, SECRET};
use crate::support::{wait, Receiver, TestDb};

const T: Duration = Duration::from_secs(20);

/// `endpoint add --url <url> --secret SECRET …`; returns the id.
fn add(db: &TestDb, url: &str, extra: &[&str]) -> i64 {
    let mut args = vec![
        "endpoint",
        "add",
        "--url",
        url,
        "--secret",
        SECRET,
        "--allow-private-targets",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = db.cli_blocking(&args);
    assert!(ok, "{args:?}: {err}");
    out.lines()
        .last()
        .unwrap()
        .parse()
        .expect("the id on the last line")
}

fn verify_standard(r: &crate::support::receiver::Received) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    sign::verify(
        &[SigningKey::parse(SECRET).unwrap()],
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        r.header("webhook-signature"),
        &r.body,
        now,
        60,
    )
    .expect("the Standard Webhooks signature verifies over the received bytes");
}

/// `sha256=<hex HMAC-SHA256 of the body>`, computed here independently.
fn hex_hmac(body: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

#[tokio::test]
async fn templates_shape_bodies_and_headers_for_each_reference_app() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (mut tasks, mut orders, mut learning) =
        (Receiver::ok().await, Receiver::ok().await, Receiver::ok().await);
    let (mut salon, mut plain) = (Receiver::ok().await, Receiver::ok().await);
    add(
        &db,
        &tasks.url,
        &[
            "--events",
            "task_created",
            "--body-template",
            r#"{"event": "{{type}}", "task": "{{data}}"}"#,
        ],
    );
    add(
        &db,
        &orders.url,
        &[
            "--events",
            "order.submitted",
            "--signature",
            "standard,secret-header",
            "--secret-header",
            "X-Webhook-Secret",
            "--body-template",
            r#"{"event_type": "{{type}}", "request_id": "{{id}}", "submitted_at": "{{timestamp}}",
                "source_app": "order-form", "...": "{{data}}"}"#,
        ],
    );
    add(
        &db,
        &learning.url,
        &[
            "--events",
            "error.occurred",
            "--body-template",
            r#"{"type": "{{type}}", "payload": "{{data}}", "event_id": "{{id}}", "sent_at": "{{timestamp}}"}"#,
        ],
    );
    add(
        &db,
        &salon.url,
        &[
            "--events",
            "appointment.*",
            "--signature",
            "standard,sha256-hex",
            "--signature-header",
            "X-Make-Signature",
            "--header",
            "Idempotency-Key: appointment:{{data.appointment.id}}:{{type}}",
            "--header",
            "User-Agent: salon-sync/1",
            "--mask",
            "customer.phone",
            "--body-template",
            r#"{"event": "{{type}}", "appointment": "{{data.appointment}}", "customer": "{{data.customer}}",
                "stylist": "{{data.stylist.name}}", "note": "for {{data.customer.name}} at {{data.salon}}"}"#,
        ],
    );
    add(&db, &plain.url, &["--events", "task_created"]);
    let running = sidecar::start(sidecar::config(&db)).await;

    let task = json!({"id": 17, "title": "Write the recipe", "done": false, "tags": ["docs"]});
    let order = json!({"status": "new", "contact_email": "ana@example.com", "event_type": "overridden",
                       "pricing": {"total": 120.5, "currency": "EUR"}});
    let error = json!({"severity": "HIGH", "message": "quiz failed to load"});
    let appointment = json!({"appointment": {"id": 42, "starts_at": "2026-03-01T10:00:00Z"},
                             "customer": {"name": "Ana", "phone": "0912345678"}, "salon": "Centro"});
    let mut ids = Vec::new();
    for (t, d) in [
        ("task_created", &task),
        ("order.submitted", &order),
        ("error.occurred", &error),
        ("appointment.created", &appointment),
    ] {
        let id: uuid::Uuid = c
            .query_one("SELECT webhooks.emit($1, $2)", &[&t, d])
            .await
            .unwrap()
            .get(0);
        ids.push(id.to_string());
    }

    // The task tracker: {"event", "task"}, the task with its types.
    let r = tasks.next(T).await;
    verify_standard(&r);
    assert_eq!(r.json(), json!({"event": "task_created", "task": task}));
    assert_eq!(r.header("content-type"), Some("application/json"));

    // The order form: flat, the template's members over data's.
    let r = orders.next(T).await;
    verify_standard(&r);
    let body = r.json();
    assert_eq!(
        keys(&body),
        [
            "contact_email",
            "event_type",
            "pricing",
            "request_id",
            "source_app",
            "status",
            "submitted_at"
        ]
    );
    assert_eq!(body["event_type"], "order.submitted");
    assert_eq!(body["request_id"], ids[1]);
    assert_eq!(body["request_id"], r.webhook_id());
    assert_eq!(body["source_app"], "order-form");
    assert_eq!(body["status"], "new");
    assert_eq!(body["pricing"], json!({"total": 120.5, "currency": "EUR"}));
    let at = body["submitted_at"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(at).is_ok() && at.ends_with('Z'), "{at}");
    assert_eq!(r.header("x-webhook-secret"), Some(SECRET));

    // The learning platform.
    let r = learning.next(T).await;
    verify_standard(&r);
    let body = r.json();
    assert_eq!(keys(&body), ["event_id", "payload", "sent_at", "type"]);
    assert_eq!(body["type"], "error.occurred");
    assert_eq!(body["payload"], error);
    assert_eq!(body["event_id"], ids[2]);

    // The salon: renamed HMAC header over the bytes sent, rendered
    // Idempotency-Key, our user-agent replaced, the phone masked, an
    // absent path null.
    let r = salon.next(T).await;
    verify_standard(&r);
    assert_eq!(r.header("x-make-signature"), Some(hex_hmac(&r.body).as_str()));
    assert_eq!(r.header("x-webhook-signature"), None, "renamed, not sent twice");
    assert_eq!(
        r.header("idempotency-key"),
        Some("appointment:42:appointment.created")
    );
    assert_eq!(r.header("user-agent"), Some("salon-sync/1"));
    let body = r.json();
    assert_eq!(
        body,
        json!({"event": "appointment.created",
               "appointment": {"id": 42, "starts_at": "2026-03-01T10:00:00Z"},
               "customer": {"name": "Ana", "phone": "0912***5678"},
               "stylist": null, "note": "for Ana at Centro"})
    );

    // No template: the standard envelope, as before.
    let r = plain.next(T).await;
    verify_standard(&r);
    let body = r.json();
    assert_eq!(keys(&body), ["data", "id", "tenant_id", "timestamp", "type"]);
    assert_eq!(body["data"], task);
    assert!(r.header("user-agent").unwrap().starts_with("pgwebhooks/"));
    running.stop().await;
}

#[tokio::test]
async fn a_filter_delivers_only_what_it_accepts_and_replay_agrees() {
    pgwebhooks::telemetry::install();
    let db = TestDb::new().await;
    let c = db.client().await;
    let (mut urgent, mut all) = (Receiver::ok().await, Receiver::ok().await);
    let urgent_id = add(
        &db,
        &urgent.url,
        &[
            "--events",
            "error.*",
            "--filter",
            r#"$.data.severity == "HIGH" || $.data.severity == "CRITICAL""#,
        ],
    );
    let all_id = add(&db, &all.url, &["--events", "error.*"]);
    // A row written with SQL whose template is bad: skipped, logged, and
    // the others still served.
    c.execute(
        "INSERT INTO webhooks.endpoints (url, body_template) VALUES ($1, '{\"a\": \"{{nope}}\"}')",
        &[&all.url],
    )
    .await
    .unwrap();
    let running = sidecar::start(sidecar::config(&db)).await;

    // A number where the filter compares a string: not matched, no stall.
    for severity in [
        json!("LOW"),
        json!("HIGH"),
        json!("MEDIUM"),
        json!("CRITICAL"),
        json!(5),
    ] {
        c.execute(
            "SELECT webhooks.emit('error.occurred', jsonb_build_object('severity', $1::jsonb))",
            &[&severity],
        )
        .await
        .unwrap();
    }
    let got: Vec<Value> = all.take(5, T).await.iter().map(|r| r.json()).collect();
    assert_eq!(got.len(), 5);
    let got: Vec<Value> = urgent
        .take(2, T)
        .await
        .iter()
        .map(|r| r.json()["data"]["severity"].clone())
        .collect();
    assert_eq!(got, [json!("HIGH"), json!("CRITICAL")]);
    wait::until("every delivery recorded", T, || async {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 7).then_some(())
    })
    .await;
    let rows = sidecar::statuses(&c, urgent_id).await;
    assert_eq!(
        rows,
        [("delivered".to_owned(), 2)],
        "no delivery row for rejected events"
    );
    assert_eq!(sidecar::statuses(&c, all_id).await, [("delivered".to_owned(), 5)]);
    // The registry is the test process's, and endpoint ids repeat across the
    // tests' databases: at least this test's three rejections are counted.
    let metrics = pgwebhooks::telemetry::render();
    let filtered: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("pgwebhooks_filtered_total{{endpoint=\"{urgent_id}\"}} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(filtered >= 3.0, "{metrics}");
    // Every event was fanned out and recorded: nothing more is on its way.
    assert!(urgent.drain().is_empty());
    assert!(
        all.drain().is_empty(),
        "the endpoint with a bad template was skipped"
    );

    // Replay honours the filter too.
    let n: i32 = c
        .query_one(
            "SELECT webhooks.replay($1, now() - interval '1 hour')",
            &[&urgent_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let again = urgent.take(2, T).await;
    for r in &again {
        let s = r.json()["data"]["severity"].clone();
        assert!(s == "HIGH" || s == "CRITICAL", "{s}");
    }
    running.stop().await;
}

#[tokio::test]
async fn bad_templates_filters_and_headers_are_refused_at_add_and_update() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let id = add(&db, "http://127.0.0.1:9/hook", &["--name", "kept"]);
    let before: String = c
        .query_one("SELECT row_to_json(e)::text FROM webhooks.endpoints e", &[])
        .await
        .unwrap()
        .get(0);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--body-template", "{not json"],
            "--body-template: not valid JSON",
        ),
        (
            &["--body-template", r#"{"a": "{{payload.id}}"}"#],
            "unknown placeholder {{payload.id}}",
        ),
        (
            &["--body-template", r#"{"a": "x {{data.id"}"#],
            "unterminated placeholder",
        ),
        (
            &["--body-template", r#"{"...": "{{type}}"}"#],
            "\"...\" must be exactly one placeholder of an object path",
        ),
        (
            &["--header", "X-Key: {{data.id"],
            "--header \"x-key\": unterminated placeholder",
        ),
        (&["--header", "X-Key: {{nope}}"], "unknown placeholder {{nope}}"),
        (
            &["--header", "Content-Type: text/plain"],
            "--header \"content-type\": a signature or content header",
        ),
        (
            &["--header", "webhook-signature: v1,x"],
            "--header \"webhook-signature\"",
        ),
        // L1 (security audit 2): the URL's virtual host, and the client's own headers.
        (
            &["--header", "Host: internal.example"],
            "--header \"host\": never sent",
        ),
        (&["--header", "host: {{data.x}}"], "--header \"host\": never sent"),
        (
            &["--header", "Proxy-Authorization: Basic eA=="],
            "--header \"proxy-authorization\": never sent",
        ),
        (
            &["--header", "Connection: close"],
            "--header \"connection\": never sent",
        ),
        (
            &["--header", "X-Webhook-Signature: x"],
            "--header \"x-webhook-signature\"",
        ),
        (
            &[
                "--signature-header",
                "X-Make-Signature",
                "--header",
                "x-make-signature: x",
            ],
            "--header \"x-make-signature\"",
        ),
        (
            &["--signature-header", "bad name"],
            "--signature-header \"bad name\": not a valid header name",
        ),
        (
            &["--signature-header", "Content-Type"],
            "--signature-header \"Content-Type\"",
        ),
        (
            &["--secret-header", "webhook-id"],
            "--secret-header \"webhook-id\"",
        ),
        (
            &["--signature-header", "x-sig", "--secret-header", "X-Sig"],
            "--signature-header and --secret-header are both",
        ),
        (
            &["--filter", "$.data.severity =="],
            "--filter \"$.data.severity ==\": syntax error",
        ),
        (&["--filter", "$.data"], "not a predicate"),
        (&["--filter", "$.type"], "single boolean result is expected"),
    ];
    for (flags, expected) in cases {
        let mut args = vec![
            "endpoint",
            "add",
            "--url",
            "http://127.0.0.1:9/",
            "--allow-private-targets",
        ];
        args.extend_from_slice(flags);
        let (ok, _, err) = db.cli_blocking(&args);
        assert!(!ok && err.contains(expected), "add {flags:?}: {err}");
        let id = id.to_string();
        let mut args = vec!["endpoint", "update", &id];
        args.extend_from_slice(flags);
        let (ok, _, err) = db.cli_blocking(&args);
        assert!(!ok && err.contains(expected), "update {flags:?}: {err}");
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM webhooks.endpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "nothing added");
    let after: String = c
        .query_one("SELECT row_to_json(e)::text FROM webhooks.endpoints e", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, before, "nothing updated");
}

async fn row(c: &tokio_postgres::Client) -> Value {
    c.query_one(
        "SELECT row_to_json(e)::jsonb - 'updated_at' FROM webhooks.endpoints e",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

async fn version(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT version FROM webhooks.config_version", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn endpoint_update_changes_only_what_is_given() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let id = add(
        &db,
        "http://127.0.0.1:9/hook",
        &[
            "--name",
            "crm",
            "--events",
            "ticket.*",
            "--header",
            "x-make-apikey: k-1",
            "--mask",
            "phone",
        ],
    );
    let first = row(&c).await;
    let v0 = version(&c).await;
    let sid = id.to_string();
    let (ok, out, err) = db.cli_blocking(&[
        "endpoint",
        "update",
        &sid,
        "--body-template",
        r#"{"event": "{{type}}", "task": "{{data}}"}"#,
        "--filter",
        r#"$.data.priority == "high""#,
        "--signature-header",
        "X-Make-Signature",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        format!("endpoint {id} updated: signature-header, body-template, filter")
    );
    assert!(version(&c).await > v0, "the config version moves");
    let second = row(&c).await;
    assert_eq!(
        second["body_template"],
        json!({"event": "{{type}}", "task": "{{data}}"})
    );
    assert_eq!(second["filter"], r#"($."data"."priority" == "high")"#);
    assert_eq!(second["signature_header"], "X-Make-Signature");
    for k in [
        "name",
        "url",
        "event_types",
        "headers",
        "masked_fields",
        "signature_styles",
        "make",
        "secret_header",
    ] {
        assert_eq!(second[k], first[k], "{k} unchanged");
    }

    // The same again: nothing changes; then clear back to the defaults.
    let (ok, out, _) = db.cli_blocking(&[
        "endpoint",
        "update",
        &sid,
        "--signature-header",
        "X-Make-Signature",
    ]);
    assert!(
        ok && out.trim() == format!("endpoint {id}: nothing changed"),
        "{out}"
    );
    let (ok, out, err) = db.cli_blocking(&[
        "endpoint",
        "update",
        &sid,
        "--body-template",
        "",
        "--filter",
        "",
        "--signature-header",
        "",
        "--make",
        "--events",
        "ticket.created",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("events, make, signature-header, body-template, filter"),
        "{out}"
    );
    let third = row(&c).await;
    assert_eq!(third["body_template"], Value::Null);
    assert_eq!(third["filter"], Value::Null);
    assert_eq!(third["signature_header"], Value::Null);
    assert_eq!(third["make"], true);
    assert_eq!(third["event_types"], json!(["ticket.created"]));
    assert_eq!(third["headers"], first["headers"]);

    // --url is checked as add checks it; unknown ids are named.
    let (ok, _, err) = db.cli_blocking(&["endpoint", "update", &sid, "--url", "ftp://x/"]);
    assert!(!ok && err.contains("http:// or https://"), "{err}");
    let (ok, _, err) = db.cli_blocking(&["endpoint", "update", &sid, "--url", "http://127.0.0.1:9/other"]);
    assert!(
        !ok && err.contains("not updated") && err.contains("loopback"),
        "a private target needs the flag: {err}"
    );
    let (ok, out, err) = db.cli_blocking(&[
        "endpoint",
        "update",
        &sid,
        "--url",
        "http://127.0.0.1:9/other",
        "--allow-private-targets",
        "--make=false",
    ]);
    assert!(ok && out.contains("url, make"), "{out} {err}");
    let (ok, _, err) = db.cli_blocking(&["endpoint", "update", "999", "--name", "x"]);
    assert!(!ok && err.contains("no endpoint 999"), "{err}");
}

/// L1 (security audit 2): a `host` header written into an endpoint's row
/// with SQL (`endpoint add` refuses it) is dropped at send: the request
/// reaches the URL's virtual host, the endpoint's other headers still go.
#[tokio::test]
async fn a_host_header_written_with_sql_is_dropped_at_send() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut rx = Receiver::ok().await;
    crate::support::sidecar::endpoint(
        &c,
        &rx.url,
        &["*"],
        r#"headers = '{"host": "internal.example", "proxy-authorization": "Basic eA==", "x-kept": "yes"}'"#,
    )
    .await;
    let s = sidecar::start(sidecar::config(&db)).await;
    c.execute("SELECT webhooks.emit('vhost.test', '{}')", &[])
        .await
        .unwrap();
    let got = rx.next(T).await;
    let url_host = rx.url.trim_start_matches("http://").split('/').next().unwrap();
    assert_eq!(got.header("host"), Some(url_host));
    assert_eq!(got.header("proxy-authorization"), None);
    assert_eq!(got.header("x-kept"), Some("yes"));
    s.stop().await;
}
