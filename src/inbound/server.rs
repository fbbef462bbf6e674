//! The inbound server's connections: HTTP/1.1 with bounded patience. A
//! client has `read_timeout` to send a request's head (an idle keep-alive
//! connection too), a head over [`MAX_HEAD`] bytes is answered 431, and at
//! most `max_connections` connections are served at once (more wait in the
//! listen backlog). The callback handler bounds the body the same way (size
//! and time), so a slow or stalled client costs bounded memory for a
//! bounded time, and never holds a database connection.
//! Answers are bounded too: a client that stops reading them (say, while it
//! pipelines requests) is cut off once a write has made no progress for
//! `read_timeout` ([`Stalled`]); a connection serves at most
//! [`MAX_REQUESTS`] requests and lives at most [`MAX_LIFETIME`], so no
//! client holds a slot forever.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::InboundConfig;

/// Largest request head (request line and headers) accepted: 64 KiB.
pub const MAX_HEAD: usize = 64 * 1024;

/// Requests one connection serves; the last answer says `connection: close`.
pub(super) const MAX_REQUESTS: usize = 1000;

/// How long one connection may live: then it finishes the request in
/// progress and closes (and is dropped `read_timeout` later, whatever it is
/// doing).
pub(super) const MAX_LIFETIME: Duration = Duration::from_secs(300);

/// A stream whose writes (and flushes) fail with `TimedOut` once they have
/// made no progress for `limit`: a peer that stops reading cannot keep the
/// connection, and its slot, by leaving its receive window shut.
pub(super) struct Stalled<S> {
    inner: S,
    limit: Duration,
    stuck: Option<Pin<Box<Sleep>>>,
}

impl<S> Stalled<S> {
    pub(super) fn new(inner: S, limit: Duration) -> Self {
        Stalled {
            inner,
            limit,
            stuck: None,
        }
    }

    /// `Pending` from the inner stream: start (or check) the clock.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let stuck = self
            .stuck
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stuck.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing of the answer for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stuck = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.pending(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalled<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(r, cx)
    }
}

/// The address a connection was accepted on (ours), in every request's
/// extensions beside axum's `ConnectInfo<SocketAddr>` (the client's).
#[derive(Debug, Clone, Copy)]
pub struct LocalAddr(pub SocketAddr);

/// The router for one connection: counts its requests, and asks the client
/// to close after [`MAX_REQUESTS`]. Each request carries the connection's
/// two addresses.
struct Counted {
    inner: TowerToHyperService<Router>,
    served: AtomicUsize,
    peer: SocketAddr,
    local: SocketAddr,
}

type Answer = axum::response::Response;

impl hyper::service::Service<Request<Incoming>> for Counted {
    type Response = Answer;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Self::Error>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        req.extensions_mut().insert(LocalAddr(self.local));
        let last = self.served.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_REQUESTS;
        let answer = self.inner.call(req);
        Box::pin(async move {
            let mut resp = answer.await?;
            if last {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp)
        })
    }
}

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
    // A request in progress gets its whole time (head, body, apply) to
    // finish after a graceful close.
    let limits = (
        config.read_timeout,
        config.read_timeout * 2 + config.apply_timeout,
    );
    let handle = tokio::spawn(accept_loop(listener, router, http, slots, limits, shutdown));
    Ok((addr, handle))
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    http: http1::Builder,
    slots: Arc<Semaphore>,
    (patience, grace): (Duration, Duration),
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        // A free slot first: at the limit, new connections wait in the backlog.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue; // gone already
        };
        let service = Counted {
            inner: TowerToHyperService::new(router.clone()),
            served: AtomicUsize::new(0),
            peer,
            local,
        };
        let conn = http.serve_connection(TokioIo::new(Stalled::new(stream, patience)), service);
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(error = %crate::errors::error_chain(&error), "inbound connection ended");
                    }
                    return;
                }
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(MAX_LIFETIME) => {
                    tracing::debug!("inbound connection closed: it lived long enough");
                }
            }
            conn.as_mut().graceful_shutdown();
            // The request in progress may finish; a client that keeps it
            // from finishing is dropped.
            let _ = tokio::time::timeout(grace, conn).await;
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
    tracing::error!(error = %crate::errors::error_chain(&error), "inbound server: accept failed; retrying in 1s");
    tokio::time::sleep(Duration::from_secs(1)).await; // back off instead of spinning on EMFILE
}
