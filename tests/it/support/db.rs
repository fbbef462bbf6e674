//! A real PostgreSQL for the tests.
//!
//! With `DATABASE_URL` set, tests use that server (the role must be able to
//! create databases). Otherwise the first test starts a throwaway cluster
//! from the server binaries on the machine (as the `postgres` user when the
//! tests run as root), and a watchdog process stops and deletes it when the
//! test process exits, however it exits. A template database is migrated
//! once (with the example app); every test gets its own clone, dropped when
//! the test's `TestDb` is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio_postgres::{Client, Config, NoTls};

struct Server {
    /// Connection to the maintenance database, as a superuser.
    admin: Config,
    template: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn server() -> &'static Server {
    // Set-up needs its own runtime; tests run inside theirs, so use a thread.
    SERVER.get_or_init(|| {
        std::thread::spawn(start_server)
            .join()
            .expect("test Postgres start-up")
    })
}

fn start_server() -> Server {
    let admin = match std::env::var("DATABASE_URL") {
        Ok(url) => Config::from_str(&url).expect("DATABASE_URL must parse"),
        Err(_) => start_cluster(&format!("pgwebhooks-test-{}", std::process::id()), false).config,
    };
    let template = format!("pgwebhooks_tmpl_{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin_client = connect(&admin).await;
        drop_stale_databases(&admin_client).await;
        for sql in [
            format!("DROP DATABASE IF EXISTS {template}"),
            format!("CREATE DATABASE {template}"),
        ] {
            admin_client
                .batch_execute(&sql)
                .await
                .expect("create template database");
        }
        let mut cfg = admin.clone();
        cfg.dbname(&template);
        let mut client = connect(&cfg).await;
        pgwebhooks::db::migrate::run(&mut client, true)
            .await
            .expect("migrate template");
    });
    Server { admin, template }
}

/// Databases left by earlier runs on a shared server whose process is gone.
async fn drop_stale_databases(admin: &Client) {
    let rows = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname ~ '^pgwebhooks_(tmpl|test)_[0-9]+'",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).unwrap_or("0");
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

fn pg_bin(name: &str) -> PathBuf {
    if let Some(found) = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
    {
        return found;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("PostgreSQL server binary `{name}` not found: install postgresql (Debian: apt-get install postgresql) or set DATABASE_URL")
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throwaway cluster of its own (for tests that restart Postgres).
pub struct Cluster {
    pub config: Config,
    data: PathBuf,
    opts: String,
    log: PathBuf,
}

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

impl Cluster {
    /// Starts a new cluster with a migrated database `app` (example included).
    pub async fn start() -> Cluster {
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        // Durable commits: an immediate restart is a crash, and the test
        // checks that nothing committed is lost.
        let cluster = std::thread::spawn(move || {
            start_cluster(&format!("pgwebhooks-cluster-{}-{n}", std::process::id()), true)
        })
        .join()
        .unwrap();
        let admin = connect(&cluster.config).await;
        admin.batch_execute("CREATE DATABASE app").await.unwrap();
        let mut config = cluster.config.clone();
        config.dbname("app");
        let mut client = connect(&config).await;
        pgwebhooks::db::migrate::run(&mut client, true).await.unwrap();
        Cluster { config, ..cluster }
    }

    /// `pg_ctl restart -m <mode>` (`fast` or `immediate`).
    pub fn restart(&self, mode: &str) {
        let out = pg_command(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-o", &self.opts, "-l"])
            .arg(&self.log)
            .args(["-w", "restart"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `durable`: synchronous commits (otherwise fast and crash-unsafe).
fn start_cluster(name: &str, durable: bool) -> Cluster {
    let dir = std::env::temp_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if is_root() {
        let ok = Command::new("chown")
            .arg("postgres:")
            .arg(&dir)
            .status()
            .map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "chown {} to postgres", dir.display());
    }
    let data = dir.join("data");
    let out = pg_command(&pg_bin("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit={} \
         -c full_page_writes=off -c max_connections=500 -c shared_buffers=128MB",
        dir.display(),
        if durable { "on" } else { "off" }
    );
    let out = pg_command(&pg_bin("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .args(["-o", &opts, "-l"])
        .arg(dir.join("log"))
        .args(["-w", "start"])
        .output()
        .expect("run pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl start failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    );
    spawn_watchdog(&dir, &data);
    let mut config = Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres");
    Cluster {
        config,
        data,
        opts,
        log: dir.join("log"),
    }
}

/// Stops the cluster and removes its directory once this process is gone.
#[expect(clippy::zombie_processes, reason = "the watchdog must outlive this process")]
fn spawn_watchdog(dir: &Path, data: &Path) {
    let pg_ctl = pg_bin("pg_ctl");
    let as_pg = if is_root() { "runuser -u postgres -- " } else { "" };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; {as_pg}'{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
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
        .expect("spawn the test cluster's watchdog");
}

/// A connection for a test (its driver runs on the test's runtime).
pub async fn connect_to(config: &Config) -> Client {
    connect(config).await
}

async fn connect(config: &Config) -> Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect to test Postgres");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A database of its own for one test, dropped with it.
pub struct TestDb {
    name: String,
    config: Config,
}

impl TestDb {
    /// A clone of the migrated template (schema `webhooks` and the example app).
    pub async fn new() -> TestDb {
        let template = server().template.clone();
        Self::create(&format!("TEMPLATE {template}")).await
    }

    /// An empty database, for tests of `migrate` itself.
    pub async fn empty() -> TestDb {
        Self::create("").await
    }

    async fn create(clause: &str) -> TestDb {
        let server = server();
        let name = format!(
            "pgwebhooks_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&server.admin).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} {clause}"))
            .await
            .expect("create test database");
        let mut config = server.admin.clone();
        config.dbname(&name);
        TestDb { name, config }
    }

    pub async fn client(&self) -> Client {
        connect(&self.config).await
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A `postgres://` URL for processes started by the test.
    pub fn url(&self) -> String {
        let host = match &self.config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or("postgres");
        match self.config.get_password() {
            Some(pw) => format!(
                "postgres://{user}:{}@{host}:{port}/{}",
                String::from_utf8_lossy(pw),
                self.name
            ),
            None => format!("postgres://{user}@{host}:{port}/{}", self.name),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = server().admin.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime; do the I/O on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) = admin.connect(NoTls).await {
                    tokio::spawn(conn);
                    let _ = client.batch_execute(&sql).await;
                }
            })
        })
        .join();
    }
}
