//! `pgwebhooks run`: wires the stages together and owns shutdown.
//!
//! The same [`Sidecar::start`] runs in production and in the tests.
//! Stages: listen (wake-ups), fan-out and retry claims, per-endpoint lanes,
//! the recorder, config reloads and rescue. On shutdown: stop claiming,
//! release queued jobs, let in-flight attempts finish within the grace
//! period (then abandon and release them), write every outcome, leave.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::claim::{self, ClaimConfig, Claimer};
use crate::db::{self, DbError};
use crate::deliver::{DeliverConfig, Deliverer};
use crate::dispatch::{DispatchConfig, Dispatcher, Shared};
use crate::env_endpoints::{self, EnvEndpoints};
use crate::inbound::{self, InboundConfig};
use crate::listen::{self, Signals};
use crate::maintain::{MaintainConfig, Maintainer};
use crate::record;

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
    /// How long in-flight attempts may run on after a shutdown signal.
    pub shutdown_grace: Duration,
    pub env_endpoints: EnvEndpoints,
    /// The inbound HTTP server; `None` runs delivery only.
    pub inbound: Option<InboundConfig>,
    /// The admin listener (console and /api/v1); `None`: not started.
    pub admin: Option<crate::admin::AdminConfig>,
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
            shutdown_grace: Duration::from_secs(10),
            env_endpoints: EnvEndpoints::default(),
            inbound: None,
            admin: None,
            maintain: MaintainConfig::default(),
            say_failures: true,
        }
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

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the database schema is not migrated to this version: run `pgwebhooks migrate` first")]
    NotMigrated,
    #[error("cannot listen on {0}")]
    Listen(std::net::SocketAddr, #[source] std::io::Error),
}

/// A running sidecar.
pub struct Sidecar {
    pub claimer: Arc<Claimer>,
    pub shared: Arc<Shared>,
    pub signals: Arc<Signals>,
    pub pool: deadpool_postgres::Pool,
    stages: JoinSet<&'static str>,
    listener: tokio::task::JoinHandle<()>,
    listen_stop: CancellationToken,
    recorder: tokio::task::JoinHandle<()>,
    recorder_done: CancellationToken,
    grace: Duration,
    /// Where the inbound server listens, when it runs.
    pub inbound_addr: Option<std::net::SocketAddr>,
    inbound_stop: CancellationToken,
    inbound_task: Option<tokio::task::JoinHandle<()>>,
    /// Where the admin listener listens, when it runs.
    pub admin_addr: Option<std::net::SocketAddr>,
    admin_task: Option<tokio::task::JoinHandle<()>>,
}

impl Sidecar {
    pub async fn start(mut config: SidecarConfig) -> Result<Sidecar, StartError> {
        config.database.pg = db::tuned(config.database.pg);
        let pool = db::pool(config.database.clone(), config.pool_size.max(4));
        let replica: Arc<str> = config.replica.clone().into();
        {
            let client = pool.get().await.map_err(|e| config.database.pool_error(e))?;
            if !db::migrate::is_current(&client).await? {
                return Err(StartError::NotMigrated);
            }
            if !config.env_endpoints.urls.is_empty() {
                let mut client = client;
                let tx = client.transaction().await.map_err(DbError::from)?;
                let synced = env_endpoints::sync(&tx, &config.env_endpoints).await?;
                tx.commit().await.map_err(DbError::from)?;
                for (name, id) in &synced.upserted {
                    tracing::info!(endpoint = %name, id, "endpoint from the environment");
                }
                if synced.generated_secret {
                    tracing::warn!(
                        "WEBHOOK_SECRET is not set: generated a signing secret for the environment's endpoints \
                         (see `pgwebhooks endpoint list --show-secrets`)"
                    );
                }
            }
        }
        {
            let client = pool.get().await.map_err(DbError::from)?;
            let setup = db::ops::setup(
                &client,
                config.inbound.as_ref(),
                config.deliver.allow_private_targets,
            )
            .await?;
            for line in crate::notice::misconfigurations(&setup) {
                tracing::warn!("{line}");
            }
        }
        let signals = Arc::new(Signals::default());
        crate::telemetry::install();
        let (recorder, mut record_task) = record::channel(pool.clone(), replica.clone(), signals.clone());
        record_task.observe(Arc::new(crate::telemetry::outcome));
        let snapshot = {
            let client = pool.get().await.map_err(DbError::from)?;
            Arc::new(db::endpoints::load(&client).await?)
        };
        let stopping = CancellationToken::new();
        let shared = Arc::new(Shared {
            deliverer: Deliverer::new(DeliverConfig {
                // Longer, and another replica takes the attempt over while
                // it is in flight (the rule PGWEBHOOKS_LEASE >= 5 x
                // PGWEBHOOKS_TIMEOUT, applied to endpoints' own timeouts).
                max_timeout: Some(config.claim.lease / 5),
                ..config.deliver.clone()
            }),
            recorder,
            pool: pool.clone(),
            snapshot: Arc::new(RwLock::new(snapshot)),
            stopping: stopping.clone(),
            hard_stop: CancellationToken::new(),
            in_memory: AtomicUsize::new(0),
            room: tokio::sync::Notify::new(),
            config: config.dispatch.clone(),
            streaks: std::sync::Mutex::new(std::collections::HashMap::new()),
        });
        let dispatcher = Arc::new(Dispatcher::new(shared.clone()));
        let claimer = Arc::new(Claimer {
            pool: pool.clone(),
            replica: replica.clone(),
            dispatcher,
            signals: signals.clone(),
            config: config.claim.clone(),
        });

        if config.say_failures {
            record_task.notify(shared.snapshot.clone());
        }
        let recorder_done = CancellationToken::new();
        let recorder = tokio::spawn(record_task.run(recorder_done.clone(), config.shutdown_grace));
        let listen_stop = CancellationToken::new();
        let listener = tokio::spawn(listen::run(
            config.database.clone(),
            replica,
            signals.clone(),
            listen_stop.clone(),
        ));
        let mut stages = JoinSet::new();
        let (c, s) = (claimer.clone(), stopping.clone());
        stages.spawn(async move {
            c.run_fanout(s).await;
            "fan-out"
        });
        let (c, s) = (claimer.clone(), stopping.clone());
        stages.spawn(async move {
            c.run_retries(s).await;
            "retries"
        });
        let (c, s) = (claimer.clone(), stopping.clone());
        stages.spawn(async move {
            claim::run_config(c, Duration::from_secs(30), s).await;
            "config"
        });
        let (c, s) = (claimer.clone(), stopping.clone());
        let every = (config.claim.lease / 4).clamp(Duration::from_millis(200), Duration::from_secs(15));
        stages.spawn(async move {
            claim::run_rescue(c, every, s).await;
            "rescue"
        });
        let (m, s) = (
            Maintainer::new(claimer.clone(), config.maintain.clone()),
            stopping.clone(),
        );
        stages.spawn(async move {
            m.run(s).await;
            "maintenance"
        });
        let inbound_stop = CancellationToken::new();
        let (inbound_addr, inbound_task) = match &config.inbound {
            Some(inbound_config) => {
                let ready_signals = signals.clone();
                let ready =
                    Arc::new(move || ready_signals.connected.load(std::sync::atomic::Ordering::Acquire));
                let router = inbound::router(
                    pool.clone(),
                    config.database.tls_connector(),
                    inbound_config.clone(),
                    ready,
                );
                let (addr, task) = inbound::serve(router, inbound_config, inbound_stop.clone())
                    .await
                    .map_err(|e| StartError::Listen(inbound_config.listen, e))?;
                tracing::info!(%addr, "inbound server listening");
                (Some(addr), Some(task))
            }
            None => (None, None),
        };
        let (admin_addr, admin_task) = match &config.admin {
            Some(admin) => {
                // A pool of its own: the console cannot take delivery's connections.
                let admin_pool = db::pool(config.database.clone(), 4);
                let router = crate::admin::router(admin_pool, shared.snapshot.clone(), admin.clone());
                let (addr, task) = crate::admin::serve(router, admin, inbound_stop.clone())
                    .await
                    .map_err(|e| StartError::Listen(admin.listen, e))?;
                if admin.token.is_none() {
                    tracing::info!(%addr, "admin listener refuses every request until PGWEBHOOKS_ADMIN_TOKEN is set");
                } else {
                    tracing::info!(%addr, "admin listener (console, /api/v1) listening");
                }
                (Some(addr), Some(task))
            }
            None => (None, None),
        };
        tracing::info!(replica = %config.replica, "sidecar started");
        Ok(Sidecar {
            claimer,
            shared,
            signals,
            pool,
            stages,
            listener,
            listen_stop,
            recorder,
            recorder_done,
            grace: config.shutdown_grace,
            inbound_addr,
            inbound_stop,
            inbound_task,
            admin_addr,
            admin_task,
        })
    }

    /// Runs until `shutdown` fires (or a stage stops on its own, which is
    /// reported), then stops gracefully.
    pub async fn run_until(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => tracing::info!("shutting down"),
            Some(stage) = self.stages.join_next() => match stage {
                Ok(name) => tracing::error!(stage = name, "stage stopped unexpectedly; shutting down"),
                Err(e) => tracing::error!(error = %e, "stage panicked; shutting down"),
            },
        }
        self.stop().await;
    }

    /// Graceful stop.
    pub async fn stop(mut self) {
        self.inbound_stop.cancel();
        if let Some(task) = self.inbound_task.take() {
            let _ = task.await;
        }
        if let Some(task) = self.admin_task.take() {
            let _ = task.await;
        }
        self.shared.stopping.cancel();
        while self.stages.join_next().await.is_some() {}
        let dispatcher = self.claimer.dispatcher.clone();
        let drain = dispatcher.drain();
        tokio::pin!(drain);
        if tokio::time::timeout(self.grace, &mut drain).await.is_err() {
            tracing::warn!(grace = ?self.grace, "in-flight attempts still running after the grace period; releasing them");
            self.shared.hard_stop.cancel();
            drain.await;
        }
        self.recorder_done.cancel();
        let _ = (&mut self.recorder).await;
        if let Ok(client) = self.pool.get().await {
            let _ = db::delivery::listener_forget(&client, &self.claimer.replica).await;
        }
        self.listen_stop.cancel();
        let _ = (&mut self.listener).await;
        tracing::info!("stopped");
    }
}
