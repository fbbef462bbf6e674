//! A loopback TCP proxy that can cut a client off from its server without
//! closing anything: `hold` stops moving bytes both ways (what is read is
//! kept, nothing more is read, so the kernel's buffers fill), as a network
//! partition or a frozen process looks from the other side; `release`
//! moves them again. `reset` closes every connection, as a dead peer.
//! `delay` adds latency each way (bytes keep their order).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Proxy {
    pub port: u16,
    held: watch::Sender<bool>,
    delay: watch::Sender<Duration>,
    connections: Arc<std::sync::Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (held, _) = watch::channel(false);
        let (delay, _) = watch::channel(Duration::ZERO);
        let connections = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (h, d, set) = (held.clone(), delay.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let mut set = set.lock().unwrap();
                set.spawn(pump(cr, sw, h.subscribe(), d.subscribe()));
                set.spawn(pump(sr, cw, h.subscribe(), d.subscribe()));
            }
        });
        Proxy {
            port,
            held,
            delay,
            connections,
            accept,
        }
    }

    /// Stops moving bytes, both ways, on every connection (and new ones).
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Each chunk is passed on `d` after it was read, each way.
    #[allow(dead_code)] // not every test binary delays
    pub fn delay(&self, d: Duration) {
        self.delay.send_replace(d);
    }

    /// Closes every connection made so far.
    #[allow(dead_code)] // not every test binary resets
    pub fn reset(&self) {
        self.connections.lock().unwrap().abort_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections.lock().unwrap().abort_all();
    }
}

/// Copies `from` to `to`, pausing (before reading and before writing)
/// while held, each chunk passed on its delay after it was read (a second
/// task writes, so reading goes on meanwhile and the order is kept).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut held: watch::Receiver<bool>,
    delay: watch::Receiver<Duration>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let mut write_held = held.clone();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if write_held.wait_for(|h| !h).await.is_err() || to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if held.wait_for(|h| !h).await.is_err() {
            break;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let due = tokio::time::Instant::now() + *delay.borrow();
        if tx.send((due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
