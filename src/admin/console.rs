//! `/console`: server-rendered pages (minijinja templates compiled into
//! the binary, `templates/`), inline SVG plots, one stylesheet served from
//! here, no script. Reading needs nothing but HTML; every button is a
//! form that POSTs with the session's CSRF token (`auth.rs`) and answers
//! with a redirect back to the page (`?notice=`). The pages' data are in
//! `pages.rs`, what renders them `render.rs`.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use super::auth::{self, Session};
use super::render::{message, render, Signed};
use super::{actions, api, form, Admin, Failure, Shared};

pub fn routes() -> Router<Shared> {
    use super::pages;
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(pages::overview))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/assets/console.css", get(super::render::css))
        .route("/console/endpoints", get(pages::endpoints))
        .route("/console/endpoints/{id}", get(pages::endpoint))
        .route("/console/endpoints/{id}/{action}", post(endpoint_action))
        .route("/console/deliveries", get(pages::deliveries))
        .route("/console/deliveries/{id}", get(pages::delivery))
        .route("/console/deliveries/{id}/retry", post(delivery_retry))
        .route("/console/retry", post(retry_selected))
        .route("/console/dead", get(pages::dead))
        .route("/console/inbound", get(pages::inbound))
        .route("/console/search", get(search))
        .route("/console/actions", get(pages::actions))
}

/// The sign-in form; `?next=` is the page to go to afterwards (kept only
/// if it is a path of ours: `auth::safe_next`).
async fn login_form(State(a): State<Shared>, RawQuery(q): RawQuery) -> Response {
    let q = form::pairs(q.unwrap_or_default().as_bytes());
    let next = form::get(&q, "next").and_then(auth::safe_next);
    render(&a, StatusCode::OK, "login.html", None, json!({"next": next}))
}

async fn login(
    State(a): State<Shared>,
    auth::Client(client): auth::Client,
    auth::OverTls(tls): auth::OverTls,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    if !auth::same_origin(&headers) {
        return message(
            &a,
            None,
            Failure(StatusCode::FORBIDDEN, "cross-site request refused".into()),
        );
    }
    let pairs = form::pairs(&bytes);
    let next = form::get(&pairs, "next").and_then(auth::safe_next);
    let now = std::time::Instant::now();
    if let Err(wait) = a.throttle.admit(client, now) {
        let secs = super::throttle::retry_after(wait);
        let mut page = render(
            &a,
            StatusCode::TOO_MANY_REQUESTS,
            "login.html",
            None,
            json!({"error": format!("Too many wrong tokens from your address: try again in {secs} s."), "next": next}),
        );
        page.headers_mut().insert(header::RETRY_AFTER, secs.into());
        return page;
    }
    if !a
        .keys
        .token_ok(form::get(&pairs, "token").unwrap_or_default().trim())
    {
        if a.throttle.failed(client, now) {
            tracing::warn!(client = ?client, "console: too many sign-ins with a wrong token; throttling");
        } else {
            tracing::warn!(client = ?client, "console: a sign-in with a wrong token was refused");
        }
        return render(
            &a,
            StatusCode::UNAUTHORIZED,
            "login.html",
            None,
            json!({"error": "That is not the admin token (PGWEBHOOKS_ADMIN_TOKEN).", "next": next}),
        );
    }
    let ttl = a.config.session_ttl;
    let Ok((value, session)) = a.keys.session_new(ttl, std::time::SystemTime::now()) else {
        return message(
            &a,
            None,
            Failure(StatusCode::INTERNAL_SERVER_ERROR, "no randomness".into()),
        );
    };
    let created = match a.pool.get().await {
        Ok(c) => {
            let client = client.map(|ip| ip.to_string());
            crate::db::sessions::session_create(
                &c,
                &session.id_hash(),
                ttl,
                a.config.session_idle,
                client.as_deref(),
            )
            .await
            .map_err(Failure::from)
        }
        Err(e) => Err(e.into()),
    };
    if let Err(f) = created {
        return message(&a, None, f);
    }
    super::record(&a, &session.actor(), "console.sign_in", None, json!({})).await;
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, auth::set_cookie(Some(&value), ttl, tls)),
            (header::LOCATION, next.unwrap_or("/console").to_owned()),
        ],
    )
        .into_response()
}

/// A form's fields, in order.
type Form = Vec<(String, String)>;

/// The checks every state-changing console request passes: a current
/// session, our own origin, the session's CSRF token. Returns the session
/// and the form.
async fn guard(a: &Admin, headers: &HeaderMap, bytes: &Bytes) -> Result<(Session, Form), Box<Response>> {
    let refuse =
        |m: &str, s: Option<&Session>| Err(Box::new(message(a, s, Failure(StatusCode::FORBIDDEN, m.into()))));
    let session = match auth::session_current(a, headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return refuse("not signed in: sign in at /console/login first", None),
        Err(f) => return Err(Box::new(message(a, None, f))),
    };
    if !auth::same_origin(headers) {
        tracing::warn!("console: a cross-site request was refused");
        return refuse("cross-site request refused", Some(&session));
    }
    let pairs = form::pairs(bytes);
    if !session.csrf_ok(form::get(&pairs, "csrf")) {
        tracing::warn!("console: a request without the CSRF token was refused");
        return refuse(
            "missing or wrong CSRF token: reload the page and try again",
            Some(&session),
        );
    }
    Ok((session, pairs))
}

fn back(to: &str, notice: &str) -> Response {
    Redirect::to(&format!("{to}?notice={notice}")).into_response()
}

/// Ends the session: its row is deleted, so the cookie (and any copy of
/// it) is refused from now on, not only cleared in this browser.
async fn logout(
    State(a): State<Shared>,
    auth::OverTls(tls): auth::OverTls,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let session = match guard(&a, &headers, &bytes).await {
        Ok((s, _)) => s,
        Err(r) => return *r,
    };
    let deleted = match a.pool.get().await {
        Ok(c) => crate::db::sessions::session_delete(&c, &session.id_hash())
            .await
            .map_err(Failure::from),
        Err(e) => Err(e.into()),
    };
    if let Err(f) = deleted {
        return message(&a, Some(&session), f);
    }
    super::record(&a, &session.actor(), "console.sign_out", None, json!({})).await;
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                auth::set_cookie(None, a.config.session_ttl, tls),
            ),
            (header::LOCATION, "/console/login".into()),
        ],
    )
        .into_response()
}

async fn endpoint_action(
    State(a): State<Shared>,
    headers: HeaderMap,
    Path((raw, action)): Path<(String, String)>,
    bytes: Bytes,
) -> Response {
    let (session, pairs) = match guard(&a, &headers, &bytes).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let actor = session.actor();
    let id = match api::id(&raw) {
        Ok(id) => id,
        Err(f) => return message(&a, Some(&session), f),
    };
    let to = match form::get(&pairs, "back") {
        Some("endpoints") => "/console/endpoints".to_owned(),
        Some("dead") => "/console/dead".to_owned(),
        _ => format!("/console/endpoints/{id}"),
    };
    let done = match action.as_str() {
        "pause" => actions::pause(
            &a,
            &actor,
            id,
            form::get(&pairs, "reason")
                .unwrap_or_default()
                .replace('\0', "")
                .as_str(),
        )
        .await
        .map(|_| "paused".to_owned()),
        "resume" => actions::resume(&a, &actor, id)
            .await
            .map(|_| "resumed".to_owned()),
        "rotate-secret" => actions::rotate(&a, &actor, id, None, std::time::Duration::from_secs(86_400))
            .await
            .map(|_| "rotated".to_owned()),
        "retry-dead" => actions::retry_dead(&a, &actor, id)
            .await
            .map(|n| format!("requeued-{n}")),
        "test" => match actions::test(&a, &actor, id, &crate::db::ops::TestEvent::Ping).await {
            Ok(queued) => return back(&format!("/console/deliveries/{}", queued.delivery_id), "test"),
            Err(f) => Err(f),
        },
        _ => Err(Failure(StatusCode::NOT_FOUND, format!("no action {action:?}"))),
    };
    match done {
        Ok(notice) => back(&to, &notice),
        Err(f) => message(&a, Some(&session), f),
    }
}

async fn delivery_retry(
    State(a): State<Shared>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> Response {
    let (session, _) = match guard(&a, &headers, &bytes).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let id = match api::id(&raw) {
        Ok(id) => id,
        Err(f) => return message(&a, Some(&session), f),
    };
    match actions::retry(&a, &session.actor(), &[id]).await {
        Ok(done) => back(
            &format!("/console/deliveries/{id}"),
            &format!("requeued-{}", done.len()),
        ),
        Err(f) => message(&a, Some(&session), f),
    }
}

async fn retry_selected(State(a): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    let (session, pairs) = match guard(&a, &headers, &bytes).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let ids: Option<Vec<i64>> = pairs
        .iter()
        .filter(|(k, _)| k == "id")
        .map(|(_, v)| v.parse().ok())
        .collect();
    match ids {
        Some(ids) if !ids.is_empty() && ids.len() <= 1000 => {
            match actions::retry(&a, &session.actor(), &ids).await {
                Ok(done) => back("/console/dead", &format!("requeued-{}", done.len())),
                Err(f) => message(&a, Some(&session), f),
            }
        }
        _ => message(
            &a,
            Some(&session),
            Failure(
                StatusCode::BAD_REQUEST,
                "select 1 to 1000 deliveries to retry".into(),
            ),
        ),
    }
}

/// The search box: a delivery id, an event id, `table row_key`, or an
/// event type.
async fn search(State(a): State<Shared>, Signed(s): Signed, RawQuery(q): RawQuery) -> Response {
    let q = match api::query(q.as_deref()) {
        Ok(q) => q,
        Err(f) => return message(&a, Some(&s), f),
    };
    let text = form::get(&q, "q").unwrap_or_default().trim().to_owned();
    if let Ok(id) = text.trim_start_matches('#').parse::<i64>() {
        if id > 0 {
            return Redirect::to(&format!("/console/deliveries/{id}")).into_response();
        }
    }
    if uuid::Uuid::parse_str(&text).is_ok() {
        return Redirect::to(&format!("/console/deliveries?event_id={}", form::encode(&text)))
            .into_response();
    }
    if text.split_whitespace().count() == 2 {
        return Redirect::to(&format!("/console/deliveries?source={}", form::encode(&text))).into_response();
    }
    if !text.is_empty() && !text.contains(char::is_whitespace) {
        return Redirect::to(&format!("/console/deliveries?event_type={}", form::encode(&text)))
            .into_response();
    }
    message(
        &a,
        Some(&s),
        Failure(
            StatusCode::BAD_REQUEST,
            "Search for a delivery id (42), an event id (a UUID), a source row (appointments 42) or an event type (appointment.created).".into(),
        ),
    )
}
