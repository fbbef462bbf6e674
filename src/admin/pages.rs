//! The console's pages: what each one reads (`db::admin`, `db::ops`) and
//! hands its template. Numbers and times are formatted here; templates
//! only lay them out.

use std::collections::HashMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::render::{message, render, Signed};
use super::{api, form, plot, view, Failure, Shared};
use crate::db;

/// Runs a page; a failure becomes the message page.
macro_rules! page {
    ($a:expr, $s:expr, $body:expr) => {
        match $body {
            Ok(r) => r,
            Err(f) => message(&$a, Some(&$s), f),
        }
    };
}

fn notice(q: &[(String, String)]) -> Option<String> {
    let code = form::get(q, "notice")?;
    Some(match code {
        "paused" => "Endpoint paused: its deliveries wait until it is resumed.".into(),
        "resumed" => "Endpoint resumed: its backlog drains now.".into(),
        "rotated" => "New signing secret active; the previous ones keep signing for 24 h. Secrets are never shown here: \
                      read it with `pgwebhooks endpoint list --show-secrets`."
            .into(),
        "test" => "Test event queued: this page shows its attempt once the sidecar has sent it (reload).".into(),
        c => match c.strip_prefix("requeued-").and_then(|n| n.parse::<u32>().ok()) {
            Some(0) => "Nothing re-queued (already delivered, or in flight).".into(),
            Some(1) => "Re-queued 1 delivery: it goes out again now.".into(),
            Some(n) => format!("Re-queued {n} deliveries: they go out again now."),
            None => return None,
        },
    })
}

fn age(seconds: Option<f64>) -> String {
    match seconds {
        None => "–".into(),
        Some(s) if s < 1.0 => "now".into(),
        Some(s) => humantime::format_duration(std::time::Duration::from_secs(s as u64)).to_string(),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}%"))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| {
        if v < 10.0 {
            format!("{v:.1} ms")
        } else {
            format!("{v:.0} ms")
        }
    })
}

/// The status summary with each endpoint's plot and latency.
async fn summary(a: &super::Admin) -> Result<(db::ops::Summary, Vec<Value>), Failure> {
    let c = a.pool.get().await?;
    let status = db::ops::status(&c).await?;
    let series = db::admin::per_minute(&c).await?;
    let latency: HashMap<i64, (f64, f64)> = db::admin::latency_1h(&c)
        .await?
        .into_iter()
        .map(|(id, p50, p95)| (id, (p50, p95)))
        .collect();
    let mut per: HashMap<i64, ([i64; 60], [i64; 60])> = HashMap::new();
    for (id, ago, n, ok) in series {
        let slot = per.entry(id).or_insert(([0; 60], [0; 60]));
        let ago = ago.clamp(0, 59) as usize;
        slot.0[ago] += ok;
        slot.1[ago] += n - ok;
    }
    let endpoints = status
        .endpoints
        .iter()
        .map(|e| {
            let (ok, bad) = per.get(&e.id).copied().unwrap_or(([0; 60], [0; 60]));
            let (p50, p95) = latency.get(&e.id).map_or((None, None), |(a, b)| (Some(*a), Some(*b)));
            let failing = e.last_failure.as_ref().is_some_and(|f| f.seconds_ago < 3600.0)
                && e.success_rate.is_none_or(|r| r < 100.0);
            json!({
                "id": e.id, "name": e.endpoint, "state": e.state, "reason": e.reason,
                "attempts_1h": e.attempts_1h, "success": pct(e.success_rate), "p50": ms(p50), "p95": ms(p95),
                "pending": e.pending, "dead": e.dead, "failing": failing,
                "last_failure": e.last_failure.as_ref().map(|f| json!({"ago": age(Some(f.seconds_ago)), "reason": f.reason()})),
                "plot": plot::per_minute(&ok, &bad),
            })
        })
        .collect();
    Ok((status, endpoints))
}

pub(super) async fn overview(State(a): State<Shared>, Signed(s): Signed, RawQuery(q): RawQuery) -> Response {
    page!(a, s, async {
        let q = api::query(q.as_deref())?;
        let (status, endpoints) = summary(&a).await?;
        let attention: Vec<&Value> = endpoints.iter().filter(|e| e["state"] != "enabled").collect();
        Ok(render(&a, StatusCode::OK, "overview.html", Some(&s), json!({
            "page": "overview", "notice": notice(&q), "writes_refused": (a.health)(),
            "waiting": status.waiting, "oldest": age(status.oldest_seconds),
            "not_fanned_out": status.not_fanned_out, "dead_letters": status.dead_letters,
            "holding_back": status.holding_back.as_ref().map(|(pid, secs, _)| json!({"pid": pid, "age": age(Some(*secs))})),
            "attention": attention, "endpoints": endpoints,
            "degraded": status.degraded.iter().map(|d| json!({
                "table": d.table, "failures": d.failures, "error": d.last_error, "ago": age(d.seconds_ago),
            })).collect::<Vec<_>>(),
        })))
    }
    .await)
}

pub(super) async fn endpoints(State(a): State<Shared>, Signed(s): Signed, RawQuery(q): RawQuery) -> Response {
    page!(
        a,
        s,
        async {
            let q = api::query(q.as_deref())?;
            let (_, mut endpoints) = summary(&a).await?;
            let c = a.pool.get().await?;
            let views: HashMap<i64, db::admin::EndpointView> = db::admin::endpoints(&c, None)
                .await?
                .into_iter()
                .map(|e| (e.id, e))
                .collect();
            for e in &mut endpoints {
                if let Some(v) = e["id"].as_i64().and_then(|id| views.get(&id)) {
                    e["url"] = json!(v.url);
                    e["events"] = json!(v.event_types.join(", "));
                    e["enabled"] = json!(v.enabled);
                }
            }
            Ok(render(
                &a,
                StatusCode::OK,
                "endpoints.html",
                Some(&s),
                json!({
                    "page": "endpoints", "notice": notice(&q), "endpoints": endpoints,
                }),
            ))
        }
        .await
    )
}

pub(super) async fn endpoint(
    State(a): State<Shared>,
    Signed(s): Signed,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    page!(
        a,
        s,
        async {
            let q = api::query(q.as_deref())?;
            let id = api::id(&raw)?;
            let c = a.pool.get().await?;
            let Some(e) = db::admin::endpoints(&c, Some(id)).await?.pop() else {
                return Err(Failure(StatusCode::NOT_FOUND, format!("no endpoint {id}")));
            };
            let recent = db::admin::recent_attempts(&c, id, false, 120).await?;
            let failures = db::admin::recent_attempts(&c, id, true, 20).await?;
            let filter = db::admin::DeliveryFilter {
                endpoint_id: Some(id),
                ..Default::default()
            };
            let deliveries = db::admin::deliveries(&c, &filter, 25).await?;
            drop(c);
            let points: Vec<(f64, bool)> = recent
                .iter()
                .rev()
                .map(|r| {
                    (
                        r.attempt.duration_ms,
                        r.attempt.status_code.is_some_and(|s| (200..300).contains(&s)),
                    )
                })
                .collect();
            let (_, health) = summary(&a).await?;
            let health = health.into_iter().find(|h| h["id"] == id);
            Ok(render(
                &a,
                StatusCode::OK,
                "endpoint.html",
                Some(&s),
                json!({
                    "page": "endpoints", "notice": notice(&q), "e": e, "health": health,
                    "latency": if points.is_empty() { None } else { Some(plot::latency(&points)) },
                    "failures": failures, "deliveries": deliveries,
                }),
            ))
        }
        .await
    )
}

pub(super) async fn deliveries(
    State(a): State<Shared>,
    Signed(s): Signed,
    RawQuery(q): RawQuery,
) -> Response {
    page!(a, s, async {
        let q = api::query(q.as_deref())?;
        let mut f = api::delivery_filter(&q)?;
        f.before = api::cursor_decode(&q, 'd')?.map(|v| v[0]);
        let limit = 50;
        let c = a.pool.get().await?;
        let items = db::admin::deliveries(&c, &f, limit).await?;
        let endpoints = db::admin::endpoints(&c, None).await?;
        let keep: String = q
            .iter()
            .filter(|(k, v)| k != "cursor" && k != "notice" && !v.is_empty())
            .map(|(k, v)| format!("{}={}&", form::encode(k), form::encode(v)))
            .collect();
        let next = (items.len() as i64 == limit)
            .then(|| items.last().map(|d| format!("/console/deliveries?{keep}cursor={}", api::cursor_encode(&format!("d{}", d.id)))))
            .flatten();
        let given = |n: &str| form::get(&q, n).unwrap_or_default().to_owned();
        Ok(render(&a, StatusCode::OK, "deliveries.html", Some(&s), json!({
            "page": "deliveries", "items": items, "next": next,
            "endpoints": endpoints.iter().map(|e| json!({"id": e.id, "name": e.name.clone().unwrap_or(e.url.clone())})).collect::<Vec<_>>(),
            "f": {"endpoint_id": given("endpoint_id"), "status": given("status"), "event_type": given("event_type"),
                  "event_id": given("event_id"), "source": given("source"), "since": given("since"), "until": given("until")},
            "statuses": ["pending", "delivering", "delivered", "failed", "dead"],
        })))
    }
    .await)
}

pub(super) async fn delivery(
    State(a): State<Shared>,
    Signed(s): Signed,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    page!(
        a,
        s,
        async {
            let q = api::query(q.as_deref())?;
            let id = api::id(&raw)?;
            let c = a.pool.get().await?;
            let Some(d) = db::admin::delivery(&c, id).await? else {
                return Err(Failure(StatusCode::NOT_FOUND, format!("no delivery {id}")));
            };
            drop(c);
            let sent = d.event.as_ref().map(|e| {
                let snapshot = a.snapshot.current();
                view::as_sent(&snapshot, d.delivery.endpoint_id, e)
            });
            let retryable = ["failed", "dead", "pending"].contains(&d.delivery.status.as_str());
            let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
            let body = sent.as_ref().and_then(|s| s.body.clone());
            Ok(render(
                &a,
                StatusCode::OK,
                "delivery.html",
                Some(&s),
                json!({
                    "page": "deliveries", "notice": notice(&q), "d": d.delivery, "event": d.event,
                    "payload": d.event.as_ref().map(|e| pretty(&e.payload)),
                    "previous": d.event.as_ref().and_then(|e| e.previous.as_ref()).map(pretty),
                    "attempts": d.attempts, "sent": sent, "body": body,
                    "retryable": retryable,
                }),
            ))
        }
        .await
    )
}

pub(super) async fn dead(State(a): State<Shared>, Signed(s): Signed, RawQuery(q): RawQuery) -> Response {
    page!(a, s, async {
        let q = api::query(q.as_deref())?;
        let endpoint = form::get(&q, "endpoint_id").and_then(|v| v.parse::<i64>().ok());
        let f = db::admin::DeliveryFilter {
            endpoint_id: endpoint,
            statuses: vec!["failed".into(), "dead".into()],
            before: api::cursor_decode(&q, 'd')?.map(|v| v[0]),
            ..Default::default()
        };
        let limit = 50;
        let c = a.pool.get().await?;
        let items = db::admin::deliveries(&c, &f, limit).await?;
        let status = db::ops::status(&c).await?;
        let next = (items.len() as i64 == limit)
            .then(|| {
                items.last().map(|d| {
                    let e = endpoint.map(|e| format!("endpoint_id={e}&")).unwrap_or_default();
                    format!("/console/dead?{e}cursor={}", api::cursor_encode(&format!("d{}", d.id)))
                })
            })
            .flatten();
        let groups: Vec<Value> = status
            .endpoints
            .iter()
            .filter(|e| e.dead > 0)
            .map(|e| json!({"id": e.id, "name": e.endpoint, "dead": e.dead, "state": e.state}))
            .collect();
        Ok(render(&a, StatusCode::OK, "dead.html", Some(&s), json!({
            "page": "dead", "notice": notice(&q), "items": items, "groups": groups, "next": next, "endpoint_id": endpoint,
        })))
    }
    .await)
}

pub(super) async fn inbound(State(a): State<Shared>, Signed(s): Signed, RawQuery(q): RawQuery) -> Response {
    page!(
        a,
        s,
        async {
            let q = api::query(q.as_deref())?;
            let route = form::get(&q, "route")
                .filter(|v| !v.is_empty())
                .map(str::to_owned);
            let before = api::cursor_decode(&q, 'i')?.map(|v| v[0]);
            let limit = 50;
            let c = a.pool.get().await?;
            let routes = db::admin::routes(&c).await?;
            let items = db::admin::inbound(&c, route.as_deref(), before, limit).await?;
            let next = (items.len() as i64 == limit)
                .then(|| {
                    items.last().map(|r| {
                        let rt = route
                            .as_deref()
                            .map(|v| format!("route={}&", form::encode(v)))
                            .unwrap_or_default();
                        format!(
                            "/console/inbound?{rt}cursor={}",
                            api::cursor_encode(&format!("i{}", r.id))
                        )
                    })
                })
                .flatten();
            let items: Vec<Value> = items
                .into_iter()
                .map(|r| {
                    let payload = serde_json::to_string(&r.payload).unwrap_or_default();
                    let short: String = payload.chars().take(160).collect();
                    json!({"row": r, "payload": short, "cut": payload.chars().count() > 160})
                })
                .collect();
            Ok(render(
                &a,
                StatusCode::OK,
                "inbound.html",
                Some(&s),
                json!({
                    "page": "inbound", "routes": routes, "items": items, "route": route, "next": next,
                }),
            ))
        }
        .await
    )
}

pub(super) async fn actions(State(a): State<Shared>, Signed(s): Signed, RawQuery(q): RawQuery) -> Response {
    page!(
        a,
        s,
        async {
            let q = api::query(q.as_deref())?;
            let before = api::cursor_decode(&q, 'a')?.map(|v| v[0]);
            let c = a.pool.get().await?;
            let items = db::admin::actions(&c, before, 100).await?;
            let next = (items.len() == 100)
                .then(|| {
                    items.last().map(|r| {
                        format!(
                            "/console/actions?cursor={}",
                            api::cursor_encode(&format!("a{}", r.id))
                        )
                    })
                })
                .flatten();
            let items: Vec<Value> = items
                .into_iter()
                .map(|r| json!({"row": r, "detail": serde_json::to_string(&r.detail).unwrap_or_default()}))
                .collect();
            Ok(render(
                &a,
                StatusCode::OK,
                "actions.html",
                Some(&s),
                json!({"page": "actions", "items": items, "next": next}),
            ))
        }
        .await
    )
}
