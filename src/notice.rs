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

use std::time::{Duration, Instant};

use crate::deliver::target;

use crate::job::{Outcome, Status};
use crate::limiter::{Limiter, Line};

/// The sidecar's current endpoints (shared with the lanes).
pub(crate) type Endpoints = crate::endpoints::Subscriptions;

/// How often one kind of line may be written per endpoint.
pub(crate) const EVERY: Duration = Duration::from_secs(60);

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
            Kind::Rejected => {
                "deliveries failed: the endpoint rejected them; not retried \
                               (`pgwebhooks retry --endpoint <id>` re-queues them)"
            }
            Kind::Dead => {
                "deliveries dead: their retry schedule is used up \
                           (`pgwebhooks retry --endpoint <id>` re-queues them)"
            }
            Kind::Paused => "endpoint paused: its deliveries wait until it is resumed",
            Kind::Resumed => "endpoint resumed: the circuit breaker closed",
        }
    }
}

/// What the latest occurrence said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Detail {
    pub code: Option<i32>,
    pub reason: String,
}

/// The failure kinds an outcome stands for: what its attempt ran into, and
/// [`Kind::Dead`] when the delivery is given up. Pure.
pub(crate) fn kinds(o: &Outcome) -> Vec<Kind> {
    let mut out = Vec::with_capacity(2);
    let attempt = match (o.status, o.refused(), o.attempt.is_some(), o.code) {
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
        (Some(e), _) => e.to_string(),
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
    redact_urls(&reason)
}

pub(crate) use crate::redact::redact_urls;

/// An optional number as logged: the number, or `none` (never `Some(200)`).
pub(crate) fn or_none(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "none".to_owned(), |c| c.to_string())
}

pub(crate) struct Notices {
    limiter: Limiter<(i64, Kind), Detail>,
    endpoints: Endpoints,
}

impl Notices {
    pub(crate) fn new(endpoints: Endpoints) -> Notices {
        Notices {
            limiter: Limiter::new(EVERY),
            endpoints,
        }
    }

    /// One recorded outcome.
    pub(crate) fn outcome(&mut self, o: &Outcome, now: Instant) {
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
    pub(crate) fn event(&mut self, endpoint_id: i64, kind: Kind, detail: Detail, now: Instant) {
        if let Some(line) = self.limiter.hit((endpoint_id, kind), detail, now) {
            self.write(line);
        }
    }

    /// Writes what was folded into lines that are now due.
    pub(crate) fn sweep(&mut self, now: Instant) {
        for line in self.limiter.due(now) {
            self.write(line);
        }
    }

    /// Writes everything still folded (the sidecar is stopping).
    pub(crate) fn finish(&mut self) {
        for line in self.limiter.drain() {
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
            let snapshot = self.endpoints.current();
            match snapshot.get(endpoint_id) {
                Some(e) => (
                    e.name.clone().unwrap_or_else(|| "(unnamed)".into()),
                    target::redact(&e.url),
                ),
                None => ("(not loaded)".into(), "…".into()),
            }
        };
        let code = or_none(detail.code);
        // A receiver's words: no control character reaches the log (L6).
        let reason = crate::redact::printable(&detail.reason);
        let says = kind.says().replace("<id>", &endpoint_id.to_string());
        if kind == Kind::Resumed {
            tracing::info!(endpoint_id, endpoint = %name, url = %url, reason = %reason, count, "{says}");
        } else {
            tracing::warn!(endpoint_id, endpoint = %name, url = %url, code = %code, reason = %reason,
                count, "{says}");
        }
    }
}

pub(crate) use crate::db::ops::{Setup, SetupEndpoint};

/// One line per real misconfiguration, said at `warn` when `run` starts.
/// Pure. URLs are redacted; no secret is ever part of a line.
pub(crate) fn misconfigurations(s: &Setup) -> Vec<String> {
    let mut out = Vec::new();
    if s.inbound && !s.inbound_secret && (s.routes == 0 || s.routes_without_secret > 0) {
        let refused = if s.routes_without_secret == s.routes {
            "every callback will be refused (401)".to_owned()
        } else {
            format!(
                "callbacks to the {} of {} routes without their own secret will be refused (401)",
                s.routes_without_secret, s.routes
            )
        };
        out.push(format!(
            "no inbound secret configured: {refused}; set PGWEBHOOKS_INBOUND_SECRET (at least 16 printable \
             characters, e.g. `PGWEBHOOKS_INBOUND_SECRET=$(openssl rand -hex 32)`) or give routes their own \
             (webhooks.inbound_route_set)"
        ));
    }
    if s.endpoints.is_empty() {
        out.push(
            "no endpoints: events are recorded but nothing is delivered; add one with \
             `pgwebhooks endpoint add --url https://… --events '*'` (or set WEBHOOK_URL)"
                .into(),
        );
    }
    let label = |e: &SetupEndpoint| {
        format!(
            "endpoint {} ({}, {})",
            e.id,
            e.name.as_deref().unwrap_or("unnamed"),
            target::redact(&e.url)
        )
    };
    for e in s.endpoints.iter().filter(|e| !e.enabled) {
        out.push(format!(
            "{} is disabled: {}; its deliveries wait (`pgwebhooks endpoint enable {}` resumes it)",
            label(e),
            crate::redact::printable(e.disabled_reason.as_deref().unwrap_or("no reason recorded")),
            e.id
        ));
    }
    for e in &s.endpoints {
        if let Err(error) = target::check(&e.url, s.allow_private_targets) {
            out.push(format!(
                "{}: every delivery will be refused before sending: {error}",
                label(e)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::AttemptInfo;
    use crate::job::Source;

    fn outcome(status: Status, code: Option<i32>, sent: bool, refused: bool) -> Outcome {
        Outcome {
            source: Source::Batch(1),
            event_id: uuid::Uuid::nil(),
            endpoint_id: 1,
            status,
            attempts: 3,
            next_attempt_at: None,
            code,
            error: refused.then(|| crate::job::AttemptError::Refused("refused: loopback".into())),
            attempt: sent.then(|| AttemptInfo {
                started_at: std::time::SystemTime::now(),
                duration_ms: 1.0,
                excerpt: Some("  Service\n unavailable ".into()),
            }),
            ordered: false,
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
        assert_eq!(
            k(Pending, Some(410), true, false),
            vec![],
            "Make's 410: the pause says it"
        );
    }

    #[test]
    fn only_real_misconfigurations_are_said() {
        let ep = |id, url: &str, enabled, reason: Option<&str>| SetupEndpoint {
            id,
            name: Some(format!("ep{id}")),
            url: url.into(),
            enabled,
            disabled_reason: reason.map(str::to_owned),
        };
        let fine = Setup {
            inbound: true,
            inbound_secret: true,
            endpoints: vec![ep(1, "https://example.com/hook?token=abc", true, None)],
            ..Default::default()
        };
        assert_eq!(misconfigurations(&fine), Vec::<String>::new());
        // Every route has its own secret: nothing refused.
        let routes_own = Setup {
            inbound_secret: false,
            routes: 2,
            routes_without_secret: 0,
            ..fine
        };
        assert_eq!(misconfigurations(&routes_own), Vec::<String>::new());

        let bare = Setup {
            inbound: true,
            ..Default::default()
        };
        let lines = misconfigurations(&bare);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("every callback will be refused")
                && lines[0].contains("PGWEBHOOKS_INBOUND_SECRET")
        );
        assert!(lines[1].contains("no endpoints") && lines[1].contains("pgwebhooks endpoint add"));

        let some = Setup {
            inbound: true,
            routes: 3,
            routes_without_secret: 1,
            endpoints: vec![
                ep(
                    1,
                    "https://hook.eu1.make.com/secret-token",
                    false,
                    Some("Make.com answered 410 Gone"),
                ),
                ep(2, "http://10.0.0.1/hook/secret-path", true, None),
                ep(3, "http://169.254.169.254/latest", true, None),
            ],
            ..Default::default()
        };
        let lines = misconfigurations(&some);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].contains("the 1 of 3 routes"), "{}", lines[0]);
        assert!(lines[1]
            .contains("endpoint 1 (ep1, https://hook.eu1.make.com/…) is disabled: Make.com answered 410"));
        assert!(
            lines[2].contains("endpoint 2 (ep2, http://10.0.0.1/…)") && lines[2].contains("private address")
        );
        assert!(lines[3].contains("metadata"), "{}", lines[3]);
        assert!(lines
            .iter()
            .all(|l| !l.contains("secret-token") && !l.contains("secret-path")));
        let allowed = Setup {
            allow_private_targets: true,
            ..some
        };
        assert_eq!(
            misconfigurations(&allowed).len(),
            3,
            "the private one is allowed now"
        );
    }

    #[test]
    fn urls_in_texts_are_redacted() {
        assert_eq!(
            redact_urls("redirect to https://hook.eu1.make.com/tok3n?x=1 not followed"),
            "redirect to https://hook.eu1.make.com/… not followed"
        );
        assert_eq!(redact_urls("a (http://u:p@h:80/x), b"), "a (http://h:80/…), b");
        assert_eq!(redact_urls("no url: here"), "no url: here");
        assert_eq!(redact_urls("://odd"), "://odd", "no scheme, no URL");
    }

    #[test]
    fn reasons_name_the_status_and_a_short_excerpt() {
        let o = outcome(Status::Pending, Some(503), true, false);
        assert_eq!(reason_of(&o), "HTTP 503: Service unavailable");
        let mut o = outcome(Status::Pending, None, false, false);
        o.error = Some(crate::job::AttemptError::TimedOut(
            std::time::Duration::from_secs(2),
        ));
        assert_eq!(reason_of(&o), "timed out after 2s");
        let mut o = outcome(Status::Pending, Some(500), true, false);
        o.attempt.as_mut().unwrap().excerpt = Some("x".repeat(500));
        assert_eq!(reason_of(&o).chars().count(), "HTTP 500: ".len() + 121);
        assert_eq!(or_none(Some(200)), "200");
        assert_eq!(or_none(None::<u16>), "none");
    }
}
