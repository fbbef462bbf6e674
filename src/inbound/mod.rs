//! The inbound HTTP server: Make.com (or anyone holding the secret) posts
//! callbacks; each is authenticated before its body is parsed, recorded
//! once and applied by its route's stored function (`webhooks.inbound_apply`,
//! one transaction). Also `/healthz`, `/readyz`, `/metrics` and the OpenAPI
//! document. Connections and their limits live in `server.rs`.

pub mod auth;
mod server;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::Pool;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::Secret;
use crate::db;

pub use server::{serve, MAX_HEAD};

/// The routes of the learning platform, served under `/api/webhooks/make/`.
pub const MAKE_ROUTES: &[&str] = &[
    "payments",
    "messages",
    "appointments",
    "errors",
    "support-tickets",
    "cohort-enrollments",
    "cohort-messages",
];

/// The OpenAPI document of this API (also in the repository).
pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// The shared secret for routes without their own.
    pub secret: Option<Secret>,
    /// Largest accepted body.
    pub max_body: usize,
    /// How far a signed callback's timestamp may be from now.
    pub tolerance: Duration,
    /// How long a client may take to send a request's head, and then its
    /// body (408); idle keep-alive connections are closed after it too.
    pub read_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long a callback may take to apply before we answer 503.
    pub apply_timeout: Duration,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            secret: None,
            max_body: 1024 * 1024,
            tolerance: Duration::from_secs(300),
            read_timeout: Duration::from_secs(10),
            max_connections: 256,
            apply_timeout: Duration::from_secs(30),
        }
    }
}

struct AppState {
    pool: Pool,
    config: InboundConfig,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// The router; `ready` says whether the sidecar's own stages are healthy.
pub fn router(pool: Pool, config: InboundConfig, ready: Arc<dyn Fn() -> bool + Send + Sync>) -> Router {
    let limit = config.max_body;
    let state = Arc::new(AppState { pool, config, ready });
    Router::new()
        .route("/api/webhooks/make/{route}", post(callback))
        .route("/inbound/{route}", post(callback))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .route(
            "/metrics",
            get(|| async {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    crate::telemetry::render(),
                )
            }),
        )
        .fallback(|| async { failure(StatusCode::NOT_FOUND, "not found") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn now_rfc3339() -> String {
    crate::deliver::body::rfc3339(SystemTime::now())
}

fn answer(status: StatusCode, mut body: Value) -> Response {
    if let Some(obj) = body.as_object_mut() {
        obj.entry("timestamp")
            .or_insert_with(|| Value::String(now_rfc3339()));
    }
    (status, Json(body)).into_response()
}

fn failure(status: StatusCode, error: &str) -> Response {
    answer(status, json!({"success": false, "error": error}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let db_ok = match state.pool.get().await {
        Ok(client) => db::migrate::is_current(&client).await.unwrap_or(false),
        Err(_) => false,
    };
    let stages_ok = (state.ready)();
    let status = if db_ok && stages_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"database": db_ok, "sidecar": stages_ok}))).into_response()
}

/// A route's settings, or `None` when it does not exist.
async fn route_settings(
    pool: &Pool,
    route: &str,
) -> Result<Option<(Option<String>, Vec<String>)>, db::DbError> {
    let client = pool.get().await?;
    let st = client
        .prepare_cached(
            "SELECT secret, idempotency_fields FROM webhooks.inbound_routes WHERE route = $1 AND enabled",
        )
        .await?;
    Ok(client
        .query_opt(&st, &[&route])
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// Whether `route` could name a route at all (`inbound_routes` holds
/// `^[a-z0-9][a-z0-9_-]*$`); anything else, such as a name that is not
/// UTF-8 or holds a NUL, is unknown without asking Postgres.
fn plausible_route(route: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    route.bytes().next().is_some_and(allowed) && route.bytes().all(|b| allowed(b) || b == b'_' || b == b'-')
}

/// Keys longer than this are kept as their SHA-256 (a unique index entry
/// has a size limit, and a key need not be readable to be unique).
pub const MAX_KEY: usize = 200;

/// The callback's identity: its `webhook-id` / `Idempotency-Key`, else the
/// route's declared payload fields, else the body's SHA-256.
pub fn idempotency_key(headers: &HeaderMap, fields: &[String], payload: &Value, body: &[u8]) -> String {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty())
    };
    let bounded = |kind: &str, key: &str| {
        if key.len() <= MAX_KEY {
            format!("{kind}:{key}")
        } else {
            format!("{kind}-sha256:{}", sha256_hex(key.as_bytes()))
        }
    };
    if let Some(k) = header("webhook-id").or_else(|| header("idempotency-key")) {
        return bounded("id", k.trim());
    }
    if !fields.is_empty() {
        let values: Option<Vec<String>> = fields
            .iter()
            .map(|f| match payload.get(f) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => None,
                Some(v) => Some(v.to_string()),
            })
            .collect();
        if let Some(values) = values {
            return bounded("fields", &values.join("|"));
        }
    }
    format!("sha256:{}", sha256_hex(body))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a callback's body was not read.
enum BodyError {
    TooLarge,
    TooSlow,
    Broken,
}

/// The body, up to `max` bytes, within `patience`: a client that trickles
/// or stalls is cut off, and no database connection is held meanwhile.
async fn read_body(mut body: Body, max: usize, patience: Duration) -> Result<Bytes, BodyError> {
    let read = async {
        let mut buf = Vec::with_capacity(body.size_hint().lower().min(max as u64) as usize);
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let Ok(data) = frame.map_err(|_| BodyError::Broken)?.into_data() else {
                continue; // trailers
            };
            if buf.len() + data.len() > max {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(patience, read)
        .await
        .unwrap_or(Err(BodyError::TooSlow))
}

async fn callback(
    State(state): State<Arc<AppState>>,
    route: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route = match route {
        Ok(Path(route)) if plausible_route(&route) => route,
        _ => return failure(StatusCode::NOT_FOUND, "unknown route"),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.config.max_body as u64) {
        return failure(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    }
    let settings = match route_settings(&state.pool, &route).await {
        Ok(Some(s)) => s,
        Ok(None) => return failure(StatusCode::NOT_FOUND, "unknown route"),
        Err(error) => {
            tracing::error!(route, error = %crate::record::error_chain(&error), "inbound: looking up the route failed");
            return failure(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    let body = match read_body(body, state.config.max_body, state.config.read_timeout).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return failure(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        Err(BodyError::TooSlow) => {
            tracing::info!(route, "inbound callback refused: the body did not arrive in time");
            return failure(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time");
        }
        Err(BodyError::Broken) => return failure(StatusCode::BAD_REQUEST, "the body could not be read"),
    };
    let secret = settings
        .0
        .as_deref()
        .or(state.config.secret.as_ref().map(Secret::expose));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    if let Err(denied) = auth::check(
        secret,
        &headers,
        query.as_deref(),
        &body,
        now,
        state.config.tolerance.as_secs() as i64,
    ) {
        if denied == auth::Denied::NotConfigured {
            tracing::warn!(
                route,
                "inbound callback refused: set PGWEBHOOKS_INBOUND_SECRET or the route's secret"
            );
        } else {
            tracing::info!(route, reason = denied.message(), "inbound callback refused");
        }
        return failure(StatusCode::UNAUTHORIZED, denied.message());
    }
    // serde_json checks the JSON (UTF-8, at most 128 levels deep, numbers
    // within f64 range); Postgres gets the text as sent, so no number is
    // rounded on the way.
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return failure(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
        Err(e) => return failure(StatusCode::BAD_REQUEST, &format!("malformed JSON: {e}")),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return failure(StatusCode::BAD_REQUEST, "malformed JSON: not UTF-8");
    };
    let key = idempotency_key(&headers, &settings.1, &payload, &body);
    let applied =
        tokio::time::timeout(state.config.apply_timeout, apply(&state.pool, &route, &key, text)).await;
    match applied {
        Ok(Ok((status, body))) => {
            let inbound_id = body.get("inboundId").and_then(Value::as_i64);
            tracing::info!(route, status, ?inbound_id, "inbound callback");
            answer(
                StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            )
        }
        Ok(Err(db::DbError::Query(e)))
            if e.code()
                .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("54")) =>
        {
            // e.g. a \u0000 in a string: valid JSON that Postgres cannot store.
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_default();
            failure(
                StatusCode::BAD_REQUEST,
                &format!("the body holds a value Postgres cannot store: {msg}"),
            )
        }
        Ok(Err(error)) => {
            tracing::error!(route, error = %crate::record::error_chain(&error), "inbound callback failed");
            failure(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
        Err(_) => {
            tracing::error!(route, "inbound callback took too long to apply");
            failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "timed out applying the callback; it is safe to send it again",
            )
        }
    }
}

/// Records and applies the callback; `payload` is the body's JSON text.
async fn apply(pool: &Pool, route: &str, key: &str, payload: &str) -> Result<(i32, Value), db::DbError> {
    let client = pool.get().await?;
    let st = client
        .prepare_cached("SELECT http_status, body FROM webhooks.inbound_apply($1, $2, $3::text::jsonb)")
        .await?;
    let row = client.query_one(&st, &[&route, &key, &payload]).await?;
    Ok((row.get(0), row.get(1)))
}
