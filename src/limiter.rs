//! A log-line limiter: at most one line per key per window, with a count
//! of what was folded into it. Pure: every call takes `now`.
//!
//! The first occurrence of a key is written at once. Later ones within the
//! window are counted (keeping the latest detail); the next occurrence after
//! the window writes a line carrying everything counted since the last one,
//! and so does [`Limiter::due`] for a key that went quiet with occurrences
//! still folded, so none goes unreported.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A line to write now: the key, how many occurrences it stands for (this
/// one included) and the latest one's detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line<K, D> {
    pub key: K,
    pub count: u64,
    pub detail: D,
}

#[derive(Debug)]
struct Entry<D> {
    /// When the last line for this key was written.
    last_line: Instant,
    /// Occurrences since then, not yet written.
    folded: u64,
    latest: Option<D>,
}

#[derive(Debug)]
pub(crate) struct Limiter<K, D> {
    every: Duration,
    entries: HashMap<K, Entry<D>>,
}

impl<K: Hash + Eq + Clone, D> Limiter<K, D> {
    /// At most one line per key per `every`.
    pub(crate) fn new(every: Duration) -> Limiter<K, D> {
        Limiter {
            every,
            entries: HashMap::new(),
        }
    }

    /// One occurrence of `key`: the line to write now, or `None` when it
    /// is folded into a later one.
    pub(crate) fn hit(&mut self, key: K, detail: D, now: Instant) -> Option<Line<K, D>> {
        match self.entries.get_mut(&key) {
            Some(e) if now.saturating_duration_since(e.last_line) < self.every => {
                e.folded += 1;
                e.latest = Some(detail);
                None
            }
            Some(e) => {
                let count = e.folded + 1;
                e.folded = 0;
                e.latest = None;
                e.last_line = now;
                Some(Line { key, count, detail })
            }
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        last_line: now,
                        folded: 0,
                        latest: None,
                    },
                );
                Some(Line {
                    key,
                    count: 1,
                    detail,
                })
            }
        }
    }

    /// Lines for keys whose folded occurrences have waited a whole window
    /// (their count, their latest detail). Keys quiet for a whole window
    /// with nothing folded are forgotten.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Line<K, D>> {
        let every = self.every;
        let mut lines = Vec::new();
        self.entries.retain(|key, e| {
            if now.saturating_duration_since(e.last_line) < every {
                return true;
            }
            match e.latest.take() {
                Some(detail) if e.folded > 0 => {
                    lines.push(Line {
                        key: key.clone(),
                        count: e.folded,
                        detail,
                    });
                    e.folded = 0;
                    e.last_line = now;
                    true
                }
                _ => false,
            }
        });
        lines
    }

    /// Every folded occurrence as lines now, due or not (at shutdown).
    pub(crate) fn drain(&mut self) -> Vec<Line<K, D>> {
        self.entries
            .drain()
            .filter_map(|(key, e)| {
                let detail = e.latest.filter(|_| e.folded > 0)?;
                Some(Line {
                    key,
                    count: e.folded,
                    detail,
                })
            })
            .collect()
    }

    /// Keys remembered (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn first_occurrence_at_once_then_one_line_per_window_with_the_count() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut l = Limiter::new(MIN);
        assert_eq!(
            l.hit("a", 1, at(0)),
            Some(Line {
                key: "a",
                count: 1,
                detail: 1
            })
        );
        for s in 1..=59 {
            assert_eq!(l.hit("a", s as i32, at(s)), None, "{s}s: folded");
        }
        assert_eq!(l.due(at(59)), vec![], "the window is not over");
        // The next occurrence after the window carries the 59 folded ones.
        assert_eq!(
            l.hit("a", 60, at(60)),
            Some(Line {
                key: "a",
                count: 60,
                detail: 60
            })
        );
        assert_eq!(l.hit("a", 61, at(61)), None);
        assert_eq!(l.hit("a", 62, at(119)), None);
        assert_eq!(
            l.hit("a", 63, at(120)),
            Some(Line {
                key: "a",
                count: 3,
                detail: 63
            })
        );
    }

    #[test]
    fn keys_are_limited_independently() {
        let t0 = Instant::now();
        let mut l = Limiter::new(MIN);
        assert!(l.hit((1, 'x'), (), t0).is_some());
        assert!(l.hit((1, 'y'), (), t0).is_some(), "another kind");
        assert!(l.hit((2, 'x'), (), t0).is_some(), "another endpoint");
        assert!(l.hit((1, 'x'), (), t0).is_none());
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn folded_occurrences_of_a_quiet_key_are_written_once_due_and_quiet_keys_forgotten() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut l = Limiter::new(MIN);
        l.hit("busy", "first", at(0));
        l.hit("busy", "second", at(10));
        l.hit("busy", "third", at(20));
        l.hit("once", "only", at(0));
        assert_eq!(
            l.due(at(60)),
            vec![Line {
                key: "busy",
                count: 2,
                detail: "third"
            }]
        );
        assert_eq!(l.len(), 1, "`once` had nothing folded: forgotten");
        // `busy` wrote a line at 60 s: the next occurrence is folded again.
        assert_eq!(l.hit("busy", "fourth", at(70)), None);
        assert_eq!(l.due(at(119)), vec![]);
        assert_eq!(l.due(at(120)).len(), 1);
        assert_eq!(l.due(at(180)), vec![]);
        assert!(l.is_empty());
        l.hit("x", "a", at(200));
        l.hit("x", "b", at(201));
        l.hit("y", "c", at(200));
        assert_eq!(
            l.drain(),
            vec![Line {
                key: "x",
                count: 1,
                detail: "b"
            }],
            "at shutdown, what was folded is said"
        );
        assert!(l.is_empty());
        // A clock that goes backwards never panics, and folds.
        assert!(l.hit("back", "a", at(100)).is_some());
        assert!(l.hit("back", "b", at(50)).is_none());
    }
}
