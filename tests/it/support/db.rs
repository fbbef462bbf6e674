//! A real PostgreSQL for the tests.
//!
//! With `DATABASE_URL` set, tests use that server (the role must be able to
//! create databases). Otherwise the first test starts a throwaway cluster
//! from the server binaries on the machine (as the `postgres` user when the
//! tests run as root), and a watchdog process stops and deletes it when the
//! test process exits, however it exits. A template database is migrated
//! once (with the example app); every test gets its own clone, dropped when
//! the test's `TestDb` is dropped.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use pgwebhooks::localpg::LocalPg;
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
        Err(_) => {
            let pg = start_cluster("pgwebhooks-test", false);
            let config = pg.config("postgres");
            std::mem::forget(pg); // lives as long as the test process; its watchdog cleans up
            config
        }
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

/// The server binaries' cluster for the whole test run (never dropped:
/// its watchdog stops and deletes it when the test process exits).
fn start_cluster(name: &str, durable: bool) -> LocalPg {
    let commit = if durable {
        "synchronous_commit=on"
    } else {
        "synchronous_commit=off"
    };
    LocalPg::start(
        name,
        &[
            "fsync=off",
            commit,
            "full_page_writes=off",
            "max_connections=500",
            "shared_buffers=128MB",
        ],
    )
    .unwrap_or_else(|e| panic!("starting the test PostgreSQL: {e}"))
}

/// A throwaway cluster of its own (for tests that restart Postgres).
pub struct Cluster {
    pub config: Config,
    pg: LocalPg,
}

impl Cluster {
    /// Starts a new cluster with a migrated database `app` (example included).
    pub async fn start() -> Cluster {
        // Durable commits: an immediate restart is a crash, and the test
        // checks that nothing committed is lost.
        let pg = std::thread::spawn(|| start_cluster("pgwebhooks-cluster", true))
            .join()
            .unwrap();
        let admin = connect(&pg.config("postgres")).await;
        admin.batch_execute("CREATE DATABASE app").await.unwrap();
        let config = pg.config("app");
        let mut client = connect(&config).await;
        pgwebhooks::db::migrate::run(&mut client, true).await.unwrap();
        Cluster { config, pg }
    }

    /// A `postgres://` URL of the `app` database, for processes.
    #[allow(dead_code)] // used by tests/fault_injection.rs
    pub fn url(&self) -> String {
        self.pg.url("app")
    }

    /// `pg_ctl restart -m <mode>` (`fast` or `immediate`).
    pub fn restart(&self, mode: &str) {
        self.pg.restart(mode).unwrap_or_else(|e| panic!("{e}"));
    }
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

/// The notices a connection received, in order.
#[derive(Clone, Default)]
pub struct Notices(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Notices {
    /// Takes what arrived so far.
    #[allow(dead_code)]
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
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

    /// A connection as another role (the test cluster trusts local logins).
    #[allow(dead_code)] // not every test binary uses it
    pub async fn client_as(&self, role: &str) -> Client {
        let mut config = self.config.clone();
        config.user(role);
        connect(&config).await
    }

    /// A connection as `role` that keeps the notices and warnings the
    /// server sends it ("WARNING: message"), as a writer's session sees them.
    #[allow(dead_code)]
    pub async fn client_with_notices(&self, role: &str) -> (Client, Notices) {
        let mut config = self.config.clone();
        config.user(role);
        let (client, mut connection) = config.connect(NoTls).await.expect("connect to test Postgres");
        let notices = Notices::default();
        let sink = notices.clone();
        tokio::spawn(async move {
            while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notice(n)) => {
                        sink.0
                            .lock()
                            .unwrap()
                            .push(format!("{}: {}", n.severity(), n.message()))
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        (client, notices)
    }

    /// `pgwebhooks args…` against this database: (success, stdout, stderr).
    /// Asynchronous, so an in-process sidecar on the test's runtime keeps
    /// running while the command waits on it.
    #[allow(dead_code)]
    pub async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
            .args(args)
            .env("DATABASE_URL", self.url())
            .env_remove("PGWEBHOOKS_ENDPOINT_SECRET")
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// [`TestDb::cli`], blocking: for tests with no sidecar on their runtime.
    #[allow(dead_code)]
    pub fn cli_blocking(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
            .args(args)
            .env("DATABASE_URL", self.url())
            .env_remove("PGWEBHOOKS_ENDPOINT_SECRET")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// This test's database name, unique in the cluster (for role names).
    #[allow(dead_code)]
    pub fn name(&self) -> &str {
        &self.name
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
