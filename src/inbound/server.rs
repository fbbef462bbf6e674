//! The inbound server's connections: HTTP/1.1 with bounded patience. A
//! client has `read_timeout` to send a request's head (an idle keep-alive
//! connection too), a head over [`MAX_HEAD`] bytes is answered 431, and at
//! most `max_connections` connections are served at once (more wait in the
//! listen backlog). The callback handler bounds the body the same way (size
//! and time), so a slow or stalled client costs bounded memory for a
//! bounded time, and never holds a database connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::InboundConfig;

/// Largest request head (request line and headers) accepted: 64 KiB.
pub const MAX_HEAD: usize = 64 * 1024;

/// Binds `config.listen` and serves `router` until `shutdown`; returns the
/// bound address at once. On shutdown it stops accepting, lets requests in
/// progress finish, and returns when every connection has closed.
pub async fn serve(
    router: Router,
    config: &InboundConfig,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.read_timeout)
        .max_header_size(MAX_HEAD);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let handle = tokio::spawn(accept_loop(listener, router, http, slots, shutdown));
    Ok((addr, handle))
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    http: http1::Builder,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        // A free slot first: at the limit, new connections wait in the backlog.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(%error, "inbound connection ended");
                    }
                    return;
                }
                _ = stop.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    connections.close();
    connections.wait().await;
}

/// A failed `accept`: a connection that went away before we took it is
/// nothing; anything else (out of file descriptors) is logged and retried
/// after a pause rather than spun on.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "inbound server: accept failed; retrying in 1s");
    tokio::time::sleep(Duration::from_secs(1)).await; // back off instead of spinning on EMFILE
}
