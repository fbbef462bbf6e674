//! The pipeline's vocabulary: an outbox event as the sidecar carries it, a
//! delivery job, and what became of it (its [`Outcome`]). A leaf: it
//! imports only the endpoint it is for.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use uuid::Uuid;

use serde_json::Value;

use crate::endpoints::Endpoint;

/// The most of any text from a receiver that is kept: an answer's excerpt
/// (no more of the answer is read), an attempt's error (a redirect's
/// `Location` with it), the reason of a pause in `webhooks.endpoints` and
/// its operational event. 1 KiB.
pub const TEXT_BOUND: usize = 1024;

/// `text` cut to at most [`TEXT_BOUND`] bytes at a character boundary,
/// ending in "…" when it was cut.
pub fn bounded(text: &str) -> Cow<'_, str> {
    if text.len() <= TEXT_BOUND {
        return Cow::Borrowed(text);
    }
    let mut end = TEXT_BOUND - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// One row of `webhooks.events`; `payload` and `previous` stay JSON text.
#[derive(Debug)]
pub struct Event {
    pub id: Uuid,
    pub event_type: String,
    pub tenant_id: Option<String>,
    pub origin: Option<String>,
    pub occurred_at: SystemTime,
    pub payload: String,
    pub previous: Option<String>,
    /// The standard envelope, built once (`deliver::request`).
    pub(crate) body: OnceLock<Arc<str>>,
    /// `payload` and `previous` parsed, for templates (once per event).
    pub(crate) parsed: OnceLock<(Value, Option<Value>)>,
}

impl Event {
    pub fn new(
        id: Uuid,
        event_type: String,
        tenant_id: Option<String>,
        origin: Option<String>,
        occurred_at: SystemTime,
        payload: String,
        previous: Option<String>,
    ) -> Event {
        Event {
            id,
            event_type,
            tenant_id,
            origin,
            occurred_at,
            payload,
            previous,
            body: OnceLock::new(),
            parsed: OnceLock::new(),
        }
    }

    /// The `webhooks.test` ping of `endpoint test` (no app may emit a
    /// `webhooks.*` type): sent as the standard envelope, never through a
    /// body template, which is written for the app's events.
    pub fn is_ping(&self) -> bool {
        self.event_type == PING_TYPE
    }
}

/// The event type of `endpoint test`'s default event.
pub const PING_TYPE: &str = "webhooks.test";

/// Where a job came from, which decides how its outcome is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A first attempt from a leased fan-out batch: recorded by inserting
    /// the delivery row.
    Batch(i64),
    /// A claimed retry: recorded by updating the delivery row, if the lease
    /// is still ours. `used` counts attempts already made in this budget.
    Retry { delivery_id: i64, used: i32 },
}

/// One (event, endpoint) pair to attempt.
#[derive(Debug, Clone)]
pub struct Job {
    pub source: Source,
    pub event: Arc<Event>,
    pub endpoint: Arc<Endpoint>,
    /// The attempt number this job makes (1 for a first attempt).
    pub attempt: i32,
    /// The fence: past this moment of the monotonic clock the job is
    /// released, not sent ([`send_by`]).
    pub send_by: Instant,
}

/// When a job claimed under `lease` by a statement sent at `claim_sent`
/// (monotonic) must have been sent by: the lease, less a quarter of it.
///
/// The server starts the lease at its `now()`, after the statement was
/// sent, so counting from `claim_sent` never runs past the lease the
/// server holds, whatever the wall clocks say. The quarter kept back is
/// longer than any attempt may take (a fifth of the lease, the endpoint
/// timeout's ceiling) with time left to record it: what is sent before
/// the fence ends before another replica may take the work over. A
/// replica that was frozen or cut off for longer finds its jobs past the
/// fence when it resumes, and releases them instead of sending twice what
/// another replica may already be sending.
pub fn send_by(claim_sent: Instant, lease: Duration) -> Instant {
    claim_sent + (lease - lease / 4)
}

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
    pub error: Option<AttemptError>,
    /// `None` when no request was sent (released, routed to the retry path).
    pub attempt: Option<AttemptInfo>,
    /// The endpoint delivers each row's events in order.
    pub ordered: bool,
}

/// Why an attempt failed, or why no request was sent. What is recorded
/// (`webhooks.attempts.error`, `webhooks.deliveries.last_error`) is its
/// text: the `Display` below, never a URL (a Make.com URL is a credential).
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptError {
    /// Not sent: the URL is malformed or its target refused
    /// (`deliver::target`). Retrying will not help.
    Refused(String),
    /// Not sent: a header could not be built (the endpoint's own headers).
    Headers(String),
    /// Not sent: the body is over Make.com's 5 MB limit.
    TooLarge { bytes: usize },
    /// No answer within the timeout.
    TimedOut(Duration),
    /// The connection could not be made (the cause chain).
    Connect(String),
    /// Any other transport failure (the cause chain).
    Transport(String),
    /// A 3xx answer: redirects are not followed. `to` is the `Location`,
    /// cut to [`TEXT_BOUND`].
    Redirect { to: String },
    /// An answer that failed the attempt; `retried`: the delivery goes on.
    Status { code: u16, retried: bool },
    /// A Make.com webhook that no longer exists: the endpoint is paused.
    Gone(String),
    /// Not sent: put back for the retry path (lane full, endpoint disabled,
    /// shutting down, past the lease's fence), or nothing left to send.
    Skipped(&'static str),
    /// Postgres refused the error's text; recorded in its place.
    NotRecordable,
}

impl AttemptError {
    /// Not sent because the target is not allowed (or its URL unusable).
    pub fn is_refused(&self) -> bool {
        matches!(self, AttemptError::Refused(_))
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Refused(why) | AttemptError::Headers(why) => f.write_str(why),
            AttemptError::TooLarge { bytes } => {
                write!(f, "body is {bytes} bytes, over Make.com's 5 MB limit; not sent")
            }
            AttemptError::TimedOut(after) => write!(f, "timed out after {after:?}"),
            AttemptError::Connect(chain) => write!(f, "connection failed: {chain}"),
            AttemptError::Transport(chain) => f.write_str(chain),
            AttemptError::Redirect { to } => write!(f, "redirect to {to} not followed"),
            AttemptError::Status { code, retried: true } => write!(f, "HTTP {code}"),
            AttemptError::Status { code, retried: false } => write!(f, "HTTP {code}: not retried"),
            AttemptError::Gone(reason) => f.write_str(reason),
            AttemptError::Skipped(why) => f.write_str(why),
            AttemptError::NotRecordable => f.write_str("(error text not recordable)"),
        }
    }
}

impl Outcome {
    /// Not sent: the target is refused (`deliver::target`) or its URL
    /// unusable.
    pub fn refused(&self) -> bool {
        self.error.as_ref().is_some_and(AttemptError::is_refused)
    }

    /// A job put back without an attempt: pending, due now. Used when an
    /// endpoint's lane is full or disabled, and for jobs still queued at
    /// shutdown.
    pub fn released(job: &Job, why: Option<&'static str>) -> Outcome {
        Outcome {
            source: job.source,
            event_id: job.event.id,
            endpoint_id: job.endpoint.id,
            status: Status::Pending,
            attempts: job.attempt - 1,
            next_attempt_at: Some(SystemTime::now()),
            code: None,
            error: why.map(AttemptError::Skipped),
            attempt: None,
            ordered: job.endpoint.ordered,
        }
    }
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Dead => "dead",
        }
    }
}

#[cfg(test)]
mod fence_tests {
    use super::*;

    #[test]
    fn the_fence_keeps_a_quarter_of_the_lease_back() {
        let sent = Instant::now();
        let lease = Duration::from_secs(60);
        assert_eq!(send_by(sent, lease), sent + Duration::from_secs(45));
        // Longer than the longest attempt (a fifth of the lease) by a twentieth.
        assert!(send_by(sent, lease) + lease / 5 < sent + lease);
    }
}
