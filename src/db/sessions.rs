//! Console sessions (`webhooks.admin_sessions`, V17): one row per sign-in,
//! keyed by a SHA-256 of the session id (the id itself is only ever in the
//! browser's cookie). The database's clock decides both timeouts, so
//! replicas with skewed clocks still agree.

use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::DbError;

/// Records a new session, and forgets every session past either timeout
/// (the table stays as small as the sessions in use).
pub async fn session_create(
    c: &impl GenericClient,
    id_hash: &[u8; 32],
    ttl: Duration,
    idle: Duration,
    client: Option<&str>,
) -> Result<(), DbError> {
    c.execute(
        "WITH gone AS (DELETE FROM webhooks.admin_sessions
                        WHERE expires_at <= now() OR seen_at <= now() - make_interval(secs => $3))
         INSERT INTO webhooks.admin_sessions (id_hash, expires_at, client)
         VALUES ($1, now() + make_interval(secs => $2), $4)",
        &[
            &id_hash.as_slice(),
            &ttl.as_secs_f64(),
            &idle.as_secs_f64(),
            &client,
        ],
    )
    .await?;
    Ok(())
}

/// Is the session current (signed in, not signed out, used within `idle`,
/// younger than its absolute expiry)? If it is, notes its use now.
pub async fn session_touch(
    c: &impl GenericClient,
    id_hash: &[u8; 32],
    idle: Duration,
) -> Result<bool, DbError> {
    let n = c
        .execute(
            "UPDATE webhooks.admin_sessions SET seen_at = now()
              WHERE id_hash = $1 AND expires_at > now() AND seen_at > now() - make_interval(secs => $2)",
            &[&id_hash.as_slice(), &idle.as_secs_f64()],
        )
        .await?;
    Ok(n == 1)
}

/// Signs a session out: its cookie, and every copy of it, is refused from
/// now on. Returns whether there was such a session.
pub async fn session_delete(c: &impl GenericClient, id_hash: &[u8; 32]) -> Result<bool, DbError> {
    let n = c
        .execute(
            "DELETE FROM webhooks.admin_sessions WHERE id_hash = $1",
            &[&id_hash.as_slice()],
        )
        .await?;
    Ok(n == 1)
}
