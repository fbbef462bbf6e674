//! An endpoint as the API creates or changes it: a JSON object whose
//! members are the flags of `pgwebhooks endpoint add|update` (absent: as
//! it was, or add's default), checked as the CLI checks them — URL form
//! and target, patterns, signature styles, header names against the
//! signature headers, templates compiled as the sidecar compiles them,
//! the timeout's bound; the filter is checked by Postgres
//! (`db::endpoints::check_filter`).

use serde::Deserialize;

use crate::db::endpoints::{NewEndpoint, Shaping};
use crate::deliver::target;
use crate::deliver::MAX_ENDPOINT_TIMEOUT;
use crate::endpoints::split_patterns;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Spec {
    pub url: Option<String>,
    pub name: Option<String>,
    pub events: Option<Vec<String>>,
    pub tenant: Option<String>,
    pub make: Option<bool>,
    pub headers: Option<serde_json::Map<String, serde_json::Value>>,
    pub ignore_origins: Option<Vec<String>>,
    pub signature: Option<Vec<String>>,
    pub signature_header: Option<String>,
    pub secret_header: Option<String>,
    pub body_template: Option<serde_json::Value>,
    pub filter: Option<String>,
    pub mask: Option<Vec<String>>,
    pub timeout_ms: Option<i64>,
    pub max_in_flight: Option<i32>,
    pub rate_limit: Option<i32>,
    pub ordered: Option<bool>,
    /// Replaces every signing secret (create: generated when absent).
    pub secret: Option<String>,
}

/// `Some("")` clears, `Some(x)` sets, `None` keeps.
fn clearable(given: &Option<String>, current: &mut Option<String>) {
    if let Some(v) = given {
        *current = Some(v.trim().to_owned()).filter(|v| !v.is_empty());
    }
}

fn positive(name: &str, v: Option<i32>) -> Result<Option<i32>, String> {
    match v {
        Some(n) if n < 1 => Err(format!("{name} must be at least 1")),
        v => Ok(v),
    }
}

/// Applies `s` to `e`; the message names the member that is wrong.
pub(super) fn apply(s: &Spec, e: &mut NewEndpoint) -> Result<(), String> {
    if let Some(url) = &s.url {
        target::parse(url).map_err(|err| format!("url: {err}"))?;
        e.url = url.clone();
    }
    if let Some(events) = &s.events {
        e.event_types = split_patterns(events);
        if e.event_types.is_empty() {
            return Err("events: at least one pattern (e.g. \"*\")".into());
        }
    }
    clearable(&s.tenant, &mut e.tenant_id);
    clearable(&s.name, &mut e.name);
    if let Some(m) = s.make {
        e.make = m;
    }
    if let Some(h) = &s.headers {
        let mut map = serde_json::Map::new();
        for (k, v) in h {
            let k = k.trim().to_ascii_lowercase();
            axum::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("headers: invalid name {k:?}"))?;
            if !v.is_string() {
                return Err(format!("headers: the value of {k:?} is not a string"));
            }
            map.insert(k, v.clone());
        }
        e.headers = map;
    }
    if let Some(o) = &s.ignore_origins {
        e.ignore_origins = split_patterns(o);
    }
    if let Some(styles) = &s.signature {
        let styles = split_patterns(styles);
        if let Some(bad) = styles
            .iter()
            .find(|x| !["standard", "sha256-hex", "secret-header"].contains(&x.as_str()))
        {
            return Err(format!(
                "signature: {bad:?}: use standard, sha256-hex or secret-header"
            ));
        }
        e.signature_styles = styles;
    }
    clearable(&s.signature_header, &mut e.signature_header);
    clearable(&s.secret_header, &mut e.secret_header);
    if let Some(t) = &s.body_template {
        e.body_template = Some(t.clone()).filter(|t| !t.is_null());
    }
    clearable(&s.filter, &mut e.filter);
    if let Some(m) = &s.mask {
        e.masked_fields = split_patterns(m);
    }
    if let Some(ms) = s.timeout_ms {
        if ms < 1 || ms as u128 > MAX_ENDPOINT_TIMEOUT.as_millis() {
            return Err(format!(
                "timeout_ms: between 1 and {}",
                MAX_ENDPOINT_TIMEOUT.as_millis()
            ));
        }
        e.timeout_ms = Some(ms as i32);
    }
    if s.max_in_flight.is_some() {
        e.max_in_flight = positive("max_in_flight", s.max_in_flight)?;
    }
    if s.rate_limit.is_some() {
        e.rate_limit = positive("rate_limit", s.rate_limit)?;
    }
    if let Some(o) = s.ordered {
        e.ordered = o;
    }
    if let Some(secret) = &s.secret {
        crate::sign::SigningKey::parse(secret).map_err(|err| format!("secret: {err}"))?;
        e.secret = secret.clone();
    }
    Shaping::compile(
        &serde_json::Value::Object(e.headers.clone()),
        e.body_template.as_ref(),
        e.signature_header.clone(),
        e.secret_header.clone(),
    )?
    .check_configured()?;
    Ok(())
}
