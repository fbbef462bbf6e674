//! Test support: real Postgres (`db`), conditions with deadlines (`wait`).

pub mod db;
pub mod receiver;
pub mod sidecar;
pub mod wait;

pub use db::TestDb;
pub use receiver::{Receiver, Reply};
