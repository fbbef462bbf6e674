//! Fan-out: claims leased batches of new events, matches them against the
//! subscriptions (and content filters) and offers the jobs to the lanes;
//! when there is nothing to claim, announces idleness (so writers NOTIFY)
//! and waits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Claimed, Claimer, LINGER_FROM_PER_S};
use crate::db::{self, delivery::Batch, DbError};
use crate::job::{Job, Source};

/// The batch a linger aims for.
const LINGER_TARGET_EVENTS: f64 = 256.0;

impl Claimer {
    /// Claims one batch of new events and dispatches its jobs.
    pub async fn fanout_once(&self) -> Result<Claimed, DbError> {
        let batch = {
            let client = self.pool.get().await?;
            db::delivery::batch_claim(&client, &self.replica, self.config.batch_size, self.config.lease)
                .await?
        };
        self.dispatch_batch(batch).await
    }

    pub(super) async fn dispatch_batch(&self, batch: Batch) -> Result<Claimed, DbError> {
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
                        send_by: batch.send_by,
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
        self.recorder.batch(batch.id, jobs.len());
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

    /// The fan-out loop: claim while there is work; otherwise announce
    /// idleness and wait for a notification or the poll interval. Under a
    /// steady stream faster than [`LINGER_FROM_PER_S`] it pauses briefly
    /// between partial batches ([`Linger`]).
    pub async fn run_fanout(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut linger_for = Linger::new(self.config.linger, self.config.batch_size as usize);
        while !shutdown.is_cancelled() {
            self.wait_for_room(&shutdown).await;
            match self.fanout_once().await {
                Ok(c) if c.events > 0 => {
                    self.signals.refusals.succeeded();
                    backoff = Duration::from_millis(50);
                    let linger = linger_for.claimed(c.events, Instant::now());
                    if !linger.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(linger) => {}
                            _ = shutdown.cancelled() => {}
                        }
                    }
                }
                Ok(_) => {
                    linger_for.idle();
                    if let Err(error) = self.idle(&shutdown).await {
                        tracing::warn!(error = %crate::errors::error_chain(&error), "idle wait failed");
                        self.pause(&shutdown, &mut backoff).await;
                    }
                }
                Err(error) => {
                    if !self.signals.refusals.failed("fan-out", &error) {
                        tracing::warn!(error = %crate::errors::error_chain(&error), "claiming events failed");
                    }
                    self.pause(&shutdown, &mut backoff).await;
                }
            }
        }
    }

    /// Marks this replica idle so writers NOTIFY, makes sure no writer that
    /// saw it busy is still about to commit, then waits.
    async fn idle(&self, shutdown: &CancellationToken) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        db::delivery::idle_flag_set(&client, &self.replica, true).await?;
        // Every writer that read the flag before it committed has an xid
        // below this xmax; wait (briefly) until all of them have ended.
        let first = db::delivery::idle_check(&client).await?;
        let settle_until = Instant::now() + Duration::from_millis(50);
        let mut check = first;
        let mut work = check.has_work;
        while !work && check.horizon < first.xmax && Instant::now() < settle_until {
            tokio::time::sleep(Duration::from_millis(1)).await;
            check = db::delivery::idle_check(&client).await?;
            work = check.has_work;
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
        db::delivery::idle_flag_set(&client, &self.replica, false).await?;
        Ok(())
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
pub(crate) struct Linger {
    max: Duration,
    full: usize,
    last: Option<Instant>,
    /// Smoothed arrival rate, events/s.
    rate: f64,
}

impl Linger {
    pub(crate) fn new(max: Duration, full: usize) -> Linger {
        Linger {
            max,
            full,
            last: None,
            rate: 0.0,
        }
    }

    /// A batch of `events` was claimed at `now`; returns the pause before
    /// the next claim.
    pub(crate) fn claimed(&mut self, events: usize, now: Instant) -> Duration {
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
    pub(crate) fn idle(&mut self) {
        self.last = None;
        self.rate = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pace: &mut Linger, events: usize, every: Duration, times: usize) -> Duration {
        let start = Instant::now();
        let mut out = Duration::ZERO;
        for i in 0..times {
            out = pace.claimed(events, start + every * i as u32);
        }
        out
    }

    #[test]
    fn a_slow_stream_is_never_held_back() {
        let mut pace = Linger::new(Duration::from_millis(8), 500);
        // 3 events every 3 ms: 1,000 events/s.
        assert_eq!(run(&mut pace, 3, Duration::from_millis(3), 50), Duration::ZERO);
    }

    #[test]
    fn a_fast_stream_waits_for_bigger_batches_but_never_longer_than_the_limit() {
        let mut pace = Linger::new(Duration::from_millis(8), 500);
        // 12 events every 2 ms: 6,000 events/s; 256 of them take ~43 ms.
        assert_eq!(
            run(&mut pace, 12, Duration::from_millis(2), 50),
            Duration::from_millis(8)
        );
        // 100,000 events/s: 256 arrive in ~2.6 ms.
        let mut pace = Linger::new(Duration::from_millis(8), 500);
        let d = run(&mut pace, 100, Duration::from_millis(1), 50);
        assert!(
            d > Duration::from_millis(2) && d < Duration::from_millis(3),
            "{d:?}"
        );
    }

    #[test]
    fn full_batches_and_a_zero_limit_never_wait_and_idleness_resets() {
        let mut pace = Linger::new(Duration::from_millis(8), 500);
        assert_eq!(run(&mut pace, 500, Duration::from_millis(2), 20), Duration::ZERO);
        let mut off = Linger::new(Duration::ZERO, 500);
        assert_eq!(run(&mut off, 12, Duration::from_millis(2), 20), Duration::ZERO);
        let mut pace = Linger::new(Duration::from_millis(8), 500);
        assert!(!run(&mut pace, 12, Duration::from_millis(2), 20).is_zero());
        pace.idle();
        // The first batch after a pause never waits.
        assert_eq!(pace.claimed(12, Instant::now()), Duration::ZERO);
    }
}
