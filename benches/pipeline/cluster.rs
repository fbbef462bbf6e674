//! The benchmark's own throwaway PostgreSQL cluster: the approach of
//! `tests/it/support/db.rs` (server binaries from PATH or
//! /usr/lib/postgresql/*/bin, run as `postgres` when we are root, a watchdog
//! that cleans up however this process ends), but with Postgres's DEFAULT
//! durability (fsync, synchronous_commit and full_page_writes on), which is
//! how the baselines in docs were measured.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The database the benchmark works in.
pub const DB: &str = "pgwebhooks_bench";

pub struct Cluster {
    pub port: u16,
    /// Holds the data directory, the server log, the sidecars' logs and the
    /// pid file the watchdog reads; removed at the end.
    pub dir: PathBuf,
    data: PathBuf,
    running: bool,
}

impl Cluster {
    pub fn start() -> Result<Cluster, String> {
        let dir = std::env::temp_dir().join(format!("pgwebhooks-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        if is_root() {
            let ok = Command::new("chown").arg("postgres:").arg(&dir).status();
            if !matches!(ok, Ok(s) if s.success()) {
                return Err(format!("chown {} to postgres failed", dir.display()));
            }
        }
        let data = dir.join("data");
        spawn_watchdog(&dir, &data)?;
        let out = pg_command(&pg_bin("initdb")?)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()
            .map_err(|e| format!("run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("find a free port: {e}"))?
            .port();
        // Durability settings are left at their defaults on purpose.
        // PGWEBHOOKS_BENCH_PG_OPTIONS adds server options for a diagnosis
        // run (auto_explain, pg_stat_statements); PGWEBHOOKS_BENCH_PG_LOG
        // names a file the server's log is copied to at the end.
        let extra = std::env::var("PGWEBHOOKS_BENCH_PG_OPTIONS").unwrap_or_default();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=256MB {extra}",
            dir.display()
        );
        let mut cluster = Cluster {
            port,
            dir: dir.clone(),
            data: data.clone(),
            running: false,
        };
        let out = pg_command(&pg_bin("pg_ctl")?)
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-l"])
            .arg(dir.join("postgres.log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .map_err(|e| format!("run pg_ctl: {e}"))?;
        cluster.running = true;
        if !out.status.success() {
            return Err(format!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
            ));
        }
        Ok(cluster)
    }

    pub fn config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname(dbname);
        c
    }

    /// The `DATABASE_URL` the sidecar gets.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DB}", self.port)
    }

    /// The postmaster's pid: its CPU time (children included) is Postgres's.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Sidecar processes still running; the watchdog kills these.
    pub fn pids_file(&self) -> PathBuf {
        self.dir.join("sidecar.pids")
    }

    /// Stops the server and deletes everything (also done on drop).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        if let Ok(pg_ctl) = pg_bin("pg_ctl") {
            let _ = pg_command(&pg_ctl)
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(keep) = std::env::var_os("PGWEBHOOKS_BENCH_PG_LOG") {
            let _ = std::fs::copy(self.dir.join("postgres.log"), keep);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pg_bin(name: &str) -> Result<PathBuf, String> {
    if let Some(found) = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
    {
        return Ok(found);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions.pop().ok_or_else(|| {
        format!("PostgreSQL server binary `{name}` not found: install postgresql (Debian: apt-get install postgresql)")
    })
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Runs a server binary, as `postgres` when we are root (Postgres refuses root).
fn pg_command(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

/// Once this process is gone, however it ended: kills the sidecars it left
/// running (by the pids it recorded), stops the cluster, deletes the directory.
fn spawn_watchdog(dir: &Path, data: &Path) -> Result<(), String> {
    let pg_ctl = pg_bin("pg_ctl")?;
    let as_pg = if is_root() { "runuser -u postgres -- " } else { "" };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; \
         if [ -f '{dir}/sidecar.pids' ]; then for p in $(cat '{dir}/sidecar.pids'); do kill -9 \"$p\" 2>/dev/null; done; fi; \
         {as_pg}'{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        pg_ctl = pg_ctl.display(),
        data = data.display(),
        dir = dir.display(),
    );
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn the cluster's watchdog: {e}"))?;
    Ok(())
}
