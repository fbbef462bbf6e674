//! The README's "Your existing database in ten minutes", run as written: an
//! app role owning a Prisma table `"Task"` and a Django table `shop_order`
//! (made here as those ORMs make them), then every block of the section in
//! order. SQL runs as the role its first line names (`-- as the superuser`,
//! `-- as app`); shell lines run with `sh`, `pgwebhooks` being the binary
//! under test, `pgwebhooks run` as a process of its own. What the test
//! changes, and why:
//! - the role names `app` and `pgwebhooks_run` get this database's prefix
//!   (roles are shared by every test database of the cluster);
//! - `postgres://…@db.example.com:5432/app` points at this test's database
//!   (the superuser's URL is the harness's own);
//! - the Make.com address becomes a receiver on 127.0.0.1 with `--make`
//!   (which gives it the rules a `hook.*.make.com` address gets), so every
//!   command runs with `PGWEBHOOKS_ALLOW_PRIVATE_TARGETS=true`, as the
//!   README says for a receiver on your machine;
//! - `pgwebhooks run` listens on 127.0.0.1 port 0 instead of port 8080, and
//!   `curl` (a shell function here that reports its arguments) is sent to
//!   that port by the test's HTTP client.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::Client;

use crate::recipes::{nothing_more, verify_standard};
use crate::support::sidecar::Process;
use crate::support::{wait, Receiver, TestDb};

const T: Duration = Duration::from_secs(20);
const README: &str = include_str!("../../README.md");
const MAKE_URL: &str = "https://hook.eu1.make.com/your-webhook-id";

enum Block {
    /// The role its first line names, and the SQL.
    Sql(String, String),
    /// Commands, continuations joined, comment lines dropped.
    Sh(Vec<String>),
}

/// The section's code blocks, in order.
fn ten_minutes() -> Vec<Block> {
    let start = README
        .find("\n## Your existing database in ten minutes\n")
        .expect("the README has \"Your existing database in ten minutes\"")
        + 1;
    let rest = &README[start..];
    let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let Some(lang) = line.strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        match lang {
            "sql" => {
                let role = body[0]
                    .strip_prefix("-- as ")
                    .unwrap_or_else(|| panic!("an SQL block says as whom it runs: {}", body[0]));
                let role = role.split(':').next().unwrap().trim().to_owned();
                blocks.push(Block::Sql(role, body[1..].join("\n")));
            }
            "sh" => {
                let mut commands = Vec::new();
                let mut current = String::new();
                for l in body {
                    if current.is_empty() && (l.trim().is_empty() || l.trim_start().starts_with('#')) {
                        continue;
                    }
                    match l.strip_suffix('\\') {
                        Some(l) => current.push_str(&format!("{l}\\\n")),
                        None => {
                            current.push_str(l);
                            commands.push(std::mem::take(&mut current));
                        }
                    }
                }
                blocks.push(Block::Sh(commands));
            }
            other => panic!("a ```{other} block in the ten minutes"),
        }
    }
    blocks
}

/// `word` replaced where it stands alone (not inside `webhooks_app`).
fn replace_word(text: &str, word: &str, by: &str) -> String {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(word) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + word.len()..].chars().next();
        out.push_str(&rest[..i]);
        if before.is_some_and(is_word) || after.is_some_and(is_word) {
            out.push_str(word);
        } else {
            out.push_str(by);
        }
        rest = &rest[i + word.len()..];
    }
    out.push_str(rest);
    out
}

struct Roles {
    app: String,
    run: String,
}

impl Roles {
    fn apply(&self, text: &str) -> String {
        replace_word(&replace_word(text, "pgwebhooks_run", &self.run), "app", &self.app)
    }
}

/// Points `postgres://user:password@db.example.com:5432/app` at the test's
/// database: the superuser's (`postgres`) is the harness's own URL, another
/// role keeps the README's user and password.
fn local_urls(db: &TestDb, command: &str) -> String {
    command
        .split(' ')
        .map(|word| {
            let Some((head, url)) = word.split_once("postgres://") else {
                return word.to_owned();
            };
            let (credentials, place) = url.split_once('@').expect("user@host in the README's URL");
            assert_eq!(place, "db.example.com:5432/app", "{word}");
            let user = credentials.split(':').next().unwrap();
            if user == "postgres" {
                return format!("{head}{}", db.url());
            }
            let (host, port) = (db.config().get_hosts()[0].clone(), db.config().get_ports()[0]);
            let host = match host {
                tokio_postgres::config::Host::Tcp(h) => h,
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            format!("{head}postgres://{credentials}@{host}:{port}/{}", db.name())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `sh -c command` with `env`, the binary under test first on `PATH`.
fn sh(command: &str, env: &BTreeMap<String, String>) -> Command {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_pgwebhooks"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(command)
        .env("PATH", path)
        .env_remove("DATABASE_URL")
        .env_remove("PGWEBHOOKS_ENDPOINT_SECRET")
        .env_remove("PGWEBHOOKS_INBOUND_SECRET")
        .env("PGWEBHOOKS_ALLOW_PRIVATE_TARGETS", "true")
        .envs(env)
        .stdin(Stdio::null());
    c
}

/// `pgwebhooks run`, started as the README starts it but on a free
/// loopback port; returns the process and its inbound server's base URL.
fn start_run(command: &str, env: &BTreeMap<String, String>) -> (Process, String) {
    let mut child = sh(&format!("exec {command}"), env)
        .env("PGWEBHOOKS_LISTEN", "127.0.0.1:0")
        .env("PGWEBHOOKS_ADMIN_LISTEN", "127.0.0.1:0")
        .env("PGWEBHOOKS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pgwebhooks run");
    let stderr = child.stderr.take().unwrap();
    let process = Process(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("pgwebhooks run: {line}");
            if let Some((_, addr)) = line.split_once("inbound server listening addr=") {
                let _ = tx.send(addr.split_whitespace().next().unwrap().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(T)
        .expect("`pgwebhooks run` says where it listens");
    (process, format!("http://{addr}"))
}

/// The arguments the README's `curl` line passes, as the shell expands them.
fn curl_arguments(command: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    let script = format!("curl() {{ for a in \"$@\"; do printf '%s\\0' \"$a\"; done; }}\n{command}");
    let out = sh(&script, env).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(str::to_owned)
        .collect()
}

/// Sends what `curl -s URL -H 'k: v' … -d BODY` sends (a POST, with curl's
/// content type for `-d`), to `base` instead of the URL's host and port.
async fn curl(args: &[String], base: &str) -> (u16, Value) {
    let mut url = None;
    let mut headers = Vec::new();
    let mut body = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-s" => {}
            "-H" => headers.push(it.next().unwrap().clone()),
            "-d" => body = Some(it.next().unwrap().clone()),
            a if a.starts_with("http://127.0.0.1:8080/") => {
                url = Some(a.replace("http://127.0.0.1:8080", base))
            }
            other => panic!("a curl argument this test does not know: {other}"),
        }
    }
    pgwebhooks::deliver::http::install_crypto_provider();
    let mut req = reqwest::Client::new()
        .post(url.expect("a URL on 127.0.0.1:8080"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.expect("-d"));
    for h in headers {
        let (k, v) = h.split_once(':').unwrap();
        req = req.header(k.trim(), v.trim());
    }
    let answer = req.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap())
}

/// The existing app: a login role that owns the database (as an ORM's
/// role does), with a Prisma table and a Django table in schema public.
async fn existing_app(db: &TestDb, roles: &Roles) -> Client {
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {app} LOGIN PASSWORD 'app-secret'; ALTER DATABASE {db} OWNER TO {app};",
            app = roles.app,
            db = db.name()
        ))
        .await
        .unwrap();
    let app = db.client_as(&roles.app).await;
    app.batch_execute(
        r#"-- what `prisma migrate` makes of `model Task`
        CREATE TABLE "Task" (
            "id" TEXT NOT NULL, "title" TEXT NOT NULL, "description" TEXT, "type" TEXT NOT NULL,
            "category" TEXT, "status" TEXT NOT NULL DEFAULT 'OPEN', "priority" TEXT NOT NULL,
            "dueDate" TIMESTAMP(3), "tags" TEXT[], "attachments" JSONB NOT NULL DEFAULT '[]', "assigneeId" TEXT,
            "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, "updatedAt" TIMESTAMP(3) NOT NULL,
            CONSTRAINT "Task_pkey" PRIMARY KEY ("id"));
        -- what `manage.py migrate` makes of app shop's `class Order`
        CREATE TABLE "shop_order" ("id" bigint NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY,
            "customer_email" varchar(254) NOT NULL, "total" numeric(10, 2) NOT NULL,
            "status" varchar(20) NOT NULL, "created_at" timestamp with time zone NOT NULL);"#,
    )
    .await
    .unwrap();
    app
}

#[tokio::test]
#[cfg_attr(
    not(have_openssl),
    ignore = "the README makes the inbound secret with openssl (apt-get install openssl, then touch build.rs); .ci/run installs it"
)]
async fn the_readme_ten_minutes_run_as_written() {
    let db = TestDb::new().await;
    let roles = Roles {
        app: format!("{}_app", db.name()),
        run: format!("{}_run", db.name()),
    };
    let app = existing_app(&db, &roles).await;
    let superuser = db.client().await;
    let mut hook = Receiver::ok().await;
    let mut env = BTreeMap::new();
    let mut running = None;
    let mut callbacks = Vec::new();

    let blocks = ten_minutes();
    assert_eq!(
        blocks.len(),
        8,
        "install, grants, watch, run, a task, handler, route, curl"
    );
    for block in blocks {
        match block {
            Block::Sql(role, sql) => {
                let client = match role.as_str() {
                    "the superuser" => &superuser,
                    "app" => &app,
                    other => panic!("an SQL block as {other}"),
                };
                client
                    .batch_execute(&roles.apply(&sql))
                    .await
                    .unwrap_or_else(|e| panic!("as {role}:\n{sql}\n{e:?}"));
            }
            Block::Sh(commands) => {
                for command in commands {
                    let command = roles
                        .apply(&local_urls(&db, &command))
                        .replace(MAKE_URL, &format!("{} --make", hook.url));
                    if command.starts_with("cargo install --path .") {
                        continue; // the binary under test is installed
                    } else if let Some(assignment) = command.strip_prefix("export ") {
                        let name = assignment.split('=').next().unwrap().to_owned();
                        let out = sh(&format!("{command}\nprintf '%s' \"${name}\""), &env)
                            .output()
                            .unwrap();
                        assert!(out.status.success(), "{command}");
                        let value = String::from_utf8(out.stdout).unwrap();
                        assert!(!value.is_empty(), "{command}");
                        env.insert(name, value);
                    } else if command.starts_with("pgwebhooks run") {
                        running = Some(start_run(&command, &env));
                    } else if command.starts_with("curl ") {
                        callbacks.push(curl_arguments(&command, &env));
                    } else {
                        assert!(command.starts_with("pgwebhooks ") || command.contains(" pgwebhooks "));
                        let out = sh(&command, &env).output().unwrap();
                        assert!(
                            out.status.success(),
                            "{command}\n{}\n{}",
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
            }
        }
    }
    let (_process, base) = running.expect("the README runs `pgwebhooks run`");
    assert_eq!(
        env.get("DATABASE_URL").map(|u| u.contains(&roles.run)),
        Some(true),
        "the sidecar logs in as pgwebhooks_run"
    );

    // The first webhook: Make-shaped, signed.
    let x = hook.next(T).await;
    let secret: String = superuser
        .query_one(
            "SELECT s.secret FROM webhooks.endpoint_secrets s JOIN webhooks.endpoints e ON e.id = s.endpoint_id
              WHERE e.make",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    verify_standard(&secret, &x);
    let body = x.json();
    assert_eq!(body["event"], "task_created", "{body}");
    assert_eq!(body["task"]["id"], "t1", "{body}");
    assert_eq!(body["task"]["status"], "OPEN", "{body}");
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["event", "task"]);

    // The callback, once the route is served (routes are read again at
    // most once a second); then the same callback again.
    let [callback] = &callbacks[..] else {
        panic!("one curl line: {callbacks:?}")
    };
    let (status, answer) = wait::until("the route task-status is served", T, || async {
        let (status, answer) = curl(callback, &base).await;
        (status != 404).then_some((status, answer))
    })
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["taskId"], "t1", "{answer}");
    let (status, again) = curl(callback, &base).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &Value::Bool(true)),
        "{again}"
    );
    let (status, done): (String, i64) = {
        let r = superuser
            .query_one(
                r#"SELECT (SELECT "status" FROM "Task" WHERE "id" = 't1'),
                          (SELECT count(*) FROM webhooks.inbound WHERE route = 'task-status')"#,
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((status.as_str(), done), ("DONE", 1), "applied once");

    // The change the callback made is an event, and is not echoed to Make.
    let origin: Option<String> = superuser
        .query_one(
            "SELECT origin FROM webhooks.events WHERE event_type = 'task_status_changed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(origin.as_deref(), Some("inbound/task-status"));
    nothing_more(&db, &mut hook).await;

    // The Django line: order.created, then order.<status>.
    app.batch_execute(
        "INSERT INTO shop_order (customer_email, total, status, created_at) VALUES ('a@example.com', 9.5, 'new', now());
         UPDATE shop_order SET status = 'paid';",
    )
    .await
    .unwrap();
    let types: Vec<String> = superuser
        .query(
            "SELECT event_type FROM webhooks.events WHERE event_type LIKE 'order.%' ORDER BY occurred_at, event_type",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, ["order.created", "order.paid"]);
}
