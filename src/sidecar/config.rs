//! The sidecar's configuration: every stage's settings, validated, and
//! `pgwebhooks run`'s flags and environment turned into them.

use std::time::Duration;

use crate::admin::AdminConfig;
use crate::breaker::BreakerConfig;
use crate::claim::ClaimConfig;
use crate::config::{self, ConfigError, RunArgs};
use crate::db;
use crate::deliver::DeliverConfig;
use crate::dispatch::DispatchConfig;
use crate::env_endpoints::EnvEndpoints;
use crate::inbound::InboundConfig;
use crate::maintain::MaintainConfig;

/// Everything `run` needs, validated.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub database: db::DbConfig,
    /// This replica's name (claims and attempts record it).
    pub replica: String,
    pub pool_size: usize,
    pub deliver: DeliverConfig,
    pub dispatch: DispatchConfig,
    pub claim: ClaimConfig,
    pub breaker: BreakerConfig,
    /// How long in-flight attempts may run on after a shutdown signal.
    pub shutdown_grace: Duration,
    pub env_endpoints: EnvEndpoints,
    /// The inbound HTTP server; `None` runs delivery only.
    pub inbound: Option<InboundConfig>,
    /// The admin listener (console and /api/v1); `None`: not started.
    pub admin: Option<AdminConfig>,
    pub maintain: MaintainConfig,
    /// Say failures, dead letters and pauses at `warn` (`notice`); the
    /// demo shows its scripted 503s itself.
    pub say_failures: bool,
}

impl SidecarConfig {
    pub fn new(database: impl Into<db::DbConfig>) -> SidecarConfig {
        SidecarConfig {
            database: database.into(),
            replica: default_replica_name(),
            pool_size: 8,
            deliver: DeliverConfig::default(),
            dispatch: DispatchConfig::default(),
            claim: ClaimConfig::default(),
            breaker: BreakerConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            env_endpoints: EnvEndpoints::default(),
            inbound: None,
            admin: None,
            maintain: MaintainConfig::default(),
            say_failures: true,
        }
    }
}

impl SidecarConfig {
    /// The configuration of `pgwebhooks run`, validated.
    pub fn from_args(args: &RunArgs) -> Result<SidecarConfig, ConfigError> {
        if args.lease < args.timeout * 5 {
            return Err(ConfigError::Invalid(format!(
                "PGWEBHOOKS_LEASE ({:?}) must be at least 5 x PGWEBHOOKS_TIMEOUT ({:?}): work still queued or in flight \
                 would be taken over by another replica",
                args.lease, args.timeout
            )));
        }
        if args.inbound_read_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "PGWEBHOOKS_INBOUND_READ_TIMEOUT must be longer than 0".into(),
            ));
        }
        let inbound_secret = config::inbound_secret(args.inbound_secret.as_ref())?;
        let mut c = SidecarConfig::new(args.db.connection()?);
        if let Some(r) = &args.replica {
            c.replica = r.clone();
        }
        c.pool_size = args.pool_size as usize;
        c.deliver.retry_schedule = args.retry_schedule.0.clone();
        c.deliver.timeout = args.timeout;
        c.deliver.allow_private_targets = args.targets.allow_private_targets;
        c.dispatch.max_in_flight = args.max_in_flight as usize;
        c.claim.batch_size = args.batch_size;
        c.claim.linger = args.batch_linger;
        c.claim.lease = args.lease;
        c.claim.poll_interval = args.poll_interval;
        c.shutdown_grace = args.shutdown_grace;
        let env_endpoints = EnvEndpoints::from_env();
        env_endpoints
            .check(args.targets.allow_private_targets)
            .map_err(ConfigError::Invalid)?;
        c.env_endpoints = env_endpoints;
        c.maintain.retention = args.retention.0;
        c.maintain.retention_failed = args.retention_failed.0;
        c.breaker = BreakerConfig {
            failures: args.breaker_failures,
            window: args.breaker_window,
            probe: args.breaker_probe,
        };
        // Port 0 picks a free port, so two zeros never collide.
        if args.admin_listen == args.listen && args.listen.port() != 0 {
            return Err(ConfigError::Invalid(
                "PGWEBHOOKS_ADMIN_LISTEN must differ from PGWEBHOOKS_LISTEN: the inbound port never serves the console"
                    .into(),
            ));
        }
        if args.admin_session_ttl < Duration::from_secs(1) || args.admin_session_idle < Duration::from_secs(1)
        {
            return Err(ConfigError::Invalid(
                "PGWEBHOOKS_ADMIN_SESSION_TTL and PGWEBHOOKS_ADMIN_SESSION_IDLE must be at least 1s".into(),
            ));
        }
        c.admin = Some(AdminConfig {
            listen: args.admin_listen,
            token: config::admin_token(args.admin_token.as_ref())?,
            allow_private_targets: args.targets.allow_private_targets,
            session_ttl: args.admin_session_ttl,
            session_idle: args.admin_session_idle,
            hosts: args.admin_hosts.clone().unwrap_or_default().0,
            ..Default::default()
        });
        c.inbound = Some(InboundConfig {
            listen: args.listen,
            secret: inbound_secret,
            max_body: args.inbound_max_body,
            tolerance: args.inbound_tolerance,
            read_timeout: args.inbound_read_timeout,
            max_connections: args.inbound_max_connections as usize,
            ..Default::default()
        });
        Ok(c)
    }
}

/// `<hostname>-<pid>-<random>`: unique across restarts and replicas.
pub fn default_replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pgwebhooks".into());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        args: RunArgs,
    }

    /// One default for each setting: what `run` uses with no flag and no
    /// variable is what the stages' own `Default`s say.
    #[test]
    fn runs_defaults_are_the_stages_defaults() {
        use clap::CommandFactory;
        let set: Vec<String> = Run::command()
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .filter(|e| std::env::var_os(e).is_some() && e != "DATABASE_URL")
            .collect();
        assert!(set.is_empty(), "run's variables must be unset here: {set:?}");
        let args = Run::try_parse_from(["run", "--database-url", "postgres://u@localhost/db"])
            .unwrap()
            .args;
        let from_flags = SidecarConfig::from_args(&args).unwrap();
        let d = SidecarConfig::new(args.db.connection().unwrap());
        assert_eq!(from_flags.pool_size, d.pool_size);
        assert_eq!(from_flags.shutdown_grace, d.shutdown_grace);
        let (a, b) = (&from_flags.deliver, &d.deliver);
        assert_eq!(
            (&a.retry_schedule, a.timeout, a.allow_private_targets),
            (&b.retry_schedule, b.timeout, b.allow_private_targets)
        );
        let (a, b) = (&from_flags.claim, &d.claim);
        assert_eq!(
            (a.batch_size, a.lease, a.poll_interval, a.linger),
            (b.batch_size, b.lease, b.poll_interval, b.linger)
        );
        assert_eq!(from_flags.dispatch.max_in_flight, d.dispatch.max_in_flight);
        let (a, b) = (&from_flags.breaker, &d.breaker);
        assert_eq!((a.failures, a.window, a.probe), (b.failures, b.window, b.probe));
        assert_eq!(from_flags.maintain.retention, d.maintain.retention);
        let (a, b) = (
            from_flags.inbound.unwrap(),
            crate::inbound::InboundConfig::default(),
        );
        assert_eq!(
            (
                a.listen,
                a.max_body,
                a.tolerance,
                a.read_timeout,
                a.max_connections
            ),
            (
                b.listen,
                b.max_body,
                b.tolerance,
                b.read_timeout,
                b.max_connections
            )
        );
    }
}
