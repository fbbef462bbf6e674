//! TLS to Postgres: a cluster of its own with `ssl=on`, a throwaway CA
//! (made with `openssl`), and a `pg_hba.conf` under which the role `tls_app`
//! may only log in over TLS (with a password) and `tls_cert` only with a
//! client certificate.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use pgwebhooks::db::{self, DbConfig};
use pgwebhooks::localpg::{LocalPg, LocalPgError};

use crate::support::sidecar::{run_command, Process};
use crate::support::wait;

const PASSWORD: &str = "tls-Pa55word-never-printed";

struct TlsCluster {
    port: u16,
    /// The CA that signed the server certificate.
    ca: PathBuf,
    /// Another CA, which signed nothing the server shows.
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

static CLUSTER: OnceLock<Option<TlsCluster>> = OnceLock::new();

fn openssl_missing() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
}

/// The shared TLS cluster (these tests are compiled as ignored where
/// `openssl` is missing: see build.rs).
fn cluster() -> Option<&'static TlsCluster> {
    CLUSTER
        .get_or_init(|| {
            // These tests are compiled as ignored where openssl is missing
            // (build.rs): here it is required.
            assert!(!openssl_missing(), "`openssl` on PATH (apt-get install openssl)");
            Some(std::thread::spawn(start).join().expect("TLS cluster start-up"))
        })
        .as_ref()
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), LocalPgError> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LocalPgError::Step {
            step: "openssl",
            detail: format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)),
        })
    }
}

fn is_root() -> bool {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

/// A CA (`{name}.pem`, `{name}.key`).
fn make_ca(dir: &Path, name: &str) -> Result<(), LocalPgError> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=pgwebhooks test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )
}

/// A leaf certificate `{name}.crt`/`{name}.key` signed by `ca.pem`.
fn make_leaf(dir: &Path, name: &str, cn: &str, ext: &str) -> Result<(), LocalPgError> {
    make_leaf_by(dir, ("ca.pem", "ca.key"), name, cn, ext)
}

/// A leaf certificate `{name}.crt`/`{name}.key` signed by `ca`
/// (certificate and key files).
fn make_leaf_by(dir: &Path, ca: (&str, &str), name: &str, cn: &str, ext: &str) -> Result<(), LocalPgError> {
    std::fs::write(dir.join(format!("{name}.ext")), ext)?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            ca.0,
            "-CAkey",
            ca.1,
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    )
}

fn start() -> TlsCluster {
    let pg = LocalPg::start_with(
        "pgwebhooks-tls",
        &[
            "fsync=off",
            "ssl=on",
            "ssl_cert_file=server.crt",
            "ssl_key_file=server.key",
            "ssl_ca_file=ca.pem",
        ],
        |data| {
            let dir = data.parent().expect("the cluster directory");
            make_ca(dir, "ca")?;
            make_ca(dir, "other")?;
            make_leaf(
                dir,
                "server",
                "localhost",
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
            )?;
            make_leaf(
                dir,
                "client",
                "tls_cert",
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
            )?;
            for f in ["server.crt", "server.key", "ca.pem"] {
                std::fs::copy(dir.join(f), data.join(f))?;
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local   all all                   trust\n\
                 hostssl all tls_app  127.0.0.1/32 scram-sha-256\n\
                 host    all tls_app  127.0.0.1/32 reject\n\
                 hostssl all tls_cert 127.0.0.1/32 cert\n\
                 host    all tls_cert 127.0.0.1/32 reject\n\
                 host    all all      127.0.0.1/32 trust\n",
            )?;
            std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600))?;
            if is_root() {
                let mut chown = Command::new("chown");
                chown.arg("postgres:");
                for f in ["server.crt", "server.key", "ca.pem", "pg_hba.conf"] {
                    chown.arg(data.join(f));
                }
                let status = chown.status()?;
                assert!(status.success(), "chown the server's TLS files to postgres");
            }
            Ok(())
        },
    )
    .unwrap_or_else(|e| panic!("starting the TLS test PostgreSQL: {e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin = db::connect(&pg.config("postgres").into()).await.unwrap();
        for sql in [
            format!("CREATE ROLE tls_app LOGIN SUPERUSER PASSWORD '{PASSWORD}'"),
            "CREATE ROLE tls_cert LOGIN".to_owned(),
            "CREATE DATABASE app OWNER tls_app".to_owned(),
        ] {
            admin.batch_execute(&sql).await.unwrap();
        }
    });
    let dir = pg.dir.clone();
    let port = pg.port;
    std::mem::forget(pg); // lives as long as the test process; its watchdog cleans up
    TlsCluster {
        port,
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other.pem"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

/// `/a b/c` → `%2Fa%20b%2Fc`, for a path in a URL query.
fn encode(path: &Path) -> String {
    let mut out = String::new();
    for b in path.display().to_string().bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl TlsCluster {
    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://tls_app:{PASSWORD}@{host}:{}/app?{query}", self.port)
    }

    fn verify_full_url(&self) -> String {
        self.url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", encode(&self.ca)),
        )
    }
}

/// Parses without the environment (no `PGSSL*`, no `~/.postgresql`).
fn parse(url: &str) -> DbConfig {
    db::parse_url_with_env(url, &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert!(!out.contains(PASSWORD), "an error printed the password: {out}");
    out
}

/// Whether this connection's own session is encrypted.
async fn session_is_tls(config: &DbConfig) -> Result<bool, String> {
    let client = db::connect(config).await.map_err(|e| chain(&e))?;
    let row = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .unwrap();
    Ok(row.get(0))
}

fn pgwebhooks(args: &[&str], url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .stdin(Stdio::null())
        .output()
        .expect("run pgwebhooks")
}

#[tokio::test]
#[cfg_attr(
    not(have_openssl),
    ignore = "needs openssl (apt-get install openssl, then touch build.rs); .ci/run installs it"
)]
async fn verify_full_migrate_and_run_are_all_tls() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.verify_full_url();
    let out = pgwebhooks(&["migrate"], &url);
    assert!(
        out.status.success(),
        "migrate over verify-full: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let child = run_command(&url)
        .env("PGWEBHOOKS_LISTEN", "127.0.0.1:0")
        .env("PGWEBHOOKS_ADMIN_LISTEN", "127.0.0.1:0")
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn pgwebhooks run");
    let _sidecar = Process(child);

    let admin = db::connect(&parse(&cluster.url("127.0.0.1", "sslmode=require")))
        .await
        .unwrap();
    let sessions: Vec<(String, bool)> = wait::until(
        "the sidecar's pool and LISTEN sessions",
        Duration::from_secs(30),
        || {
            let admin = &admin;
            async move {
                let rows = admin
                    .query(
                        "SELECT a.application_name, coalesce(s.ssl, false)
                           FROM pg_stat_activity a LEFT JOIN pg_stat_ssl s USING (pid)
                          WHERE a.application_name LIKE 'pgwebhooks%'",
                        &[],
                    )
                    .await
                    .unwrap();
                let sessions: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                let listen = sessions
                    .iter()
                    .any(|(name, _)| name.starts_with("pgwebhooks listen"));
                (listen && sessions.len() >= 2).then_some(sessions)
            }
        },
    )
    .await;
    assert!(
        sessions.iter().all(|(_, ssl)| *ssl),
        "every sidecar session uses TLS: {sessions:?}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(have_openssl),
    ignore = "needs openssl (apt-get install openssl, then touch build.rs); .ci/run installs it"
)]
async fn require_and_prefer_encrypt_without_roots() {
    let Some(cluster) = cluster() else { return };
    for query in ["sslmode=require", "sslmode=prefer", "application_name=x"] {
        let config = parse(&cluster.url("127.0.0.1", query));
        assert_eq!(session_is_tls(&config).await, Ok(true), "{query}");
    }
    // The key=value form, with verify-ca: the chain is checked, the name is not.
    let kv = format!(
        "host=not-in-the-cert.example hostaddr=127.0.0.1 port={} user=tls_app password='{PASSWORD}' \
         dbname=app sslmode=verify-ca sslrootcert='{}'",
        cluster.port,
        cluster.ca.display()
    );
    assert_eq!(
        session_is_tls(&parse(&kv)).await,
        Ok(true),
        "verify-ca ignores the host name"
    );
    // A client certificate is the only way in for tls_cert.
    let cert = format!(
        "postgres://tls_cert@localhost:{}/app?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        cluster.port,
        encode(&cluster.ca),
        encode(&cluster.client_cert),
        encode(&cluster.client_key)
    );
    assert_eq!(
        session_is_tls(&parse(&cert)).await,
        Ok(true),
        "client certificate"
    );
    let no_cert = format!(
        "postgres://tls_cert@localhost:{}/app?sslmode=require",
        cluster.port
    );
    let e = session_is_tls(&parse(&no_cert)).await.unwrap_err();
    assert!(e.contains("requires a valid client certificate"), "{e}");
}

#[tokio::test]
#[cfg_attr(
    not(have_openssl),
    ignore = "needs openssl (apt-get install openssl, then touch build.rs); .ci/run installs it"
)]
async fn verification_failures_are_clear() {
    let Some(cluster) = cluster() else { return };
    let kv = |mode: &str, ca: &Path| {
        format!(
            "host=not-in-the-cert.example hostaddr=127.0.0.1 port={} user=tls_app password='{PASSWORD}' \
             dbname=app sslmode={mode} sslrootcert='{}'",
            cluster.port,
            ca.display()
        )
    };
    let e = session_is_tls(&parse(&kv("verify-full", &cluster.ca)))
        .await
        .unwrap_err();
    assert!(
        e.contains("certificate verify failed for host not-in-the-cert.example (sslmode=verify-full)"),
        "{e}"
    );
    let other = cluster.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", encode(&cluster.other_ca)),
    );
    let e = session_is_tls(&parse(&other)).await.unwrap_err();
    assert!(
        e.contains("certificate verify failed for host localhost (sslmode=verify-full)"),
        "{e}"
    );
    assert!(e.contains("UnknownIssuer"), "{e}");
    // As in libpq, require with root certificates checks the chain.
    let e = session_is_tls(&parse(&kv("require", &cluster.other_ca)))
        .await
        .unwrap_err();
    assert!(e.contains("certificate verify failed"), "{e}");

    // The CLI says the same, without the password.
    let bad_host = format!(
        "postgres://tls_app:{PASSWORD}@localhost:{}/app?sslmode=verify-full&sslrootcert={}",
        cluster.port,
        encode(&cluster.other_ca)
    );
    for (url, expected) in [
        (bad_host, "certificate verify failed for host localhost"),
        (
            cluster.url(
                "localhost",
                "sslmode=verify-full&sslrootcert=%2Fnonexistent%2Fca.pem",
            ),
            "sslrootcert /nonexistent/ca.pem: no such file",
        ),
        (
            cluster.url("localhost", "sslmode=verify-everything"),
            "invalid sslmode \"verify-everything\"",
        ),
    ] {
        let out = pgwebhooks(&["status"], &url);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}");
        assert!(stderr.contains(expected), "expected {expected:?} in: {stderr}");
        assert!(!stderr.contains(PASSWORD), "the password was printed: {stderr}");
    }
}

#[tokio::test]
#[cfg_attr(
    not(have_openssl),
    ignore = "needs openssl (apt-get install openssl, then touch build.rs); .ci/run installs it"
)]
async fn disable_is_refused_for_a_tls_only_role() {
    let Some(cluster) = cluster() else { return };
    let e = session_is_tls(&parse(&cluster.url("127.0.0.1", "sslmode=disable")))
        .await
        .unwrap_err();
    assert!(e.contains("pg_hba.conf") && e.contains("no encryption"), "{e}");
}

/// A cluster of its own serving, in turn, certificates made as
/// PostgreSQL's documentation makes them (issue #24): self-signed with
/// `openssl req -x509`, so a CA certificate, with only a Common Name, and
/// handed to clients as `sslrootcert`. Every case is also run through
/// `psql` with the same settings: libpq is the reference.
struct SelfSignedCluster {
    pg: LocalPg,
}

/// The command from https://www.postgresql.org/docs/15/ssl-tcp.html
/// ("Creating Certificates"), word for word but for the file names.
fn docs_recipe(dir: &Path, name: &str) -> Result<(), LocalPgError> {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-x509",
            "-days",
            "365",
            "-nodes",
            "-text",
            "-out",
            &format!("{name}.crt"),
            "-keyout",
            &format!("{name}.key"),
            "-subj",
            "/CN=dbhost.yourdomain.com",
        ],
    )
}

/// The same, but valid only on 2020-01-01 (`openssl req` cannot back-date).
fn expired_self_signed(dir: &Path) -> Result<(), LocalPgError> {
    std::fs::write(
        dir.join("selfsign.cnf"),
        "[ca]\ndefault_ca = ca_default\n\
         [ca_default]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\ndefault_md = sha256\n\
         policy = policy_any\nunique_subject = no\n\
         [policy_any]\ncommonName = supplied\n\
         [self_signed]\nbasicConstraints = critical,CA:TRUE\nsubjectKeyIdentifier = hash\n",
    )?;
    std::fs::write(dir.join("index.txt"), "")?;
    std::fs::write(dir.join("serial"), "01\n")?;
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-keyout",
            "expired.key",
            "-out",
            "expired.csr",
            "-subj",
            "/CN=dbhost.yourdomain.com",
        ],
    )?;
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            "selfsign.cnf",
            "-selfsign",
            "-keyfile",
            "expired.key",
            "-in",
            "expired.csr",
            "-out",
            "expired.crt",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-extensions",
            "self_signed",
            "-notext",
        ],
    )
}

impl SelfSignedCluster {
    fn start() -> SelfSignedCluster {
        assert!(!openssl_missing(), "`openssl` on PATH (apt-get install openssl)");
        let served = ["server", "expired", "cnleaf", "staleleaf"];
        let pg = LocalPg::start_with("pgwebhooks-tls-self", &["fsync=off", "ssl=on"], |data| {
            let dir = data.parent().expect("the cluster directory");
            // In the file, not on the command line, where ALTER SYSTEM
            // could not override them.
            let mut conf = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))?;
            std::io::Write::write_all(
                &mut conf,
                b"ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            )?;
            docs_recipe(dir, "server")?;
            // Same subject, another key: a stranger with the right name.
            docs_recipe(dir, "other")?;
            expired_self_signed(dir)?;
            // A current leaf issued by that expired (CA) certificate.
            make_leaf_by(
                dir,
                ("expired.crt", "expired.key"),
                "staleleaf",
                "stale.yourdomain.com",
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
            )?;
            // A CA-issued leaf with only a Common Name (no subjectAltName).
            make_ca(dir, "ca")?;
            make_leaf(
                dir,
                "cnleaf",
                "dbhost.yourdomain.com",
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
            )?;
            let mut files = vec!["pg_hba.conf".to_owned()];
            for name in served {
                for ext in ["crt", "key"] {
                    let f = format!("{name}.{ext}");
                    std::fs::copy(dir.join(&f), data.join(&f))?;
                    files.push(f);
                }
                std::fs::set_permissions(
                    data.join(format!("{name}.key")),
                    std::fs::Permissions::from_mode(0o600),
                )?;
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local   all all              trust\n\
                     hostssl all all 127.0.0.1/32 trust\n\
                     host    all all 127.0.0.1/32 reject\n",
            )?;
            if is_root() {
                let status = Command::new("chown")
                    .arg("postgres:")
                    .args(files.iter().map(|f| data.join(f)))
                    .status()?;
                assert!(status.success(), "chown the server's TLS files to postgres");
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("starting the self-signed TLS test PostgreSQL: {e}"));
        SelfSignedCluster { pg }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.pg.dir.join(name)
    }

    /// Makes the server present `{name}.crt` to new connections.
    async fn serve(&self, name: &str) {
        let admin_url = format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
            self.pg.port
        );
        let admin = db::connect(&parse(&admin_url)).await.unwrap();
        for sql in [
            format!("ALTER SYSTEM SET ssl_cert_file = '{name}.crt'"),
            format!("ALTER SYSTEM SET ssl_key_file = '{name}.key'"),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            admin.batch_execute(&sql).await.unwrap();
        }
        // A session started after the postmaster reloaded shows the new
        // setting, and got the new certificate.
        let expected = format!("{name}.crt");
        wait::until(
            "the server to reload its certificate",
            Duration::from_secs(30),
            || {
                let (url, expected) = (&admin_url, &expected);
                async move {
                    let client = db::connect(&parse(url)).await.ok()?;
                    let row = client.query_one("SHOW ssl_cert_file", &[]).await.ok()?;
                    (row.get::<_, String>(0) == *expected).then_some(())
                }
            },
        )
        .await;
    }

    fn conninfo(&self, mode: &str, host: &str, root: Option<&str>) -> String {
        let mut s = format!(
            "host={host} hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode={mode}",
            self.pg.port
        );
        if let Some(root) = root {
            s.push_str(&format!(" sslrootcert='{}'", self.file(root).display()));
        }
        s
    }
}

/// libpq's answer: Ok if `psql` connected over TLS, else its message.
fn psql(conninfo: &str, home: &Path) -> Result<(), String> {
    let psql = pgwebhooks::localpg::find("psql").expect("psql (apt-get install postgresql-client)");
    let mut c = Command::new(psql);
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("PG") {
            c.env_remove(var);
        }
    }
    let out = c
        .args([
            conninfo,
            "-XAtqc",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        // No ~/.postgresql/root.crt or client certificate of the user's.
        .env("HOME", home)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.trim() == "t" {
        Ok(())
    } else {
        Err(format!("{}{stdout}", String::from_utf8_lossy(&out.stderr)))
    }
}

#[tokio::test]
#[cfg_attr(
    not(have_openssl),
    ignore = "needs openssl (apt-get install openssl, then touch build.rs); .ci/run installs it"
)]
async fn self_signed_certificates_as_libpq_accepts_them() {
    let cluster = tokio::task::spawn_blocking(SelfSignedCluster::start)
        .await
        .unwrap();
    const NAME: &str = "dbhost.yourdomain.com";
    let mismatch =
        |host: &str| format!("server certificate for \"{NAME}\" does not match host name \"{host}\"");
    let not_in_roots =
        "the server's certificate is self-signed and is not one of the certificates in sslrootcert";
    // (server certificate, sslmode, host, sslrootcert, accepted, what our
    // error says, what libpq's says too)
    type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, bool, String, &'a str);
    let name_hint = "or use sslmode=verify-ca";
    let cases: Vec<Case> = vec![
        // The documented set-up: the server's own certificate as the root.
        (
            "server",
            "verify-full",
            NAME,
            Some("server.crt"),
            true,
            String::new(),
            "",
        ),
        (
            "server",
            "verify-full",
            "DBHost.YourDomain.COM",
            Some("server.crt"),
            true,
            String::new(),
            "",
        ),
        (
            "server",
            "verify-full",
            "localhost",
            Some("server.crt"),
            false,
            mismatch("localhost"),
            "does not match host name \"localhost\"",
        ),
        (
            "server",
            "verify-full",
            "127.0.0.1",
            Some("server.crt"),
            false,
            mismatch("127.0.0.1"),
            "does not match host name \"127.0.0.1\"",
        ),
        (
            "server",
            "verify-full",
            "other.yourdomain.com",
            Some("server.crt"),
            false,
            name_hint.into(),
            "does not match host name",
        ),
        (
            "server",
            "verify-ca",
            "localhost",
            Some("server.crt"),
            true,
            String::new(),
            "",
        ),
        (
            "server",
            "verify-ca",
            "127.0.0.1",
            Some("server.crt"),
            true,
            String::new(),
            "",
        ),
        // With a root file, require (and prefer) check the chain, as libpq.
        (
            "server",
            "require",
            "localhost",
            Some("server.crt"),
            true,
            String::new(),
            "",
        ),
        (
            "server",
            "prefer",
            "localhost",
            Some("server.crt"),
            true,
            String::new(),
            "",
        ),
        ("server", "require", "localhost", None, true, String::new(), ""),
        (
            "server",
            "disable",
            "localhost",
            None,
            false,
            "no encryption".into(),
            "no encryption",
        ),
        // A self-signed certificate that is not in sslrootcert, even with
        // the same name, or a CA that did not issue it.
        (
            "server",
            "verify-full",
            NAME,
            Some("other.crt"),
            false,
            not_in_roots.into(),
            "certificate verify failed",
        ),
        (
            "server",
            "verify-ca",
            NAME,
            Some("other.crt"),
            false,
            not_in_roots.into(),
            "certificate verify failed",
        ),
        (
            "server",
            "require",
            NAME,
            Some("other.crt"),
            false,
            not_in_roots.into(),
            "certificate verify failed",
        ),
        (
            "server",
            "prefer",
            NAME,
            Some("other.crt"),
            false,
            "certificate verify failed".into(),
            "",
        ),
        (
            "server",
            "verify-full",
            NAME,
            Some("ca.pem"),
            false,
            not_in_roots.into(),
            "certificate verify failed",
        ),
        // Expired, though in sslrootcert.
        (
            "expired",
            "verify-full",
            NAME,
            Some("expired.crt"),
            false,
            "certificate expired".into(),
            "certificate verify failed",
        ),
        (
            "expired",
            "verify-ca",
            NAME,
            Some("expired.crt"),
            false,
            "renew the server's certificate".into(),
            "certificate verify failed",
        ),
        (
            "expired",
            "require",
            "localhost",
            Some("expired.crt"),
            false,
            "certificate expired".into(),
            "certificate verify failed",
        ),
        // A CA-issued leaf with only a Common Name: libpq checks the CN.
        (
            "cnleaf",
            "verify-full",
            NAME,
            Some("ca.pem"),
            true,
            String::new(),
            "",
        ),
        (
            "cnleaf",
            "verify-full",
            "localhost",
            Some("ca.pem"),
            false,
            mismatch("localhost"),
            "does not match host name \"localhost\"",
        ),
        (
            "cnleaf",
            "verify-ca",
            "localhost",
            Some("ca.pem"),
            true,
            String::new(),
            "",
        ),
        (
            "cnleaf",
            "verify-full",
            NAME,
            Some("server.crt"),
            false,
            "UnknownIssuer".into(),
            "certificate verify failed",
        ),
        // A current leaf whose root in sslrootcert has expired: OpenSSL
        // checks the root's validity period too (webpki does not).
        (
            "staleleaf",
            "verify-ca",
            "localhost",
            Some("expired.crt"),
            false,
            "left out, as libpq does: \"dbhost.yourdomain.com\" (expired)".into(),
            "certificate verify failed",
        ),
    ];
    let mut serving = "server";
    let mut wrong = Vec::new();
    for (served, mode, host, root, accepted, ours_says, libpq_says) in &cases {
        if served != &serving {
            cluster.serve(served).await;
            serving = served;
        }
        let conninfo = cluster.conninfo(mode, host, *root);
        let what = format!("{served}.crt served, {conninfo}");
        let ours = session_is_tls(&parse(&conninfo)).await;
        let libpq = psql(&conninfo, &cluster.pg.dir);
        match (accepted, ours, libpq) {
            (true, Ok(true), Ok(())) => {}
            (false, Err(ours), Err(libpq))
                if ours.contains(ours_says.as_str()) && libpq.contains(libpq_says) => {}
            (_, ours, libpq) => wrong.push(format!(
                "{what}: expected {}, pgwebhooks: {ours:?}, psql: {libpq:?}",
                if *accepted { "accepted" } else { "refused" }
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}
