//! `pgwebhooks run` as a separate process, as in production: started with
//! the environment only, stopped with SIGTERM. Its stderr goes to a log
//! file whose warnings the report quotes; its peak RSS and CPU time come
//! from /proc.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{Lost, Res};

pub struct Sidecar {
    child: tokio::process::Child,
    pub pid: u32,
    pub replica: String,
    pids_file: PathBuf,
}

impl Sidecar {
    /// Spawns `pgwebhooks run` against `database_url` (no ready wait).
    pub fn spawn(database_url: &str, replica: &str, log: &Path, pids_file: &Path) -> Res<Sidecar> {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgwebhooks"));
        // Nothing from our own environment may add endpoints or change settings.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("PGWEBHOOKS_")
                || k.starts_with("MAKE_WEBHOOK_")
                || k.starts_with("WEBHOOK_")
                || k == "RUST_LOG"
                || k == "DATABASE_URL"
            {
                cmd.env_remove(&key);
            }
        }
        cmd.arg("run")
            .env("DATABASE_URL", database_url)
            .env("PGWEBHOOKS_LISTEN", "127.0.0.1:0")
            .env("PGWEBHOOKS_ADMIN_LISTEN", "127.0.0.1:0")
            .env("PGWEBHOOKS_LOG", "warn")
            .env("PGWEBHOOKS_REPLICA", replica)
            // The receiver is on 127.0.0.1.
            .env("PGWEBHOOKS_ALLOW_PRIVATE_TARGETS", "true")
            .env("NO_COLOR", "1")
            .envs(extra_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        let pid = child.id().ok_or("the sidecar exited at once")?;
        let mut pids = std::fs::read_to_string(pids_file).unwrap_or_default();
        pids.push_str(&format!("{pid}\n"));
        std::fs::write(pids_file, pids)?;
        Ok(Sidecar {
            child,
            pid,
            replica: replica.to_owned(),
            pids_file: pids_file.to_owned(),
        })
    }

    /// Errors if the process has exited.
    pub fn check_alive(&mut self) -> Res<()> {
        match self.child.try_wait()? {
            Some(status) => {
                Err(Lost(format!("sidecar {} exited unexpectedly ({status})", self.replica)).into())
            }
            None => Ok(()),
        }
    }

    /// Waits until its LISTEN connection is up (it has started).
    pub async fn wait_ready(&mut self, db: &tokio_postgres::Client) -> Res<()> {
        let app = format!("pgwebhooks listen {}", self.replica);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.check_alive()?;
            let row = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&app],
                )
                .await?;
            if row.get::<_, i64>(0) > 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Lost(format!("sidecar {} not connected after 30 s", self.replica)).into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    /// User + system CPU time used so far.
    pub fn cpu(&self) -> Option<Duration> {
        process_cpu(self.pid)
    }

    /// SIGTERM, then waits for the graceful stop (SIGKILL after 30 s).
    /// Errors if it did not exit cleanly.
    pub async fn stop(mut self) -> Res<Duration> {
        let t = Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let status = match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                self.forget_pid();
                return Err(Lost(format!(
                    "sidecar {} did not stop within 30 s of SIGTERM",
                    self.replica
                ))
                .into());
            }
        };
        self.forget_pid();
        if !status.success() {
            return Err(Lost(format!(
                "sidecar {} exited with {status} after SIGTERM",
                self.replica
            ))
            .into());
        }
        Ok(t.elapsed())
    }

    fn forget_pid(&self) {
        let pids = std::fs::read_to_string(&self.pids_file).unwrap_or_default();
        let kept: String = pids
            .lines()
            .filter(|l| l.trim() != self.pid.to_string())
            .map(|l| format!("{l}\n"))
            .collect();
        let _ = std::fs::write(&self.pids_file, kept);
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        // Only reached with the process still running on an error path:
        // kill_on_drop sends SIGKILL.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.start_kill();
        }
        self.forget_pid();
    }
}

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The fields of /proc/<pid>/stat after the command name: [0] is the
/// state, [1] the parent, [11..=14] utime, stime, cutime, cstime in ticks.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn ticks(fields: &[String], range: std::ops::RangeInclusive<usize>) -> Option<f64> {
    range.map(|i| fields.get(i)?.parse::<f64>().ok()).sum()
}

/// utime + stime of a process.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let t = ticks(&stat_fields(pid)?, 11..=12)?;
    Some(Duration::from_secs_f64(t / clock_ticks()))
}

/// CPU time of a PostgreSQL cluster: the postmaster, its live children,
/// and (through the postmaster's cutime and cstime) every child that exited.
pub fn postgres_cpu(postmaster: u32) -> Option<Duration> {
    let mut t = ticks(&stat_fields(postmaster)?, 11..=14)?;
    let parent = postmaster.to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        match stat_fields(pid) {
            Some(f) if f.get(1) == Some(&parent) => t += ticks(&f, 11..=12).unwrap_or(0.0),
            _ => {}
        }
    }
    Some(Duration::from_secs_f64(t / clock_ticks()))
}

/// Busy CPU time of the whole machine (all cores), from /proc/stat.
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0.0);
    Some(Duration::from_secs_f64(busy / clock_ticks()))
}

/// `--sidecar-env KEY=VALUE` (repeatable): settings for the sidecar under
/// test, for comparing one against another (e.g.
/// `--sidecar-env PGWEBHOOKS_BATCH_LINGER=0`). The figures docs/performance.md and
/// closing notes quote come from runs without it.
fn extra_env() -> Vec<(String, String)> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .filter(|w| w[0] == "--sidecar-env")
        .map(|w| match w[1].split_once('=') {
            Some((k, v)) if !k.is_empty() => (k.to_owned(), v.to_owned()),
            _ => panic!("--sidecar-env needs KEY=VALUE, got {:?}", w[1]),
        })
        .collect()
}
