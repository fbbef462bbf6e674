//! The scenarios: each resets the tables, drives load, waits until the
//! receiver and webhooks.deliveries agree that everything arrived, and
//! returns what it measured.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "console.rs"]
pub mod console;

use super::cluster::{Cluster, DB};
use super::load::{self, Rate, Statement};
use super::receiver::Receiver;
use super::sidecar::{self, Sidecar};
use super::{Lost, Res, Sizes, STALL};
use uuid::Uuid;

pub struct Bench {
    pub sizes: Sizes,
    pub receiver: Receiver,
    config: tokio_postgres::Config,
    url: String,
    db: tokio_postgres::Client,
    secret: String,
    dir: PathBuf,
    pids_file: PathBuf,
    postmaster: Option<u32>,
    replicas: usize,
}

/// One drain of a committed backlog.
pub struct Drain {
    pub events: u64,
    pub per_s: f64,
    /// First receipt → every delivery recorded.
    pub secs: f64,
    /// Spawn → the sidecar's LISTEN connection is up.
    pub connected: Duration,
    /// Spawn → first receipt.
    pub startup: Duration,
    pub fill: Duration,
    pub rss_mb: f64,
    /// From spawn until every delivery was recorded.
    pub cpu: Cpu,
    pub wal_bytes: i64,
    pub checkpoints: i64,
    pub autovacuums: i64,
    pub autoanalyzes: i64,
    pub duplicates: u64,
    pub churn: Churn,
}

/// The sidecar's own bookkeeping writes while it ran (from
/// pg_stat_user_tables, read after its backends have exited).
#[derive(Debug, Clone, Copy, Default)]
pub struct Churn {
    /// Fan-out batches claimed.
    pub batches: i64,
    /// Writes of the idle flag (two per idle wait; while it is set, every
    /// writing transaction sends a NOTIFY).
    pub idle_flag_writes: i64,
}

/// One side of an overhead ratio.
pub struct Side {
    pub rate: Rate,
    /// Transaction ids assigned while it ran (the app's and everyone else's).
    pub xids: i64,
    pub wal_bytes: i64,
    pub cpu: Cpu,
}

impl Side {
    /// Several runs of the same side, as one.
    fn merge(runs: &[Side]) -> Side {
        let mut out = Side {
            rate: Rate {
                transactions: 0,
                secs: 0.0,
            },
            xids: 0,
            wal_bytes: 0,
            cpu: Cpu::default(),
        };
        for r in runs {
            out.rate.transactions += r.rate.transactions;
            out.rate.secs += r.rate.secs;
            out.xids += r.xids;
            out.wal_bytes += r.wal_bytes;
            out.cpu.machine += r.cpu.machine;
            out.cpu.postgres += r.cpu.postgres;
            out.cpu.sidecar += r.cpu.sidecar;
            out.cpu.bench += r.cpu.bench;
        }
        out
    }
}

/// CPU time used over an interval: the whole machine, Postgres (every
/// server process), the sidecar, and this process (load clients and the
/// receiver). The machine is shared: the rest is other work.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub machine: Duration,
    pub postgres: Duration,
    pub sidecar: Duration,
    pub bench: Duration,
}

impl Cpu {
    fn now(sc: Option<&Sidecar>, postmaster: Option<u32>) -> Cpu {
        Cpu {
            machine: sidecar::machine_busy().unwrap_or_default(),
            postgres: postmaster.and_then(sidecar::postgres_cpu).unwrap_or_default(),
            sidecar: sc.and_then(|s| s.cpu()).unwrap_or_default(),
            bench: sidecar::process_cpu(std::process::id()).unwrap_or_default(),
        }
    }
    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            machine: self.machine.saturating_sub(before.machine),
            postgres: self.postgres.saturating_sub(before.postgres),
            sidecar: self.sidecar.saturating_sub(before.sidecar),
            bench: self.bench.saturating_sub(before.bench),
        }
    }
    /// What nobody above used: other work on the machine.
    pub fn other(&self) -> Duration {
        self.machine
            .saturating_sub(self.postgres + self.sidecar + self.bench)
    }
}

/// Both sides of an overhead ratio, plus the watched side with no sidecar.
pub struct Overhead {
    pub plain: Side,
    pub watched: Side,
    /// The watched table again, the sidecar stopped: capture's own cost.
    pub capture_only: Side,
    pub rows: u64,
    /// Deliveries received while the watched side was running.
    pub during: u64,
    /// How long the rest took to arrive after the inserts stopped.
    pub catch_up: Option<Duration>,
    /// How long the sidecar took to stop on SIGTERM afterwards.
    pub stop: Duration,
    pub churn: Churn,
}

impl Overhead {
    pub fn ratio(&self) -> f64 {
        self.watched.rate.per_s() / self.plain.rate.per_s()
    }
}

pub struct Latency {
    /// (percentile, ms)
    pub percentiles: Vec<(f64, f64)>,
    pub p50: f64,
    pub p99: f64,
    pub events: usize,
    pub before_commit_return: usize,
    pub max_lag: Duration,
    pub churn: Churn,
}

pub struct Soak {
    pub events: u64,
    pub dead: i64,
    /// (table, dead, live, autovacuum runs)
    pub tables: Vec<(String, i64, i64, i64)>,
    /// The first and the last fifth of the run.
    pub first: SoakWindow,
    pub last: SoakWindow,
    /// (outbox rows, ms) of one `webhooks.fanout_probe()` (the idle
    /// sidecar's check for missed work) at the end, when it exists.
    pub probe: Option<(i64, f64)>,
}

pub struct SoakWindow {
    pub p50: f64,
    pub p99: f64,
    pub postgres_cpu_ms: f64,
}

/// The capture anchors (docs/performance.md): the same table as bench.watched
/// captured by two peers' triggers, reproduced from their public
/// definitions, and watched with a two-join payload function.
/// - a minimal hand-written outbox: AFTER INSERT FOR EACH ROW, to_jsonb(NEW)
///   into a bigserial table;
/// - Hasura's event trigger as its open-source hdb_catalog SQL defines it: a
///   row-level trigger building {"old", "new": row_to_json(NEW)} and calling
///   insert_event_log(), which reads its session settings and inserts into
///   an event_log with a text uuid key and four more indexes.
const ANCHORS: &str = "
    CREATE SCHEMA peers;
    CREATE TABLE peers.minimal (LIKE bench.watched INCLUDING ALL);
    CREATE TABLE peers.hasura (LIKE bench.watched INCLUDING ALL);
    CREATE TABLE peers.outbox (id bigserial PRIMARY KEY, payload jsonb NOT NULL,
                               created_at timestamptz NOT NULL DEFAULT now());
    CREATE FUNCTION peers.minimal_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO peers.outbox (payload) VALUES (to_jsonb(NEW));
        RETURN NULL;
    END $$;
    CREATE TRIGGER minimal_outbox AFTER INSERT ON peers.minimal FOR EACH ROW EXECUTE FUNCTION peers.minimal_outbox();

    CREATE TABLE peers.event_log (
        id text DEFAULT gen_random_uuid() PRIMARY KEY,
        schema_name text NOT NULL, table_name text NOT NULL, trigger_name text NOT NULL,
        payload jsonb NOT NULL,
        delivered boolean NOT NULL DEFAULT false, error boolean NOT NULL DEFAULT false,
        tries integer NOT NULL DEFAULT 0, created_at timestamp DEFAULT now(),
        locked timestamptz, next_retry_at timestamp, archived boolean NOT NULL DEFAULT false);
    CREATE INDEX ON peers.event_log (trigger_name);
    CREATE INDEX ON peers.event_log (locked);
    CREATE INDEX ON peers.event_log (delivered);
    CREATE INDEX ON peers.event_log (created_at);
    CREATE FUNCTION peers.insert_event_log(schema_name text, table_name text, trigger_name text, op text, row_data json)
    RETURNS text LANGUAGE plpgsql AS $$
    DECLARE
        id text;
        payload json;
        session_variables json;
        trace_context json;
    BEGIN
        id := gen_random_uuid();
        IF current_setting('server_version_num')::int >= 90600 THEN
            session_variables := nullif(current_setting('hasura.user', 't'), '');
            trace_context := nullif(current_setting('hasura.tracecontext', 't'), '');
        END IF;
        payload := json_build_object('op', op, 'data', row_data, 'session_variables', session_variables,
                                     'trace_context', trace_context);
        INSERT INTO peers.event_log (id, schema_name, table_name, trigger_name, payload)
        VALUES (id, schema_name, table_name, trigger_name, payload);
        RETURN id;
    END $$;
    CREATE FUNCTION peers.notify_hasura_items_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        _old record;
        _new record;
        _data json;
    BEGIN
        IF TG_OP = 'UPDATE' THEN
            _old := row(OLD.*);
            _new := row(NEW.*);
        ELSE
            _old := row((SELECT 1));
            _new := row((SELECT 1));
        END IF;
        _data := json_build_object('old', NULL, 'new', row_to_json(NEW));
        IF (TG_OP <> 'UPDATE') OR (_old <> _new) THEN
            PERFORM peers.insert_event_log(CAST(TG_TABLE_SCHEMA AS text), CAST(TG_TABLE_NAME AS text),
                                           CAST('items' AS text), TG_OP, _data);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER notify_hasura_items_insert AFTER INSERT ON peers.hasura
        FOR EACH ROW EXECUTE FUNCTION peers.notify_hasura_items_insert();

    CREATE TABLE bench.watched_row (LIKE bench.watched INCLUDING ALL);
    SELECT webhooks.watch('bench.watched_row', 'item', '{\"per_row\": true}');
    CREATE TABLE bench.watched_fn (LIKE bench.watched INCLUDING ALL);
    CREATE TABLE bench.customers (id int PRIMARY KEY, name text, phone text);
    CREATE TABLE bench.stylists (id int PRIMARY KEY, name text);
    INSERT INTO bench.customers SELECT g, 'customer ' || g, '0912' || lpad(g::text, 6, '0') FROM generate_series(0, 99) g;
    INSERT INTO bench.stylists SELECT g, 'stylist ' || g FROM generate_series(0, 6) g;
    CREATE FUNCTION bench.item_payload(r bench.watched_fn) RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = bench, pg_temp AS $$
        SELECT jsonb_build_object('item', jsonb_build_object('id', r.id, 'a', r.a, 'b', r.b, 'd', r.d),
            'customer', (SELECT jsonb_build_object('name', c.name, 'phone', c.phone) FROM customers c WHERE c.id = r.b % 100),
            'stylist', (SELECT jsonb_build_object('name', s.name) FROM stylists s WHERE s.id = r.b % 7))
    $$;
    SELECT webhooks.watch('bench.watched_fn', 'booking', '{\"payload\": \"bench.item_payload\"}');
    -- A payload function that raises for every row (a bug shipped): what
    -- capture's fail-open path costs (each statement tried whole, then row
    -- by row; the rows captured as their own JSON, marked).
    CREATE TABLE bench.watched_fn_failing (LIKE bench.watched INCLUDING ALL);
    CREATE FUNCTION bench.failing_payload(r bench.watched_fn_failing) RETURNS jsonb
    LANGUAGE plpgsql STABLE AS $$
    BEGIN
        RAISE EXCEPTION 'item % has no customer', r.id;
    END $$;
    SELECT webhooks.watch('bench.watched_fn_failing', 'booking', '{\"payload\": \"bench.failing_payload\"}');

    -- An app's record (an appointment): 20 columns, updated one row at a
    -- time; `setup` fills both with load::UPDATE_ROWS rows, then watches
    -- bench.wide (bench.wide_plain stays unwatched).
    CREATE TABLE bench.wide_plain (id bigint PRIMARY KEY, status text NOT NULL, b int NOT NULL,
        customer text, phone text, email text, service text, stylist text, room text, notes text,
        starts_at timestamptz, ends_at timestamptz, created_at timestamptz, updated_at timestamptz,
        price numeric, paid boolean, channel text, locale text, reminder_sent boolean, source text);
    CREATE TABLE bench.wide (LIKE bench.wide_plain INCLUDING ALL);";

/// Capture alone (no sidecar), single-row INSERTs, side by side in one run:
/// the unwatched table, watch(), the two peers, watch() with a payload
/// function.
pub struct Anchors {
    pub plain: Side,
    pub watched: Side,
    pub minimal: Side,
    pub hasura: Side,
    pub payload_fn: Side,
    /// bench.watched_row: watched with the `per_row` option (row-level
    /// triggers), for tables written one row at a time.
    pub per_row: Side,
    /// bench.watched_fn_failing: a payload function that raises for every
    /// row (capture fails open).
    pub payload_failing: Side,
}

/// WAL position, checkpoints, and autovacuum and autoanalyze runs on our
/// tables so far.
const DB_COUNTERS: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint,
        (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter),
        (SELECT sum(autovacuum_count)::bigint FROM pg_stat_user_tables WHERE schemaname = 'webhooks'),
        (SELECT sum(autoanalyze_count)::bigint FROM pg_stat_user_tables WHERE schemaname = 'webhooks')";

impl Bench {
    pub async fn setup(cluster: &Cluster, sizes: Sizes) -> Res<Bench> {
        let admin = load::connect(&cluster.config("postgres")).await?;
        admin.batch_execute(&format!("CREATE DATABASE {DB}")).await?;
        let config = cluster.config(DB);
        let mut db = load::connect(&config).await?;
        pgwebhooks::db::migrate::run(&mut db, false).await?;
        db.batch_execute(
            "CREATE SCHEMA bench;
             CREATE TABLE bench.watched (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 a text, b int, c timestamptz DEFAULT now(), d text);
             CREATE TABLE bench.plain (LIKE bench.watched INCLUDING ALL);
             SELECT webhooks.watch('bench.watched', 'item');",
        )
        .await?;
        db.batch_execute(ANCHORS).await?;
        db.batch_execute(&format!(
            "INSERT INTO bench.wide_plain
                 SELECT g, 'booked', g, 'customer ' || g, '0912' || lpad(g::text, 6, '0'), 'c' || g || '@example.com',
                        'haircut', 'stylist ' || g % 7, 'room ' || g % 3, 'first visit', now(), now() + interval '1 hour',
                        now(), now(), 35.50, false, 'web', 'zh-TW', false, 'booking-form'
                   FROM generate_series(1, {}) g;
             INSERT INTO bench.wide SELECT * FROM bench.wide_plain;
             SELECT webhooks.watch('bench.wide', 'appointment');",
            load::UPDATE_ROWS
        ))
        .await?;
        let secret = pgwebhooks::sign::generate_secret()?;
        let receiver = Receiver::start(&secret)?;
        let id: i64 = db
            .query_one(
                "INSERT INTO webhooks.endpoints (url) VALUES ($1) RETURNING id",
                &[&receiver.url],
            )
            .await?
            .get(0);
        db.execute(
            "INSERT INTO webhooks.endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)",
            &[&id, &secret],
        )
        .await?;
        Ok(Bench {
            sizes,
            config,
            url: cluster.url(),
            db,
            receiver,
            secret,
            dir: cluster.dir.clone(),
            pids_file: cluster.pids_file(),
            postmaster: cluster.postmaster_pid(),
            replicas: 0,
        })
    }

    fn spawn_sidecar(&mut self) -> Res<Sidecar> {
        self.replicas += 1;
        let replica = format!("bench-{}", self.replicas);
        let log = self.dir.join(format!("sidecar-{replica}.log"));
        Sidecar::spawn(&self.url, &replica, &log, &self.pids_file)
    }

    /// Empty outbox, deliveries and bench tables, a checkpoint, a fresh receiver count.
    async fn reset(&self) -> Res<()> {
        self.db
            .batch_execute(
                // The bench tables first: a TRUNCATE of a watched table is an
                // event (item.truncated), which the second TRUNCATE removes.
                "TRUNCATE bench.watched, bench.plain, bench.watched_fn, bench.watched_row, peers.minimal, peers.hasura,
                          peers.outbox, peers.event_log;
                 TRUNCATE webhooks.events, webhooks.deliveries, webhooks.attempts, webhooks.fanout_batches;
                 DELETE FROM webhooks.listeners;
                 CHECKPOINT",
            )
            .await?;
        self.receiver.stats.reset();
        Ok(())
    }

    /// Both sides of one overhead ratio, plain first, then watched with a
    /// sidecar delivering (`wait_all`: until every event has arrived), then
    /// watched again with the sidecar stopped.
    pub async fn overhead(&mut self, stmt: Statement, clients: usize, wait_all: bool) -> Res<Overhead> {
        self.reset().await?;
        let churn = self.churn().await?;
        let mut sc = self.spawn_sidecar()?;
        sc.wait_ready(&self.db).await?;
        load::closed_loop(&self.config, "bench.plain", stmt, clients, self.sizes.warmup_secs).await?;
        let plain = self.side("bench.plain", stmt, clients, Some(&sc)).await?;
        let watched = self.side("bench.watched", stmt, clients, Some(&sc)).await?;
        let rows = watched.rate.transactions * stmt.rows();
        let during = self.receiver.stats.unique();
        let mut catch_up = None;
        let mut sidecars = vec![sc];
        if wait_all {
            let t = Instant::now();
            self.wait_delivered(rows, &mut sidecars).await?;
            catch_up = Some(t.elapsed());
            self.verify(rows).await?;
        }
        let mut stop = Duration::ZERO;
        for sc in sidecars {
            stop = stop.max(sc.stop().await?);
        }
        let churn = self.churn_since(churn).await?;
        let capture_only = self.side("bench.watched", stmt, clients, None).await?;
        Ok(Overhead {
            plain,
            watched,
            capture_only,
            rows,
            during,
            catch_up,
            stop,
            churn,
        })
    }

    /// The capture anchors, no sidecar running: each table in turn, twice
    /// (ABCDE EDCBA, so drift over the run weighs on every side alike).
    pub async fn anchors(&mut self, clients: usize) -> Res<Anchors> {
        self.reset().await?;
        let stmt = Statement::Row;
        let tables = [
            "bench.plain",
            "bench.watched",
            "peers.minimal",
            "peers.hasura",
            "bench.watched_fn",
            "bench.watched_row",
            "bench.watched_fn_failing",
        ];
        load::closed_loop(&self.config, "bench.plain", stmt, clients, self.sizes.warmup_secs).await?;
        let mut sides: Vec<Vec<Side>> = tables.iter().map(|_| Vec::new()).collect();
        for (i, table) in tables.iter().enumerate().chain(tables.iter().enumerate().rev()) {
            sides[i].push(self.side(table, stmt, clients, None).await?);
        }
        let mut merged = sides.into_iter().map(|two| Side::merge(&two));
        let mut next = || merged.next().expect("seven sides");
        Ok(Anchors {
            plain: next(),
            watched: next(),
            minimal: next(),
            hasura: next(),
            payload_fn: next(),
            per_row: next(),
            payload_failing: next(),
        })
    }

    /// Capture of single-row UPDATEs alone (no sidecar): the unwatched and
    /// the watched 20-column table in turn, twice (ABBA). Returns (plain,
    /// watched).
    pub async fn updates(&mut self, clients: usize) -> Res<(Side, Side)> {
        self.reset().await?;
        let stmt = Statement::Update;
        load::closed_loop(
            &self.config,
            "bench.wide_plain",
            stmt,
            clients,
            self.sizes.warmup_secs,
        )
        .await?;
        let (mut plain, mut watched) = (Vec::new(), Vec::new());
        for table in ["bench.wide_plain", "bench.wide", "bench.wide", "bench.wide_plain"] {
            let side = self.side(table, stmt, clients, None).await?;
            if table == "bench.wide" {
                watched.push(side);
            } else {
                plain.push(side);
            }
        }
        Ok((Side::merge(&plain), Side::merge(&watched)))
    }

    /// The drain of `drain` to the same endpoint given a body template, a
    /// header with placeholders and a content filter every event passes.
    pub async fn drain_shaped(&mut self, events: u64) -> Res<Drain> {
        self.db
            .execute(
                "UPDATE webhooks.endpoints SET
                     body_template = '{\"event\": \"{{type}}\", \"request_id\": \"{{id}}\",
                                       \"sent_at\": \"{{timestamp}}\", \"source_app\": \"bench\",
                                       \"...\": \"{{data}}\"}',
                     headers = '{\"idempotency-key\": \"item:{{data.id}}:{{type}}\"}',
                     filter = '$.type == \"item.created\" && $.data.b >= 0'",
                &[],
            )
            .await?;
        let d = self.drain(events, 1).await;
        self.db
            .execute(
                "UPDATE webhooks.endpoints SET body_template = NULL, headers = '{}', filter = NULL",
                &[],
            )
            .await?;
        d
    }

    /// One closed-loop run, with the xids and WAL it took.
    async fn side(&self, table: &str, stmt: Statement, clients: usize, sc: Option<&Sidecar>) -> Res<Side> {
        const COUNTERS: &str = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
                                       (pg_current_wal_insert_lsn() - '0/0')::bigint";
        let before = self.db.query_one(COUNTERS, &[]).await?;
        let cpu = Cpu::now(sc, self.postmaster);
        let rate = load::closed_loop(&self.config, table, stmt, clients, self.sizes.ratio_secs).await?;
        let cpu = Cpu::now(sc, self.postmaster).since(cpu);
        let after = self.db.query_one(COUNTERS, &[]).await?;
        Ok(Side {
            rate,
            xids: after.get::<_, i64>(0) - before.get::<_, i64>(0),
            wal_bytes: after.get::<_, i64>(1) - before.get::<_, i64>(1),
            cpu,
        })
    }

    /// Commits `events` with no sidecar running, then starts `replicas`
    /// sidecars and times the drain from the first receipt until every
    /// delivery is recorded.
    pub async fn drain(&mut self, events: u64, replicas: usize) -> Res<Drain> {
        self.reset().await?;
        let fill = load::fill(&self.config, "bench.watched", events).await?;
        self.db
            .batch_execute("ANALYZE webhooks.events; CHECKPOINT")
            .await?;
        let churn = self.churn().await?;
        let before = self.db.query_one(DB_COUNTERS, &[]).await?;
        let cpu = Cpu::now(None, self.postmaster);
        let spawned = Instant::now();
        let mut sidecars = (0..replicas)
            .map(|_| self.spawn_sidecar())
            .collect::<Res<Vec<_>>>()?;
        for sc in &mut sidecars {
            sc.wait_ready(&self.db).await?;
        }
        let connected = spawned.elapsed();
        let done = self.wait_delivered(events, &mut sidecars).await?;
        let mut cpu = Cpu::now(None, self.postmaster).since(cpu);
        cpu.sidecar = sidecars.iter().filter_map(|s| s.cpu()).sum();
        let after = self.db.query_one(DB_COUNTERS, &[]).await?;
        let first = self.receiver.stats.first().ok_or("nothing received")?;
        let rss_mb = sidecars
            .iter()
            .filter_map(|s| s.peak_rss_mb())
            .fold(0.0, f64::max);
        for sc in sidecars {
            sc.stop().await?;
        }
        let churn = self.churn_since(churn).await?;
        self.verify(events).await?;
        let secs = done.duration_since(first).as_secs_f64();
        let delta = |i: usize| after.get::<_, i64>(i) - before.get::<_, i64>(i);
        Ok(Drain {
            events,
            per_s: events as f64 / secs,
            secs,
            connected,
            startup: first.duration_since(spawned),
            fill,
            rss_mb,
            cpu,
            wal_bytes: delta(0),
            checkpoints: delta(1),
            autovacuums: delta(2),
            autoanalyzes: delta(3),
            duplicates: self.receiver.stats.duplicates.load(Relaxed),
            churn,
        })
    }

    pub async fn ceiling(&mut self) -> Res<load::Ceiling> {
        let body = self
            .receiver
            .stats
            .sample_body()
            .ok_or("no delivered body to replay")?;
        let stats = &self.receiver.stats;
        stats.reset();
        stats.lenient.store(true, Relaxed);
        let result = load::http_ceiling(
            &self.receiver.url,
            body.to_vec(),
            &self.secret,
            self.sizes.http_secs,
        )
        .await;
        stats.lenient.store(false, Relaxed);
        stats.reset();
        result
    }

    pub async fn latency(&mut self) -> Res<Latency> {
        self.reset().await?;
        let churn = self.churn().await?;
        let mut sc = self.spawn_sidecar()?;
        sc.wait_ready(&self.db).await?;
        tokio::time::sleep(Duration::from_secs(1)).await; // let it go idle (the NOTIFY path)
        let (rate, secs) = (self.sizes.latency_rate, self.sizes.latency_secs);
        let run = load::open_loop(&self.config, rate, secs, 4).await?;
        let mut sidecars = vec![sc];
        self.wait_delivered(run.sent, &mut sidecars).await?;
        for sc in sidecars {
            sc.stop().await?;
        }
        let churn = self.churn_since(churn).await?;
        self.verify(run.sent).await?;
        let (timed, early) = self.latencies(&run.commits)?;
        let mut ms: Vec<f64> = timed.iter().map(|t| t.1).collect();
        ms.sort_by(f64::total_cmp);
        Ok(Latency {
            percentiles: [0.0, 10.0, 50.0, 90.0, 99.0, 99.9, 100.0]
                .iter()
                .map(|&p| (p, percentile(&ms, p)))
                .collect(),
            p50: percentile(&ms, 50.0),
            p99: percentile(&ms, 99.0),
            events: ms.len(),
            before_commit_return: early,
            max_lag: run.max_lag,
            churn,
        })
    }

    /// (commit instant, commit → receipt in ms) per event, in commit
    /// order, and how many arrived before their commit returned.
    fn latencies(&self, commits: &[(Uuid, Instant)]) -> Res<(Vec<(Instant, f64)>, usize)> {
        let mut out = Vec::with_capacity(commits.len());
        let mut early = 0;
        for (id, committed) in commits {
            let at = self
                .receiver
                .stats
                .arrival(id)
                .ok_or("an emitted event was never received")?;
            if at < *committed {
                early += 1;
            }
            out.push((
                *committed,
                at.saturating_duration_since(*committed).as_secs_f64() * 1e3,
            ));
        }
        if out.is_empty() {
            return Err("no events".into());
        }
        out.sort_by_key(|t| t.0);
        Ok((out, early))
    }

    pub async fn soak(&mut self) -> Res<Soak> {
        self.reset().await?;
        let mut sc = self.spawn_sidecar()?;
        sc.wait_ready(&self.db).await?;
        // Postgres's CPU time every half second, to compare the run's
        // first and last fifths.
        let samples = Arc::new(Mutex::new(Vec::<(Instant, Duration)>::new()));
        let sampler = self.postmaster.map(|pm| {
            let samples = samples.clone();
            tokio::spawn(async move {
                loop {
                    if let Some(cpu) = sidecar::postgres_cpu(pm) {
                        samples.lock().unwrap().push((Instant::now(), cpu));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        });
        let s = &self.sizes;
        let run = load::open_loop(&self.config, s.soak_rate, s.soak_secs, 4).await?;
        let ended = Instant::now();
        let wait = Duration::from_secs_f64(s.soak_wait_secs);
        let mut sidecars = vec![sc];
        self.wait_delivered(run.sent, &mut sidecars).await?;
        self.verify(run.sent).await?;
        if let Some(task) = sampler {
            task.abort();
            if let Some(cpu) = self.postmaster.and_then(sidecar::postgres_cpu) {
                samples.lock().unwrap().push((Instant::now(), cpu));
            }
        }
        // Latency and Postgres CPU per event in the first and the last fifth.
        let (timed, _) = self.latencies(&run.commits)?;
        let fifth = (timed.len() / 5).max(1);
        let samples = samples.lock().unwrap().clone();
        let window = |part: &[(Instant, f64)]| {
            let mut ms: Vec<f64> = part.iter().map(|t| t.1).collect();
            ms.sort_by(f64::total_cmp);
            let (from, to) = (part[0].0, part[part.len() - 1].0);
            let at_or_before = samples.iter().rev().find(|s| s.0 <= from);
            let at_or_after = samples.iter().find(|s| s.0 >= to);
            let cpu_ms = match (at_or_before, at_or_after) {
                (Some(a), Some(b)) => {
                    let in_span = timed.iter().filter(|t| t.0 >= a.0 && t.0 <= b.0).count().max(1);
                    (b.1 - a.1).as_secs_f64() * 1e3 / in_span as f64
                }
                _ => f64::NAN,
            };
            SoakWindow {
                p50: percentile(&ms, 50.0),
                p99: percentile(&ms, 99.0),
                postgres_cpu_ms: cpu_ms,
            }
        };
        let (first, last) = (window(&timed[..fifth]), window(&timed[timed.len() - fifth..]));
        tokio::time::sleep_until((ended + wait).into()).await;
        for sc in &mut sidecars {
            sc.check_alive()?;
        }
        let rows = self
            .db
            .query(
                "SELECT relname::text, n_dead_tup, n_live_tup, autovacuum_count
                   FROM pg_stat_user_tables WHERE schemaname = 'webhooks' ORDER BY n_dead_tup DESC, relname",
                &[],
            )
            .await?;
        let probe = self.probe_ms().await;
        for sc in sidecars {
            sc.stop().await?;
        }
        let tables: Vec<(String, i64, i64, i64)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        Ok(Soak {
            events: run.sent,
            dead: tables.iter().map(|t| t.1).sum(),
            tables,
            first,
            last,
            probe,
        })
    }

    /// How long `webhooks.fanout_probe()` takes now (median of 3), with the
    /// outbox's size; `None` if the function is not there.
    async fn probe_ms(&self) -> Option<(i64, f64)> {
        let rows: i64 = self
            .db
            .query_one("SELECT count(*) FROM webhooks.events", &[])
            .await
            .ok()?
            .get(0);
        let mut ms = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            self.db
                .query("SELECT * FROM webhooks.fanout_probe()", &[])
                .await
                .ok()?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        Some((rows, ms[1]))
    }

    /// The cumulative counters behind [`Churn`].
    async fn churn(&self) -> Res<Churn> {
        let row = self
            .db
            .query_one(
                "SELECT coalesce(sum(n_tup_ins) FILTER (WHERE relname = 'fanout_batches'), 0)::bigint,
                        coalesce(sum(n_tup_ins + n_tup_upd) FILTER (WHERE relname = 'listeners'), 0)::bigint
                   FROM pg_stat_user_tables WHERE schemaname = 'webhooks'",
                &[],
            )
            .await?;
        Ok(Churn {
            batches: row.get(0),
            idle_flag_writes: row.get(1),
        })
    }

    /// [`Churn`] since `before`, once stopped sidecars' backends have
    /// exited and flushed their statistics.
    async fn churn_since(&self, before: Churn) -> Res<Churn> {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = self.churn().await?;
        Ok(Churn {
            batches: now.batches - before.batches,
            idle_flag_writes: now.idle_flag_writes - before.idle_flag_writes,
        })
    }

    /// Waits until the receiver has `n` distinct webhook-ids and
    /// webhooks.deliveries shows `n` delivered; returns when. No progress
    /// for [`STALL`] is a pipeline failure (events lost or stuck).
    async fn wait_delivered(&self, n: u64, sidecars: &mut [Sidecar]) -> Res<Instant> {
        let stats = self.receiver.stats.clone();
        let mut progress = (u64::MAX, Instant::now());
        let mut i = 0u64;
        loop {
            let got = stats.unique();
            if got >= n {
                break;
            }
            if got != progress.0 {
                progress = (got, Instant::now());
            } else if progress.1.elapsed() > STALL {
                let why = format!("the receiver has {got} of {n} events, no progress for {STALL:?}");
                return Err(Lost(format!("{why}; {}", self.status_summary().await)).into());
            }
            i += 1;
            if i.is_multiple_of(500) {
                for sc in sidecars.iter_mut() {
                    sc.check_alive().map_err(|e| Lost(e.to_string()))?;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let since = Instant::now();
        loop {
            let delivered: i64 = self
                .db
                .query_one(
                    "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'",
                    &[],
                )
                .await?
                .get(0);
            if delivered as u64 >= n {
                return Ok(Instant::now());
            }
            if since.elapsed() > STALL {
                let why =
                    format!("all {n} received but only {delivered} recorded as delivered after {STALL:?}");
                return Err(Lost(format!("{why}; {}", self.status_summary().await)).into());
            }
            // Each poll counts every delivery (50 ms at a million): polled
            // faster, the bench itself would be the database's main load.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Events, deliveries and receipts agree: exactly `n` of each.
    async fn verify(&self, n: u64) -> Res<()> {
        let row = self
            .db
            .query_one(
                "SELECT (SELECT count(*) FROM webhooks.events),
                        (SELECT count(*) FROM webhooks.deliveries),
                        (SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'),
                        (SELECT count(*) FROM webhooks.attempts)",
                &[],
            )
            .await?;
        let (events, deliveries, delivered, attempts): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let unique = self.receiver.stats.unique();
        let n = n as i64;
        if events != n || deliveries != n || delivered != n || unique as i64 != n || attempts < n {
            return Err(Lost(format!(
                "expected {n} of each: events {events}, deliveries {deliveries}, delivered {delivered}, \
                 attempts {attempts}, distinct ids received {unique}"
            ))
            .into());
        }
        Ok(())
    }

    async fn status_summary(&self) -> String {
        match self
            .db
            .query(
                "SELECT status, count(*) FROM webhooks.deliveries GROUP BY 1 ORDER BY 1",
                &[],
            )
            .await
        {
            Ok(rows) => {
                let s: Vec<String> = rows
                    .iter()
                    .map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, i64>(1)))
                    .collect();
                format!(
                    "deliveries by status: {}",
                    if s.is_empty() { "none".into() } else { s.join(", ") }
                )
            }
            Err(e) => format!("(deliveries unreadable: {e})"),
        }
    }
}

/// The p-th percentile (0–100) of sorted values (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[((n as f64 * p / 100.0).ceil() as usize).clamp(1, n) - 1],
    }
}
