//! Per-endpoint lanes: each endpoint gets a bounded queue, a concurrency
//! limit and (for Make.com and rate-limited endpoints) pacing shared with
//! the other replicas through Postgres. A slow or dead endpoint fills only
//! its own lane; what does not fit goes to the retry path in the database
//! instead of waiting in memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::breaker::Breaker;
use crate::db;
use crate::deliver::{Deliverer, SideEffect};
use crate::endpoints::Subscriptions;
use crate::job::Job;
use crate::job::Outcome;
use crate::notice::Kind;
use crate::record::Recorder;

/// Lane settings.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Concurrent requests per endpoint unless the endpoint sets its own.
    pub max_in_flight: usize,
    /// Jobs queued per endpoint beyond those in flight, as a multiple of
    /// its concurrency; more go to the retry path.
    pub queue_factor: usize,
    /// …but at least this many (a claim batch's worth).
    pub min_queue: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_in_flight: 64,
            queue_factor: 4,
            min_queue: 1000,
        }
    }
}

/// What every lane shares; private to the dispatcher.
struct Shared {
    deliverer: Arc<Deliverer>,
    recorder: Recorder,
    pool: Pool,
    subscriptions: Subscriptions,
    breaker: Arc<Breaker>,
    /// Stop taking work: queued jobs are released.
    stopping: CancellationToken,
    /// Abandon in-flight attempts (the grace period is over).
    hard_stop: CancellationToken,
    /// Jobs handed to lanes and not yet recorded.
    in_memory: AtomicUsize,
    /// Woken whenever `in_memory` drops.
    room: Notify,
    config: DispatchConfig,
}

impl Shared {
    fn finish(&self, outcome: Outcome) {
        self.recorder.record(outcome);
        self.in_memory.fetch_sub(1, Ordering::AcqRel);
        self.room.notify_waiters();
    }
}

struct Lane {
    tx: mpsc::Sender<Job>,
    /// Until then, a full lane is treated as congested: jobs that do not
    /// fit go to the retry path at once instead of waiting.
    congested_until: Arc<Mutex<Option<Instant>>>,
}

/// How long a job may wait for room in a busy lane before the lane counts
/// as congested.
const ROOM_WAIT: Duration = Duration::from_millis(100);
/// How long a lane stays marked congested.
const CONGESTED_FOR: Duration = Duration::from_secs(1);

pub struct Dispatcher {
    shared: Arc<Shared>,
    lanes: Mutex<HashMap<i64, Lane>>,
    tasks: tokio_util::task::TaskTracker,
}

impl Dispatcher {
    pub fn new(
        config: DispatchConfig,
        deliverer: Arc<Deliverer>,
        recorder: Recorder,
        pool: Pool,
        subscriptions: Subscriptions,
        breaker: Arc<Breaker>,
    ) -> Dispatcher {
        Dispatcher {
            shared: Arc::new(Shared {
                deliverer,
                recorder,
                pool,
                subscriptions,
                breaker,
                stopping: CancellationToken::new(),
                hard_stop: CancellationToken::new(),
                in_memory: AtomicUsize::new(0),
                room: Notify::new(),
                config,
            }),
            lanes: Mutex::new(HashMap::new()),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Jobs handed to lanes and not yet recorded.
    pub fn in_memory(&self) -> usize {
        self.shared.in_memory.load(Ordering::Acquire)
    }

    /// Resolves when a job leaves memory (or at once if one just did).
    pub async fn room_freed(&self) {
        self.shared.room.notified().await
    }

    /// Stops taking work: what is offered or queued from now on is
    /// released to the retry path.
    pub fn stop_taking(&self) {
        self.shared.stopping.cancel();
    }

    /// Abandons attempts in flight (released, to be retried).
    pub fn abandon(&self) {
        self.shared.hard_stop.cancel();
    }

    /// Queues `job` on its endpoint's lane, waiting briefly while a busy
    /// lane frees a slot. A job the lane cannot take (disabled endpoint,
    /// congested lane, stopping) is routed to the retry path as a pending
    /// delivery, so nothing waits unbounded in memory and one stuck
    /// endpoint never holds up the others.
    pub async fn offer(&self, job: Job) {
        self.shared.in_memory.fetch_add(1, Ordering::AcqRel);
        if !job.endpoint.enabled || self.shared.stopping.is_cancelled() {
            let why = (!job.endpoint.enabled).then_some("endpoint disabled");
            self.shared.finish(Outcome::released(&job, why));
            return;
        }
        // An ordered endpoint's first attempts go through the retry path,
        // whose claim takes only the oldest undelivered event of each row.
        if job.endpoint.ordered && matches!(job.source, crate::job::Source::Batch(_)) {
            self.shared.finish(Outcome::released(&job, None));
            return;
        }
        let (tx, congested) = self.lane(&job);
        let job = match tx.try_send(job) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(job)) => {
                return self.shared.finish(Outcome::released(&job, None))
            }
            Err(mpsc::error::TrySendError::Full(job)) => job,
        };
        let is_congested = congested
            .lock()
            .expect("lane lock")
            .is_some_and(|t| t > Instant::now());
        if !is_congested {
            if let Ok(Ok(permit)) = tokio::time::timeout(ROOM_WAIT, tx.reserve()).await {
                permit.send(job);
                return;
            }
            *congested.lock().expect("lane lock") = Some(Instant::now() + CONGESTED_FOR);
            tracing::debug!(
                endpoint_id = job.endpoint.id,
                "lane congested; routing to the retry path"
            );
        }
        self.shared.finish(Outcome::released(&job, None));
    }

    /// Jobs endpoint `id`'s lane can take now.
    pub fn room(&self, id: i64) -> usize {
        let lanes = self.lanes.lock().expect("lanes lock");
        match lanes.get(&id) {
            Some(l) => l.tx.capacity(),
            None => {
                let snap = self.shared.subscriptions.current();
                snap.get(id).map_or(0, |e| self.lane_capacity(e.max_in_flight))
            }
        }
    }

    fn lane_capacity(&self, in_flight: Option<usize>) -> usize {
        let n = in_flight.unwrap_or(self.shared.config.max_in_flight).max(1);
        (n * self.shared.config.queue_factor.max(1)).max(self.shared.config.min_queue)
    }

    fn lane(&self, job: &Job) -> (mpsc::Sender<Job>, Arc<Mutex<Option<Instant>>>) {
        let mut lanes = self.lanes.lock().expect("lanes lock");
        let id = job.endpoint.id;
        if let Some(l) = lanes.get(&id) {
            return (l.tx.clone(), l.congested_until.clone());
        }
        let in_flight = job
            .endpoint
            .max_in_flight
            .unwrap_or(self.shared.config.max_in_flight)
            .max(1);
        let capacity = self.lane_capacity(job.endpoint.max_in_flight);
        let (tx, rx) = mpsc::channel(capacity);
        let shared = self.shared.clone();
        let tasks = self.tasks.clone();
        self.tasks.spawn(run_lane(id, rx, in_flight, shared, tasks));
        let congested_until = Arc::new(Mutex::new(None));
        lanes.insert(
            id,
            Lane {
                tx: tx.clone(),
                congested_until: congested_until.clone(),
            },
        );
        (tx, congested_until)
    }

    /// Closes every lane; resolves when all queued jobs are released and
    /// in-flight attempts have finished (or were abandoned at `hard_stop`).
    pub async fn drain(&self) {
        self.lanes.lock().expect("lanes lock").clear();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn run_lane(
    endpoint_id: i64,
    mut rx: mpsc::Receiver<Job>,
    in_flight: usize,
    shared: Arc<Shared>,
    tasks: tokio_util::task::TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(in_flight));
    let mut tokens: i32 = 0;
    while let Some(job) = rx.recv().await {
        let current = shared.subscriptions.current().get(endpoint_id).cloned();
        let enabled = current.as_ref().is_some_and(|e| e.enabled);
        if shared.stopping.is_cancelled() || !enabled {
            let why = (!enabled).then_some("endpoint disabled");
            shared.finish(Outcome::released(&job, why));
            continue;
        }
        if let Some((rate, per)) = job.endpoint.pacing() {
            while tokens == 0 {
                let wanted = (rx.len() as i32 + 1).min((rate as i32 / 10).max(1));
                match pace(&shared.pool, endpoint_id, wanted, rate, per).await {
                    Ok((granted, wait)) => {
                        tokens = granted;
                        if granted == 0 {
                            let pause = wait
                                .unwrap_or(Duration::from_millis(50))
                                .max(Duration::from_millis(5));
                            tokio::select! {
                                _ = tokio::time::sleep(pause) => {}
                                _ = shared.stopping.cancelled() => break,
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(endpoint_id, error = %crate::errors::error_chain(&error), "pacing check failed");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                            _ = shared.stopping.cancelled() => break,
                        }
                    }
                }
            }
            if tokens == 0 {
                shared.finish(Outcome::released(&job, None));
                continue;
            }
            tokens -= 1;
        }
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shared.stopping.cancelled() => {
                shared.finish(Outcome::released(&job, None));
                continue;
            }
        };
        let shared2 = shared.clone();
        // Everything said while the job runs carries its ids.
        let span = tracing::debug_span!("job", event_id = %job.event.id, endpoint_id,
        delivery_id = match job.source {
            crate::job::Source::Retry { delivery_id, .. } => Some(delivery_id),
            crate::job::Source::Batch(_) => None,
        });
        let run = async move {
            let result = tokio::select! {
                r = shared2.deliverer.attempt(&job) => Some(r),
                _ = shared2.hard_stop.cancelled() => None,
            };
            match result {
                Some((outcome, effect)) => {
                    if let SideEffect::PauseEndpoint(reason) = effect {
                        pause_endpoint(&shared2, endpoint_id, outcome.code, &reason).await;
                    } else if shared2.breaker.observe(endpoint_id, &outcome) {
                        shared2
                            .breaker
                            .trip(&shared2.pool, &shared2.recorder, endpoint_id, &outcome)
                            .await;
                    }
                    tracing::debug!(attempt = job.attempt, status = outcome.status.as_str(),
                        code = %crate::notice::or_none(outcome.code), "attempt");
                    shared2.finish(outcome);
                }
                None => shared2.finish(Outcome::released(&job, Some("abandoned at shutdown"))),
            }
            drop(permit);
        };
        tasks.spawn(run.instrument(span));
    }
}

async fn pace(
    pool: &Pool,
    id: i64,
    wanted: i32,
    rate: u32,
    per: Duration,
) -> Result<(i32, Option<Duration>), db::DbError> {
    let client = pool.get().await?;
    db::delivery::endpoint_pace(&client, id, wanted, rate, per).await
}

async fn pause_endpoint(shared: &Shared, id: i64, code: Option<i32>, reason: &str) {
    let result = match shared.pool.get().await {
        Ok(c) => db::delivery::endpoint_pause(&c, id, reason).await,
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(true) => shared.recorder.notice(id, Kind::Paused, code, reason),
        Ok(false) => {}
        Err(error) => {
            tracing::error!(endpoint_id = id, error = %crate::errors::error_chain(&error), "could not pause endpoint")
        }
    }
}
