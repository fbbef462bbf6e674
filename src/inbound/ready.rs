//! The database half of `/readyz`: "is the schema current?", asked of
//! Postgres at most once per [`READY_TTL`] whatever the traffic, by one
//! request at a time, so an unauthenticated client cannot make the
//! sidecar query the database (second audit, L8).

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// How long an answer is reused.
pub(super) const READY_TTL: Duration = Duration::from_secs(1);

/// The last answer and when it was asked.
pub(super) struct ReadyCache {
    ttl: Duration,
    last: Mutex<Option<(Instant, bool)>>,
}

impl ReadyCache {
    pub(super) fn new(ttl: Duration) -> ReadyCache {
        ReadyCache {
            ttl,
            last: Mutex::new(None),
        }
    }

    /// The cached answer while it is fresh; else `check`'s, remembered.
    /// Requests arriving during a check wait for it and share its answer.
    pub(super) async fn get<F, Fut>(&self, check: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, ok)) = *last {
            if at.elapsed() < self.ttl {
                return ok;
            }
        }
        let ok = check().await;
        *last = Some((Instant::now(), ok));
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn asks_once_per_ttl_whatever_the_traffic() {
        let cache = Arc::new(ReadyCache::new(Duration::from_millis(200)));
        let asked = Arc::new(AtomicUsize::new(0));
        let ask = |answer: bool| {
            let asked = asked.clone();
            move || async move {
                asked.fetch_add(1, Ordering::SeqCst);
                answer
            }
        };
        // 200 requests, 50 of them at once: one question.
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, ask) = (cache.clone(), ask(true));
            tasks.push(tokio::spawn(async move { cache.get(ask).await }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        for _ in 0..150 {
            assert!(cache.get(ask(false)).await, "the fresh answer is reused");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // Once it is stale (the wait is the TTL itself, the condition under
        // test), the next request asks again and its answer holds.
        let stale_at = Instant::now() + Duration::from_millis(200);
        tokio::time::sleep_until(stale_at.into()).await;
        assert!(!cache.get(ask(false)).await);
        assert!(!cache.get(ask(true)).await);
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }
}
