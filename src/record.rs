//! Recording outcomes: every attempt's result reaches Postgres in batches.
//!
//! The recorder owns one channel. Jobs' outcomes and batch registrations
//! arrive in order; it flushes whatever has queued up (large batches under
//! load, single rows when quiet) in one transaction: first attempts are
//! inserted, retries updated where the lease is still ours, and fan-out
//! batches whose every job is recorded are completed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;

use crate::db::{self, DbError};
use crate::errors::error_chain;
use crate::job::{Outcome, Source, Status};
use crate::listen::Signals;
use crate::notice::{self, Notices};

enum Msg {
    /// A fan-out batch with this many jobs; completed when all are recorded.
    Batch {
        id: i64,
        jobs: usize,
    },
    Outcome(Box<Outcome>),
    /// An endpoint paused or resumed (said by [`crate::notice`]).
    Notice {
        endpoint_id: i64,
        kind: notice::Kind,
        detail: notice::Detail,
    },
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
    unrecorded: Arc<AtomicUsize>,
}

impl Recorder {
    pub fn batch(&self, id: i64, jobs: usize) {
        self.send(Msg::Batch { id, jobs });
    }
    pub fn record(&self, outcome: Outcome) {
        self.unrecorded.fetch_add(1, Ordering::AcqRel);
        self.send(Msg::Outcome(Box::new(outcome)));
    }
    /// Tells the operator about an endpoint event (paused, resumed),
    /// through the same limiter as the outcomes' failures.
    pub fn notice(&self, endpoint_id: i64, kind: notice::Kind, code: Option<i32>, reason: &str) {
        self.send(Msg::Notice {
            endpoint_id,
            kind,
            detail: notice::Detail {
                code,
                reason: reason.to_owned(),
            },
        });
    }

    /// Outcomes handed over and not yet written: memory the claim loop
    /// counts beside its jobs, so that a slow database holds fan-out back
    /// instead of letting outcomes pile up here.
    pub fn unrecorded(&self) -> usize {
        self.unrecorded.load(Ordering::Acquire)
    }

    /// Only once the recording task has ended (it stopped, or panicked:
    /// the supervisor then shuts the sidecar down) can a message be lost;
    /// that is said, never silent. Nothing is lost for good: what was not
    /// recorded is taken over when its lease expires.
    fn send(&self, msg: Msg) {
        if let Err(mpsc::error::SendError(Msg::Outcome(o))) = self.tx.send(msg) {
            self.unrecorded.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(event_id = %o.event_id, endpoint_id = o.endpoint_id, status = o.status.as_str(),
                "the recorder has stopped: this outcome is not recorded; its delivery is retried once its lease expires");
        }
    }
}

/// How long a flush may take before the recorder says so (and again every
/// such interval while it waits).
const SLOW_FLUSH: Duration = Duration::from_secs(5);

/// The recording task's state.
pub struct RecordTask {
    rx: mpsc::UnboundedReceiver<Msg>,
    pool: Pool,
    replica: Arc<str>,
    /// Outstanding job counts of fan-out batches.
    batches: HashMap<i64, usize>,
    buffer: Vec<Outcome>,
    /// Shared with every [`Recorder`]: outcomes sent and not yet written.
    unrecorded: Arc<AtomicUsize>,
    /// Told after retry-path work was queued (jobs routed to pending).
    signals: Arc<Signals>,
    /// Called with each flushed outcome (metrics, the demo's live view).
    observer: Option<Observer>,
    /// Says failures at `warn` (none until [`RecordTask::notify`]).
    notices: Option<Notices>,
}

/// Sees every recorded outcome (metrics, the demo's live view).
pub type Observer = Arc<dyn Fn(&Outcome) + Send + Sync>;

/// Most outcomes written per flush.
const MAX_FLUSH: usize = 2000;

pub fn channel(pool: Pool, replica: Arc<str>, signals: Arc<Signals>) -> (Recorder, RecordTask) {
    let (tx, rx) = mpsc::unbounded_channel();
    let unrecorded = Arc::new(AtomicUsize::new(0));
    (
        Recorder {
            tx,
            unrecorded: unrecorded.clone(),
        },
        RecordTask {
            rx,
            pool,
            replica,
            batches: HashMap::new(),
            buffer: Vec::new(),
            unrecorded,
            signals,
            observer: None,
            notices: None,
        },
    )
}

impl RecordTask {
    pub fn observe(&mut self, f: Observer) {
        self.observer = Some(f);
    }

    /// Log failures, pauses and dead letters at `warn` (rate-limited),
    /// naming endpoints as `endpoints` has them.
    pub fn notify(&mut self, endpoints: notice::Endpoints) {
        self.notices = Some(Notices::new(endpoints));
    }

    /// Runs until `done` (then writes what is left, trying for `last_try`)
    /// or until every sender is gone.
    pub async fn run(mut self, done: tokio_util::sync::CancellationToken, last_try: Duration) {
        let mut backoff = Duration::from_millis(50);
        // Writes failure lines folded while an endpoint went quiet.
        let mut sweep = tokio::time::interval(Duration::from_secs(5));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.buffer.is_empty() {
                tokio::select! {
                    msg = self.rx.recv() => match msg {
                        Some(msg) => self.take(msg),
                        None => return,
                    },
                    _ = sweep.tick() => {
                        if let Some(n) = &mut self.notices {
                            n.sweep(std::time::Instant::now());
                        }
                        continue;
                    }
                    _ = done.cancelled() => return self.finish(last_try).await,
                }
            }
            while self.buffer.len() < MAX_FLUSH {
                match self.rx.try_recv() {
                    Ok(msg) => self.take(msg),
                    Err(_) => break,
                }
            }
            let writing = !self.buffer.is_empty();
            match self.flush_watched().await {
                Ok(_) => {
                    if writing {
                        self.signals.refusals.succeeded();
                    }
                    backoff = Duration::from_millis(50)
                }
                Err(error) if self.signals.refusals.failed("recorder", &error) => {
                    // Said once a minute by `failed`; claiming waits.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    // Keep everything: Postgres may be restarting, or be
                    // between a migrate and its functions. Outcomes whose
                    // own data Postgres refuses never get here (`flush`
                    // isolates them), so nothing one receiver answers can
                    // hold up or drop the others' outcomes.
                    tracing::warn!(error = %error_chain(&error), pending = self.buffer.len(),
                        "recording outcomes failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// [`RecordTask::flush`], saying at `warn` every 5 s while it has not
    /// returned, with the pool's state: a flush that waits (for a pooled
    /// connection, or on a lock) holds every later outcome back, and the
    /// deliveries it covers look undelivered meanwhile.
    async fn flush_watched(&mut self) -> Result<Flushed, DbError> {
        let pending = self.buffer.len();
        let pool = self.pool.clone();
        let started = tokio::time::Instant::now();
        let flush = self.flush();
        tokio::pin!(flush);
        let mut tick = tokio::time::interval_at(started + SLOW_FLUSH, SLOW_FLUSH);
        loop {
            tokio::select! {
                result = &mut flush => return result,
                _ = tick.tick() => {
                    let status = pool.status();
                    tracing::warn!(pending, waited_s = started.elapsed().as_secs(),
                        pool_size = status.size, pool_available = status.available,
                        pool_waiting = status.waiting,
                        "recording outcomes is taking long: still waiting on the database");
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
        if let Some(n) = &mut self.notices {
            n.finish();
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
            Msg::Outcome(o) => {
                if let Some(n) = &mut self.notices {
                    n.outcome(&o, std::time::Instant::now());
                }
                self.buffer.push(*o)
            }
            Msg::Notice {
                endpoint_id,
                kind,
                detail,
            } => {
                if let Some(n) = &mut self.notices {
                    n.event(endpoint_id, kind, detail, std::time::Instant::now());
                }
            }
        }
    }

    /// Writes the buffer in one transaction; keeps it on failure. When
    /// Postgres refuses the data of some outcomes (an SQLSTATE of class 22
    /// or 23), they are isolated by bisection: the others are written
    /// normally, an offending one again with placeholder texts, and only one
    /// refused even then is given up (logged, not written).
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
        let latest = latest_words(&self.buffer);
        let out = match write(&self.pool, &self.replica, &latest, &done).await {
            Ok(out) => out,
            Err(error) if refused_data(&error) => {
                tracing::warn!(error = %error_chain(&error), pending = latest.len(),
                    "Postgres refused some outcomes' data; isolating them");
                self.write_isolating(&latest, &done).await?
            }
            Err(error) => return Err(error),
        };

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
        self.unrecorded.fetch_sub(self.buffer.len(), Ordering::AcqRel);
        self.buffer.clear();
        if routed {
            self.signals.retry.notify_one();
        }
        Ok(out)
    }

    /// Writes `outcomes` in parts, halving every part Postgres refuses,
    /// then completes `done`. Parts already written stay written when a
    /// later one fails for another reason (the caller keeps the buffer and
    /// writes it all again: every statement is idempotent).
    async fn write_isolating(&self, outcomes: &[&Outcome], done: &[i64]) -> Result<Flushed, DbError> {
        let mut out = Flushed::default();
        let mut add = |f: Flushed| {
            out.inserted += f.inserted;
            out.updated += f.updated;
            out.batches_completed += f.batches_completed;
        };
        let mut parts = vec![outcomes];
        while let Some(part) = parts.pop() {
            let error = match write(&self.pool, &self.replica, part, &[]).await {
                Ok(f) => {
                    add(f);
                    continue;
                }
                Err(error) if !refused_data(&error) => return Err(error),
                Err(error) => error,
            };
            if part.len() > 1 {
                let (a, b) = part.split_at(part.len() / 2);
                parts.push(b);
                parts.push(a);
                continue;
            }
            let o = part[0];
            let stand_in = placeholder(o);
            match write(&self.pool, &self.replica, &[&stand_in], &[]).await {
                Ok(f) => {
                    tracing::warn!(endpoint_id = o.endpoint_id, event_id = %o.event_id,
                        error = %error_chain(&error),
                        "an outcome was recorded with placeholder texts: Postgres refused its own");
                    add(f);
                }
                Err(again) if !refused_data(&again) => return Err(again),
                Err(again) => tracing::error!(endpoint_id = o.endpoint_id, event_id = %o.event_id,
                    status = o.status.as_str(), error = %error_chain(&again),
                    "an outcome Postgres refuses was not recorded (the others were)"),
            }
        }
        if !done.is_empty() {
            match write(&self.pool, &self.replica, &[], done).await {
                Ok(f) => add(f),
                Err(error) if !refused_data(&error) => return Err(error),
                // Left to the rescue, which skips the endpoints recorded.
                Err(error) => tracing::error!(error = %error_chain(&error), "completing batches failed"),
            }
        }
        Ok(out)
    }
}

/// The latest word on each delivery, in buffer order. A pair can be here
/// twice (a batch taken over by this same replica while Postgres was away).
fn latest_words(buffer: &[Outcome]) -> Vec<&Outcome> {
    let mut pairs = std::collections::HashSet::new();
    let mut retries = std::collections::HashSet::new();
    let mut latest: Vec<&Outcome> = buffer
        .iter()
        .rev()
        .filter(|o| match o.source {
            Source::Batch(_) => pairs.insert((o.event_id, o.endpoint_id)),
            Source::Retry { delivery_id, .. } => retries.insert(delivery_id),
        })
        .collect();
    latest.reverse();
    latest
}

/// Writes outcomes and completes batches in one statement (see
/// [`db::delivery::outcomes_record`]: no transaction of ours stays open
/// while this replica is away).
async fn write(pool: &Pool, replica: &str, outcomes: &[&Outcome], done: &[i64]) -> Result<Flushed, DbError> {
    let first: Vec<&Outcome> = outcomes
        .iter()
        .copied()
        .filter(|o| matches!(o.source, Source::Batch(_)))
        .collect();
    let retries: Vec<(i64, &Outcome)> = outcomes
        .iter()
        .filter_map(|o| match o.source {
            Source::Retry { delivery_id, .. } => Some((delivery_id, *o)),
            _ => None,
        })
        .collect();
    let client = pool.get().await?;
    let r = db::delivery::outcomes_record(&client, replica, &first, &retries, done).await?;
    if (r.updated as usize) < retries.len() {
        tracing::debug!(
            lost = retries.len() - r.updated as usize,
            "outcomes not applied (their attempts are recorded): lease no longer ours"
        );
    }
    Ok(Flushed {
        inserted: r.inserted,
        updated: r.updated,
        batches_completed: r.batches_completed,
    })
}

/// The outcome with its texts replaced, for when Postgres refuses them.
fn placeholder(o: &Outcome) -> Outcome {
    let mut p = o.clone();
    p.error = p.error.map(|_| crate::job::AttemptError::NotRecordable);
    if let Some(a) = &mut p.attempt {
        a.excerpt = a
            .excerpt
            .as_ref()
            .map(|_| "(response excerpt not recordable)".to_owned());
    }
    p
}

/// Postgres refused the data of a statement (class 22 data exception, 23
/// integrity constraint violation): the same rows would fail again.
fn refused_data(e: &DbError) -> bool {
    match e {
        DbError::Query(e) => e
            .as_db_error()
            .is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::AttemptInfo;
    use std::time::SystemTime;
    use uuid::Uuid;

    #[test]
    fn placeholders_keep_everything_but_the_texts() {
        let o = Outcome {
            source: Source::Batch(1),
            event_id: Uuid::nil(),
            endpoint_id: 7,
            status: Status::Delivered,
            attempts: 1,
            next_attempt_at: None,
            code: Some(200),
            error: Some(crate::job::AttemptError::Transport("bad".into())),
            attempt: Some(AttemptInfo {
                started_at: SystemTime::now(),
                duration_ms: 1.0,
                excerpt: Some("bad".into()),
            }),
            ordered: false,
        };
        let p = placeholder(&o);
        assert_eq!(p.error, Some(crate::job::AttemptError::NotRecordable));
        assert_eq!(p.error.unwrap().to_string(), "(error text not recordable)");
        assert_eq!(
            p.attempt.unwrap().excerpt.as_deref(),
            Some("(response excerpt not recordable)")
        );
        assert_eq!((p.status, p.code, p.attempts), (Status::Delivered, Some(200), 1));
        let mut none = o.clone();
        none.error = None;
        none.attempt = None;
        let p = placeholder(&none);
        assert!(p.error.is_none() && p.attempt.is_none());
    }
}
