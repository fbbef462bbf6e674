//! Retries: claims due deliveries (`pending` rows whose time has come) for
//! every endpoint whose lane has room, under a lease, and offers them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Claimed, Claimer};
use crate::db::{self, DbError};
use crate::job::{Job, Outcome, Source};

impl Claimer {
    /// Claims due retries for every endpoint with room, and dispatches them.
    pub async fn retry_once(&self) -> Result<Claimed, DbError> {
        let snapshot = self.subscriptions.current();
        let (mut ids, mut rooms) = (Vec::new(), Vec::new());
        for e in snapshot.endpoints.iter().filter(|e| e.enabled) {
            let room = self.dispatcher.room(e.id).min(self.config.batch_size as usize);
            if room > 0 {
                ids.push(e.id);
                rooms.push(room as i32);
            }
        }
        if ids.is_empty() {
            return Ok(Claimed::default());
        }
        let claimed = {
            let client = self.pool.get().await?;
            db::delivery::delivery_claim(&client, &self.replica, &ids, &rooms, self.config.lease).await?
        };
        let mut counts = Claimed::default();
        for c in claimed {
            counts.jobs += 1;
            let source = Source::Retry {
                delivery_id: c.delivery_id,
                used: c.used,
            };
            let (Some(event), Some(endpoint)) = (c.event, snapshot.get(c.endpoint_id).cloned()) else {
                // The event left the outbox or the endpoint was deleted: nothing to send.
                self.recorder.record(Outcome {
                    source,
                    event_id: uuid::Uuid::nil(),
                    endpoint_id: c.endpoint_id,
                    status: crate::job::Status::Failed,
                    attempts: c.attempt - 1,
                    next_attempt_at: None,
                    code: None,
                    error: Some(crate::job::AttemptError::Skipped(
                        "the event or the endpoint no longer exists",
                    )),
                    attempt: None,
                    ordered: false,
                });
                continue;
            };
            self.dispatcher
                .offer(Job {
                    source,
                    event,
                    endpoint,
                    attempt: c.attempt,
                    send_by: c.send_by,
                })
                .await;
        }
        Ok(counts)
    }

    /// The retry loop: claim due deliveries while any are due; otherwise
    /// sleep until the next is due (at most the poll interval).
    pub async fn run_retries(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        while !shutdown.is_cancelled() {
            self.wait_for_room(&shutdown).await;
            match self.retry_once().await {
                Ok(c) if c.jobs > 0 => {
                    self.signals.refusals.succeeded();
                    // Lanes are busy with what we took; claim more once they
                    // have drained a little (a few ms), not one job at a time.
                    tokio::select! {
                        _ = self.dispatcher.room_freed() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    if !self.signals.refusals.failed("retries", &error) {
                        tracing::warn!(error = %crate::errors::error_chain(&error), "claiming retries failed");
                    }
                    self.pause(&shutdown, &mut backoff).await;
                    continue;
                }
            }
            let wait = self.next_due_in().await.unwrap_or(self.config.poll_interval);
            tokio::select! {
                _ = tokio::time::sleep(wait.min(self.config.poll_interval)) => {}
                _ = self.signals.retry.notified() => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    async fn next_due_in(&self) -> Option<Duration> {
        let client = self.pool.get().await.ok()?;
        let due = db::delivery::delivery_next_due(&client).await.ok()??;
        Some(due.duration_since(SystemTime::now()).unwrap_or_default())
    }
}
