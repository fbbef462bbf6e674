//! A throwaway local PostgreSQL cluster, started from the server binaries
//! on this machine (`initdb`, `pg_ctl` on PATH or in /usr/lib/postgresql),
//! as the `postgres` user when we run as root (Postgres refuses root).
//! Used by `pgwebhooks demo`, which installs the binaries first when they
//! are missing ([`install`]). Dropping a [`LocalPg`] stops the server and
//! deletes its directory; a watchdog does the same if this process dies.

pub mod install;

use std::ffi::OsString;
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
    /// Missing, and this machine cannot install them here (not Debian or
    /// Ubuntu, or neither root nor a password-less sudo).
    #[error(
        "PostgreSQL server binaries not found (`initdb` is neither on PATH nor in /usr/lib/postgresql/*/bin), \
         and {why}; install them with:\n    {command}\nthen run the demo again"
    )]
    CannotInstall { why: String, command: String },
    /// The install command ran and failed, or left no server binaries.
    #[error("installing the PostgreSQL server: `{command}` {detail}")]
    InstallFailed { command: String, detail: String },
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

/// Where PostgreSQL's programs are looked for: each directory of `path`
/// (a `PATH`), then `<root>/*/bin` for each root, the newest version first.
#[derive(Debug, Clone)]
pub struct Search {
    pub path: OsString,
    pub roots: Vec<PathBuf>,
}

impl Search {
    /// This process's `PATH`, then /usr/lib/postgresql (Debian's layout).
    pub fn system() -> Search {
        Search {
            path: std::env::var_os("PATH").unwrap_or_default(),
            roots: vec![PathBuf::from("/usr/lib/postgresql")],
        }
    }

    /// A program on the search's `PATH` alone (`apt-get`, `sudo`).
    pub fn on_path(&self, name: &str) -> Option<PathBuf> {
        std::env::split_paths(&self.path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    /// A PostgreSQL program: on the `PATH`, else the newest under a root.
    pub fn find(&self, name: &'static str) -> Result<PathBuf, LocalPgError> {
        if let Some(p) = self.on_path(name) {
            return Ok(p);
        }
        let mut found: Vec<PathBuf> = self
            .roots
            .iter()
            .flat_map(|r| std::fs::read_dir(r).into_iter().flatten().flatten())
            .map(|e| e.path().join("bin").join(name))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop().ok_or(LocalPgError::Missing(name))
    }
}

/// A PostgreSQL program: on PATH, else the newest under /usr/lib/postgresql.
pub fn find(name: &'static str) -> Result<PathBuf, LocalPgError> {
    Search::system().find(name)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
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

    /// [`LocalPg::start`] with the programs `search` finds.
    pub fn start_found(search: &Search, name: &str, settings: &[&str]) -> Result<LocalPg, LocalPgError> {
        Self::start_from(search, name, settings, |_| Ok(()))
    }

    /// [`LocalPg::start`], calling `prepare` with the data directory after
    /// `initdb` and before the server starts (to write certificates or a
    /// `pg_hba.conf`; relative paths in `settings` are relative to it).
    pub fn start_with(
        name: &str,
        settings: &[&str],
        prepare: impl FnOnce(&Path) -> Result<(), LocalPgError>,
    ) -> Result<LocalPg, LocalPgError> {
        Self::start_from(&Search::system(), name, settings, prepare)
    }

    fn start_from(
        search: &Search,
        name: &str,
        settings: &[&str],
        prepare: impl FnOnce(&Path) -> Result<(), LocalPgError>,
    ) -> Result<LocalPg, LocalPgError> {
        let initdb = search.find("initdb")?;
        let pg_ctl = search.find("pg_ctl")?;
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
