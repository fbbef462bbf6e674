//! The console's and the API's other reads (endpoints as shown, the last
//! hour's series and latency, an endpoint's latest attempts, inbound
//! callbacks and routes) and the audit rows of `webhooks.admin_actions`.
//! Re-exported by `db::admin` (which imports from here, never the other
//! way); the same rules: newest first, keyset pages,
//! an index under every query.

use deadpool_postgres::GenericClient;
use serde::Serialize;

use super::{ts, DbError};

/// One attempt as the console and the API show it.
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
/// 0..59, attempts, 2xx answers). Read from the rollup
/// (`webhooks.attempt_minutes`, V16), not from the attempts.
pub async fn per_minute(c: &impl GenericClient) -> Result<Vec<(i64, i32, i64, i64)>, DbError> {
    let rows = c
        .query(
            "SELECT endpoint_id, least(59, floor(extract(epoch FROM date_trunc('minute', now()) - minute) / 60))::int,
                    sum(attempts)::bigint, sum(succeeded)::bigint
               FROM webhooks.attempt_minutes
              WHERE minute > date_trunc('minute', now()) - interval '1 hour'
              GROUP BY 1, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// Last hour's latency per endpoint: (endpoint id, p50 ms, p95 ms),
/// interpolated from the rollup's histogram.
pub async fn latency_1h(c: &impl GenericClient) -> Result<Vec<(i64, f64, f64)>, DbError> {
    let rows = c
        .query(
            "SELECT endpoint_id,
                    webhooks.latency_percentile(array_agg(bucket), array_agg(attempts::bigint), array_agg(max_ms), 0.5),
                    webhooks.latency_percentile(array_agg(bucket), array_agg(attempts::bigint), array_agg(max_ms), 0.95)
               FROM webhooks.attempt_minutes
              WHERE minute >= date_trunc('minute', now() - interval '1 hour')
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
