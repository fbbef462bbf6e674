//! The circuit breaker: an endpoint that keeps failing is paused (its
//! circuit opened) instead of being sent every event, then probed with one
//! of its waiting deliveries until it answers, and resumed.
//!
//! The streak of failures is counted per replica ([`Breaker::observe`]);
//! opening and closing are Postgres's (`webhooks.endpoint_trip`,
//! `webhooks.endpoint_close_breaker` in `sql/35_breaker.sql`, which also
//! emit `webhooks.endpoint.circuit_opened/closed`), so every replica sees
//! the same state and one [`Prober`] pass probes each open endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::db::{self, DbError};
use crate::deliver::Deliverer;
use crate::endpoints::Subscriptions;
use crate::job::{Job, Outcome, Source, Status};
use crate::notice::Kind;
use crate::record::Recorder;

/// Breaker settings (`PGWEBHOOKS_BREAKER_*`).
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Open an endpoint's circuit after this many retryable failures in a
    /// row…
    pub failures: u32,
    /// …spanning at least this long (a burst is not an outage).
    pub window: Duration,
    /// How often an open endpoint is probed.
    pub probe: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 20,
            window: Duration::from_secs(60),
            probe: Duration::from_secs(30),
        }
    }
}

/// Consecutive retryable failures per endpoint, as this replica saw them.
pub struct Breaker {
    config: BreakerConfig,
    /// endpoint id → (failures in a row, first of them at).
    streaks: Mutex<HashMap<i64, (u32, Instant)>>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            streaks: Mutex::new(HashMap::new()),
        }
    }

    /// Feeds the streak with one outcome; true when it opens the circuit.
    pub fn observe(&self, endpoint_id: i64, outcome: &Outcome) -> bool {
        let mut streaks = self.streaks.lock().unwrap_or_else(|e| e.into_inner());
        if outcome.status == Status::Delivered {
            streaks.remove(&endpoint_id);
            return false;
        }
        let retryable_failure =
            outcome.attempt.is_some() && matches!(outcome.status, Status::Pending | Status::Dead);
        if !retryable_failure {
            return false;
        }
        let streak = streaks.entry(endpoint_id).or_insert((0, Instant::now()));
        streak.0 += 1;
        if streak.0 >= self.config.failures && streak.1.elapsed() >= self.config.window {
            streaks.remove(&endpoint_id);
            return true;
        }
        false
    }

    /// Opens endpoint `id`'s circuit after `outcome` ended a streak.
    pub async fn trip(&self, pool: &Pool, recorder: &Recorder, id: i64, outcome: &Outcome) {
        let reason = format!(
            "circuit open: {} failed attempts in a row over at least {:?} (last: {}); probing until it answers",
            self.config.failures,
            self.config.window,
            outcome.error.as_ref().map_or_else(|| "no answer".to_owned(), ToString::to_string)
        );
        let result = match pool.get().await {
            Ok(c) => db::delivery::endpoint_trip(&c, id, &reason).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(true) => {
                crate::telemetry::breaker_trip(id);
                recorder.notice(id, Kind::Paused, outcome.code, &reason);
            }
            Ok(false) => {}
            Err(error) => tracing::error!(endpoint_id = id, error = %crate::errors::error_chain(&error),
                "could not pause a failing endpoint"),
        }
    }
}

/// What one probe pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Probed {
    pub probes: usize,
    pub closed: usize,
}

/// Probes endpoints whose circuit is open, each at most once per
/// [`BreakerConfig::probe`], with one of its waiting deliveries.
pub struct Prober {
    pub pool: Pool,
    pub replica: Arc<str>,
    pub deliverer: Arc<Deliverer>,
    pub recorder: Recorder,
    pub subscriptions: Subscriptions,
    /// The lease a probe's delivery is claimed under.
    pub lease: Duration,
    pub config: BreakerConfig,
    /// How often [`Prober::run`] looks for open circuits.
    pub tick: Duration,
    last_probe: HashMap<i64, Instant>,
}

impl Prober {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Pool,
        replica: Arc<str>,
        deliverer: Arc<Deliverer>,
        recorder: Recorder,
        subscriptions: Subscriptions,
        lease: Duration,
        config: BreakerConfig,
    ) -> Prober {
        Prober {
            pool,
            replica,
            deliverer,
            recorder,
            subscriptions,
            lease,
            tick: config.probe.min(Duration::from_secs(5)),
            config,
            last_probe: HashMap::new(),
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(error) = self.run_once().await {
                tracing::warn!(error = %crate::errors::error_chain(&error), "probing open circuits failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.tick) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Probes every open endpoint that is due.
    pub async fn run_once(&mut self) -> Result<Probed, DbError> {
        let mut out = Probed::default();
        let open = {
            let client = self.pool.get().await?;
            db::delivery::breaker_open(&client).await?
        };
        for id in open {
            let due = self
                .last_probe
                .get(&id)
                .is_none_or(|t| t.elapsed() >= self.config.probe);
            if due {
                self.last_probe.insert(id, Instant::now());
                out.probes += 1;
                if self.probe(id).await? {
                    out.closed += 1;
                }
            }
        }
        Ok(out)
    }

    /// Tries one pending delivery of an open endpoint; closes the circuit
    /// if the endpoint answers 2xx.
    async fn probe(&self, endpoint_id: i64) -> Result<bool, DbError> {
        let client = self.pool.get().await?;
        let claimed =
            db::delivery::delivery_claim_probe(&client, &self.replica, endpoint_id, self.lease).await?;
        // Nothing to try yet (its failed attempts may not be recorded): stay
        // open. New events for the endpoint wait as pending, so the next
        // probe has one.
        let Some(c) = claimed.into_iter().next() else {
            return Ok(false);
        };
        // Read fresh: the snapshot may predate the trip.
        let snapshot = Arc::new(db::endpoints::load(&client).await?);
        let (Some(event), Some(endpoint)) = (c.event, snapshot.get(endpoint_id).cloned()) else {
            return Ok(false);
        };
        self.subscriptions.replace(snapshot);
        let job = Job {
            source: Source::Retry {
                delivery_id: c.delivery_id,
                used: c.used,
            },
            event,
            endpoint,
            attempt: c.attempt,
            send_by: c.send_by,
        };
        let (mut outcome, _) = self.deliverer.attempt(&job).await;
        let ok = outcome.status == Status::Delivered;
        // A probe while the circuit is open never gives a delivery up: it
        // waits for the endpoint like the rest of its backlog.
        if outcome.status == Status::Dead {
            outcome.status = Status::Pending;
            outcome.next_attempt_at = Some(SystemTime::now());
        }
        self.recorder.record(outcome);
        if ok && db::delivery::endpoint_close_breaker(&client, endpoint_id).await? {
            self.recorder.notice(
                endpoint_id,
                Kind::Resumed,
                None,
                "circuit closed: a probe was delivered; its backlog drains",
            );
            return Ok(true);
        }
        Ok(false)
    }
}
