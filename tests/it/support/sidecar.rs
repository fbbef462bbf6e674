//! Running the sidecar in-process (the same `Sidecar::start` as
//! production) or as a `pgwebhooks run` process, and adding endpoints.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgwebhooks::sidecar::{Sidecar, SidecarConfig};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::TestDb;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Test-sized settings: short timeouts, quick retries, fast polling.
pub fn config(db: &TestDb) -> SidecarConfig {
    let mut c = SidecarConfig::new(db.config().clone());
    c.deliver.timeout = Duration::from_secs(2);
    c.deliver.retry_schedule = vec![Duration::from_millis(50), Duration::from_millis(100)];
    c.claim.lease = Duration::from_secs(10);
    c.claim.poll_interval = Duration::from_millis(200);
    c.shutdown_grace = Duration::from_secs(2);
    // Every receiver of the tests is on 127.0.0.1.
    c.deliver.allow_private_targets = true;
    c
}

pub struct Running {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    /// `http://127.0.0.1:<port>` of the inbound server, when configured.
    pub base: String,
    /// `http://127.0.0.1:<port>` of the admin listener, when configured.
    pub admin: String,
}

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123";

/// [`config_with_inbound`] plus the admin listener on a free loopback port.
pub fn config_with_admin(db: &TestDb) -> SidecarConfig {
    let mut c = config_with_inbound(db);
    c.admin = admin_config();
    c
}

/// The admin listener on a free loopback port, with [`ADMIN_TOKEN`].
pub fn admin_config() -> Option<pgwebhooks::admin::AdminConfig> {
    Some(pgwebhooks::admin::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some(pgwebhooks::config::Secret::new(ADMIN_TOKEN)),
        allow_private_targets: true,
        ..Default::default()
    })
}

pub const INBOUND_SECRET: &str = "inbound-secret-for-tests";

/// [`config`] plus the inbound server on a free loopback port.
pub fn config_with_inbound(db: &TestDb) -> SidecarConfig {
    let mut c = config(db);
    c.inbound = inbound_config();
    c
}

/// The inbound server on a free loopback port, with [`INBOUND_SECRET`].
pub fn inbound_config() -> Option<pgwebhooks::inbound::InboundConfig> {
    Some(pgwebhooks::inbound::InboundConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: Some(pgwebhooks::config::Secret::new(INBOUND_SECRET)),
        max_body: 64 * 1024,
        ..Default::default()
    })
}

pub async fn start(config: SidecarConfig) -> Running {
    // Quiet unless PGWEBHOOKS_TEST_LOG is set (e.g. PGWEBHOOKS_TEST_LOG=debug).
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("PGWEBHOOKS_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let sidecar = Sidecar::start(config).await.expect("sidecar starts");
    let base = sidecar
        .inbound_addr
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    let admin = sidecar
        .admin_addr
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    let token = CancellationToken::new();
    let handle = tokio::spawn(sidecar.run_until(token.clone()));
    Running {
        token,
        handle,
        base,
        admin,
    }
}

impl Running {
    /// Graceful stop, as on SIGTERM.
    pub async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("sidecar stops within its grace period")
            .unwrap();
    }
}

/// Adds an endpoint signed with [`SECRET`]; `extra` is SQL assignments for
/// the other columns, e.g. `"make = true, rate_limit = 10"`.
pub async fn endpoint(c: &Client, url: &str, events: &[&str], extra: &str) -> i64 {
    let id: i64 = c
        .query_one(
            "INSERT INTO webhooks.endpoints (url, event_types) VALUES ($1, $2) RETURNING id",
            &[&url, &events.iter().map(|s| s.to_string()).collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .get(0);
    if !extra.is_empty() {
        c.execute(
            &format!("UPDATE webhooks.endpoints SET {extra} WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap();
    }
    c.execute(
        "INSERT INTO webhooks.endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)",
        &[&id, &SECRET],
    )
    .await
    .unwrap();
    id
}

/// Deliveries by status for one endpoint.
pub async fn statuses(c: &Client, endpoint_id: i64) -> Vec<(String, i64)> {
    c.query(
        "SELECT status, count(*) FROM webhooks.deliveries WHERE endpoint_id = $1 GROUP BY 1 ORDER BY 1",
        &[&endpoint_id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// `pgwebhooks run` against `url` with what every process test shares
/// (receivers on loopback, warnings only); the caller adds its settings.
pub fn run_command(url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwebhooks"));
    cmd.arg("run")
        .env("DATABASE_URL", url)
        .env("PGWEBHOOKS_ADMIN_LISTEN", "127.0.0.1:0")
        .env("PGWEBHOOKS_ALLOW_PRIVATE_TARGETS", "true")
        .env("PGWEBHOOKS_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// A sidecar process, killed when dropped (a failed wait must not leave
/// it running).
pub struct Process(pub Child);

impl Process {
    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
