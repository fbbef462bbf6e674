//! Test support: real Postgres (`db`), a test's app and its verbs (`app`),
//! conditions with deadlines (`wait`).

pub mod app;
pub mod db;
pub mod disk;
pub mod proxy;
pub mod receiver;
pub mod sidecar;
pub mod wait;

pub use app::{count, one, TestApp};
pub use db::{Notices, TestDb};
pub use receiver::{Receiver, Reply};
