//! Delivering one job: sign, send, and decide what happens next.
//!
//! `retry` and `target` (which addresses may be sent to) are pure (signing
//! is [`crate::sign`]);
//! `http` does the I/O. [`Deliverer::attempt`] turns a job into an
//! [`Outcome`] and never touches the database.

pub mod http;
mod request;
pub mod retry;
pub mod target;

use std::time::{Duration, SystemTime};

use crate::endpoints::MAKE_MAX_BODY;
use crate::job::Job;
use crate::job::{AttemptInfo, Outcome, Status};
use retry::Class;

/// Settings every delivery shares; endpoints may override some.
#[derive(Debug, Clone)]
pub struct DeliverConfig {
    /// Delays between attempts; its length + 1 is the number of attempts.
    pub retry_schedule: Vec<Duration>,
    /// Per-attempt timeout (connect + send + response head).
    pub timeout: Duration,
    /// The longest an endpoint's own timeout may be: a fifth of the lease
    /// (set by the sidecar), so an attempt in flight is never taken over.
    pub max_timeout: Option<Duration>,
    /// Bytes of the response body kept on the attempt row (no more is read).
    pub excerpt_bytes: usize,
    /// Send to private, loopback and link-local addresses too
    /// (`PGWEBHOOKS_ALLOW_PRIVATE_TARGETS`); cloud metadata never.
    pub allow_private_targets: bool,
}

impl Default for DeliverConfig {
    fn default() -> Self {
        DeliverConfig {
            retry_schedule: retry::parse_schedule(DEFAULT_RETRY_SCHEDULE).expect("valid default"),
            timeout: Duration::from_secs(10),
            max_timeout: None,
            excerpt_bytes: 1024,
            allow_private_targets: false,
        }
    }
}

/// The default `PGWEBHOOKS_RETRY_SCHEDULE`: 8 attempts over about 10 hours.
pub const DEFAULT_RETRY_SCHEDULE: &str = "5s,30s,2m,10m,1h,3h,6h";

/// What an attempt led to, beyond the delivery's own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideEffect {
    None,
    /// Make.com said 410: pause the endpoint with this reason.
    PauseEndpoint(String),
}

/// The longest `endpoint add --timeout` (and the default lease's fifth is
/// 12 s: a longer one needs a longer PGWEBHOOKS_LEASE to take effect).
pub const MAX_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Deliverer {
    http: http::Http,
    config: DeliverConfig,
    /// Endpoints whose timeout was clamped, warned about once each.
    clamped: std::sync::Mutex<std::collections::HashSet<i64>>,
}

impl Deliverer {
    pub fn new(config: DeliverConfig) -> Deliverer {
        Deliverer {
            http: http::Http::new(config.allow_private_targets),
            config,
            clamped: Default::default(),
        }
    }

    /// The endpoint's timeout (or the default), at most `max_timeout`.
    pub fn timeout_for(&self, endpoint: &crate::endpoints::Endpoint) -> Duration {
        let wanted = endpoint.timeout.unwrap_or(self.config.timeout);
        match self.config.max_timeout {
            Some(max) if wanted > max => {
                if self
                    .clamped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(endpoint.id)
                {
                    tracing::warn!(endpoint_id = endpoint.id, timeout = ?wanted, used = ?max,
                        "the endpoint's timeout is longer than a fifth of PGWEBHOOKS_LEASE; using {max:?} \
                         (an attempt still in flight would be taken over and sent twice)");
                }
                max
            }
            _ => wanted,
        }
    }

    /// Makes one attempt of `job` and says what state its delivery is in now.
    pub async fn attempt(&self, job: &Job) -> (Outcome, SideEffect) {
        let endpoint = &job.endpoint;
        let (body, user_headers) = job.event.request_for(endpoint);
        let mut outcome = Outcome {
            source: job.source,
            event_id: job.event.id,
            endpoint_id: endpoint.id,
            status: Status::Failed,
            attempts: job.attempt,
            next_attempt_at: None,
            code: None,
            error: None,
            attempt: None,
            ordered: endpoint.ordered,
            refused: false,
        };
        if endpoint.make && body.len() > MAKE_MAX_BODY {
            outcome.attempts = job.attempt - 1;
            outcome.error = Some(format!(
                "body is {} bytes, over Make.com's 5 MB limit; not sent",
                body.len()
            ));
            return (outcome, SideEffect::None);
        }
        let timeout = self.timeout_for(endpoint);
        let now = SystemTime::now();
        let sent = self
            .http
            .send(
                &job.event.id.to_string(),
                endpoint,
                body.as_bytes(),
                &user_headers,
                now,
                timeout,
                self.config.excerpt_bytes,
            )
            .await;
        outcome.code = sent.status.map(i32::from);
        outcome.refused = sent.refused;
        outcome.error = sent.error.clone();
        outcome.attempt = Some(AttemptInfo {
            started_at: now,
            duration_ms: sent.duration.as_secs_f64() * 1000.0,
            excerpt: Some(sent.excerpt.clone()).filter(|e| !e.is_empty()),
        });
        // A refused target stays refused: failed at once, retryable by hand.
        let class = if sent.refused {
            Class::Fatal
        } else {
            retry::classify(sent.status, &sent.excerpt, endpoint.make)
        };
        let used = match job.source {
            crate::job::Source::Batch(_) => 1,
            crate::job::Source::Retry { used, .. } => used + 1,
        };
        let mut effect = SideEffect::None;
        match class {
            Class::Success => outcome.status = Status::Delivered,
            Class::Fatal => {
                outcome.status = Status::Failed;
                if outcome.error.is_none() {
                    outcome.error = sent.status.map(|s| format!("HTTP {s}: not retried"));
                }
            }
            Class::Gone => {
                outcome.status = Status::Pending;
                outcome.next_attempt_at = Some(SystemTime::now());
                let reason = make_gone_reason(sent.status, &sent.excerpt);
                outcome.error = Some(reason.clone());
                effect = SideEffect::PauseEndpoint(reason);
            }
            Class::Retryable => {
                let schedule = endpoint
                    .retry_schedule
                    .as_deref()
                    .unwrap_or(&self.config.retry_schedule);
                match retry::next_delay(schedule, used as u32, sent.retry_after, fastrand::f64()) {
                    Some(delay) => {
                        outcome.status = Status::Pending;
                        outcome.next_attempt_at = Some(SystemTime::now() + delay);
                    }
                    None => outcome.status = Status::Dead,
                }
                if outcome.error.is_none() {
                    outcome.error = sent.status.map(|s| format!("HTTP {s}"));
                }
            }
        }
        (outcome, effect)
    }
}

/// Why a Make.com endpoint was paused: its answer, and what it means.
fn make_gone_reason(status: Option<u16>, excerpt: &str) -> String {
    let meaning = match status {
        Some(410) => "no scenario is listening or the webhook was removed",
        Some(403) => "the webhook is invalid or expired, or its scenario is paused",
        _ => "the webhook does not exist (any more)",
    };
    let answer = Some(excerpt.trim())
        .filter(|e| !e.is_empty())
        .map(|e| format!(" \"{}\"", e.chars().take(200).collect::<String>()))
        .unwrap_or_default();
    format!(
        "Make.com answered {}{answer}: {meaning}; resume the endpoint once it is back",
        status.map_or("?".to_owned(), |s| s.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_timeout_is_clamped_to_a_fifth_of_the_lease() {
        let mut endpoint = crate::endpoints::Endpoint::test(1, "http://127.0.0.1:9/");
        let d = Deliverer::new(DeliverConfig {
            max_timeout: Some(Duration::from_secs(12)),
            ..Default::default()
        });
        assert_eq!(d.timeout_for(&endpoint), Duration::from_secs(10), "the default");
        endpoint.timeout = Some(Duration::from_secs(3));
        assert_eq!(d.timeout_for(&endpoint), Duration::from_secs(3));
        endpoint.timeout = Some(Duration::from_secs(24 * 86400));
        assert_eq!(d.timeout_for(&endpoint), Duration::from_secs(12));
        assert_eq!(d.timeout_for(&endpoint), Duration::from_secs(12));
        assert_eq!(d.clamped.lock().unwrap().len(), 1, "warned once");
        let unbounded = Deliverer::new(DeliverConfig::default());
        assert_eq!(unbounded.timeout_for(&endpoint), Duration::from_secs(24 * 86400));
    }
}
