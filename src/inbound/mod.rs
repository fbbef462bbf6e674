//! The inbound HTTP server: Make.com (or anyone holding the secret) posts
//! callbacks; each is authenticated before its body is parsed, recorded
//! once and applied by its route's stored function (`webhooks.inbound_apply`,
//! one transaction). Also `/healthz`, `/readyz`, `/metrics` and the OpenAPI
//! document.

pub mod auth;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::Pool;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::Secret;
use crate::db;

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

/// The callback's identity: its `webhook-id` / `Idempotency-Key`, else the
/// route's declared payload fields, else the body's SHA-256.
pub fn idempotency_key(headers: &HeaderMap, fields: &[String], payload: &Value, body: &[u8]) -> String {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty())
    };
    if let Some(k) = header("webhook-id").or_else(|| header("idempotency-key")) {
        return format!("id:{}", k.trim());
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
            return format!("fields:{}", values.join("|"));
        }
    }
    let digest = Sha256::digest(body);
    format!(
        "sha256:{}",
        digest.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

async fn callback(
    State(state): State<Arc<AppState>>,
    Path(route): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let settings = match route_settings(&state.pool, &route).await {
        Ok(Some(s)) => s,
        Ok(None) => return failure(StatusCode::NOT_FOUND, "unknown route"),
        Err(error) => {
            tracing::error!(route, error = %crate::record::error_chain(&error), "inbound: looking up the route failed");
            return failure(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    let body: Bytes = match axum::body::to_bytes(body, state.config.max_body).await {
        Ok(b) => b,
        Err(_) => return failure(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
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
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return failure(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
        Err(e) => return failure(StatusCode::BAD_REQUEST, &format!("malformed JSON: {e}")),
    };
    let key = idempotency_key(&headers, &settings.1, &payload, &body);
    let applied = tokio::time::timeout(
        state.config.apply_timeout,
        apply(&state.pool, &route, &key, &payload),
    )
    .await;
    match applied {
        Ok(Ok((status, body))) => {
            let inbound_id = body.get("inboundId").and_then(Value::as_i64);
            tracing::info!(route, status, ?inbound_id, "inbound callback");
            answer(
                StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            )
        }
        Ok(Err(db::DbError::Query(e))) if e.code().is_some_and(|c| c.code().starts_with("22")) => {
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

async fn apply(pool: &Pool, route: &str, key: &str, payload: &Value) -> Result<(i32, Value), db::DbError> {
    let client = pool.get().await?;
    let st = client
        .prepare_cached("SELECT http_status, body FROM webhooks.inbound_apply($1, $2, $3)")
        .await?;
    let row = client.query_one(&st, &[&route, &key, payload]).await?;
    Ok((row.get(0), row.get(1)))
}

/// Binds `config.listen` and serves until `shutdown`; returns the bound
/// address at once.
pub async fn serve(
    router: Router,
    listen: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "inbound server stopped");
        }
    });
    Ok((addr, handle))
}
