//! The integration tests: one binary, real Postgres, real HTTP.

mod support;

mod capture;
mod capture_payload;
mod capture_security;
mod delivery;
mod endpoints;
mod example_app;
mod example_routes;
mod faults;
mod inbound;
mod inbound_corpus;
mod migrate;
mod operations;
mod outgoing;
mod record;
mod roles;
mod shaping;
mod timeouts;
mod tls;
