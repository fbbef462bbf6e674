//! The reads behind the console and `/api/v1` (the writes are the
//! operator functions the CLI calls: `ops.rs`, `endpoints.rs`), and the
//! record of what was done through them (`webhooks.admin_actions`):
//! deliveries and the summary here, the rest in `console.rs` (re-exported).
//!
//! Every list is newest first, keyset-paginated (`before` the last id a
//! page showed) and served by an index (V11): no query here reads a
//! table whole, whatever its size.

use std::time::SystemTime;

use deadpool_postgres::GenericClient;
use serde::Serialize;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

pub use super::console::*;
use super::ts;
use super::DbError;

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
    /// A source row: (table, with or without its schema, quoted or as an
    /// ORM writes it: `Task` finds `app."Task"`; row key).
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
                              AND ${t} IN (s.source_table, split_part(s.source_table, '.', 2),
                                           replace(s.source_table, '\"', ''),
                                           replace(split_part(s.source_table, '.', 2), '\"', '')))"
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
