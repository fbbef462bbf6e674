//! A test's app: a fresh database, a connection to it, and the verbs tests
//! are written in (emit, seed, add an endpoint, count what was delivered,
//! run the command line, start the sidecar).

use serde_json::Value;
use tokio_postgres::types::FromSqlOwned;
use tokio_postgres::Client;
use uuid::Uuid;

use super::sidecar::{self, Running};
use super::TestDb;

pub struct TestApp {
    pub db: TestDb,
    pub c: Client,
}

#[allow(dead_code)] // not every test uses every verb
impl TestApp {
    pub async fn new() -> TestApp {
        let db = TestDb::new().await;
        let c = db.client().await;
        TestApp { db, c }
    }

    /// `webhooks.emit(event_type, data)`; the event's id.
    pub async fn emit(&self, event_type: &str, data: Value) -> Uuid {
        self.c
            .query_one("SELECT webhooks.emit($1, $2)", &[&event_type, &data])
            .await
            .unwrap()
            .get(0)
    }

    /// `n` events of `event_type` (`{"n": 1..n}`) in one transaction.
    pub async fn seed(&self, event_type: &str, n: i64) {
        self.c
            .execute(
                "SELECT webhooks.emit($1, jsonb_build_object('n', g)) FROM generate_series(1, $2::bigint) g",
                &[&event_type, &n],
            )
            .await
            .unwrap();
    }

    /// An endpoint for `url` taking `events` (`extra`: an SQL SET list).
    pub async fn add_endpoint(&self, url: &str, events: &[&str], extra: &str) -> i64 {
        sidecar::endpoint(&self.c, url, events, extra).await
    }

    /// The one value `sql` selects.
    pub async fn one<T: FromSqlOwned>(&self, sql: &str) -> T {
        one(&self.c, sql).await
    }

    /// Deliveries to endpoint `id` that are delivered.
    pub async fn delivered(&self, id: i64) -> i64 {
        self.c
            .query_one(
                "SELECT count(*) FROM webhooks.deliveries WHERE endpoint_id = $1 AND status = 'delivered'",
                &[&id],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// `pgwebhooks args…` against this database (asynchronous: a sidecar on
    /// the test's runtime keeps running): (success, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.db.cli(args).await
    }

    /// The sidecar, in-process, with test-sized settings.
    pub async fn start(&self) -> Running {
        sidecar::start(sidecar::config(&self.db)).await
    }
}

/// The one value `sql` selects.
pub async fn one<T: FromSqlOwned>(c: &Client, sql: &str) -> T {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// `one` for counts.
#[allow(dead_code)]
pub async fn count(c: &Client, sql: &str) -> i64 {
    one(c, sql).await
}
