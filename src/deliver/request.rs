//! A job's request: the body (the standard envelope, or the endpoint's
//! template filled in) and the endpoint's extra headers, masked for it.
//! The `webhooks.test` ping is always the standard envelope.

use std::sync::Arc;

use serde_json::Value;

use crate::body;
use crate::endpoints::Endpoint;
use crate::job::Event;
use crate::template::Values;

impl Event {
    /// The request body for `endpoint`: the standard envelope (built once
    /// per event and shared by every endpoint that masks nothing), or the
    /// endpoint's template filled in.
    pub fn body_for(&self, endpoint: &Endpoint) -> Arc<str> {
        if let Some(t) = self.template(endpoint) {
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
        match (self.template(endpoint), constant) {
            (None, Some(c)) => (self.body_for(endpoint), c),
            (None, None) => (self.body_for(endpoint), self.with_values(endpoint, headers)),
            (Some(t), c) => self.with_values(endpoint, |v| {
                (t.render(v).into(), c.unwrap_or_else(|| headers(v)))
            }),
        }
    }

    /// The endpoint's body template, unless this is the ping.
    fn template<'a>(&self, endpoint: &'a Endpoint) -> Option<&'a crate::template::Template> {
        endpoint.body_template.as_ref().filter(|_| !self.is_ping())
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
