//! `pgwebhooks demo`: the whole loop on an embedded default. A throwaway
//! local Postgres, the example app, a local receiver that verifies every
//! signature, realistic traffic, a Make-style callback through the inbound
//! endpoint, and a live view. `--check` runs it once and exits 0 only if
//! every webhook arrived verified and the callback was applied. When the
//! server binaries are missing it installs them first
//! (`localpg::install`: Debian or Ubuntu, as root or with `sudo -n`,
//! printing each command before it runs), or says the command that does.

mod receiver;
mod traffic;
mod view;

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::localpg::{install, LocalPg, Search};
use crate::sidecar::{Sidecar, SidecarConfig};
use crate::sign::generate_secret;
use view::{Round, RoundResult, Tally, View};

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

/// Where the demo finds (or installs) the PostgreSQL server, and where its
/// screen goes. [`Setup::system`] is what `pgwebhooks demo` uses.
pub struct Setup {
    /// Where `initdb`, `pg_ctl` and, when they are missing, `apt-get` and
    /// `sudo` are looked for.
    pub search: Search,
    /// This process runs as root (else the install goes through `sudo -n`).
    pub root: bool,
    /// A plain log to this writer instead of stdout (a live screen when
    /// stdout is a terminal).
    pub out: Option<Box<dyn std::io::Write + Send>>,
}

impl Setup {
    /// This machine: its `PATH` and /usr/lib/postgresql, stdout.
    pub fn system() -> Setup {
        Setup {
            search: Search::system(),
            root: crate::localpg::is_root(),
            out: None,
        }
    }
}

/// Runs the demo until `shutdown` fires (or, with `check`, for one round).
pub async fn run(check: bool, shutdown: CancellationToken) -> Result<Outcome, DemoError> {
    run_with(Setup::system(), check, shutdown).await
}

/// [`run`] with the server found, or installed, as `setup` says.
pub async fn run_with(setup: Setup, check: bool, shutdown: CancellationToken) -> Result<Outcome, DemoError> {
    let footer = format!(
        "a new round every {} s · Ctrl-C stops and removes everything",
        ROUND_EVERY.as_secs()
    );
    let mut view = match setup.out {
        Some(out) => View::plain(out, footer, shutdown.clone()),
        None => View::from_env(footer, shutdown.clone()),
    };
    let search = setup.search;
    let (s, root) = (search.clone(), setup.root);
    let steps = tokio::task::spawn_blocking(move || install::plan(&s, root))
        .await
        .map_err(other)??;
    for step in &steps {
        view.print(&format!(
            "▶ PostgreSQL server binaries not found; installing them: {}",
            step.shown()
        ));
        let step = step.clone();
        tokio::task::spawn_blocking(move || step.run())
            .await
            .map_err(other)??;
    }
    if !steps.is_empty() {
        install::check(&search, &steps)?;
        view.print("▶ PostgreSQL server installed");
    }
    view.print("▶ starting a throwaway PostgreSQL (deleted on exit)…");
    let pg = tokio::task::spawn_blocking(move || {
        LocalPg::start_found(&search, "pgwebhooks-demo", &["fsync=off", "max_connections=50"])
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
    view.note(format!(
        "▶ example app installed; DATABASE_URL={}",
        pg.url("demo")
    ));

    let secret = generate_secret().map_err(other)?;
    let mut rx = receiver::start(&secret).await.map_err(other)?;
    let pool = db::pool(pg.config("demo"), 2);
    let endpoint = db::endpoints::add(
        &mut pool.get().await.map_err(db::DbError::from)?,
        &db::endpoints::NewEndpoint {
            url: rx.url.clone(),
            name: Some("demo receiver (stands in for Make.com)".into()),
            secret: secret.clone(),
            ignore_origins: vec!["inbound/*".into()],
            ..db::endpoints::NewEndpoint::with_defaults()
        },
    )
    .await?;
    view.note(format!(
        "▶ receiver {} verifies every signature (endpoint {endpoint})",
        rx.url
    ));

    let inbound_secret = generate_secret().map_err(other)?;
    let mut config = SidecarConfig::new(pg.config("demo"));
    config.replica = "demo".into();
    config.deliver.retry_schedule = vec![
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_secs(5),
    ];
    config.claim.poll_interval = Duration::from_millis(250);
    // The demo's receiver answers at once; nothing in flight needs long.
    config.shutdown_grace = Duration::from_secs(1);
    // The demo's receiver is on 127.0.0.1.
    config.deliver.allow_private_targets = true;
    // The live view shows the receiver's scripted 503s; they are no failure.
    config.say_failures = false;
    config.inbound = Some(crate::inbound::InboundConfig {
        listen: "127.0.0.1:0".parse().expect("literal"),
        secret: Some(crate::config::Secret::new(inbound_secret.clone())),
        ..Default::default()
    });
    let sidecar = Sidecar::start(config).await?;
    let base = format!("http://{}", sidecar.inbound_addr.expect("inbound configured"));
    let stop = CancellationToken::new();
    let running = tokio::spawn(sidecar.run_until(stop.clone()));
    view.note(format!(
        "▶ sidecar running; callbacks at {base}/api/webhooks/make/<route>"
    ));

    let mut tally = Tally::default();
    let mut round = Round::default();
    // Rounds start on a fixed cadence measured from the start of each
    // round; one that runs long delays the next instead of bunching them.
    let mut ticker = tokio::time::interval(ROUND_EVERY);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let outcome = 'rounds: loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Outcome::Stopped,
            _ = ticker.tick() => {}
            Some(a) = rx.arrivals.recv() => {
                tally.add(&a);
                view.arrival(&a, &tally, &round);
                continue;
            }
        }
        let n = round.n + 1;
        let expected = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Outcome::Stopped,
            e = traffic::round(&client, n) => e?,
        };
        round = Round {
            n,
            writes: expected.writes,
            ids: expected.events,
            result: None,
        };
        view.round(&tally, &round);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tally.progress(&round.ids).delivered < round.ids.len() {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'rounds Outcome::Stopped,
                Some(a) = rx.arrivals.recv() => {
                    tally.add(&a);
                    view.arrival(&a, &tally, &round);
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let callback = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Outcome::Stopped,
            c = traffic::callback(&client, &base, &inbound_secret, expected.appointment) => c?,
        };
        let result = RoundResult {
            delivered: tally.progress(&round.ids).delivered == round.ids.len(),
            all_verified: tally.unverified == 0,
            callback,
        };
        let ok = result.ok();
        round.result = Some(result);
        view.round(&tally, &round);
        if check {
            break if ok { Outcome::Passed } else { Outcome::Failed };
        }
    };
    view.finish(&tally, &round, outcome == Outcome::Stopped);
    stop.cancel();
    let _ = running.await;
    // Close our connections before the cluster stops, then stop it (the
    // stop is `pg_ctl -w`, a few hundred ms) and remove it.
    drop((client, admin, pool));
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .map_err(other)?;
    view.print(&format!(
        "\n▶ {}; the throwaway database is gone",
        match (outcome, check) {
            (Outcome::Stopped, true) => "stopped before the check finished",
            _ => "stopped",
        }
    ));
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::Outcome;

    #[test]
    fn a_stop_is_success_but_never_a_passed_check() {
        assert_eq!(Outcome::Stopped.exit_code(false), 0);
        assert_eq!(Outcome::Stopped.exit_code(true), 130);
        assert_eq!(Outcome::Passed.exit_code(true), 0);
        assert_eq!(Outcome::Failed.exit_code(true), 1);
    }
}
