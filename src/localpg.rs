//! A throwaway local PostgreSQL cluster, started from the server binaries
//! on this machine (`initdb`, `pg_ctl` on PATH or in /usr/lib/postgresql),
//! as the `postgres` user when we run as root (Postgres refuses root).
//! Used by `pgwebhooks demo`. Dropping a [`LocalPg`] stops the server and
//! deletes its directory; a watchdog does the same if this process dies.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "PostgreSQL server binaries not found (`{0}` is neither on PATH nor in /usr/lib/postgresql/*/bin): \
         install them (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL"
    )]
    Missing(&'static str),
    #[error("{step} failed: {detail}")]
    Step { step: &'static str, detail: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub struct LocalPg {
    pub dir: PathBuf,
    pub port: u16,
    data: PathBuf,
    pg_ctl: PathBuf,
    opts: String,
}

/// A PostgreSQL program: on PATH, else the newest under /usr/lib/postgresql.
pub fn find(name: &'static str) -> Result<PathBuf, LocalPgError> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    if let Some(p) = on_path {
        return Ok(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().ok_or(LocalPgError::Missing(name))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn command(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn run(step: &'static str, mut c: Command) -> Result<(), LocalPgError> {
    let out = c.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LocalPgError::Step {
            step,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

impl LocalPg {
    /// Creates and starts a cluster in a new temporary directory.
    /// `settings` are extra `-c name=value` server settings.
    pub fn start(name: &str, settings: &[&str]) -> Result<LocalPg, LocalPgError> {
        Self::start_with(name, settings, |_| Ok(()))
    }

    /// [`LocalPg::start`], calling `prepare` with the data directory after
    /// `initdb` and before the server starts (to write certificates or a
    /// `pg_hba.conf`; relative paths in `settings` are relative to it).
    pub fn start_with(
        name: &str,
        settings: &[&str],
        prepare: impl FnOnce(&Path) -> Result<(), LocalPgError>,
    ) -> Result<LocalPg, LocalPgError> {
        let initdb = find("initdb")?;
        let pg_ctl = find("pg_ctl")?;
        let dir =
            std::env::temp_dir().join(format!("{name}-{}-{:04x}", std::process::id(), fastrand::u16(..)));
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            let mut chown = Command::new("chown");
            chown.arg("postgres:").arg(&dir);
            run("chown to postgres (the server refuses to run as root)", chown)?;
        }
        let data = dir.join("data");
        let mut c = command(&initdb);
        c.arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
        run("initdb", c)?;
        prepare(&data)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", dir.display());
        for s in settings {
            opts.push_str(&format!(" -c {s}"));
        }
        let pg = LocalPg {
            dir,
            port,
            data,
            pg_ctl,
            opts,
        };
        pg.watchdog();
        let mut c = command(&pg.pg_ctl);
        c.arg("-D")
            .arg(&pg.data)
            .args(["-o", &pg.opts, "-l"])
            .arg(pg.dir.join("log"))
            .args(["-w", "start"]);
        run("pg_ctl start", c)?;
        Ok(pg)
    }

    /// `pg_ctl restart -m <mode>` (`smart`, `fast` or `immediate`).
    pub fn restart(&self, mode: &str) -> Result<(), LocalPgError> {
        let mut c = command(&self.pg_ctl);
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-o", &self.opts, "-l"])
            .arg(self.dir.join("log"));
        c.args(["-w", "restart"]);
        run("pg_ctl restart", c)
    }

    /// Connection settings for database `db` as the `postgres` superuser.
    pub fn config(&self, db: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1").port(self.port).user("postgres").dbname(db);
        c
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the server and removes the cluster when this process is gone,
    /// however it ends (a crash, SIGKILL).
    fn watchdog(&self) {
        let as_pg = if is_root() { "runuser -u postgres -- " } else { "" };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {as_pg}'{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = self.pg_ctl.display(),
            data = self.data.display(),
            dir = self.dir.display(),
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

impl Drop for LocalPg {
    fn drop(&mut self) {
        let mut c = command(&self.pg_ctl);
        c.arg("-D").arg(&self.data).args(["-m", "fast", "-w", "stop"]);
        let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
