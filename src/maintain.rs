//! Upkeep that runs beside delivery: the metrics gauges (backlog, the
//! LISTEN connection) and retention of old history (one replica at a time).
//! Probing open circuits is the breaker's ([`crate::breaker::Prober`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::db::{self, DbError};
use crate::listen::Signals;
use crate::telemetry;

#[derive(Debug, Clone)]
pub struct MaintainConfig {
    /// Keep delivered history this long; `None` keeps everything.
    pub retention: Option<Duration>,
    /// How long failed and dead deliveries stay after they were given up
    /// (`None`: until handled).
    pub retention_failed: Option<Duration>,
    /// Rows per retention statement (small: no long locks, no vacuum storms).
    pub retention_batch: i32,
    /// How often retention runs.
    pub retention_every: Duration,
    /// How often the loop runs.
    pub tick: Duration,
}

impl Default for MaintainConfig {
    fn default() -> Self {
        MaintainConfig {
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_failed: Some(Duration::from_secs(90 * 24 * 3600)),
            retention_batch: 1000,
            retention_every: Duration::from_secs(60),
            tick: Duration::from_secs(5),
        }
    }
}

/// What one pass did (tests assert on it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Maintained {
    pub retention: db::ops::Removed,
}

pub struct Maintainer {
    pub pool: Pool,
    pub signals: Arc<Signals>,
    pub config: MaintainConfig,
    last_retention: Option<Instant>,
}

impl Maintainer {
    pub fn new(pool: Pool, signals: Arc<Signals>, config: MaintainConfig) -> Maintainer {
        Maintainer {
            pool,
            signals,
            config,
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

    /// One pass: gauges, and retention when due.
    pub async fn run_once(&mut self) -> Result<Maintained, DbError> {
        let mut out = Maintained::default();
        let signals = &self.signals;
        telemetry::listener(
            signals.connected.load(Ordering::Acquire),
            signals.reconnects.load(Ordering::Relaxed),
        );
        let client = self.pool.get().await?;
        let n = db::ops::counts(&client).await?;
        telemetry::backlog(
            n.waiting,
            n.oldest_seconds.unwrap_or(0.0),
            n.notification_queue_usage,
        );

        if self.config.retention.is_some() || self.config.retention_failed.is_some() {
            let keep = self.config.retention;
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

    /// Small retention steps until nothing old is left (bounded per pass),
    /// by one replica at a time.
    async fn retention(
        &self,
        client: &deadpool_postgres::Client,
        keep: Option<Duration>,
    ) -> Result<db::ops::Removed, DbError> {
        if !db::ops::retention_lock(client).await? {
            return Ok(db::ops::Removed::default());
        }
        let mut total = db::ops::Removed::default();
        let result = async {
            for _ in 0..100 {
                let step = db::ops::retention_step(
                    client,
                    keep,
                    self.config.retention_failed,
                    self.config.retention_batch,
                )
                .await?;
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
        let _ = db::ops::retention_unlock(client).await;
        result?;
        if total.total() > 0 {
            tracing::info!(?total, "retention removed delivered history");
        }
        Ok(total)
    }
}
