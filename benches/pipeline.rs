//! The pipeline benchmark: the whole system on this machine, every
//! scenario, JSON key and target of the design note on performance
//! (`docs/performance.md`).
//!
//! ```sh
//! cargo bench --bench pipeline              # full run, ~10 minutes
//! cargo bench --bench pipeline -- --quick   # scaled down for CI, ~1.5 minutes
//! cargo bench --bench pipeline -- --only trigger,latency   # just those scenarios
//! cargo bench --bench pipeline -- --only trigger --sidecar-env PGWEBHOOKS_BATCH_LINGER=0   # A/B a setting
//! ```
//!
//! It needs the PostgreSQL server binaries (PATH or
//! /usr/lib/postgresql/*/bin) and nothing else; `wrk` is used for the HTTP
//! ceiling when installed. It starts a throwaway cluster of its own
//! (default durability: fsync and synchronous_commit on; max_connections
//! 200, shared_buffers 256MB; as `postgres` when run as root; stopped and
//! deleted at the end, by a watchdog if this process dies), migrates it,
//! creates `bench.watched` (captured by `webhooks.watch`) and its unwatched
//! twin `bench.plain`, starts an in-process receiver on 127.0.0.1 (counts
//! requests, records each `webhook-id`'s first arrival, verifies every
//! 100th signature) and runs `pgwebhooks run` as a separate process
//! (stopped with SIGTERM between scenarios). Then:
//!
//! - `trigger_overhead_ratio` / `_1c` / `bulk_overhead_ratio`: INSERT rate
//!   into the watched table ÷ the unwatched one (8 clients / 1 client
//!   single-row transactions, 4 clients 1,000-row statements), unwatched
//!   first, then watched with the sidecar delivering, same duration; then
//!   the watched table once more with the sidecar stopped (capture's own
//!   cost, reported beside the key). Per side: xids, WAL bytes and CPU
//!   (sidecar, this process, the rest) per transaction.
//! - `drain_per_s`: a committed backlog drained by one sidecar started
//!   after the fact (first receipt → every delivery recorded in
//!   webhooks.deliveries); `drain_vs_insert_rate` = that ÷ the unwatched
//!   8-client single-row rate of the first scenario.
//! - `http_ceiling_per_s`: the receiver alone under plain HTTP load with a
//!   body the sidecar sent.
//! - `latency_p50_ms` / `latency_p99_ms`: commit return → receipt at a
//!   steady offered load (open loop, `SELECT webhooks.emit(...)`).
//! - `backlog_1m_ratio` (drain rate with the large backlog ÷ the small),
//!   `rss_mb` (the sidecar's VmHWM after the large drain),
//!   `replicas_2_over_1` (two sidecars on `drain_per_s`'s backlog),
//!   `dead_tuples_after_soak` (pg_stat_user_tables of schema webhooks after
//!   a steady emit() run and a wait; the run's latency, first vs last
//!   fifth, is reported beside it).
//!
//! - `update_capture_ratio`: single-row UPDATEs (one column, by primary
//!   key) of a 20-column, 10,000-row table, watched ÷ unwatched, 8 clients,
//!   no sidecar (ABBA).
//! - `payload_fn_failing_ratio`: beside the capture anchors, a table whose
//!   payload function raises for every row (capture fails open) ÷ unwatched.
//!
//! - `console_p95_ms`: the admin listener (console pages, `/api/v1`) over
//!   1,000,000 deliveries seeded in SQL: the slowest route's p95
//!   (`pipeline/console.rs`).
//! - `console_busy_hour_p95_ms`: the same with 250,000 of them in the last
//!   hour.
//!
//! Every scenario starts from empty outbox and delivery tables and checks
//! at its end that events, deliveries, attempts and distinct receipts all
//! agree. It prints progress and details, a table, and as its last line one
//! JSON object with every key (null only when a scenario could not run; the
//! reason is printed above). The exit code is non-zero only when the
//! pipeline misbehaved: events lost or left undelivered, bad signatures, a
//! sidecar that died or would not stop. Missed targets are reported, not
//! failed.

#[path = "pipeline/bench.rs"]
mod bench;
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
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bench::{Bench, Drain};
use cluster::Cluster;
use load::Statement;
use report::Report;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How big each scenario is.
pub struct Sizes {
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
    /// Deliveries seeded for `console_p95_ms`.
    console_rows: u64,
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
            console_rows: 1_000_000,
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
            console_rows: 100_000,
        }
    }
}

/// Pending deliveries that make no progress for this long count as lost.
pub const STALL: Duration = Duration::from_secs(30);

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
                    Ok(mut bench) => run(&mut bench, &mut report).await,
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

/// Every scenario in turn; a scenario that fails leaves its keys null.
async fn run(b: &mut Bench, r: &mut Report) {
    let s = &b.sizes;
    let secs = s.ratio_secs;
    let (drain_n, small, large) = (s.drain_events, s.backlog_small, s.backlog_large);
    let (lrate, lsecs) = (s.latency_rate, s.latency_secs);
    let (srate, ssecs, swait) = (s.soak_rate, s.soak_secs, s.soak_wait_secs);

    let mut plain_8c = None;
    let ratios = [
        (
            "trigger_overhead_ratio",
            Statement::Row,
            8,
            "single-row INSERTs, 8 clients",
        ),
        (
            "trigger_overhead_ratio_1c",
            Statement::Row,
            1,
            "single-row INSERTs, 1 client",
        ),
        (
            "bulk_overhead_ratio",
            Statement::Bulk,
            4,
            "1,000-row INSERTs, 4 clients",
        ),
    ];
    for (key, stmt, clients, what) in ratios {
        if !wanted(key) {
            r.skip(key, "not selected by --only");
            continue;
        }
        r.heading(&format!("{key}: {what}, {secs} s per side"));
        // Waiting for a bulk run's backlog would take minutes; the drain
        // scenarios check delivery.
        let wait_all = matches!(stmt, Statement::Row);
        match b.overhead(stmt, clients, wait_all).await {
            Ok(o) => {
                if key == "trigger_overhead_ratio" {
                    plain_8c = Some(o.plain.rate.per_s());
                }
                r.overhead(key, &o);
                r.set(key, o.ratio());
                if key == "bulk_overhead_ratio" {
                    r.set(
                        "bulk_capture_only_ratio",
                        o.capture_only.rate.per_s() / o.plain.rate.per_s(),
                    );
                }
            }
            Err(e) => {
                if key == "bulk_overhead_ratio" {
                    r.skip("bulk_capture_only_ratio", "the bulk scenario did not complete");
                }
                r.fail_or_skip(key, e)
            }
        }
    }
    if !wanted("bulk_overhead_ratio") {
        r.skip("bulk_capture_only_ratio", "not selected by --only");
    }

    let one = if !wanted("drain_per_s") && !wanted("replicas_2_over_1") {
        r.skip("drain_per_s", "not selected by --only");
        r.skip("drain_vs_insert_rate", "not selected by --only");
        None
    } else {
        r.heading(&format!("drain_per_s: {drain_n} committed events, one sidecar"));
        match b.drain(drain_n, 1).await {
            Ok(d) => {
                r.drain("one sidecar", &d);
                r.set("drain_per_s", d.per_s);
                match plain_8c {
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
        }
    };

    if !wanted("templated_drain_ratio") {
        r.skip("templated_drain_ratio", "not selected by --only");
    } else {
        r.heading(&format!(
            "templated_drain_ratio: {drain_n} events to a templated, filtered endpoint ÷ to a plain one"
        ));
        // Plain, shaped, shaped, plain: drift over the run (a warming
        // cache, another process) weighs on both sides alike.
        let mut sides: [Vec<Drain>; 2] = [Vec::new(), Vec::new()];
        let mut failed = None;
        for shaped in [false, true, true, false] {
            let d = if shaped {
                b.drain_shaped(drain_n).await
            } else {
                b.drain(drain_n, 1).await
            };
            match d {
                Ok(d) => {
                    let label = if shaped {
                        "body template + header placeholder + filter"
                    } else {
                        "plain endpoint"
                    };
                    r.drain(label, &d);
                    sides[shaped as usize].push(d);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            Some(e) => r.fail_or_skip("templated_drain_ratio", e),
            None => {
                let rate = |ds: &[Drain]| {
                    ds.iter().map(|d| d.events as f64).sum::<f64>() / ds.iter().map(|d| d.secs).sum::<f64>()
                };
                r.set("templated_drain_ratio", rate(&sides[1]) / rate(&sides[0]));
            }
        }
    }

    let anchor_keys = [
        "capture_only_ratio",
        "minimal_outbox_ratio",
        "hasura_trigger_ratio",
        "payload_fn_overhead_ratio",
        "capture_per_row_ratio",
        "payload_fn_failing_ratio",
    ];
    if !anchor_keys.iter().any(|k| wanted(k)) {
        for k in anchor_keys {
            r.skip(k, "not selected by --only");
        }
    } else {
        r.heading(&format!(
            "capture anchors: single-row INSERTs, 8 clients, no sidecar, 2 × {secs} s per side"
        ));
        match b.anchors(8).await {
            Ok(a) => {
                r.anchors(&a);
                let plain = a.plain.rate.per_s();
                r.set("capture_only_ratio", a.watched.rate.per_s() / plain);
                r.set("minimal_outbox_ratio", a.minimal.rate.per_s() / plain);
                r.set("hasura_trigger_ratio", a.hasura.rate.per_s() / plain);
                r.set("payload_fn_overhead_ratio", a.payload_fn.rate.per_s() / plain);
                r.set("capture_per_row_ratio", a.per_row.rate.per_s() / plain);
                r.set("payload_fn_failing_ratio", a.payload_failing.rate.per_s() / plain);
            }
            Err(e) => {
                for k in anchor_keys {
                    r.skip(k, &format!("the anchors did not run: {e}"));
                }
            }
        }
    }

    if !wanted("update_capture_ratio") {
        r.skip("update_capture_ratio", "not selected by --only");
    } else {
        r.heading(&format!(
            "update_capture_ratio: single-row UPDATEs of a 20-column table, 8 clients, no sidecar, 2 × {secs} s per side"
        ));
        match b.updates(8).await {
            Ok((plain, watched)) => {
                r.sides(&[("unwatched", &plain), ("watch()", &watched)], &plain);
                r.set("update_capture_ratio", watched.rate.per_s() / plain.rate.per_s());
            }
            Err(e) => r.skip("update_capture_ratio", &e.to_string()),
        }
    }

    if !wanted("http_ceiling_per_s") {
        r.skip("http_ceiling_per_s", "not selected by --only");
    } else {
        r.heading("http_ceiling_per_s: the receiver alone under plain HTTP load");
        match b.ceiling().await {
            Ok(c) => {
                r.note(format!("load generator: {}", c.tool));
                r.set("http_ceiling_per_s", c.per_s);
            }
            Err(e) => r.skip("http_ceiling_per_s", &e.to_string()),
        }
    }

    if !wanted("latency_p50_ms") && !wanted("latency_p99_ms") {
        r.skip("latency_p50_ms", "not selected by --only");
        r.skip("latency_p99_ms", "not selected by --only");
    } else {
        r.heading(&format!(
            "latency: commit → receipt, {lrate} emit()/s offered for {lsecs} s"
        ));
        match b.latency().await {
            Ok(l) => {
                r.latency(&l);
                r.set("latency_p50_ms", l.p50);
                r.set("latency_p99_ms", l.p99);
            }
            Err(e) => {
                r.fail_or_skip("latency_p50_ms", e);
                r.skip("latency_p99_ms", "the latency run did not complete");
            }
        }
    }

    if !wanted("backlog_1m_ratio") && !wanted("rss_mb") {
        r.skip("backlog_1m_ratio", "not selected by --only");
        r.skip("rss_mb", "not selected by --only");
    } else {
        r.heading(&format!(
            "backlog_1m_ratio: {large} pending ÷ {small} pending; rss_mb"
        ));
        let small_rate = match b.drain(small, 1).await {
            Ok(d) => {
                r.drain("small backlog", &d);
                Some(d.per_s)
            }
            Err(e) => {
                r.fail_or_skip("backlog_1m_ratio", e);
                None
            }
        };
        match b.drain(large, 1).await {
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
                if small_rate.is_some() {
                    r.fail_or_skip("backlog_1m_ratio", e);
                }
            }
        }
    }

    if !wanted("replicas_2_over_1") {
        r.skip("replicas_2_over_1", "not selected by --only");
    } else {
        r.heading(&format!(
            "replicas_2_over_1: {drain_n} committed events, two sidecars"
        ));
        match b.drain(drain_n, 2).await {
            Ok(d) => {
                r.drain("two sidecars", &d);
                match one {
                    Some(one) => r.set("replicas_2_over_1", d.per_s / one),
                    None => r.skip("replicas_2_over_1", "the one-sidecar drain did not complete"),
                }
            }
            Err(e) => r.fail_or_skip("replicas_2_over_1", e),
        }
    }

    if !wanted("dead_tuples_after_soak") {
        r.skip("dead_tuples_after_soak", "not selected by --only");
    } else {
        r.heading(&format!(
            "dead_tuples_after_soak: {srate} emit()/s for {ssecs} s, read {swait} s later"
        ));
        match b.soak().await {
            Ok(s) => {
                r.soak(&s);
                r.set("dead_tuples_after_soak", s.dead as f64);
            }
            Err(e) => r.fail_or_skip("dead_tuples_after_soak", e),
        }
    }

    for (key, busy_hour) in [("console_p95_ms", false), ("console_busy_hour_p95_ms", true)] {
        if !wanted(key) {
            r.skip(key, "not selected by --only");
            continue;
        }
        let n = b.sizes.console_rows;
        let spread = if busy_hour {
            "a quarter of them in the last hour"
        } else {
            "spread over a week"
        };
        r.heading(&format!(
            "{key}: every console page and /api/v1 call over {n} deliveries ({spread}), 20 requests each"
        ));
        match b.console(busy_hour).await {
            Ok(c) => {
                r.note(format!(
                    "seeded {} deliveries, events and attempts in {:.1} s",
                    c.rows,
                    c.seed.as_secs_f64()
                ));
                for (route, p50, p95) in &c.routes {
                    r.note(format!("{p50:>7.1} ms p50 {p95:>7.1} ms p95  {route}"));
                }
                let (worst, route) = c.worst();
                r.note(format!("slowest: {route}"));
                r.set(key, worst);
            }
            Err(e) => r.fail_or_skip(key, e),
        }
    }

    let stats = &b.receiver.stats;
    let (bad, verified) = (stats.bad_signatures.load(Relaxed), stats.verified.load(Relaxed));
    r.heading("signatures");
    r.note(format!(
        "verified every 100th request: {verified} good, {bad} bad"
    ));
    if bad > 0 {
        let examples = stats.bad_examples.lock().unwrap().join("; ");
        r.failure(format!("{bad} bad signatures, e.g. {examples}"));
    } else if verified == 0 && std::env::args().all(|a| a != "--only") {
        r.failure("no signature was ever verified".into());
    }
}

/// Whether `--only a,b` (JSON keys or their prefixes) selects scenario `key`;
/// without `--only`, every scenario runs. For working on one figure: the
/// closing notes quote full runs.
fn wanted(key: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--only") {
        None => true,
        Some(i) => args
            .get(i + 1)
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .any(|p| !p.is_empty() && key.starts_with(p))
            })
            .unwrap_or(false),
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
