//! The demo's receiver: a local HTTP server standing in for Make.com. It
//! verifies every signature, answers 503 to the first attempt of every
//! fifth event (so retries show), and reports each arrival.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;

use crate::sign::{self, SigningKey};

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub(super) struct Arrival {
    pub webhook_id: String,
    pub event_type: String,
    pub verified: bool,
    /// Attempts seen for this webhook-id so far (this one included).
    pub attempt: u32,
    /// 503 for a scripted failure, else 200.
    pub answered: u16,
    /// Receipt time minus the event's timestamp.
    pub latency_ms: f64,
}

#[derive(Default)]
struct State {
    seen: HashMap<String, u32>,
    count: u64,
}

pub(super) struct DemoReceiver {
    pub url: String,
    pub arrivals: mpsc::UnboundedReceiver<Arrival>,
}

pub(super) async fn start(secret: &str) -> std::io::Result<DemoReceiver> {
    let key = SigningKey::parse(secret).map_err(|e| std::io::Error::other(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/make-webhook", listener.local_addr()?);
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Arc::new(Mutex::new(State::default()));
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let (tx, state, key) = (tx.clone(), state.clone(), key.clone());
        async move {
            let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            let verified = sign::verify(
                std::slice::from_ref(&key),
                h("webhook-id"),
                h("webhook-timestamp"),
                h("webhook-signature"),
                &body,
                now.as_secs() as i64,
                300,
            )
            .is_ok();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let occurred = json["timestamp"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok());
            let latency_ms = occurred
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            let id = h("webhook-id").unwrap_or_default().to_owned();
            let (attempt, fail) = {
                let mut s = state.lock().expect("receiver state");
                let n = s.seen.entry(id.clone()).or_insert(0);
                *n += 1;
                let attempt = *n;
                if attempt == 1 {
                    s.count += 1;
                }
                (attempt, attempt == 1 && s.count % 5 == 0)
            };
            let answered = if !verified {
                401
            } else if fail {
                503
            } else {
                200
            };
            let _ = tx.send(Arrival {
                webhook_id: id,
                event_type: json["type"].as_str().unwrap_or("?").to_owned(),
                verified,
                attempt,
                answered,
                latency_ms,
            });
            (StatusCode::from_u16(answered).unwrap_or(StatusCode::OK), "")
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(DemoReceiver { url, arrivals: rx })
}
