//! Failures an operator must hear about at the default log level: refused
//! targets, endpoints that do not answer, 5xx/429 answers, other rejections,
//! dead letters, paused and resumed endpoints.
//!
//! The recorder owns one [`Notices`] and hands it every outcome (and the
//! lanes' and probes' pause/resume events through the same channel), so this
//! is the one place that decides what is said. Each kind is said at most
//! once per endpoint per minute ([`crate::limiter`]), with the count of
//! occurrences folded into the line, the endpoint's id and name, its URL
//! redacted (`target::redact`: a Make.com URL is a credential) and the
//! latest reason. Secrets and full URLs are never logged.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::deliver::target;
use crate::endpoints::Snapshot;
use crate::limiter::{Limiter, Line};
use crate::record::{Outcome, Status};

/// The sidecar's current endpoints (shared with the lanes).
pub type Endpoints = Arc<RwLock<Arc<Snapshot>>>;

/// How often one kind of line may be written per endpoint.
pub const EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The target is refused (private or metadata address) or the URL unusable.
    Refused,
    /// A timeout or connection error: no answer.
    NoAnswer,
    /// A retryable answer: 5xx, 429 (408, 425, Make's queue full).
    Retrying,
    /// Any other answer (4xx, 3xx), or not sent: failed, not retried.
    Rejected,
    /// A delivery used up its retry schedule.
    Dead,
    /// The sidecar paused the endpoint (Make's 410, the circuit breaker).
    Paused,
    /// The circuit breaker closed: the endpoint is resumed (info).
    Resumed,
}

impl Kind {
    fn says(self) -> &'static str {
        match self {
            Kind::Refused => "deliveries refused before sending: the target is not allowed; not retried",
            Kind::NoAnswer => "deliveries failing: no answer (timeout or connection error); retrying",
            Kind::Retrying => "deliveries failing: the endpoint answers with a retryable error; retrying",
            Kind::Rejected => "deliveries failed: the endpoint rejected them; not retried \
                               (`pgwebhooks retry --endpoint <id>` re-queues them)",
            Kind::Dead => "deliveries dead: their retry schedule is used up \
                           (`pgwebhooks retry --endpoint <id>` re-queues them)",
            Kind::Paused => "endpoint paused: its deliveries wait until it is resumed",
            Kind::Resumed => "endpoint resumed: the circuit breaker closed",
        }
    }
}

/// What the latest occurrence said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail {
    pub code: Option<i32>,
    pub reason: String,
}

/// The failure kinds an outcome stands for: what its attempt ran into, and
/// [`Kind::Dead`] when the delivery is given up. Pure.
pub fn kinds(o: &Outcome) -> Vec<Kind> {
    let mut out = Vec::with_capacity(2);
    let attempt = match (o.status, o.refused, o.attempt.is_some(), o.code) {
        (Status::Delivered, ..) => None,
        (_, true, ..) => Some(Kind::Refused),
        // Not sent: put back (lane full, endpoint disabled), or refused
        // before sending (too big for Make, the endpoint is gone).
        (Status::Failed, _, false, _) => Some(Kind::Rejected),
        (_, _, false, _) => None,
        (_, _, true, None) => Some(Kind::NoAnswer),
        (Status::Failed, _, true, Some(_)) => Some(Kind::Rejected),
        // Make's 410 pauses the endpoint; the pause is what is said.
        (Status::Pending, _, true, Some(410)) => None,
        (_, _, true, Some(_)) => Some(Kind::Retrying),
    };
    out.extend(attempt);
    if o.status == Status::Dead {
        out.push(Kind::Dead);
    }
    out
}

/// The reason as said in a line: the error, else the HTTP status.
fn reason_of(o: &Outcome) -> String {
    let mut reason = match (&o.error, o.code) {
        (Some(e), _) => e.clone(),
        (None, Some(c)) => format!("HTTP {c}"),
        (None, None) => "no answer".into(),
    };
    if let Some(excerpt) = o.attempt.as_ref().and_then(|a| a.excerpt.as_deref()) {
        let excerpt: String = excerpt.split_whitespace().collect::<Vec<_>>().join(" ");
        let short: String = excerpt.chars().take(120).collect();
        if !short.is_empty() {
            reason.push_str(": ");
            reason.push_str(&short);
            if short.len() < excerpt.len() {
                reason.push('…');
            }
        }
    }
    reason
}

/// An optional number as logged: the number, or `none` (never `Some(200)`).
pub fn or_none(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "none".to_owned(), |c| c.to_string())
}

pub struct Notices {
    limiter: Limiter<(i64, Kind), Detail>,
    endpoints: Endpoints,
}

impl Notices {
    pub fn new(endpoints: Endpoints) -> Notices {
        Notices {
            limiter: Limiter::new(EVERY),
            endpoints,
        }
    }

    /// One recorded outcome.
    pub fn outcome(&mut self, o: &Outcome, now: Instant) {
        for kind in kinds(o) {
            let detail = Detail {
                code: o.code,
                reason: if kind == Kind::Dead {
                    format!("after {} attempts; last: {}", o.attempts, reason_of(o))
                } else {
                    reason_of(o)
                },
            };
            self.event(o.endpoint_id, kind, detail, now);
        }
    }

    /// An endpoint event (paused, resumed) or one failure.
    pub fn event(&mut self, endpoint_id: i64, kind: Kind, detail: Detail, now: Instant) {
        if let Some(line) = self.limiter.hit((endpoint_id, kind), detail, now) {
            self.write(line);
        }
    }

    /// Writes what was folded into lines that are now due.
    pub fn sweep(&mut self, now: Instant) {
        for line in self.limiter.due(now) {
            self.write(line);
        }
    }

    fn write(&self, line: Line<(i64, Kind), Detail>) {
        let Line {
            key: (endpoint_id, kind),
            count,
            detail,
        } = line;
        let (name, url) = {
            let snapshot = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
            match snapshot.get(endpoint_id) {
                Some(e) => (
                    e.name.clone().unwrap_or_else(|| "(unnamed)".into()),
                    target::redact(&e.url),
                ),
                None => ("(not loaded)".into(), "…".into()),
            }
        };
        let code = or_none(detail.code);
        let reason = detail.reason;
        let says = kind.says();
        if kind == Kind::Resumed {
            tracing::info!(endpoint_id, endpoint = %name, url = %url, reason = %reason, count, "{says}");
        } else {
            tracing::warn!(endpoint_id, endpoint = %name, url = %url, code = %code, reason = %reason,
                count, "{says}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Source;
    use crate::record::AttemptInfo;

    fn outcome(status: Status, code: Option<i32>, sent: bool, refused: bool) -> Outcome {
        Outcome {
            source: Source::Batch(1),
            event_id: uuid::Uuid::nil(),
            endpoint_id: 1,
            status,
            attempts: 3,
            next_attempt_at: None,
            code,
            error: None,
            attempt: sent.then(|| AttemptInfo {
                started_at: std::time::SystemTime::now(),
                duration_ms: 1.0,
                excerpt: Some("  Service\n unavailable ".into()),
            }),
            ordered: false,
            refused,
        }
    }

    #[test]
    fn outcomes_and_their_kinds() {
        use Status::*;
        let k = |s, c, sent, refused| kinds(&outcome(s, c, sent, refused));
        assert_eq!(k(Delivered, Some(200), true, false), vec![]);
        assert_eq!(k(Failed, None, true, true), vec![Kind::Refused]);
        assert_eq!(k(Pending, None, false, false), vec![], "released, not attempted");
        assert_eq!(k(Failed, None, false, false), vec![Kind::Rejected], "not sent");
        assert_eq!(k(Pending, None, true, false), vec![Kind::NoAnswer]);
        assert_eq!(k(Pending, Some(503), true, false), vec![Kind::Retrying]);
        assert_eq!(k(Pending, Some(429), true, false), vec![Kind::Retrying]);
        assert_eq!(k(Dead, Some(500), true, false), vec![Kind::Retrying, Kind::Dead]);
        assert_eq!(k(Dead, None, true, false), vec![Kind::NoAnswer, Kind::Dead]);
        assert_eq!(k(Failed, Some(404), true, false), vec![Kind::Rejected]);
        assert_eq!(k(Pending, Some(410), true, false), vec![], "Make's 410: the pause says it");
    }

    #[test]
    fn reasons_name_the_status_and_a_short_excerpt() {
        let o = outcome(Status::Pending, Some(503), true, false);
        assert_eq!(reason_of(&o), "HTTP 503: Service unavailable");
        let mut o = outcome(Status::Pending, None, false, false);
        o.error = Some("timed out after 2s".into());
        assert_eq!(reason_of(&o), "timed out after 2s");
        let mut o = outcome(Status::Pending, Some(500), true, false);
        o.attempt.as_mut().unwrap().excerpt = Some("x".repeat(500));
        assert_eq!(reason_of(&o).chars().count(), "HTTP 500: ".len() + 121);
        assert_eq!(or_none(Some(200)), "200");
        assert_eq!(or_none(None::<u16>), "none");
    }
}
