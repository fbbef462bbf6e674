//! The admin listener: the operator console (`/console`, server-rendered
//! HTML, usable without JavaScript) and the management API (`/api/v1`,
//! JSON, described by `openapi.json`), on their own address
//! (`PGWEBHOOKS_ADMIN_LISTEN`, loopback by default), never the inbound one.
//!
//! Both are thin: reads are `db::admin`, actions are the operator
//! functions the CLI calls (`db::ops`, `db::endpoints`), and each action
//! is recorded in `webhooks.admin_actions`. Authentication (`auth.rs`):
//! `PGWEBHOOKS_ADMIN_TOKEN` as `Authorization: Bearer` for the API, a login
//! form and a signed HttpOnly SameSite=Strict cookie for the console, its
//! session a row of `webhooks.admin_sessions` that sign-out deletes; its
//! POSTs also carry a CSRF token and must come from the console's own
//! origin. Without a token the listener refuses everything and says how to
//! set one. Connections are served by the inbound server's loop (same
//! limits).

mod actions;
pub mod api;
pub mod auth;
pub mod console;
mod form;
pub mod hosts;
mod pages;
mod plot;
mod render;
mod spec;
pub mod throttle;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use deadpool_postgres::Pool;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::db::DbError;

/// The admin API's OpenAPI document (served at `/api/v1/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Shortest admin token accepted.
pub const MIN_TOKEN: usize = 16;

/// What to do when no token is configured.
pub const NO_TOKEN: &str = "the pgwebhooks admin listener is disabled: no admin token is configured. \
Set PGWEBHOOKS_ADMIN_TOKEN (at least 16 printable characters, e.g. `openssl rand -hex 32`) and restart \
`pgwebhooks run`; then open /console and sign in with it, or call /api/v1 with `Authorization: Bearer <token>`.";

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// `None`: `Sidecar::start` does not bind the listener (it warns);
    /// a router built without one refuses every request with [`NO_TOKEN`].
    pub token: Option<Secret>,
    /// Endpoints created or changed here may point at private addresses.
    pub allow_private_targets: bool,
    /// How long a console session lasts at most, used or not.
    pub session_ttl: Duration,
    /// A console session unused this long has ended.
    pub session_idle: Duration,
    /// Names the listener answers to besides loopback and its own address
    /// (`hosts.rs`).
    pub hosts: Vec<hosts::AllowedHost>,
    /// How wrong tokens are throttled.
    pub throttle: throttle::ThrottleConfig,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9477)),
            token: None,
            allow_private_targets: false,
            session_ttl: Duration::from_secs(12 * 3600),
            session_idle: Duration::from_secs(3600),
            hosts: Vec::new(),
            throttle: Default::default(),
        }
    }
}

/// What every handler shares.
pub struct Admin {
    pub pool: Pool,
    /// The sidecar's copy of the endpoints (to rebuild a body as sent).
    pub snapshot: crate::endpoints::Subscriptions,
    pub config: AdminConfig,
    pub keys: auth::Keys,
    pub throttle: throttle::Throttle,
    pub templates: minijinja::Environment<'static>,
    /// What this replica knows that the database cannot say (Postgres
    /// refusing its writes): a line for the overview and the status.
    pub health: Health,
}

/// See [`Admin::health`].
pub type Health = Arc<dyn Fn() -> Option<String> + Send + Sync>;

type Shared = Arc<Admin>;

/// The admin router; without a token, one that refuses everything.
pub fn router(pool: Pool, snapshot: crate::endpoints::Subscriptions, config: AdminConfig) -> Router {
    router_with_health(pool, snapshot, config, Arc::new(|| None))
}

/// [`router`], with the replica's own [`Health`].
pub fn router_with_health(
    pool: Pool,
    snapshot: crate::endpoints::Subscriptions,
    config: AdminConfig,
    health: Health,
) -> Router {
    let Some(token) = config.token.clone() else {
        return Router::new()
            .fallback(|| async {
                (
                    StatusCode::FORBIDDEN,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    NO_TOKEN,
                )
            })
            .layer(axum::middleware::map_response(secure_headers));
    };
    let admin = Arc::new(Admin {
        pool,
        snapshot,
        keys: auth::Keys::new(&token),
        throttle: throttle::Throttle::new(config.throttle),
        config,
        templates: render::templates(),
        health,
    });
    Router::new()
        .merge(api::routes())
        .merge(console::routes())
        .fallback(|| async { api::error(StatusCode::NOT_FOUND, "not found") })
        .layer(axum::middleware::from_fn_with_state(admin.clone(), check_host))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(admin)
}

/// Serves only requests addressed to one of our names (`hosts.rs`), and
/// tells the handlers how (`hosts::Served`); anything else gets 421 and
/// nothing of ours.
async fn check_host(
    axum::extract::State(a): axum::extract::State<Shared>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let local = req.extensions().get::<crate::inbound::LocalAddr>().map(|l| l.0);
    let served = hosts::served(&a.config.hosts, header, local);
    // An absolute-form target (`GET http://evil.example/ HTTP/1.1`) names
    // a host too: it must be ours as well.
    let target_ok = req
        .uri()
        .authority()
        .is_none_or(|t| hosts::served(&a.config.hosts, t.as_str(), local).is_some());
    match served {
        Some(s) if target_ok => {
            req.extensions_mut().insert(s);
            next.run(req).await
        }
        _ => {
            tracing::debug!("admin: a request for another host was refused");
            (
                StatusCode::MISDIRECTED_REQUEST,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "this admin listener does not answer to that Host: reach it as localhost or by its address, \
                 or add the name to PGWEBHOOKS_ADMIN_HOSTS",
            )
                .into_response()
        }
    }
}

/// No framing, no sniffing, no referrer to other sites (with
/// `no-referrer` a browser sends `Origin: null`, which our own forms would
/// fail), nothing cached, nothing loaded
/// from anywhere but here (the console has no inline script at all).
async fn secure_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    }
    resp
}

/// Binds `config.listen` and serves `router` until `shutdown` (the inbound
/// server's connection loop and limits).
pub async fn serve(
    router: Router,
    config: &AdminConfig,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let limits = crate::inbound::InboundConfig {
        listen: config.listen,
        max_connections: 64,
        ..Default::default()
    };
    crate::inbound::serve(router, &limits, shutdown).await
}

/// A failed request: a status and a message safe to show.
#[derive(Debug)]
pub struct Failure(pub StatusCode, pub String);

impl From<DbError> for Failure {
    /// The caller's mistake (bad value, refused by a function's own
    /// check) is a 4xx with Postgres's message; anything else is a 500
    /// without internals (logged).
    fn from(e: DbError) -> Failure {
        if let Some(d) = e.as_db_error() {
            let code = d.code().code();
            use crate::db::sqlstate;
            let status = match &code[..2] {
                _ if code == sqlstate::NOT_FOUND || code == "P0002" => Some(StatusCode::NOT_FOUND),
                _ if code == sqlstate::CONFLICT => Some(StatusCode::CONFLICT),
                _ if code == "42501" => Some(StatusCode::FORBIDDEN),
                "23" | "55" => Some(StatusCode::CONFLICT),
                "22" | "P0" => Some(StatusCode::BAD_REQUEST),
                _ => None,
            };
            if let Some(status) = status {
                return Failure(status, crate::db::server_message(d));
            }
        }
        if let DbError::Other(m) = &e {
            return Failure(StatusCode::BAD_REQUEST, m.clone());
        }
        tracing::error!(error = %crate::errors::error_chain(&e), "admin: database error");
        Failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error (logged)".into(),
        )
    }
}

impl From<deadpool_postgres::PoolError> for Failure {
    fn from(e: deadpool_postgres::PoolError) -> Failure {
        tracing::error!(error = %crate::errors::error_chain(&e), "admin: no database connection");
        Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is unavailable".into(),
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({"error": self.1}))).into_response()
    }
}

/// Records an action; a failure to record is logged, never hidden by
/// pretending the action did not happen.
pub async fn record(
    admin: &Admin,
    actor: &str,
    action: &str,
    target: Option<&str>,
    detail: serde_json::Value,
) {
    let result = match admin.pool.get().await {
        Ok(c) => crate::db::admin::action_record(&c, actor, action, target, &detail).await,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = result {
        tracing::error!(actor, action, error = %crate::errors::error_chain(&e), "admin: could not record an action");
    }
}
