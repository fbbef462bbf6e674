//! A real HTTP receiver on 127.0.0.1, port 0. It answers as the test's
//! `reply` function says and hands every request to the test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use tokio::sync::mpsc;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// 0-based arrival index.
    pub n: usize,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    pub fn webhook_id(&self) -> String {
        self.header("webhook-id").unwrap_or_default().to_owned()
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Wait this long before answering (past the sender's timeout: no answer).
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
    pub fn ok() -> Reply {
        Reply::status(200)
    }
    pub fn body(mut self, b: &str) -> Reply {
        self.body = b.into();
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

type ReplyFn = dyn Fn(&Received) -> Reply + Send + Sync;

pub struct Receiver {
    pub url: String,
    rx: mpsc::UnboundedReceiver<Received>,
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// A receiver that answers 200 to everything.
    pub async fn ok() -> Receiver {
        Self::start(|_| Reply::ok()).await
    }

    pub async fn start(reply: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        let reply: Arc<ReplyFn> = Arc::new(reply);
        let state = (tx, count.clone(), reply, Arc::new(Mutex::new(())));
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (tx, count, reply, _) = state.clone();
            async move {
                let got = Received {
                    headers,
                    body,
                    at: Instant::now(),
                    n: count.fetch_add(1, Ordering::SeqCst),
                };
                let r = reply(&got);
                let _ = tx.send(got);
                if !r.delay.is_zero() {
                    tokio::time::sleep(r.delay).await; // scripted slow answer: the sender's deadline passes first
                }
                let mut resp = (StatusCode::from_u16(r.status).unwrap(), r.body).into_response();
                for (k, v) in r.headers {
                    resp.headers_mut().insert(
                        axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        v.parse().unwrap(),
                    );
                }
                resp
            }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { url, rx, count, task }
    }

    /// A receiver that answers `status` until the returned switch is set,
    /// then 200 (an endpoint that is down and comes back).
    pub async fn down_until_switched(status: u16) -> (Receiver, Arc<std::sync::atomic::AtomicBool>) {
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = up.clone();
        let r = Self::start(move |_| {
            if flag.load(Ordering::SeqCst) {
                Reply::ok()
            } else {
                Reply::status(status)
            }
        })
        .await;
        (r, up)
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits for the next request, failing the test after `deadline`.
    pub async fn next(&mut self, deadline: Duration) -> Received {
        tokio::time::timeout(deadline, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no request within {deadline:?}"))
            .expect("receiver running")
    }

    /// Waits for `n` requests in all, failing after `deadline`.
    pub async fn take(&mut self, n: usize, deadline: Duration) -> Vec<Received> {
        let end = tokio::time::Instant::now() + deadline;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match tokio::time::timeout_at(end, self.rx.recv()).await {
                Ok(Some(r)) => out.push(r),
                _ => panic!("received {} of {n} requests within {deadline:?}", out.len()),
            }
        }
        out
    }

    /// Everything received so far, without waiting.
    pub fn drain(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            out.push(r);
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
