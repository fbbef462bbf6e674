//! What the benchmark prints: progress and details as it goes, then the
//! table (scenario, figure, target, met?) and, as the very last line, one
//! JSON object with every key of performance.md.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use super::{Drain, Lost, Overhead};

/// The keys, in order, with their targets.
const KEYS: &[(&str, &str, Goal)] = &[
    ("trigger_overhead_ratio", "≥ 0.65", Goal::AtLeast(0.65)),
    ("trigger_overhead_ratio_1c", "≥ 0.75", Goal::AtLeast(0.75)),
    ("bulk_overhead_ratio", "≥ 0.40", Goal::AtLeast(0.40)),
    ("drain_per_s", "report", Goal::Report),
    ("drain_vs_insert_rate", "≥ 1.0", Goal::AtLeast(1.0)),
    ("http_ceiling_per_s", "report", Goal::Report),
    ("latency_p50_ms", "≤ 5", Goal::AtMost(5.0)),
    ("latency_p99_ms", "≤ 25", Goal::AtMost(25.0)),
    ("backlog_1m_ratio", "≥ 0.80", Goal::AtLeast(0.80)),
    ("replicas_2_over_1", "≥ 0.95", Goal::AtLeast(0.95)),
    ("rss_mb", "≤ 64", Goal::AtMost(64.0)),
    // performance.md says "bounded: autovacuum keeps up"; 10k is this
    // benchmark's reading of it (a few autovacuum thresholds' worth).
    ("dead_tuples_after_soak", "bounded (≤ 10,000)", Goal::AtMost(10_000.0)),
];

#[derive(Clone, Copy)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
    Report,
}

pub struct Report {
    quick: bool,
    values: HashMap<&'static str, f64>,
    skipped: Vec<(String, String)>,
    pub failures: Vec<String>,
}

impl Report {
    pub fn new(quick: bool) -> Report {
        if quick {
            say("pgwebhooks pipeline benchmark, QUICK (scaled down: figures are indicative only)".into());
        } else {
            say("pgwebhooks pipeline benchmark, full run".into());
        }
        say(format!(
            "machine: {} cores, load average {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        ));
        Report {
            quick,
            values: HashMap::new(),
            skipped: Vec::new(),
            failures: Vec::new(),
        }
    }

    pub fn heading(&mut self, what: &str) {
        say(format!("\n== {what}"));
    }

    pub fn note(&mut self, line: String) {
        say(format!("   {line}"));
    }

    pub fn set(&mut self, key: &'static str, value: f64) {
        if value.is_finite() {
            self.values.insert(key, value);
        } else {
            self.skip(key, "the figure is not a finite number");
        }
    }

    /// The scenario could not run: its key is null.
    pub fn skip(&mut self, key: &str, why: &str) {
        self.note(format!("{key}: not measured: {why}"));
        self.skipped.push((key.to_owned(), why.to_owned()));
    }

    /// A [`Lost`] error is a pipeline failure (non-zero exit); anything
    /// else only means the scenario could not run.
    pub fn fail_or_skip(&mut self, key: &str, e: Box<dyn std::error::Error + Send + Sync>) {
        if e.downcast_ref::<Lost>().is_some() {
            self.failure(format!("{key}: {e}"));
        }
        self.skip(key, &e.to_string());
    }

    pub fn failure(&mut self, what: String) {
        self.note(format!("PIPELINE FAILURE: {what}"));
        self.failures.push(what);
    }

    pub fn skip_all(&mut self, why: &str) {
        for (key, _, _) in KEYS {
            self.skip(key, why);
        }
    }

    pub fn overhead(&mut self, key: &str, o: &Overhead) {
        let unit = if o.rows > o.watched.transactions { "statements" } else { "tx" };
        self.note(format!(
            "unwatched {:.0} {unit}/s ({} in {:.1} s), watched {:.0} {unit}/s ({} in {:.1} s): {key} {:.3}",
            o.plain.per_s(),
            o.plain.transactions,
            o.plain.secs,
            o.watched.per_s(),
            o.watched.transactions,
            o.watched.secs,
            o.ratio()
        ));
        let rows = o.rows.max(1);
        let mut line = format!(
            "{} events captured; {} ({:.0}%) delivered while the inserts ran",
            o.rows,
            o.during,
            100.0 * o.during as f64 / rows as f64
        );
        match o.catch_up {
            Some(d) => line.push_str(&format!(", the rest {:.2} s later (all delivered)", d.as_secs_f64())),
            None => line.push_str(" (the rest not awaited)"),
        }
        self.note(line);
    }

    pub fn drain(&mut self, label: &str, d: &Drain) {
        self.note(format!(
            "{label}: {} events drained in {:.2} s = {:.0}/s (first receipt → all recorded); \
             start-up {:.0} ms; backlog committed in {:.1} s",
            d.events,
            d.secs,
            d.per_s,
            d.startup.as_secs_f64() * 1e3,
            d.fill.as_secs_f64()
        ));
        self.note(format!(
            "CPU per delivery: sidecar {:.3} ms, whole machine {:.3} ms; sidecar peak RSS {:.1} MiB",
            d.sidecar_cpu_ms, d.machine_cpu_ms, d.rss_mb
        ));
    }

    /// Quotes the sidecars' warnings and the server's errors.
    pub fn collect_logs(&mut self, dir: &Path) {
        let mut sidecar: Vec<String> = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir).into_iter().flatten().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("sidecar-") && name.ends_with(".log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let replica = name.trim_start_matches("sidecar-").trim_end_matches(".log").to_owned();
                sidecar.extend(text.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{replica}: {l}")));
            }
        }
        let server: Vec<String> = std::fs::read_to_string(dir.join("postgres.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| ["ERROR:", "FATAL:", "PANIC:", "WARNING:"].iter().any(|k| l.contains(k)))
            .map(str::to_owned)
            .collect();
        self.heading("logs");
        self.note(format!("sidecar log lines at PGWEBHOOKS_LOG=warn: {}", sidecar.len()));
        for l in sidecar.iter().take(12) {
            self.note(format!("  {}", truncate(l, 300)));
        }
        self.note(format!("PostgreSQL ERROR/FATAL/WARNING lines: {}", server.len()));
        for l in server.iter().take(12) {
            self.note(format!("  {}", truncate(l, 300)));
        }
    }

    /// The table, then the JSON line (last).
    pub fn print(&self) {
        let mut out = String::new();
        out.push_str(&format!(
            "\n{:<27} {:>12}  {:<20} {}\n",
            if self.quick { "scenario (QUICK)" } else { "scenario" },
            "figure",
            "target",
            "met?"
        ));
        for (key, target, goal) in KEYS {
            let value = self.values.get(key).copied();
            let met = match (value, goal) {
                (None, _) => "n/a",
                (Some(_), Goal::Report) => "-",
                (Some(v), Goal::AtLeast(t)) => yes_no(v >= *t),
                (Some(v), Goal::AtMost(t)) => yes_no(v <= *t),
            };
            let figure = value.map_or("null".to_owned(), |v| format_value(key, v));
            out.push_str(&format!("{key:<27} {figure:>12}  {target:<20} {met}\n"));
        }
        for (key, why) in &self.skipped {
            out.push_str(&format!("null {key}: {why}\n"));
        }
        if self.failures.is_empty() {
            out.push_str("pipeline: no events lost, no bad signatures\n");
        } else {
            for f in &self.failures {
                out.push_str(&format!("PIPELINE FAILURE: {f}\n"));
            }
        }
        let fields: Vec<String> = KEYS
            .iter()
            .map(|(key, _, _)| {
                let v = self.values.get(key).map_or("null".to_owned(), |v| format_value(key, *v));
                format!("\"{key}\": {v}")
            })
            .collect();
        let json = format!("{{{}}}", fields.join(", "));
        debug_assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok());
        out.push_str(&json);
        out.push('\n');
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

fn format_value(key: &str, v: f64) -> String {
    if key.ends_with("_per_s") || key == "dead_tuples_after_soak" {
        format!("{v:.0}")
    } else if key.ends_with("_ms") || key == "rss_mb" {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn say(line: String) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
