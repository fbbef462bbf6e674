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
