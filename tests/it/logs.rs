//! What `pgwebhooks run` says at the default level (#14.4): failures at
//! `warn`, once per endpoint and kind per minute, with the endpoint's name,
//! its redacted URL, the reason and a count; one line per misconfiguration
//! at start-up; and `status` showing the last failure's reason. The process
//! logs JSON (PGWEBHOOKS_LOG_FORMAT) so lines are read field by field.

use std::io::BufRead;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::sidecar::{self, endpoint, statuses, Process};
use crate::support::{wait, Receiver, Reply, TestDb};

const T: Duration = Duration::from_secs(30);
const INBOUND_SECRET: &str = "inbound-secret-never-logged-0123";

/// A `pgwebhooks run` whose stderr is collected line by line.
struct Logged {
    _process: Process,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Logged {
    /// JSON logs, the admin listener on any free port, unless `cmd` sets
    /// `PGWEBHOOKS_LOG_FORMAT` or `PGWEBHOOKS_ADMIN_LISTEN` itself.
    fn spawn(mut cmd: std::process::Command) -> Logged {
        for (key, default) in [
            ("PGWEBHOOKS_LOG_FORMAT", "json"),
            ("PGWEBHOOKS_ADMIN_LISTEN", "127.0.0.1:0"),
        ] {
            if !cmd.get_envs().any(|(k, _)| k == key) {
                cmd.env(key, default);
            }
        }
        let mut child = cmd
            .env("PGWEBHOOKS_LISTEN", "127.0.0.1:0")
            .env("PGWEBHOOKS_TIMEOUT", "1s")
            .env("PGWEBHOOKS_LEASE", "5s")
            .env("PGWEBHOOKS_POLL_INTERVAL", "200ms")
            .env("PGWEBHOOKS_RETRY_SCHEDULE", "100ms,100ms")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pgwebhooks run");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Logged {
            _process: Process(child),
            lines,
        }
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The `warn` (and `info`) lines' fields so far.
    fn fields(&self, level: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["level"] == level)
            .map(|v| v["fields"].clone())
            .collect()
    }

    /// Warn lines about `endpoint_id` whose message starts with `says`.
    fn about(&self, endpoint_id: i64, says: &str) -> Vec<Value> {
        self.fields("WARN")
            .into_iter()
            .filter(|f| f["endpoint_id"] == endpoint_id)
            .filter(|f| f["message"].as_str().is_some_and(|m| m.starts_with(says)))
            .collect()
    }

    async fn wait_for(&self, what: &str, endpoint_id: i64, says: &str) -> Value {
        wait::until(what, T, || async {
            self.about(endpoint_id, says).into_iter().next()
        })
        .await
    }
}

async fn count(c: &tokio_postgres::Client, sql: &str, id: i64) -> i64 {
    c.query_one(sql, &[&id]).await.unwrap().get(0)
}

fn redacted_port(url: &str) -> String {
    // http://127.0.0.1:PORT/hook/… → http://127.0.0.1:PORT/…
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    format!("http://{host}/…")
}

#[tokio::test]
async fn failures_are_said_once_per_endpoint_and_kind_with_name_redacted_url_reason_and_count() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let failing = Receiver::start(|_| Reply::status(503).body("maintenance window, back soon")).await;
    let gone = Receiver::start(|_| Reply::status(410)).await;
    // Paths and queries stand for credentials (a Make URL is its own token).
    let billing_url = format!("{}/s3cr3t-path?token=t0ps3cret", failing.url);
    let billing = endpoint(&c, &billing_url, &["*"], "name = 'billing'").await;
    // Refused before any connection even with private targets allowed.
    let metadata = endpoint(
        &c,
        "http://169.254.169.254/latest/meta-data/s3cr3t-path?token=t0ps3cret",
        &["*"],
        "name = 'metadata'",
    )
    .await;
    let make_url = format!("{}/s3cr3t-path", gone.url);
    let make = endpoint(&c, &make_url, &["*"], "name = 'scenario', make = true").await;

    let run = Logged::spawn({
        let mut cmd = sidecar::run_command(&db.url());
        cmd.env("PGWEBHOOKS_INBOUND_SECRET", INBOUND_SECRET);
        cmd
    });
    c.execute(
        "SELECT webhooks.emit('order.created', jsonb_build_object('n', g)) FROM generate_series(1, 30) g",
        &[],
    )
    .await
    .unwrap();

    // Every outcome recorded (lines are said as outcomes reach the
    // recorder, before they are written): 90 failed attempts of billing,
    // 30 dead letters, 30 refused, one pause.
    wait::until("every outcome recorded", T, || async {
        let done = statuses(&c, billing).await == [("dead".into(), 30)]
            && statuses(&c, metadata).await == [("failed".into(), 30)]
            && count(
                &c,
                "SELECT count(*) FROM webhooks.endpoints WHERE id = $1 AND NOT enabled",
                make,
            )
            .await
                == 1;
        done.then_some(())
    })
    .await;
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM webhooks.attempts WHERE endpoint_id = $1",
            billing
        )
        .await,
        90
    );
    let retrying = run
        .wait_for(
            "the 503 line",
            billing,
            "deliveries failing: the endpoint answers",
        )
        .await;
    let dead = run
        .wait_for("the dead-letter line", billing, "deliveries dead")
        .await;
    let refused = run
        .wait_for("the refused line", metadata, "deliveries refused")
        .await;
    let paused = run.wait_for("the pause line", make, "endpoint paused").await;

    assert_eq!(retrying["endpoint"], "billing");
    assert_eq!(retrying["url"], redacted_port(&failing.url).as_str());
    assert_eq!(retrying["code"], "503");
    assert_eq!(retrying["count"], 1);
    let reason = retrying["reason"].as_str().unwrap();
    assert!(
        reason.contains("HTTP 503") && reason.contains("maintenance window"),
        "{reason}"
    );

    assert_eq!(dead["endpoint"], "billing");
    let reason = dead["reason"].as_str().unwrap();
    assert!(
        reason.contains("after 3 attempts") && reason.contains("HTTP 503"),
        "{reason}"
    );

    assert_eq!(refused["endpoint"], "metadata");
    assert_eq!(refused["url"], "http://169.254.169.254/…");
    assert_eq!(refused["code"], "none");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("169.254.169.254 is a cloud metadata address"),
        "{reason}"
    );

    assert_eq!(paused["endpoint"], "scenario");
    assert_eq!(paused["code"], "410");
    assert!(
        paused["reason"].as_str().unwrap().contains("410")
            && paused["reason"]
                .as_str()
                .unwrap()
                .contains("no scenario is listening"),
        "{paused}"
    );

    // At most once per minute per endpoint and kind, however many failed.
    for (id, says, n) in [
        (billing, "deliveries failing", 90),
        (billing, "deliveries dead", 30),
        (metadata, "deliveries refused", 30),
    ] {
        let lines = run.about(id, says);
        assert_eq!(lines.len(), 1, "{n} occurrences, one line: {lines:?}");
    }
    assert!(
        run.about(metadata, "deliveries dead").is_empty(),
        "refused is not retried"
    );
    let text = run.text();
    for secret in ["s3cr3t", "t0ps3cret", "token=", sidecar::SECRET, INBOUND_SECRET] {
        assert!(!text.contains(secret), "{secret:?} logged:\n{text}");
    }
    assert!(!text.contains("Some("), "debug formatting leaked:\n{text}");
}

#[tokio::test]
async fn start_up_says_each_misconfiguration_and_status_the_last_failure() {
    let db = TestDb::new().await;
    let c = db.client().await;

    // No inbound secret, no endpoints: two lines, and nothing else at warn.
    let bare = Logged::spawn({
        let mut cmd = sidecar::run_command(&db.url());
        cmd.env_remove("PGWEBHOOKS_INBOUND_SECRET");
        cmd
    });
    let said = |run: &Logged, text: &str| {
        run.fields("WARN")
            .iter()
            .any(|f| f["message"].as_str().is_some_and(|m| m.contains(text)))
    };
    wait::until("both start-up warnings", T, || async {
        (said(
            &bare,
            "no inbound secret configured: every callback will be refused",
        ) && said(&bare, "set PGWEBHOOKS_INBOUND_SECRET")
            && said(
                &bare,
                "no endpoints: events are recorded but nothing is delivered",
            )
            && said(&bare, "pgwebhooks endpoint add"))
        .then_some(())
    })
    .await;
    drop(bare);

    // A private target while private targets are refused: said at start-up,
    // and each delivery refused before any connection is made (nothing
    // leaves loopback: 10.0.0.1 is never connected to).
    let intranet = endpoint(
        &c,
        "http://10.0.0.1/private-s3cr3t?token=t0ps3cret",
        &["*"],
        "name = 'intranet'",
    )
    .await;
    let run = Logged::spawn({
        let mut cmd = sidecar::run_command(&db.url());
        cmd.env("PGWEBHOOKS_ALLOW_PRIVATE_TARGETS", "false")
            .env("PGWEBHOOKS_INBOUND_SECRET", INBOUND_SECRET);
        cmd
    });
    wait::until("the start-up line about the private target", T, || async {
        said(
            &run,
            &format!("endpoint {intranet} (intranet, http://10.0.0.1/…): every delivery will be refused"),
        )
        .then_some(())
    })
    .await;
    assert!(!said(&run, "no inbound secret") && !said(&run, "no endpoints"));
    c.execute("SELECT webhooks.emit('order.created', '{}')", &[])
        .await
        .unwrap();
    let line = run
        .wait_for("the refused line", intranet, "deliveries refused")
        .await;
    assert_eq!(line["url"], "http://10.0.0.1/…");
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("10.0.0.1 is a private address"),
        "{line}"
    );
    wait::until("the refused delivery recorded", T, || async {
        (statuses(&c, intranet).await == [("failed".into(), 1)]).then_some(())
    })
    .await;
    let text = run.text();
    assert!(!text.contains("s3cr3t") && !text.contains("t0ps3cret"), "{text}");

    // `status` shows the last failure's reason, redacted.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
        .arg("status")
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let last = out
        .lines()
        .find(|l| l.contains("last failure"))
        .unwrap_or_else(|| panic!("no last failure in:\n{out}"));
    assert!(
        last.contains("ago (") && last.contains("refused: 10.0.0.1 is a private address"),
        "{out}"
    );
    assert!(!out.contains("s3cr3t") && !out.contains("t0ps3cret"), "{out}");
}

/// A flush that waits on the database (here: on a lock a test transaction
/// holds on webhooks.deliveries, with the URL's own `lock_timeout=0` and
/// `statement_timeout=0`, which win over ours) is said at `warn` every few seconds with the pool's
/// state, and the outcomes are recorded once it can go on.
#[tokio::test]
async fn a_recorder_waiting_on_the_database_says_so() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut rx = Receiver::ok().await;
    let id = endpoint(&c, &rx.url, &["*"], "").await;
    let url = format!(
        "{}?options=-c%20lock_timeout%3D0%20-c%20statement_timeout%3D0",
        db.url()
    );
    let run = Logged::spawn(sidecar::run_command(&url));
    // Up and delivering: one event goes through first.
    c.batch_execute("SELECT webhooks.emit('first', '{}')")
        .await
        .unwrap();
    rx.next(T).await;
    wait::until("the first recorded", T, || async {
        (statuses(&c, id).await == [("delivered".to_owned(), 1)]).then_some(())
    })
    .await;
    let mut blocker = db.client().await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE webhooks.deliveries IN SHARE MODE")
        .await
        .unwrap();
    c.batch_execute("SELECT webhooks.emit('held.up', '{}')")
        .await
        .unwrap();
    rx.next(T).await;
    let said = wait::until("the slow flush said at warn", T, || async {
        run.fields("WARN").into_iter().find(|f| {
            f["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("recording outcomes is taking long"))
        })
    })
    .await;
    assert_eq!(said["pending"], 1, "{said}");
    assert!(said["pool_size"].as_u64().is_some(), "{said}");
    tx.rollback().await.unwrap();
    wait::until("recorded once the lock is gone", T, || async {
        (statuses(&c, id).await == [("delivered".to_owned(), 2)]).then_some(())
    })
    .await;
}

/// Issue #24: a replica's flush no longer waits on another session's lock
/// for longer than `lock_timeout` (a fifth of the lease): it gives up, says
/// why at `warn`, keeps its outcomes and records them once it can.
#[tokio::test]
async fn a_recorder_blocked_by_a_lock_gives_up_after_the_lock_timeout_and_retries() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut rx = Receiver::ok().await;
    let id = endpoint(&c, &rx.url, &["*"], "").await;
    let run = Logged::spawn(sidecar::run_command(&db.url()));
    c.batch_execute("SELECT webhooks.emit('first', '{}')")
        .await
        .unwrap();
    rx.next(T).await;
    wait::until("the first recorded", T, || async {
        (statuses(&c, id).await == [("delivered".to_owned(), 1)]).then_some(())
    })
    .await;
    let mut blocker = db.client().await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE webhooks.deliveries IN SHARE MODE")
        .await
        .unwrap();
    c.batch_execute("SELECT webhooks.emit('held.up', '{}')")
        .await
        .unwrap();
    rx.next(T).await;
    let said = wait::until("the flush's lock timeout said at warn", T, || async {
        run.fields("WARN").into_iter().find(|f| {
            f["message"].as_str() == Some("recording outcomes failed; retrying")
                && f["error"].as_str().is_some_and(|e| e.contains("lock timeout"))
        })
    })
    .await;
    assert_eq!(said["pending"], 1, "{said}");
    tx.rollback().await.unwrap();
    wait::until("recorded once the lock is gone", T, || async {
        (statuses(&c, id).await == [("delivered".to_owned(), 2)]).then_some(())
    })
    .await;
}

/// L6 (security audit 2): a receiver's answer with ESC, NUL and newlines
/// once reached the text log raw: it could colour the operator's terminal
/// and forge a log line. Its control characters are now escaped.
#[tokio::test]
async fn receiver_text_reaches_the_text_log_with_its_control_characters_escaped() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let forged = "x\r\n2026-12-06T00:00:00Z ERROR pgwebhooks::admin: FORGED\u{1b}[31mRED\u{1b}[0m\0nul";
    let hostile = Receiver::start(move |_| Reply::status(422).body(forged)).await;
    let id = endpoint(&c, &hostile.url, &["*"], "name = 'hostile'").await;
    let run = Logged::spawn({
        let mut cmd = sidecar::run_command(&db.url());
        cmd.env("PGWEBHOOKS_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .env("PGWEBHOOKS_INBOUND_SECRET", INBOUND_SECRET);
        cmd
    });
    c.execute("SELECT webhooks.emit('hostile.answer', '{}')", &[])
        .await
        .unwrap();
    let line = wait::until("the rejection said in the text log", T, || async {
        let text = run.text();
        text.lines()
            .find(|l| {
                l.contains("deliveries failed: the endpoint rejected them")
                    && l.contains(&format!("endpoint_id={id}"))
            })
            .map(str::to_owned)
    })
    .await;
    assert!(line.contains("FORGED\\u{1b}[31mRED\\u{1b}[0m\\u{0}nul"), "{line}");
    let text = run.text();
    assert!(
        !text.contains('\u{1b}') && !text.contains('\0'),
        "raw control characters logged: {text:?}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("2026-12-06T00:00:00Z")),
        "a forged line: {text}"
    );
}

/// Without an admin token the admin listener would only refuse everything,
/// and its port may be another tool's (127.0.0.1:9090 is Prometheus's):
/// `run` starts without binding it, says once how to enable it, and
/// delivers. With a token, a taken port still stops it.
#[tokio::test]
async fn without_an_admin_token_run_starts_without_the_admin_listener_even_on_a_taken_port() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut rx = Receiver::ok().await;
    endpoint(&c, &rx.url, &["*"], "").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = Logged::spawn({
        let mut cmd = sidecar::run_command(&db.url());
        cmd.env("PGWEBHOOKS_ADMIN_LISTEN", &addr)
            .env_remove("PGWEBHOOKS_ADMIN_TOKEN");
        cmd
    });
    let about_admin = |run: &Logged| -> Vec<Value> {
        run.fields("WARN")
            .into_iter()
            .filter(|f| {
                f["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("admin listener"))
            })
            .collect()
    };
    let line = wait::until("the admin listener's warning", T, || async {
        about_admin(&run).into_iter().next()
    })
    .await;
    let message = line["message"].as_str().unwrap();
    assert!(
        message.contains("not started: PGWEBHOOKS_ADMIN_TOKEN is not set")
            && message.contains("openssl rand -hex 32"),
        "{line}"
    );
    assert_eq!(line["listen"], addr.as_str(), "{line}");
    // Running: it delivers.
    c.execute("SELECT webhooks.emit('order.created', '{}')", &[])
        .await
        .unwrap();
    rx.take(1, T).await;
    assert_eq!(about_admin(&run).len(), 1, "said once: {}", run.text());
    assert!(!run.text().contains("cannot listen"), "{}", run.text());
    drop(run);

    let out = sidecar::run_command(&db.url())
        .env("PGWEBHOOKS_LISTEN", "127.0.0.1:0")
        .env("PGWEBHOOKS_ADMIN_LISTEN", &addr)
        .env("PGWEBHOOKS_ADMIN_TOKEN", "admin-token-never-logged-0123")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(!err.contains("admin-token-never-logged"), "{err}");
    drop(taken);
}
