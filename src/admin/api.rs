//! `/api/v1`: the management API (JSON; `openapi.json` describes every
//! route). Every request presents the admin token as a Bearer token.
//! Parameters are parsed here, never by extractors, so every refusal is a
//! JSON 4xx saying which parameter is wrong; lists are newest first with
//! an opaque `next_cursor`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::auth::ApiCaller;
use super::{actions, form, view, Failure, Shared};
use crate::db;
use crate::db::admin::DeliveryFilter;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/status", get(status))
        .route("/api/v1/endpoints", get(endpoints).post(endpoint_create))
        .route(
            "/api/v1/endpoints/{id}",
            get(endpoint_get).patch(endpoint_update).delete(endpoint_delete),
        )
        .route("/api/v1/endpoints/{id}/pause", post(pause))
        .route("/api/v1/endpoints/{id}/resume", post(resume))
        .route("/api/v1/endpoints/{id}/rotate-secret", post(rotate))
        .route("/api/v1/endpoints/{id}/test", post(test))
        .route("/api/v1/endpoints/{id}/retry-dead", post(retry_dead))
        .route("/api/v1/endpoints/{id}/replay", post(replay))
        .route("/api/v1/deliveries", get(deliveries))
        .route("/api/v1/deliveries/retry", post(retry_many))
        .route("/api/v1/deliveries/{id}", get(delivery))
        .route("/api/v1/deliveries/{id}/retry", post(retry_one))
        .route("/api/v1/dead-letters", get(dead_letters))
        .route("/api/v1/inbound", get(inbound))
        .route("/api/v1/actions", get(admin_actions))
}

pub fn error(status: StatusCode, message: &str) -> Response {
    Failure(status, message.to_owned()).into_response()
}

fn bad(m: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, m.into())
}

type Answer = Result<Response, Failure>;

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI).into_response()
}

/// A positive id from the path.
pub fn id(raw: &str) -> Result<i64, Failure> {
    raw.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        Failure(
            StatusCode::NOT_FOUND,
            "not found: ids are positive integers".into(),
        )
    })
}

/// The query's parameters: none may hold a NUL or exceed 1,000 characters.
pub fn query(raw: Option<&str>) -> Result<Vec<(String, String)>, Failure> {
    let pairs = form::pairs(raw.unwrap_or_default().as_bytes());
    for (k, v) in &pairs {
        if v.contains('\0') || k.contains('\0') {
            return Err(bad(format!(
                "parameter {:?}: NUL is not allowed",
                k.replace('\0', "")
            )));
        }
        if v.chars().count() > 1000 {
            return Err(bad(format!("parameter {k:?}: at most 1000 characters")));
        }
    }
    Ok(pairs)
}

fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, Failure> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| bad(format!("body: {e}")))
}

/// `limit` (1..=200, default 50).
pub fn limit(q: &[(String, String)]) -> Result<i64, Failure> {
    match form::get(q, "limit").filter(|v| !v.is_empty()) {
        None => Ok(50),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| bad("limit: an integer from 1 to 200")),
    }
}

pub fn cursor_encode(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// The cursor's parts after its kind letter.
pub fn cursor_decode(q: &[(String, String)], kind: char) -> Result<Option<Vec<i64>>, Failure> {
    let Some(c) = form::get(q, "cursor").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let invalid = || bad("cursor: invalid (use the next_cursor of a previous page)");
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(invalid)?;
    let rest = text.strip_prefix(kind).ok_or_else(invalid)?;
    rest.split(':')
        .map(|p| p.parse::<i64>().ok())
        .collect::<Option<Vec<_>>>()
        .filter(|v| !v.is_empty())
        .map(Some)
        .ok_or_else(invalid)
}

fn page<T: serde::Serialize>(items: &[T], limit: i64, next: impl Fn(&T) -> String) -> Response {
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(next))
        .flatten();
    Json(json!({"items": items, "next_cursor": next_cursor})).into_response()
}

/// The deliveries filter from query parameters (the console's filter form
/// uses the same names).
pub fn delivery_filter(q: &[(String, String)]) -> Result<DeliveryFilter, Failure> {
    let given = |n: &str| form::get(q, n).map(str::trim).filter(|v| !v.is_empty());
    let time = |n: &str| {
        given(n)
            .map(|v| {
                humantime::parse_rfc3339_weak(v)
                    .map_err(|_| bad(format!("{n}: an RFC 3339 time, e.g. 2026-01-31T12:00:00Z")))
            })
            .transpose()
    };
    let status = given("status").map(str::to_owned);
    if let Some(s) = &status {
        if !db::admin::STATUSES.contains(&s.as_str()) {
            return Err(bad("status: one of pending, delivering, delivered, failed, dead"));
        }
    }
    let source = match given("source") {
        None => None,
        Some(s) => {
            let (t, k) = s
                .split_once(|c: char| c.is_whitespace() || c == ':')
                .ok_or_else(|| bad("source: a table and a row key, e.g. \"appointments 42\""))?;
            Some((t.trim().to_owned(), k.trim().to_owned()))
        }
    };
    Ok(DeliveryFilter {
        endpoint_id: given("endpoint_id")
            .map(|v| v.parse::<i64>().map_err(|_| bad("endpoint_id: an integer")))
            .transpose()?,
        statuses: status.into_iter().collect(),
        event_type: given("event_type").map(str::to_owned),
        since: time("since")?,
        until: time("until")?,
        event_id: given("event_id")
            .map(|v| uuid::Uuid::parse_str(v).map_err(|_| bad("event_id: a UUID")))
            .transpose()?,
        source,
        before: None,
    })
}

async fn status(_: ApiCaller, State(a): State<Shared>) -> Answer {
    let c = a.pool.get().await?;
    let s = db::ops::status(&c).await?;
    let endpoints: Vec<Value> = s
        .endpoints
        .iter()
        .map(|e| {
            json!({"id": e.id, "endpoint": e.endpoint, "state": e.state, "reason": e.reason,
                   "attempts_1h": e.attempts_1h, "success_rate_pct": e.success_rate, "p95_ms": e.p95_ms,
                   "pending": e.pending, "dead": e.dead,
                   "last_failure": e.last_failure.as_ref().map(|f| json!({"at": f.at, "reason": f.reason()}))})
        })
        .collect();
    Ok(Json(json!({
        "waiting": s.waiting, "not_fanned_out": s.not_fanned_out, "oldest_pending_seconds": s.oldest_seconds,
        "dead_letters": s.dead_letters, "notification_queue_usage": s.notification_queue_usage,
        "endpoints": endpoints, "capture_degraded": s.degraded, "writes_refused": (a.health)(),
    }))
    .into_response())
}

async fn endpoints(_: ApiCaller, State(a): State<Shared>) -> Answer {
    let c = a.pool.get().await?;
    let items = db::admin::endpoints(&c, None).await?;
    Ok(Json(json!({"items": items, "next_cursor": null})).into_response())
}

async fn endpoint_get(_: ApiCaller, State(a): State<Shared>, Path(raw): Path<String>) -> Answer {
    let id = id(&raw)?;
    let c = a.pool.get().await?;
    match db::admin::endpoints(&c, Some(id)).await?.pop() {
        Some(e) => Ok(Json(e).into_response()),
        None => Err(Failure(StatusCode::NOT_FOUND, format!("no endpoint {id}"))),
    }
}

async fn endpoint_create(caller: ApiCaller, State(a): State<Shared>, bytes: Bytes) -> Answer {
    let spec: super::spec::Spec = body(&bytes)?;
    let (id, secret) = actions::create(&a, caller.actor(), &spec).await?;
    let c = a.pool.get().await?;
    let endpoint = db::admin::endpoints(&c, Some(id)).await?.pop();
    Ok((
        StatusCode::CREATED,
        Json(json!({"endpoint": endpoint, "secret": secret})),
    )
        .into_response())
}

async fn endpoint_update(
    caller: ApiCaller,
    State(a): State<Shared>,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> Answer {
    let id = id(&raw)?;
    let spec: super::spec::Spec = body(&bytes)?;
    actions::update(&a, caller.actor(), id, &spec).await?;
    let c = a.pool.get().await?;
    Ok(Json(db::admin::endpoints(&c, Some(id)).await?.pop()).into_response())
}

async fn endpoint_delete(
    caller: ApiCaller,
    State(a): State<Shared>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer {
    let id = id(&raw)?;
    let q = query(q.as_deref())?;
    let force = match form::get(&q, "force") {
        None | Some("false") | Some("") => false,
        Some("true") => true,
        Some(_) => return Err(bad("force: true or false")),
    };
    Ok(Json(actions::delete(&a, caller.actor(), id, force).await?).into_response())
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    reason: Option<String>,
}

async fn pause(caller: ApiCaller, State(a): State<Shared>, Path(raw): Path<String>, bytes: Bytes) -> Answer {
    let id = id(&raw)?;
    let b: PauseBody = body(&bytes)?;
    if b.reason.as_deref().is_some_and(|r| r.contains('\0')) {
        return Err(bad("reason: NUL is not allowed"));
    }
    actions::pause(&a, caller.actor(), id, b.reason.as_deref().unwrap_or_default()).await?;
    Ok(Json(json!({"id": id, "enabled": false})).into_response())
}

async fn resume(caller: ApiCaller, State(a): State<Shared>, Path(raw): Path<String>) -> Answer {
    let id = id(&raw)?;
    actions::resume(&a, caller.actor(), id).await?;
    Ok(Json(json!({"id": id, "enabled": true})).into_response())
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    secret: Option<String>,
    overlap_seconds: Option<u64>,
}

async fn rotate(caller: ApiCaller, State(a): State<Shared>, Path(raw): Path<String>, bytes: Bytes) -> Answer {
    let id = id(&raw)?;
    let b: RotateBody = body(&bytes)?;
    let overlap = Duration::from_secs(b.overlap_seconds.unwrap_or(86_400).min(366 * 86_400));
    let secret = actions::rotate(&a, caller.actor(), id, b.secret, overlap).await?;
    Ok(Json(json!({"id": id, "rotated": true, "secret": secret})).into_response())
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TestBody {
    event_type: Option<String>,
    sample: Option<serde_json::Value>,
}

/// Queues the test `TestBody` asks for (none: the ping) and answers with
/// what it sends: the event's type and id (the webhook-id) and the body as
/// the sidecar builds it.
async fn test(caller: ApiCaller, State(a): State<Shared>, Path(raw): Path<String>, bytes: Bytes) -> Answer {
    let id = id(&raw)?;
    let b: TestBody = body(&bytes)?;
    // A JSON null sample is no sample (serde reads both as None).
    let what = db::ops::TestEvent::from_parts(b.event_type, b.sample).map_err(bad)?;
    let queued = actions::test(&a, caller.actor(), id, &what).await?;
    let sent = a
        .snapshot
        .current()
        .get(id)
        .map(|ep| queued.event.request_for(ep).0.to_string());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "delivery_id": queued.delivery_id,
            "event_id": queued.event.id,
            "event_type": queued.event.event_type,
            "body": sent,
        })),
    )
        .into_response())
}

async fn retry_dead(caller: ApiCaller, State(a): State<Shared>, Path(raw): Path<String>) -> Answer {
    let id = id(&raw)?;
    let n = actions::retry_dead(&a, caller.actor(), id).await?;
    Ok(Json(json!({"requeued": n})).into_response())
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    since: String,
}

async fn replay(caller: ApiCaller, State(a): State<Shared>, Path(raw): Path<String>, bytes: Bytes) -> Answer {
    let id = id(&raw)?;
    let b: ReplayBody = body(&bytes)?;
    let since = humantime::parse_rfc3339_weak(b.since.trim())
        .map_err(|_| bad("since: an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"))?;
    let since = crate::body::rfc3339(since);
    let n = actions::replay(&a, caller.actor(), id, &since).await?;
    Ok(Json(json!({"requeued": n})).into_response())
}

async fn deliveries(_: ApiCaller, State(a): State<Shared>, RawQuery(q): RawQuery) -> Answer {
    let q = query(q.as_deref())?;
    let mut f = delivery_filter(&q)?;
    f.before = cursor_decode(&q, 'd')?.map(|v| v[0]);
    let limit = limit(&q)?;
    let c = a.pool.get().await?;
    let items = db::admin::deliveries(&c, &f, limit).await?;
    Ok(page(&items, limit, |d| cursor_encode(&format!("d{}", d.id))))
}

async fn delivery(_: ApiCaller, State(a): State<Shared>, Path(raw): Path<String>) -> Answer {
    let id = id(&raw)?;
    let c = a.pool.get().await?;
    let Some(d) = db::admin::delivery(&c, id).await? else {
        return Err(Failure(StatusCode::NOT_FOUND, format!("no delivery {id}")));
    };
    let request = d.event.as_ref().map(|e| {
        let snapshot = a.snapshot.current();
        let sent = view::as_sent(&snapshot, d.delivery.endpoint_id, e);
        json!({"body": sent.body, "note": sent.note,
               "headers": sent.headers.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>()})
    });
    Ok(
        Json(json!({"delivery": d.delivery, "event": d.event, "attempts": d.attempts, "request": request}))
            .into_response(),
    )
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    ids: Vec<i64>,
}

async fn retry_many(caller: ApiCaller, State(a): State<Shared>, bytes: Bytes) -> Answer {
    let b: RetryBody = body(&bytes)?;
    if b.ids.is_empty() || b.ids.len() > 1000 {
        return Err(bad("ids: 1 to 1000 delivery ids"));
    }
    let done = actions::retry(&a, caller.actor(), &b.ids).await?;
    let missed: Vec<i64> = b.ids.iter().copied().filter(|i| !done.contains(i)).collect();
    Ok(Json(json!({"requeued": done, "not_requeued": missed})).into_response())
}

async fn retry_one(caller: ApiCaller, State(a): State<Shared>, Path(raw): Path<String>) -> Answer {
    let id = id(&raw)?;
    let c = a.pool.get().await?;
    let Some(d) = db::admin::delivery(&c, id).await? else {
        return Err(Failure(StatusCode::NOT_FOUND, format!("no delivery {id}")));
    };
    drop(c);
    if actions::retry(&a, caller.actor(), &[id]).await?.is_empty() {
        return Err(Failure(
            StatusCode::CONFLICT,
            format!("delivery {id} is {}: not re-queued", d.delivery.status),
        ));
    }
    Ok(Json(json!({"requeued": [id], "not_requeued": []})).into_response())
}

async fn dead_letters(_: ApiCaller, State(a): State<Shared>, RawQuery(q): RawQuery) -> Answer {
    let q = query(q.as_deref())?;
    let f = DeliveryFilter {
        endpoint_id: form::get(&q, "endpoint_id")
            .filter(|v| !v.is_empty())
            .map(|v| v.parse::<i64>().map_err(|_| bad("endpoint_id: an integer")))
            .transpose()?,
        statuses: vec!["failed".into(), "dead".into()],
        before: cursor_decode(&q, 'd')?.map(|v| v[0]),
        ..Default::default()
    };
    let limit = limit(&q)?;
    let c = a.pool.get().await?;
    let items = db::admin::deliveries(&c, &f, limit).await?;
    Ok(page(&items, limit, |d| cursor_encode(&format!("d{}", d.id))))
}

async fn inbound(_: ApiCaller, State(a): State<Shared>, RawQuery(q): RawQuery) -> Answer {
    let q = query(q.as_deref())?;
    let route = form::get(&q, "route").filter(|v| !v.is_empty());
    let before = cursor_decode(&q, 'i')?.map(|v| v[0]);
    let limit = limit(&q)?;
    let c = a.pool.get().await?;
    let items = db::admin::inbound(&c, route, before, limit).await?;
    Ok(page(&items, limit, |r| cursor_encode(&format!("i{}", r.id))))
}

async fn admin_actions(_: ApiCaller, State(a): State<Shared>, RawQuery(q): RawQuery) -> Answer {
    let q = query(q.as_deref())?;
    let before = cursor_decode(&q, 'a')?.map(|v| v[0]);
    let limit = limit(&q)?;
    let c = a.pool.get().await?;
    let items = db::admin::actions(&c, before, limit).await?;
    Ok(page(&items, limit, |r| cursor_encode(&format!("a{}", r.id))))
}
