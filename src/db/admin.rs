//! The reads behind the console and `/api/v1` (the writes are the
//! operator functions the CLI calls: `ops.rs`, `endpoints.rs`), and the
//! record of what was done through them (`webhooks.admin_actions`).
//!
//! Every list is newest first, keyset-paginated (`before` the last id a
//! page showed) and served by an index (V11): no query here reads a
//! table whole, whatever its size.

use std::time::SystemTime;

use deadpool_postgres::GenericClient;
use serde::Serialize;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::DbError;

/// A timestamp column as RFC 3339 UTC with milliseconds.
fn ts(col: &str) -> String {
    format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
}

/// The status summary of `pgwebhooks status` (`ops::status`), read from
/// indexes alone: what waits is counted in the partial and (status, id)
/// indexes and the oldest waiting delivery is the lowest waiting id, where
/// the `backlog` view visits every waiting row's heap page (tens of
/// milliseconds once 10,000 wait, scattered). The endpoints' lines are
/// `webhooks.endpoint_health`, as in `status`.
pub async fn status(c: &impl GenericClient) -> Result<super::ops::Status, DbError> {
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
    let (events, delivery): (Option<f64>, Option<f64>) = (r.get(1), r.get(3));
    Ok(super::ops::Status {
        not_fanned_out: r.get(0),
        waiting: r.get::<_, i64>(0) + r.get::<_, i64>(2),
        oldest_seconds: match (events, delivery) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
        dead_letters: r.get(4),
        notification_queue_usage: r.get(5),
        endpoints: super::ops::endpoint_health(c).await?,
        holding_back,
    })
}

/// Which deliveries to list.
#[derive(Debug, Default, Clone)]
pub struct DeliveryFilter {
    pub endpoint_id: Option<i64>,
    /// Any of these statuses (empty: any).
    pub statuses: Vec<String>,
    pub event_type: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub event_id: Option<Uuid>,
    /// A source row: (table, with or without its schema; row key).
    pub source: Option<(String, String)>,
    /// Only ids below this (the cursor).
    pub before: Option<i64>,
}

/// One delivery in a list.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_id: Uuid,
    pub endpoint_id: i64,
    pub endpoint: String,
    pub event_type: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub next_attempt_at: Option<String>,
}

fn delivery_columns() -> String {
    format!(
        "d.id, d.event_id, d.endpoint_id, coalesce(ep.name, webhooks.url_redact(ep.url)), e.event_type, d.status,
         d.attempts, d.last_status, d.last_error, {}, {}, {}",
        ts("d.created_at"),
        ts("d.updated_at"),
        ts("d.next_attempt_at")
    )
}

fn delivery_row(r: &tokio_postgres::Row) -> DeliveryRow {
    DeliveryRow {
        id: r.get(0),
        event_id: r.get(1),
        endpoint_id: r.get(2),
        endpoint: r.get(3),
        event_type: r.get(4),
        status: r.get(5),
        attempts: r.get(6),
        last_status: r.get(7),
        last_error: r.get(8),
        created_at: r.get(9),
        updated_at: r.get(10),
        next_attempt_at: r.get(11),
    }
}

pub const STATUSES: [&str; 5] = ["pending", "delivering", "delivered", "failed", "dead"];

/// Deliveries matching `f`, newest (highest id) first, at most `limit`.
/// By endpoint and/or status alone: one backward range of
/// `deliveries_status_endpoint_idx` per (status, endpoint) pair, `limit`
/// ids each, merged — a skip scan by hand, as fast for the rarest status as
/// for the commonest. Otherwise the SQL names only the conditions given, so
/// each filter's index is the one the planner sees: the unique (event_id,
/// endpoint_id), the events' (row_key, source_table); the primary key
/// otherwise.
pub async fn deliveries(
    c: &impl GenericClient,
    f: &DeliveryFilter,
    limit: i64,
) -> Result<Vec<DeliveryRow>, DbError> {
    let only_endpoint_or_status = f.event_type.is_none()
        && f.since.is_none()
        && f.until.is_none()
        && f.event_id.is_none()
        && f.source.is_none()
        && (f.endpoint_id.is_some() || !f.statuses.is_empty());
    if only_endpoint_or_status {
        let statuses: Vec<String> = if f.statuses.is_empty() {
            STATUSES.iter().map(|s| s.to_string()).collect()
        } else {
            f.statuses.clone()
        };
        let sql = format!(
            "WITH ids AS (
                 SELECT x.id FROM unnest($2::text[]) AS s(status)
                  CROSS JOIN (SELECT id FROM webhooks.endpoints WHERE $1::bigint IS NULL OR id = $1) AS p(id)
                  CROSS JOIN LATERAL (SELECT d.id FROM webhooks.deliveries d
                                       WHERE d.status = s.status AND d.endpoint_id = p.id
                                         AND ($3::bigint IS NULL OR d.id < $3)
                                       ORDER BY d.id DESC LIMIT $4) x
                  ORDER BY x.id DESC LIMIT $4)
             SELECT {} FROM ids JOIN webhooks.deliveries d ON d.id = ids.id
               JOIN webhooks.endpoints ep ON ep.id = d.endpoint_id
               LEFT JOIN webhooks.events e ON e.event_id = d.event_id
              ORDER BY d.id DESC",
            delivery_columns()
        );
        let rows = c
            .query(&sql, &[&f.endpoint_id, &statuses, &f.before, &limit])
            .await?;
        return Ok(rows.iter().map(delivery_row).collect());
    }
    let mut conds: Vec<String> = Vec::new();
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut add = |cond: &str, value: Box<dyn ToSql + Sync + Send>| {
        params.push(value);
        conds.push(cond.replace('$', &format!("${}", params.len())));
    };
    if let Some(v) = f.endpoint_id {
        add("d.endpoint_id = $", Box::new(v));
    }
    if !f.statuses.is_empty() {
        add("d.status = ANY($)", Box::new(f.statuses.clone()));
    }
    if let Some(v) = &f.event_type {
        add("e.event_type = $", Box::new(v.clone()));
    }
    if let Some(v) = f.since {
        add("d.created_at >= $", Box::new(v));
    }
    if let Some(v) = f.until {
        add("d.created_at < $", Box::new(v));
    }
    if let Some(v) = f.event_id {
        add("d.event_id = $", Box::new(v));
    }
    if let Some(v) = f.before {
        add("d.id < $", Box::new(v));
    }
    if let Some((table, key)) = &f.source {
        params.push(Box::new(key.clone()));
        params.push(Box::new(table.clone()));
        let (k, t) = (params.len() - 1, params.len());
        conds.push(format!(
            "d.event_id IN (SELECT s.event_id FROM webhooks.events s WHERE s.row_key = ${k}
                              AND (s.source_table = ${t} OR split_part(s.source_table, '.', 2) = ${t}))"
        ));
    }
    params.push(Box::new(limit));
    let sql = format!(
        "SELECT {} FROM webhooks.deliveries d
           JOIN webhooks.endpoints ep ON ep.id = d.endpoint_id
           LEFT JOIN webhooks.events e ON e.event_id = d.event_id
          WHERE {} ORDER BY d.id DESC LIMIT ${}",
        delivery_columns(),
        if conds.is_empty() {
            "true".to_owned()
        } else {
            conds.join(" AND ")
        },
        params.len()
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
    Ok(c.query(&sql, &refs).await?.iter().map(delivery_row).collect())
}

/// A delivery with its event and every attempt.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryDetail {
    pub delivery: DeliveryRow,
    pub event: Option<EventRow>,
    pub attempts: Vec<AttemptRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub event_id: Uuid,
    pub event_type: String,
    pub tenant_id: Option<String>,
    pub origin: Option<String>,
    pub source_table: Option<String>,
    pub row_key: Option<String>,
    pub payload: serde_json::Value,
    pub previous: Option<serde_json::Value>,
    pub occurred_at: String,
    #[serde(skip)]
    pub occurred: SystemTime,
    /// `payload` and `previous` as Postgres writes them: what the sidecar
    /// read, so the body rebuilt from them is byte for byte the one sent.
    #[serde(skip)]
    pub payload_text: String,
    #[serde(skip)]
    pub previous_text: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub attempt: i32,
    pub started_at: String,
    pub duration_ms: f64,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    pub replica: Option<String>,
}

pub async fn delivery(c: &impl GenericClient, id: i64) -> Result<Option<DeliveryDetail>, DbError> {
    let sql = format!(
        "SELECT {} FROM webhooks.deliveries d JOIN webhooks.endpoints ep ON ep.id = d.endpoint_id
           LEFT JOIN webhooks.events e ON e.event_id = d.event_id WHERE d.id = $1",
        delivery_columns()
    );
    let Some(row) = c.query_opt(&sql, &[&id]).await? else {
        return Ok(None);
    };
    let delivery = delivery_row(&row);
    let event = c
        .query_opt(
            &format!(
                "SELECT event_id, event_type, tenant_id, origin, source_table, row_key, payload, previous, {}, occurred_at,
                        payload::text, previous::text
                   FROM webhooks.events WHERE event_id = $1",
                ts("occurred_at")
            ),
            &[&delivery.event_id],
        )
        .await?
        .map(|r| EventRow {
            event_id: r.get(0),
            event_type: r.get(1),
            tenant_id: r.get(2),
            origin: r.get(3),
            source_table: r.get(4),
            row_key: r.get(5),
            payload: r.get(6),
            previous: r.get(7),
            occurred_at: r.get(8),
            occurred: r.get(9),
            payload_text: r.get(10),
            previous_text: r.get(11),
        });
    let attempts = c
        .query(
            &format!(
                "SELECT attempt, {}, duration_ms, status_code, error, response_excerpt, replica
                   FROM webhooks.attempts WHERE delivery_id = $1 ORDER BY attempt",
                ts("started_at")
            ),
            &[&id],
        )
        .await?
        .iter()
        .map(|r| AttemptRow {
            attempt: r.get(0),
            started_at: r.get(1),
            duration_ms: r.get(2),
            status_code: r.get(3),
            error: r.get(4),
            response_excerpt: r.get(5),
            replica: r.get(6),
        })
        .collect();
    Ok(Some(DeliveryDetail {
        delivery,
        event,
        attempts,
    }))
}

/// One endpoint as the console and the API show it: no secret, the URL
/// redacted (a Make.com URL is a credential), header names without values.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    pub id: i64,
    pub name: Option<String>,
    pub url: String,
    pub event_types: Vec<String>,
    pub tenant_id: Option<String>,
    pub make: bool,
    pub ordered: bool,
    pub enabled: bool,
    pub state: String,
    pub disabled_reason: Option<String>,
    pub header_names: Vec<String>,
    pub ignore_origins: Vec<String>,
    pub signature_styles: Vec<String>,
    pub masked_fields: Vec<String>,
    pub timeout_ms: Option<i32>,
    pub max_in_flight: Option<i32>,
    pub rate_limit: Option<i32>,
    pub body_template: Option<serde_json::Value>,
    pub filter: Option<String>,
    pub active_secrets: i64,
    pub created_at: String,
    pub updated_at: String,
}

pub async fn endpoints(c: &impl GenericClient, id: Option<i64>) -> Result<Vec<EndpointView>, DbError> {
    let rows = c
        .query(
            &format!(
                "SELECT e.id, e.name, webhooks.url_redact(e.url), e.event_types, e.tenant_id,
                        e.make OR e.url ~* '^https://hook\\.[a-z0-9-]+\\.make\\.com/', e.ordered, e.enabled,
                        CASE WHEN e.enabled THEN 'enabled' WHEN e.breaker_opened_at IS NOT NULL THEN 'circuit open'
                             ELSE 'paused' END,
                        e.disabled_reason, ARRAY(SELECT k FROM jsonb_object_keys(e.headers) k ORDER BY k), e.ignore_origins,
                        e.signature_styles, e.masked_fields, e.timeout_ms, e.max_in_flight, e.rate_limit,
                        e.body_template, e.filter::text,
                        (SELECT count(*) FROM webhooks.endpoint_secrets s WHERE s.endpoint_id = e.id
                            AND (s.expires_at IS NULL OR s.expires_at > now())), {}, {}
                   FROM webhooks.endpoints e WHERE $1::bigint IS NULL OR e.id = $1 ORDER BY e.id",
                ts("e.created_at"),
                ts("e.updated_at")
            ),
            &[&id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| EndpointView {
            id: r.get(0),
            name: r.get(1),
            url: r.get(2),
            event_types: r.get(3),
            tenant_id: r.get(4),
            make: r.get(5),
            ordered: r.get(6),
            enabled: r.get(7),
            state: r.get(8),
            disabled_reason: r.get(9),
            header_names: r.get(10),
            ignore_origins: r.get(11),
            signature_styles: r.get(12),
            masked_fields: r.get(13),
            timeout_ms: r.get(14),
            max_in_flight: r.get(15),
            rate_limit: r.get(16),
            body_template: r.get(17),
            filter: r.get(18),
            active_secrets: r.get(19),
            created_at: r.get(20),
            updated_at: r.get(21),
        })
        .collect())
}

/// Attempts per minute over the last hour: (endpoint id, minutes ago
/// 0..59, attempts, 2xx answers). Read through `attempts_started_brin`.
pub async fn per_minute(c: &impl GenericClient) -> Result<Vec<(i64, i32, i64, i64)>, DbError> {
    let rows = c
        .query(
            "SELECT endpoint_id, least(59, floor(extract(epoch FROM now() - started_at) / 60))::int,
                    count(*), count(*) FILTER (WHERE status_code BETWEEN 200 AND 299)
               FROM webhooks.attempts
              WHERE started_at > now() - interval '1 hour' AND endpoint_id IS NOT NULL
              GROUP BY 1, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// Last hour's latency per endpoint: (endpoint id, p50 ms, p95 ms).
pub async fn latency_1h(c: &impl GenericClient) -> Result<Vec<(i64, f64, f64)>, DbError> {
    let rows = c
        .query(
            "SELECT endpoint_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms),
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)
               FROM webhooks.attempts
              WHERE started_at > now() - interval '1 hour' AND endpoint_id IS NOT NULL
              GROUP BY 1",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// An endpoint's latest attempts (`attempts_endpoint_idx`), newest first,
/// with their delivery: failures only when `failed`.
#[derive(Debug, Clone, Serialize)]
pub struct RecentAttempt {
    pub delivery_id: i64,
    #[serde(flatten)]
    pub attempt: AttemptRow,
}

pub async fn recent_attempts(
    c: &impl GenericClient,
    endpoint_id: i64,
    failed: bool,
    limit: i64,
) -> Result<Vec<RecentAttempt>, DbError> {
    // Failures: the predicate of `attempts_failed_idx`, word for word.
    let which = if failed {
        "AND (status_code IS NULL OR status_code NOT BETWEEN 200 AND 299)"
    } else {
        ""
    };
    let rows = c
        .query(
            &format!(
                "SELECT delivery_id, attempt, {}, duration_ms, status_code, error, response_excerpt, replica
                   FROM webhooks.attempts
                  WHERE endpoint_id = $1 AND started_at > now() - interval '1 day' {which}
                  ORDER BY started_at DESC LIMIT $2",
                ts("started_at")
            ),
            &[&endpoint_id, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| RecentAttempt {
            delivery_id: r.get(0),
            attempt: AttemptRow {
                attempt: r.get(1),
                started_at: r.get(2),
                duration_ms: r.get(3),
                status_code: r.get(4),
                error: r.get(5),
                response_excerpt: r.get(6),
                replica: r.get(7),
            },
        })
        .collect())
}

/// One inbound callback.
#[derive(Debug, Clone, Serialize)]
pub struct InboundRow {
    pub id: i64,
    pub route: String,
    pub status: String,
    pub idempotency_key: String,
    pub error: Option<String>,
    pub message: Option<String>,
    pub attempts: i32,
    pub received_at: String,
    pub payload: serde_json::Value,
}

/// Latest callbacks (of one route), newest first (`inbound_route_recent_idx`,
/// or the primary key).
pub async fn inbound(
    c: &impl GenericClient,
    route: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<InboundRow>, DbError> {
    let sql = format!(
        "SELECT id, route, status, idempotency_key, error, result ->> 'message', attempts, {}, payload
           FROM webhooks.inbound
          WHERE {} ($2::bigint IS NULL OR id < $2)
          ORDER BY id DESC LIMIT $3",
        ts("received_at"),
        if route.is_some() {
            "route = $1 AND"
        } else {
            "$1::text IS NULL AND"
        }
    );
    let rows = c.query(&sql, &[&route, &before, &limit]).await?;
    Ok(rows
        .iter()
        .map(|r| InboundRow {
            id: r.get(0),
            route: r.get(1),
            status: r.get(2),
            idempotency_key: r.get(3),
            error: r.get(4),
            message: r.get(5),
            attempts: r.get(6),
            received_at: r.get(7),
            payload: r.get(8),
        })
        .collect())
}

/// Each route with its last day's callbacks: (route, enabled, applied,
/// rejected, last received).
#[derive(Debug, Clone, Serialize)]
pub struct RouteSummary {
    pub route: String,
    pub enabled: bool,
    pub description: Option<String>,
    pub applied_24h: i64,
    pub rejected_24h: i64,
    pub last_received_at: Option<String>,
}

pub async fn routes(c: &impl GenericClient) -> Result<Vec<RouteSummary>, DbError> {
    let rows = c
        .query(
            &format!(
                "SELECT r.route, r.enabled, r.description, coalesce(s.applied, 0), coalesce(s.rejected, 0), {}
                   FROM webhooks.inbound_routes r
                   LEFT JOIN (SELECT route, count(*) FILTER (WHERE status = 'applied') AS applied,
                                     count(*) FILTER (WHERE status = 'rejected') AS rejected, max(received_at) AS last
                                FROM webhooks.inbound WHERE received_at > now() - interval '1 day'
                               GROUP BY route) s ON s.route = r.route
                  ORDER BY r.route",
                ts("s.last")
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| RouteSummary {
            route: r.get(0),
            enabled: r.get(1),
            description: r.get(2),
            applied_24h: r.get(3),
            rejected_24h: r.get(4),
            last_received_at: r.get(5),
        })
        .collect())
}

/// Records an action taken through the admin listener.
pub async fn action_record(
    c: &impl GenericClient,
    actor: &str,
    action: &str,
    target: Option<&str>,
    detail: &serde_json::Value,
) -> Result<(), DbError> {
    c.execute(
        "INSERT INTO webhooks.admin_actions (actor, action, target, detail) VALUES ($1, $2, $3, $4)",
        &[&actor, &action, &target, detail],
    )
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionRow {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub detail: serde_json::Value,
}

/// The latest actions, newest first.
pub async fn actions(
    c: &impl GenericClient,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<ActionRow>, DbError> {
    let rows = c
        .query(
            &format!(
                "SELECT id, {}, actor, action, target, detail FROM webhooks.admin_actions
                  WHERE $1::bigint IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
                ts("at")
            ),
            &[&before, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ActionRow {
            id: r.get(0),
            at: r.get(1),
            actor: r.get(2),
            action: r.get(3),
            target: r.get(4),
            detail: r.get(5),
        })
        .collect())
}
