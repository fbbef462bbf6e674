//! pgwebhooks: a Postgres-native webhook sidecar.
//!
//! Triggers in the app's database write outbox rows (`webhooks.events`) in
//! the app's own transaction; the sidecar fans them out to subscriptions,
//! delivers them as signed HTTP requests and records every attempt. The
//! modules follow the pipeline — listen → claim → dispatch → deliver →
//! record — and `ARCHITECTURE.md` has the map and the invariants.

pub mod admin;
pub mod claim;
pub mod config;
pub mod db;
pub mod deliver;
pub mod demo;
pub mod dispatch;
pub mod endpoints;
pub mod env_endpoints;
pub mod event;
pub mod inbound;
pub mod limiter;
pub mod listen;
pub mod localpg;
pub mod maintain;
pub mod notice;
pub mod record;
pub mod sidecar;
pub mod telemetry;
