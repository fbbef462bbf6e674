//! pgwebhooks: a Postgres-native webhook sidecar.
//!
//! Triggers in the app's database write outbox rows (`webhooks.events`) in
//! the app's own transaction; the sidecar fans them out to subscriptions,
//! delivers them as signed HTTP requests and records every attempt. The
//! modules follow the pipeline; `ARCHITECTURE.md` has the map and the
//! invariants.

pub mod config;
pub mod db;
