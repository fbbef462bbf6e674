//! Pool and connect timeouts (audit L9): an exhausted pool and a database
//! that accepts TCP but never answers give a clear error, not a stall.

use std::time::{Duration, Instant};

use pgwebhooks::db::{self, DbError};

use crate::support::TestDb;

#[tokio::test]
async fn exhausted_pool_fails_after_its_wait_timeout() {
    let db = TestDb::new().await;
    let pool = db::pool_with_wait(db.config().clone(), 1, Duration::from_millis(300));
    let held = pool.get().await.expect("the only connection");
    let start = Instant::now();
    let error = DbError::from(pool.get().await.expect_err("no connection is free"));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    assert!(
        matches!(
            &error,
            DbError::Pool(deadpool_postgres::PoolError::Timeout(
                deadpool_postgres::TimeoutType::Wait
            ))
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("no connection became free"), "{error}");
    drop(held);
    let _again = pool.get().await.expect("free again once returned");
}

/// A server that accepts connections and never says a word.
async fn silent_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

#[tokio::test]
async fn silent_database_times_out_connect_and_pool() {
    let (port, server) = silent_server().await;
    let url = format!("postgres://u:hunter2-secret@127.0.0.1:{port}/db?connect_timeout=1");
    let config = db::parse_url_with_env(&url, &|_| None).unwrap();

    let start = Instant::now();
    let error = db::connect(&config).await.expect_err("nobody answers");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert!(
        matches!(error, DbError::ConnectTimeout(d, _) if d == Duration::from_secs(1)),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("no answer within 1s"), "{message}");
    assert!(
        message.contains(&format!("at 127.0.0.1:{port} (db db)")),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");

    let pool = db::pool(config, 2);
    let start = Instant::now();
    let error = DbError::from(pool.get().await.expect_err("nobody answers"));
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert!(error.to_string().contains("connect_timeout"), "{error}");

    // Without connect_timeout in the URL, the default applies.
    let config = db::parse_url_with_env(&format!("postgres://u@127.0.0.1:{port}/db"), &|_| None).unwrap();
    assert_eq!(config.connect_timeout(), db::DEFAULT_CONNECT_TIMEOUT);
    server.abort();
}

/// `SHOW name` on `c`.
async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    c.query_one(&format!("SHOW {name}"), &[]).await.unwrap().get(0)
}

/// Issue #24: a replica frozen or cut off inside a transaction of ours once
/// held every replica's fan-out horizon (and its rows' locks) until TCP gave
/// up, hours later. Each session of the sidecar is now bounded by the
/// server, from the lease: the transaction is ended within a fifth of it.
#[tokio::test]
async fn a_sidecar_session_idle_in_a_transaction_is_ended_by_the_server() {
    let db = TestDb::new().await;
    let mut config = crate::support::sidecar::config(&db);
    config.claim.lease = Duration::from_secs(5);
    let stages = pgwebhooks::sidecar::Stages::assemble(config).await.unwrap();
    let c = stages.pool.get().await.unwrap();
    assert_eq!(show(&c, "idle_in_transaction_session_timeout").await, "1s");
    assert_eq!(show(&c, "statement_timeout").await, "2500ms");
    assert_eq!(show(&c, "lock_timeout").await, "1s");

    // What a frozen recorder leaves: a transaction with an xid, then nothing.
    c.batch_execute("BEGIN; SELECT txid_current()").await.unwrap();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let idle_since = Instant::now();
    let watcher = db.client().await;
    crate::support::wait::until(
        "the server to end the idle transaction",
        Duration::from_secs(10),
        || async {
            let alive = watcher
                .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await
                .unwrap();
            alive.is_none().then_some(())
        },
    )
    .await;
    let took = idle_since.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "ended before its bound: {took:?}"
    );
    assert!(c.query_one("SELECT 1", &[]).await.is_err(), "the session is gone");

    // A setting of the user's own in DATABASE_URL (`options`) wins over ours.
    let mut config = crate::support::sidecar::config(&db);
    config.claim.lease = Duration::from_secs(5);
    config
        .database
        .pg
        .options("-c lock_timeout=0 -c idle_in_transaction_session_timeout=7s");
    let stages = pgwebhooks::sidecar::Stages::assemble(config).await.unwrap();
    let c = stages.pool.get().await.unwrap();
    assert_eq!(show(&c, "lock_timeout").await, "0");
    assert_eq!(show(&c, "idle_in_transaction_session_timeout").await, "7s");
    assert_eq!(
        show(&c, "statement_timeout").await,
        "2500ms",
        "ours where the URL says nothing"
    );
}

/// `migrate` and the one-shot commands: a migration over a big table may
/// run long, so only an idle transaction is bounded.
#[tokio::test]
async fn migrate_sessions_have_no_statement_or_lock_timeout() {
    let db = TestDb::new().await;
    let config = db::DbConfig::from(db.config().clone()).bounded(&db::SessionBounds::tool());
    let c = db::connect(&config).await.unwrap();
    assert_eq!(show(&c, "statement_timeout").await, "0");
    assert_eq!(show(&c, "lock_timeout").await, "0");
    assert_eq!(show(&c, "idle_in_transaction_session_timeout").await, "1min");
}
