//! The wake-up: one dedicated connection LISTENing on `webhooks`, driven
//! by hand (`poll_message`), never a pooled one. A notification is a hint;
//! the loops also poll. Reconnects with backoff, and every (re)connect
//! wakes everyone to scan, since notifications sent meanwhile are lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// What the replica's tasks tell each other: the listener raises the three
/// wake-ups on NOTIFY and on every (re)connect, the recorder raises
/// `retry` after routing work to the retry path and the rescue `retry`
/// after re-queuing deliveries a replica left; `connected`, `reconnects` and `refusals` are
/// read by `/readyz`, the console and the metrics.
#[derive(Default)]
pub struct Signals {
    /// New events may be committed.
    pub events: Notify,
    /// Endpoints or secrets changed.
    pub config: Notify,
    /// Deliveries were re-queued (operator retry, endpoint resumed).
    pub retry: Notify,
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    /// Postgres refusing our writes for lack of resources (disk full).
    pub refusals: crate::db::refusal::Refusals,
}

impl Signals {
    fn all(&self) {
        self.events.notify_one();
        self.config.notify_one();
        self.retry.notify_one();
    }
}

/// Runs until `shutdown`. `application_name` lets other replicas see that
/// this replica's listener is alive.
pub async fn run(
    mut config: crate::db::DbConfig,
    replica: Arc<str>,
    signals: Arc<Signals>,
    shutdown: CancellationToken,
) {
    config.pg.application_name(format!("pgwebhooks listen {replica}"));
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    while !shutdown.is_cancelled() {
        match listen_once(&config, &signals, &shutdown, &mut first).await {
            Ok(()) if shutdown.is_cancelled() => return,
            Ok(()) => signals.connected.store(false, Ordering::Release),
            Err(error) => {
                signals.connected.store(false, Ordering::Release);
                let error = crate::errors::error_chain(&error);
                tracing::warn!(%error, retry_in = ?backoff, "the LISTEN connection was lost");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    config: &crate::db::DbConfig,
    signals: &Signals,
    shutdown: &CancellationToken,
    first: &mut bool,
) -> Result<(), crate::db::DbError> {
    let (client, mut connection) = config.connect_raw().await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = tx.send(Ok(n.payload().to_owned()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = tx.send(Err(e));
                    return;
                }
                None => return,
            }
        }
    });
    let result = async {
        crate::db::listen(&client).await?;
        signals.connected.store(true, Ordering::Release);
        if !*first {
            signals.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!("the LISTEN connection is back; scanning");
        }
        *first = false;
        signals.all();
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Ok(payload)) => match payload.as_str() {
                        "config" => signals.config.notify_one(),
                        "retry" => signals.retry.notify_one(),
                        _ => signals.events.notify_one(),
                    },
                    Some(Err(e)) => return Err(e),
                    None => {
                        // The driver ended without an error: the server closed the connection.
                        crate::db::ping(&client).await?;
                        return Ok(false);
                    }
                },
                _ = shutdown.cancelled() => return Ok(true),
            }
        }
    }
    .await;
    driver.abort();
    result.map(|_shutdown| ()).map_err(crate::db::DbError::from)
}
