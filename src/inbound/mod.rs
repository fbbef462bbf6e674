//! The inbound HTTP server: Make.com (or anyone holding the secret) posts
//! callbacks; each is authenticated before its body is parsed, recorded
//! once and applied by its route's stored function (`webhooks.inbound_apply`,
//! one transaction). Also `/healthz`, `/readyz`, `/metrics` and the OpenAPI
//! document. Connections and their limits live in `server.rs`.

pub mod auth;
mod ready;
mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::{Object, Pool};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::Secret;
use crate::db;
use crate::sign::SigningKey;

pub use server::{serve, LocalAddr, MAX_HEAD};

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
    /// How long a callback may take to apply before we answer 503 (and
    /// cancel its query).
    pub apply_timeout: Duration,
    /// `statement_timeout` of the apply, shorter than `apply_timeout` so
    /// Postgres gives up first.
    pub statement_timeout: Duration,
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
            statement_timeout: Duration::from_secs(25),
        }
    }
}

struct AppState {
    pool: Pool,
    /// How to reach the database for a cancel request (TLS as configured).
    cancel_tls: db::tls::MakeRustls,
    config: InboundConfig,
    ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    /// `/readyz`'s database check, at most once per second.
    ready_db: ready::ReadyCache,
    routes: RouteCache,
}

/// A route's settings, as the server needs them before the apply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteSettings {
    secret: Option<String>,
    fields: Vec<String>,
}

type RouteMap = Arc<HashMap<String, RouteSettings>>;

/// How long the enabled routes are used from memory before they are read
/// again: an unauthenticated request costs no database round trip (at most
/// one read per this, whatever the traffic), and a route added, changed or
/// disabled in SQL is seen within it.
pub const ROUTE_TTL: Duration = Duration::from_secs(1);

/// The enabled routes (`webhooks.inbound_routes`), read at most once per
/// [`ROUTE_TTL`] by one request at a time.
struct RouteCache {
    current: RwLock<Option<(Instant, RouteMap)>>,
    reload: tokio::sync::Mutex<()>,
}

impl RouteCache {
    fn new() -> Self {
        RouteCache {
            current: RwLock::new(None),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self, max_age: Duration) -> Option<RouteMap> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, m)| m.clone())
    }

    /// The routes, read again when older than `max_age`. While Postgres
    /// cannot be read, the last routes read are used (for another TTL).
    async fn get(&self, pool: &Pool, max_age: Duration) -> Result<RouteMap, db::DbError> {
        if let Some(m) = self.fresh(max_age) {
            return Ok(m);
        }
        let _one_at_a_time = self.reload.lock().await;
        if let Some(m) = self.fresh(max_age) {
            return Ok(m);
        }
        let loaded = load_routes(pool).await;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        match loaded {
            Ok(m) => {
                if current.as_ref().is_none_or(|(_, old)| **old != m) {
                    warn_unusable_keys(&m);
                }
                let m = Arc::new(m);
                *current = Some((Instant::now(), m.clone()));
                Ok(m)
            }
            Err(error) => match current.as_mut() {
                Some((at, m)) => {
                    tracing::warn!(error = %crate::errors::error_chain(&error), "inbound: reading the routes failed; using the last ones read");
                    *at = Instant::now();
                    Ok(m.clone())
                }
                None => Err(error),
            },
        }
    }
}

/// Route secrets Standard Webhooks signatures cannot be checked with
/// (a `whsec_` secret that is not base64, written around
/// `inbound_route_set`): said once, not silently ignored.
fn warn_unusable_keys(routes: &HashMap<String, RouteSettings>) {
    for (route, r) in routes {
        if let Some(Err(error)) = r.secret.as_deref().map(SigningKey::parse) {
            tracing::warn!(route, error = %crate::errors::error_chain(&error), "inbound: this route's secret cannot check signatures (only presented secrets work)");
        }
    }
}

async fn load_routes(pool: &Pool) -> Result<HashMap<String, RouteSettings>, db::DbError> {
    let client = pool.get().await?;
    Ok(db::inbound::routes(&client)
        .await?
        .into_iter()
        .map(|(route, secret, fields)| (route, RouteSettings { secret, fields }))
        .collect())
}

/// The router; `ready` says whether the sidecar's own stages are healthy,
/// and if not, why.
pub fn router(
    pool: Pool,
    cancel_tls: db::tls::MakeRustls,
    config: InboundConfig,
    ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
) -> Router {
    let limit = config.max_body;
    let state = Arc::new(AppState {
        pool,
        cancel_tls,
        config,
        ready,
        ready_db: ready::ReadyCache::new(ready::READY_TTL),
        routes: RouteCache::new(),
    });
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
    crate::body::rfc3339(SystemTime::now())
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
    let db_ok = state
        .ready_db
        .get(|| async {
            match state.pool.get().await {
                Ok(client) => db::migrate::is_current(&client).await.unwrap_or(false),
                Err(_) => false,
            }
        })
        .await;
    let stages = (state.ready)();
    let status = if db_ok && stages.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({"database": db_ok, "sidecar": stages.is_ok()});
    if let Err(problem) = stages {
        body["problem"] = json!(problem);
    }
    (status, Json(body)).into_response()
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
/// route's declared payload fields, else the body's SHA-256. A signed
/// callback is identified by its (signed) `webhook-id` only, never by the
/// unsigned `Idempotency-Key`: a replay with another key is a duplicate.
/// The fields' values are a JSON array (`["a|b","c"]` and `["a","b|c"]`
/// differ); every field must be present, except those declared with a
/// trailing `?` (e.g. `newScheduledAt?`), which are `null` when absent. A
/// field is a top-level key or a dotted path into the body (`task.id`,
/// `items.0.sku`: see [`field`]).
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
    let id = if auth::is_signed(headers) {
        header("webhook-id")
    } else {
        header("webhook-id").or_else(|| header("idempotency-key"))
    };
    if let Some(k) = id {
        return bounded("id", k.trim());
    }
    if !fields.is_empty() {
        let values: Option<Vec<Value>> = fields
            .iter()
            .map(|f| {
                let (name, optional) = match f.strip_suffix('?') {
                    Some(name) => (name, true),
                    None => (f.as_str(), false),
                };
                match field(payload, name) {
                    // "42" and 42 are one id, as before.
                    Some(Value::String(s)) => Some(Value::String(s.clone())),
                    Some(Value::Null) | None => optional.then_some(Value::Null),
                    Some(v) => Some(Value::String(v.to_string())),
                }
            })
            .collect();
        if let Some(values) = values {
            return bounded("fields", &Value::Array(values).to_string());
        }
    }
    format!("sha256:{}", sha256_hex(body))
}

/// An idempotency field's value: the top-level key `name` if the body has
/// one (a key may hold a dot), else the dotted path `name` walks through
/// objects' keys and arrays' indexes (`task.id`, `items.0.sku`).
pub fn field<'a>(payload: &'a Value, name: &str) -> Option<&'a Value> {
    if let Some(v) = payload.get(name) {
        return Some(v);
    }
    if !name.contains('.') {
        return None;
    }
    name.split('.').try_fold(payload, |v, part| match v {
        Value::Object(o) => o.get(part),
        Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
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
    let routes = match state.routes.get(&state.pool, ROUTE_TTL).await {
        Ok(r) => r,
        Err(error) => {
            tracing::error!(route, error = %crate::errors::error_chain(&error), "inbound: reading the routes failed");
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
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let tolerance = state.config.tolerance.as_secs() as i64;
    let global = state.config.secret.as_ref().map(Secret::expose);
    let check = |secret: Option<&str>| auth::check(secret, &headers, query.as_deref(), &body, now, tolerance);
    let settings = match routes.get(&route) {
        Some(s) => s.clone(),
        None => {
            // Unknown to the caller unless it holds the global secret: an
            // unauthenticated caller gets the 401 an existing route would
            // give (no enumeration), and cost no database work.
            let denied = match global {
                Some(_) => check(global).err(),
                None => Some(
                    check(Some(UNKNOWN_ROUTE_SECRET))
                        .err()
                        .unwrap_or(auth::Denied::Invalid),
                ),
            };
            if let Some(denied) = denied {
                tracing::info!(
                    route,
                    reason = denied.message(),
                    "inbound callback refused (unknown route)"
                );
                return failure(StatusCode::UNAUTHORIZED, denied.message());
            }
            // Authenticated: the route may be newer than the cache.
            match state.routes.get(&state.pool, Duration::ZERO).await {
                Ok(r) => match r.get(&route) {
                    Some(s) => s.clone(),
                    None => return failure(StatusCode::NOT_FOUND, "unknown route"),
                },
                Err(error) => {
                    tracing::error!(route, error = %crate::errors::error_chain(&error), "inbound: reading the routes failed");
                    return failure(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
                }
            }
        }
    };
    let secret = settings.secret.as_deref().or(global);
    if let Err(denied) = check(secret) {
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
    let key = idempotency_key(&headers, &settings.fields, &payload, &body);
    let applied = apply(&state.pool, &state.cancel_tls, &state.config, &route, &key, text).await;
    match applied {
        Ok((status, body)) => {
            let inbound_id = crate::notice::or_none(body.get("inboundId").and_then(Value::as_i64));
            if status >= 500 {
                tracing::error!(
                    route,
                    status,
                    %inbound_id,
                    "inbound callback failed; see webhooks.inbound.error"
                );
            } else {
                tracing::info!(route, status, %inbound_id, "inbound callback");
            }
            answer(
                StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            )
        }
        Err(ApplyError::Db(db::DbError::Query(e)))
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
        Err(ApplyError::Db(db::DbError::Query(e)))
            if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) =>
        {
            tracing::error!(
                route,
                "inbound callback took too long to apply (statement timeout)"
            );
            timed_out()
        }
        Err(ApplyError::Db(error)) => {
            tracing::error!(route, error = %crate::errors::error_chain(&error), "inbound callback failed");
            failure(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
        Err(ApplyError::TimedOut) => {
            tracing::error!(
                route,
                "inbound callback took too long to apply; its query was cancelled"
            );
            timed_out()
        }
    }
}

/// Stands for a route's secret when a route is unknown and there is no
/// global secret, so that the answer does not tell the two apart.
const UNKNOWN_ROUTE_SECRET: &str = "\u{0}unknown route: nothing matches this";

fn timed_out() -> Response {
    failure(
        StatusCode::SERVICE_UNAVAILABLE,
        "timed out applying the callback; it is safe to send it again",
    )
}

enum ApplyError {
    Db(db::DbError),
    TimedOut,
}

impl From<db::DbError> for ApplyError {
    fn from(e: db::DbError) -> Self {
        ApplyError::Db(e)
    }
}

impl From<tokio_postgres::Error> for ApplyError {
    fn from(e: tokio_postgres::Error) -> Self {
        ApplyError::Db(db::DbError::Query(e))
    }
}

/// Records and applies the callback (`payload` is the body's JSON text) in
/// one transaction under `statement_timeout`, within `apply_timeout`. On
/// the timeout the query is cancelled and rolled back before the
/// connection goes back to the pool, so it is not left busy.
async fn apply(
    pool: &Pool,
    cancel_tls: &db::tls::MakeRustls,
    config: &InboundConfig,
    route: &str,
    key: &str,
    payload: &str,
) -> Result<(i32, Value), ApplyError> {
    let deadline = tokio::time::Instant::now() + config.apply_timeout;
    let client = tokio::time::timeout_at(deadline, pool.get())
        .await
        .map_err(|_| ApplyError::TimedOut)?
        .map_err(db::DbError::from)?;
    let cancel = client.cancel_token();
    let run = db::inbound::apply(&client, config.statement_timeout, route, key, payload);
    match tokio::time::timeout_at(deadline, run).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tokio::spawn(cancel_and_release(client, cancel, cancel_tls.clone()));
            Err(ApplyError::TimedOut)
        }
    }
}

/// Cancels what `client` runs (the apply's implicit transaction ends with
/// it) and puts the session's statement timeout back; a connection that
/// cannot be made clean is closed rather than reused.
async fn cancel_and_release(client: Object, cancel: tokio_postgres::CancelToken, tls: db::tls::MakeRustls) {
    if let Err(error) = cancel.cancel_query(tls).await {
        tracing::warn!(error = %crate::errors::error_chain(&error), "inbound: cancelling a timed-out apply failed");
    }
    let reset = tokio::time::timeout(
        Duration::from_secs(10),
        db::inbound::reset_statement_timeout(&client),
    )
    .await;
    if !matches!(reset, Ok(Ok(()))) {
        drop(Object::take(client));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_fields_may_be_dotted_paths_into_the_body() {
        let fields = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let key = |f: &[&str], body: Value| {
            idempotency_key(&HeaderMap::new(), &fields(f), &body, body.to_string().as_bytes())
        };
        let task = |status: &str| json!({"event": "task_updated", "task": {"id": 7, "status": status}});
        assert_eq!(
            key(&["event", "task.id", "task.status"], task("done")),
            r#"fields:["task_updated","7","done"]"#
        );
        assert_ne!(
            key(&["event", "task.id", "task.status"], task("done")),
            key(&["event", "task.id", "task.status"], task("open"))
        );
        // Into arrays by index; a missing part is absent (optional: null).
        let order = json!({"items": [{"sku": "a-1"}], "n": 1});
        assert_eq!(key(&["items.0.sku"], order.clone()), r#"fields:["a-1"]"#);
        assert_eq!(key(&["n", "items.1.sku?"], order.clone()), r#"fields:["1",null]"#);
        assert!(key(&["items.1.sku"], order).starts_with("sha256:"));
        // A top-level key that holds a dot is itself first.
        let dotted = json!({"task.id": "top", "task": {"id": "nested"}});
        assert_eq!(key(&["task.id"], dotted), r#"fields:["top"]"#);
    }
}
