//! A bad-input corpus for the inbound endpoint, over real HTTP against the
//! example app's routes: every case gets its documented status, changes
//! nothing (no app row, no event, no applied callback), and afterwards a
//! valid callback to another route is answered promptly and applied.
//!
//! `body` — what the JSON says (malformed, wrong types, huge numbers, deep
//! nesting, invalid UTF-8, NUL); `auth` — secrets and signatures;
//! `transport` — sizes, headers, paths and slow clients, over raw TCP
//! where a client library would refuse to send it.

mod auth;
mod body;
mod transport;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pgwebhooks::inbound::InboundConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::Client;

use crate::support::sidecar::{self, Running, INBOUND_SECRET};
use crate::support::TestDb;

/// The reference data the example app's handlers need.
const SEED: &str = "
INSERT INTO app.users (email, name) VALUES ('ada@example.com', 'Ada Student');
INSERT INTO app.users (email, name, role) VALUES ('grace@example.com', 'Grace Instructor', 'instructor');
INSERT INTO app.courses (title, access_days, instructor_id) VALUES ('Rust 101', 365, 2);
INSERT INTO app.cohorts (title, access_days, instructor_id) VALUES ('Spring Cohort', 90, 2);
INSERT INTO app.coupons (code, discount_percent) VALUES ('DISCOUNT10', 10);
INSERT INTO app.threads (student_id, course_id, subject) VALUES (1, 1, 'Borrowing');
INSERT INTO app.appointments (user_id, course_id, scheduled_at) VALUES (1, 1, '2030-01-01T10:00:00Z');
INSERT INTO app.support_tickets (ticket_number, user_id, subject) VALUES ('TKT-000001', 1, 'Login');
";

/// How long a valid callback may take to be answered while the corpus runs.
pub const PROMPT: Duration = Duration::from_secs(5);

/// What came back: a status (`None`: the connection closed without an
/// answer) and the JSON body, if any.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: Option<u16>,
    pub body: Value,
}

impl Answer {
    /// An answer read off a raw connection (after any `100 Continue`).
    fn parse(raw: &[u8]) -> Answer {
        let mut text = String::from_utf8_lossy(raw).into_owned();
        while text.starts_with("HTTP/1.1 1") {
            text = text
                .split_once("\r\n\r\n")
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or_default();
        }
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok());
        let body = text
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        Answer { status, body }
    }

    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

/// Rows of every table a callback could change, as (rows, md5 of the rows).
pub type Snapshot = BTreeMap<String, (i64, String)>;

/// One sidecar with the inbound server, on a seeded database of its own.
pub struct Corpus {
    pub c: Client,
    pub base: String,
    /// `127.0.0.1:<port>`, for raw connections.
    pub addr: String,
    pub config: InboundConfig,
    http: reqwest::Client,
    canaries: AtomicUsize,
    running: Running,
    _db: TestDb,
}

impl Corpus {
    /// The test settings with a 2 s read timeout.
    pub async fn start() -> Corpus {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut pgwebhooks::sidecar::SidecarConfig)) -> Corpus {
        let db = TestDb::new().await;
        let c = db.client().await;
        c.batch_execute(SEED).await.unwrap();
        let mut config = sidecar::config_with_inbound(&db);
        config.inbound.as_mut().unwrap().read_timeout = Duration::from_secs(2);
        tweak(&mut config);
        let inbound = config.inbound.clone().unwrap();
        let running = sidecar::start(config).await;
        pgwebhooks::deliver::http::install_crypto_provider();
        // A new connection per request: the server closes idle ones after
        // the read timeout, and a test must never race that.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Corpus {
            c,
            addr: running.base.trim_start_matches("http://").to_owned(),
            base: running.base.clone(),
            config: inbound,
            http,
            canaries: AtomicUsize::new(0),
            running,
            _db: db,
        }
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }

    pub fn url(&self, route: &str) -> String {
        format!("{}/api/webhooks/make/{route}", self.base)
    }

    /// A POST to a Make route, with the secret.
    pub fn post(&self, route: &str) -> reqwest::RequestBuilder {
        self.post_bare(route).header("x-make-apikey", INBOUND_SECRET)
    }

    /// A POST to a Make route, without credentials.
    pub fn post_bare(&self, route: &str) -> reqwest::RequestBuilder {
        self.post_url(&self.url(route))
    }

    /// A POST to any URL, without credentials.
    pub fn post_url(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.post(url).header("content-type", "application/json")
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        match req.send().await {
            Ok(resp) => {
                let status = Some(resp.status().as_u16());
                let body = resp.json().await.unwrap_or(Value::Null);
                Answer { status, body }
            }
            Err(_) => Answer {
                status: None,
                body: Value::Null,
            },
        }
    }

    /// Writes `bytes` on a new connection and reads until the server closes.
    pub async fn raw(&self, bytes: &[u8]) -> Answer {
        let mut s = TcpStream::connect(&self.addr).await.unwrap();
        // The server may answer and close before reading everything (413, 431).
        let _ = s.write_all(bytes).await;
        read_answer(&mut s, Duration::from_secs(20)).await
    }

    /// Every app table, the outbox, and the callbacks recorded (all, and
    /// the applied ones alone).
    pub async fn snapshot(&self) -> Snapshot {
        let mut sources: Vec<(String, String)> = self
            .c
            .query(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = 'app' ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let t: String = r.get(0);
                (t.clone(), t)
            })
            .collect();
        sources.push(("webhooks.events".into(), "webhooks.events".into()));
        sources.push(("inbound".into(), "webhooks.inbound".into()));
        sources.push((
            "inbound applied".into(),
            "(SELECT * FROM webhooks.inbound WHERE status = 'applied')".into(),
        ));
        let mut out = Snapshot::new();
        for (name, source) in sources {
            let row = self
                .c
                .query_one(
                    &format!(
                        "SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {source} x"
                    ),
                    &[],
                )
                .await
                .unwrap();
            out.insert(name, (row.get(0), row.get(1)));
        }
        out
    }

    /// A valid callback to the errors route (no case uses it): answered 200
    /// within [`PROMPT`], and its row is there.
    pub async fn canary(&self) {
        let n = self.canaries.fetch_add(1, Ordering::SeqCst);
        let message = format!("canary {n}");
        let started = Instant::now();
        let answer = tokio::time::timeout(
            PROMPT,
            self.send(
                self.post("errors")
                    .json(&json!({"errorMessage": message, "severity": "LOW"})),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("a valid callback was not answered within {PROMPT:?}"));
        assert_eq!(answer.status, Some(200), "canary: {}", answer.body);
        let rows: i64 = self
            .c
            .query_one(
                "SELECT count(*) FROM app.error_logs WHERE error_message = $1",
                &[&message],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 1, "the canary was applied (in {:?})", started.elapsed());
    }

    /// A case refused before anything is recorded: one of `expect`, nothing
    /// changed, and the sidecar still answers.
    pub async fn refused(
        &self,
        what: &str,
        expect: &[Option<u16>],
        send: impl Future<Output = Answer>,
    ) -> Answer {
        let before = self.snapshot().await;
        let got = send.await;
        assert!(
            expect.contains(&got.status),
            "{what}: expected one of {expect:?}, got {:?} {}",
            got.status,
            got.body
        );
        if got.body.is_object() {
            assert_eq!(got.body["success"], false, "{what}: {}", got.body);
            assert!(!got.error().is_empty(), "{what}: says why: {}", got.body);
        }
        assert_eq!(
            self.snapshot().await,
            before,
            "{what}: nothing applied or recorded"
        );
        self.canary().await;
        got
    }

    /// A case the route's handler rejects: 422 with `message`, recorded as
    /// rejected with it, and nothing else changed.
    pub async fn rejected(&self, what: &str, message: &str, send: impl Future<Output = Answer>) {
        let mut before = self.snapshot().await;
        let got = send.await;
        assert_eq!(got.status, Some(422), "{what}: {}", got.body);
        assert_eq!(got.error(), message, "{what}: the handler's message");
        let mut after = self.snapshot().await;
        before.remove("inbound");
        after.remove("inbound");
        assert_eq!(after, before, "{what}: nothing applied, not even partly");
        let id = got.body["inboundId"].as_i64().expect("inboundId");
        let row = self
            .c
            .query_one("SELECT status, error FROM webhooks.inbound WHERE id = $1", &[&id])
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, Option<String>>(1)),
            ("rejected".to_owned(), Some(message.to_owned())),
            "{what}: recorded for the DBA"
        );
        self.canary().await;
    }
}

/// Reads until the server closes (or resets) the connection, at most `deadline`.
pub async fn read_answer(r: &mut (impl AsyncRead + Unpin), deadline: Duration) -> Answer {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = r.read(&mut chunk).await {
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or_else(|_| panic!("the server neither answered nor closed within {deadline:?}"));
    Answer::parse(&buf)
}

/// A raw HTTP/1.1 request with `connection: close` (so the server closes
/// after answering); `head` lines go in as given.
pub fn request(path: &str, head: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("POST {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n").into_bytes();
    for line in head {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The usual head of a raw callback: the secret and the body's length.
pub fn authed(len: usize) -> Vec<String> {
    vec![
        format!("x-make-apikey: {INBOUND_SECRET}"),
        "content-type: application/json".into(),
        format!("content-length: {len}"),
    ]
}

/// [`request`] with owned head lines.
pub fn request_owned(path: &str, head: &[String], body: &[u8]) -> Vec<u8> {
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    request(path, &head, body)
}
