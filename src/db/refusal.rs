//! Postgres refusing our writes for lack of resources (SQLSTATE class 53:
//! `53100` disk full — "could not extend file" —, `53200` out of memory,
//! `53300` too many connections, `53000`). It is not one batch's fault
//! and retrying a batch at once does not help, so it is one state of the
//! replica, shared: the recorder and the claim stages report into it,
//! claiming stops while outcomes are waiting to be written, `/readyz` and
//! the console show it, and the log says it once per [`LOG_EVERY`], not
//! once per failed statement; it ends by itself with the first write that
//! succeeds.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::DbError;

/// How often a refusal that goes on is said again.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// What Postgres said, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub since: Instant,
    /// The SQLSTATE (`53100`).
    pub code: String,
    /// Postgres's message (`could not extend file "base/…": No space left on device`).
    pub message: String,
}

impl Refused {
    /// What it means, in a few words: "disk full (SQLSTATE 53100)".
    pub fn cause(&self) -> String {
        let what = match self.code.as_str() {
            "53100" => "disk full",
            "53200" => "out of memory",
            "53300" => "too many connections",
            "53400" => "configuration limit exceeded",
            _ => "insufficient resources",
        };
        format!("{what} (SQLSTATE {})", self.code)
    }

    /// One line for `/readyz`, the console and `status`.
    pub fn describe(&self) -> String {
        format!(
            "Postgres refuses writes for {} s: {}: {}",
            self.since.elapsed().as_secs(),
            self.cause(),
            self.message
        )
    }
}

#[derive(Default)]
struct State {
    current: Option<Refused>,
    last_logged: Option<Instant>,
}

/// The replica's view of whether Postgres takes its writes.
#[derive(Default)]
pub struct Refusals {
    state: Mutex<State>,
}

/// The SQLSTATE and message when `error` is Postgres refusing for lack of
/// resources (class 53).
pub fn resource_refusal(error: &DbError) -> Option<(String, String)> {
    let DbError::Query(e) = error else { return None };
    let db = e.as_db_error()?;
    let code = db.code().code();
    code.starts_with("53")
        .then(|| (code.to_owned(), db.message().to_owned()))
}

impl Refusals {
    /// Notes a failed statement of `stage`. True when it was a refusal for
    /// lack of resources (said here, at most once per [`LOG_EVERY`]: the
    /// caller should not log it again); false for any other error.
    pub fn failed(&self, stage: &str, error: &DbError) -> bool {
        let Some((code, message)) = resource_refusal(error) else {
            return false;
        };
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let refused = s.current.get_or_insert_with(|| Refused {
            since: now,
            code: code.clone(),
            message: message.clone(),
        });
        refused.code = code;
        refused.message = message;
        let refused = refused.clone();
        let due = s.last_logged.is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
        if due {
            s.last_logged = Some(now);
            drop(s);
            tracing::error!(stage, cause = %refused.cause(), error = %refused.message,
                refused_for_s = refused.since.elapsed().as_secs(),
                "Postgres refuses writes: not claiming new work while outcomes cannot be recorded; \
                 retrying by itself (free space on the database server)");
        }
        true
    }

    /// A write went through: a refusal, if there was one, is over.
    pub fn succeeded(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = s.current.take() {
            s.last_logged = None;
            drop(s);
            tracing::warn!(cause = %r.cause(), refused_for_s = r.since.elapsed().as_secs(),
                "Postgres takes writes again: claiming resumes");
        }
    }

    /// The refusal going on, if any.
    pub fn current(&self) -> Option<Refused> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .clone()
    }
}
