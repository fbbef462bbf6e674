//! What an attempt's result means, and when to try again. Pure functions.

use std::time::Duration;

/// How an attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx: delivered.
    Success,
    /// 408, 425, 429, 5xx, timeouts, connection errors (and Make's
    /// `400 Queue is full`): try again later.
    Retryable,
    /// Any other answer, or a refused target (`target`): retrying will
    /// not help.
    Fatal,
    /// Make.com's 403, 404 or 410: the webhook is gone, invalid or expired,
    /// or its scenario is paused; pause the endpoint rather than fail every
    /// event one by one.
    Gone,
}

/// Classifies an HTTP status (`None`: no answer — timeout or connection
/// error). `make` applies the Make.com rules.
pub fn classify(status: Option<u16>, excerpt: &str, make: bool) -> Class {
    match status {
        None => Class::Retryable,
        Some(200..=299) => Class::Success,
        Some(408 | 425 | 429) | Some(500..=599) => Class::Retryable,
        Some(403 | 404 | 410) if make => Class::Gone,
        Some(400) if make && excerpt.to_ascii_lowercase().contains("queue is full") => Class::Retryable,
        Some(_) => Class::Fatal,
    }
}

/// The delay before the next attempt, or `None` when the schedule is used
/// up (the delivery is dead). `used` counts attempts made in the current
/// budget, this one included; `jitter` is uniform in [0, 1). The delay is
/// the schedule's step ±20%, but never shorter than the receiver's
/// `Retry-After` (capped at a day).
pub fn next_delay(
    schedule: &[Duration],
    used: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    let step = *schedule.get(used.checked_sub(1)? as usize)?;
    let jittered = step.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0));
    let floor = retry_after.unwrap_or_default().min(Duration::from_secs(86_400));
    Some(jittered.max(floor))
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or_default())
}

/// Parses a schedule such as `5s,30s,2m,10m,1h`.
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, String> {
    let steps: Result<Vec<Duration>, String> = s
        .split(',')
        .map(|p| humantime::parse_duration(p.trim()).map_err(|e| format!("{:?}: {e}", p.trim())))
        .collect();
    let steps = steps?;
    if steps.is_empty() || steps.iter().any(|d| d.is_zero()) {
        return Err(
            "a retry schedule is a comma-separated list of positive durations, e.g. 5s,30s,2m".into(),
        );
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(Some(204), "", false), Class::Success);
        for s in [408, 425, 429, 500, 502, 503, 599] {
            assert_eq!(classify(Some(s), "", false), Class::Retryable, "{s}");
        }
        for s in [400, 401, 403, 404, 410, 422, 301] {
            assert_eq!(classify(Some(s), "", false), Class::Fatal, "{s}");
        }
        assert_eq!(classify(None, "", false), Class::Retryable);
        assert_eq!(classify(Some(410), "", true), Class::Gone);
        assert_eq!(classify(Some(403), "", true), Class::Gone);
        assert_eq!(classify(Some(404), "", true), Class::Gone);
        assert_eq!(classify(Some(403), "", false), Class::Fatal);
        assert_eq!(classify(Some(400), "Queue is full.", true), Class::Retryable);
        assert_eq!(classify(Some(400), "Queue is full.", false), Class::Fatal);
        assert_eq!(classify(Some(400), "Bad request", true), Class::Fatal);
    }

    #[test]
    fn schedule_jitter_retry_after_and_death() {
        let s = parse_schedule("5s, 30s,2m").unwrap();
        assert_eq!(next_delay(&s, 1, None, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(next_delay(&s, 2, None, 0.0), Some(Duration::from_secs(24)));
        assert_eq!(next_delay(&s, 2, None, 1.0), Some(Duration::from_secs(36)));
        assert_eq!(
            next_delay(&s, 1, Some(Duration::from_secs(90)), 0.5),
            Some(Duration::from_secs(90))
        );
        assert_eq!(next_delay(&s, 3, None, 0.5), Some(Duration::from_secs(120)));
        assert_eq!(next_delay(&s, 4, None, 0.5), None);
        assert!(parse_schedule("5s,,1m").is_err());
        assert!(parse_schedule("0s").is_err());
    }

    #[test]
    fn retry_after_forms() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
