//! Operator statements: status, retry, replay, resend, retention.

use deadpool_postgres::GenericClient;

use super::DbError;

/// One line of `pgwebhooks status` per endpoint.
#[derive(Debug)]
pub struct Health {
    pub id: i64,
    pub endpoint: String,
    pub state: String,
    pub reason: Option<String>,
    pub attempts_1h: i64,
    pub success_rate: Option<f64>,
    pub p95_ms: Option<f64>,
    pub pending: i64,
    pub dead: i64,
    /// The latest failed attempt of the last 7 days.
    pub last_failure: Option<LastFailure>,
}

/// A failed attempt as `status` shows it.
#[derive(Debug)]
pub struct LastFailure {
    pub seconds_ago: f64,
    /// UTC, `2024-05-01 10:00:00Z`.
    pub at: String,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub excerpt: Option<String>,
}

impl LastFailure {
    /// `HTTP 503: <excerpt>`, `refused: …`, `timed out after 10s`: one
    /// line, at most about 200 characters, URLs redacted, control
    /// characters escaped.
    pub fn reason(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(code) = self.status_code {
            parts.push(format!("HTTP {code}"));
        }
        if let Some(e) = self.error.as_deref().filter(|e| !parts.iter().any(|p| p == e)) {
            parts.push(e.to_owned());
        }
        if let Some(x) = self.excerpt.as_deref() {
            let x = x.split_whitespace().collect::<Vec<_>>().join(" ");
            if !x.is_empty() {
                parts.push(x);
            }
        }
        if parts.is_empty() {
            parts.push("no answer".into());
        }
        let line = crate::redact::printable(&crate::redact::redact_urls(&parts.join(": "))).into_owned();
        if line.chars().count() > 200 {
            format!("{}…", line.chars().take(199).collect::<String>())
        } else {
            line
        }
    }
}

/// The whole-system summary.
#[derive(Debug)]
pub struct Summary {
    pub not_fanned_out: i64,
    pub waiting: i64,
    pub oldest_seconds: Option<f64>,
    pub dead_letters: i64,
    pub notification_queue_usage: f64,
    pub endpoints: Vec<Health>,
    /// The oldest write transaction open for over 10 s (it holds fan-out
    /// back: events are handed out once every older writer has ended):
    /// (pid, seconds open, state).
    pub holding_back: Option<(i32, f64, String)>,
    /// Watched tables whose capture is degraded ([`degraded`]).
    pub degraded: Vec<Degraded>,
}

/// A watched table whose capture could not shape some events (they went out
/// as the rows' own JSON, marked) or whose options a DDL broke
/// (`webhooks.watched.degraded`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Degraded {
    pub table: String,
    /// Failures counted since the table was first degraded.
    pub failures: i64,
    pub last_error: Option<String>,
    pub seconds_ago: Option<f64>,
}

/// The degraded watched tables, most recent failure first.
pub async fn degraded(c: &impl GenericClient) -> Result<Vec<Degraded>, DbError> {
    let rows = c
        .query(
            "SELECT target::text, failures, last_error, extract(epoch FROM now() - last_failed_at)::float8
               FROM webhooks.watched WHERE degraded ORDER BY last_failed_at DESC, 1",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Degraded {
            table: r.get(0),
            failures: r.get(1),
            last_error: r.get(2),
            seconds_ago: r.get(3),
        })
        .collect())
}

/// What start-up knows about the configuration, for [`crate::notice::misconfigurations`].
#[derive(Debug, Default)]
pub struct Setup {
    /// The inbound server runs…
    pub inbound: bool,
    /// …with a PGWEBHOOKS_INBOUND_SECRET.
    pub inbound_secret: bool,
    /// Enabled inbound routes, and how many of them have no secret of their own.
    pub routes: i64,
    pub routes_without_secret: i64,
    pub allow_private_targets: bool,
    pub endpoints: Vec<SetupEndpoint>,
}

#[derive(Debug)]
pub struct SetupEndpoint {
    pub id: i64,
    pub name: Option<String>,
    pub url: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
}

/// What start-up checks the configuration against
/// ([`crate::notice::misconfigurations`]): `inbound` is `None` when the
/// inbound server does not run, else whether it has a secret.
pub async fn setup(
    c: &impl GenericClient,
    inbound: Option<bool>,
    allow_private_targets: bool,
) -> Result<Setup, DbError> {
    let routes = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE secret IS NULL) FROM webhooks.inbound_routes WHERE enabled",
            &[],
        )
        .await?;
    let endpoints = c
        .query(
            "SELECT id, name, url, enabled, disabled_reason FROM webhooks.endpoints ORDER BY id",
            &[],
        )
        .await?;
    Ok(Setup {
        inbound: inbound.is_some(),
        inbound_secret: inbound == Some(true),
        routes: routes.get(0),
        routes_without_secret: routes.get(1),
        allow_private_targets,
        endpoints: endpoints
            .iter()
            .map(|r| SetupEndpoint {
                id: r.get(0),
                name: r.get(1),
                url: r.get(2),
                enabled: r.get(3),
                disabled_reason: r.get(4),
            })
            .collect(),
    })
}

/// What waits and for how long, read from indexes alone (the CLI's
/// `status`, the console, `/api/v1/status` and the gauges): what waits is
/// counted in the partial and (status, endpoint_id, id) indexes, and the
/// oldest waiting delivery is the lowest waiting id, where the `backlog`
/// view visits every waiting row's heap page (tens of milliseconds once
/// 10,000 wait, scattered).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub not_fanned_out: i64,
    pub waiting: i64,
    pub oldest_seconds: Option<f64>,
    pub dead_letters: i64,
    pub notification_queue_usage: f64,
}

pub async fn counts(c: &impl GenericClient) -> Result<Counts, DbError> {
    let r = c
        .query_one(
            "SELECT f.events, extract(epoch FROM now() - f.oldest)::float8,
                    (SELECT count(*) FROM webhooks.deliveries WHERE status = 'pending')
                      + (SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivering'),
                    (SELECT extract(epoch FROM now() - d.created_at)::float8 FROM webhooks.deliveries d
                      WHERE d.id = least((SELECT min(id) FROM webhooks.deliveries WHERE status = 'pending'),
                                         (SELECT min(id) FROM webhooks.deliveries WHERE status = 'delivering'))),
                    (SELECT count(*) FROM webhooks.deliveries WHERE status IN ('dead', 'failed')),
                    pg_notification_queue_usage()
               FROM webhooks.fanout_pending() f",
            &[],
        )
        .await?;
    let (events, delivery): (Option<f64>, Option<f64>) = (r.get(1), r.get(3));
    Ok(Counts {
        not_fanned_out: r.get(0),
        waiting: r.get::<_, i64>(0) + r.get::<_, i64>(2),
        oldest_seconds: match (events, delivery) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
        dead_letters: r.get(4),
        notification_queue_usage: r.get(5),
    })
}

/// The status summary: [`counts`], the oldest write transaction holding
/// fan-out back, each endpoint's line and the degraded tables.
pub async fn status(c: &impl GenericClient) -> Result<Summary, DbError> {
    let n = counts(c).await?;
    let holding_back = c
        .query_opt(
            "SELECT pid, extract(epoch FROM now() - xact_start)::float8, coalesce(state, '')
               FROM pg_stat_activity
              WHERE backend_xid IS NOT NULL AND xact_start < now() - interval '10 seconds'
              ORDER BY xact_start LIMIT 1",
            &[],
        )
        .await?
        .map(|r| (r.get(0), r.get(1), r.get(2)));
    Ok(Summary {
        holding_back,
        not_fanned_out: n.not_fanned_out,
        waiting: n.waiting,
        oldest_seconds: n.oldest_seconds,
        dead_letters: n.dead_letters,
        notification_queue_usage: n.notification_queue_usage,
        endpoints: endpoint_health(c).await?,
        degraded: degraded(c).await?,
    })
}

/// Lets one replica at a time run retention (a session-level advisory
/// lock: held across retention's statements, released by
/// [`retention_unlock`]). False when another replica holds it.
pub async fn retention_lock(c: &impl GenericClient) -> Result<bool, DbError> {
    Ok(c.query_one("SELECT pg_try_advisory_lock($1)", &[&RETENTION_LOCK])
        .await?
        .get(0))
}

pub async fn retention_unlock(c: &impl GenericClient) -> Result<(), DbError> {
    c.query_one("SELECT pg_advisory_unlock($1)", &[&RETENTION_LOCK])
        .await?;
    Ok(())
}

/// Key of the advisory lock that lets one replica at a time run retention.
const RETENTION_LOCK: i64 = 0x7067_7768_7265_7465;

/// Each endpoint's line of the summary (`webhooks.endpoint_health`).
pub async fn endpoint_health(c: &impl GenericClient) -> Result<Vec<Health>, DbError> {
    let rows = c
        .query(
            "SELECT endpoint_id, endpoint, state, disabled_reason, attempts_1h, success_rate_pct::float8,
                    p95_latency_ms::float8, pending, dead,
                    extract(epoch FROM now() - last_failure_at)::float8,
                    to_char(last_failure_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS\"Z\"'),
                    last_failure_status, last_failure_error, last_failure_excerpt
               FROM webhooks.endpoint_health ORDER BY endpoint_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Health {
            id: r.get(0),
            endpoint: r.get(1),
            state: r.get(2),
            reason: r.get(3),
            attempts_1h: r.get(4),
            success_rate: r.get(5),
            p95_ms: r.get(6),
            pending: r.get(7),
            dead: r.get(8),
            last_failure: r.get::<_, Option<f64>>(9).map(|seconds_ago| LastFailure {
                seconds_ago,
                at: r.get(10),
                status_code: r.get(11),
                error: r.get(12),
                excerpt: r.get(13),
            }),
        })
        .collect())
}

/// Re-queues these deliveries; returns the ids that were re-queued.
pub async fn retry(c: &impl GenericClient, ids: &[i64]) -> Result<Vec<i64>, DbError> {
    let rows = c.query("SELECT webhooks.delivery_retry($1)", &[&ids]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Re-queues every failed or dead delivery (of one endpoint, or all).
pub async fn retry_dead(c: &impl GenericClient, endpoint_id: Option<i64>) -> Result<i32, DbError> {
    Ok(
        c.query_one("SELECT webhooks.delivery_retry_dead($1)", &[&endpoint_id])
            .await?
            .get(0),
    )
}

/// Re-delivers the endpoint's events since `since` (a timestamp, or a
/// relative form such as `1 hour ago`). Returns how many.
pub async fn replay(c: &impl GenericClient, endpoint_id: i64, since: &str) -> Result<i32, DbError> {
    Ok(c
        .query_one(
            "SELECT webhooks.replay($1, CASE WHEN $2 ~* '\\s*ago\\s*$'
                                             THEN now() - regexp_replace($2, '\\s*ago\\s*$', '', 'i')::interval
                                             ELSE $2::timestamptz END)",
            &[&endpoint_id, &since],
        )
        .await?
        .get(0))
}

/// Emits a fresh event for an existing row; returns its id.
pub async fn resend(
    c: &impl GenericClient,
    table: &str,
    row_key: &str,
    event: Option<&str>,
) -> Result<uuid::Uuid, DbError> {
    Ok(c.query_one(
        "SELECT webhooks.resend(webhooks.table_named($1), $2, $3)",
        &[&table, &row_key, &event],
    )
    .await?
    .get(0))
}

/// Rows removed by one retention pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub attempts: i64,
    pub deliveries: i64,
    pub events: i64,
    pub inbound: i64,
}

impl Removed {
    pub fn total(&self) -> i64 {
        self.attempts + self.deliveries + self.events + self.inbound
    }
}

/// One small retention step (`webhooks.retention_run`): delivered history
/// older than `keep`, failed and dead deliveries given up more than
/// `keep_failed` ago (`None`: that part is kept).
pub async fn retention_step(
    c: &impl GenericClient,
    keep: Option<std::time::Duration>,
    keep_failed: Option<std::time::Duration>,
    batch: i32,
) -> Result<Removed, DbError> {
    let r = c
        .query_one(
            "SELECT attempts, deliveries, events, inbound
               FROM webhooks.retention_run(make_interval(secs => $1), $2,
                                           keep_failed => make_interval(secs => $3))",
            &[
                &keep.map(|d| d.as_secs_f64()),
                &batch,
                &keep_failed.map(|d| d.as_secs_f64()),
            ],
        )
        .await?;
    Ok(Removed {
        attempts: r.get(0),
        deliveries: r.get(1),
        events: r.get(2),
        inbound: r.get(3),
    })
}

/// The first recorded attempt of a delivery.
pub struct FirstAttempt {
    pub status: Option<i32>,
    pub duration_ms: f64,
    pub error: Option<String>,
    pub excerpt: Option<String>,
}

/// What `endpoint test` sends (`webhooks.endpoint_test`).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum TestEvent {
    /// The `webhooks.test` ping, as the standard envelope.
    #[default]
    Ping,
    /// A copy (new id) of the latest stored event of this type the
    /// endpoint would receive, shaped as a real delivery.
    Latest(String),
    /// An event of this type whose data is the sample.
    Sample {
        event_type: String,
        data: serde_json::Value,
    },
}

impl TestEvent {
    /// From the caller's two choices: a type, and data to send as it.
    pub fn from_parts(
        event_type: Option<String>,
        sample: Option<serde_json::Value>,
    ) -> Result<TestEvent, String> {
        match (event_type, sample) {
            (None, None) => Ok(TestEvent::Ping),
            (Some(t), None) => Ok(TestEvent::Latest(t)),
            (Some(t), Some(data)) => Ok(TestEvent::Sample { event_type: t, data }),
            (None, Some(_)) => Err("a sample needs an event type: the type it is sent as".into()),
        }
    }
}

/// A queued test: its delivery and the event it sends.
#[derive(Debug)]
pub struct QueuedTest {
    pub delivery_id: i64,
    pub event: crate::job::Event,
    /// Where a stored event's copy came from (`app.orders row 42`).
    pub source: Option<String>,
}

/// `webhooks.endpoint_test`: one event queued for one endpoint alone.
pub async fn endpoint_test(
    c: &impl GenericClient,
    endpoint_id: i64,
    what: &TestEvent,
) -> Result<QueuedTest, DbError> {
    let (event_type, sample) = match what {
        TestEvent::Ping => (None, None),
        TestEvent::Latest(t) => (Some(t.as_str()), None),
        TestEvent::Sample { event_type, data } => (Some(event_type.as_str()), Some(data)),
    };
    let delivery_id: i64 = c
        .query_one(
            "SELECT webhooks.endpoint_test(id => $1, event_type => $2, sample => $3)",
            &[&endpoint_id, &event_type, &sample],
        )
        .await?
        .get(0);
    let r = c
        .query_one(
            "SELECT e.event_id, e.event_type, e.tenant_id, e.origin, e.occurred_at, e.payload::text AS payload,
                    e.previous::text AS previous,
                    e.source_table || coalesce(' row ' || e.row_key, '') AS source
               FROM webhooks.deliveries d JOIN webhooks.events e ON e.event_id = d.event_id
              WHERE d.id = $1",
            &[&delivery_id],
        )
        .await?;
    let event = crate::job::Event::new(
        r.get("event_id"),
        r.get("event_type"),
        r.get("tenant_id"),
        r.get("origin"),
        r.get("occurred_at"),
        r.get("payload"),
        r.get("previous"),
    );
    let source = matches!(what, TestEvent::Latest(_))
        .then(|| r.get::<_, Option<String>>("source"))
        .flatten();
    Ok(QueuedTest {
        delivery_id,
        event,
        source,
    })
}

/// A delivery's first attempt, once recorded.
pub async fn first_attempt(
    c: &impl GenericClient,
    delivery_id: i64,
) -> Result<Option<FirstAttempt>, DbError> {
    let row = c
        .query_opt(
            "SELECT status_code, duration_ms, error, response_excerpt FROM webhooks.attempts
              WHERE delivery_id = $1 ORDER BY attempt LIMIT 1",
            &[&delivery_id],
        )
        .await?;
    Ok(row.map(|r| FirstAttempt {
        status: r.get(0),
        duration_ms: r.get::<_, Option<f64>>(1).unwrap_or(0.0),
        error: r.get(2),
        excerpt: r.get(3),
    }))
}

/// A test delivery is tried once: what is still waiting is failed.
pub async fn endpoint_test_cancel(c: &impl GenericClient, delivery_id: i64) -> Result<(), DbError> {
    c.execute(
        "UPDATE webhooks.deliveries SET status = 'failed', next_attempt_at = NULL,
                last_error = coalesce(last_error, 'test event: not retried'), updated_at = now()
          WHERE id = $1 AND status = 'pending'",
        &[&delivery_id],
    )
    .await?;
    Ok(())
}
