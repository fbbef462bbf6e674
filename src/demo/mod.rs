//! `pgwebhooks demo`: the whole loop on an embedded default. A throwaway
//! local Postgres, the example app, a local receiver that verifies every
//! signature, realistic traffic, a Make-style callback through the inbound
//! endpoint, and a live view. `--check` runs it once and exits 0 only if
//! every webhook arrived verified and the callback was applied.

mod receiver;
mod traffic;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::deliver::sign::generate_secret;
use crate::localpg::LocalPg;
use crate::sidecar::{Sidecar, SidecarConfig};
use receiver::Arrival;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    LocalPg(#[from] crate::localpg::LocalPgError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Migrate(#[from] db::migrate::MigrateError),
    #[error(transparent)]
    Start(#[from] crate::sidecar::StartError),
    #[error("{0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> DemoError {
    DemoError::Other(e.to_string())
}

/// What one round showed.
#[derive(Debug, Default)]
struct Tally {
    /// event type → (first attempts, verified, retries, latencies)
    by_type: BTreeMap<String, (u32, u32, u32, Vec<f64>)>,
    ids: HashSet<String>,
    unverified: u32,
}

impl Tally {
    fn add(&mut self, a: &Arrival) {
        let e = self.by_type.entry(a.event_type.clone()).or_default();
        if a.attempt == 1 {
            e.0 += 1;
            e.3.push(a.latency_ms);
        } else {
            e.2 += 1;
        }
        if a.verified {
            e.1 += 1;
        } else {
            self.unverified += 1;
        }
        if a.answered == 200 {
            self.ids.insert(a.webhook_id.clone());
        }
    }
}

fn line(a: &Arrival) -> String {
    let mark = if !a.verified {
        "✗ BAD SIGNATURE"
    } else if a.answered == 503 {
        "↻ 503 (will retry)"
    } else {
        "✓ verified"
    };
    let retry = if a.attempt > 1 {
        format!(" attempt {}", a.attempt)
    } else {
        String::new()
    };
    format!("  {:<32} {:>7.1} ms  {mark}{retry}", a.event_type, a.latency_ms)
}

/// How the demo ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by a signal (SIGINT, SIGTERM): a normal end of the live
    /// demo; under `--check`, the check did not finish.
    Stopped,
    /// `--check`: every webhook arrived verified and the callback was applied.
    Passed,
    /// `--check`: something was missing.
    Failed,
}

impl Outcome {
    /// The process exit code: 0 for a stop or a pass, 1 for a failed
    /// check, 130 (interrupted, 128 + SIGINT) for a check that was stopped
    /// before it finished.
    pub fn exit_code(self, check: bool) -> u8 {
        match self {
            Outcome::Stopped if check => 130,
            Outcome::Stopped | Outcome::Passed => 0,
            Outcome::Failed => 1,
        }
    }
}

/// Time from the start of one round to the start of the next.
const ROUND_EVERY: Duration = Duration::from_secs(3);

/// Runs the demo until `shutdown` fires (or, with `check`, for one round).
pub async fn run(check: bool, shutdown: CancellationToken) -> Result<Outcome, DemoError> {
    println!("▶ starting a throwaway PostgreSQL (deleted on exit)…");
    let pg = tokio::task::spawn_blocking(|| {
        LocalPg::start("pgwebhooks-demo", &["fsync=off", "max_connections=50"])
    })
    .await
    .map_err(other)??;
    let admin = db::connect(&pg.config("postgres").into()).await?;
    admin
        .batch_execute("CREATE DATABASE demo")
        .await
        .map_err(db::DbError::from)?;
    let mut client = db::connect(&pg.config("demo").into()).await?;
    db::migrate::run(&mut client, true).await?;
    println!(
        "▶ migrated; example app installed (schema app)            DATABASE_URL={}",
        pg.url("demo")
    );

    let secret = generate_secret().map_err(other)?;
    let mut rx = receiver::start(&secret).await.map_err(other)?;
    let pool = db::pool(pg.config("demo"), 2);
    let endpoint = db::endpoints::add(
        &mut pool.get().await.map_err(db::DbError::from)?,
        &db::endpoints::NewEndpoint {
            url: rx.url.clone(),
            name: Some("demo receiver (stands in for Make.com)".into()),
            event_types: vec!["*".into()],
            secret: secret.clone(),
            ignore_origins: vec!["inbound/*".into()],
            signature_styles: vec!["standard".into()],
            ..Default::default()
        },
    )
    .await?;
    println!(
        "▶ receiver on {} verifies every signature (endpoint {endpoint})",
        rx.url
    );

    let inbound_secret = generate_secret().map_err(other)?;
    let mut config = SidecarConfig::new(pg.config("demo"));
    config.replica = "demo".into();
    config.deliver.retry_schedule = vec![
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_secs(5),
    ];
    config.claim.poll_interval = Duration::from_millis(250);
    config.shutdown_grace = Duration::from_secs(3);
    // The demo's receiver is on 127.0.0.1.
    config.deliver.allow_private_targets = true;
    config.inbound = Some(crate::inbound::InboundConfig {
        listen: "127.0.0.1:0".parse().expect("literal"),
        secret: Some(crate::config::Secret::new(inbound_secret.clone())),
        ..Default::default()
    });
    let sidecar = Sidecar::start(config).await?;
    let base = format!("http://{}", sidecar.inbound_addr.expect("inbound configured"));
    let stop = CancellationToken::new();
    let running = tokio::spawn(sidecar.run_until(stop.clone()));
    println!("▶ sidecar running; callbacks at {base}/api/webhooks/make/<route>\n");

    let mut tally = Tally::default();
    let mut round = 0;
    // Rounds start on a fixed cadence measured from the start of each
    // round; one that runs long delays the next instead of bunching them.
    let mut ticker = tokio::time::interval(ROUND_EVERY);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let outcome = 'rounds: loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Outcome::Stopped,
            _ = ticker.tick() => {}
            Some(a) = rx.arrivals.recv() => { println!("{}", line(&a)); tally.add(&a); continue; }
        }
        round += 1;
        let expected = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Outcome::Stopped,
            e = traffic::round(&client, round) => e?,
        };
        println!(
            "round {round}: the app wrote {} rows that emit {} events",
            expected.writes,
            expected.events.len()
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !expected.events.iter().all(|id| tally.ids.contains(id)) {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'rounds Outcome::Stopped,
                Some(a) = rx.arrivals.recv() => { println!("{}", line(&a)); tally.add(&a); }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let delivered = expected.events.iter().all(|id| tally.ids.contains(id));
        let callback = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Outcome::Stopped,
            c = traffic::callback(&client, &base, &inbound_secret, expected.appointment) => c?,
        };
        println!(
            "  callback POST /api/webhooks/make/appointments → {}",
            callback.describe()
        );
        summary(&tally, delivered, &callback);
        let ok = delivered && tally.unverified == 0 && callback.applied && callback.not_echoed;
        if check {
            break if ok { Outcome::Passed } else { Outcome::Failed };
        }
        println!("\n(live: a new round every 3 s; Ctrl-C stops and removes everything)\n");
    };
    stop.cancel();
    let _ = running.await;
    drop(client);
    drop(admin);
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(other)?;
    println!("\n▶ stopped; the throwaway database is gone");
    Ok(outcome)
}

fn summary(t: &Tally, delivered: bool, cb: &traffic::Callback) {
    println!(
        "\n  {:<32} {:>6} {:>9} {:>8} {:>10}",
        "event", "sent", "verified", "retries", "p50 ms"
    );
    for (ty, (sent, verified, retries, lat)) in &t.by_type {
        let mut l = lat.clone();
        l.sort_by(|a, b| a.total_cmp(b));
        let p50 = l.get(l.len() / 2).copied().unwrap_or(0.0);
        println!("  {ty:<32} {sent:>6} {verified:>9} {retries:>8} {p50:>10.1}");
    }
    let tick = |b: bool| if b { "✓" } else { "✗" };
    println!(
        "\n  {} every webhook arrived   {} all signatures verified   {} callback applied   {} callback not echoed back",
        tick(delivered),
        tick(t.unverified == 0),
        tick(cb.applied),
        tick(cb.not_echoed)
    );
}
