//! Claiming work, in four stages that share one [`Claimer`]: fan-out
//! (`fanout.rs`: first attempts, from leased batches of new events, and the
//! idle protocol), retries (`retries.rs`: due deliveries), rescue
//! (`rescue.rs`: work of replicas that stopped) and subscriptions
//! (`subscriptions.rs`: the endpoints' cached copy). The first three have
//! a `*_once` that does one pass and returns its counts; the subscriptions
//! stage's pass is `snapshot_at` (reload if `config_version` moved). They hand jobs to the
//! [`Dispatcher`]; none holds a transaction while anything is sent.

mod fanout;
mod rescue;
mod retries;
mod subscriptions;

pub(crate) use rescue::run_rescue;
pub(crate) use subscriptions::run_config;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::dispatch::Dispatcher;
use crate::endpoints::Subscriptions;
use crate::listen::Signals;
use crate::record::Recorder;

/// Claim settings.
#[derive(Debug, Clone)]
pub struct ClaimConfig {
    /// Events per fan-out batch.
    pub batch_size: i32,
    /// How long a claimed batch or delivery is ours.
    pub lease: Duration,
    /// Longest wait between scans when no notification arrives.
    pub poll_interval: Duration,
    /// Jobs held in memory (and, separately, outcomes not yet written)
    /// before claiming pauses.
    pub max_in_memory: usize,
    /// Longest pause before claiming again while events arrive faster than
    /// [`LINGER_FROM_PER_S`]: bigger batches for the same database work.
    /// Zero claims as soon as the previous batch is handed over.
    pub linger: Duration,
    /// How often subscriptions are reloaded even without a `config`
    /// notification (in case one was missed).
    pub reload_every: Duration,
    /// How often expired leases of stopped replicas are looked for; `None`:
    /// a quarter of the lease, between 200 ms and 15 s.
    pub rescue_every: Option<Duration>,
}

impl ClaimConfig {
    /// [`ClaimConfig::rescue_every`], resolved.
    pub fn rescue_interval(&self) -> Duration {
        self.rescue_every
            .unwrap_or((self.lease / 4).clamp(Duration::from_millis(200), Duration::from_secs(15)))
    }
}

/// Below this arrival rate (events/s) the fan-out loop never lingers: each
/// event goes out as soon as it can (latency first).
pub(crate) const LINGER_FROM_PER_S: f64 = 2000.0;

impl Default for ClaimConfig {
    fn default() -> Self {
        ClaimConfig {
            batch_size: 500,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            max_in_memory: 4000,
            linger: Duration::from_millis(8),
            reload_every: Duration::from_secs(30),
            rescue_every: None,
        }
    }
}

/// What one `run_once` did, for tests and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub events: usize,
    pub jobs: usize,
}

/// What the claim stages share.
pub struct Claimer {
    pub pool: Pool,
    pub replica: Arc<str>,
    pub dispatcher: Arc<Dispatcher>,
    pub recorder: Recorder,
    pub subscriptions: Subscriptions,
    pub signals: Arc<Signals>,
    pub config: ClaimConfig,
}

impl Claimer {
    /// Waits while the jobs in memory, or the outcomes not yet written
    /// (a slow database), reach `max_in_memory`, and while Postgres
    /// refuses to record the outcomes there are (a full disk: new work
    /// would only be sent and not recorded, then sent again).
    async fn wait_for_room(&self, shutdown: &CancellationToken) {
        let full = || {
            self.dispatcher.in_memory() >= self.config.max_in_memory
                || self.recorder.unrecorded() >= self.config.max_in_memory
                || (self.recorder.unrecorded() > 0 && self.signals.refusals.current().is_some())
        };
        while full() && !shutdown.is_cancelled() {
            tokio::select! {
                _ = self.dispatcher.room_freed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    async fn pause(&self, shutdown: &CancellationToken, backoff: &mut Duration) {
        tokio::select! {
            _ = tokio::time::sleep(*backoff) => {}
            _ = shutdown.cancelled() => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
    }
}
