//! docs/recipes.md, "Recipes: the five reference apps": each recipe's SQL
//! and `endpoint add` lines, read from that page and run verbatim (the URL
//! variables point at real receivers on 127.0.0.1, hence
//! `--allow-private-targets`), on tables made the way each app's framework
//! makes them, owned by an app role that is a member of `webhooks_app`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use pgwebhooks::sign::{self, SigningKey};
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::support::receiver::Received;
use crate::support::{sidecar, wait, Receiver, TestDb};

const T: Duration = Duration::from_secs(20);
const RECIPES: &str = include_str!("../../docs/recipes.md");

/// One recipe's blocks: its SQL, and its shell commands (continuations
/// joined, comments dropped).
struct Recipe {
    sql: String,
    commands: Vec<String>,
}

fn recipe(heading: &str) -> Recipe {
    let start = RECIPES
        .find(&format!("\n## {heading}"))
        .unwrap_or_else(|| panic!("docs/recipes.md has a recipe \"{heading}\""))
        + 1;
    let rest = &RECIPES[start + 2..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    let (mut sql, mut sh, mut block) = (String::new(), String::new(), None::<&str>);
    for line in rest[..end].lines() {
        match (block, line) {
            (None, "```sql") => block = Some("sql"),
            (None, "```sh") => block = Some("sh"),
            (Some(_), "```") => block = None,
            (Some("sql"), l) => sql.push_str(&format!("{l}\n")),
            (Some(_), l) => sh.push_str(&format!("{l}\n")),
            _ => {}
        }
    }
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in sh.lines() {
        if current.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(l) => current.push_str(&format!("{l}\\\n")),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(
        !sql.is_empty() && !commands.is_empty(),
        "{heading}: a sql and a sh block"
    );
    Recipe { sql, commands }
}

/// Runs a command with `sh`, `pgwebhooks` being the binary under test;
/// returns (ok, stdout, stderr).
fn run_sh(db_url: &str, command: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_pgwebhooks"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("PATH", path)
        .env("DATABASE_URL", db_url)
        .env_remove("PGWEBHOOKS_ENDPOINT_SECRET")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs every `endpoint add` of a recipe; returns their ids in order.
fn add_endpoints(db: &TestDb, r: &Recipe, env: &[(&str, &str)]) -> Vec<i64> {
    r.commands
        .iter()
        .map(|cmd| {
            assert!(cmd.starts_with("pgwebhooks endpoint add "), "{cmd}");
            let cmd = format!("{cmd} --allow-private-targets");
            let (ok, out, err) = run_sh(&db.url(), &cmd, env);
            assert!(ok, "{cmd}\n{out}\n{err}");
            out.lines()
                .last()
                .unwrap()
                .parse()
                .expect("the id on the last line")
        })
        .collect()
}

/// An app role owning `schema`, a member of `webhooks_app`; the recipe's
/// SQL runs as it.
async fn app(db: &TestDb, schema: &str, sql: &str) -> Client {
    let role = format!("{}_{schema}", db.name());
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN IN ROLE webhooks_app; CREATE SCHEMA {schema} AUTHORIZATION {role};"
        ))
        .await
        .unwrap();
    let c = db.client_as(&role).await;
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("the recipe's SQL for {schema} runs as its owner: {e:?}"));
    c
}

async fn secret_of(db: &TestDb, id: i64) -> String {
    db.client()
        .await
        .query_one(
            "SELECT secret FROM webhooks.endpoint_secrets WHERE endpoint_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

pub(crate) fn verify_standard(secret: &str, r: &Received) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    sign::verify(
        &[SigningKey::parse(secret).unwrap()],
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        r.header("webhook-signature"),
        &r.body,
        now,
        60,
    )
    .expect("the Standard Webhooks signature verifies over the received bytes");
}

/// `sha256=<hex HMAC-SHA256 of the body>` keyed by the secret's bytes (a
/// plain secret, as Django's `hmac.new(secret.encode(), body, sha256)`).
fn hex_hmac(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
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

fn is_iso_z(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.ends_with('Z') && humantime::parse_rfc3339(s).is_ok())
}

/// Nothing more arrives: once every event is fanned out and every delivery
/// due is recorded (so each request made has been received), the receiver
/// holds nothing unread.
pub(crate) async fn nothing_more(db: &TestDb, r: &mut Receiver) {
    let c = db.client().await;
    wait::until(
        "every event fanned out and every due delivery recorded",
        T,
        || async {
            let settled: bool = c
                .query_one(
                    "SELECT (SELECT events FROM webhooks.fanout_pending()) = 0
                        AND NOT EXISTS (SELECT 1 FROM webhooks.fanout_batches)
                        AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries
                                         WHERE status = 'delivering'
                                            OR (status = 'pending' AND next_attempt_at <= now()))",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            settled.then_some(())
        },
    )
    .await;
    let extra: Vec<Value> = r.drain().iter().map(|x| x.json()).collect();
    assert!(extra.is_empty(), "unexpected deliveries: {extra:?}");
}

#[tokio::test]
async fn recipe_task_tracker() {
    let db = TestDb::new().await;
    let r = recipe("Task tracker");
    let c = app(&db, "tasks", &r.sql).await;
    let mut hook = Receiver::ok().await;
    let id = add_endpoints(&db, &r, &[("WEBHOOK_URL", &hook.url)])[0];
    let secret = secret_of(&db, id).await;
    let running = sidecar::start(sidecar::config(&db)).await;

    let task_id = "task_1765216530445_che0wi9";
    c.execute(
        r#"INSERT INTO tasks."Task" ("id", "title", "description", "type", "category", "status", "priority",
               "dueDate", "tags", "createdAt", "updatedAt")
           VALUES ($1, 'Example Task', 'Task description', 'TECH', 'WORK', 'OPEN', 'HIGH',
               '2025-12-15 00:00:00', '{webhook,test}', '2025-12-08 17:55:30.444', '2025-12-08 17:55:30.444')"#,
        &[&task_id],
    )
    .await
    .unwrap();
    c.execute(
        r#"UPDATE tasks."Task" SET "priority" = 'URGENT', "updatedAt" = '2025-12-08 18:00:00.001' WHERE "id" = $1"#,
        &[&task_id],
    )
    .await
    .unwrap();
    c.execute(
        r#"UPDATE tasks."Task" SET "status" = 'IN_PROGRESS' WHERE "id" = $1"#,
        &[&task_id],
    )
    .await
    .unwrap();
    c.execute(r#"DELETE FROM tasks."Task" WHERE "id" = $1"#, &[&task_id])
        .await
        .unwrap();

    let mut got = BTreeMap::new();
    for x in hook.take(4, T).await {
        verify_standard(&secret, &x);
        let body = x.json();
        assert_eq!(keys(&body), ["event", "task"]);
        got.insert(body["event"].as_str().unwrap().to_owned(), body["task"].clone());
    }
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "task_created",
            "task_deleted",
            "task_status_changed",
            "task_updated"
        ]
    );
    let created = &got["task_created"];
    assert_eq!(
        *created,
        json!({"id": task_id, "title": "Example Task", "description": "Task description", "type": "TECH",
               "category": "WORK", "status": "OPEN", "priority": "HIGH",
               "dueDate": "2025-12-15T00:00:00.000Z", "tags": ["webhook", "test"], "attachments": [],
               "assigneeId": null,
               "createdAt": "2025-12-08T17:55:30.444Z", "updatedAt": "2025-12-08T17:55:30.444Z"})
    );
    assert_eq!(got["task_updated"]["priority"], "URGENT");
    assert_eq!(got["task_updated"]["updatedAt"], "2025-12-08T18:00:00.001Z");
    assert_eq!(got["task_status_changed"]["status"], "IN_PROGRESS");
    assert_eq!(got["task_deleted"]["status"], "IN_PROGRESS", "the old row");
    assert_eq!(got["task_deleted"]["id"], task_id);
    nothing_more(&db, &mut hook).await;
    running.stop().await;
}

#[tokio::test]
async fn recipe_order_form() {
    let db = TestDb::new().await;
    let r = recipe("Order form");
    let c = app(&db, "orders", &r.sql).await;
    let mut hook = Receiver::ok().await;
    let shared = "order-form-shared-secret";
    add_endpoints(
        &db,
        &r,
        &[("ORDER_WEBHOOK_URL", &hook.url), ("WEBHOOK_SECRET", shared)],
    );
    let running = sidecar::start(sidecar::config(&db)).await;

    let pricing = json!({"amount": 228.0, "currency": "USD", "cadence": "monthly",
        "price_per_user_monthly": 19.0, "price_per_user_yearly": 228.0,
        "breakdown": {"cadence": {"type": "monthly", "price_per_user_monthly": 19.0,
                                  "price_per_user_yearly": 228.0, "label": "Monthly"},
                      "users": {"count": 1, "note": "Pricing is per user"},
                      "total_monthly": 19.0, "total_yearly": 228.0}});
    let request_id: uuid::Uuid = c
        .query_one(
            "INSERT INTO orders.specification_requests (contact_email, company_name, newsletter_name, pricing)
             VALUES ('customer@example.com', 'Example Company Ltd', 'HTC Global Market Intelligence', $1)
             RETURNING request_id",
            &[&pricing],
        )
        .await
        .unwrap()
        .get(0);

    let x = hook.next(T).await;
    let body = x.json();
    assert_eq!(
        keys(&body),
        [
            "company_name",
            "contact_email",
            "event_type",
            "newsletter_name",
            "pricing",
            "product_name",
            "request_id",
            "source_app",
            "status",
            "submitted_at"
        ]
    );
    assert!(is_iso_z(&body["submitted_at"]), "{body}");
    let mut rest = body.clone();
    rest.as_object_mut().unwrap().remove("submitted_at");
    assert_eq!(
        rest,
        json!({"event_type": "order_submitted", "source_app": "pu_observatory",
               "request_id": request_id.to_string(), "status": "pending_review",
               "contact_email": "customer@example.com", "company_name": "Example Company Ltd",
               "newsletter_name": "HTC Global Market Intelligence",
               "product_name": "HTC Global Market Intelligence", "pricing": pricing})
    );
    assert_eq!(x.header("x-webhook-secret"), Some(shared));
    assert_eq!(x.header("user-agent"), Some("PU-Observatory-Webhook/1.0"));
    assert_eq!(x.header("content-type"), Some("application/json"));
    assert_eq!(x.header("webhook-signature"), None, "secret-header style only");
    nothing_more(&db, &mut hook).await;
    running.stop().await;
}

#[tokio::test]
async fn recipe_salon() {
    let db = TestDb::new().await;
    let r = recipe("Salon");
    let c = app(&db, "salon", &r.sql).await;
    let mut hook = Receiver::ok().await;
    let shared = "salon-make-secret-1";
    add_endpoints(
        &db,
        &r,
        &[("MAKE_WEBHOOK_URL", &hook.url), ("MAKE_WEBHOOK_SECRET", shared)],
    );
    let running = sidecar::start(sidecar::config(&db)).await;

    let id: i64 = c
        .query_one(
            "WITH s AS (INSERT INTO salon.salons_salon (name, address) VALUES ('Centro', 'Via Roma 1') RETURNING id),
                  st AS (INSERT INTO salon.salons_stylist (name, salon_id) SELECT 'Grace', id FROM s RETURNING id),
                  sv AS (INSERT INTO salon.salons_service (name, duration_minutes, price)
                         VALUES ('Haircut', 45, 35.00) RETURNING id),
                  cu AS (INSERT INTO salon.customers_customer (name, phone) VALUES ('Ana', '09121234567') RETURNING id)
             INSERT INTO salon.appointments_appointment (status, starts_at, customer_id, stylist_id, service_id)
             SELECT 'pending', '2026-03-01 10:00:00+00', cu.id, st.id, sv.id FROM cu, st, sv RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let x = hook.next(T).await;
    c.execute(
        "UPDATE salon.appointments_appointment SET status = 'confirmed' WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    let y = hook.next(T).await;

    for (x, event) in [(&x, "created"), (&y, "confirmed")] {
        assert_eq!(
            x.header("x-make-signature"),
            Some(hex_hmac(shared, &x.body).as_str()),
            "X-Make-Signature over the received bytes"
        );
        assert_eq!(x.header("x-webhook-signature"), None, "renamed, not sent twice");
        assert_eq!(x.header("webhook-signature"), None, "sha256-hex style only");
        assert_eq!(
            x.header("idempotency-key"),
            Some(format!("appointment:{id}:{event}").as_str())
        );
        let body = x.json();
        assert_eq!(
            keys(&body),
            ["appointment", "customer", "event", "salon", "service", "stylist"]
        );
        assert_eq!(body["event"], event);
        let status = if event == "created" {
            "pending"
        } else {
            "confirmed"
        };
        assert_eq!(
            body["appointment"],
            json!({"id": id, "status": status, "starts_at": "2026-03-01T10:00:00+00:00"})
        );
        assert_eq!(body["customer"]["name"], "Ana");
        assert_eq!(
            body["customer"]["phone"], "0912***4567",
            "masked as the salon masks it"
        );
        assert_eq!(body["stylist"]["name"], "Grace");
        assert_eq!(body["salon"]["name"], "Centro");
        assert_eq!(body["salon"]["address"], "Via Roma 1");
        assert_eq!(body["service"]["name"], "Haircut");
        assert_eq!(body["service"]["price"], 35.0);
        assert_eq!(body["service"]["duration_minutes"], 45);
    }
    let raw = String::from_utf8_lossy(&x.body);
    assert!(
        !raw.contains("09121234567"),
        "the phone never leaves unmasked: {raw}"
    );
    nothing_more(&db, &mut hook).await;
    running.stop().await;
}

#[tokio::test]
async fn recipe_learning_platform() {
    let db = TestDb::new().await;
    let r = recipe("Learning platform");
    let c = app(&db, "learning", &r.sql).await;
    let mut hook = Receiver::ok().await;
    let id = add_endpoints(&db, &r, &[("MAKE_WEBHOOK_ERRORS_URL", &hook.url)])[0];
    let secret = secret_of(&db, id).await;
    let running = sidecar::start(sidecar::config(&db)).await;

    for (n, severity) in ["LOW", "HIGH", "MEDIUM", "CRITICAL"].iter().enumerate() {
        c.execute(
            r#"INSERT INTO learning."ErrorLog" ("id", "errorType", "errorMessage", "stackTrace", "userId", "url",
                   "userAgent", "severity", "createdAt")
               VALUES ($1, 'SERVER', 'quiz failed to load', 'at load()', 'user_1', 'https://example.com/quiz',
                   'Mozilla/5.0', $2::text::learning."ErrorSeverity", '2024-01-01 00:00:00')"#,
            &[&format!("err_{n}"), severity],
        )
        .await
        .unwrap();
    }
    let mut got = Vec::new();
    for x in hook.take(2, T).await {
        verify_standard(&secret, &x);
        let body = x.json();
        assert_eq!(keys(&body), ["event_id", "payload", "sent_at", "type"]);
        assert_eq!(body["type"], "error.occurred");
        assert_eq!(body["event_id"], x.webhook_id());
        assert!(is_iso_z(&body["sent_at"]), "{body}");
        got.push(body["payload"].clone());
    }
    got.sort_by_key(|p| p["errorId"].as_str().unwrap().to_owned());
    let expect = |id: &str, severity: &str| {
        json!({"errorId": id, "errorType": "SERVER", "errorMessage": "quiz failed to load",
               "severity": severity, "url": "https://example.com/quiz", "userId": "user_1",
               "stackTrace": "at load()", "userAgent": "Mozilla/5.0",
               "createdAt": "2024-01-01T00:00:00.000Z"})
    };
    assert_eq!(got, [expect("err_1", "HIGH"), expect("err_3", "CRITICAL")]);
    nothing_more(&db, &mut hook).await;
    running.stop().await;
}

#[tokio::test]
async fn recipe_multi_tenant_crm() {
    let db = TestDb::new().await;
    let r = recipe("Multi-tenant CRM");
    let c = app(&db, "crm", &r.sql).await;
    let (mut hook_a, mut hook_b) = (Receiver::ok().await, Receiver::ok().await);
    let (tenant_a, tenant_b) = (
        "5f0c4b1e-8d2a-4c3b-9e7f-0a1b2c3d4e5f",
        "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
    );
    let ids = add_endpoints(
        &db,
        &r,
        &[
            ("TENANT_A_WEBHOOK_URL", &hook_a.url),
            ("TENANT_A", tenant_a),
            ("TENANT_B_WEBHOOK_URL", &hook_b.url),
            ("TENANT_B", tenant_b),
        ],
    );
    let (a_secret, b_secret) = (secret_of(&db, ids[0]).await, secret_of(&db, ids[1]).await);
    let running = sidecar::start(sidecar::config(&db)).await;

    let message = |tenant: &str, direction: &str, status: &str| {
        let (tenant, direction, status) = (tenant.to_owned(), direction.to_owned(), status.to_owned());
        let c = &c;
        async move {
            let id: uuid::Uuid = c
                .query_one(
                    r#"INSERT INTO crm."message" ("tenantId", "conversationId", "direction", "content", "status")
                       VALUES ($1::text::uuid, gen_random_uuid(), $2, 'hello', $3) RETURNING "id""#,
                    &[&tenant, &direction, &status],
                )
                .await
                .unwrap()
                .get(0);
            id
        }
    };
    let set_status = |id: uuid::Uuid, status: &'static str| {
        let c = &c;
        async move {
            c.execute(
                r#"UPDATE crm."message" SET "status" = $2 WHERE "id" = $1"#,
                &[&id, &status],
            )
            .await
            .unwrap();
        }
    };
    // Tenant A: one inbound (delivered to A), one outbound sent (filtered
    // out, and message.sent is not A's pattern).
    let a_in = message(tenant_a, "inbound", "received").await;
    let a_out = message(tenant_a, "outbound", "queued").await;
    set_status(a_out, "sent").await;
    // Tenant B: every message event.
    let b_in = message(tenant_b, "inbound", "received").await;
    set_status(b_in, "read").await;

    let x = hook_a.next(T).await;
    verify_standard(&a_secret, &x);
    let body = x.json();
    assert_eq!(keys(&body), ["data", "id", "tenant_id", "timestamp", "type"]);
    assert_eq!(body["type"], "message.new");
    assert_eq!(body["tenant_id"], tenant_a);
    assert_eq!(body["data"]["id"], a_in.to_string());
    assert_eq!(body["data"]["tenantId"], tenant_a);
    assert_eq!(body["data"]["direction"], "inbound");

    let mut got = BTreeMap::new();
    for x in hook_b.take(2, T).await {
        verify_standard(&b_secret, &x);
        let body = x.json();
        assert_eq!(body["tenant_id"], tenant_b);
        assert_eq!(body["data"]["id"], b_in.to_string());
        got.insert(body["type"].as_str().unwrap().to_owned(), body);
    }
    let types: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(types, ["message.new", "message.read"]);
    assert_eq!(got["message.read"]["previous"]["status"], "received");

    // Every tenant-A event was fanned out before we look for strays.
    wait::until("tenant A's events fanned out", T, || async {
        let n: i64 = db
            .client()
            .await
            .query_one("SELECT count(*) FROM webhooks.deliveries", &[])
            .await
            .unwrap()
            .get(0);
        (n == 3).then_some(())
    })
    .await;
    nothing_more(&db, &mut hook_a).await;
    nothing_more(&db, &mut hook_b).await;

    // "Create a test webhook and verify delivery".
    let (url, id) = (db.url(), ids[0]);
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || run_sh(&url, &format!("pgwebhooks endpoint test {id}"), &[]))
            .await
            .unwrap();
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("HTTP 200 in "), "{out}");
    let x = hook_a.next(T).await;
    verify_standard(&a_secret, &x);
    assert_eq!(x.json()["type"], "webhooks.test");
    assert_eq!(x.json()["data"]["endpoint"]["id"], id);
    nothing_more(&db, &mut hook_b).await;
    running.stop().await;
}
