//! Subscriptions: the cached copy of the endpoints, reloaded when
//! `webhooks.config_version` moves (read in the claiming statements), on a
//! `config` notification, and every so often in case one was missed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Claimer;
use crate::db::{self, DbError};
use crate::endpoints::Snapshot;

impl Claimer {
    /// The subscriptions at `version` (reloaded when the cached copy is at
    /// another version; `None` reloads unconditionally).
    pub async fn snapshot_at(&self, version: Option<i64>) -> Result<Arc<Snapshot>, DbError> {
        let current = self.subscriptions.current();
        if version.is_some_and(|v| v == current.version) {
            return Ok(current);
        }
        let client = self.pool.get().await?;
        let fresh = Arc::new(db::endpoints::load(&client).await?);
        self.subscriptions.replace(fresh.clone());
        tracing::debug!(
            version = fresh.version,
            endpoints = fresh.endpoints.len(),
            "subscriptions loaded"
        );
        Ok(fresh)
    }
}

/// Keeps the subscriptions current: reloads on a `config` notification, and
/// every `every` in case one was missed.
pub(crate) async fn run_config(claimer: Arc<Claimer>, every: Duration, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = claimer.signals.config.notified() => {}
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(error) = claimer.snapshot_at(None).await {
            tracing::warn!(error = %crate::errors::error_chain(&error), "reloading subscriptions failed");
        }
    }
}
