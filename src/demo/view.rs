//! What the demo shows. On a terminal, one live screen redrawn in place
//! (ANSI cursor movement; colour unless `NO_COLOR` is set); otherwise a
//! plain log with one line per round and no escape codes. Every line is
//! kept under [`WIDTH`] characters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write};

use tokio_util::sync::CancellationToken;

use super::receiver::Arrival;
use super::traffic::Callback;

/// No line the demo prints is longer than this (in characters).
pub(super) const WIDTH: usize = 96;

/// Cumulative counts since the demo started.
#[derive(Debug, Default)]
pub(super) struct Tally {
    by_type: BTreeMap<String, TypeRow>,
    /// Attempts seen per webhook-id.
    attempts: HashMap<String, u32>,
    /// Webhook-ids the receiver accepted (verified, answered 200).
    pub delivered: HashSet<String>,
    /// Requests whose signature did not verify.
    pub unverified: u32,
}

#[derive(Debug, Default)]
struct TypeRow {
    /// Distinct webhook-ids of this type that reached the receiver.
    events: HashSet<String>,
    /// Distinct webhook-ids of this type with a verified signature.
    verified: HashSet<String>,
    /// Every request, retries included.
    attempts: u32,
    /// Latency of each first attempt.
    latencies: Vec<f64>,
}

impl TypeRow {
    fn p50(&self) -> f64 {
        let mut l = self.latencies.clone();
        l.sort_by(|a, b| a.total_cmp(b));
        l.get(l.len() / 2).copied().unwrap_or(0.0)
    }
}

impl Tally {
    pub(super) fn add(&mut self, a: &Arrival) {
        let row = self.by_type.entry(a.event_type.clone()).or_default();
        row.events.insert(a.webhook_id.clone());
        row.attempts += 1;
        if a.attempt == 1 {
            row.latencies.push(a.latency_ms);
        }
        if a.verified {
            row.verified.insert(a.webhook_id.clone());
        } else {
            self.unverified += 1;
        }
        let n = self.attempts.entry(a.webhook_id.clone()).or_default();
        *n = (*n).max(a.attempt);
        if a.answered == 200 {
            self.delivered.insert(a.webhook_id.clone());
        }
    }

    /// How many of `ids` were delivered, and how many of those needed a retry.
    pub(super) fn progress(&self, ids: &[String]) -> (usize, usize) {
        let done: Vec<&String> = ids.iter().filter(|id| self.delivered.contains(*id)).collect();
        let retried = done
            .iter()
            .filter(|id| self.attempts.get(**id).is_some_and(|n| *n > 1))
            .count();
        (done.len(), retried)
    }

    fn table(&self) -> Vec<String> {
        let mut out = vec![
            "cumulative totals since start · events: distinct webhook-ids · attempts: with retries"
                .to_owned(),
            format!(
                "  {:<31} {:>7} {:>9} {:>9} {:>8} {:>8}",
                "event type", "events", "verified", "attempts", "retries", "p50 ms"
            ),
        ];
        let (mut e, mut v, mut a) = (0, 0, 0);
        for (ty, row) in &self.by_type {
            let (re, rv, ra) = (row.events.len(), row.verified.len(), row.attempts as usize);
            out.push(format!(
                "  {:<31} {re:>7} {rv:>9} {ra:>9} {:>8} {:>8.1}",
                fit(ty, 31),
                ra - re,
                row.p50()
            ));
            (e, v, a) = (e + re, v + rv, a + ra);
        }
        out.push(format!("  {:<31} {e:>7} {v:>9} {a:>9} {:>8}", "all", a - e));
        out
    }
}

/// What the latest round showed.
#[derive(Debug, Clone, Default)]
pub(super) struct Round {
    pub n: u32,
    pub writes: usize,
    /// Events this round's writes emitted.
    pub events: usize,
    /// Of those, delivered so far, and how many after a retry.
    pub arrived: usize,
    pub retried: usize,
    /// Set once the round is over.
    pub result: Option<RoundResult>,
}

#[derive(Debug, Clone)]
pub(super) struct RoundResult {
    pub delivered: bool,
    pub all_verified: bool,
    pub callback: Callback,
}

impl RoundResult {
    pub(super) fn ok(&self) -> bool {
        self.delivered && self.all_verified && self.callback.applied && self.callback.not_echoed
    }
}

pub(super) struct View {
    /// Redraw one screen in place (stdout is a terminal).
    live: bool,
    color: bool,
    header: Vec<String>,
    /// The latest round that finished, for the checks and callback lines.
    last_done: Option<Round>,
    /// The latest arrival, as one line.
    last_arrival: Option<String>,
    footer: String,
    drawn: bool,
    /// Cancelled when stdout is closed (`demo | head -1`): the demo stops
    /// as on Ctrl-C, removing its cluster.
    stop: CancellationToken,
    /// Stdout could not be written: nothing more is.
    closed: bool,
}

impl View {
    pub(super) fn from_env(footer: String, stop: CancellationToken) -> View {
        let tty = std::io::stdout().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        View {
            live: tty,
            color: tty && !no_color,
            header: Vec::new(),
            last_done: None,
            last_arrival: None,
            footer,
            drawn: false,
            stop,
            closed: false,
        }
    }

    /// Writes to stdout; a write that fails (the reader went away) stops
    /// the demo instead of panicking, and nothing more is written.
    fn write(&mut self, text: &str) {
        if self.closed {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        if stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            self.closed = true;
            self.stop.cancel();
        }
    }

    /// One line on stdout (see `write`).
    pub(super) fn print(&mut self, line: &str) {
        self.write(&format!("{line}\n"));
    }

    /// A start-up line: printed now, and kept at the top of the live screen.
    pub(super) fn note(&mut self, line: String) {
        let line = fit(&line, WIDTH);
        self.print(&line);
        self.header.push(line);
    }

    pub(super) fn arrival(&mut self, a: &Arrival, tally: &Tally, round: &Round) {
        self.last_arrival = Some(arrival_line(a));
        if self.live {
            self.draw(tally, round);
        }
    }

    /// The round is under way (`round.result` is `None`) or finished.
    pub(super) fn round(&mut self, tally: &Tally, round: &Round) {
        if round.result.is_some() {
            self.last_done = Some(round.clone());
        }
        if self.live {
            self.draw(tally, round);
        } else if let Some(r) = &round.result {
            let line = format!(
                "{} round {}: {} of {} events verified ({} retried) · callback {} {}",
                tick(r.ok()),
                round.n,
                round.arrived,
                round.events,
                round.retried,
                r.callback.status,
                r.callback.short(),
            );
            self.print(&fit(&line, WIDTH));
        }
    }

    /// The end: the live screen's last state, or (in the plain log) the
    /// cumulative table and the latest checks once.
    pub(super) fn finish(&mut self, tally: &Tally, round: &Round, stopped: bool) {
        if stopped {
            self.footer = "stopping: removing the throwaway cluster…".into();
        }
        if self.live {
            self.draw(tally, round);
            return;
        }
        if stopped && round.n > 0 && round.result.is_none() {
            self.print(&format!(
                "  round {}: stopped while waiting ({} of {} events verified so far)",
                round.n, round.arrived, round.events
            ));
        }
        self.print("");
        for l in tally.table() {
            self.print(&l);
        }
        for l in self.checks() {
            self.print(&l);
        }
    }

    fn checks(&self) -> Vec<String> {
        let Some(r) = self.last_done.as_ref().and_then(|d| d.result.as_ref()) else {
            return vec![String::new(), "  no round finished yet".into()];
        };
        let t = |b: bool| self.paint_tick(b);
        vec![
            String::new(),
            format!(
                "  {} every webhook arrived  {} signatures verified  {} callback applied  {} not echoed",
                t(r.delivered),
                t(r.all_verified),
                t(r.callback.applied),
                t(r.callback.not_echoed)
            ),
            fit(
                &format!(
                    "  callback POST /api/webhooks/make/appointments → HTTP {}",
                    r.callback.status
                ),
                WIDTH,
            ),
            fit(&format!("    {}", r.callback.describe()), WIDTH),
        ]
    }

    fn paint_tick(&self, ok: bool) -> String {
        match (self.color, ok) {
            (false, _) => tick(ok).to_owned(),
            (true, true) => "\x1b[32m✓\x1b[0m".to_owned(),
            (true, false) => "\x1b[31m✗\x1b[0m".to_owned(),
        }
    }

    fn draw(&mut self, tally: &Tally, round: &Round) {
        let mut lines = self.header.clone();
        lines.push(String::new());
        lines.push(fit(&status(round), WIDTH));
        lines.push(String::new());
        lines.extend(tally.table());
        lines.extend(self.checks());
        lines.push(format!(
            "  latest: {}",
            self.last_arrival.as_deref().unwrap_or("—")
        ));
        lines.push(fit(&self.footer, WIDTH));
        let mut out = String::new();
        // Home the cursor (clearing the screen the first time), rewrite
        // each line clearing what it leaves, then clear what is below.
        out.push_str(if self.drawn { "\x1b[H" } else { "\x1b[H\x1b[2J" });
        for l in lines {
            out.push_str(&l);
            out.push_str("\x1b[K\n");
        }
        out.push_str("\x1b[J");
        self.drawn = true;
        self.write(&out);
    }
}

fn status(r: &Round) -> String {
    if r.n == 0 {
        return "round 1 starting…".into();
    }
    let head = format!(
        "round {}: the app wrote {} rows → {} events",
        r.n, r.writes, r.events
    );
    match &r.result {
        None if r.arrived == r.events => format!("{head}; all arrived, posting the callback…"),
        None => format!("{head}; {} of {} arrived, waiting…", r.arrived, r.events),
        Some(res) if res.delivered => format!("{head}; all arrived ({} after a retry)", r.retried),
        Some(_) => format!("{head}; only {} of {} arrived", r.arrived, r.events),
    }
}

fn tick(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

fn arrival_line(a: &Arrival) -> String {
    let mark = if !a.verified {
        "✗ BAD SIGNATURE".to_owned()
    } else if a.answered == 503 {
        "↻ 503 (will retry)".to_owned()
    } else if a.attempt > 1 {
        format!("✓ verified, attempt {}", a.attempt)
    } else {
        "✓ verified".to_owned()
    };
    fit(
        &format!("{} {:.1} ms {mark}", a.event_type, a.latency_ms),
        WIDTH - 12,
    )
}

/// `s` cut to at most `max` characters, ending in `…` if it was cut.
pub(super) fn fit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(id: &str, attempt: u32, answered: u16) -> Arrival {
        Arrival {
            webhook_id: id.into(),
            event_type: "ticket.created".into(),
            verified: true,
            attempt,
            answered,
            latency_ms: 1.0,
        }
    }

    #[test]
    fn retries_count_as_attempts_not_as_more_verified_events() {
        let mut t = Tally::default();
        t.add(&arrival("a", 1, 503));
        t.add(&arrival("a", 2, 200));
        t.add(&arrival("b", 1, 200));
        let row = &t.by_type["ticket.created"];
        assert_eq!((row.events.len(), row.verified.len(), row.attempts), (2, 2, 3));
        assert_eq!(t.progress(&["a".into(), "b".into(), "c".into()]), (2, 1));
        let table = t.table();
        let all = table.last().unwrap();
        assert!(all.split_whitespace().eq(["all", "2", "2", "3", "1"]), "{all}");
    }

    #[test]
    fn fit_cuts_with_an_ellipsis() {
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(fit("✓✓✓✓✓", 3).chars().count(), 3);
    }
}
