//! Recording outcomes: every attempt's result reaches Postgres in batches.
//!
//! The recorder owns one channel. Jobs' outcomes and batch registrations
//! arrive in order; it flushes whatever has queued up (large batches under
//! load, single rows when quiet) in one transaction: first attempts are
//! inserted, retries updated where the lease is still ours, and fan-out
//! batches whose every job is recorded are completed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::db::{self, DbError};
use crate::event::{Job, Source};
use crate::listen::Signals;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Delivered,
    Failed,
    Dead,
}

/// What one HTTP attempt looked like.
#[derive(Debug, Clone)]
pub struct AttemptInfo {
    pub started_at: SystemTime,
    pub duration_ms: f64,
    pub excerpt: Option<String>,
}

/// The new state of one delivery.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub source: Source,
    pub event_id: Uuid,
    pub endpoint_id: i64,
    pub status: Status,
    /// Attempts made so far, this one included.
    pub attempts: i32,
    pub next_attempt_at: Option<SystemTime>,
    pub code: Option<i32>,
    pub error: Option<String>,
    /// `None` when no request was sent (released, routed to the retry path).
    pub attempt: Option<AttemptInfo>,
    /// The endpoint delivers each row's events in order.
    pub ordered: bool,
}

impl Outcome {
    /// A job put back without an attempt: pending, due now. Used when an
    /// endpoint's lane is full or disabled, and for jobs still queued at
    /// shutdown.
    pub fn released(job: &Job, why: Option<&str>) -> Outcome {
        Outcome {
            source: job.source,
            event_id: job.event.id,
            endpoint_id: job.endpoint.id,
            status: Status::Pending,
            attempts: job.attempt - 1,
            next_attempt_at: Some(SystemTime::now()),
            code: None,
            error: why.map(str::to_owned),
            attempt: None,
            ordered: job.endpoint.ordered,
        }
    }
}

enum Msg {
    /// A fan-out batch with this many jobs; completed when all are recorded.
    Batch {
        id: i64,
        jobs: usize,
    },
    Outcome(Box<Outcome>),
}

/// Counts of one flush.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub inserted: i32,
    pub updated: i32,
    pub batches_completed: i32,
}

/// The sending side, cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Recorder {
    pub fn batch(&self, id: i64, jobs: usize) {
        let _ = self.tx.send(Msg::Batch { id, jobs });
    }
    pub fn record(&self, outcome: Outcome) {
        let _ = self.tx.send(Msg::Outcome(Box::new(outcome)));
    }
}

/// The recording task's state.
pub struct RecordTask {
    rx: mpsc::UnboundedReceiver<Msg>,
    pool: Pool,
    replica: Arc<str>,
    /// Outstanding job counts of fan-out batches.
    batches: HashMap<i64, usize>,
    buffer: Vec<Outcome>,
    /// Told after retry-path work was queued (jobs routed to pending).
    signals: Arc<Signals>,
    /// Called with each flushed outcome (metrics, the demo's live view).
    observer: Option<Observer>,
}

/// Sees every recorded outcome (metrics, the demo's live view).
pub type Observer = Arc<dyn Fn(&Outcome) + Send + Sync>;

/// Most outcomes written per flush.
const MAX_FLUSH: usize = 2000;

pub fn channel(pool: Pool, replica: Arc<str>, signals: Arc<Signals>) -> (Recorder, RecordTask) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Recorder { tx },
        RecordTask {
            rx,
            pool,
            replica,
            batches: HashMap::new(),
            buffer: Vec::new(),
            signals,
            observer: None,
        },
    )
}

impl RecordTask {
    pub fn observe(&mut self, f: Observer) {
        self.observer = Some(f);
    }

    /// Runs until `done` (then writes what is left, trying for `last_try`)
    /// or until every sender is gone.
    pub async fn run(mut self, done: tokio_util::sync::CancellationToken, last_try: Duration) {
        let mut backoff = Duration::from_millis(50);
        let mut failures = 0;
        loop {
            if self.buffer.is_empty() {
                tokio::select! {
                    msg = self.rx.recv() => match msg {
                        Some(msg) => self.take(msg),
                        None => return,
                    },
                    _ = done.cancelled() => return self.finish(last_try).await,
                }
            }
            while self.buffer.len() < MAX_FLUSH {
                match self.rx.try_recv() {
                    Ok(msg) => self.take(msg),
                    Err(_) => break,
                }
            }
            match self.flush().await {
                Ok(_) => {
                    backoff = Duration::from_millis(50);
                    failures = 0;
                }
                Err(error) if is_transient(&error) || failures < 5 => {
                    // Keep everything; Postgres may be restarting.
                    failures += 1;
                    tracing::warn!(error = %error_chain(&error), pending = self.buffer.len(),
                        "recording outcomes failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    // Never block recording forever on one bad flush: the
                    // leases of what it held expire and those deliveries are
                    // attempted again (same webhook-id).
                    tracing::error!(error = %error_chain(&error), dropped = self.buffer.len(),
                        "recording outcomes keeps failing; their deliveries will be retried");
                    self.buffer.clear();
                    failures = 0;
                }
            }
        }
    }

    /// Takes everything queued so far and writes it (one flush).
    pub async fn run_once(&mut self) -> Result<Flushed, DbError> {
        while let Ok(msg) = self.rx.try_recv() {
            self.take(msg);
        }
        self.flush().await
    }

    async fn finish(mut self, last_try: Duration) {
        let deadline = tokio::time::Instant::now() + last_try;
        while let Ok(msg) = self.rx.try_recv() {
            self.take(msg);
        }
        while let Err(error) = self.flush().await {
            if tokio::time::Instant::now() >= deadline {
                tracing::error!(error = %error_chain(&error), unrecorded = self.buffer.len(),
                    "could not record the last outcomes; their deliveries will be retried");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Batch { id, jobs } => {
                *self.batches.entry(id).or_default() += jobs;
            }
            Msg::Outcome(o) => self.buffer.push(*o),
        }
    }

    /// Writes the buffer in one transaction; keeps it on failure.
    pub async fn flush(&mut self) -> Result<Flushed, DbError> {
        // How many of each batch's jobs this flush records; a batch whose
        // remaining count this covers is complete once the flush commits.
        let mut recorded: HashMap<i64, usize> = HashMap::new();
        for o in &self.buffer {
            if let Source::Batch(id) = o.source {
                *recorded.entry(id).or_default() += 1;
            }
        }
        let done: Vec<i64> = self
            .batches
            .iter()
            .filter(|(id, left)| **left <= recorded.get(id).copied().unwrap_or(0))
            .map(|(id, _)| *id)
            .collect();
        if self.buffer.is_empty() && done.is_empty() {
            return Ok(Flushed::default());
        }
        // A pair can be here twice (a batch taken over by this same replica
        // while Postgres was away); keep the latest word on each.
        let mut seen = std::collections::HashSet::new();
        let mut first: Vec<&Outcome> = self
            .buffer
            .iter()
            .rev()
            .filter(|o| matches!(o.source, Source::Batch(_)) && seen.insert((o.event_id, o.endpoint_id)))
            .collect();
        first.reverse();
        let mut seen = std::collections::HashSet::new();
        let mut retries: Vec<(i64, &Outcome)> = self
            .buffer
            .iter()
            .rev()
            .filter_map(|o| match o.source {
                Source::Retry { delivery_id, .. } if seen.insert(delivery_id) => Some((delivery_id, o)),
                _ => None,
            })
            .collect();
        retries.reverse();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut out = Flushed::default();
        if !first.is_empty() {
            out.inserted = db::delivery::delivery_insert(&tx, &self.replica, &first).await?;
        }
        if !retries.is_empty() {
            out.updated = db::delivery::delivery_record(&tx, &self.replica, &retries).await?;
            if (out.updated as usize) < retries.len() {
                tracing::debug!(
                    lost = retries.len() - out.updated as usize,
                    "outcomes dropped: lease no longer ours"
                );
            }
        }
        if !done.is_empty() {
            out.batches_completed = db::delivery::batch_complete(&tx, &self.replica, &done).await?;
        }
        tx.commit().await?;

        let routed = self.buffer.iter().any(|o| o.status == Status::Pending);
        if let Some(observer) = &self.observer {
            self.buffer.iter().for_each(|o| observer(o));
        }
        for (id, n) in recorded {
            if let Some(left) = self.batches.get_mut(&id) {
                *left = left.saturating_sub(n);
            }
        }
        for id in &done {
            self.batches.remove(id);
        }
        self.buffer.clear();
        if routed {
            self.signals.retry.notify_one();
        }
        Ok(out)
    }
}

/// Connection trouble (worth retrying) rather than a statement Postgres
/// refuses (which would fail the same way again).
fn is_transient(e: &DbError) -> bool {
    match e {
        DbError::Query(e) => e.as_db_error().is_none_or(|db| {
            // 08 connection, 53 resources, 57 operator intervention (restart),
            // 40 serialization failure or deadlock.
            matches!(&db.code().code()[..2], "08" | "53" | "57" | "40")
        }),
        _ => true,
    }
}

/// An error and its causes on one line (`a: b: c`).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
