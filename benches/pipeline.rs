//! The pipeline benchmark: the whole system on this machine, measured the
//! way `docs` performance.md defines (every key, every target).
//!
//! ```sh
//! cargo bench --bench pipeline              # full run (~12 minutes)
//! cargo bench --bench pipeline -- --quick   # scaled down for CI (< 2 minutes)
//! ```
//!
//! It starts its own throwaway PostgreSQL (default durability: fsync and
//! synchronous_commit on; max_connections 200, shared_buffers 256MB),
//! migrates it, creates `bench.watched` (captured by `webhooks.watch`) and
//! its unwatched twin `bench.plain`, starts a fast in-process receiver
//! (counts requests, records each `webhook-id`'s arrival, verifies every
//! 100th signature) and runs `pgwebhooks run` as a separate process, then
//! measures:
//!
//! - `trigger_overhead_ratio` / `_1c` / `bulk_overhead_ratio`: INSERT rate
//!   into the watched table ÷ the unwatched one (8 clients / 1 client
//!   single-row transactions, 4 clients 1,000-row statements), plain first,
//!   then watched, same duration, with the sidecar running and delivering.
//! - `drain_per_s`: a committed backlog drained by one sidecar started
//!   after the fact (first receipt → every delivery recorded), and
//!   `drain_vs_insert_rate` = that ÷ the unwatched 8-client insert rate.
//! - `http_ceiling_per_s`: the receiver alone under plain HTTP load.
//! - `latency_p50_ms` / `latency_p99_ms`: commit return → receipt at a
//!   steady offered load (open loop, `webhooks.emit`).
//! - `backlog_1m_ratio`, `replicas_2_over_1`, `rss_mb` (peak VmHWM during
//!   the large drain), `dead_tuples_after_soak`.
//!
//! It prints a table and, as its last line, one JSON object with every key
//! (null only when a scenario could not run; the reason is printed above).
//! The exit code is non-zero only when the pipeline misbehaved: events lost
//! or left undelivered, bad signatures, a sidecar that died or would not
//! stop. Missed targets are reported, not failed.

#[path = "pipeline/cluster.rs"]
mod cluster;
#[path = "pipeline/load.rs"]
mod load;
#[path = "pipeline/receiver.rs"]
mod receiver;
#[path = "pipeline/report.rs"]
mod report;
#[path = "pipeline/sidecar.rs"]
mod sidecar;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use cluster::{Cluster, DB};
use load::{OpenStatement, Rate, Statement};
use receiver::Receiver;
use report::Report;
use sidecar::Sidecar;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How big each scenario is.
struct Sizes {
    quick: bool,
    /// Per side of every overhead ratio.
    ratio_secs: f64,
    warmup_secs: f64,
    drain_events: u64,
    backlog_small: u64,
    backlog_large: u64,
    http_secs: f64,
    latency_rate: f64,
    latency_secs: f64,
    soak_rate: f64,
    soak_secs: f64,
    soak_wait_secs: f64,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            quick: false,
            ratio_secs: 8.0,
            warmup_secs: 1.0,
            drain_events: 100_000,
            backlog_small: 10_000,
            backlog_large: 1_000_000,
            http_secs: 6.0,
            latency_rate: 1000.0,
            latency_secs: 30.0,
            soak_rate: 1000.0,
            soak_secs: 300.0,
            soak_wait_secs: 60.0,
        }
    }
    fn quick() -> Sizes {
        Sizes {
            quick: true,
            ratio_secs: 2.0,
            warmup_secs: 0.5,
            drain_events: 20_000,
            backlog_small: 10_000,
            backlog_large: 100_000,
            http_secs: 2.0,
            latency_rate: 500.0,
            latency_secs: 5.0,
            soak_rate: 500.0,
            soak_secs: 20.0,
            soak_wait_secs: 10.0,
        }
    }
}

/// Pending deliveries that make no progress for this long count as lost.
const STALL: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let sizes = if std::env::args().any(|a| a == "--quick") {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let mut report = Report::new(sizes.quick);
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match Cluster::start() {
        Err(e) => report.skip_all(&format!("could not start PostgreSQL: {e}")),
        Ok(mut cluster) => {
            runtime.block_on(async {
                match Bench::setup(&cluster, sizes).await {
                    Ok(mut bench) => bench.run(&mut report).await,
                    Err(e) => report.skip_all(&format!("set-up failed: {e}")),
                }
            });
            // Logs live in the cluster's directory: read them before it goes.
            report.collect_logs(&cluster.dir);
            cluster.stop();
        }
    }
    drop(runtime);
    report.note(format!("total time: {:.0} s", started.elapsed().as_secs_f64()));
    report.print();
    let _ = std::io::stdout().flush();
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Bench {
    sizes: Sizes,
    config: tokio_postgres::Config,
    url: String,
    db: tokio_postgres::Client,
    receiver: Receiver,
    secret: String,
    dir: PathBuf,
    pids_file: PathBuf,
    replicas: usize,
    /// The unwatched 8-client single-row rate (for drain_vs_insert_rate).
    plain_8c: Option<f64>,
}

/// One drain of a committed backlog.
struct Drain {
    events: u64,
    per_s: f64,
    secs: f64,
    startup: Duration,
    fill: Duration,
    rss_mb: f64,
    sidecar_cpu_ms: f64,
    machine_cpu_ms: f64,
}

/// Both sides of an overhead ratio.
struct Overhead {
    plain: Rate,
    watched: Rate,
    rows: u64,
    /// Deliveries received while the watched side was running.
    during: u64,
    /// How long the rest took to arrive after the inserts stopped.
    catch_up: Option<Duration>,
}

impl Overhead {
    fn ratio(&self) -> f64 {
        self.watched.per_s() / self.plain.per_s()
    }
}

struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
    events: usize,
    before_commit_return: usize,
    max_lag: Duration,
}

struct Soak {
    events: u64,
    dead: i64,
    tables: Vec<(String, i64, i64, i64)>,
}

impl Bench {
    async fn setup(cluster: &Cluster, sizes: Sizes) -> Res<Bench> {
        let admin = load::connect(&cluster.config("postgres")).await?;
        admin.batch_execute(&format!("CREATE DATABASE {DB}")).await?;
        let config = cluster.config(DB);
        let mut db = load::connect(&config).await?;
        pgwebhooks::db::migrate::run(&mut db, false).await?;
        db.batch_execute(
            "CREATE SCHEMA bench;
             CREATE TABLE bench.watched (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 a text, b int, c timestamptz DEFAULT now(), d text);
             CREATE TABLE bench.plain (LIKE bench.watched INCLUDING ALL);
             SELECT webhooks.watch('bench.watched', 'item');",
        )
        .await?;
        let secret = pgwebhooks::deliver::sign::generate_secret()?;
        let receiver = Receiver::start(&secret)?;
        let id: i64 = db
            .query_one(
                "INSERT INTO webhooks.endpoints (url) VALUES ($1) RETURNING id",
                &[&receiver.url],
            )
            .await?
            .get(0);
        db.execute(
            "INSERT INTO webhooks.endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)",
            &[&id, &secret],
        )
        .await?;
        Ok(Bench {
            sizes,
            config,
            url: cluster.url(),
            db,
            receiver,
            secret,
            dir: cluster.dir.clone(),
            pids_file: cluster.pids_file(),
            replicas: 0,
            plain_8c: None,
        })
    }

    async fn run(&mut self, r: &mut Report) {
        let s = &self.sizes;
        let (secs, warm) = (s.ratio_secs, s.warmup_secs);
        let (drain_n, small, large) = (s.drain_events, s.backlog_small, s.backlog_large);
        let row = Statement::Row;

        r.heading(&format!("trigger overhead: single-row INSERTs, 8 clients, {secs} s per side"));
        match self.overhead(row, 8, true).await {
            Ok(o) => {
                self.plain_8c = Some(o.plain.per_s());
                r.overhead("trigger_overhead_ratio", &o);
                r.set("trigger_overhead_ratio", o.ratio());
            }
            Err(e) => r.fail_or_skip("trigger_overhead_ratio", e),
        }
        r.heading(&format!("trigger overhead: single-row INSERTs, 1 client, {secs} s per side"));
        match self.overhead(row, 1, true).await {
            Ok(o) => {
                r.overhead("trigger_overhead_ratio_1c", &o);
                r.set("trigger_overhead_ratio_1c", o.ratio());
            }
            Err(e) => r.fail_or_skip("trigger_overhead_ratio_1c", e),
        }
        r.heading(&format!("bulk overhead: 1,000-row INSERTs, 4 clients, {secs} s per side"));
        match self.overhead(Statement::Bulk, 4, false).await {
            Ok(o) => {
                r.overhead("bulk_overhead_ratio", &o);
                r.set("bulk_overhead_ratio", o.ratio());
            }
            Err(e) => r.fail_or_skip("bulk_overhead_ratio", e),
        }
        let _ = warm;

        r.heading(&format!("drain: {drain_n} committed events, one sidecar"));
        let one = match self.drain(drain_n, 1).await {
            Ok(d) => {
                r.drain("drain", &d);
                r.set("drain_per_s", d.per_s);
                match self.plain_8c {
                    Some(p) => r.set("drain_vs_insert_rate", d.per_s / p),
                    None => r.skip("drain_vs_insert_rate", "the 8-client insert rate is missing"),
                }
                Some(d.per_s)
            }
            Err(e) => {
                r.fail_or_skip("drain_per_s", e);
                r.skip("drain_vs_insert_rate", "the drain did not complete");
                None
            }
        };

        r.heading("HTTP ceiling: the receiver alone");
        match self.ceiling().await {
            Ok(c) => {
                r.note(format!("load generator: {}", c.tool));
                r.set("http_ceiling_per_s", c.per_s);
            }
            Err(e) => r.skip("http_ceiling_per_s", &e.to_string()),
        }

        let (rate, lsecs) = (self.sizes.latency_rate, self.sizes.latency_secs);
        r.heading(&format!("latency: commit → receipt, {rate} events/s offered for {lsecs} s"));
        match self.latency().await {
            Ok(l) => {
                r.note(format!(
                    "{} events; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} receipts before the commit returned; \
                     generator's worst lag {:.1} ms",
                    l.events,
                    l.p50,
                    l.p99,
                    l.max,
                    l.before_commit_return,
                    l.max_lag.as_secs_f64() * 1e3
                ));
                r.set("latency_p50_ms", l.p50);
                r.set("latency_p99_ms", l.p99);
            }
            Err(e) => {
                r.fail_or_skip("latency_p50_ms", e);
                r.skip("latency_p99_ms", "the latency run did not complete");
            }
        }

        r.heading(&format!("backlog: {large} pending ÷ {small} pending"));
        let small_rate = match self.drain(small, 1).await {
            Ok(d) => {
                r.drain("small backlog", &d);
                Some(d.per_s)
            }
            Err(e) => {
                r.fail_or_skip("backlog_1m_ratio", e);
                None
            }
        };
        match self.drain(large, 1).await {
            Ok(d) => {
                r.drain("large backlog", &d);
                r.set("rss_mb", d.rss_mb);
                match small_rate {
                    Some(s) => r.set("backlog_1m_ratio", d.per_s / s),
                    None => r.skip("backlog_1m_ratio", "the small drain did not complete"),
                }
            }
            Err(e) => {
                r.skip("rss_mb", "the large drain did not complete");
                r.fail_or_skip("backlog_1m_ratio", e);
            }
        }

        r.heading(&format!("replicas: {drain_n} committed events, two sidecars"));
        match self.drain(drain_n, 2).await {
            Ok(d) => {
                r.drain("two replicas", &d);
                match one {
                    Some(one) => r.set("replicas_2_over_1", d.per_s / one),
                    None => r.skip("replicas_2_over_1", "the one-sidecar drain did not complete"),
                }
            }
            Err(e) => r.fail_or_skip("replicas_2_over_1", e),
        }

        let (rate, ssecs, wait) = (self.sizes.soak_rate, self.sizes.soak_secs, self.sizes.soak_wait_secs);
        r.heading(&format!("soak: {rate} inserts/s for {ssecs} s, dead tuples {wait} s later"));
        match self.soak().await {
            Ok(s) => {
                r.note(format!("{} events delivered; webhooks tables (dead, live, autovacuums):", s.events));
                for (t, dead, live, vacuums) in &s.tables {
                    r.note(format!("  {t:<18} {dead:>8} {live:>9} {vacuums:>3}"));
                }
                r.set("dead_tuples_after_soak", s.dead as f64);
            }
            Err(e) => r.fail_or_skip("dead_tuples_after_soak", e),
        }

        let bad = self.receiver.stats.bad_signatures.load(Relaxed);
        let verified = self.receiver.stats.verified.load(Relaxed);
        r.note(format!("signatures verified (every 100th request): {verified} good, {bad} bad"));
        if bad > 0 {
            let examples = self.receiver.stats.bad_examples.lock().unwrap().join("; ");
            r.failure(format!("{bad} bad signatures, e.g. {examples}"));
        }
    }

    fn spawn_sidecar(&mut self) -> Res<Sidecar> {
        self.replicas += 1;
        let replica = format!("bench-{}", self.replicas);
        let log = self.dir.join(format!("sidecar-{replica}.log"));
        Sidecar::spawn(&self.url, &replica, &log, &self.pids_file)
    }

    /// Empty outbox, deliveries and bench tables, a checkpoint, a fresh receiver count.
    async fn reset(&self) -> Res<()> {
        self.db
            .batch_execute(
                "TRUNCATE webhooks.events, webhooks.deliveries, webhooks.attempts, webhooks.fanout_batches,
                          bench.watched, bench.plain;
                 CHECKPOINT",
            )
            .await?;
        self.receiver.stats.reset();
        Ok(())
    }

    /// Both sides of one overhead ratio, plain first, with a sidecar
    /// delivering; `wait_all` waits for every watched event to arrive.
    async fn overhead(&mut self, stmt: Statement, clients: usize, wait_all: bool) -> Res<Overhead> {
        let secs = self.sizes.ratio_secs;
        self.reset().await?;
        let mut sc = self.spawn_sidecar()?;
        sc.wait_ready(&self.db).await?;
        load::closed_loop(&self.config, "bench.plain", stmt, clients, self.sizes.warmup_secs).await?;
        let plain = load::closed_loop(&self.config, "bench.plain", stmt, clients, secs).await?;
        let watched = load::closed_loop(&self.config, "bench.watched", stmt, clients, secs).await?;
        let rows = watched.transactions * stmt.rows();
        let during = self.receiver.stats.unique();
        let mut catch_up = None;
        let mut sidecars = vec![sc];
        if wait_all {
            let t = Instant::now();
            self.wait_delivered(rows, &mut sidecars).await?;
            catch_up = Some(t.elapsed());
            self.verify(rows).await?;
        }
        for sc in sidecars {
            sc.stop().await?;
        }
        Ok(Overhead {
            plain,
            watched,
            rows,
            during,
            catch_up,
        })
    }

    /// Commits `events` with no sidecar running, then starts `replicas`
    /// sidecars and times the drain from the first receipt until every
    /// delivery is recorded.
    async fn drain(&mut self, events: u64, replicas: usize) -> Res<Drain> {
        self.reset().await?;
        let fill = load::fill(&self.config, "bench.watched", events).await?;
        self.db.batch_execute("ANALYZE webhooks.events; CHECKPOINT").await?;
        let busy = sidecar::machine_busy();
        let spawned = Instant::now();
        let mut sidecars = (0..replicas).map(|_| self.spawn_sidecar()).collect::<Res<Vec<_>>>()?;
        let done = self.wait_delivered(events, &mut sidecars).await?;
        let busy = sidecar::machine_busy().zip(busy).map(|(b, a)| b.saturating_sub(a));
        let first = self.receiver.stats.first().ok_or("nothing received")?;
        let rss_mb = sidecars.iter().filter_map(|s| s.peak_rss_mb()).fold(0.0, f64::max);
        let cpu: Duration = sidecars.iter().filter_map(|s| s.cpu()).sum();
        for sc in sidecars {
            sc.stop().await?;
        }
        self.verify(events).await?;
        let secs = done.duration_since(first).as_secs_f64();
        let per_ms = |d: Duration| d.as_secs_f64() * 1e3 / events as f64;
        Ok(Drain {
            events,
            per_s: events as f64 / secs,
            secs,
            startup: first.duration_since(spawned),
            fill,
            rss_mb,
            sidecar_cpu_ms: per_ms(cpu),
            machine_cpu_ms: busy.map(per_ms).unwrap_or(f64::NAN),
        })
    }

    async fn ceiling(&mut self) -> Res<load::Ceiling> {
        let body = self.receiver.stats.sample_body().ok_or("no delivered body to replay")?;
        let stats = &self.receiver.stats;
        stats.reset();
        stats.lenient.store(true, Relaxed);
        let result = load::http_ceiling(&self.receiver.url, body.to_vec(), &self.secret, self.sizes.http_secs).await;
        stats.lenient.store(false, Relaxed);
        stats.reset();
        result
    }

    async fn latency(&mut self) -> Res<Latency> {
        self.reset().await?;
        let mut sc = self.spawn_sidecar()?;
        sc.wait_ready(&self.db).await?;
        tokio::time::sleep(Duration::from_secs(1)).await; // let it go idle (the NOTIFY path)
        let (rate, secs) = (self.sizes.latency_rate, self.sizes.latency_secs);
        let run = load::open_loop(&self.config, OpenStatement::Emit, rate, secs, 4).await?;
        let mut sidecars = vec![sc];
        self.wait_delivered(run.sent, &mut sidecars).await?;
        for sc in sidecars {
            sc.stop().await?;
        }
        self.verify(run.sent).await?;
        let mut ms = Vec::with_capacity(run.commits.len());
        let mut early = 0;
        for (id, committed) in &run.commits {
            let at = self.receiver.stats.arrival(id).ok_or("an emitted event was never received")?;
            if at < *committed {
                early += 1;
            }
            ms.push(at.saturating_duration_since(*committed).as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
        Ok(Latency {
            p50: pct(0.50),
            p99: pct(0.99),
            max: *ms.last().ok_or("no events")?,
            events: ms.len(),
            before_commit_return: early,
            max_lag: run.max_lag,
        })
    }

    async fn soak(&mut self) -> Res<Soak> {
        self.reset().await?;
        let mut sc = self.spawn_sidecar()?;
        sc.wait_ready(&self.db).await?;
        let s = &self.sizes;
        let run = load::open_loop(&self.config, OpenStatement::InsertWatched, s.soak_rate, s.soak_secs, 4).await?;
        let ended = Instant::now();
        let wait = Duration::from_secs_f64(s.soak_wait_secs);
        let mut sidecars = vec![sc];
        self.wait_delivered(run.sent, &mut sidecars).await?;
        self.verify(run.sent).await?;
        tokio::time::sleep_until((ended + wait).into()).await;
        for sc in &mut sidecars {
            sc.check_alive()?;
        }
        let rows = self
            .db
            .query(
                "SELECT relname::text, n_dead_tup, n_live_tup, autovacuum_count
                   FROM pg_stat_user_tables WHERE schemaname = 'webhooks' ORDER BY n_dead_tup DESC, relname",
                &[],
            )
            .await?;
        for sc in sidecars {
            sc.stop().await?;
        }
        let tables: Vec<(String, i64, i64, i64)> =
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
        Ok(Soak {
            events: run.sent,
            dead: tables.iter().map(|t| t.1).sum(),
            tables,
        })
    }

    /// Waits until the receiver has `n` distinct webhook-ids and
    /// webhooks.deliveries shows `n` delivered; returns when. No progress
    /// for [`STALL`] is a pipeline failure (events lost or stuck).
    async fn wait_delivered(&mut self, n: u64, sidecars: &mut [Sidecar]) -> Res<Instant> {
        let stats = self.receiver.stats.clone();
        let mut progress = (u64::MAX, Instant::now());
        let mut i = 0u64;
        loop {
            let got = stats.unique();
            if got >= n {
                break;
            }
            if got != progress.0 {
                progress = (got, Instant::now());
            } else if progress.1.elapsed() > STALL {
                let why = format!("the receiver has {got} of {n} events, no progress for {STALL:?}");
                return Err(Lost(format!("{why}; {}", self.status_summary().await)).into());
            }
            i += 1;
            if i % 500 == 0 {
                for sc in sidecars.iter_mut() {
                    sc.check_alive().map_err(|e| Lost(e.to_string()))?;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let since = Instant::now();
        loop {
            let delivered: i64 = self
                .db
                .query_one("SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'", &[])
                .await?
                .get(0);
            if delivered as u64 >= n {
                return Ok(Instant::now());
            }
            if since.elapsed() > STALL {
                let why = format!("all {n} received but only {delivered} recorded as delivered after {STALL:?}");
                return Err(Lost(format!("{why}; {}", self.status_summary().await)).into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Events, deliveries and receipts agree: exactly `n` of each.
    async fn verify(&self, n: u64) -> Res<()> {
        let row = self
            .db
            .query_one(
                "SELECT (SELECT count(*) FROM webhooks.events),
                        (SELECT count(*) FROM webhooks.deliveries),
                        (SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'),
                        (SELECT count(*) FROM webhooks.attempts)",
                &[],
            )
            .await?;
        let (events, deliveries, delivered, attempts): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let unique = self.receiver.stats.unique();
        let n = n as i64;
        if events != n || deliveries != n || delivered != n || unique as i64 != n || attempts < n {
            return Err(Lost(format!(
                "expected {n} of each: events {events}, deliveries {deliveries}, delivered {delivered}, \
                 attempts {attempts}, distinct ids received {unique}"
            ))
            .into());
        }
        Ok(())
    }

    async fn status_summary(&self) -> String {
        match self
            .db
            .query(
                "SELECT status, count(*) FROM webhooks.deliveries GROUP BY 1 ORDER BY 1",
                &[],
            )
            .await
        {
            Ok(rows) => {
                let s: Vec<String> =
                    rows.iter().map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, i64>(1))).collect();
                format!("deliveries by status: {}", if s.is_empty() { "none".into() } else { s.join(", ") })
            }
            Err(e) => format!("(deliveries unreadable: {e})"),
        }
    }
}

/// The pipeline misbehaved (as opposed to the scenario being unable to run).
#[derive(Debug)]
pub struct Lost(String);

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Lost {}
