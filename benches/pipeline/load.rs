//! Load generators: closed-loop INSERT clients (tokio-postgres, one
//! connection each), an open-loop generator at a fixed offered rate, a
//! backlog filler, and the plain HTTP load against the receiver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Config, NoTls};
use uuid::Uuid;

use super::Res;

pub async fn connect(config: &Config) -> Res<Client> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A 5-column row's values: (a, b, d).
const D: &str = "the quick brown fox jumps over the lazy dog";

/// One transaction of the closed-loop clients.
#[derive(Debug, Clone, Copy)]
pub enum Statement {
    /// A single-row INSERT (one transaction).
    Row,
    /// A 1,000-row `INSERT ... SELECT generate_series` (one transaction).
    Bulk,
    /// A single-row UPDATE of one column by primary key (one transaction),
    /// rows 1..=[`UPDATE_ROWS`]: an app changing a record's status.
    Update,
}

/// The rows an [`Statement::Update`] table holds (ids 1..=this).
pub const UPDATE_ROWS: i64 = 10_000;

impl Statement {
    pub fn rows(self) -> u64 {
        match self {
            Statement::Row | Statement::Update => 1,
            Statement::Bulk => 1000,
        }
    }
    fn sql(self, table: &str) -> String {
        match self {
            Statement::Row => format!("INSERT INTO {table} (a, b, d) VALUES ($1, $2, $3)"),
            Statement::Bulk => format!(
                "INSERT INTO {table} (a, b, d) SELECT 'item-' || g, g, $2::text \
                 FROM generate_series($1::int, $1::int + 999) g"
            ),
            Statement::Update => format!("UPDATE {table} SET b = b + 1 WHERE id = $1"),
        }
    }
}

/// Committed transactions over a measured interval.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub transactions: u64,
    pub secs: f64,
}

impl Rate {
    pub fn per_s(&self) -> f64 {
        self.transactions as f64 / self.secs
    }
}

/// `clients` connections each committing `statement` into `table` back to
/// back for `secs` (connections are opened before the clock starts).
pub async fn closed_loop(
    config: &Config,
    table: &str,
    statement: Statement,
    clients: usize,
    secs: f64,
) -> Res<Rate> {
    let sql = statement.sql(table);
    let mut conns = Vec::new();
    for _ in 0..clients {
        let c = connect(config).await?;
        let stmt = c.prepare(&sql).await?;
        conns.push((c, stmt));
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (c, stmt)) in conns.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut n: u64 = 0;
            while Instant::now() < end {
                let b = (i as i32) * 1_000_000 + (n % 1_000_000) as i32;
                match statement {
                    Statement::Row => c.execute(&stmt, &[&format!("item-{b}"), &b, &D]).await?,
                    Statement::Bulk => c.execute(&stmt, &[&b, &D]).await?,
                    Statement::Update => {
                        // Clients spread over the rows (no two wait on one row lock).
                        let id = (i as i64 * 1237 + n as i64 * 7919) % UPDATE_ROWS + 1;
                        c.execute(&stmt, &[&id]).await?
                    }
                };
                n += 1;
            }
            Ok::<_, tokio_postgres::Error>((n, Instant::now()))
        });
    }
    let (mut total, mut last) = (0, start);
    while let Some(r) = tasks.join_next().await {
        let (n, done) = r??;
        total += n;
        last = last.max(done);
    }
    Ok(Rate {
        transactions: total,
        secs: last.duration_since(start).as_secs_f64(),
    })
}

/// Commits `events` rows into `table` in 1,000-row statements from 4
/// clients (the backlog of the drain scenarios).
pub async fn fill(config: &Config, table: &str, events: u64) -> Res<Duration> {
    let start = Instant::now();
    let statements = events.div_ceil(1000);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sql = Statement::Bulk.sql(table);
    let last_sql = format!(
        "INSERT INTO {table} (a, b, d) SELECT 'item-' || g, g, $2::text \
         FROM generate_series($1::int, $1::int + $3::int - 1) g"
    );
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let c = connect(config).await?;
        let (sql, last_sql, next) = (sql.clone(), last_sql.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= statements {
                    return Ok::<_, tokio_postgres::Error>(());
                }
                let rows = (events - i * 1000).min(1000);
                let first = (i * 1000) as i32;
                if rows == 1000 {
                    c.execute(&sql, &[&first, &D]).await?;
                } else {
                    c.execute(&last_sql, &[&first, &D, &(rows as i32)]).await?;
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(start.elapsed())
}

/// The result of an open-loop run.
pub struct OpenRun {
    /// (event id, when its commit returned).
    pub commits: Vec<(Uuid, Instant)>,
    pub sent: u64,
    /// Worst delay between an event's scheduled time and its commit call.
    pub max_lag: Duration,
}

/// Offers `rate` `webhooks.emit()` transactions/s for `secs`, on a
/// schedule that does not wait for earlier ones (open loop), over `conns`
/// connections; records when each event's commit returned.
pub async fn open_loop(config: &Config, rate: f64, secs: f64, conns: usize) -> Res<OpenRun> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let c = connect(config).await?;
        let stmt = c
            .prepare("SELECT webhooks.emit('item.created', $1::jsonb)")
            .await?;
        let rx = rx.clone();
        workers.spawn(async move {
            let mut commits = Vec::new();
            let mut max_lag = Duration::ZERO;
            loop {
                let next = rx.lock().await.recv().await;
                let Some((n, due)) = next else { break };
                max_lag = max_lag.max(Instant::now().saturating_duration_since(due));
                // The same shape as a bench.watched row's payload.
                let payload = serde_json::json!({"id": n, "a": format!("item-{n}"), "b": n, "d": D});
                let row = c.query_one(&stmt, &[&payload]).await?;
                commits.push((row.get::<_, Uuid>(0), Instant::now()));
            }
            Ok::<_, tokio_postgres::Error>((commits, max_lag))
        });
    }
    let start = Instant::now() + Duration::from_millis(10);
    let total = (rate * secs).round() as u64;
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        tx.send((n, due))?;
    }
    drop(tx);
    let mut run = OpenRun {
        commits: Vec::with_capacity(total as usize),
        sent: total,
        max_lag: Duration::ZERO,
    };
    while let Some(r) = workers.join_next().await {
        let (commits, lag) = r??;
        run.commits.extend(commits);
        run.max_lag = run.max_lag.max(lag);
    }
    Ok(run)
}

/// How the HTTP ceiling was measured.
pub struct Ceiling {
    pub per_s: f64,
    pub tool: String,
}

/// Concurrent connections of the HTTP load (the sidecar's default
/// PGWEBHOOKS_MAX_IN_FLIGHT).
pub const HTTP_CONNECTIONS: usize = 64;

/// The receiver's rate under plain HTTP load with `body`: `wrk` when it is
/// installed, else keep-alive reqwest clients on a runtime of their own.
pub async fn http_ceiling(url: &str, body: Vec<u8>, secret: &str, secs: f64) -> Res<Ceiling> {
    if let Some(c) = wrk(url, &body, secs).await {
        return Ok(c);
    }
    let (url, secret) = (url.to_owned(), secret.to_owned());
    tokio::task::spawn_blocking(move || builtin_http_load(&url, body, &secret, secs)).await?
}

async fn wrk(url: &str, body: &[u8], secs: f64) -> Option<Ceiling> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .any(|dir| dir.join("wrk").is_file());
    if !found {
        return None;
    }
    let script = std::env::temp_dir().join(format!("pgwebhooks-bench-wrk-{}.lua", std::process::id()));
    let body_lua: String = body.iter().map(|b| format!("\\{b}")).collect();
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.body = \"{body_lua}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
    );
    std::fs::write(&script, lua).ok()?;
    let out = tokio::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{HTTP_CONNECTIONS}"),
            &format!("-d{}s", secs.round().max(1.0)),
        ])
        .arg("-s")
        .arg(&script)
        .arg(url)
        .output()
        .await;
    let _ = std::fs::remove_file(&script);
    let out = out.ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let per_s = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())?;
    Some(Ceiling {
        per_s,
        tool: format!("wrk -t2 -c{HTTP_CONNECTIONS} (unsigned requests)"),
    })
}

fn builtin_http_load(url: &str, body: Vec<u8>, secret: &str, secs: f64) -> Res<Ceiling> {
    use pgwebhooks::sign::SigningKey;
    pgwebhooks::deliver::http::install_crypto_provider();
    let key = SigningKey::parse(secret)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("http-load")
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(HTTP_CONNECTIONS)
        .tcp_nodelay(true)
        .build()?;
    let body = axum::body::Bytes::from(body);
    let per_s = rt.block_on(async move {
        // Requests in the first 300 ms (connection set-up) are not counted.
        let start = Instant::now() + Duration::from_millis(300);
        let end = start + Duration::from_secs_f64(secs);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..HTTP_CONNECTIONS {
            let (client, body, key, url) = (client.clone(), body.clone(), key.clone(), url.to_owned());
            tasks.spawn(async move {
                let mut n = 0u64;
                loop {
                    let now = Instant::now();
                    if now >= end {
                        return Ok::<_, reqwest::Error>(n);
                    }
                    let id = Uuid::from_u128(fastrand::u128(..)).to_string();
                    let ts = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs() as i64;
                    let resp = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("webhook-id", &id)
                        .header("webhook-timestamp", ts.to_string())
                        .header("webhook-signature", key.sign(&id, ts, &body))
                        .body(body.clone())
                        .send()
                        .await?;
                    let ok = resp.status().is_success();
                    let _ = resp.bytes().await?;
                    if ok && now >= start {
                        n += 1;
                    }
                }
            });
        }
        let mut total = 0;
        while let Some(r) = tasks.join_next().await {
            total += r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(total as f64 / secs)
    })?;
    rt.shutdown_background();
    Ok(Ceiling {
        per_s,
        tool: format!(
            "built-in: {HTTP_CONNECTIONS} keep-alive reqwest clients, own 2-thread runtime, signed requests"
        ),
    })
}
