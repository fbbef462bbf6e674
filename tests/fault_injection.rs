//! The fault-injection program: several app connections write a steady
//! stream of orders into a watched table while faults are injected at random
//! moments, then it checks that nothing was lost, that nothing was captured
//! twice, that duplicates are few and carry the same `webhook-id`, that no
//! delivery is left claimed or pending, and that the sidecars recovered by
//! themselves. It prints the counts.
//!
//! Faults, one at a time, in a random order (seeded; the seed is printed):
//! - `kill`: SIGKILL of a random sidecar replica (a separate `pgwebhooks run`
//!   process), restarted after a random pause, as a supervisor would;
//! - `pg-fast`, `pg-immediate`: `pg_ctl restart -m fast|immediate`;
//! - `receiver-away`: the receiver stops listening (connections refused);
//! - `receiver-429`, `receiver-503`: it answers 429 with `Retry-After: 1`,
//!   or 503;
//! - `receiver-slow`: it answers only after the sidecar's timeout;
//! - `sever-listen`: `pg_terminate_backend` on the replicas' LISTEN sessions;
//! - `partition`: a replica cut off from Postgres (its connections go
//!   through a loopback proxy here, which stops moving bytes both ways
//!   without closing anything), sometimes past its lease, then healed;
//! - `partition-reset`: the same, then every connection of it reset;
//! - `freeze`: SIGSTOP of a replica past its lease, then SIGCONT;
//! - `latency`: 200 ms each way between a replica and Postgres;
//! - `disk-full`: the tablespace holding `webhooks.deliveries` and
//!   `webhooks.attempts` (a small tmpfs; `pg_wal` stays out of it) filled
//!   up, then freed (needs root to mount; skipped, and said, otherwise).
//!
//! During each fault that takes one replica away (kill, partition, freeze)
//! or slows it (latency), the *other* replicas must keep delivering: their
//! recorded attempts rise within the lease plus a few seconds. During a
//! full disk, `/readyz` must say so. Duplicates are counted per fault.
//!
//! `cargo test` runs a bounded version (a few thousand events, two faults of
//! each kind). The long run:
//!
//! ```text
//! cargo test --test fault_injection -- --long
//! cargo test --test fault_injection -- --events 100000 --faults 30 --seed 7
//! ```

#[allow(dead_code, unused_imports)]
#[path = "it/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pgwebhooks::sign::{self, SigningKey};
use support::db::Cluster;
use support::disk::SmallDisk;
use support::proxy::Proxy;
use support::sidecar::{self, endpoint, Process, SECRET};
use tokio_postgres::Client;

/// The sidecar's per-attempt timeout; slow answers take longer than this.
const TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Opts {
    events: u64,
    faults_per_kind: u32,
    replicas: usize,
    writers: usize,
    rate_per_s: u32,
    seed: u64,
}

impl Opts {
    fn parse() -> Option<Opts> {
        let mut o = Opts {
            events: 3_000,
            faults_per_kind: 2,
            replicas: 2,
            writers: 4,
            rate_per_s: 150,
            seed: fastrand::u64(..),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut num = |what: &str| -> u64 {
                let v = args
                    .next()
                    .unwrap_or_else(|| panic!("{a} needs a value ({what})"));
                v.parse()
                    .unwrap_or_else(|_| panic!("{a}: {v:?} is not a whole number"))
            };
            match a.as_str() {
                "--long" => {
                    o.events = 100_000;
                    o.faults_per_kind = 30;
                    o.replicas = 3;
                    o.rate_per_s = 250;
                }
                "--events" => o.events = num("events"),
                "--faults" => o.faults_per_kind = num("faults of each kind") as u32,
                "--replicas" => o.replicas = num("replicas").max(1) as usize,
                "--writers" => o.writers = num("app connections").max(1) as usize,
                "--rate" => o.rate_per_s = num("events per second").max(1) as u32,
                "--seed" => o.seed = num("seed"),
                // What libtest would accept from `cargo test -- ...`.
                "--nocapture" | "--quiet" | "-q" | "--show-output" => {}
                s if s.starts_with("--test-threads") || s.starts_with("--color") => {}
                s if s.starts_with('-') => panic!(
                    "unknown option {s}; options: --long, --events N, --faults N, --replicas N, \
                     --writers N, --rate N, --seed N"
                ),
                // A test-name filter (`cargo test <filter>`): run only if it matches.
                filter => {
                    if !"fault_injection".contains(filter) {
                        return None;
                    }
                }
            }
        }
        Some(o)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    Kill,
    PgFast,
    PgImmediate,
    ReceiverAway,
    Receiver429,
    Receiver503,
    ReceiverSlow,
    SeverListen,
    Partition,
    PartitionReset,
    Freeze,
    Latency,
    DiskFull,
}

impl Fault {
    const ALL: [Fault; 13] = [
        Fault::Kill,
        Fault::PgFast,
        Fault::PgImmediate,
        Fault::ReceiverAway,
        Fault::Receiver429,
        Fault::Receiver503,
        Fault::ReceiverSlow,
        Fault::SeverListen,
        Fault::Partition,
        Fault::PartitionReset,
        Fault::Freeze,
        Fault::Latency,
        Fault::DiskFull,
    ];
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::PgFast => "pg-fast",
            Fault::PgImmediate => "pg-immediate",
            Fault::ReceiverAway => "receiver-away",
            Fault::Receiver429 => "receiver-429",
            Fault::Receiver503 => "receiver-503",
            Fault::ReceiverSlow => "receiver-slow",
            Fault::SeverListen => "sever-listen",
            Fault::Partition => "partition",
            Fault::PartitionReset => "partition-reset",
            Fault::Freeze => "freeze",
            Fault::Latency => "latency",
            Fault::DiskFull => "disk-full",
        }
    }
}

// ---------------------------------------------------------------- receiver

const MODE_OK: u8 = 0;
const MODE_429: u8 = 1;
const MODE_503: u8 = 2;
const MODE_SLOW: u8 = 3;

/// What arrived for one (endpoint, event).
#[derive(Default, Debug)]
struct Arrivals {
    /// Answered 200 at once.
    acked: u32,
    /// Answered 429/503, or only after the sender's timeout.
    refused: u32,
}

#[derive(Default)]
struct Seen {
    by_key: HashMap<(String, String), Arrivals>,
    bad_signature: u64,
    id_mismatch: u64,
    requests: u64,
}

impl Seen {
    /// Acknowledged requests beyond the first of each delivery.
    fn duplicates(&self) -> u64 {
        self.by_key
            .values()
            .map(|a| u64::from(a.acked.saturating_sub(1)))
            .sum()
    }
}

struct ReceiverState {
    mode: AtomicU8,
    seen: Mutex<Seen>,
    keys: Vec<SigningKey>,
}

/// A real HTTP receiver on a fixed loopback port that can be taken away
/// (it stops listening; connections are refused) and brought back.
struct FaultyReceiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    server: tokio::sync::Mutex<Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
}

impl FaultyReceiver {
    async fn start() -> Arc<FaultyReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Arc::new(FaultyReceiver {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(ReceiverState {
                mode: AtomicU8::new(MODE_OK),
                seen: Mutex::default(),
                keys: vec![SigningKey::parse(SECRET).unwrap()],
            }),
            server: tokio::sync::Mutex::new(None),
        });
        r.serve(listener).await;
        r
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    async fn serve(&self, listener: tokio::net::TcpListener) {
        let state = self.state.clone();
        let app =
            axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { answer(&state, uri.path(), &headers, &body).await }
            });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        *self.server.lock().await = Some((stop, task));
    }

    /// Stops listening and closes every connection.
    async fn away(&self) {
        if let Some((stop, task)) = self.server.lock().await.take() {
            let _ = stop.send(());
            // Graceful: idle keep-alive connections close at once, requests
            // in flight (a slow answer at most) finish first.
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("receiver stops")
                .unwrap();
        }
    }

    /// Listens again on the same port.
    async fn back(&self) {
        if self.server.lock().await.is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}; trying again", self.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await; // retry pacing, bounded by the deadline
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener).await;
    }

    fn set_mode(&self, mode: u8) {
        self.state.mode.store(mode, Ordering::SeqCst);
    }
}

async fn answer(state: &ReceiverState, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let mode = state.mode.load(Ordering::SeqCst);
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let verified = sign::verify(
        &state.keys,
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
        body,
        now,
        300,
    )
    .is_ok();
    let event_id = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
        .unwrap_or_default();
    {
        let mut seen = state.seen.lock().unwrap();
        seen.requests += 1;
        if !verified {
            seen.bad_signature += 1;
        }
        if h("webhook-id") != Some(event_id.as_str()) {
            seen.id_mismatch += 1;
        }
        let a = seen.by_key.entry((path.to_owned(), event_id)).or_default();
        if mode == MODE_OK {
            a.acked += 1;
        } else {
            a.refused += 1;
        }
    }
    match mode {
        MODE_429 => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response(),
        MODE_503 => (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response(),
        MODE_SLOW => {
            // A scripted slow answer: the sender's deadline passes first.
            tokio::time::sleep(TIMEOUT + Duration::from_millis(500)).await;
            (StatusCode::OK, "late").into_response()
        }
        _ => (StatusCode::OK, "ok").into_response(),
    }
}

// ---------------------------------------------------------------- replicas

struct Replica {
    name: String,
    listen: SocketAddr,
    /// Its way to Postgres (every connection of it goes through here).
    proxy: Proxy,
    child: Process,
    /// Times this program killed and restarted it.
    restarts: u32,
}

struct Replicas {
    url: String,
    logs: PathBuf,
    all: Vec<Replica>,
}

impl Replicas {
    fn spawn(&self, name: &str, listen: SocketAddr, proxy: u16) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))
            .expect("replica log file");
        let child = sidecar::run_command(&via(&self.url, proxy))
            .env("PGWEBHOOKS_REPLICA", name)
            .env("PGWEBHOOKS_LISTEN", listen.to_string())
            .env("PGWEBHOOKS_ADMIN_LISTEN", "127.0.0.1:0")
            .env("PGWEBHOOKS_TIMEOUT", format!("{}ms", TIMEOUT.as_millis()))
            .env("PGWEBHOOKS_LEASE", format!("{}s", LEASE.as_secs()))
            .env("PGWEBHOOKS_POLL_INTERVAL", "500ms")
            // Longer in all than any outage here, so nothing turns dead.
            .env(
                "PGWEBHOOKS_RETRY_SCHEDULE",
                "100ms,250ms,500ms,1s,2s,4s,8s,8s,8s,8s,8s,8s,8s,8s",
            )
            .env("PGWEBHOOKS_BREAKER_PROBE", "2s")
            .env("PGWEBHOOKS_SHUTDOWN_GRACE", "2s")
            .env("PGWEBHOOKS_LOG_FORMAT", "text")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn pgwebhooks run");
        Process(child)
    }

    async fn start(url: String, logs: PathBuf, n: usize) -> Replicas {
        let upstream = url.parse::<tokio_postgres::Config>().unwrap().get_ports()[0];
        let mut r = Replicas {
            url,
            logs,
            all: vec![],
        };
        for i in 0..n {
            let name = format!("r{i}");
            let listen = free_port();
            let proxy = Proxy::start(upstream).await;
            let child = r.spawn(&name, listen, proxy.port);
            r.all.push(Replica {
                name,
                listen,
                proxy,
                child,
                restarts: 0,
            });
        }
        r
    }

    /// Fails if a replica exited without being killed: every recovery must
    /// happen inside the process.
    fn check_alive(&mut self) {
        for r in &mut self.all {
            if let Some(status) = r.child.0.try_wait().unwrap() {
                panic!(
                    "replica {} exited by itself ({status}); see {}",
                    r.name,
                    self.logs.join(format!("{}.log", r.name)).display()
                );
            }
        }
    }
}

/// `url` with its port replaced by `port` (a replica's proxy).
fn via(url: &str, port: u16) -> String {
    let upstream = url.parse::<tokio_postgres::Config>().unwrap().get_ports()[0];
    url.replacen(&format!(":{upstream}/"), &format!(":{port}/"), 1)
}

/// SIGSTOP / SIGCONT.
fn signal(child: &Process, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.0.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {}", child.0.id());
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

// ---------------------------------------------------------------- writers

#[derive(Default)]
struct Written {
    /// Order ids whose INSERT was acknowledged by COMMIT.
    acked_ids: Vec<i64>,
    errors: u64,
}

/// One app connection: single-row orders, some 20-row INSERTs, and status
/// changes of its own earlier orders (`order.paid`), at `per_s` statements a
/// second, reconnecting after errors, until `stop`.
async fn writer(
    url: String,
    per_s: f64,
    seed: u64,
    events: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    last_error: Arc<Mutex<Option<String>>>,
) -> Written {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Written::default();
    let mut client: Option<Client> = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unpaid: Vec<i64> = vec![];
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await; // the offered load's pace
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match connect(&url).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    out.errors += 1;
                    *last_error.lock().unwrap() = Some(format!("{e:?}"));
                    continue;
                }
            }
        }
        let c = client.as_ref().expect("connected above");
        let roll = rng.u32(..100);
        let result = if roll < 15 && !unpaid.is_empty() {
            let id = unpaid.swap_remove(rng.usize(..unpaid.len()));
            c.execute(
                "UPDATE app.orders SET status = 'paid', paid_at = now() WHERE id = $1 AND status = 'new'",
                &[&id],
            )
            .await
            .map(|n| {
                events.fetch_add(n, Ordering::SeqCst);
            })
        } else {
            let rows: i32 = if roll >= 97 { 20 } else { 1 };
            c.query(
                "INSERT INTO app.orders (tenant_id, amount_cents) \
                 SELECT $1, (random() * 10000)::int FROM generate_series(1, $2) RETURNING id",
                &[&format!("t{}", rng.u8(..5)), &rows],
            )
            .await
            .map(|r| {
                events.fetch_add(r.len() as u64, Ordering::SeqCst);
                for row in r {
                    let id: i64 = row.get(0);
                    out.acked_ids.push(id);
                    unpaid.push(id);
                }
            })
        };
        if let Err(e) = result {
            out.errors += 1;
            *last_error.lock().unwrap() = Some(format!("{e:?}"));
            client = None;
        }
    }
    out
}

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.connect_timeout(Duration::from_secs(2));
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Retries a query through restarts until it answers (or a deadline).
async fn ask(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let err = match connect(url).await {
            Ok(c) => match c.query(sql, &[]).await {
                Ok(rows) => return rows,
                Err(e) => e,
            },
            Err(e) => e,
        };
        assert!(Instant::now() < deadline, "{sql}: {err}");
        tokio::time::sleep(Duration::from_millis(100)).await; // retry pacing while Postgres restarts
    }
}

async fn count(url: &str, sql: &str) -> i64 {
    ask(url, sql).await[0].get(0)
}

// ---------------------------------------------------------------- faults

struct Injector {
    cluster: Arc<Cluster>,
    url: String,
    receiver: Arc<FaultyReceiver>,
    replicas: Replicas,
    rng: fastrand::Rng,
    done: BTreeMap<Fault, u32>,
    /// The tablespace of deliveries and attempts (`disk-full`), as root.
    disk: Option<SmallDisk>,
    http: reqwest::Client,
}

/// The replicas' lease (`PGWEBHOOKS_LEASE`).
const LEASE: Duration = Duration::from_secs(5);

impl Injector {
    /// Injects one fault, holds it a moment, heals it. Returns false if the
    /// fault could not be injected this time (e.g. no LISTEN session yet).
    async fn inject(&mut self, fault: Fault) -> bool {
        let hold = Duration::from_millis(self.rng.u64(300..2000));
        match fault {
            Fault::Kill | Fault::Partition | Fault::PartitionReset | Fault::Freeze | Fault::Latency => {
                let hold = Duration::from_millis(match fault {
                    Fault::Kill => self.rng.u64(300..2000),
                    // Sometimes past the lease: the others take over.
                    Fault::Partition | Fault::PartitionReset => self.rng.u64(1000..8000),
                    Fault::Freeze => self.rng.u64(6000..9000),
                    _ => self.rng.u64(2000..5000),
                });
                let i = self.rng.usize(..self.replicas.all.len());
                let since = std::time::SystemTime::now();
                let until = tokio::time::Instant::now() + hold;
                let r = &mut self.replicas.all[i];
                let victim = r.name.clone();
                match fault {
                    Fault::Kill => r.child.kill(), // SIGKILL
                    Fault::Partition | Fault::PartitionReset => r.proxy.hold(),
                    Fault::Freeze => signal(&r.child, "-STOP"),
                    _ => r.proxy.delay(Duration::from_millis(200)),
                }
                self.others_deliver(&victim, since, fault).await;
                tokio::time::sleep_until(until).await; // the fault's duration
                let r = &mut self.replicas.all[i];
                match fault {
                    Fault::Kill => {
                        let (name, listen, port) = (r.name.clone(), r.listen, r.proxy.port);
                        let child = self.replicas.spawn(&name, listen, port);
                        let r = &mut self.replicas.all[i];
                        r.child = child;
                        r.restarts += 1;
                    }
                    Fault::Partition => r.proxy.release(),
                    Fault::PartitionReset => {
                        r.proxy.reset();
                        r.proxy.release();
                    }
                    Fault::Freeze => signal(&r.child, "-CONT"),
                    _ => r.proxy.delay(Duration::ZERO),
                }
            }
            Fault::DiskFull => {
                let Some(disk) = &self.disk else { return false };
                disk.fill();
                self.readyz_says("53100").await;
                tokio::time::sleep(hold).await; // the fault's duration: the disk stays full a while
                self.disk.as_ref().unwrap().free();
            }
            Fault::PgFast | Fault::PgImmediate => {
                let mode = if fault == Fault::PgFast {
                    "fast"
                } else {
                    "immediate"
                };
                let cluster = self.cluster.clone();
                tokio::task::spawn_blocking(move || cluster.restart(mode))
                    .await
                    .unwrap();
            }
            Fault::ReceiverAway => {
                self.receiver.away().await;
                tokio::time::sleep(hold).await; // the fault's duration: the receiver unreachable
                self.receiver.back().await;
            }
            Fault::Receiver429 | Fault::Receiver503 | Fault::ReceiverSlow => {
                self.receiver.set_mode(match fault {
                    Fault::Receiver429 => MODE_429,
                    Fault::Receiver503 => MODE_503,
                    _ => MODE_SLOW,
                });
                tokio::time::sleep(hold).await; // the fault's duration: the receiver misbehaving
                self.receiver.set_mode(MODE_OK);
            }
            Fault::SeverListen => {
                let severed = match connect(&self.url).await {
                    Ok(c) => c
                        .query(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE application_name LIKE 'pgwebhooks listen%'",
                            &[],
                        )
                        .await
                        .map(|rows| rows.len())
                        .unwrap_or(0),
                    Err(_) => 0,
                };
                if severed == 0 {
                    return false;
                }
            }
        }
        self.replicas.check_alive();
        *self.done.entry(fault).or_default() += 1;
        true
    }

    /// While `victim` is away or slow, the other replicas' recorded
    /// attempts rise within the lease plus a few seconds.
    async fn others_deliver(&self, victim: &str, since: std::time::SystemTime, fault: Fault) {
        if self.replicas.all.len() < 2 {
            return;
        }
        let since: std::time::SystemTime = since;
        let url = self.url.clone();
        support::wait::until(
            &format!(
                "{}: replicas other than {victim} to keep delivering",
                fault.name()
            ),
            LEASE + Duration::from_secs(5),
            || {
                let (url, victim) = (url.clone(), victim.to_owned());
                async move {
                    let c = connect(&url).await.ok()?;
                    let n: i64 = c
                        .query_one(
                            "SELECT count(*) FROM webhooks.attempts WHERE replica <> $1 AND started_at >= $2",
                            &[&victim, &since],
                        )
                        .await
                        .ok()?
                        .get(0);
                    (n > 0).then_some(())
                }
            },
        )
        .await;
    }

    /// Some replica's `/readyz` answers 503 naming `what`.
    async fn readyz_says(&self, what: &str) {
        let urls: Vec<String> = self
            .replicas
            .all
            .iter()
            .map(|r| format!("http://{}/readyz", r.listen))
            .collect();
        support::wait::until(
            &format!("a replica's /readyz to say {what}"),
            LEASE + Duration::from_secs(10),
            || {
                let (http, urls) = (self.http.clone(), urls.clone());
                let what = what.to_owned();
                async move {
                    for url in urls {
                        let Ok(resp) = http.get(&url).send().await else {
                            continue;
                        };
                        if resp.status() == 503 && resp.text().await.is_ok_and(|t| t.contains(&what)) {
                            return Some(());
                        }
                    }
                    None
                }
            },
        )
        .await;
    }
}

// ---------------------------------------------------------------- main

fn main() {
    let Some(opts) = Opts::parse() else {
        println!("fault_injection: skipped (filtered out)");
        return;
    };
    pgwebhooks::deliver::http::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(opts));
}

async fn run(opts: Opts) {
    let started = Instant::now();
    println!("fault_injection: {opts:?}");
    let cluster = Arc::new(Cluster::start().await);
    let url = cluster.url();
    let admin = connect(&url).await.unwrap();
    admin
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS app;
             CREATE TABLE app.orders (
                 id           bigserial PRIMARY KEY,
                 tenant_id    text NOT NULL,
                 amount_cents integer NOT NULL,
                 status       text NOT NULL DEFAULT 'new',
                 paid_at      timestamptz,
                 created_at   timestamptz NOT NULL DEFAULT now());
             SELECT webhooks.watch('app.orders', 'order',
                 '{\"status_column\": \"status\", \"tenant_column\": \"tenant_id\", \"ops\": [\"insert\", \"update\"]}');",
        )
        .await
        .unwrap();
    let receiver = FaultyReceiver::start().await;
    // Every event to /all; only payments to /paid.
    endpoint(&admin, &receiver.url("all"), &["*"], "").await;
    endpoint(&admin, &receiver.url("paid"), &["order.paid"], "").await;
    drop(admin);

    let logs = std::env::temp_dir().join(format!("pgwebhooks-faults-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    // disk-full: deliveries and attempts on a small filesystem of their
    // own (as root, which mounting needs; skipped, and said, otherwise).
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let disk = root.then(|| SmallDisk::mount("256m"));
    if let Some(disk) = &disk {
        let c = connect(&url).await.unwrap();
        disk.hold_tables(&c, &["webhooks.deliveries", "webhooks.attempts"])
            .await;
    } else {
        println!("  disk-full: skipped (mounting a small filesystem needs root)");
    }
    let replicas = Replicas::start(url.clone(), logs.clone(), opts.replicas).await;

    let events = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // The writers' latest error: shown while nothing could be written.
    let last_error = Arc::new(Mutex::new(None::<String>));
    let per_writer = opts.rate_per_s as f64 / opts.writers as f64;
    let writers: Vec<_> = (0..opts.writers)
        .map(|i| {
            tokio::spawn(writer(
                url.clone(),
                per_writer,
                opts.seed.wrapping_add(i as u64 + 1),
                events.clone(),
                stop.clone(),
                last_error.clone(),
            ))
        })
        .collect();

    // The faults, in a random order, spread over the run.
    let mut injector = Injector {
        cluster: cluster.clone(),
        url: url.clone(),
        receiver: receiver.clone(),
        replicas,
        rng: fastrand::Rng::with_seed(opts.seed),
        done: BTreeMap::new(),
        disk,
        http: reqwest::Client::new(),
    };
    let kinds: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| *f != Fault::DiskFull || injector.disk.is_some())
        .collect();
    let mut plan: Vec<Fault> = kinds
        .iter()
        .flat_map(|f| std::iter::repeat_n(*f, opts.faults_per_kind as usize))
        .collect();
    injector.rng.shuffle(&mut plan);
    let mut failed_tries = 0;
    // Duplicates counted from one fault's start to the next one's.
    let duplicates_now = || receiver.state.seen.lock().unwrap().duplicates();
    let mut per_fault: BTreeMap<Fault, Vec<u64>> = BTreeMap::new();
    let mut current: Option<(Fault, u64)> = None;
    while let Some(fault) = plan.pop() {
        // Pause between faults so that work flows in between.
        let gap = Duration::from_millis(injector.rng.u64(200..1200));
        tokio::time::sleep(gap).await; // the gap between faults (load generation, not a wait for a condition)
        let before = duplicates_now();
        if injector.inject(fault).await {
            if let Some((f, at)) = current.replace((fault, before)) {
                per_fault.entry(f).or_default().push(before - at);
            }
        } else {
            failed_tries += 1;
            assert!(failed_tries < 200, "could not inject {}", fault.name());
            plan.insert(0, fault);
        }
        let done: u32 = injector.done.values().sum();
        if done.is_multiple_of(10) {
            let written = events.load(Ordering::SeqCst);
            println!(
                "  {:>5.1}s  {done} faults, {written} events written",
                started.elapsed().as_secs_f64(),
            );
            if written == 0 {
                if let Some(e) = last_error.lock().unwrap().as_ref() {
                    println!("  nothing written yet; the writers' latest error: {e}");
                }
            }
        }
    }
    let faults_over = started.elapsed();
    // The stream goes on until the event target is reached.
    support::wait::until(
        "the writers to reach the event target",
        Duration::from_secs(opts.events / opts.rate_per_s as u64 * 4 + 120),
        || {
            let n = events.load(Ordering::SeqCst);
            async move { (n >= opts.events).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut written = Written::default();
    for w in writers {
        let w = w.await.unwrap();
        written.acked_ids.extend(w.acked_ids);
        written.errors += w.errors;
    }
    injector.replicas.check_alive();
    let writing_over = started.elapsed();

    // ---- capture: exactly one event per committed change, none for others
    let orders = count(&url, "SELECT count(*) FROM app.orders").await;
    let acked: HashSet<i64> = written.acked_ids.iter().copied().collect();
    let present: HashSet<i64> = ask(&url, "SELECT id FROM app.orders")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost_writes = acked.difference(&present).count();
    assert_eq!(lost_writes, 0, "acknowledged INSERTs missing from app.orders");
    let capture_errors = count(
        &url,
        "SELECT count(*) FROM (
            SELECT o.id,
                   count(e.event_id) FILTER (WHERE e.event_type = 'order.created') AS created,
                   count(e.event_id) FILTER (WHERE e.event_type = 'order.paid') AS paid,
                   o.status
              FROM app.orders o
              LEFT JOIN webhooks.events e ON (e.payload->>'id')::bigint = o.id
             GROUP BY o.id, o.status) s
          WHERE created <> 1 OR paid <> (status = 'paid')::int",
    )
    .await;
    let orphan_events = count(
        &url,
        "SELECT count(*) FROM webhooks.events e
          WHERE NOT EXISTS (SELECT 1 FROM app.orders o WHERE o.id = (e.payload->>'id')::bigint)",
    )
    .await;
    assert_eq!(capture_errors, 0, "orders without exactly one event per change");
    assert_eq!(orphan_events, 0, "events for changes that never committed");

    // ---- delivery: every event to every matching endpoint, then quiet
    let expected: Vec<(String, String)> = ask(
        &url,
        "SELECT '/all', event_id::text FROM webhooks.events
         UNION ALL
         SELECT '/paid', event_id::text FROM webhooks.events WHERE event_type = 'order.paid'",
    )
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let missing: Vec<&(String, String)> = {
            let seen = receiver.state.seen.lock().unwrap();
            expected
                .iter()
                .filter(|k| seen.by_key.get(*k).is_none_or(|a| a.acked == 0))
                .collect()
        };
        let open = count(
            &url,
            "SELECT (SELECT count(*) FROM webhooks.deliveries WHERE status <> 'delivered' OR claimed_by IS NOT NULL)
                  + (SELECT count(*) FROM webhooks.fanout_batches)",
        )
        .await;
        if missing.is_empty() && open == 0 {
            break;
        }
        if Instant::now() > deadline {
            let by_status = ask(
                &url,
                "SELECT status || coalesce(' claimed by ' || claimed_by, '') || ': ' || count(*)
                   FROM webhooks.deliveries GROUP BY status, claimed_by",
            )
            .await;
            let by_status: Vec<String> = by_status.iter().map(|r| r.get(0)).collect();
            panic!(
                "not converged: {} of {} deliveries never acknowledged (first: {:?}); deliveries {:?}; logs in {}",
                missing.len(),
                expected.len(),
                &missing[..missing.len().min(5)],
                by_status,
                logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await; // poll interval, bounded by the deadline
    }
    let converged = started.elapsed();
    if let Some((f, at)) = current.take() {
        per_fault.entry(f).or_default().push(duplicates_now() - at);
    }

    // ---- the replicas recovered by themselves and are listening again
    injector.replicas.check_alive();
    let http = reqwest::Client::new();
    for r in &injector.replicas.all {
        let metrics_url = format!("http://{}/metrics", r.listen);
        support::wait::until(
            &format!("replica {} to be ready with its LISTEN connected", r.name),
            Duration::from_secs(30),
            || {
                let (http, metrics_url) = (http.clone(), metrics_url.clone());
                async move {
                    let text = http.get(&metrics_url).send().await.ok()?.text().await.ok()?;
                    text.lines()
                        .any(|l| l.trim() == "pgwebhooks_listener_connected 1")
                        .then_some(())
                }
            },
        )
        .await;
    }

    // ---- counts
    let attempts = count(&url, "SELECT count(*) FROM webhooks.attempts").await;
    let seen = receiver.state.seen.lock().unwrap();
    let expected_keys: HashSet<&(String, String)> = expected.iter().collect();
    let unexpected = seen.by_key.keys().filter(|k| !expected_keys.contains(k)).count();
    let acked_total: u64 = seen.by_key.values().map(|a| a.acked as u64).sum();
    let refused_total: u64 = seen.by_key.values().map(|a| a.refused as u64).sum();
    let duplicates = acked_total - expected.len() as u64;
    let dup_keys = seen.by_key.values().filter(|a| a.acked > 1).count();
    let kills: u32 = injector.replicas.all.iter().map(|r| r.restarts).sum();

    println!("\nfault_injection: seed {}", opts.seed);
    println!("  faults injected (duplicates acknowledged from each fault's start to the next one's):");
    for (f, n) in &injector.done {
        let d = per_fault.get(f).cloned().unwrap_or_default();
        println!(
            "    {:<15} {n:>3}   duplicates {:>5} in all, at most {:>4} per fault: {d:?}",
            f.name(),
            d.iter().sum::<u64>(),
            d.iter().max().copied().unwrap_or(0)
        );
    }
    println!(
        "  orders {orders}, events {} (acknowledged writes {}, write errors during faults {})",
        expected_keys.iter().filter(|k| k.0 == "/all").count(),
        acked.len(),
        written.errors
    );
    println!(
        "  deliveries expected {}, all acknowledged; requests {}, refused/late answers {refused_total}",
        expected.len(),
        seen.requests
    );
    println!(
        "  duplicates acknowledged {duplicates} ({dup_keys} deliveries, {:.2}% of deliveries; same webhook-id: {})",
        100.0 * duplicates as f64 / expected.len().max(1) as f64,
        seen.id_mismatch == 0
    );
    println!("  attempts recorded {attempts}; replica restarts after SIGKILL {kills}");
    println!(
        "  time: faults over {:.0}s, writing over {:.0}s, converged {:.0}s",
        faults_over.as_secs_f64(),
        writing_over.as_secs_f64(),
        converged.as_secs_f64()
    );

    assert_eq!(seen.bad_signature, 0, "requests with a bad signature");
    assert_eq!(seen.id_mismatch, 0, "a webhook-id differing from the event id");
    assert_eq!(
        unexpected, 0,
        "deliveries to an endpoint the event does not match"
    );
    for f in kinds {
        assert_eq!(
            injector.done.get(&f).copied().unwrap_or(0),
            opts.faults_per_kind,
            "{} faults",
            f.name()
        );
    }
    // At least once: a duplicate follows a SIGKILL or a restart between a
    // receiver's answer and its record. Few means bounded by what was in
    // flight at those moments, far below the stream.
    let faults_that_duplicate = u64::from(kills) + 5 * u64::from(opts.faults_per_kind);
    let bound = (expected.len() as u64 / 20).max(100 * faults_that_duplicate.max(1));
    assert!(duplicates <= bound, "{duplicates} duplicates, more than {bound}");
    drop(seen);
    drop(injector); // stops the replicas
    let _ = std::fs::remove_dir_all(&logs);
    println!("fault_injection: ok");
}
