//! What the demo shows. On a terminal, one live screen redrawn in place
//! (ANSI cursor movement; colour unless `NO_COLOR` is set); otherwise a
//! plain log with one line per round and no escape codes. Every line is
//! kept under [`WIDTH`] characters.
//!
//! Every redraw reads its numbers from one [`Figures`], computed from the
//! tally at that moment: the totals and the latest round count the same
//! thing (webhooks the receiver accepted) from the same arrivals, so the
//! screen never shows a round further along than its totals, nor totals
//! that claim more than the round line says arrived.

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
    /// Every webhook-id of this type that reached the receiver.
    ids: HashSet<String>,
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
        row.ids.insert(a.webhook_id.clone());
        row.attempts += 1;
        if a.attempt == 1 {
            row.latencies.push(a.latency_ms);
        }
        if !a.verified {
            self.unverified += 1;
        }
        let n = self.attempts.entry(a.webhook_id.clone()).or_default();
        *n = (*n).max(a.attempt);
        if a.answered == 200 {
            self.delivered.insert(a.webhook_id.clone());
        }
    }

    /// Of `ids`: how many were delivered, and how many of those needed a
    /// retry. The one definition the totals and the round line share.
    pub(super) fn progress<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> Count {
        let mut c = Count::default();
        for id in ids.into_iter().filter(|id| self.delivered.contains(*id)) {
            c.delivered += 1;
            if self.attempts.get(id).is_some_and(|n| *n > 1) {
                c.retried += 1;
            }
        }
        c
    }

    /// Everything one redraw shows, read at once.
    pub(super) fn figures(&self, round: &Round) -> Figures {
        let mut total = TypeCount::default();
        let rows = self
            .by_type
            .iter()
            .map(|(ty, row)| {
                let c = TypeCount {
                    done: self.progress(&row.ids),
                    attempts: row.attempts as usize,
                    p50: row.p50(),
                };
                total.done.delivered += c.done.delivered;
                total.done.retried += c.done.retried;
                total.attempts += c.attempts;
                (ty.clone(), c)
            })
            .collect();
        Figures {
            rows,
            total,
            round: self.progress(&round.ids),
        }
    }
}

/// Delivered webhooks, and how many of them after a retry.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Count {
    pub delivered: usize,
    pub retried: usize,
}

/// One row of the totals table.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct TypeCount {
    pub done: Count,
    /// Requests, retries and refused ones included.
    pub attempts: usize,
    pub p50: f64,
}

/// The numbers of one redraw.
#[derive(Debug)]
pub(super) struct Figures {
    pub rows: Vec<(String, TypeCount)>,
    /// The rows summed (p50 unused).
    pub total: TypeCount,
    /// The latest round's events, counted as the rows are.
    pub round: Count,
}

impl Figures {
    fn table(&self) -> Vec<String> {
        let mut out = vec![
            "cumulative totals since start · delivered: webhooks accepted · attempts: every request"
                .to_owned(),
            format!(
                "  {:<31} {:>9} {:>9} {:>13} {:>8}",
                "event type", "delivered", "attempts", "after a retry", "p50 ms"
            ),
        ];
        let line = |name: &str, c: &TypeCount, p50: bool| {
            let mut l = format!(
                "  {:<31} {:>9} {:>9} {:>13}",
                fit(name, 31),
                c.done.delivered,
                c.attempts,
                c.done.retried
            );
            if p50 {
                l.push_str(&format!(" {:>8.1}", c.p50));
            }
            l
        };
        for (ty, c) in &self.rows {
            out.push(line(ty, c, true));
        }
        out.push(line("all", &self.total, false));
        out
    }
}

/// The latest round: what it wrote and the webhook-ids it expects (how
/// many of them arrived is read from the tally, at each redraw).
#[derive(Debug, Clone, Default)]
pub(super) struct Round {
    pub n: u32,
    pub writes: usize,
    /// Ids of the events this round's writes emitted.
    pub ids: Vec<String>,
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
    /// The number and result of the latest round that finished, for the
    /// checks and callback lines (labelled with its number).
    last_done: Option<(u32, RoundResult)>,
    /// The latest arrival, as one line.
    last_arrival: Option<String>,
    footer: String,
    drawn: bool,
    /// Cancelled when stdout is closed (`demo | head -1`): the demo stops
    /// as on Ctrl-C, removing its cluster.
    stop: CancellationToken,
    /// Stdout could not be written: nothing more is.
    closed: bool,
    /// Where the screen or log goes (stdout, or a test's buffer).
    out: Box<dyn Write + Send>,
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
            out: Box::new(std::io::stdout()),
        }
    }

    /// A plain log (no escape codes) written to `out`.
    pub(super) fn plain(out: Box<dyn Write + Send>, footer: String, stop: CancellationToken) -> View {
        View {
            live: false,
            color: false,
            header: Vec::new(),
            last_done: None,
            last_arrival: None,
            footer,
            drawn: false,
            stop,
            closed: false,
            out,
        }
    }

    /// Writes to stdout; a write that fails (the reader went away) stops
    /// the demo instead of panicking, and nothing more is written.
    fn write(&mut self, text: &str) {
        if self.closed {
            return;
        }
        if self
            .out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
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
        if let Some(r) = &round.result {
            self.last_done = Some((round.n, r.clone()));
        }
        if self.live {
            self.draw(tally, round);
        } else if let Some(r) = &round.result {
            let done = tally.figures(round).round;
            let line = format!(
                "{} round {}: {} of {} events delivered ({} after a retry) · callback {} {}",
                tick(r.ok()),
                round.n,
                done.delivered,
                round.ids.len(),
                done.retried,
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
        let figures = tally.figures(round);
        if stopped && round.n > 0 && round.result.is_none() {
            self.print(&format!(
                "  round {}: stopped while waiting ({} of {} events delivered so far)",
                round.n,
                figures.round.delivered,
                round.ids.len()
            ));
        }
        self.print("");
        for l in figures.table() {
            self.print(&l);
        }
        for l in self.checks() {
            self.print(&l);
        }
    }

    fn checks(&self) -> Vec<String> {
        let Some((n, r)) = &self.last_done else {
            return vec![String::new(), "  no round finished yet".into()];
        };
        let t = |b: bool| self.paint_tick(b);
        vec![
            String::new(),
            format!(
                "  round {n}: {} all delivered  {} signatures verified  {} callback applied  {} not echoed",
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
        let figures = tally.figures(round);
        let mut lines = self.header.clone();
        lines.push(String::new());
        lines.push(fit(&status(round, figures.round), WIDTH));
        lines.push(String::new());
        lines.extend(figures.table());
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

/// The round line, from the round and what of it the tally counts as
/// delivered (`done`, from the same [`Figures`] as the table).
fn status(r: &Round, done: Count) -> String {
    if r.n == 0 {
        return "round 1 starting…".into();
    }
    let events = r.ids.len();
    let head = format!("round {}: the app wrote {} rows → {events} events", r.n, r.writes);
    let all = done.delivered == events;
    match &r.result {
        None if all => format!("{head}; all delivered, posting the callback…"),
        None => format!("{head}; {} of {events} delivered, waiting…", done.delivered),
        Some(_) if all => format!("{head}; all delivered ({} after a retry)", done.retried),
        Some(_) => format!("{head}; only {} of {events} delivered", done.delivered),
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

    fn round_of(ids: &[&str]) -> Round {
        Round {
            n: 1,
            writes: ids.len(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
            result: None,
        }
    }

    #[test]
    fn retries_count_as_attempts_and_a_refused_first_attempt_is_not_delivered() {
        let mut t = Tally::default();
        let round = round_of(&["a", "b", "c"]);
        t.add(&arrival("a", 1, 503));
        let f = t.figures(&round);
        assert_eq!((f.total.done, f.total.attempts), (Count::default(), 1));
        assert_eq!(f.round, Count::default(), "a 503 is not an arrival");
        t.add(&arrival("a", 2, 200));
        t.add(&arrival("b", 1, 200));
        let f = t.figures(&round);
        let done = Count {
            delivered: 2,
            retried: 1,
        };
        assert_eq!((f.total.done, f.total.attempts, f.round), (done, 3, done));
        let table = f.table();
        let all = table.last().unwrap();
        assert!(all.split_whitespace().eq(["all", "2", "3", "1"]), "{all}");
        assert!(status(&round, f.round).contains("2 of 3 delivered, waiting"));
    }

    /// Issue #25: whatever order arrivals come in (retries, refusals, bad
    /// signatures, events of earlier rounds), every redraw's totals count
    /// at least what its round line says arrived, the rows add up to the
    /// totals, and the round line says "all" exactly when the round's
    /// every event is counted delivered.
    #[test]
    fn every_redraw_is_consistent_whatever_the_arrivals() {
        let types = ["ticket.created", "appointment.created", "error.occurred"];
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut t = Tally::default();
            let mut attempts: HashMap<String, u32> = HashMap::new();
            let mut round = Round::default();
            for step in 0..120 {
                if step % 30 == 0 {
                    // A new round of 12 events (earlier ones may still retry).
                    round = Round {
                        n: round.n + 1,
                        writes: 15,
                        ids: (0..12).map(|i| format!("r{}-{i}", round.n + 1)).collect(),
                        result: None,
                    };
                }
                let id = if rng.u8(..10) == 0 && round.n > 1 {
                    format!("r{}-{}", round.n - 1, rng.usize(..12))
                } else {
                    round.ids[rng.usize(..round.ids.len())].clone()
                };
                let n = attempts.entry(id.clone()).or_default();
                *n += 1;
                let verified = rng.u8(..20) != 0;
                t.add(&Arrival {
                    webhook_id: id.clone(),
                    event_type: types[id.len() % types.len()].into(),
                    verified,
                    attempt: *n,
                    answered: if !verified {
                        401
                    } else if rng.bool() {
                        503
                    } else {
                        200
                    },
                    latency_ms: 1.0,
                });
                let f = t.figures(&round);
                assert!(f.total.done.delivered >= f.round.delivered, "seed {seed}: {f:?}");
                assert!(f.total.done.retried >= f.round.retried, "seed {seed}: {f:?}");
                assert!(f.round.retried <= f.round.delivered, "seed {seed}: {f:?}");
                assert!(
                    f.total.attempts >= f.total.done.delivered + f.total.done.retried,
                    "seed {seed}: a retried webhook took two attempts at least: {f:?}"
                );
                let summed = f.rows.iter().fold((0, 0, 0), |(d, r, a), (_, c)| {
                    (d + c.done.delivered, r + c.done.retried, a + c.attempts)
                });
                assert_eq!(
                    summed,
                    (f.total.done.delivered, f.total.done.retried, f.total.attempts),
                    "seed {seed}"
                );
                let all_in = round.ids.iter().all(|id| t.delivered.contains(id));
                let line = status(&round, f.round);
                assert_eq!(line.contains("all delivered"), all_in, "seed {seed}: {line}");
                let shown_total: usize = f
                    .table()
                    .last()
                    .unwrap()
                    .split_whitespace()
                    .nth(1)
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(shown_total, f.total.done.delivered, "seed {seed}");
            }
        }
    }

    #[test]
    fn fit_cuts_with_an_ellipsis() {
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(fit("✓✓✓✓✓", 3).chars().count(), 3);
    }
}
