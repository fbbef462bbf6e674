//! Database access: connections and schema management.
//!
//! Every SQL statement the sidecar runs lives in this module tree (kept
//! true by `tests/it/tidy.rs`; the demo's app traffic is the app's), one typed
//! function per statement, so the rest of the code never builds SQL.

pub mod admin;
mod cert;
pub mod conninfo;
pub mod console;
pub mod delivery;
pub mod endpoints;
pub mod inbound;
pub mod migrate;
pub mod ops;
pub mod refusal;
pub mod sessions;
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

/// Subscribes the LISTEN connection to the channel writers NOTIFY.
pub async fn listen(c: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    c.batch_execute("LISTEN webhooks").await
}

/// One round trip: is the connection still there?
pub async fn ping(c: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    c.batch_execute("SELECT 1").await
}

/// A timestamp column as RFC 3339 UTC with milliseconds.
pub(crate) fn ts(col: &str) -> String {
    format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
}

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

/// TCP keepalives on every connection of ours, at both ends (unless
/// `DATABASE_URL` sets them): an idle connection whose peer is gone (a
/// partition, a host that died) is found in about 5 + 3 x 2 = 11 s instead
/// of the kernel's two hours.
pub const KEEPALIVES_IDLE: Duration = Duration::from_secs(5);
/// Between keepalive probes (see [`KEEPALIVES_IDLE`]).
pub const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered keepalive probes before the connection is dropped.
pub const KEEPALIVES_RETRIES: u32 = 3;
/// How long data we sent may stay unacknowledged before the kernel drops
/// the connection (`TCP_USER_TIMEOUT`, Linux) for sessions whose lease is
/// not known; the sidecar's own use a third of the lease.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// `idle_in_transaction_session_timeout` of sessions whose lease is not
/// known (`migrate`, the one-shot commands): none of them waits on anything
/// between two statements of a transaction.
pub const TOOL_IDLE_IN_TRANSACTION: Duration = Duration::from_secs(60);

/// Server-side bounds on one session of ours, sent as its startup
/// `options` (never set on a role or the database, so the app's sessions
/// keep theirs). A session frozen or cut off inside a transaction is ended
/// by the server after `idle_in_transaction`, which releases its locks and
/// its snapshot (it would otherwise hold back every replica's fan-out
/// horizon); a statement that waits on a lock gives up after `lock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionBounds {
    pub idle_in_transaction: Duration,
    /// `statement_timeout`; `None` leaves the server's (migrations over big
    /// tables, an operator's replay).
    pub statement: Option<Duration>,
    /// `lock_timeout`; `None` leaves the server's.
    pub lock: Option<Duration>,
    /// `TCP_USER_TIMEOUT` of the connection.
    pub tcp_user_timeout: Duration,
}

impl SessionBounds {
    /// The sidecar's sessions (the pool, the admin listener's pool, the
    /// LISTEN connection), from the lease its claims are taken under:
    /// idle in a transaction and waiting on a lock at most a fifth of it,
    /// one statement at most half of it, unacknowledged data at most a
    /// third of it. Another replica can so take a stopped one's work over
    /// well within one lease. The LISTEN connection is idle outside any
    /// transaction, which none of these limits (no `idle_session_timeout`
    /// is set).
    pub fn for_lease(lease: Duration) -> SessionBounds {
        let floor = Duration::from_millis(250);
        SessionBounds {
            idle_in_transaction: (lease / 5).max(floor),
            statement: Some((lease / 2).max(floor)),
            lock: Some((lease / 5).max(floor)),
            tcp_user_timeout: (lease / 3).max(Duration::from_secs(1)),
        }
    }

    /// `pgwebhooks migrate` and the one-shot commands: a migration may run
    /// long over a big table and wait for a busy table's lock, so neither
    /// `statement_timeout` nor `lock_timeout` is set; only a transaction
    /// left idle (the command frozen or cut off) is ended.
    pub fn tool() -> SessionBounds {
        SessionBounds {
            idle_in_transaction: TOOL_IDLE_IN_TRANSACTION,
            statement: None,
            lock: None,
            tcp_user_timeout: TCP_USER_TIMEOUT,
        }
    }

    /// The `-c name=value` options, in milliseconds.
    fn options(&self) -> String {
        let ms = |d: Duration| d.as_millis().max(1);
        let mut out = format!(
            "-c idle_in_transaction_session_timeout={}",
            ms(self.idle_in_transaction)
        );
        if let Some(d) = self.statement {
            out.push_str(&format!(" -c statement_timeout={}", ms(d)));
        }
        if let Some(d) = self.lock {
            out.push_str(&format!(" -c lock_timeout={}", ms(d)));
        }
        // The server's end of the connection too (its backend of a replica
        // cut off would otherwise hold a session advisory lock for hours).
        out.push_str(&format!(
            " -c tcp_keepalives_idle={} -c tcp_keepalives_interval={} -c tcp_keepalives_count={} \
             -c tcp_user_timeout={}",
            KEEPALIVES_IDLE.as_secs(),
            KEEPALIVES_INTERVAL.as_secs(),
            KEEPALIVES_RETRIES,
            ms(self.tcp_user_timeout)
        ));
        out
    }
}

/// The settings every session of ours runs with, added to whatever the URL
/// set: `jit=off` (our statements are short, and JIT only ever slows them
/// down: the endpoints load was JIT-compiled for ~0.6 s at every start and
/// reload), `bounds` as startup options, TCP keepalives and the TCP user
/// timeout. What `DATABASE_URL` says wins: its `options` come after ours
/// (the server applies the last `-c` of a name), and a keepalive or
/// `tcp_user_timeout` it sets is kept.
pub fn tuned(mut config: tokio_postgres::Config, bounds: &SessionBounds) -> tokio_postgres::Config {
    let ours = format!("-c jit=off {}", bounds.options());
    let options = match config.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{ours} {o}"),
        _ => ours,
    };
    config.options(&options);
    if config.get_application_name().is_none() {
        config.application_name("pgwebhooks");
    }
    // The driver's default keepalive idle is two hours: only that is ours to change.
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(KEEPALIVES_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(KEEPALIVES_INTERVAL);
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(KEEPALIVES_RETRIES);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(bounds.tcp_user_timeout);
    }
    config
}

impl DbConfig {
    /// These settings with [`tuned`] applied.
    pub fn bounded(mut self, bounds: &SessionBounds) -> DbConfig {
        self.pg = tuned(self.pg, bounds);
        self
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_fractions_of_the_lease() {
        let b = SessionBounds::for_lease(Duration::from_secs(60));
        assert_eq!(b.idle_in_transaction, Duration::from_secs(12));
        assert_eq!(b.statement, Some(Duration::from_secs(30)));
        assert_eq!(b.lock, Some(Duration::from_secs(12)));
        assert_eq!(b.tcp_user_timeout, Duration::from_secs(20));
        let tool = SessionBounds::tool();
        assert_eq!(
            (tool.statement, tool.lock),
            (None, None),
            "migrations may run long"
        );
    }

    #[test]
    fn the_urls_own_settings_win() {
        let bounds = SessionBounds::for_lease(Duration::from_secs(10));
        let plain = tuned(
            parse_url_with_env("postgres://u@h/db", &|_| None).unwrap().pg,
            &bounds,
        );
        assert_eq!(
            plain.get_options(),
            Some(
                "-c jit=off -c idle_in_transaction_session_timeout=2000 -c statement_timeout=5000 \
                 -c lock_timeout=2000 -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 \
                 -c tcp_keepalives_count=3 -c tcp_user_timeout=3333"
            )
        );
        assert_eq!(plain.get_keepalives_idle(), KEEPALIVES_IDLE);
        assert_eq!(plain.get_keepalives_interval(), Some(KEEPALIVES_INTERVAL));
        assert_eq!(plain.get_keepalives_retries(), Some(KEEPALIVES_RETRIES));
        assert_eq!(plain.get_tcp_user_timeout(), Some(&(Duration::from_secs(10) / 3)));

        let url =
            "postgres://u@h/db?options=-c%20statement_timeout%3D0&keepalives_idle=30&tcp_user_timeout=9";
        let own = tuned(parse_url_with_env(url, &|_| None).unwrap().pg, &bounds);
        let options = own.get_options().unwrap();
        assert!(
            options.ends_with(" -c statement_timeout=0"),
            "the URL's last: {options}"
        );
        assert_eq!(own.get_keepalives_idle(), Duration::from_secs(30));
        // The driver reads it in seconds (libpq: milliseconds).
        assert_eq!(own.get_tcp_user_timeout(), Some(&Duration::from_secs(9)));
    }
}
