//! Test support: real Postgres (`db`), conditions with deadlines (`wait`).

pub mod db;
pub mod wait;

pub use db::TestDb;
