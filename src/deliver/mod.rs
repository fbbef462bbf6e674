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
use crate::job::{AttemptError, AttemptInfo, Outcome, Status};
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
    /// Bytes of the response body kept on the attempt row (no more is read;
    /// at most `job::TEXT_BOUND` is stored).
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
            excerpt_bytes: crate::job::TEXT_BOUND,
            allow_private_targets: false,
        }
    }
}

/// Why a job was released unsent: past its fence (`job::send_by`).
pub const PAST_FENCE: &str =
    "not sent: its lease may have run out (the replica was paused or cut off); released";

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
    /// A job past its fence (`job::send_by`: a replica that was frozen or cut
    /// off since it claimed it) is released, not sent.
    pub async fn attempt(&self, job: &Job) -> (Outcome, SideEffect) {
        if tokio::time::Instant::now() >= job.send_by {
            tracing::debug!(event_id = %job.event.id, endpoint_id = job.endpoint.id, "past the lease's fence: released");
            return (Outcome::released(job, Some(PAST_FENCE)), SideEffect::None);
        }
        let endpoint = &job.endpoint;
        let (body, user_headers) = job.event.request_for(endpoint);
        if endpoint.make && body.len() > MAKE_MAX_BODY {
            let outcome = Outcome {
                source: job.source,
                event_id: job.event.id,
                endpoint_id: endpoint.id,
                status: Status::Failed,
                attempts: job.attempt - 1,
                next_attempt_at: None,
                code: None,
                error: Some(AttemptError::TooLarge { bytes: body.len() }),
                attempt: None,
                ordered: endpoint.ordered,
            };
            return (outcome, SideEffect::None);
        }
        let timeout = self.timeout_for(endpoint);
        let started_at = SystemTime::now();
        let sent = self
            .http
            .send(
                &job.event.id.to_string(),
                endpoint,
                body.as_bytes(),
                &user_headers,
                started_at,
                timeout,
                self.config.excerpt_bytes,
            )
            .await;
        let schedule = endpoint
            .retry_schedule
            .as_deref()
            .unwrap_or(&self.config.retry_schedule);
        decide(
            job,
            &sent,
            started_at,
            schedule,
            SystemTime::now(),
            fastrand::f64(),
        )
    }
}

/// What an attempt's answer means for its delivery: the new state, when to
/// try again, and what else to do (pause a Make endpoint). Pure: `now` and
/// `jitter` (uniform in [0, 1)) are given.
pub fn decide(
    job: &Job,
    sent: &http::Sent,
    started_at: SystemTime,
    schedule: &[Duration],
    now: SystemTime,
    jitter: f64,
) -> (Outcome, SideEffect) {
    let mut outcome = Outcome {
        source: job.source,
        event_id: job.event.id,
        endpoint_id: job.endpoint.id,
        status: Status::Failed,
        attempts: job.attempt,
        next_attempt_at: None,
        code: sent.status.map(i32::from),
        error: sent.error.clone(),
        attempt: Some(AttemptInfo {
            started_at,
            duration_ms: sent.duration.as_secs_f64() * 1000.0,
            excerpt: Some(sent.excerpt.clone()).filter(|e| !e.is_empty()),
        }),
        ordered: job.endpoint.ordered,
    };
    // A refused target stays refused: failed at once, retryable by hand.
    let class = if sent.refused() {
        Class::Fatal
    } else {
        retry::classify(sent.status, &sent.excerpt, job.endpoint.make)
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
                outcome.error = sent
                    .status
                    .map(|code| AttemptError::Status { code, retried: false });
            }
        }
        Class::Gone => {
            outcome.status = Status::Pending;
            outcome.next_attempt_at = Some(now);
            let reason = make_gone_reason(sent.status, &sent.excerpt);
            outcome.error = Some(AttemptError::Gone(reason.clone()));
            effect = SideEffect::PauseEndpoint(reason);
        }
        Class::Retryable => {
            match retry::next_delay(schedule, used as u32, sent.retry_after, jitter) {
                Some(delay) => {
                    outcome.status = Status::Pending;
                    outcome.next_attempt_at = Some(now + delay);
                }
                None => outcome.status = Status::Dead,
            }
            if outcome.error.is_none() {
                outcome.error = sent
                    .status
                    .map(|code| AttemptError::Status { code, retried: true });
            }
        }
    }
    (outcome, effect)
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
    use crate::job::{Event, Source};
    use std::sync::Arc;

    fn job(make: bool, source: Source) -> Job {
        let mut endpoint = crate::endpoints::Endpoint::test(7, "https://hook.eu1.make.com/x");
        endpoint.make = make;
        Job {
            source,
            event: Arc::new(Event::new(
                uuid::Uuid::nil(),
                "order.created".into(),
                None,
                None,
                SystemTime::UNIX_EPOCH,
                "{}".into(),
                None,
            )),
            endpoint: Arc::new(endpoint),
            attempt: 2,
            send_by: tokio::time::Instant::now() + Duration::from_secs(3600),
        }
    }

    fn answer(status: Option<u16>, excerpt: &str) -> http::Sent {
        http::Sent {
            status,
            error: status
                .is_none()
                .then_some(AttemptError::TimedOut(Duration::from_secs(2))),
            excerpt: excerpt.into(),
            retry_after: None,
            duration: Duration::from_millis(12),
        }
    }

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    fn at(secs: u64) -> Option<SystemTime> {
        Some(NOW + Duration::from_secs(secs))
    }

    #[test]
    fn decide_maps_each_answer_to_the_deliverys_next_state() {
        let schedule = [Duration::from_secs(10), Duration::from_secs(60)];
        let first = job(false, Source::Batch(1));
        let decide = |j: &Job, s: &http::Sent| decide(j, s, NOW, &schedule, NOW, 0.5);

        let (o, e) = decide(&first, &answer(Some(204), ""));
        assert_eq!(
            (o.status, o.code, o.next_attempt_at, e),
            (Status::Delivered, Some(204), None, SideEffect::None)
        );
        assert_eq!(o.attempt.unwrap().duration_ms, 12.0);

        let (o, _) = decide(&first, &answer(Some(422), "bad field"));
        assert_eq!(
            (o.status, o.error.as_ref().map(ToString::to_string).as_deref()),
            (Status::Failed, Some("HTTP 422: not retried"))
        );

        // The first retryable answer waits the schedule's first step (jitter
        // 0.5 is the step itself), a timeout too.
        let (o, _) = decide(&first, &answer(Some(503), ""));
        assert_eq!(
            (o.status, o.next_attempt_at, o.error),
            (
                Status::Pending,
                at(10),
                Some(AttemptError::Status {
                    code: 503,
                    retried: true
                })
            )
        );
        let (o, _) = decide(&first, &answer(None, ""));
        assert_eq!(
            (o.status, o.error.as_ref().map(ToString::to_string).as_deref()),
            (Status::Pending, Some("timed out after 2s"))
        );

        // A retry counts the attempts of its budget: the second waits the
        // second step, the third has none left.
        let (o, _) = decide(
            &job(
                false,
                Source::Retry {
                    delivery_id: 3,
                    used: 1,
                },
            ),
            &answer(Some(500), ""),
        );
        assert_eq!((o.status, o.next_attempt_at), (Status::Pending, at(60)));
        let (o, _) = decide(
            &job(
                false,
                Source::Retry {
                    delivery_id: 3,
                    used: 2,
                },
            ),
            &answer(Some(500), ""),
        );
        assert_eq!((o.status, o.next_attempt_at), (Status::Dead, None));

        // Retry-After is a floor.
        let mut later = answer(Some(429), "");
        later.retry_after = Some(Duration::from_secs(120));
        assert_eq!(decide(&first, &later).0.next_attempt_at, at(120));

        // A refused target fails at once, whatever it would have answered.
        let mut refused = answer(None, "");
        refused.error = Some(AttemptError::Refused("refused: loopback".into()));
        let (o, _) = decide(&first, &refused);
        assert_eq!((o.status, o.refused()), (Status::Failed, true));
    }

    #[test]
    fn make_gone_pauses_the_endpoint_and_keeps_the_delivery_waiting() {
        let make = job(true, Source::Batch(1));
        let (o, e) = decide(
            &make,
            &answer(Some(410), "There is no scenario listening"),
            NOW,
            &[],
            NOW,
            0.0,
        );
        assert_eq!((o.status, o.next_attempt_at), (Status::Pending, Some(NOW)));
        let SideEffect::PauseEndpoint(reason) = e else {
            panic!("{e:?}")
        };
        assert!(
            reason.contains("410 \"There is no scenario listening\""),
            "{reason}"
        );
        // The same answer from a receiver that is not Make's is just a failure.
        let (o, e) = decide(
            &job(false, Source::Batch(1)),
            &answer(Some(410), ""),
            NOW,
            &[],
            NOW,
            0.0,
        );
        assert_eq!((o.status, e), (Status::Failed, SideEffect::None));
        // Make's "Queue is full" is retried.
        let (o, _) = decide(
            &make,
            &answer(Some(400), "Queue is full."),
            NOW,
            &[Duration::from_secs(5)],
            NOW,
            0.5,
        );
        assert_eq!((o.status, o.next_attempt_at), (Status::Pending, at(5)));
    }

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
