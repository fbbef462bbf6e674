//! Database access: connections and schema management.
//!
//! Every SQL statement the sidecar runs lives in this module tree, one typed
//! function per statement, so the rest of the code never builds SQL.

pub mod admin;
pub mod conninfo;
pub mod console;
pub mod delivery;
pub mod endpoints;
pub mod migrate;
pub mod ops;
pub mod tls;

/// The SQLSTATEs pgwebhooks' own functions raise where no standard code
/// says it exactly (class `WH`, which PostgreSQL leaves to applications).
/// Bad arguments keep the standard `22023` (invalid_parameter_value) and a
/// caller without the rights `42501` (insufficient_privilege).
pub mod sqlstate {
    /// What was asked for does not exist: no such endpoint, row or event
    /// (`webhooks.replay`, `resend`, `endpoint_test`).
    pub const NOT_FOUND: &str = "WH404";
    /// Not now: the endpoint is paused (`webhooks.endpoint_test`).
    pub const CONFLICT: &str = "WH409";
    /// An inbound handler rejected the callback (raised by the app's
    /// handler; answered 422).
    pub const HANDLER_REJECTED: &str = "WH422";
}

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
///
/// Each message is whole: it says what is wrong (with the driver's or the
/// server's reason) and, where there is one, what to do. None of them
/// chains to the driver's error as its `source()`, so printing the chain
/// never repeats it ("db error: db error: …").
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {}", driver_reason(.0))]
    Url(tokio_postgres::Error),
    #[error("invalid database URL: {0}")]
    Syntax(String),
    #[error("database TLS: {0}")]
    Tls(#[from] TlsError),
    /// A connection attempt failed; `target` is `host:port (db name)`.
    #[error("{}", connect_message(target, .error))]
    Connect {
        target: String,
        error: tokio_postgres::Error,
    },
    /// No connection within the connect timeout; the target as in `Connect`.
    #[error("cannot connect to the database at {1}: no answer within {0:?} (connect_timeout; set it in DATABASE_URL to change) — is the host right? is a firewall dropping packets?")]
    ConnectTimeout(Duration, String),
    #[error("{}", pool_message(.0))]
    Pool(PoolError),
    #[error("{}", query_message(.0))]
    Query(tokio_postgres::Error),
    #[error("{0}")]
    Other(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        DbError::Query(e)
    }
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> DbError {
        DbError::Pool(e)
    }
}

impl DbError {
    /// The server's error, if the statement reached it.
    pub fn as_db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            DbError::Query(e) | DbError::Url(e) | DbError::Connect { error: e, .. } => e.as_db_error(),
            DbError::Pool(PoolError::Backend(e)) => e.as_db_error(),
            _ => None,
        }
    }

    /// True when the error says the `webhooks` schema, or one of its
    /// tables or functions, does not exist: the database is not migrated
    /// (or not to this version).
    pub fn is_not_migrated(&self) -> bool {
        self.as_db_error().is_some_and(not_migrated)
    }
}

/// What `pgwebhooks` says for a database without (this version of) its schema.
pub const NOT_MIGRATED: &str =
    "the database is not migrated (for this version of pgwebhooks): run `pgwebhooks migrate` with the same DATABASE_URL";

fn not_migrated(d: &tokio_postgres::error::DbError) -> bool {
    use tokio_postgres::error::SqlState;
    let code = d.code();
    let ours = d.message().contains("\"webhooks.") || d.message().contains("\"webhooks\"");
    ours && (*code == SqlState::UNDEFINED_TABLE
        || *code == SqlState::INVALID_SCHEMA_NAME
        || *code == SqlState::UNDEFINED_FUNCTION)
}

/// The server's message (with its detail and hint), or the driver's
/// words followed by their cause, for a failed statement.
fn query_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) if not_migrated(d) => NOT_MIGRATED.to_owned(),
        Some(d) => server_message(d),
        None => driver_reason(e),
    }
}

/// `message (detail; hint)` of a server error, without the "ERROR:".
pub fn server_message(d: &tokio_postgres::error::DbError) -> String {
    let mut out = d.message().to_owned();
    let extra: Vec<&str> = [d.detail(), d.hint()].into_iter().flatten().collect();
    if !extra.is_empty() {
        out.push_str(&format!(" ({})", extra.join("; ")));
    }
    out
}

/// The driver's message with its causes, each said once: tokio-postgres
/// prints only its kind ("invalid connection string") and keeps the
/// reason ("invalid value for option `port`") as the source.
pub fn driver_reason(e: &tokio_postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        return server_message(d);
    }
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        let last = parts.last().map(|l| l.to_ascii_lowercase()).unwrap_or_default();
        if last.contains(&text.to_ascii_lowercase()) {
            // already said
        } else if text.to_ascii_lowercase().contains(&last) {
            *parts.last_mut().expect("not empty") = text;
        } else {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

/// Why a connection failed, in a few words, and what to check.
fn connect_message(target: &str, e: &tokio_postgres::Error) -> String {
    use tokio_postgres::error::SqlState;
    if let Some(d) = e.as_db_error() {
        let hint = match d.code() {
            c if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                " — check the user and password in DATABASE_URL (and pg_hba.conf)"
            }
            c if *c == SqlState::INVALID_CATALOG_NAME => {
                " — create it (createdb) or fix the database name in DATABASE_URL"
            }
            c if *c == SqlState::TOO_MANY_CONNECTIONS => {
                " — lower PGWEBHOOKS_POOL_SIZE or raise max_connections"
            }
            _ => "",
        };
        return format!(
            "cannot connect to the database at {target}: {}{hint}",
            server_message(d)
        );
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            let reason = match io.kind() {
                ConnectionRefused => {
                    "connection refused — is Postgres running? is DATABASE_URL right?".to_owned()
                }
                NotFound => format!("{io} — is Postgres running? is DATABASE_URL's host right?"),
                TimedOut => "timed out — is the host reachable (firewall)? is DATABASE_URL right?".to_owned(),
                _ => format!("{io} — is DATABASE_URL right?"),
            };
            return format!("cannot connect to the database at {target}: {reason}");
        }
        cause = c.source();
    }
    format!("cannot connect to the database at {target}: {}", driver_reason(e))
}

fn pool_message(e: &PoolError) -> String {
    match e {
        PoolError::Timeout(TimeoutType::Wait) => {
            "database pool: no connection became free within the wait timeout".into()
        }
        PoolError::Timeout(TimeoutType::Create) => {
            "cannot connect to the database: no answer within connect_timeout (database pool)".into()
        }
        PoolError::Backend(e) => format!("cannot connect to the database: {}", driver_reason(e)),
        other => format!("database pool: {other}"),
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

    /// Where this connects, for messages: `host:port (db name)`, never
    /// the user's password.
    pub fn target(&self) -> String {
        let ports = self.pg.get_ports();
        let hosts: Vec<String> = self
            .pg
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match h {
                    tokio_postgres::config::Host::Tcp(h) if h.contains(':') => format!("[{h}]:{port}"),
                    tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(p) => format!("{}/.s.PGSQL.{port}", p.display()),
                }
            })
            .collect();
        let hosts = if hosts.is_empty() {
            "localhost:5432".to_owned()
        } else {
            hosts.join(", ")
        };
        match self.pg.get_dbname().or(self.pg.get_user()) {
            Some(db) => format!("{hosts} (db {db})"),
            None => hosts,
        }
    }

    /// A failed connection attempt, with where it went.
    pub fn connect_error(&self, error: tokio_postgres::Error) -> DbError {
        DbError::Connect {
            target: self.target(),
            error,
        }
    }

    /// A pool's failure to hand out a connection, with where it went.
    pub fn pool_error(&self, error: PoolError) -> DbError {
        match error {
            PoolError::Backend(e) => self.connect_error(e),
            PoolError::Timeout(TimeoutType::Create) => {
                DbError::ConnectTimeout(self.attempt_timeout(), self.target())
            }
            other => DbError::Pool(other),
        }
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
            .map_err(|_| DbError::ConnectTimeout(timeout, self.target()))?
            .map_err(|e| self.connect_error(e))
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
            tracing::debug!(error = %crate::errors::error_chain(&error), "database connection closed");
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
