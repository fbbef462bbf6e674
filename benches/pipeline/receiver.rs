//! The fast local receiver: an axum server on 127.0.0.1 with a runtime of
//! its own, answering 200 with an empty body. It counts requests, records
//! the first arrival of every `webhook-id`, and verifies the Standard
//! Webhooks signature of every 100th request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::serve::ListenerExt;
use pgwebhooks::sign::{self, SigningKey};
use uuid::Uuid;

const SHARDS: usize = 64;
pub const VERIFY_EVERY: u64 = 100;

pub struct Stats {
    base: Instant,
    pub requests: AtomicU64,
    /// Distinct webhook-ids since the last reset.
    pub unique: AtomicU64,
    pub duplicates: AtomicU64,
    pub without_id: AtomicU64,
    pub verified: AtomicU64,
    /// Over the whole run (never reset): any is a failure.
    pub bad_signatures: AtomicU64,
    /// While set (load generators that cannot sign), failed checks are
    /// counted here instead of as bad signatures.
    pub lenient: AtomicBool,
    pub lenient_failures: AtomicU64,
    /// Nanoseconds after `base` of the first request since the reset, + 1.
    first_ns: AtomicU64,
    arrivals: Vec<Mutex<HashMap<Uuid, Instant>>>,
    keys: Vec<SigningKey>,
    have_sample: AtomicBool,
    sample: Mutex<Option<Bytes>>,
    pub bad_examples: Mutex<Vec<String>>,
}

impl Stats {
    /// Forgets arrivals and per-scenario counts (not bad signatures).
    pub fn reset(&self) {
        for shard in &self.arrivals {
            shard.lock().unwrap().clear();
        }
        for c in [
            &self.requests,
            &self.unique,
            &self.duplicates,
            &self.without_id,
            &self.first_ns,
        ] {
            c.store(0, Relaxed);
        }
    }

    pub fn unique(&self) -> u64 {
        self.unique.load(Relaxed)
    }

    pub fn arrival(&self, id: &Uuid) -> Option<Instant> {
        self.shard(id).lock().unwrap().get(id).copied()
    }

    /// When the first request since the reset arrived.
    pub fn first(&self) -> Option<Instant> {
        match self.first_ns.load(Relaxed) {
            0 => None,
            n => Some(self.base + Duration::from_nanos(n - 1)),
        }
    }

    /// A body the sidecar sent (for the HTTP load generator).
    pub fn sample_body(&self) -> Option<Bytes> {
        self.sample.lock().unwrap().clone()
    }

    fn shard(&self, id: &Uuid) -> &Mutex<HashMap<Uuid, Instant>> {
        &self.arrivals[(id.as_u128() as usize) % SHARDS]
    }
}

pub struct Receiver {
    pub url: String,
    pub stats: Arc<Stats>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Starts the server; `secret` is the endpoint's `whsec_` secret.
    pub fn start(secret: &str) -> Result<Receiver, Box<dyn std::error::Error + Send + Sync>> {
        let stats = Arc::new(Stats {
            base: Instant::now(),
            requests: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            without_id: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            lenient: AtomicBool::new(false),
            lenient_failures: AtomicU64::new(0),
            first_ns: AtomicU64::new(0),
            arrivals: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            keys: vec![SigningKey::parse(secret)?],
            have_sample: AtomicBool::new(false),
            sample: Mutex::new(None),
            bad_examples: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("receiver")
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let app = axum::Router::new().fallback(hook).with_state(stats.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener)
                .expect("receiver listener")
                .tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            url,
            stats,
            runtime: Some(runtime),
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn hook(State(s): State<Arc<Stats>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = Instant::now();
    let n = s.requests.fetch_add(1, Relaxed);
    let since_base = now.duration_since(s.base).as_nanos() as u64 + 1;
    let _ = s.first_ns.compare_exchange(0, since_base, Relaxed, Relaxed);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header("webhook-id").and_then(|id| Uuid::parse_str(id).ok()) {
        Some(id) => {
            let fresh = {
                let mut shard = s.shard(&id).lock().unwrap();
                let before = shard.len();
                shard.entry(id).or_insert(now);
                shard.len() > before
            };
            if fresh {
                s.unique.fetch_add(1, Relaxed);
            } else {
                s.duplicates.fetch_add(1, Relaxed);
            }
        }
        None => {
            s.without_id.fetch_add(1, Relaxed);
        }
    }
    if n.is_multiple_of(VERIFY_EVERY) {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let result = sign::verify(
            &s.keys,
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
            &body,
            unix,
            300,
        );
        match result {
            Ok(()) => {
                s.verified.fetch_add(1, Relaxed);
            }
            Err(_) if s.lenient.load(Relaxed) => {
                s.lenient_failures.fetch_add(1, Relaxed);
            }
            Err(e) => {
                s.bad_signatures.fetch_add(1, Relaxed);
                let mut ex = s.bad_examples.lock().unwrap();
                if ex.len() < 5 {
                    ex.push(format!("webhook-id {:?}: {e}", header("webhook-id")));
                }
            }
        }
    }
    if !s.have_sample.load(Relaxed) && header("webhook-signature").is_some() {
        *s.sample.lock().unwrap() = Some(body);
        s.have_sample.store(true, Relaxed);
    }
    StatusCode::OK
}
