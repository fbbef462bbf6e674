//! A delivery's request as it is sent: the body rebuilt from the stored
//! event by the same code the sidecar sends with (`Event::request_for`,
//! so templates and masking apply), and the headers with every secret and
//! signature masked.

use std::time::SystemTime;

use serde::Serialize;

use crate::db::admin::EventRow;
use crate::endpoints::Snapshot;
use crate::job::Event;

pub(super) const MASK: &str = "••••••••";

#[derive(Debug, Serialize)]
pub(super) struct AsSent {
    pub body: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Why the body could not be rebuilt.
    pub note: Option<String>,
}

/// Header names whose values are credentials (`x-make-apikey`,
/// `authorization`, `x-api-key`, …; not `idempotency-key`).
fn sensitive(name: &str) -> bool {
    [
        "auth",
        "secret",
        "token",
        "signature",
        "password",
        "cookie",
        "session",
        "apikey",
        "api-key",
        "private",
    ]
    .iter()
    .any(|w| name.contains(w))
        || (name.ends_with("key") && !name.contains("idempotency"))
}

pub(super) fn as_sent(snapshot: &Snapshot, endpoint_id: i64, e: &EventRow) -> AsSent {
    let Some(ep) = snapshot.get(endpoint_id) else {
        return AsSent {
            body: None,
            headers: Vec::new(),
            note: Some("the sidecar has not loaded this endpoint (yet); reload the page in a moment".into()),
        };
    };
    let event = Event::new(
        e.event_id,
        e.event_type.clone(),
        e.tenant_id.clone(),
        e.origin.clone(),
        e.occurred,
        e.payload_text.clone(),
        e.previous_text.clone(),
    );
    let (body, user) = event.request_for(ep);
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        (
            "user-agent".to_owned(),
            crate::deliver::http::USER_AGENT_VALUE.to_owned(),
        ),
        ("webhook-id".to_owned(), e.event_id.to_string()),
        (
            "webhook-timestamp".to_owned(),
            "(the attempt's time, in seconds)".to_owned(),
        ),
    ];
    let keys = ep.active_keys(SystemTime::now()).len();
    if ep.styles.standard && keys > 0 {
        headers.push((
            "webhook-signature".into(),
            vec![format!("v1,{MASK}"); keys].join(" "),
        ));
    }
    if keys > 0 && ep.styles.sha256_hex {
        headers.push((ep.signature_header.clone(), format!("sha256={MASK}")));
    }
    if keys > 0 && ep.styles.secret_header {
        headers.push((ep.secret_header.clone(), MASK.into()));
    }
    for (name, value) in user {
        if ep.protects(&name) {
            continue;
        }
        let shown = if sensitive(&name) { MASK.to_owned() } else { value };
        match headers.iter_mut().find(|(n, _)| *n == name) {
            Some(h) => h.1 = shown,
            None => headers.push((name, shown)),
        }
    }
    AsSent {
        body: Some(body.to_string()),
        headers,
        note: None,
    }
}
