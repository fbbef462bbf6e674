//! Prometheus metrics, rendered at `GET /metrics`.
//!
//! - `pgwebhooks_deliveries_total{endpoint,outcome}` — outcomes recorded
//!   (`delivered`, `retry`, `failed`, `dead`, `deferred`: routed to the retry
//!   path without an attempt)
//! - `pgwebhooks_attempt_duration_seconds{endpoint}` — histogram
//! - `pgwebhooks_backlog`, `pgwebhooks_oldest_pending_seconds` — from
//!   `webhooks.backlog`, refreshed every few seconds
//! - `pgwebhooks_notification_queue_usage` — `pg_notification_queue_usage()`
//! - `pgwebhooks_listener_connected`, `pgwebhooks_listener_reconnects_total`
//! - `pgwebhooks_breaker_trips_total{endpoint}`
//! - `pgwebhooks_filtered_total{endpoint}` — events the endpoint's content
//!   filter rejected (no delivery)

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::job::{Outcome, Status};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once; later calls return it.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("pgwebhooks_attempt_duration_seconds".into()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            )
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program); ours still renders.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The Prometheus text exposition.
pub fn render() -> String {
    install().render()
}

/// Counts one recorded outcome.
pub fn outcome(o: &Outcome) {
    let endpoint = o.endpoint_id.to_string();
    let label = match (o.status, o.attempt.is_some()) {
        (Status::Delivered, _) => "delivered",
        (Status::Pending, true) => "retry",
        (Status::Pending, false) => "deferred",
        (Status::Failed, _) => "failed",
        (Status::Dead, _) => "dead",
    };
    metrics::counter!("pgwebhooks_deliveries_total", "endpoint" => endpoint.clone(), "outcome" => label)
        .increment(1);
    if let Some(a) = &o.attempt {
        metrics::histogram!("pgwebhooks_attempt_duration_seconds", "endpoint" => endpoint)
            .record(a.duration_ms / 1000.0);
    }
}

/// Sets the gauges read from the database.
pub fn backlog(waiting: i64, oldest_seconds: f64, queue_usage: f64) {
    metrics::gauge!("pgwebhooks_backlog").set(waiting as f64);
    metrics::gauge!("pgwebhooks_oldest_pending_seconds").set(oldest_seconds);
    metrics::gauge!("pgwebhooks_notification_queue_usage").set(queue_usage);
}

pub fn listener(connected: bool, reconnects: u64) {
    metrics::gauge!("pgwebhooks_listener_connected").set(if connected { 1.0 } else { 0.0 });
    metrics::counter!("pgwebhooks_listener_reconnects_total").absolute(reconnects);
}

pub fn breaker_trip(endpoint_id: i64) {
    metrics::counter!("pgwebhooks_breaker_trips_total", "endpoint" => endpoint_id.to_string()).increment(1);
}

/// One event an endpoint's content filter rejected.
pub fn filtered(endpoint_id: i64) {
    metrics::counter!("pgwebhooks_filtered_total", "endpoint" => endpoint_id.to_string()).increment(1);
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_render() {
        super::install();
        super::breaker_trip(7);
        let text = super::render();
        assert!(
            text.contains("pgwebhooks_breaker_trips_total{endpoint=\"7\"} 1"),
            "{text}"
        );
    }
}
