//! An outbox event as the sidecar carries it, and a delivery job.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use uuid::Uuid;

use serde_json::Value;

use crate::deliver::body;
use crate::deliver::template::Values;
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
    /// `payload` and `previous` parsed, for templates (once per event).
    parsed: OnceLock<(Value, Option<Value>)>,
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

    /// The request body for `endpoint`: the standard envelope (built once
    /// per event and shared by every endpoint that masks nothing), or the
    /// endpoint's template filled in.
    pub fn body_for(&self, endpoint: &Endpoint) -> Arc<str> {
        if let Some(t) = &endpoint.body_template {
            return self.with_values(endpoint, |v| t.render(v)).into();
        }
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

    /// The body and the endpoint's extra headers (placeholders filled in,
    /// masked data) of one request: the envelope's values are built once
    /// for both when a template or a header needs them.
    pub fn request_for(&self, endpoint: &Endpoint) -> (Arc<str>, Vec<(String, String)>) {
        let constant: Option<Vec<(String, String)>> = endpoint
            .headers
            .iter()
            .map(|(k, t)| t.constant().map(|v| (k.clone(), v)))
            .collect();
        let headers = |v: &Values<'_>| {
            endpoint
                .headers
                .iter()
                .map(|(k, t)| (k.clone(), t.render(v)))
                .collect()
        };
        match (&endpoint.body_template, constant) {
            (None, Some(c)) => (self.body_for(endpoint), c),
            (None, None) => (self.body_for(endpoint), self.with_values(endpoint, headers)),
            (Some(t), c) => self.with_values(endpoint, |v| {
                (t.render(v).into(), c.unwrap_or_else(|| headers(v)))
            }),
        }
    }

    fn parsed(&self) -> &(Value, Option<Value>) {
        self.parsed.get_or_init(|| {
            let parse = |s: &str| serde_json::from_str(s).unwrap_or(Value::Null);
            (parse(&self.payload), self.previous.as_deref().map(parse))
        })
    }

    /// The envelope's values for templates, masked for `endpoint`.
    fn with_values<R>(&self, endpoint: &Endpoint, f: impl FnOnce(&Values<'_>) -> R) -> R {
        let id = self.id.to_string();
        let timestamp = body::rfc3339(self.occurred_at);
        let (data, previous) = self.parsed();
        let masked;
        let (data, previous) = if endpoint.masked_fields.is_empty() {
            (data, previous.as_ref())
        } else {
            let (mut d, mut p) = (data.clone(), previous.clone());
            body::mask_in(&mut d, &endpoint.masked_fields);
            if let Some(p) = p.as_mut() {
                body::mask_in(p, &endpoint.masked_fields);
            }
            masked = (d, p);
            (&masked.0, masked.1.as_ref())
        };
        f(&Values {
            id: &id,
            event_type: &self.event_type,
            timestamp: &timestamp,
            tenant_id: self.tenant_id.as_deref(),
            data,
            previous,
        })
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
