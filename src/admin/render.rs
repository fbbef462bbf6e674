//! What every console page is rendered with: the templates (minijinja,
//! compiled into the binary), the stylesheet, a page saying what went
//! wrong, and the signed-in request. The routes are `console.rs`'s; the
//! pages' data `pages.rs`'s.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Value};

use super::auth::{self, Session};
use super::{Admin, Failure, Shared};

pub(super) const CSS: &str = include_str!("assets/console.css");

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("message.html", include_str!("templates/message.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("endpoints.html", include_str!("templates/endpoints.html")),
    ("endpoint.html", include_str!("templates/endpoint.html")),
    ("deliveries.html", include_str!("templates/deliveries.html")),
    ("delivery.html", include_str!("templates/delivery.html")),
    ("dead.html", include_str!("templates/dead.html")),
    ("inbound.html", include_str!("templates/inbound.html")),
    ("actions.html", include_str!("templates/actions.html")),
];

/// The templates, parsed once (a broken one fails the first test that
/// starts an admin listener, not a page at run time).
pub(super) fn templates() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    for (name, source) in TEMPLATES {
        env.add_template(name, source).expect("console templates parse");
    }
    env
}

pub(super) async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

/// Renders `name` with `ctx` (plus the session's CSRF token for forms).
pub(super) fn render(
    a: &Admin,
    status: StatusCode,
    name: &str,
    session: Option<&Session>,
    mut ctx: Value,
) -> Response {
    if let Some(obj) = ctx.as_object_mut() {
        obj.insert("csrf".into(), json!(session.map(|s| s.csrf.clone())));
        obj.insert("signed_in".into(), json!(session.is_some()));
        obj.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    }
    match a
        .templates
        .get_template(name)
        .and_then(|t| t.render(minijinja::value::Serde(&ctx)))
    {
        Ok(html) => (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(e) => {
            tracing::error!(template = name, error = %e, "console: a page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render (logged)",
            )
                .into_response()
        }
    }
}

/// A page saying what went wrong, with a way back.
pub(super) fn message(a: &Admin, session: Option<&Session>, f: Failure) -> Response {
    render(
        a,
        f.0,
        "message.html",
        session,
        json!({"title": f.0.canonical_reason(), "message": f.1}),
    )
}

/// The sign-in page, remembering the page that was asked for.
fn login_for(parts: &Parts) -> String {
    match parts.uri.path_and_query().map(|p| p.as_str()) {
        Some(asked) if asked != "/console" && auth::safe_next(asked).is_some() => {
            format!("/console/login?next={}", super::form::encode(asked))
        }
        _ => "/console/login".into(),
    }
}

/// A signed-in console request (`auth::session_current`); otherwise the
/// login page, which comes back here once signed in.
pub(super) struct Signed(pub(super) Session);

impl FromRequestParts<Shared> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, a: &Shared) -> Result<Self, Self::Rejection> {
        match auth::session_current(a, &parts.headers).await {
            Ok(Some(s)) => Ok(Signed(s)),
            Ok(None) => Err(Redirect::to(&login_for(parts)).into_response()),
            Err(f) => Err(message(a, None, f)),
        }
    }
}
