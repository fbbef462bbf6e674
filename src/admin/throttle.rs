//! Wrong admin tokens, throttled (security audit 2, L5): every wrong token
//! (a sign-in, a Bearer) fills two leaky buckets, the client's own and
//! everyone's; while one is full, a token is not even checked (429 with
//! `Retry-After`, the right token included, so a full bucket is no
//! oracle). Buckets drain on their own: an attacker who stops locks out no
//! one, and one who goes on gets `burst` guesses, then one per `every`.
//!
//! Everyone's bucket counts and throttles only clients that are not on
//! loopback, so guesses from many addresses never lock out an operator who
//! comes through `kubectl port-forward` or SSH (loopback); loopback has its
//! own bucket like any address. IPv6 clients are counted by their /64 (an
//! attacker holds the whole prefix). Sessions already signed in are never
//! throttled. Per replica, in memory: N replicas allow N times the rate.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A leaky bucket: `burst` failures at once, then one per `every`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub burst: u32,
    pub every: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct ThrottleConfig {
    /// One client address (an IPv6 /64).
    pub per_client: Bucket,
    /// All clients not on loopback together.
    pub everyone: Bucket,
}

impl Default for ThrottleConfig {
    /// 10 wrong tokens per address, then one per 6 s (10 a minute); 100
    /// from everywhere, then 1 a second.
    fn default() -> Self {
        ThrottleConfig {
            per_client: Bucket {
                burst: 10,
                every: Duration::from_secs(6),
            },
            everyone: Bucket {
                burst: 100,
                every: Duration::from_secs(1),
            },
        }
    }
}

/// How many client addresses are remembered; past it, drained ones are
/// forgotten, and new ones count only in everyone's bucket.
const MAX_CLIENTS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Level {
    failures: f64,
    at: Instant,
}

impl Level {
    /// The failures still in the bucket at `now`.
    fn now(&self, bucket: Bucket, now: Instant) -> f64 {
        let drained =
            now.saturating_duration_since(self.at).as_secs_f64() / bucket.every.as_secs_f64().max(1e-9);
        (self.failures - drained).max(0.0)
    }

    /// `None` if one more failure fits; else how long until it does.
    fn wait(&self, bucket: Bucket, now: Instant) -> Option<Duration> {
        let over = self.now(bucket, now) + 1.0 - f64::from(bucket.burst.max(1));
        (over > 0.0).then(|| bucket.every.mul_f64(over))
    }

    fn add(&mut self, bucket: Bucket, now: Instant) {
        self.failures = self.now(bucket, now) + 1.0;
        self.at = now;
    }
}

#[derive(Debug)]
struct State {
    everyone: Level,
    clients: HashMap<IpAddr, Level>,
}

#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    state: Mutex<State>,
}

/// The address a client is counted by: IPv4 as it is, IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

fn counts_for_everyone(client: Option<IpAddr>) -> bool {
    !client.is_some_and(|ip| ip.to_canonical().is_loopback())
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            config,
            state: Mutex::new(State {
                everyone: Level {
                    failures: 0.0,
                    at: Instant::now(),
                },
                clients: HashMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it cannot leave the levels inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May this client's token be checked now? `Err(wait)`: not before
    /// `wait` has passed.
    pub fn admit(&self, client: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let state = self.state();
        let own = client
            .and_then(|ip| state.clients.get(&key(ip)))
            .and_then(|l| l.wait(self.config.per_client, now));
        let all = counts_for_everyone(client)
            .then(|| state.everyone.wait(self.config.everyone, now))
            .flatten();
        match own.max(all) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// The client presented a wrong token. Returns whether that filled a
    /// bucket (the next try is throttled): worth one line in the log.
    pub fn failed(&self, client: Option<IpAddr>, now: Instant) -> bool {
        let (per_client, everyone) = (self.config.per_client, self.config.everyone);
        let mut state = self.state();
        let mut full = false;
        if counts_for_everyone(client) {
            state.everyone.add(everyone, now);
            full |= state.everyone.wait(everyone, now).is_some();
        }
        if let Some(ip) = client.map(key) {
            if state.clients.len() >= MAX_CLIENTS && !state.clients.contains_key(&ip) {
                state.clients.retain(|_, l| l.now(per_client, now) > 0.0);
            }
            if state.clients.len() < MAX_CLIENTS || state.clients.contains_key(&ip) {
                let level = state.clients.entry(ip).or_insert(Level {
                    failures: 0.0,
                    at: now,
                });
                level.add(per_client, now);
                full |= level.wait(per_client, now).is_some();
            }
        }
        full
    }
}

/// `Retry-After`'s value: whole seconds, at least 1.
pub fn retry_after(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            per_client: Bucket {
                burst: 3,
                every: Duration::from_secs(10),
            },
            everyone: Bucket {
                burst: 5,
                every: Duration::from_secs(1),
            },
        }
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_and_the_bucket_drains() {
        let t = Throttle::new(config());
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let now = Instant::now();
        for i in 0..3 {
            assert!(t.admit(Some(ip), now).is_ok(), "try {i}");
            assert_eq!(t.failed(Some(ip), now), i == 2, "try {i}");
        }
        let wait = t.admit(Some(ip), now).unwrap_err();
        assert_eq!(wait, Duration::from_secs(10));
        assert_eq!(retry_after(wait), 10);
        // Another address is not this one's bucket.
        assert!(t.admit(Some("203.0.113.8".parse().unwrap()), now).is_ok());
        // It recovers: one more try after `every`, the whole burst later.
        assert!(t.admit(Some(ip), now + Duration::from_secs(9)).is_err());
        assert!(t.admit(Some(ip), now + Duration::from_secs(10)).is_ok());
        t.failed(Some(ip), now + Duration::from_secs(10));
        assert!(t.admit(Some(ip), now + Duration::from_secs(11)).is_err());
        assert!(t.admit(Some(ip), now + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn many_addresses_fill_everyones_bucket_but_never_loopbacks() {
        let t = Throttle::new(config());
        let now = Instant::now();
        for i in 0..5u8 {
            let ip = IpAddr::from([198, 51, 100, i]);
            assert!(t.admit(Some(ip), now).is_ok());
            t.failed(Some(ip), now);
        }
        let fresh = IpAddr::from([198, 51, 100, 200]);
        assert_eq!(t.admit(Some(fresh), now), Err(Duration::from_secs(1)));
        assert!(t.admit(None, now).is_err(), "an unknown address counts as remote");
        // The operator on loopback (port-forward) still signs in.
        for lo in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(t.admit(Some(lo.parse().unwrap()), now).is_ok(), "{lo}");
        }
        // And everyone's bucket drains too.
        assert!(t.admit(Some(fresh), now + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let t = Throttle::new(config());
        let now = Instant::now();
        for i in 0..3u16 {
            let ip = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, i]);
            t.failed(Some(ip), now);
        }
        assert!(t
            .admit(Some("2001:db8:0:1:ffff::9".parse().unwrap()), now)
            .is_err());
        assert!(t.admit(Some("2001:db8:0:2::1".parse().unwrap()), now).is_ok());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::ZERO), 1);
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after(Duration::from_secs(6)), 6);
    }
}
