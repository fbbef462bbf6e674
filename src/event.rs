//! An outbox event as the sidecar carries it, and a delivery job.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use uuid::Uuid;

use crate::deliver::body;
use crate::endpoints::Endpoint;

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
    body: OnceLock<Arc<str>>,
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
        }
    }

    /// The request body for `endpoint`: built once per event and shared by
    /// every endpoint that masks nothing.
    pub fn body_for(&self, endpoint: &Endpoint) -> Arc<str> {
        if endpoint.masked_fields.is_empty() {
            return self
                .body
                .get_or_init(|| self.build(&self.payload, self.previous.as_deref()).into())
                .clone();
        }
        let data = body::mask(&self.payload, &endpoint.masked_fields);
        let previous = self
            .previous
            .as_deref()
            .map(|p| body::mask(p, &endpoint.masked_fields));
        self.build(&data, previous.as_deref()).into()
    }

    fn build(&self, data: &str, previous: Option<&str>) -> String {
        body::envelope(
            &self.id.to_string(),
            &self.event_type,
            &body::rfc3339(self.occurred_at),
            self.tenant_id.as_deref(),
            data,
            previous,
        )
    }
}

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
}
