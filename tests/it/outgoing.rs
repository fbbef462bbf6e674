//! Outgoing safety: endpoint URLs are checked, private targets are refused
//! unless allowed (when added, at start-up, at every delivery, whatever
//! the host resolves to), and an answer is read only up to the excerpt.

use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::sidecar::{self, endpoint};
use crate::support::{count, wait, Receiver, Reply, TestDb};

const T: Duration = Duration::from_secs(20);
const SETTING: &str = "PGWEBHOOKS_ALLOW_PRIVATE_TARGETS";

fn cli(db: &TestDb, args: &[&str], allow_env: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwebhooks"));
    cmd.args(args)
        .env("DATABASE_URL", db.url())
        .env_remove("PGWEBHOOKS_ENDPOINT_SECRET")
        .env_remove(SETTING);
    if let Some(v) = allow_env {
        cmd.env(SETTING, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn private_targets_are_refused_at_delivery_once_and_retryable_by_hand() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut r = Receiver::ok().await;
    // Inserted with SQL, as a DBA may: nothing checked them on the way in.
    let literal = endpoint(&c, &r.url, &["*"], "").await;
    let by_name = endpoint(&c, &r.url.replace("127.0.0.1", "localhost"), &["*"], "").await;
    let mut config = sidecar::config(&db);
    config.deliver.allow_private_targets = false;
    let s = sidecar::start(config).await;
    c.execute("SELECT webhooks.emit('refuse.test', '{}')", &[])
        .await
        .unwrap();

    let errors: Vec<(i64, String)> = wait::until("both deliveries failed", T, || async {
        let rows = c
            .query(
                "SELECT d.endpoint_id, a.error FROM webhooks.deliveries d
                   JOIN webhooks.attempts a ON a.delivery_id = d.id
                  WHERE d.status = 'failed' ORDER BY d.endpoint_id",
                &[],
            )
            .await
            .unwrap();
        (rows.len() == 2).then(|| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    })
    .await;
    assert_eq!(errors[0].0, literal);
    assert_eq!(
        errors[0].1,
        "refused: 127.0.0.1 is a loopback address; set PGWEBHOOKS_ALLOW_PRIVATE_TARGETS=true \
         (--allow-private-targets) to allow private targets"
    );
    assert_eq!(errors[1].0, by_name);
    // Refused by its name (RFC 6761), before any lookup.
    assert_eq!(
        errors[1].1,
        "refused: localhost is a loopback address; set PGWEBHOOKS_ALLOW_PRIVATE_TARGETS=true \
         (--allow-private-targets) to allow private targets"
    );
    // Not retried (the schedule would allow three attempts), a dead letter.
    s.stop().await;
    assert_eq!(count(&c, "SELECT count(*) FROM webhooks.attempts").await, 2);
    assert_eq!(
        count(&c, "SELECT count(*) FROM webhooks.deliveries WHERE attempts = 1").await,
        2
    );
    assert_eq!(count(&c, "SELECT count(*) FROM webhooks.dead_letters").await, 2);
    assert_eq!(r.count(), 0, "the receiver got nothing");

    // Allowed, the same dead letters retried by hand are delivered.
    let s = sidecar::start(sidecar::config(&db)).await;
    assert_eq!(
        count(&c, "SELECT webhooks.delivery_retry_dead()::bigint").await,
        2
    );
    r.take(2, T).await;
    wait::until("both delivered", T, || async {
        let n = count(
            &c,
            "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
        )
        .await;
        (n == 2).then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn endpoint_add_refuses_bad_urls_and_private_targets() {
    let db = TestDb::new().await;
    let c = db.client().await;
    fn add(url: &str) -> Vec<&str> {
        vec!["endpoint", "add", "--url", url]
    }
    let loopback = "set PGWEBHOOKS_ALLOW_PRIVATE_TARGETS=true (--allow-private-targets)";
    for (url, expected) in [
        (
            "ftp://example.com/hook",
            "invalid --url: the URL must be http:// or https:// (not ftp://)",
        ),
        ("http://", "invalid --url: not a URL"),
        ("https://:8443/hook", "invalid --url: not a URL"),
        (
            "https://user:s3cr3t@example.com/hook",
            "invalid --url: the URL carries credentials",
        ),
        (
            "http://169.254.169.254/latest/meta-data/",
            "refused: 169.254.169.254 is a cloud metadata address",
        ),
        (
            "http://metadata.google.internal/computeMetadata/v1/",
            "refused: metadata.google.internal",
        ),
        (
            "http://10.1.2.3/hook",
            "refused: 10.1.2.3 is a private address; set PGWEBHOOKS_ALLOW_PRIVATE_TARGETS",
        ),
        (
            "http://[::ffff:10.0.0.1]/hook",
            "refused: ::ffff:10.0.0.1 is a private address",
        ),
        ("http://127.0.0.1:9/hook", loopback),
        (
            "http://localhost:9/hook",
            "refused: localhost is a loopback address",
        ),
    ] {
        let (ok, _, err) = cli(&db, &add(url), None);
        assert!(!ok && err.contains(expected), "{url}: {err}");
        assert!(!err.contains("s3cr3t"), "a credential is never repeated: {err}");
    }
    // The setting allows private targets, never metadata services: all of
    // 169.254.0.0/16 (EKS Pod Identity, Tencent, the AWS resolver…) and
    // fd00:ec2::/32, also behind a local-use NAT64 prefix.
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.170.23/v1/credentials",
        "http://[fd00:ec2::23]/",
        "http://169.254.0.23/",
        "http://169.254.169.253/",
        "http://[64:ff9b:1::a9fe:a9fe]/",
    ] {
        for allow in [Some("true"), None] {
            let mut args = add(url);
            if allow.is_none() {
                args.push("--allow-private-targets");
            }
            let (ok, _, err) = cli(&db, &args, allow);
            assert!(
                !ok && err.contains("never allowed as a webhook target"),
                "{url}: {err}"
            );
        }
    }
    let (ok, _, err) = cli(&db, &add("http://[64:ff9b:1::7f00:1]/"), None);
    assert!(!ok && err.contains("a loopback address"), "{err}");
    assert_eq!(count(&c, "SELECT count(*) FROM webhooks.endpoints").await, 0);

    let mut args = add("http://10.1.2.3/hook");
    args.push("--allow-private-targets");
    let (ok, _, err) = cli(&db, &args, None);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&db, &add("http://127.0.0.1:9/hook"), Some("true"));
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&db, &add("http://127.0.0.1:9/hook"), Some("false"));
    assert!(!ok && err.contains(loopback), "{err}");
    assert_eq!(count(&c, "SELECT count(*) FROM webhooks.endpoints").await, 2);

    let (ok, help, _) = cli(&db, &["run", "--help"], None);
    assert!(ok && help.contains("--allow-private-targets") && help.contains(SETTING));
}

#[tokio::test]
async fn environment_endpoints_are_checked_before_the_sidecar_starts() {
    let db = TestDb::new().await;
    let c = db.client().await;
    for (var, url, expected) in [
        (
            "MAKE_WEBHOOK_ERRORS_URL",
            "http://169.254.169.254/hook-token",
            "MAKE_WEBHOOK_ERRORS_URL: refused: 169.254.169.254 is a cloud metadata address",
        ),
        (
            "WEBHOOK_URL",
            "http://10.0.0.7/hook-token",
            "WEBHOOK_URL: refused: 10.0.0.7 is a private address",
        ),
        (
            "WEBHOOK_URL",
            "ftp://example.com/hook-token",
            "WEBHOOK_URL: the URL must be http://",
        ),
    ] {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgwebhooks"));
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("PGWEBHOOKS_") || k.starts_with("MAKE_WEBHOOK_") || k.starts_with("WEBHOOK_") {
                cmd.env_remove(&key);
            }
        }
        let out = cmd
            .arg("run")
            .env("DATABASE_URL", db.url())
            .env("PGWEBHOOKS_LISTEN", "127.0.0.1:0")
            .env("PGWEBHOOKS_ADMIN_LISTEN", "127.0.0.1:0")
            .env(var, url)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(T, out)
            .await
            .expect("`run` stops at once")
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "{var}: {err}");
        assert!(!err.contains("hook-token"), "the URL is never printed: {err}");
    }
    assert_eq!(count(&c, "SELECT count(*) FROM webhooks.endpoints").await, 0);
}

/// A receiver that answers 200 with an endless body, and reports how many
/// bytes it managed to write before the client hung up.
async fn endless_receiver() -> (String, tokio::sync::oneshot::Receiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        // The request: its head, then content-length bytes of body.
        let mut req = Vec::new();
        let mut buf = [0u8; 8192];
        let body_len = loop {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "request cut short");
            req.extend_from_slice(&buf[..n]);
            if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                break end + 4 + len;
            }
        };
        while req.len() < body_len {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "request body cut short");
            req.extend_from_slice(&buf[..n]);
        }
        sock.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1099511627776\r\n\r\n",
        )
        .await
        .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut written = 0;
        while sock.write_all(&chunk).await.is_ok() {
            written += chunk.len();
        }
        let _ = tx.send(written);
    });
    (url, rx)
}

#[tokio::test]
async fn an_endless_answer_is_read_only_up_to_the_excerpt() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (url, written) = endless_receiver().await;
    endpoint(&c, &url, &["*"], "").await;
    let config = sidecar::config(&db);
    let (excerpt, timeout) = (config.deliver.excerpt_bytes, config.deliver.timeout);
    let s = sidecar::start(config).await;
    c.execute("SELECT webhooks.emit('huge.answer', '{}')", &[])
        .await
        .unwrap();
    let (got, ms): (String, f64) = wait::until("the delivery recorded", T, || async {
        c.query_opt(
            "SELECT a.response_excerpt, a.duration_ms FROM webhooks.attempts a
               JOIN webhooks.deliveries d ON d.id = a.delivery_id WHERE d.status = 'delivered'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
    })
    .await;
    assert_eq!(got.len(), excerpt);
    assert!(got.bytes().all(|b| b == b'x'));
    assert!(
        ms < timeout.as_millis() as f64,
        "the body was not read to the timeout: {ms} ms"
    );
    let written = tokio::time::timeout(T, written)
        .await
        .expect("the client hung up")
        .unwrap();
    assert!(
        written < 64 << 20,
        "stopped reading early: {written} bytes written"
    );
    assert_eq!(count(&c, "SELECT count(*) FROM webhooks.attempts").await, 1);
    s.stop().await;
}

/// N7 (security audit 2): a receiver answering a redirect with a 300 KB
/// `Location` once had it stored whole on every attempt and delivery row
/// (600 KB per event). Every text from a receiver is kept to the 1 KiB
/// excerpt bound.
#[tokio::test]
async fn a_huge_redirect_location_is_stored_cut_to_the_bound() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let location = format!("http://x.example/{}", "a".repeat(300_000));
    let receiver = Receiver::start(move |_| {
        Reply::status(307)
            .header("location", &location)
            .body(&"b".repeat(300_000))
    })
    .await;
    endpoint(&c, &receiver.url, &["*"], "").await;
    let s = sidecar::start(sidecar::config(&db)).await;
    c.execute("SELECT webhooks.emit('huge.redirect', '{}')", &[])
        .await
        .unwrap();
    let (last_error, error, excerpt): (String, String, String) =
        wait::until("the redirect recorded as failed", T, || async {
            c.query_opt(
                "SELECT d.last_error, a.error, a.response_excerpt FROM webhooks.attempts a
                   JOIN webhooks.deliveries d ON d.id = a.delivery_id WHERE d.status = 'failed'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
        })
        .await;
    assert_eq!(receiver.count(), 1);
    let bound = pgwebhooks::job::TEXT_BOUND;
    for text in [&last_error, &error, &excerpt] {
        assert!(text.len() <= bound, "{} bytes stored", text.len());
    }
    assert!(
        last_error.starts_with("redirect to http://x.example/aaa"),
        "{last_error}"
    );
    assert!(last_error.contains('…'), "the cut is marked: {last_error}");
    s.stop().await;
}

/// One setting for both commands: PGWEBHOOKS_ALLOW_PRIVATE_TARGETS=true in
/// the environment lets `endpoint add` take a loopback receiver and `run`
/// deliver to it, with no flag on either; `--allow-private-targets` on
/// `endpoint add` alone still works and says that `run` needs it too.
#[tokio::test]
async fn one_setting_allows_a_loopback_receiver_for_endpoint_add_and_run() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut rx = Receiver::ok().await;

    let (ok, _, err) = cli(&db, &["endpoint", "add", "--url", &rx.url], Some("true"));
    assert!(ok, "{err}");
    assert!(!err.contains("note:"), "nothing more to do: {err}");

    let (ok, _, err) = cli(
        &db,
        &[
            "endpoint",
            "add",
            "--url",
            &rx.url,
            "--name",
            "flag",
            "--allow-private-targets",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("note: 127.0.0.1 is a loopback address (allowed by --allow-private-targets)")
            && err.contains("`pgwebhooks run` refuses to deliver to it")
            && err.contains("set PGWEBHOOKS_ALLOW_PRIVATE_TARGETS=true where both commands run"),
        "{err}"
    );

    // `run` with the same environment (and no flag) delivers to both.
    let _run = sidecar::Process(
        Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
            .arg("run")
            .env("DATABASE_URL", db.url())
            .env(SETTING, "true")
            .env("PGWEBHOOKS_LISTEN", "127.0.0.1:0")
            .env("PGWEBHOOKS_ADMIN_LISTEN", "127.0.0.1:0")
            .env("PGWEBHOOKS_LOG", "error")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    c.execute("SELECT webhooks.emit('order.created', '{}')", &[])
        .await
        .unwrap();
    rx.take(2, T).await;
    wait::until("both delivered", T, || async {
        let n = count(
            &c,
            "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
        )
        .await;
        (n == 2).then_some(())
    })
    .await;
}

/// Behind `HTTP_PROXY` (audit L2) the proxy resolves names, so they are
/// checked by name and, where they resolve here, by address before the
/// request goes to the proxy; endpoints written with SQL included. And a
/// name that does not resolve here is refused when added.
#[tokio::test]
async fn behind_a_proxy_loopback_names_are_refused_before_the_proxy_sees_them() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // The "proxy": a real server that counts what reaches it.
    let proxy = Receiver::ok().await;
    let port = 9; // never connected to: every target below is refused first
    for url in [
        format!("http://localhost:{port}/sql-inserted"),
        format!("http://LocalHost.:{port}/"),
        format!("http://db.localhost:{port}/"),
    ] {
        endpoint(&c, &url, &["*"], "").await;
    }
    let _run = sidecar::Process(
        sidecar::run_command(&db.url())
            .env(SETTING, "false")
            .env("HTTP_PROXY", &proxy.url)
            .env("PGWEBHOOKS_LISTEN", "127.0.0.1:0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    c.execute("SELECT webhooks.emit('order.created', '{}')", &[])
        .await
        .unwrap();
    let errors: Vec<String> = wait::until("all three refused", T, || async {
        let rows = c
            .query(
                "SELECT a.error FROM webhooks.attempts a ORDER BY a.endpoint_id",
                &[],
            )
            .await
            .unwrap();
        (rows.len() == 3).then(|| rows.iter().map(|r| r.get(0)).collect())
    })
    .await;
    for (e, name) in errors.iter().zip(["localhost", "localhost", "db.localhost"]) {
        assert!(
            e.starts_with(&format!("refused: {name} is a loopback address")),
            "{e}"
        );
    }
    assert_eq!(proxy.count(), 0, "nothing reached the proxy");

    // Added behind the proxy: a loopback name is refused, and so is a
    // name that does not resolve here (the proxy would resolve it).
    let add = |url: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
            .args(["endpoint", "add", "--url", url])
            .env("DATABASE_URL", db.url())
            .env("HTTP_PROXY", &proxy.url)
            .env_remove(SETTING)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = add("http://localhost.:8080/");
    assert!(!ok && err.contains("localhost is a loopback address"), "{err}");
    let (ok, err) = add("https://no-such-host.invalid/hook");
    assert!(
        !ok && err.contains("cannot resolve no-such-host.invalid")
            && err.contains("deliveries go through a proxy"),
        "{err}"
    );
    // Without a proxy, the same name is only a warning (checked at send).
    let (ok, _, err) = cli(
        &db,
        &["endpoint", "add", "--url", "https://no-such-host.invalid/hook"],
        None,
    );
    assert!(
        ok && err.contains("warning: cannot resolve no-such-host.invalid"),
        "{err}"
    );
}
