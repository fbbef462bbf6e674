//! Subscriptions: the `endpoint` commands and endpoints declared in the
//! environment.

use std::time::Duration;

use pgwebhooks::config::Secret;
use pgwebhooks::env_endpoints::EnvEndpoints;

use crate::support::sidecar;
use crate::support::{Receiver, Reply, TestDb};

#[tokio::test]
async fn endpoint_commands_add_list_disable_enable_rotate() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (ok, out, err) = db.cli_blocking(&[
        "endpoint",
        "add",
        "--url",
        "http://127.0.0.1:9/hook",
        "--events",
        "appointment.*, ticket.created",
        "--tenant",
        "acme",
        "--name",
        "crm",
        "--make",
        "--header",
        "x-make-apikey: k-123",
        "--allow-private-targets",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("secret: whsec_"),
        "a generated secret is printed: {out}"
    );
    let id: i64 = lines
        .last()
        .unwrap()
        .parse()
        .expect("the id alone on the last line");
    let row = c
        .query_one(
            "SELECT event_types, tenant_id, make, headers->>'x-make-apikey', name FROM webhooks.endpoints WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<String>>(0), ["appointment.*", "ticket.created"]);
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("acme"));
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("k-123"));

    let (ok, out, _) = db.cli_blocking(&["endpoint", "list"]);
    assert!(
        ok && out.contains("crm") && out.contains("enabled") && !out.contains("whsec_"),
        "{out}"
    );
    let (_, shown, _) = db.cli_blocking(&["endpoint", "list", "--show-secrets"]);
    assert!(shown.contains("whsec_"));

    let (ok, _, _) = db.cli_blocking(&["endpoint", "disable", &id.to_string(), "--reason", "maintenance"]);
    assert!(ok);
    let (_, out, _) = db.cli_blocking(&["endpoint", "list"]);
    assert!(out.contains("disabled: maintenance"), "{out}");
    assert!(db.cli_blocking(&["endpoint", "enable", &id.to_string()]).0);

    let (ok, out, _) = db.cli_blocking(&["endpoint", "rotate-secret", &id.to_string(), "--overlap", "1h"]);
    assert!(ok, "{out}");
    let active: i64 = c
        .query_one(
            "SELECT count(*) FROM webhooks.endpoint_secrets WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > now())",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(active, 2, "old and new sign during the overlap");

    // Bad input: a clear error, nothing written.
    for (args, expected) in [
        (
            vec!["endpoint", "add", "--url", "ftp://x/"],
            "http:// or https://",
        ),
        (vec!["endpoint", "add", "--url", "not a url"], "invalid --url"),
        (
            vec![
                "endpoint",
                "add",
                "--url",
                "http://127.0.0.1/",
                "--secret",
                "short",
            ],
            "invalid secret",
        ),
        (
            vec![
                "endpoint",
                "add",
                "--url",
                "http://127.0.0.1/",
                "--header",
                "no-colon",
            ],
            "expected 'name: value'",
        ),
        (
            vec![
                "endpoint",
                "add",
                "--url",
                "http://127.0.0.1/",
                "--signature",
                "md5",
            ],
            "--signature",
        ),
        (vec!["endpoint", "disable", "999"], "no endpoint 999"),
    ] {
        let (ok, _, err) = db.cli_blocking(&args);
        assert!(!ok && err.contains(expected), "{args:?}: {err}");
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM webhooks.endpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn endpoints_from_the_environment_route_event_groups() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (mut appts, mut fallback) = (Receiver::ok().await, Receiver::ok().await);
    let env = EnvEndpoints {
        urls: vec![
            ("MAKE_WEBHOOK_APPOINTMENTS_URL".into(), appts.url.clone()),
            ("WEBHOOK_URL".into(), fallback.url.clone()),
        ],
        secret: Some(Secret::new(sidecar::SECRET)),
    };
    let mut config = sidecar::config(&db);
    config.env_endpoints = env.clone();
    let s = sidecar::start(config.clone()).await;
    c.batch_execute(
        "SELECT webhooks.emit('appointment.created', '{}');
         SELECT webhooks.emit('ticket.created', '{}');",
    )
    .await
    .unwrap();
    assert_eq!(
        appts.next(Duration::from_secs(20)).await.json()["type"],
        "appointment.created"
    );
    assert_eq!(
        fallback.next(Duration::from_secs(20)).await.json()["type"],
        "ticket.created"
    );
    s.stop().await;

    // Starting again (as every replica does) changes nothing; an unset
    // variable disables its endpoint, keeping its backlog.
    let s = sidecar::start(config.clone()).await;
    s.stop().await;
    config.env_endpoints.urls.truncate(1);
    let s = sidecar::start(config).await;
    s.stop().await;
    let rows: Vec<(String, bool)> = c
        .query("SELECT name, enabled FROM webhooks.endpoints ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        [
            ("env:MAKE_WEBHOOK_APPOINTMENTS_URL".to_owned(), true),
            ("env:WEBHOOK_URL".to_owned(), false)
        ]
    );
    let secrets: i64 = c
        .query_one("SELECT count(*) FROM webhooks.endpoint_secrets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(secrets, 2, "one secret each, not one per start");
    assert!(
        appts.drain().is_empty() && fallback.drain().is_empty(),
        "no duplicates across restarts"
    );
}

/// L4 and L8 at `endpoint add`/`list`: the URL's path and query are shown
/// only with --show-secrets; a timeout over the hard maximum is refused.
#[tokio::test]
async fn endpoint_list_hides_url_paths_and_add_refuses_huge_timeouts() {
    let db = TestDb::new().await;
    let url = "http://127.0.0.1:9/abcSECRETTOKENxyz?key=SECRETKEY";
    let (ok, _, err) = db.cli_blocking(&[
        "endpoint",
        "add",
        "--url",
        url,
        "--allow-private-targets",
        "--timeout",
        "20s",
    ]);
    assert!(ok, "{err}");
    let (ok, out, _) = db.cli_blocking(&["endpoint", "list"]);
    assert!(
        ok && out.contains("http://127.0.0.1:9/…") && !out.contains("SECRET"),
        "{out}"
    );
    let (ok, out, _) = db.cli_blocking(&["endpoint", "list", "--show-secrets"]);
    assert!(ok && out.contains(url), "{out}");

    let (ok, _, err) = db.cli_blocking(&[
        "endpoint",
        "add",
        "--url",
        "http://127.0.0.1:9/",
        "--allow-private-targets",
        "--timeout",
        "24days",
    ]);
    assert!(!ok, "refused");
    assert!(err.contains("--timeout 24days: at most 5m"), "{err}");
    assert!(!err.contains("SECRET"), "{err}");
}

/// L8: an endpoint's own timeout longer than a fifth of the lease is
/// clamped, so an attempt is never still in flight when its lease ends
/// (another replica would send it again).
#[tokio::test]
async fn an_endpoint_timeout_longer_than_the_lease_allows_is_clamped() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut slow = Receiver::start(|_| Reply::ok().delay(Duration::from_secs(4))).await;
    // 60 s, while the tests' lease is 10 s: at most 2 s is used.
    let id = sidecar::endpoint(&c, &slow.url, &["*"], "timeout_ms = 60000").await;
    let mut config = sidecar::config(&db);
    config.deliver.retry_schedule = vec![];
    let running = sidecar::start(config).await;
    c.execute("SELECT webhooks.emit('slow.test', '{}')", &[])
        .await
        .unwrap();
    slow.next(Duration::from_secs(20)).await;
    let (status, error): (String, Option<String>) = crate::support::wait::until(
        "the attempt recorded",
        Duration::from_secs(20),
        || async {
            c.query_opt(
                "SELECT d.status, a.error FROM webhooks.deliveries d JOIN webhooks.attempts a ON a.delivery_id = d.id
                  WHERE d.endpoint_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
        },
    )
    .await;
    assert_eq!(status, "dead");
    assert_eq!(error.as_deref(), Some("timed out after 2s"));
    running.stop().await;
}

/// Issue #14: a Make endpoint skips its scenario's own callbacks (origin
/// inbound/*) unless told otherwise; any other endpoint ignores nothing.
#[tokio::test]
async fn make_endpoints_skip_their_own_callbacks_by_default() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let origins = |id: i64| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT ignore_origins FROM webhooks.endpoints WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get::<_, Vec<String>>(0)
        }
    };
    let add = |extra: &[&str], url: &str| {
        let mut args = vec!["endpoint", "add", "--url", url, "--allow-private-targets"];
        args.extend_from_slice(extra);
        let (ok, out, err) = db.cli_blocking(&args);
        assert!(ok, "{err}");
        (out.lines().last().unwrap().parse::<i64>().unwrap(), err)
    };
    let mut make_rx = Receiver::ok().await;
    let mut plain_rx = Receiver::ok().await;
    let (make, said) = add(&["--make", "--events", "error.*"], &make_rx.url);
    assert!(
        said.contains("inbound/*") && said.contains("--no-ignore-origin"),
        "{said}"
    );
    assert_eq!(origins(make).await, ["inbound/*"]);
    let (plain, said) = add(&["--events", "error.*"], &plain_rx.url);
    assert!(!said.contains("inbound/*"), "{said}");
    assert_eq!(origins(plain).await, Vec::<String>::new());
    let (all, _) = add(&["--make", "--no-ignore-origin"], "http://127.0.0.1:9/all");
    assert_eq!(origins(all).await, Vec::<String>::new());
    let (named, _) = add(
        &["--make", "--ignore-origin", "inbound/payments"],
        "http://127.0.0.1:9/n",
    );
    assert_eq!(origins(named).await, ["inbound/payments"]);
    c.execute(
        "DELETE FROM webhooks.endpoints WHERE id IN ($1, $2)",
        &[&all, &named],
    )
    .await
    .unwrap();

    // End to end: a callback logs a HIGH error (origin inbound/errors), then
    // the app logs one itself.
    let s = sidecar::start(sidecar::config_with_inbound(&db)).await;
    let answer = reqwest::Client::new()
        .post(format!("{}/api/webhooks/make/errors", s.base))
        .header("x-make-apikey", sidecar::INBOUND_SECRET)
        .body(r#"{"errorMessage": "from the scenario", "severity": "HIGH", "errorType": "make"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    c.batch_execute(
        "INSERT INTO app.error_logs (error_type, error_message, severity) VALUES ('app', 'from the app', 'HIGH')",
    )
    .await
    .unwrap();
    let to_plain = plain_rx.take(2, Duration::from_secs(20)).await;
    let to_make = make_rx.take(1, Duration::from_secs(20)).await;
    let message = |r: &crate::support::receiver::Received| r.json()["data"]["errorMessage"].clone();
    let mut plain_got: Vec<_> = to_plain.iter().map(message).collect();
    plain_got.sort_by_key(|v| v.to_string());
    assert_eq!(plain_got, ["from the app", "from the scenario"]);
    assert_eq!(message(&to_make[0]), "from the app");
    // The app's event came after the callback's, so the callback's had its
    // turn: the Make endpoint has no delivery of it at all.
    let make_deliveries: i64 = c
        .query_one(
            "SELECT count(*) FROM webhooks.deliveries WHERE endpoint_id = $1",
            &[&make],
        )
        .await
        .unwrap()
        .get(0);
    assert!(make_deliveries <= 1, "{make_deliveries}");
    assert_eq!(make_rx.count(), 1);
    s.stop().await;
}

/// Issue #15 item 5: `endpoint test <id>` sends one signed webhooks.test
/// event to that endpoint alone, through the sidecar's normal path.
#[tokio::test]
async fn endpoint_test_sends_one_signed_event_to_that_endpoint_alone() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut target = Receiver::start(|_| Reply::ok().body("accepted")).await;
    let other = Receiver::ok().await;
    let mut broken = Receiver::start(|_| Reply::status(503).body("down for maintenance")).await;
    let id = sidecar::endpoint(&c, &target.url, &["webhooks.*"], "").await;
    sidecar::endpoint(&c, &other.url, &["*", "webhooks.*"], "").await;
    // (Its first retry an hour away, as production's are seconds away: the
    // command withdraws the test before any retry.)
    let broken_id = sidecar::endpoint(&c, &broken.url, &["order.*"], "retry_schedule = '{1 hour}'").await;

    // Without a sidecar: a clear failure, and nothing left waiting.
    let (ok, _, err) = db.cli_blocking(&["endpoint", "test", &id.to_string(), "--wait", "1s"]);
    assert!(!ok && err.contains("pgwebhooks run"), "{err}");

    let running = sidecar::start(sidecar::config(&db)).await;
    // (Asynchronous: the sidecar runs on this test's runtime.)
    let (ok, out, err) = db.cli(&["endpoint", "test", &id.to_string()]).await;
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("HTTP 200 in ") && out.contains("answer: accepted"),
        "{out}"
    );
    let got = target.next(Duration::from_secs(20)).await;
    let body = got.json();
    assert_eq!(body["type"], "webhooks.test");
    assert_eq!(body["data"]["endpoint"]["id"], id);
    let key = pgwebhooks::sign::SigningKey::parse(sidecar::SECRET).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    pgwebhooks::sign::verify(
        std::slice::from_ref(&key),
        got.header("webhook-id"),
        got.header("webhook-timestamp"),
        got.header("webhook-signature"),
        &got.body,
        now,
        60,
    )
    .expect("the test event is signed");

    // A failing endpoint: exit 1 with its answer; tried once, not retried.
    let (ok, out, err) = db.cli(&["endpoint", "test", &broken_id.to_string()]).await;
    assert!(
        !ok && out.contains("HTTP 503") && out.contains("down for maintenance"),
        "{out}\n{err}"
    );
    broken.next(Duration::from_secs(20)).await;
    let statuses = sidecar::statuses(&c, broken_id).await;
    assert_eq!(statuses, [("failed".to_owned(), 1)]);
    running.stop().await;
    assert_eq!(other.count(), 0, "the test event went to that endpoint alone");
    assert_eq!((target.count(), broken.count()), (1, 1));
}

/// Issue #25: `endpoint test` sends what the user picks and says what it
/// sent. A stored event's copy is the body its real delivery had (template
/// and masks), under a new webhook-id; a sample is sent as the event's
/// data; the default ping never goes through the body template. The API
/// offers the same choice and answers with the body.
#[tokio::test]
async fn endpoint_test_sends_a_stored_event_a_sample_or_the_ping_and_says_what() {
    let app = crate::support::TestApp::new().await;
    let mut rx = Receiver::ok().await;
    let id = app
        .add_endpoint(
            &rx.url,
            &["task.*"],
            r#"body_template = '{"event": "{{type}}", "task": "{{data}}"}', masked_fields = '{secret}'"#,
        )
        .await;
    let s = sidecar::start(sidecar::config_with_admin(&app.db)).await;
    let first = app
        .emit(
            "task.created",
            serde_json::json!({"id": 1, "title": "first", "secret": "s1"}),
        )
        .await;
    let second = app
        .emit(
            "task.created",
            serde_json::json!({"id": 2, "title": "second", "secret": "s2"}),
        )
        .await;
    app.emit(
        "task.updated",
        serde_json::json!({"id": 2, "title": "renamed", "secret": "s2"}),
    )
    .await;
    let real = rx.take(3, Duration::from_secs(20)).await;
    let real_second = real
        .iter()
        .find(|r| r.webhook_id() == second.to_string())
        .expect("the second task.created was delivered");
    let shaped = real_second.json();
    assert!(
        shaped["event"] == "task.created"
            && shaped["task"]["title"] == "second"
            && shaped["task"]["secret"] != "s2",
        "the template and the mask as configured: {shaped}"
    );
    let id_s = id.to_string();

    // The latest stored task.created, as its real delivery was, new id.
    let (ok, out, err) = app
        .cli(&["endpoint", "test", &id_s, "--event-type", "task.created"])
        .await;
    assert!(ok, "{out}\n{err}");
    let got = rx.next(Duration::from_secs(20)).await;
    assert_eq!(
        got.body, real_second.body,
        "byte for byte the body of the real delivery"
    );
    let webhook_id = got.webhook_id();
    assert!(
        webhook_id != second.to_string() && webhook_id != first.to_string(),
        "a new webhook-id: {webhook_id}"
    );
    let body = String::from_utf8(got.body.to_vec()).unwrap();
    assert!(
        out.contains("sending task.created (a copy of the latest stored one)")
            && out.contains(&format!("webhook-id {webhook_id}"))
            && out.contains(&format!("body ({} bytes): {body}\n", body.len()))
            && out.contains("HTTP 200 in "),
        "{out}"
    );

    // A sample: the event's data, shaped by the template.
    let sample = std::env::temp_dir().join(format!("{}-sample.json", app.db.name()));
    std::fs::write(&sample, r#"{"id": 9, "title": "from a sample"}"#).unwrap();
    let sample = sample.to_str().unwrap();
    let (ok, out, err) = app
        .cli(&[
            "endpoint",
            "test",
            &id_s,
            "--event-type",
            "task.updated",
            "--sample",
            sample,
        ])
        .await;
    assert!(ok, "{out}\n{err}");
    let got = rx.next(Duration::from_secs(20)).await;
    assert_eq!(
        got.json(),
        serde_json::json!({"event": "task.updated", "task": {"id": 9, "title": "from a sample"}})
    );
    assert!(
        out.contains("sending task.updated (your sample as its data)")
            && out.contains(&format!("webhook-id {}", got.webhook_id())),
        "{out}"
    );

    // The default: the ping, as the standard envelope, not the template.
    let (ok, out, err) = app.cli(&["endpoint", "test", &id_s]).await;
    assert!(ok, "{out}\n{err}");
    let got = rx.next(Duration::from_secs(20)).await;
    let ping = got.json();
    assert_eq!(
        (
            ping["type"].as_str(),
            ping["data"]["test"].as_bool(),
            ping.get("event")
        ),
        (Some("webhooks.test"), Some(true), None),
        "{ping}"
    );
    assert!(
        out.contains("sending webhooks.test (the test ping)")
            && out.contains("not through this endpoint's body template"),
        "{out}"
    );

    // Refusals, each saying why; nothing is sent.
    let not_json = std::env::temp_dir().join(format!("{}-not.json", app.db.name()));
    std::fs::write(&not_json, "title: oops").unwrap();
    for (args, says) in [
        (
            vec!["--event-type", "task.deleted"],
            "no stored 'task.deleted' event that endpoint",
        ),
        (
            vec!["--event-type", "order.created"],
            "does not receive 'order.created' events (event types: task.*)",
        ),
        (vec!["--sample", sample], "--event-type"),
        (
            vec![
                "--event-type",
                "task.created",
                "--sample",
                not_json.to_str().unwrap(),
            ],
            "not JSON",
        ),
    ] {
        let mut all = vec!["endpoint", "test", &id_s];
        all.extend(args.iter().copied());
        let (ok, out, err) = app.cli(&all).await;
        assert!(!ok && err.contains(says), "{args:?}: {out}\n{err}");
    }
    let _ = std::fs::remove_file(sample);
    let _ = std::fs::remove_file(not_json);

    // The API: the same choice; it answers with the body it sends.
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        http.post(format!("{}/api/v1/endpoints/{id}/test", s.admin))
            .bearer_auth(sidecar::ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let answer = post(serde_json::json!({"event_type": "task.updated"}))
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let answer: serde_json::Value = answer.json().await.unwrap();
    let got = rx.next(Duration::from_secs(20)).await;
    assert_eq!(
        (answer["event_type"].as_str(), answer["body"].as_str()),
        (
            Some("task.updated"),
            Some(std::str::from_utf8(&got.body).unwrap())
        )
    );
    assert_eq!(answer["event_id"].as_str(), Some(got.webhook_id().as_str()));
    assert_eq!(got.json()["task"]["title"], "renamed");
    let answer = post(serde_json::json!({"sample": {"id": 3}})).await.unwrap();
    assert_eq!(answer.status(), 400);
    let answer = post(serde_json::json!({"event_type": "order.created", "sample": {"id": 3}}))
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    s.stop().await;
    assert_eq!(rx.count(), 3 + 4, "each test sent once, the refused ones nothing");
}
