//! Claiming work: the fan-out loop (first attempts, from leased batches of
//! new events) and the retry loop (due deliveries). Both hand jobs to the
//! [`Dispatcher`]; neither holds a transaction while anything is sent.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::db::{self, delivery::Batch, DbError};
use crate::dispatch::Dispatcher;
use crate::endpoints::Snapshot;
use crate::job::Outcome;
use crate::job::{Job, Source};
use crate::listen::Signals;

/// Claim settings.
#[derive(Debug, Clone)]
pub struct ClaimConfig {
    /// Events per fan-out batch.
    pub batch_size: i32,
    /// How long a claimed batch or delivery is ours.
    pub lease: Duration,
    /// Longest wait between scans when no notification arrives.
    pub poll_interval: Duration,
    /// Jobs held in memory before claiming pauses.
    pub max_in_memory: usize,
    /// Longest pause before claiming again while events arrive faster than
    /// [`LINGER_FROM_PER_S`]: bigger batches for the same database work.
    /// Zero claims as soon as the previous batch is handed over.
    pub linger: Duration,
}

/// Below this arrival rate (events/s) the fan-out loop never lingers: each
/// event goes out as soon as it can (latency first).
pub const LINGER_FROM_PER_S: f64 = 2000.0;
/// The batch a linger aims for.
const LINGER_TARGET_EVENTS: f64 = 256.0;

impl Default for ClaimConfig {
    fn default() -> Self {
        ClaimConfig {
            batch_size: 500,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            max_in_memory: 4000,
            linger: Duration::from_millis(8),
        }
    }
}

/// What one `run_once` did, for tests and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub events: usize,
    pub jobs: usize,
}

pub struct Claimer {
    pub pool: Pool,
    pub replica: Arc<str>,
    pub dispatcher: Arc<Dispatcher>,
    pub signals: Arc<Signals>,
    pub config: ClaimConfig,
}

impl Claimer {
    /// The subscriptions at `version` (reloaded when the cached copy is at
    /// another version; `None` reloads unconditionally).
    pub async fn snapshot_at(&self, version: Option<i64>) -> Result<Arc<Snapshot>, DbError> {
        let shared = self.dispatcher.shared();
        let current = shared.snapshot();
        if version.is_some_and(|v| v == current.version) {
            return Ok(current);
        }
        let client = self.pool.get().await?;
        let fresh = Arc::new(db::endpoints::load(&client).await?);
        *shared.snapshot.write().expect("snapshot lock") = fresh.clone();
        tracing::debug!(
            version = fresh.version,
            endpoints = fresh.endpoints.len(),
            "subscriptions loaded"
        );
        Ok(fresh)
    }

    /// Claims one batch of new events and dispatches its jobs.
    pub async fn fanout_once(&self) -> Result<Claimed, DbError> {
        let batch = {
            let client = self.pool.get().await?;
            db::delivery::batch_claim(&client, &self.replica, self.config.batch_size, self.config.lease)
                .await?
        };
        self.dispatch_batch(batch).await
    }

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

    async fn dispatch_batch(&self, batch: Batch) -> Result<Claimed, DbError> {
        if batch.events.is_empty() {
            return Ok(Claimed::default());
        }
        let snapshot = self.snapshot_at(Some(batch.config_version)).await?;
        let mut jobs = Vec::new();
        for (event, done) in &batch.events {
            for endpoint in snapshot.matching(
                &event.event_type,
                event.tenant_id.as_deref(),
                event.origin.as_deref(),
            ) {
                if !done.contains(&endpoint.id) {
                    jobs.push(Job {
                        source: Source::Batch(batch.id),
                        event: event.clone(),
                        endpoint: endpoint.clone(),
                        attempt: 1,
                    });
                }
            }
        }
        if snapshot.any_filter {
            jobs = self.apply_filters(jobs).await?;
        }
        let counts = Claimed {
            events: batch.events.len(),
            jobs: jobs.len(),
        };
        // Registered before any job can be recorded, so the batch completes
        // only after all of them are (and at once when none matched).
        self.dispatcher.shared().recorder.batch(batch.id, jobs.len());
        for job in jobs {
            self.dispatcher.offer(job).await;
        }
        Ok(counts)
    }

    /// Drops the jobs whose endpoint's content filter rejects their event:
    /// one statement for the whole batch, asked only about jobs of
    /// endpoints that have a filter (Postgres evaluates the predicates with
    /// `webhooks.filter_accepts`, as replay does).
    async fn apply_filters(&self, jobs: Vec<Job>) -> Result<Vec<Job>, DbError> {
        let asked: Vec<(usize, uuid::Uuid, &str)> = jobs
            .iter()
            .enumerate()
            .filter_map(|(i, j)| j.endpoint.filter.as_deref().map(|f| (i, j.event.id, f)))
            .collect();
        if asked.is_empty() {
            return Ok(jobs);
        }
        let rejected = {
            let client = self.pool.get().await?;
            let pairs: Vec<(uuid::Uuid, &str)> = asked.iter().map(|(_, e, f)| (*e, *f)).collect();
            db::delivery::filter_rejects(&client, &pairs).await?
        };
        if rejected.is_empty() {
            return Ok(jobs);
        }
        let drop: std::collections::HashSet<usize> = rejected.iter().map(|&k| asked[k].0).collect();
        Ok(jobs
            .into_iter()
            .enumerate()
            .filter_map(|(i, j)| {
                if drop.contains(&i) {
                    crate::telemetry::filtered(j.endpoint.id);
                    None
                } else {
                    Some(j)
                }
            })
            .collect())
    }

    /// Claims due retries for every endpoint with room, and dispatches them.
    pub async fn retry_once(&self) -> Result<Claimed, DbError> {
        let snapshot = self.dispatcher.shared().snapshot();
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
                self.dispatcher.shared().recorder.record(Outcome {
                    source,
                    event_id: uuid::Uuid::nil(),
                    endpoint_id: c.endpoint_id,
                    status: crate::job::Status::Failed,
                    attempts: c.attempt - 1,
                    next_attempt_at: None,
                    code: None,
                    error: Some("the event or the endpoint no longer exists".into()),
                    attempt: None,
                    ordered: false,
                    refused: false,
                });
                continue;
            };
            self.dispatcher
                .offer(Job {
                    source,
                    event,
                    endpoint,
                    attempt: c.attempt,
                })
                .await;
        }
        Ok(counts)
    }

    async fn wait_for_room(&self, shutdown: &CancellationToken) {
        let shared = self.dispatcher.shared();
        while shared.in_memory.load(Ordering::Acquire) >= self.config.max_in_memory
            && !shutdown.is_cancelled()
        {
            tokio::select! {
                _ = shared.room.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// The fan-out loop: claim while there is work; otherwise announce
    /// idleness and wait for a notification or the poll interval. Under a
    /// steady stream faster than [`LINGER_FROM_PER_S`] it pauses briefly
    /// between partial batches ([`Pace`]).
    pub async fn run_fanout(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut pace = Pace::new(self.config.linger, self.config.batch_size as usize);
        while !shutdown.is_cancelled() {
            self.wait_for_room(&shutdown).await;
            match self.fanout_once().await {
                Ok(c) if c.events > 0 => {
                    backoff = Duration::from_millis(50);
                    let linger = pace.claimed(c.events, Instant::now());
                    if !linger.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(linger) => {}
                            _ = shutdown.cancelled() => {}
                        }
                    }
                }
                Ok(_) => {
                    pace.idle();
                    if let Err(error) = self.idle(&shutdown).await {
                        tracing::warn!(%error, "idle wait failed");
                        self.pause(&shutdown, &mut backoff).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %crate::errors::error_chain(&error), "claiming events failed");
                    self.pause(&shutdown, &mut backoff).await;
                }
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

    /// Marks this replica idle so writers NOTIFY, makes sure no writer that
    /// saw it busy is still about to commit, then waits.
    async fn idle(&self, shutdown: &CancellationToken) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        db::delivery::listener_set(&client, &self.replica, true).await?;
        // Every writer that read the flag before it committed has an xid
        // below this xmax; wait (briefly) until all of them have ended.
        let first = db::delivery::fanout_probe(&client).await?;
        let settle_until = Instant::now() + Duration::from_millis(50);
        let mut probe = first;
        let mut work = probe.has_work;
        while !work && probe.horizon < first.xmax && Instant::now() < settle_until {
            tokio::time::sleep(Duration::from_millis(1)).await;
            probe = db::delivery::fanout_probe(&client).await?;
            work = probe.has_work;
        }
        if !work && self.signals.connected.load(Ordering::Acquire) {
            tokio::select! {
                _ = self.signals.events.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = shutdown.cancelled() => {}
            }
        } else if !work {
            // No LISTEN connection: poll at a shorter interval.
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll_interval.min(Duration::from_millis(250))) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        db::delivery::listener_set(&client, &self.replica, false).await?;
        Ok(())
    }

    /// The retry loop: claim due deliveries while any are due; otherwise
    /// sleep until the next is due (at most the poll interval).
    pub async fn run_retries(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        while !shutdown.is_cancelled() {
            self.wait_for_room(&shutdown).await;
            match self.retry_once().await {
                Ok(c) if c.jobs > 0 => {
                    // Lanes are busy with what we took; claim more once they
                    // have drained a little (a few ms), not one job at a time.
                    tokio::select! {
                        _ = self.dispatcher.shared().room.notified() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %crate::errors::error_chain(&error), "claiming retries failed");
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

/// How long to wait before the next claim, from the rate events arrive at.
///
/// Each fan-out batch costs a few milliseconds of database work whatever its
/// size, so a stream of tiny batches (a busy app's commits, claimed as fast
/// as they come) costs the app several times what the same events cost in
/// batches of hundreds. When events arrive faster than
/// [`LINGER_FROM_PER_S`], the loop waits up to `max` between partial batches
/// (the time for about [`LINGER_TARGET_EVENTS`] to arrive): latency grows by
/// at most `max` under that load, and not at all below it. A full batch
/// (a backlog) never waits.
#[derive(Debug)]
pub struct Pace {
    max: Duration,
    full: usize,
    last: Option<Instant>,
    /// Smoothed arrival rate, events/s.
    rate: f64,
}

impl Pace {
    pub fn new(max: Duration, full: usize) -> Pace {
        Pace {
            max,
            full,
            last: None,
            rate: 0.0,
        }
    }

    /// A batch of `events` was claimed at `now`; returns the pause before
    /// the next claim.
    pub fn claimed(&mut self, events: usize, now: Instant) -> Duration {
        let Some(last) = self.last.replace(now) else {
            return Duration::ZERO;
        };
        if events >= self.full || self.max.is_zero() {
            return Duration::ZERO;
        }
        let dt = now.duration_since(last).as_secs_f64().max(1e-4);
        let rate = events as f64 / dt;
        self.rate = if self.rate == 0.0 {
            rate
        } else {
            0.7 * self.rate + 0.3 * rate
        };
        if self.rate < LINGER_FROM_PER_S {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(LINGER_TARGET_EVENTS / self.rate).min(self.max)
    }

    /// The loop found nothing: the stream paused, start measuring afresh.
    pub fn idle(&mut self) {
        self.last = None;
        self.rate = 0.0;
    }
}

/// Keeps the subscriptions current: reloads on a `config` notification, and
/// every `every` in case one was missed.
pub async fn run_config(claimer: Arc<Claimer>, every: Duration, shutdown: CancellationToken) {
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

/// Recovers from replicas that died: expired batches are taken over,
/// expired delivery leases re-queued, stale idle flags removed.
pub async fn run_rescue(claimer: Arc<Claimer>, every: Duration, shutdown: CancellationToken) {
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
        counts.listeners = db::delivery::listener_rescue(&client).await?;
        if counts.deliveries > 0 {
            self.signals.retry.notify_one();
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pace: &mut Pace, events: usize, every: Duration, times: usize) -> Duration {
        let start = Instant::now();
        let mut out = Duration::ZERO;
        for i in 0..times {
            out = pace.claimed(events, start + every * i as u32);
        }
        out
    }

    #[test]
    fn a_slow_stream_is_never_held_back() {
        let mut pace = Pace::new(Duration::from_millis(8), 500);
        // 3 events every 3 ms: 1,000 events/s.
        assert_eq!(run(&mut pace, 3, Duration::from_millis(3), 50), Duration::ZERO);
    }

    #[test]
    fn a_fast_stream_waits_for_bigger_batches_but_never_longer_than_the_limit() {
        let mut pace = Pace::new(Duration::from_millis(8), 500);
        // 12 events every 2 ms: 6,000 events/s; 256 of them take ~43 ms.
        assert_eq!(
            run(&mut pace, 12, Duration::from_millis(2), 50),
            Duration::from_millis(8)
        );
        // 100,000 events/s: 256 arrive in ~2.6 ms.
        let mut pace = Pace::new(Duration::from_millis(8), 500);
        let d = run(&mut pace, 100, Duration::from_millis(1), 50);
        assert!(
            d > Duration::from_millis(2) && d < Duration::from_millis(3),
            "{d:?}"
        );
    }

    #[test]
    fn full_batches_and_a_zero_limit_never_wait_and_idleness_resets() {
        let mut pace = Pace::new(Duration::from_millis(8), 500);
        assert_eq!(run(&mut pace, 500, Duration::from_millis(2), 20), Duration::ZERO);
        let mut off = Pace::new(Duration::ZERO, 500);
        assert_eq!(run(&mut off, 12, Duration::from_millis(2), 20), Duration::ZERO);
        let mut pace = Pace::new(Duration::from_millis(8), 500);
        assert!(!run(&mut pace, 12, Duration::from_millis(2), 20).is_zero());
        pace.idle();
        // The first batch after a pause never waits.
        assert_eq!(pace.claimed(12, Instant::now()), Duration::ZERO);
    }
}
