//! The integration tests: one binary, real Postgres, real HTTP.

mod support;

mod admin;
mod admin_console;
mod admin_sessions;
mod capture;
mod capture_failopen;
mod capture_isolation;
mod capture_payload;
mod capture_security;
mod cli;
mod console_browser;
mod delivery;
mod demo;
mod endpoints;
mod example_app;
mod example_routes;
mod faults;
mod fencing;
mod inbound;
mod inbound_corpus;
mod logs;
mod migrate;
mod migrate_v15;
mod operations;
mod ops_events;
mod outgoing;
mod recipes;
mod record;
mod roles;
mod shaping;
mod stages;
mod timeouts;
mod tls;
