//! The inbound server's statements (`sql/40_inbound.sql`).

use std::time::Duration;

use deadpool_postgres::GenericClient;
use serde_json::Value;

use super::DbError;

/// An enabled route: (name, its own secret, its idempotency fields).
pub type Route = (String, Option<String>, Vec<String>);

/// The enabled routes (`webhooks.inbound_routes`).
pub async fn routes(c: &impl GenericClient) -> Result<Vec<Route>, DbError> {
    let st = c
        .prepare_cached("SELECT route, secret, idempotency_fields FROM webhooks.inbound_routes WHERE enabled")
        .await?;
    Ok(c.query(&st, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// `webhooks.inbound_apply`: records the callback once and runs its
/// handler; (HTTP status, body).
///
/// The apply is one statement in its own implicit transaction, with
/// `statement_timeout` set on the session around it: the three leave in
/// one write and none opens a transaction block, so the server ends the
/// apply's transaction at its Sync without waiting on us (a sidecar frozen
/// or cut off here leaves no xid holding back fan-out, no row locks).
/// RESET goes back to the session's own bound.
pub async fn apply(
    c: &impl GenericClient,
    statement_timeout: Duration,
    route: &str,
    key: &str,
    payload: &str,
) -> Result<(i32, Value), DbError> {
    let st = c
        .prepare_cached("SELECT http_status, body FROM webhooks.inbound_apply($1, $2, $3::text::jsonb)")
        .await?;
    let set = format!("SET statement_timeout = {}", statement_timeout.as_millis().max(1));
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&route, &key, &payload];
    let (set, row, reset) = tokio::join!(
        c.batch_execute(&set),
        c.query_one(&st, &params),
        reset_statement_timeout(c)
    );
    set?;
    let row = row?;
    reset?;
    Ok((row.get(0), row.get(1)))
}

/// Puts the session's statement timeout back (after an apply was
/// cancelled).
pub async fn reset_statement_timeout(c: &impl GenericClient) -> Result<(), DbError> {
    Ok(c.batch_execute("RESET statement_timeout").await?)
}
