//! Upkeep that runs beside delivery: metrics gauges, retention of old
//! history (one replica at a time), and circuit-breaker probes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::claim::Claimer;
use crate::db::{self, DbError};
use crate::job::Status;
use crate::job::{Job, Source};
use crate::telemetry;

#[derive(Debug, Clone)]
pub struct MaintainConfig {
    /// Keep delivered history this long; `None` keeps everything.
    pub retention: Option<Duration>,
    /// Rows per retention statement (small: no long locks, no vacuum storms).
    pub retention_batch: i32,
    /// How often retention runs.
    pub retention_every: Duration,
    /// How often a paused-by-breaker endpoint is probed.
    pub breaker_probe: Duration,
    /// How often the loop runs.
    pub tick: Duration,
}

impl Default for MaintainConfig {
    fn default() -> Self {
        MaintainConfig {
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_batch: 1000,
            retention_every: Duration::from_secs(60),
            breaker_probe: Duration::from_secs(30),
            tick: Duration::from_secs(5),
        }
    }
}

/// What one pass did (tests assert on it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Maintained {
    pub retention: db::ops::Removed,
    pub probes: usize,
    pub resumed: usize,
}

pub struct Maintainer {
    pub claimer: Arc<Claimer>,
    pub config: MaintainConfig,
    last_probe: HashMap<i64, Instant>,
    last_retention: Option<Instant>,
}

/// Key of the advisory lock that lets one replica at a time run retention.
const RETENTION_LOCK: i64 = 0x7067_7768_7265_7465;

impl Maintainer {
    pub fn new(claimer: Arc<Claimer>, config: MaintainConfig) -> Maintainer {
        Maintainer {
            claimer,
            config,
            last_probe: HashMap::new(),
            last_retention: None,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(error) = self.run_once().await {
                tracing::warn!(error = %crate::errors::error_chain(&error), "maintenance pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.tick) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One pass: gauges, due probes, retention when due.
    pub async fn run_once(&mut self) -> Result<Maintained, DbError> {
        let mut out = Maintained::default();
        let signals = &self.claimer.signals;
        telemetry::listener(
            signals.connected.load(Ordering::Acquire),
            signals.reconnects.load(Ordering::Relaxed),
        );
        let client = self.claimer.pool.get().await?;
        let row = client
            .query_one(
                "SELECT coalesce(sum(pending + delivering), 0)::bigint, coalesce(extract(epoch FROM max(oldest_age)), 0)::float8,
                        pg_notification_queue_usage()
                   FROM webhooks.backlog",
                &[],
            )
            .await?;
        telemetry::backlog(row.get(0), row.get(1), row.get(2));

        for id in db::delivery::breaker_open(&client).await? {
            let due = self
                .last_probe
                .get(&id)
                .is_none_or(|t| t.elapsed() >= self.config.breaker_probe);
            if due {
                self.last_probe.insert(id, Instant::now());
                out.probes += 1;
                if self.probe(id).await? {
                    out.resumed += 1;
                }
            }
        }

        if let Some(keep) = self.config.retention {
            let due = self
                .last_retention
                .is_none_or(|t| t.elapsed() >= self.config.retention_every);
            if due {
                self.last_retention = Some(Instant::now());
                out.retention = self.retention(&client, keep).await?;
            }
        }
        Ok(out)
    }

    /// Tries one pending delivery of a paused endpoint; resumes it if the
    /// endpoint answers 2xx.
    async fn probe(&self, endpoint_id: i64) -> Result<bool, DbError> {
        let shared = self.claimer.dispatcher.shared();
        let client = self.claimer.pool.get().await?;
        let claimed = db::delivery::delivery_claim_probe(
            &client,
            &self.claimer.replica,
            endpoint_id,
            self.claimer.config.lease,
        )
        .await?;
        let ok = match claimed.into_iter().next() {
            // Nothing to try yet (its failed attempts may not be recorded):
            // stay open. New events for the endpoint wait as pending, so
            // the next probe has one.
            None => false,
            Some(c) => {
                let snapshot = self.claimer.snapshot_at(None).await?;
                let (Some(event), Some(endpoint)) = (c.event, snapshot.get(endpoint_id).cloned()) else {
                    return Ok(false);
                };
                let job = Job {
                    source: Source::Retry {
                        delivery_id: c.delivery_id,
                        used: c.used,
                    },
                    event,
                    endpoint,
                    attempt: c.attempt,
                };
                let (mut outcome, _) = shared.deliverer.attempt(&job).await;
                let ok = outcome.status == Status::Delivered;
                // A probe while the circuit is open never gives a delivery up:
                // it waits for the endpoint like the rest of its backlog.
                if outcome.status == Status::Dead {
                    outcome.status = Status::Pending;
                    outcome.next_attempt_at = Some(std::time::SystemTime::now());
                }
                shared.recorder.record(outcome);
                ok
            }
        };
        if ok && db::delivery::endpoint_close_breaker(&client, endpoint_id).await? {
            shared.recorder.notice(
                endpoint_id,
                crate::notice::Kind::Resumed,
                None,
                "circuit closed: a probe was delivered; its backlog drains",
            );
            return Ok(true);
        }
        Ok(false)
    }

    /// Small retention steps until nothing old is left (bounded per pass),
    /// by one replica at a time.
    async fn retention(
        &self,
        client: &deadpool_postgres::Client,
        keep: Duration,
    ) -> Result<db::ops::Removed, DbError> {
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&RETENTION_LOCK])
            .await?
            .get(0);
        if !locked {
            return Ok(db::ops::Removed::default());
        }
        let mut total = db::ops::Removed::default();
        let result = async {
            for _ in 0..100 {
                let step = db::ops::retention_step(client, keep, self.config.retention_batch).await?;
                total.attempts += step.attempts;
                total.deliveries += step.deliveries;
                total.events += step.events;
                total.inbound += step.inbound;
                if step.total() == 0 {
                    break;
                }
            }
            Ok::<_, DbError>(())
        }
        .await;
        let _ = client
            .query_one("SELECT pg_advisory_unlock($1)", &[&RETENTION_LOCK])
            .await;
        result?;
        if total.total() > 0 {
            tracing::info!(?total, "retention removed delivered history");
        }
        Ok(total)
    }
}
