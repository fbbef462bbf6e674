//! Configuration: environment variables (12-factor), optionally preloaded
//! from a file, read once into validated structs. Defaults live here and are
//! printed by `--help`. Secrets are wrapped in [`Secret`] and never printed.

use std::fmt;
use std::path::Path;

use clap::Args;

/// A value that must never reach a log line or a `Debug` dump.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself; call only where it is used, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL (postgres://user:pass@host:port/db) or
    /// key=value string. TLS as in libpq: sslmode=disable, prefer (the
    /// default), require, verify-ca or verify-full, with sslrootcert=FILE
    /// (or system), sslcert=FILE and sslkey=FILE (or PGSSLMODE,
    /// PGSSLROOTCERT, PGSSLCERT, PGSSLKEY); connect_timeout defaults to 10 s.
    /// Our sessions set idle_in_transaction_session_timeout (run: lease/5,
    /// others: 60 s), statement_timeout (run: lease/2) and lock_timeout
    /// (run: lease/5), TCP keepalives and tcp_user_timeout; the URL's own
    /// options=-c ... and keepalive settings win.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("DATABASE_URL is not set: pass --database-url or set DATABASE_URL (postgres://user:pass@host:5432/db)")]
    MissingDatabaseUrl,
    #[error("DATABASE_URL is set but empty: set it to the database's URL (export DATABASE_URL=postgres://user:pass@host:5432/db) or pass --database-url")]
    EmptyDatabaseUrl,
    #[error("invalid DATABASE_URL: {0}")]
    DatabaseUrl(String),
    #[error("reading config file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}: expected KEY=VALUE")]
    FileSyntax { path: String, line: usize },
    #[error("{0}")]
    Invalid(String),
}

/// Which addresses endpoints may point at (`run` and `endpoint add`).
#[derive(Debug, Clone, Copy, Args)]
pub struct TargetArgs {
    /// Allow endpoints on private, loopback, link-local, CGNAT and other
    /// non-public addresses. By default a URL that is, or resolves to, such
    /// an address is refused, when added and at every delivery; cloud
    /// metadata addresses are refused even with this set. For tests, demos
    /// and receivers inside your own network. One variable for `run` and
    /// `endpoint add`/`update` alike: export it once.
    #[arg(long, env = "PGWEBHOOKS_ALLOW_PRIVATE_TARGETS",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_private_targets: bool,
}

impl TargetArgs {
    /// The variable that allows private targets, as both `run` and
    /// `endpoint add`/`update` read it.
    pub const VAR: &'static str = "PGWEBHOOKS_ALLOW_PRIVATE_TARGETS";

    /// Whether the environment (not a flag) allows private targets: then
    /// every command started from it does.
    pub fn allowed_by_environment() -> bool {
        std::env::var(Self::VAR).is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "y" | "yes" | "t" | "true" | "on" | "1"
            )
        })
    }
}

impl DatabaseArgs {
    /// The parsed connection settings, or a clear error saying what to set.
    pub fn connection(&self) -> Result<crate::db::DbConfig, ConfigError> {
        let url = self
            .database_url
            .as_ref()
            .ok_or(ConfigError::MissingDatabaseUrl)?;
        // An empty value would mean libpq's defaults (localhost:5432, the
        // user's name): say what is wrong instead of where it then failed.
        if url.expose().trim().is_empty() {
            return Err(ConfigError::EmptyDatabaseUrl);
        }
        // Neither the driver's messages nor ours include the URL, so they are safe to show.
        crate::db::parse_url(url.expose()).map_err(|e| match e {
            crate::db::DbError::Url(e) => ConfigError::DatabaseUrl(crate::db::driver_reason(&e)),
            crate::db::DbError::Syntax(e) => ConfigError::DatabaseUrl(e),
            other => ConfigError::Invalid(other.to_string()),
        })
    }
}

/// Loads `KEY=VALUE` lines from `path` into the environment, without
/// overriding variables that are already set (the environment wins).
/// Blank lines and lines starting with `#` are skipped; values may be
/// wrapped in single or double quotes.
pub fn load_env_file(path: &Path) -> Result<(), ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        path: display.clone(),
        source,
    })?;
    for (key, value) in parse_env_file(&text).map_err(|line| ConfigError::FileSyntax {
        path: display.clone(),
        line,
    })? {
        if std::env::var_os(&key).is_none() {
            // Single-threaded here: called from main before the runtime starts.
            unsafe { std::env::set_var(key, value) };
        }
    }
    Ok(())
}

/// Parses env-file text; on error returns the 1-based line number.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line.split_once('=').ok_or(i + 1)?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(i + 1);
        }
        let value = value.trim();
        let value = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(a, b)| value.strip_prefix(*a).and_then(|v| v.strip_suffix(*b)))
            .unwrap_or(value);
        out.push((key.to_owned(), value.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("whsec_abc");
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }

    #[test]
    fn inbound_secret_empty_is_unset_and_short_is_refused() {
        let s = |v: &str| inbound_secret(Some(&Secret::new(v)));
        assert_eq!(inbound_secret(None).unwrap(), None);
        assert_eq!(s("").unwrap(), None);
        assert_eq!(s("  \t ").unwrap(), None);
        for weak in [
            "a",
            "s3cret",
            "fifteen-chars-x",
            "sixteen chars xx",
            "whsec_!!!!!!!!!!!!!!!!",
        ] {
            let e = s(weak).unwrap_err().to_string();
            assert!(e.contains("PGWEBHOOKS_INBOUND_SECRET"), "{weak}: {e}");
        }
        assert_eq!(
            s(" sixteen-chars-xx ").unwrap(),
            Some(Secret::new("sixteen-chars-xx"))
        );
    }

    #[test]
    fn env_file_parses_quotes_comments_and_export() {
        let parsed = parse_env_file("# c\n\nexport A=1\nB = 'two words'\nC=\"x=y\"\n").unwrap();
        assert_eq!(
            parsed,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into())
            ]
        );
        assert_eq!(parse_env_file("A=1\nnot a pair\n"), Err(2));
        assert_eq!(parse_env_file("BAD KEY=1\n"), Err(1));
    }
}

/// Settings of `pgwebhooks run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,

    /// Delays between attempts, comma-separated; its length + 1 is the
    /// number of attempts. Endpoints may set their own.
    #[arg(long, env = "PGWEBHOOKS_RETRY_SCHEDULE", default_value = crate::deliver::DEFAULT_RETRY_SCHEDULE,
          value_parser = parse_schedule_arg)]
    pub retry_schedule: Schedule,

    /// Per-attempt timeout (endpoints may set their own).
    #[arg(long, env = "PGWEBHOOKS_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,

    /// This replica's name in claims and attempts [default: host-pid-random].
    #[arg(long, env = "PGWEBHOOKS_REPLICA")]
    pub replica: Option<String>,

    /// Longest wait between scans for new events when no NOTIFY arrives.
    #[arg(long, env = "PGWEBHOOKS_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: std::time::Duration,

    /// Events claimed per fan-out batch.
    #[arg(long, env = "PGWEBHOOKS_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub batch_size: i32,

    /// Longest pause between partial fan-out batches while events arrive
    /// faster than 2,000/s: fewer, bigger batches cost the database (and so
    /// the app's writes) far less. Below that rate events go out at once.
    /// 0 disables it.
    #[arg(long, env = "PGWEBHOOKS_BATCH_LINGER", default_value = "8ms", value_parser = parse_duration)]
    pub batch_linger: std::time::Duration,

    /// Concurrent requests per endpoint (endpoints may set their own).
    #[arg(long, env = "PGWEBHOOKS_MAX_IN_FLIGHT", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_in_flight: u32,

    /// How long claimed work stays ours before another replica may take it
    /// over; at least 5 x PGWEBHOOKS_TIMEOUT. Our sessions' server-side
    /// timeouts are fractions of it (see DATABASE_URL).
    #[arg(long, env = "PGWEBHOOKS_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub lease: std::time::Duration,

    /// On SIGTERM, how long in-flight attempts may finish before they are
    /// released for a retry.
    #[arg(long, env = "PGWEBHOOKS_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: std::time::Duration,

    /// Address of the inbound HTTP server (callbacks, /healthz, /readyz, /metrics).
    #[arg(long, env = "PGWEBHOOKS_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,

    /// Shared secret callers must present (x-webhook-secret, x-make-apikey,
    /// Authorization: Bearer, ?secret=, or a Standard Webhooks signature):
    /// at least 16 printable characters without spaces (e.g. `openssl rand
    /// -hex 32`). Empty counts as unset: every callback to a route without
    /// its own secret is then refused. Routes may set their own in
    /// webhooks.inbound_routes (webhooks.inbound_route_set).
    #[arg(long, env = "PGWEBHOOKS_INBOUND_SECRET", hide_env_values = true)]
    pub inbound_secret: Option<Secret>,

    /// Largest callback body accepted, in bytes.
    #[arg(long, env = "PGWEBHOOKS_INBOUND_MAX_BODY", default_value_t = 1024 * 1024)]
    pub inbound_max_body: usize,

    /// How far a signed callback's webhook-timestamp may be from now.
    #[arg(long, env = "PGWEBHOOKS_INBOUND_TOLERANCE", default_value = "5m", value_parser = parse_duration)]
    pub inbound_tolerance: std::time::Duration,

    /// How long a client may take to send a callback's request head, and
    /// then its body: a slower one is cut off (408, or the connection
    /// closed) and nothing is applied. Idle keep-alive connections are
    /// closed after it too, and so is a connection whose answer the client
    /// has not read for this long.
    #[arg(long, env = "PGWEBHOOKS_INBOUND_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub inbound_read_timeout: std::time::Duration,

    /// Inbound connections served at once; more wait in the listen backlog.
    /// Bounds what unauthenticated clients can hold: at most this many
    /// bodies of PGWEBHOOKS_INBOUND_MAX_BODY.
    #[arg(long, env = "PGWEBHOOKS_INBOUND_MAX_CONNECTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub inbound_max_connections: u32,

    /// Keep delivered events, deliveries, attempts and callbacks (applied or rejected)
    /// this long ("off" keeps everything; dead letters: PGWEBHOOKS_RETENTION_FAILED).
    #[arg(long, env = "PGWEBHOOKS_RETENTION", default_value = "7d", value_parser = parse_retention)]
    pub retention: Retention,

    /// Keep failed and dead deliveries (dead letters) and their attempts this long
    /// after they were given up ("off" keeps them until handled).
    #[arg(long, env = "PGWEBHOOKS_RETENTION_FAILED", default_value = "90d", value_parser = parse_retention)]
    pub retention_failed: Retention,

    /// Circuit breaker: pause an endpoint after this many retryable
    /// failures in a row…
    #[arg(long, env = "PGWEBHOOKS_BREAKER_FAILURES", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_failures: u32,

    /// …spanning at least this long; then probe it this often until it answers.
    #[arg(long, env = "PGWEBHOOKS_BREAKER_WINDOW", default_value = "1m", value_parser = parse_duration)]
    pub breaker_window: std::time::Duration,

    /// How often an endpoint paused by the breaker is probed.
    #[arg(long, env = "PGWEBHOOKS_BREAKER_PROBE", default_value = "30s", value_parser = parse_duration)]
    pub breaker_probe: std::time::Duration,

    /// Database connections in the pool (plus one for LISTEN); at least 4
    /// (fan-out, retries, the recorder and the inbound server each hold one
    /// at times).
    #[arg(long, env = "PGWEBHOOKS_POOL_SIZE", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(4..=256))]
    pub pool_size: u32,

    /// Address of the admin listener: the operator console (/console) and
    /// the management API (/api/v1). Never the inbound port; loopback by
    /// default (reach it with `kubectl port-forward`).
    #[arg(long, env = "PGWEBHOOKS_ADMIN_LISTEN", default_value = "127.0.0.1:9477")]
    pub admin_listen: std::net::SocketAddr,

    /// Token for the admin listener: `Authorization: Bearer <token>` for
    /// /api/v1, the console's sign-in form for /console. At least 16
    /// printable characters (e.g. `openssl rand -hex 32`). Unset or empty:
    /// the admin listener is not started (a warning says so).
    #[arg(long, env = "PGWEBHOOKS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// A console session ends this long after sign-in, used or not.
    /// Signing out ends it at once, for every copy of its cookie.
    #[arg(long, env = "PGWEBHOOKS_ADMIN_SESSION_TTL", default_value = "12h", value_parser = parse_duration)]
    pub admin_session_ttl: std::time::Duration,

    /// A console session unused this long has ended.
    #[arg(long, env = "PGWEBHOOKS_ADMIN_SESSION_IDLE", default_value = "1h", value_parser = parse_duration)]
    pub admin_session_idle: std::time::Duration,

    /// Names the admin listener answers to, comma-separated, besides
    /// localhost, loopback addresses and the address it is reached on:
    /// `name` (any port), `name:port`, or `https://name[:port]` when a
    /// proxy in front ends TLS (the session cookie is then `Secure`). A
    /// request for any other `Host` gets 421 (DNS rebinding).
    #[arg(long, env = "PGWEBHOOKS_ADMIN_HOSTS")]
    pub admin_hosts: Option<crate::admin::hosts::AllowedHosts>,

    #[command(flatten)]
    pub targets: TargetArgs,
}

/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// `PGWEBHOOKS_ADMIN_TOKEN`, checked: empty is unset; anything else must be
/// at least 16 printable characters without spaces.
pub fn admin_token(token: Option<&Secret>) -> Result<Option<Secret>, ConfigError> {
    let Some(value) = token.map(|s| s.expose().trim()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if value.len() < MIN_ADMIN_TOKEN || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::Invalid(format!(
            "PGWEBHOOKS_ADMIN_TOKEN must be at least {} printable characters without spaces: make one with \
             `openssl rand -hex 32`, or leave it empty to keep the admin listener closed",
            MIN_ADMIN_TOKEN
        )));
    }
    Ok(Some(Secret::new(value)))
}

/// Shortest inbound secret accepted (here and in `inbound_route_set`).
pub const MIN_INBOUND_SECRET: usize = 16;

/// `PGWEBHOOKS_INBOUND_SECRET`, checked: empty or blank is unset (it must
/// never let in callers who present an empty credential); anything else
/// must be a usable secret, for presenting and for signatures alike.
pub fn inbound_secret(secret: Option<&Secret>) -> Result<Option<Secret>, ConfigError> {
    let Some(value) = secret.map(|s| s.expose().trim()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if value.len() < MIN_INBOUND_SECRET || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::Invalid(format!(
            "PGWEBHOOKS_INBOUND_SECRET must be at least {MIN_INBOUND_SECRET} printable characters without spaces \
             (it is {} characters long{}): make one with `openssl rand -hex 32`, or leave it empty to refuse \
             callbacks to routes without their own secret",
            value.chars().count(),
            if value.bytes().all(|b| b.is_ascii_graphic()) { "" } else { " and holds spaces or unprintable characters" }
        )));
    }
    if let Err(error) = crate::sign::SigningKey::parse(value) {
        return Err(ConfigError::Invalid(format!(
            "PGWEBHOOKS_INBOUND_SECRET: {error}"
        )));
    }
    Ok(Some(Secret::new(value)))
}

/// How long to keep delivered history.
#[derive(Debug, Clone, Copy)]
pub struct Retention(pub Option<std::time::Duration>);

fn parse_retention(s: &str) -> Result<Retention, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Retention(None));
    }
    parse_duration(s).map(|d| Retention(Some(d)))
}

/// A parsed retry schedule.
#[derive(Debug, Clone)]
pub struct Schedule(pub Vec<std::time::Duration>);

fn parse_schedule_arg(s: &str) -> Result<Schedule, String> {
    crate::deliver::retry::parse_schedule(s).map(Schedule)
}

/// `500ms`, `10s`, `2m`, `1h`…
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration '{s}': {e} (use e.g. 500ms, 10s, 2m)"))
}
