//! pgwebhooks: a Postgres-native webhook sidecar.
//!
//! Triggers in the app's database write outbox rows (`webhooks.events`) in
//! the app's own transaction; the sidecar fans them out to subscriptions,
//! delivers them as signed HTTP requests and records every attempt. The
//! modules follow the pipeline — listen → claim → dispatch → deliver →
//! record — and `ARCHITECTURE.md` has the map and the invariants.

#![warn(unreachable_pub)]

pub mod admin;
pub(crate) mod body;
pub(crate) mod breaker;
pub(crate) mod claim;
pub mod config;
pub mod db;
pub mod deliver;
pub mod demo;
pub(crate) mod dispatch;
pub mod endpoints;
pub mod env_endpoints;
pub(crate) mod errors;
pub mod inbound;
pub mod job;
pub(crate) mod limiter;
pub mod listen;
pub mod localpg;
pub(crate) mod maintain;
pub(crate) mod notice;
pub mod record;
pub(crate) mod redact;
pub mod sidecar;
pub mod sign;
pub mod telemetry;
pub(crate) mod template;
pub(crate) mod urlencoded;
