//! What the console's buttons and the API's POSTs do: each is the
//! operator function the CLI calls (`db::ops`, `db::endpoints`), then a
//! row in `webhooks.admin_actions` saying who did it.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;

use super::spec::{self, Spec};
use super::{record, Admin, Failure};
use crate::db;
use crate::db::endpoints::{Deleted, NewEndpoint, UpdateError};
use crate::deliver::target::{self, TargetError};
use crate::sign::generate_secret;

fn not_found(id: i64) -> Failure {
    Failure(StatusCode::NOT_FOUND, format!("no endpoint {id}"))
}

pub(super) async fn pause(a: &Admin, actor: &str, id: i64, reason: &str) -> Result<(), Failure> {
    let reason = match reason.trim() {
        "" => format!("paused from the console/API by {actor}"),
        r => r.chars().take(500).collect(),
    };
    let c = a.pool.get().await?;
    if !db::endpoints::set_enabled(&c, id, false, &reason).await? {
        return Err(not_found(id));
    }
    record(
        a,
        actor,
        "endpoint.pause",
        Some(&format!("endpoint {id}")),
        json!({"reason": reason}),
    )
    .await;
    Ok(())
}

pub(super) async fn resume(a: &Admin, actor: &str, id: i64) -> Result<(), Failure> {
    let c = a.pool.get().await?;
    if !db::endpoints::set_enabled(&c, id, true, "").await? {
        return Err(not_found(id));
    }
    record(
        a,
        actor,
        "endpoint.resume",
        Some(&format!("endpoint {id}")),
        json!({}),
    )
    .await;
    Ok(())
}

/// Queues one test event for the endpoint alone (the ping, a copy of the
/// latest stored event of a type, or a sample), as `endpoint test` does;
/// like it, the test is tried once: a watcher withdraws what is still
/// waiting after the first attempt (or after 30 s).
pub(super) async fn test(
    a: &Admin,
    actor: &str,
    id: i64,
    what: &db::ops::TestEvent,
) -> Result<db::ops::QueuedTest, Failure> {
    let c = a.pool.get().await?;
    let queued = db::ops::endpoint_test(&c, id, what).await?;
    drop(c);
    let delivery = queued.delivery_id;
    record(
        a,
        actor,
        "endpoint.test",
        Some(&format!("endpoint {id}")),
        json!({"delivery_id": delivery, "event_type": queued.event.event_type}),
    )
    .await;
    let pool = a.pool.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if let Ok(c) = pool.get().await {
                if matches!(db::ops::first_attempt(&c, delivery).await, Ok(Some(_))) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await; // poll, bounded by the deadline
        }
        if let Ok(c) = pool.get().await {
            let _ = db::ops::endpoint_test_cancel(&c, delivery).await;
        }
    });
    Ok(queued)
}

/// A new signing secret (generated when `secret` is `None`, and then
/// returned: the only time it is shown); older ones sign for `overlap`.
pub(super) async fn rotate(
    a: &Admin,
    actor: &str,
    id: i64,
    secret: Option<String>,
    overlap: Duration,
) -> Result<Option<String>, Failure> {
    let (secret, generated) = match secret {
        Some(s) => {
            crate::sign::SigningKey::parse(&s)
                .map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("secret: {e}")))?;
            (s, false)
        }
        None => (
            generate_secret()
                .map_err(|_| Failure(StatusCode::INTERNAL_SERVER_ERROR, "no randomness".into()))?,
            true,
        ),
    };
    let mut c = a.pool.get().await?;
    if !db::endpoints::rotate_secret(&mut c, id, &secret, overlap).await? {
        return Err(not_found(id));
    }
    record(
        a,
        actor,
        "endpoint.rotate_secret",
        Some(&format!("endpoint {id}")),
        json!({"overlap_seconds": overlap.as_secs(), "generated": generated}),
    )
    .await;
    Ok(generated.then_some(secret))
}

/// Re-queues these deliveries; returns the ids re-queued.
pub(super) async fn retry(a: &Admin, actor: &str, ids: &[i64]) -> Result<Vec<i64>, Failure> {
    let c = a.pool.get().await?;
    let done = db::ops::retry(&c, ids).await?;
    record(
        a,
        actor,
        "delivery.retry",
        None,
        json!({"ids": ids, "requeued": done}),
    )
    .await;
    Ok(done)
}

pub(super) async fn retry_dead(a: &Admin, actor: &str, id: i64) -> Result<i32, Failure> {
    let c = a.pool.get().await?;
    if db::admin::endpoints(&c, Some(id)).await?.is_empty() {
        return Err(not_found(id));
    }
    let n = db::ops::retry_dead(&c, Some(id)).await?;
    record(
        a,
        actor,
        "endpoint.retry_dead",
        Some(&format!("endpoint {id}")),
        json!({"requeued": n}),
    )
    .await;
    Ok(n)
}

pub(super) async fn replay(a: &Admin, actor: &str, id: i64, since: &str) -> Result<i32, Failure> {
    let c = a.pool.get().await?;
    let n = db::ops::replay(&c, id, since).await?;
    record(
        a,
        actor,
        "endpoint.replay",
        Some(&format!("endpoint {id}")),
        json!({"since": since, "requeued": n}),
    )
    .await;
    Ok(n)
}

async fn check_target(a: &Admin, url: &str) -> Result<(), Failure> {
    match target::check_resolved(url, a.config.allow_private_targets).await {
        Ok(_) | Err(TargetError::Unresolved { .. }) => Ok(()),
        Err(e) => Err(Failure(StatusCode::BAD_REQUEST, format!("url: {e}"))),
    }
}

/// Creates an endpoint; returns its id and the secret when it was generated.
pub(super) async fn create(a: &Admin, actor: &str, s: &Spec) -> Result<(i64, Option<String>), Failure> {
    let bad = |m: String| Failure(StatusCode::BAD_REQUEST, m);
    let Some(url) = &s.url else {
        return Err(bad("url is required".into()));
    };
    let mut e = NewEndpoint::with_defaults();
    spec::apply(s, &mut e).map_err(bad)?;
    if s.ignore_origins.is_none() && (e.make || crate::endpoints::is_make_url(url)) {
        e.ignore_origins = vec!["inbound/*".into()];
    }
    let generated = if e.secret.is_empty() {
        e.secret = generate_secret()
            .map_err(|_| Failure(StatusCode::INTERNAL_SERVER_ERROR, "no randomness".into()))?;
        Some(e.secret.clone())
    } else {
        None
    };
    check_target(a, url).await?;
    let mut c = a.pool.get().await?;
    if let Some(f) = &e.filter {
        db::endpoints::check_filter(&c, f)
            .await
            .map_err(|m| bad(format!("filter: {m}")))?;
    }
    let id = db::endpoints::add(&mut c, &e).await?;
    record(
        a,
        actor,
        "endpoint.create",
        Some(&format!("endpoint {id}")),
        json!({"name": e.name}),
    )
    .await;
    Ok((id, generated))
}

pub(super) async fn update(a: &Admin, actor: &str, id: i64, s: &Spec) -> Result<(), Failure> {
    if let Some(url) = &s.url {
        target::parse(url).map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("url: {e}")))?;
        check_target(a, url).await?;
    }
    let mut c = a.pool.get().await?;
    let result = db::endpoints::update(&mut c, id, |before| {
        let mut after = before.clone();
        spec::apply(s, &mut after)?;
        Ok(after)
    })
    .await;
    match result {
        Ok(Some(_)) => {}
        Ok(None) => return Err(not_found(id)),
        Err(UpdateError::Refused(m)) => return Err(Failure(StatusCode::BAD_REQUEST, m)),
        Err(UpdateError::Db(e)) => return Err(e.into()),
    }
    record(
        a,
        actor,
        "endpoint.update",
        Some(&format!("endpoint {id}")),
        json!({}),
    )
    .await;
    Ok(())
}

pub(super) async fn delete(
    a: &Admin,
    actor: &str,
    id: i64,
    force: bool,
) -> Result<serde_json::Value, Failure> {
    let mut c = a.pool.get().await?;
    let out = match db::endpoints::delete(&mut c, id, force, Some(actor)).await? {
        Deleted::NotFound => return Err(not_found(id)),
        Deleted::Refused(w) => {
            return Err(Failure(
                StatusCode::CONFLICT,
                format!(
                    "endpoint {id} not deleted: {} deliveries wait ({}); pause it to keep them, or pass force=true to drop them",
                    w.total(),
                    w.describe()
                ),
            ))
        }
        Deleted::Done { deliveries, dropped, event } => {
            json!({"deleted": true, "deliveries": deliveries, "dropped": dropped.total(), "event_id": event})
        }
    };
    record(
        a,
        actor,
        "endpoint.delete",
        Some(&format!("endpoint {id}")),
        out.clone(),
    )
    .await;
    Ok(out)
}
