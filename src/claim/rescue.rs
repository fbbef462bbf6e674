//! Rescue: takes over the work of replicas that stopped — fan-out batches
//! and delivery leases that expired — and removes their stale idle flags.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Claimed, Claimer};
use crate::db::{self, DbError};

impl Claimer {
    /// Takes over one expired batch, if any, and dispatches what it lacks.
    pub async fn rescue_once(&self) -> Result<Claimed, DbError> {
        let batch = {
            let client = self.pool.get().await?;
            db::delivery::batch_rescue(&client, &self.replica, self.config.lease).await?
        };
        if !batch.events.is_empty() {
            tracing::info!(
                batch = batch.id,
                events = batch.events.len(),
                "took over an expired batch"
            );
        }
        self.dispatch_batch(batch).await
    }
}

/// Recovers from replicas that died: expired batches are taken over,
/// expired delivery leases re-queued, stale idle flags removed.
pub(crate) async fn run_rescue(claimer: Arc<Claimer>, every: Duration, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        match claimer.rescue_cycle().await {
            Ok(r) if r != RescueCounts::default() => tracing::info!(?r, "rescued work of a stopped replica"),
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %crate::errors::error_chain(&error), "rescue failed"),
        }
    }
}

/// What one rescue cycle found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RescueCounts {
    pub batches: usize,
    pub deliveries: i32,
    pub listeners: i32,
}

impl Claimer {
    /// One rescue pass (tests call it directly).
    pub async fn rescue_cycle(&self) -> Result<RescueCounts, DbError> {
        let mut counts = RescueCounts::default();
        while self.rescue_once().await?.events > 0 {
            counts.batches += 1;
        }
        let client = self.pool.get().await?;
        counts.deliveries = db::delivery::delivery_rescue(&client).await?;
        counts.listeners = db::delivery::idle_flag_rescue(&client).await?;
        if counts.deliveries > 0 {
            self.signals.retry.notify_one();
        }
        Ok(counts)
    }
}
