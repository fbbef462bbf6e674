//! Database access: connections and schema management.
//!
//! Every SQL statement the sidecar runs lives in this module tree, one typed
//! function per statement, so the rest of the code never builds SQL.

pub mod delivery;
pub mod endpoints;
pub mod migrate;
pub mod ops;

use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

/// Errors talking to Postgres; keeps the driver's error (and its SQLSTATE).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("cannot connect to the database")]
    Connect(#[source] tokio_postgres::Error),
    #[error("database pool")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Other(String),
}

/// Parses a `postgres://` URL or a `key=value` connection string.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
    tokio_postgres::Config::from_str(url).map_err(DbError::Url)
}

/// Opens one connection outside any pool; its driver task runs until the
/// client is dropped.
pub async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, DbError> {
    let (client, connection) = config.connect(NoTls).await.map_err(DbError::Connect)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "database connection closed");
        }
    });
    Ok(client)
}

/// The sidecar's session settings, added to whatever the URL set: its
/// statements are short, and JIT only ever slows them down (the endpoints
/// load was JIT-compiled for ~0.6 s at every start and reload).
pub fn tuned(mut config: tokio_postgres::Config) -> tokio_postgres::Config {
    let options = match config.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} -c jit=off"),
        _ => "-c jit=off".to_owned(),
    };
    config.options(&options);
    if config.get_application_name().is_none() {
        config.application_name("pgwebhooks");
    }
    config
}

/// A pool of `size` connections; health is checked when a connection is
/// taken back out, so a Postgres restart costs one failed query at most.
pub fn pool(config: tokio_postgres::Config, size: usize) -> Pool {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .expect("a pool without timeouts or hooks always builds")
}
