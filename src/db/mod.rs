//! Database access: connections and schema management.
//!
//! Every SQL statement the sidecar runs lives in this module tree, one typed
//! function per statement, so the rest of the code never builds SQL.

pub mod conninfo;
pub mod delivery;
pub mod endpoints;
pub mod migrate;
pub mod ops;
pub mod tls;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType};

pub use tls::{SslMode, TlsError, TlsSettings};

/// How long a connection may take to be set up (TCP, TLS, authentication)
/// when `DATABASE_URL` sets no `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `pool.get()` waits for a busy pool to free a connection before
/// failing. Statements are short; 30 s of a full pool means a stuck database.
pub const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors talking to Postgres; keeps the driver's error (and its SQLSTATE).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("invalid database URL: {0}")]
    Syntax(String),
    #[error("database TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot connect to the database")]
    Connect(#[source] tokio_postgres::Error),
    #[error("cannot connect to the database: no answer within {0:?} (connect_timeout; set it in DATABASE_URL to change)")]
    ConnectTimeout(Duration),
    #[error("{}", pool_message(.0))]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Other(String),
}

fn pool_message(e: &PoolError) -> &'static str {
    match e {
        PoolError::Timeout(TimeoutType::Wait) => {
            "database pool: no connection became free within the wait timeout"
        }
        PoolError::Timeout(TimeoutType::Create) => {
            "cannot connect to the database: no answer within connect_timeout (database pool)"
        }
        PoolError::Backend(_) => "cannot connect to the database (database pool)",
        _ => "database pool",
    }
}

/// Where the database is and how to reach it: the driver's settings plus
/// the TLS settings it does not know (`sslmode=verify-*`, `sslrootcert`, ...).
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub pg: tokio_postgres::Config,
    pub tls: Arc<TlsSettings>,
}

impl From<tokio_postgres::Config> for DbConfig {
    /// Settings built in code: the driver's `ssl_mode` (default `prefer`),
    /// no certificate checks.
    fn from(pg: tokio_postgres::Config) -> DbConfig {
        let mode = match pg.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        DbConfig {
            pg,
            tls: Arc::new(TlsSettings {
                mode,
                ..TlsSettings::default()
            }),
        }
    }
}

impl DbConfig {
    /// How long setting up one connection may take.
    pub fn connect_timeout(&self) -> Duration {
        self.pg
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// The whole budget of a connection attempt (each host gets its timeout).
    fn attempt_timeout(&self) -> Duration {
        self.connect_timeout() * self.pg.get_hosts().len().max(1) as u32
    }

    /// The driver's settings with the TLS mode and connect timeout applied.
    pub fn driver(&self) -> tokio_postgres::Config {
        let mut pg = self.pg.clone();
        pg.ssl_mode(self.tls.mode.driver());
        pg.connect_timeout(self.connect_timeout());
        pg
    }

    pub fn tls_connector(&self) -> tls::MakeRustls {
        tls::MakeRustls(self.tls.clone())
    }

    /// Opens one connection (TLS as configured); fails after the connect
    /// timeout, even if the server accepted TCP but never answered.
    pub async fn connect_raw(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tls::RustlsStream<tokio_postgres::Socket>>,
        ),
        DbError,
    > {
        let timeout = self.attempt_timeout();
        tokio::time::timeout(timeout, self.driver().connect(self.tls_connector()))
            .await
            .map_err(|_| DbError::ConnectTimeout(timeout))?
            .map_err(DbError::Connect)
    }
}

/// Parses a `postgres://` URL or a `key=value` connection string, with
/// libpq's TLS keys (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) and
/// their `PG*` environment fallbacks. Certificate files are read once here,
/// so a missing file is reported before any connection is tried.
pub fn parse_url(url: &str) -> Result<DbConfig, DbError> {
    parse_url_with_env(url, &|name| std::env::var(name).ok())
}

/// [`parse_url`] reading the environment through `env`.
pub fn parse_url_with_env(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<DbConfig, DbError> {
    let (rest, keys) = conninfo::split(url).map_err(DbError::Syntax)?;
    let pg = tokio_postgres::Config::from_str(&rest).map_err(DbError::Url)?;
    let tls = TlsSettings::resolve(keys, env)?;
    if tls.mode != SslMode::Disable {
        tls.client_config()?;
    }
    Ok(DbConfig {
        pg,
        tls: Arc::new(tls),
    })
}

/// Opens one connection outside any pool; its driver task runs until the
/// client is dropped.
pub async fn connect(config: &DbConfig) -> Result<tokio_postgres::Client, DbError> {
    let (client, connection) = config.connect_raw().await?;
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
/// `get()` waits at most [`POOL_WAIT_TIMEOUT`] for a free connection, and
/// a new connection may take the connect timeout.
pub fn pool(config: impl Into<DbConfig>, size: usize) -> Pool {
    pool_with_wait(config, size, POOL_WAIT_TIMEOUT)
}

/// [`pool`] with another wait timeout.
pub fn pool_with_wait(config: impl Into<DbConfig>, size: usize, wait: Duration) -> Pool {
    let config = config.into();
    let manager = Manager::from_config(
        config.driver(),
        config.tls_connector(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(config.attempt_timeout()))
        .build()
        .expect("a pool with a runtime and no hooks always builds")
}
