//! `pgwebhooks run`: wires the stages together, supervises them and owns
//! shutdown. Wiring only: what each stage does is in its own module.
//!
//! The same [`Sidecar::start`] runs in production and in the tests.
//! Stages: listen (wake-ups), fan-out, retries, rescue, subscriptions,
//! breaker probes, maintenance, the recorder and the inbound server. Each
//! runs as one supervised task: one that stops or panics on its own is named
//! in the log and the sidecar shuts down (the orchestrator restarts it), so
//! nothing stops silently. On shutdown: stop the inbound server and
//! claiming, release queued jobs, let in-flight attempts finish within the
//! grace period (then abandon and release them), write every outcome, leave.

mod config;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::claim::Claimed;
pub use config::{default_replica_name, SidecarConfig};

use crate::breaker::{Breaker, Prober};
use crate::claim::{self, Claimer};
use crate::db::{self, DbError};
use crate::deliver::{DeliverConfig, Deliverer};
use crate::dispatch::Dispatcher;
use crate::endpoints::Subscriptions;
use crate::env_endpoints;
use crate::inbound;
use crate::listen::{self, Signals};
use crate::maintain::Maintainer;
use crate::record;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the database schema is not migrated to this version: run `pgwebhooks migrate` first")]
    NotMigrated,
    #[error("cannot listen on {0}")]
    Listen(std::net::SocketAddr, #[source] std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// Tasks that stop together, each reporting its name when it ends.
struct Supervised {
    tasks: JoinSet<()>,
    ended: mpsc::UnboundedSender<(&'static str, bool)>,
}

impl Supervised {
    fn new() -> (Supervised, mpsc::UnboundedReceiver<(&'static str, bool)>) {
        let (ended, rx) = mpsc::unbounded_channel();
        (
            Supervised {
                tasks: JoinSet::new(),
                ended,
            },
            rx,
        )
    }

    /// Runs `stage`; when it ends (or panics) its name is reported.
    fn spawn(&mut self, name: &'static str, stage: impl Future<Output = ()> + Send + 'static) {
        let ended = self.ended.clone();
        let inner = tokio::spawn(stage);
        self.tasks.spawn(async move {
            let panicked = inner.await.is_err();
            let _ = ended.send((name, panicked));
        });
    }

    async fn join(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A running sidecar.
pub struct Sidecar {
    pub signals: Arc<Signals>,
    pub pool: deadpool_postgres::Pool,
    replica: Arc<str>,
    dispatcher: Arc<Dispatcher>,
    /// Claiming, probes, maintenance: stopped first.
    stages: Supervised,
    stopping: CancellationToken,
    /// The recorder: stopped once every attempt is over.
    recorder: Supervised,
    recorder_done: CancellationToken,
    /// LISTEN: stopped last.
    listener: Supervised,
    listen_stop: CancellationToken,
    /// The inbound server: stopped first of all.
    inbound: Supervised,
    inbound_stop: CancellationToken,
    ended: mpsc::UnboundedReceiver<(&'static str, bool)>,
    grace: Duration,
    /// Where the inbound server listens, when it runs.
    pub inbound_addr: Option<std::net::SocketAddr>,
    /// Where the admin listener (console, /api/v1) listens, when it runs.
    pub admin_addr: Option<std::net::SocketAddr>,
}

/// The stages, assembled and not yet running: what [`Sidecar::start`]
/// spawns, and what tests drive one pass at a time (`fanout_once`,
/// `retry_once`, `rescue_cycle`, `run_once` of the others).
pub struct Stages {
    pub config: SidecarConfig,
    pub pool: deadpool_postgres::Pool,
    pub replica: Arc<str>,
    pub signals: Arc<Signals>,
    pub dispatcher: Arc<Dispatcher>,
    pub subscriptions: Subscriptions,
    pub claimer: Arc<Claimer>,
    pub prober: Prober,
    pub maintainer: Maintainer,
    pub recorder: record::RecordTask,
}

impl Stages {
    /// Checks the schema, writes the environment's endpoints, says what is
    /// misconfigured, and builds every stage.
    pub async fn assemble(mut config: SidecarConfig) -> Result<Stages, StartError> {
        // Every session of ours (this pool, the admin listener's, LISTEN) is bounded by the lease.
        config.database = config
            .database
            .bounded(&db::SessionBounds::for_lease(config.claim.lease));
        if config.pool_size < 4 {
            return Err(StartError::Config(format!(
                "a pool of {} connections is too small: fan-out, retries, the recorder and the inbound server \
                 need at least 4",
                config.pool_size
            )));
        }
        let pool = db::pool(config.database.clone(), config.pool_size);
        let replica: Arc<str> = config.replica.clone().into();
        preflight(&pool, &config).await?;

        let signals = Arc::new(Signals::default());
        crate::telemetry::install();
        let (recorder, mut record_task) = record::channel(pool.clone(), replica.clone(), signals.clone());
        record_task.observe(Arc::new(crate::telemetry::outcome));
        let subscriptions = {
            let client = pool.get().await.map_err(DbError::from)?;
            Subscriptions::new(db::endpoints::load(&client).await?)
        };
        if config.say_failures {
            record_task.notify(subscriptions.clone());
        }
        let deliverer = Arc::new(Deliverer::new(DeliverConfig {
            // Longer, and another replica takes the attempt over while it is
            // in flight (the rule PGWEBHOOKS_LEASE >= 5 x PGWEBHOOKS_TIMEOUT,
            // applied to endpoints' own timeouts).
            max_timeout: Some(config.claim.lease / 5),
            ..config.deliver.clone()
        }));
        let dispatcher = Arc::new(Dispatcher::new(
            config.dispatch.clone(),
            deliverer.clone(),
            recorder.clone(),
            pool.clone(),
            subscriptions.clone(),
            Arc::new(Breaker::new(config.breaker.clone())),
        ));
        let claimer = Arc::new(Claimer {
            pool: pool.clone(),
            replica: replica.clone(),
            dispatcher: dispatcher.clone(),
            recorder: recorder.clone(),
            subscriptions: subscriptions.clone(),
            signals: signals.clone(),
            config: config.claim.clone(),
        });
        let prober = Prober::new(
            pool.clone(),
            replica.clone(),
            deliverer,
            recorder,
            subscriptions.clone(),
            config.claim.lease,
            config.breaker.clone(),
        );
        let maintainer = Maintainer::new(pool.clone(), signals.clone(), config.maintain.clone());
        Ok(Stages {
            config,
            pool,
            replica,
            signals,
            dispatcher,
            subscriptions,
            claimer,
            prober,
            maintainer,
            recorder: record_task,
        })
    }
}

impl Sidecar {
    pub async fn start(config: SidecarConfig) -> Result<Sidecar, StartError> {
        Self::spawn(Stages::assemble(config).await?).await
    }

    /// Runs assembled stages, each as a supervised task.
    pub async fn spawn(stages_: Stages) -> Result<Sidecar, StartError> {
        let Stages {
            config,
            pool,
            replica,
            signals,
            dispatcher,
            subscriptions,
            claimer,
            prober,
            maintainer,
            recorder: record_task,
        } = stages_;
        let (mut recorder_task, ended) = Supervised::new();
        let recorder_done = CancellationToken::new();
        recorder_task.spawn(
            "recorder",
            record_task.run(recorder_done.clone(), config.shutdown_grace),
        );
        let mut listener = Supervised {
            tasks: JoinSet::new(),
            ended: recorder_task.ended.clone(),
        };
        let listen_stop = CancellationToken::new();
        listener.spawn(
            "listen",
            listen::run(
                config.database.clone(),
                replica.clone(),
                signals.clone(),
                listen_stop.clone(),
            ),
        );

        let stopping = CancellationToken::new();
        let mut stages = Supervised {
            tasks: JoinSet::new(),
            ended: recorder_task.ended.clone(),
        };
        let s = stopping.clone();
        stages.spawn("fan-out", claimer.clone().run_fanout(s.clone()));
        stages.spawn("retries", claimer.clone().run_retries(s.clone()));
        stages.spawn(
            "subscriptions",
            claim::run_config(claimer.clone(), config.claim.reload_every, s.clone()),
        );
        let every = config.claim.rescue_interval();
        stages.spawn("rescue", claim::run_rescue(claimer, every, s.clone()));
        stages.spawn("breaker probes", prober.run(s.clone()));
        stages.spawn("maintenance", maintainer.run(s));

        let mut inbound_tasks = Supervised {
            tasks: JoinSet::new(),
            ended: recorder_task.ended.clone(),
        };
        let inbound_stop = CancellationToken::new();
        let inbound_addr = match &config.inbound {
            Some(inbound_config) => {
                let ready_signals = signals.clone();
                let ready = Arc::new(move || {
                    if let Some(refused) = ready_signals.refusals.current() {
                        return Err(refused.describe());
                    }
                    match ready_signals.connected.load(std::sync::atomic::Ordering::Acquire) {
                        true => Ok(()),
                        false => Err("the LISTEN connection to Postgres is down; reconnecting".to_owned()),
                    }
                });
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
                inbound_tasks.spawn("inbound server", async move {
                    let _ = task.await;
                });
                Some(addr)
            }
            None => None,
        };
        let admin_addr = match &config.admin {
            // It would only refuse every request, and its port may be
            // another tool's (say Prometheus's): not bound at all.
            Some(admin) if admin.token.is_none() => {
                tracing::warn!(
                    listen = %admin.listen,
                    "admin listener (console, /api/v1) not started: PGWEBHOOKS_ADMIN_TOKEN is not set; \
                     set it (at least 16 printable characters, e.g. `openssl rand -hex 32`) to serve it \
                     on PGWEBHOOKS_ADMIN_LISTEN"
                );
                None
            }
            Some(admin) => {
                // A pool of its own: the console cannot take delivery's connections.
                let admin_pool = db::pool(config.database.clone(), 4);
                let health_signals = signals.clone();
                let health: crate::admin::Health =
                    Arc::new(move || health_signals.refusals.current().map(|r| r.describe()));
                let router = crate::admin::router_with_health(
                    admin_pool,
                    subscriptions.clone(),
                    admin.clone(),
                    health,
                );
                let (addr, task) = crate::admin::serve(router, admin, inbound_stop.clone())
                    .await
                    .map_err(|e| StartError::Listen(admin.listen, e))?;
                tracing::info!(%addr, "admin listener (console, /api/v1) listening");
                inbound_tasks.spawn("admin listener", async move {
                    let _ = task.await;
                });
                Some(addr)
            }
            None => None,
        };
        tracing::info!(replica = %config.replica, "sidecar started");
        Ok(Sidecar {
            signals,
            pool,
            replica,
            dispatcher,
            stages,
            stopping,
            recorder: recorder_task,
            recorder_done,
            listener,
            listen_stop,
            inbound: inbound_tasks,
            inbound_stop,
            ended,
            grace: config.shutdown_grace,
            inbound_addr,
            admin_addr,
        })
    }

    /// Runs until `shutdown` fires, or until a stage stops on its own (which
    /// is reported, naming it), then stops gracefully.
    pub async fn run_until(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => tracing::info!("shutting down"),
            Some((stage, panicked)) = self.ended.recv() => {
                if panicked {
                    tracing::error!(stage, "stage panicked; shutting down");
                } else {
                    tracing::error!(stage, "stage stopped unexpectedly; shutting down");
                }
            }
        }
        self.stop().await;
    }

    /// Graceful stop.
    pub async fn stop(mut self) {
        self.inbound_stop.cancel();
        self.inbound.join().await;
        self.stopping.cancel();
        self.dispatcher.stop_taking();
        self.stages.join().await;
        let drain = self.dispatcher.drain();
        tokio::pin!(drain);
        if tokio::time::timeout(self.grace, &mut drain).await.is_err() {
            tracing::warn!(grace = ?self.grace, "in-flight attempts still running after the grace period; releasing them");
            self.dispatcher.abandon();
            drain.await;
        }
        self.recorder_done.cancel();
        self.recorder.join().await;
        if let Ok(client) = self.pool.get().await {
            let _ = db::delivery::idle_flag_forget(&client, &self.replica).await;
        }
        self.listen_stop.cancel();
        self.listener.join().await;
        tracing::info!("stopped");
    }
}

/// Before anything runs: the schema is current, the environment's
/// endpoints are written, and what is misconfigured is said.
async fn preflight(pool: &deadpool_postgres::Pool, config: &SidecarConfig) -> Result<(), StartError> {
    let mut client = pool.get().await.map_err(|e| config.database.pool_error(e))?;
    if !db::migrate::is_current(&client).await? {
        return Err(StartError::NotMigrated);
    }
    if !config.env_endpoints.urls.is_empty() {
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
    let setup = db::ops::setup(
        &client,
        config.inbound.as_ref().map(|i| i.secret.is_some()),
        config.deliver.allow_private_targets,
    )
    .await?;
    for line in crate::notice::misconfigurations(&setup) {
        tracing::warn!("{line}");
    }
    Ok(())
}
