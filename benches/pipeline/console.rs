//! `console_p95_ms`: the admin listener (console pages and `/api/v1`) over
//! a million deliveries. Seeded in SQL (generate_series): five endpoints,
//! 1,000,000 events over a week with a source row each, one delivery and
//! one attempt per event (97% delivered, 1% dead, 1% failed, 1% pending,
//! scattered over the week: the worst case for what reads them),
//! 10,000 inbound callbacks; then VACUUM ANALYZE. The admin router runs in
//! this process (the same `admin::router` and connection loop as `pgwebhooks
//! run`), and every page and API call is requested 20 times in turn after a
//! warm-up. The key is the worst route's p95; every route's is printed.
//!
//! `console_busy_hour_p95_ms` seeds the same million with a quarter of it
//! (250,000 deliveries and attempts) in the last hour, the rest over the
//! week before: what an operator opens the console on during a busy hour.

use std::time::{Duration, Instant};

use super::Bench;
use crate::Res;

pub struct Console {
    pub rows: u64,
    pub seed: Duration,
    /// (route, p50 ms, p95 ms), in request order.
    pub routes: Vec<(String, f64, f64)>,
}

impl Console {
    /// The worst route's p95, and which.
    pub fn worst(&self) -> (f64, &str) {
        self.routes
            .iter()
            .map(|(r, _, p95)| (*p95, r.as_str()))
            .fold((0.0, ""), |a, b| if b.0 > a.0 { b } else { a })
    }
}

const TOKEN: &str = "console-benchmark-token-0123456789";
const REPEAT: usize = 20;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

impl Bench {
    pub async fn console(&mut self, busy_hour: bool) -> Res<Console> {
        self.reset().await?;
        let rows = self.sizes.console_rows as i64;
        let started = Instant::now();
        self.db
            .batch_execute(
                "INSERT INTO webhooks.endpoints (name, url)
                 SELECT 'console-' || i, 'http://127.0.0.1:9/console-' || i FROM generate_series(1, 5) i;",
            )
            .await?;
        self.db
            .execute(
                "INSERT INTO webhooks.events (event_type, source_table, row_key, payload, occurred_at)
                 SELECT (ARRAY['appointment.created', 'appointment.confirmed', 'ticket.created',
                               'payment.success', 'message.sent'])[1 + i % 5],
                        'app.appointments', i::text, jsonb_build_object('appointment', jsonb_build_object('id', i, 'status', 'pending')),
                        CASE WHEN NOT $2 THEN now() - (($1::bigint - i) * interval '600 ms')
                             WHEN i > $1::bigint - $1::bigint / 4
                             THEN now() - ($1::bigint - i) * (3600.0 / ($1::bigint / 4)) * interval '1 second'
                             ELSE now() - interval '1 hour' - ($1::bigint - $1::bigint / 4 - i) * interval '600 ms' END
                   FROM generate_series(1, $1::bigint) i",
                &[&rows, &busy_hour],
            )
            .await?;
        self.db
            .batch_execute(
                "UPDATE webhooks.fanout_cursor c SET txid = m.txid, seq = m.seq
                   FROM (SELECT txid, seq FROM webhooks.events ORDER BY txid DESC, seq DESC LIMIT 1) m;
                 INSERT INTO webhooks.deliveries (event_id, endpoint_id, status, attempts, last_status, last_error,
                                                  created_at, updated_at)
                 SELECT e.event_id, ep.ids[1 + (e.seq / 100) % 5],
                        CASE e.seq % 100 WHEN 0 THEN 'dead' WHEN 1 THEN 'failed' WHEN 2 THEN 'pending' ELSE 'delivered' END,
                        1, CASE WHEN e.seq % 100 < 2 THEN 500 ELSE 200 END,
                        CASE WHEN e.seq % 100 < 2 THEN 'HTTP 500' END, e.occurred_at, e.occurred_at
                   FROM webhooks.events e,
                        (SELECT array_agg(id ORDER BY id) AS ids FROM webhooks.endpoints WHERE name LIKE 'console-%') ep;
                 INSERT INTO webhooks.attempts (delivery_id, attempt, started_at, duration_ms, status_code, response_excerpt,
                                                endpoint_id, replica)
                 SELECT d.id, 1, d.created_at, 20 + d.id % 80, d.last_status,
                        CASE WHEN d.last_status = 500 THEN 'upstream unavailable' ELSE '{\"ok\":true}' END, d.endpoint_id, 'bench'
                   FROM webhooks.deliveries d;
                 INSERT INTO webhooks.inbound (route, idempotency_key, status, payload, error, received_at)
                 SELECT (ARRAY['payments', 'appointments', 'errors'])[1 + i % 3], 'key-' || i,
                        CASE WHEN i % 10 = 0 THEN 'rejected' ELSE 'applied' END, jsonb_build_object('n', i),
                        CASE WHEN i % 10 = 0 THEN 'rejected by the procedure' END, now() - i * interval '1 second'
                   FROM generate_series(1, 10000) i;",
            )
            .await?;
        for t in ["events", "deliveries", "attempts", "inbound", "endpoints"] {
            self.db
                .batch_execute(&format!("VACUUM ANALYZE webhooks.{t}"))
                .await?;
        }
        let seed = started.elapsed();
        let ids = |sql: &'static str| {
            let db = &self.db;
            async move { db.query_one(sql, &[]).await.map(|r| r.get::<_, i64>(0)) }
        };
        let endpoint = ids("SELECT min(id) FROM webhooks.endpoints WHERE name LIKE 'console-%'").await?;
        let dead = ids("SELECT max(id) FROM webhooks.deliveries WHERE status = 'dead'").await?;
        let delivered = ids("SELECT max(id) FROM webhooks.deliveries WHERE status = 'delivered'").await?;
        let middle = ids("SELECT (max(id) + min(id)) / 2 FROM webhooks.deliveries").await?;
        let event: uuid::Uuid = self
            .db
            .query_one("SELECT event_id FROM webhooks.deliveries WHERE id = $1", &[&dead])
            .await?
            .get(0);
        let row = rows / 2;

        // As `pgwebhooks run` connects (its session settings: JIT off, bounds of the default 60 s lease).
        let bounds = pgwebhooks::db::SessionBounds::for_lease(std::time::Duration::from_secs(60));
        let pool = pgwebhooks::db::pool(pgwebhooks::db::tuned(self.config.clone(), &bounds), 4);
        let snapshot = {
            let c = pool.get().await?;
            pgwebhooks::endpoints::Subscriptions::new(pgwebhooks::db::endpoints::load(&c).await?)
        };
        let config = pgwebhooks::admin::AdminConfig {
            listen: "127.0.0.1:0".parse()?,
            token: Some(pgwebhooks::config::Secret::new(TOKEN)),
            ..Default::default()
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let router = pgwebhooks::admin::router(pool.clone(), snapshot, config.clone());
        let (addr, task) = pgwebhooks::admin::serve(router, &config, stop.clone()).await?;
        let base = format!("http://{addr}");
        pgwebhooks::deliver::http::install_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let login = http
            .post(format!("{base}/console/login"))
            .body(format!("token={TOKEN}"))
            .send()
            .await?;
        let cookie = login
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .ok_or("the console did not sign in")?
            .to_owned();
        let cursor = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("d{middle}"))
        };
        let paths: Vec<String> = vec![
            "/console".into(),
            "/console/endpoints".into(),
            format!("/console/endpoints/{endpoint}"),
            "/console/deliveries".into(),
            format!("/console/deliveries?endpoint_id={endpoint}"),
            "/console/deliveries?status=dead".into(),
            format!("/console/deliveries?endpoint_id={endpoint}&status=failed"),
            "/console/deliveries?event_type=payment.success".into(),
            format!("/console/deliveries?source=appointments+{row}"),
            format!("/console/deliveries?cursor={cursor}"),
            format!("/console/deliveries/{dead}"),
            format!("/console/deliveries/{delivered}"),
            "/console/dead".into(),
            format!("/console/dead?endpoint_id={endpoint}"),
            "/console/inbound".into(),
            "/console/inbound?route=errors".into(),
            "/console/actions".into(),
            format!("/console/search?q={event}"),
            "/api/v1/status".into(),
            "/api/v1/endpoints".into(),
            format!("/api/v1/endpoints/{endpoint}"),
            "/api/v1/deliveries".into(),
            format!("/api/v1/deliveries?endpoint_id={endpoint}&status=dead"),
            format!("/api/v1/deliveries?event_id={event}"),
            format!("/api/v1/deliveries?source=app.appointments:{row}"),
            "/api/v1/deliveries?since=2000-01-01T00:00:00Z&limit=200".into(),
            format!("/api/v1/deliveries/{dead}"),
            "/api/v1/dead-letters".into(),
            "/api/v1/inbound?route=payments".into(),
            "/api/v1/actions".into(),
        ];
        let mut routes = Vec::new();
        for path in &paths {
            let mut times = Vec::with_capacity(REPEAT);
            for i in 0..=REPEAT {
                let req = http
                    .get(format!("{base}{path}"))
                    .header("cookie", &cookie)
                    .bearer_auth(TOKEN);
                let t = Instant::now();
                let resp = req.send().await?;
                let status = resp.status();
                resp.bytes().await?;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                if !(status.is_success() || status.is_redirection()) {
                    return Err(format!("{path}: HTTP {status}").into());
                }
                if i > 0 {
                    times.push(ms);
                }
            }
            times.sort_by(f64::total_cmp);
            routes.push((path.clone(), percentile(&times, 0.5), percentile(&times, 0.95)));
        }
        stop.cancel();
        let _ = task.await;
        self.db
            .batch_execute(
                "DELETE FROM webhooks.endpoints WHERE name LIKE 'console-%';
                 TRUNCATE webhooks.events, webhooks.deliveries, webhooks.attempts, webhooks.inbound,
                          webhooks.admin_actions, webhooks.attempt_minutes;",
            )
            .await?;
        Ok(Console {
            rows: rows as u64,
            seed,
            routes,
        })
    }
}
