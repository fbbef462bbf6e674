//! Subscriptions: loading the snapshot the sidecar works from, and the
//! writes behind `pgwebhooks endpoint …`.

use std::time::{Duration, SystemTime};

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::DbError;
use crate::endpoints::{
    check_signature_header_name, check_user_headers, is_make_url, never_sent, split_patterns, Endpoint,
    Snapshot, Styles, DEFAULT_SECRET_HEADER, DEFAULT_SIGNATURE_HEADER,
};
use crate::sign::SigningKey;
use crate::template::{Template, Text};

/// Reads every endpoint and the config version in one statement (one
/// snapshot), so the version always describes what was read.
pub async fn load(c: &impl GenericClient) -> Result<Snapshot, DbError> {
    let rows = c
        .query(
            "SELECT v.version, e.id, e.name, e.url, e.event_types, e.exclude_types, e.tenant_id, e.ignore_origins,
                    e.signature_styles, e.headers, e.masked_fields, e.timeout_ms, e.max_in_flight,
                    ARRAY(SELECT extract(epoch FROM x)::float8 FROM unnest(e.retry_schedule) x),
                    e.rate_limit, extract(epoch FROM e.rate_window)::float8, e.make, e.enabled,
                    ARRAY(SELECT s.secret FROM webhooks.endpoint_secrets s WHERE s.endpoint_id = e.id
                           AND (s.expires_at IS NULL OR s.expires_at > now()) ORDER BY s.created_at DESC, s.secret),
                    ARRAY(SELECT s.expires_at FROM webhooks.endpoint_secrets s WHERE s.endpoint_id = e.id
                           AND (s.expires_at IS NULL OR s.expires_at > now()) ORDER BY s.created_at DESC, s.secret),
                    e.ordered, e.body_template, e.signature_header, e.secret_header, e.filter::text
               FROM webhooks.config_version v LEFT JOIN webhooks.endpoints e ON true
              ORDER BY e.id",
            &[],
        )
        .await?;
    let version = rows.first().map_or(0, |r| r.get(0));
    let mut endpoints = Vec::new();
    for r in &rows {
        let Some(id) = r.get::<_, Option<i64>>(1) else {
            continue;
        };
        let url: String = r.get(3);
        let headers: serde_json::Value = r.get(9);
        let shaping = Shaping::compile(
            &headers,
            r.get::<_, Option<serde_json::Value>>(21).as_ref(),
            r.get(22),
            r.get(23),
        );
        let shaping = match shaping {
            Ok(s) => s,
            Err(error) => {
                // Written with SQL, never by `endpoint add|update`: skip the
                // endpoint rather than send what its receiver did not ask for.
                tracing::error!(endpoint_id = id, %error, "skipping an endpoint whose configuration is invalid");
                continue;
            }
        };
        let schedule: Vec<f64> = r.get(13);
        let secrets: Vec<String> = r.get(18);
        let expiries: Vec<Option<SystemTime>> = r.get(19);
        let keys = secrets
            .iter()
            .zip(expiries)
            .filter_map(|(s, exp)| match SigningKey::parse(s) {
                Ok(k) => Some((k, exp)),
                Err(error) => {
                    tracing::warn!(endpoint_id = id, error = %crate::errors::error_chain(&error), "ignoring an unusable signing secret");
                    None
                }
            })
            .collect();
        let rate: Option<i32> = r.get(14);
        let window: f64 = r.get(15);
        let make_flag: bool = r.get(16);
        endpoints.push(Endpoint {
            id,
            name: r.get(2),
            make: make_flag || is_make_url(&url),
            url,
            event_types: split_patterns(&r.get::<_, Vec<String>>(4)),
            exclude_types: split_patterns(&r.get::<_, Vec<String>>(5)),
            tenant_id: r.get(6),
            ignore_origins: split_patterns(&r.get::<_, Vec<String>>(7)),
            styles: Styles::parse(&r.get::<_, Vec<String>>(8)),
            headers: shaping.headers,
            body_template: shaping.body_template,
            signature_header: shaping.signature_header,
            secret_header: shaping.secret_header,
            filter: r.get(24),
            masked_fields: r.get(10),
            timeout: r
                .get::<_, Option<i32>>(11)
                .map(|ms| Duration::from_millis(ms as u64)),
            max_in_flight: r.get::<_, Option<i32>>(12).map(|n| n as usize),
            retry_schedule: (!schedule.is_empty()).then(|| {
                schedule
                    .iter()
                    .map(|s| Duration::from_secs_f64(s.max(0.001)))
                    .collect()
            }),
            rate: rate.map(|n| (n as u32, Duration::from_secs_f64(window.max(0.001)))),
            enabled: r.get(17),
            ordered: r.get(20),
            keys,
        });
    }
    Ok(Snapshot::new(version, endpoints))
}

/// An endpoint's shaping settings, checked and compiled (the same checks
/// as `endpoint add|update` make, but [`Shaping::check_configured`]'s).
pub struct Shaping {
    pub headers: Vec<(String, Text)>,
    pub body_template: Option<Template>,
    pub signature_header: String,
    pub secret_header: String,
}

impl Shaping {
    /// What only configuring an endpoint refuses (`endpoint add|update`, the
    /// API and the console): a header that is never sent ([`never_sent`]).
    /// A row written with SQL still loads; the header is dropped at send.
    pub fn check_configured(&self) -> Result<(), String> {
        match self.headers.iter().find(|(k, _)| never_sent(k)) {
            Some((k, _)) => Err(format!(
                "--header {k:?}: never sent: `host` would choose another virtual host than the URL's \
                 (put the host in --url); connection, proxy and expect headers are the HTTP client's own"
            )),
            None => Ok(()),
        }
    }

    /// `headers` is the `headers` column (an object of strings);
    /// `signature_header`/`secret_header` NULL mean the defaults.
    pub fn compile(
        headers: &serde_json::Value,
        body_template: Option<&serde_json::Value>,
        signature_header: Option<String>,
        secret_header: Option<String>,
    ) -> Result<Shaping, String> {
        let signature_header = match signature_header {
            Some(n) => check_signature_header_name("--signature-header", &n)?,
            None => DEFAULT_SIGNATURE_HEADER.to_owned(),
        };
        let secret_header = match secret_header {
            Some(n) => check_signature_header_name("--secret-header", &n)?,
            None => DEFAULT_SECRET_HEADER.to_owned(),
        };
        let mut compiled = Vec::new();
        if let Some(m) = headers.as_object() {
            for (k, v) in m {
                let k = k.to_ascii_lowercase();
                let v = v
                    .as_str()
                    .ok_or_else(|| format!("--header {k:?}: the value is not a string"))?;
                let t = Text::parse(v).map_err(|e| format!("--header {k:?}: {e}"))?;
                compiled.push((k, t));
            }
        }
        check_user_headers(
            compiled.iter().map(|(k, _)| k.as_str()),
            &signature_header,
            &secret_header,
        )?;
        let body_template = body_template
            .filter(|t| !t.is_null())
            .map(Template::parse)
            .transpose()
            .map_err(|e| format!("--body-template: {e}"))?;
        Ok(Shaping {
            headers: compiled,
            body_template,
            signature_header,
            secret_header,
        })
    }
}

/// Is `filter` a SQL/JSON path predicate? Postgres decides: the text must
/// cast to `jsonpath` and, on an envelope, give one boolean (`$.data` alone
/// is a path, not a predicate). The error is Postgres's own message.
pub async fn check_filter(c: &impl GenericClient, filter: &str) -> Result<(), String> {
    let trial = r#"{"id": "00000000-0000-0000-0000-000000000000", "type": "x", "timestamp": "2026-01-01T00:00:00.000Z",
                    "tenant_id": null, "data": {}, "previous": null}"#;
    match c
        .query_one(
            "SELECT jsonb_path_match($2::text::jsonb, $1::text::jsonpath)",
            &[&filter, &trial],
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.as_db_error() {
            Some(d) if d.message().contains("single boolean result is expected") => format!(
                "--filter {filter:?}: not a predicate (Postgres: {}); compare something, e.g. \
                 '$.data.severity == \"HIGH\"'",
                d.message()
            ),
            Some(d) => format!("--filter {filter:?}: {}", d.message()),
            None => format!("--filter: {e}"),
        }),
    }
}

/// A subscription to create (`pgwebhooks endpoint add`), or one as it is
/// stored (`endpoint update` reads, changes and writes it back).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewEndpoint {
    pub url: String,
    pub name: Option<String>,
    pub event_types: Vec<String>,
    pub tenant_id: Option<String>,
    pub make: bool,
    pub headers: serde_json::Map<String, serde_json::Value>,
    pub secret: String,
    pub ignore_origins: Vec<String>,
    pub signature_styles: Vec<String>,
    pub masked_fields: Vec<String>,
    pub timeout_ms: Option<i32>,
    pub max_in_flight: Option<i32>,
    pub rate_limit: Option<i32>,
    pub ordered: bool,
    pub body_template: Option<serde_json::Value>,
    pub signature_header: Option<String>,
    pub secret_header: Option<String>,
    pub filter: Option<String>,
}

impl NewEndpoint {
    /// What a new endpoint is before its settings are applied (the CLI,
    /// the API and the demo): every event type, Standard Webhooks
    /// signatures.
    pub fn with_defaults() -> NewEndpoint {
        NewEndpoint {
            event_types: vec!["*".into()],
            signature_styles: vec!["standard".into()],
            ..Default::default()
        }
    }
}

/// Inserts the endpoint and its secret; returns its id.
pub async fn add(c: &mut deadpool_postgres::Client, e: &NewEndpoint) -> Result<i64, DbError> {
    match insert(c, e).await {
        Err(DbError::Query(q)) if is_duplicate_name(&q) => {
            let name = e.name.as_deref().unwrap_or_default();
            let id: Option<i64> = c
                .query_opt("SELECT id FROM webhooks.endpoints WHERE name = $1", &[&name])
                .await?
                .map(|r| r.get(0));
            let id = id.map_or("?".to_owned(), |id| id.to_string());
            Err(DbError::Other(format!(
                "an endpoint named {name:?} already exists (id {id}): choose another --name, \
                 or delete that one first (`pgwebhooks endpoint delete {id}`)"
            )))
        }
        other => other,
    }
}

fn is_duplicate_name(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && d.constraint() == Some("endpoints_name_key")
    })
}

/// An endpoint's columns in the order `insert` and `update` write them
/// (`headers` is `e.headers` as one JSON object).
fn columns<'a>(e: &'a NewEndpoint, headers: &'a serde_json::Value) -> [&'a (dyn ToSql + Sync); 17] {
    [
        &e.url,
        &e.name,
        &e.event_types,
        &e.tenant_id,
        &e.make,
        headers,
        &e.ignore_origins,
        &e.signature_styles,
        &e.masked_fields,
        &e.timeout_ms,
        &e.max_in_flight,
        &e.rate_limit,
        &e.ordered,
        &e.body_template,
        &e.signature_header,
        &e.secret_header,
        &e.filter,
    ]
}

async fn insert(c: &mut deadpool_postgres::Client, e: &NewEndpoint) -> Result<i64, DbError> {
    let headers = serde_json::Value::Object(e.headers.clone());
    let tx = c.transaction().await?;
    let id: i64 = tx
        .query_one(
            "INSERT INTO webhooks.endpoints (url, name, event_types, tenant_id, make, headers, ignore_origins,
                                             signature_styles, masked_fields, timeout_ms, max_in_flight, rate_limit,
                                             ordered, body_template, signature_header, secret_header, filter)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17::text::jsonpath)
             RETURNING id",
            &columns(e, &headers),
        )
        .await?
        .get(0);
    tx.execute(
        "INSERT INTO webhooks.endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)",
        &[&id, &e.secret],
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// The columns `endpoint update` may change, as they are stored (the
/// secret left empty: it is only ever replaced).
const STORED: &str = "url, name, event_types, tenant_id, make, headers, ignore_origins, signature_styles,
                      masked_fields, timeout_ms, max_in_flight, rate_limit, ordered, body_template,
                      signature_header, secret_header, filter::text";

fn stored_from(r: &tokio_postgres::Row) -> NewEndpoint {
    let headers: serde_json::Value = r.get(5);
    NewEndpoint {
        url: r.get(0),
        name: r.get(1),
        event_types: r.get(2),
        tenant_id: r.get(3),
        make: r.get(4),
        headers: headers.as_object().cloned().unwrap_or_default(),
        secret: String::new(),
        ignore_origins: r.get(6),
        signature_styles: r.get(7),
        masked_fields: r.get(8),
        timeout_ms: r.get(9),
        max_in_flight: r.get(10),
        rate_limit: r.get(11),
        ordered: r.get(12),
        body_template: r.get(13),
        signature_header: r.get(14),
        secret_header: r.get(15),
        filter: r.get(16),
    }
}

/// `endpoint update`: reads the endpoint (locked), lets `change` compute
/// its new settings (an error leaves it as it was), checks a changed filter
/// with Postgres, and writes them back in the same transaction; a new
/// `secret` replaces every signing secret.
/// Returns the settings before and after, or `None` if there is no such
/// endpoint. The `config_changed` trigger bumps the config version.
pub async fn update<F>(
    c: &mut deadpool_postgres::Client,
    id: i64,
    change: F,
) -> Result<Option<(NewEndpoint, NewEndpoint)>, UpdateError>
where
    F: FnOnce(&NewEndpoint) -> Result<NewEndpoint, String>,
{
    let tx = c.transaction().await?;
    let Some(row) = tx
        .query_opt(
            &format!("SELECT {STORED} FROM webhooks.endpoints WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let before = stored_from(&row);
    let after = change(&before).map_err(UpdateError::Refused)?;
    if let Some(f) = after.filter.as_deref().filter(|_| after.filter != before.filter) {
        // An error ends the transaction: nothing is written.
        check_filter(&tx, f).await.map_err(UpdateError::Refused)?;
    }
    let mut unchanged = after.clone();
    unchanged.secret = String::new();
    if unchanged != before {
        let e = &after;
        let headers = serde_json::Value::Object(e.headers.clone());
        tx.execute(
            "UPDATE webhooks.endpoints
                SET url = $2, name = $3, event_types = $4, tenant_id = $5, make = $6, headers = $7,
                    ignore_origins = $8, signature_styles = $9, masked_fields = $10, timeout_ms = $11,
                    max_in_flight = $12, rate_limit = $13, ordered = $14, body_template = $15,
                    signature_header = $16, secret_header = $17, filter = $18::text::jsonpath, updated_at = now()
              WHERE id = $1",
            &[&[&id as &(dyn ToSql + Sync)][..], &columns(e, &headers)[..]].concat(),
        )
        .await?;
    }
    if !after.secret.is_empty() {
        tx.execute(
            "DELETE FROM webhooks.endpoint_secrets WHERE endpoint_id = $1",
            &[&id],
        )
        .await?;
        tx.execute(
            "INSERT INTO webhooks.endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)",
            &[&id, &after.secret],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Some((before, after)))
}

/// Why `update` changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The new settings were refused (the message says why).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for UpdateError {
    fn from(e: tokio_postgres::Error) -> Self {
        UpdateError::Db(e.into())
    }
}

/// One endpoint as `endpoint list` shows it.
#[derive(Debug)]
pub struct Listed {
    pub id: i64,
    pub name: Option<String>,
    pub url: String,
    pub event_types: Vec<String>,
    pub tenant_id: Option<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub make: bool,
    /// (secret, expires) newest first.
    pub secrets: Vec<(String, Option<String>)>,
}

pub async fn list(c: &impl GenericClient) -> Result<Vec<Listed>, DbError> {
    let rows = c
        .query(
            "SELECT e.id, e.name, e.url, e.event_types, e.tenant_id, e.enabled, e.disabled_reason, e.make,
                    ARRAY(SELECT s.secret FROM webhooks.endpoint_secrets s WHERE s.endpoint_id = e.id
                           AND (s.expires_at IS NULL OR s.expires_at > now()) ORDER BY s.created_at DESC, s.secret),
                    ARRAY(SELECT coalesce(to_char(s.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI \"UTC\"'), '')
                            FROM webhooks.endpoint_secrets s WHERE s.endpoint_id = e.id
                           AND (s.expires_at IS NULL OR s.expires_at > now()) ORDER BY s.created_at DESC, s.secret)
               FROM webhooks.endpoints e ORDER BY e.id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let secrets: Vec<String> = r.get(8);
            let expiries: Vec<String> = r.get(9);
            Listed {
                id: r.get(0),
                name: r.get(1),
                url: r.get(2),
                event_types: r.get(3),
                tenant_id: r.get(4),
                enabled: r.get(5),
                disabled_reason: r.get(6),
                make: r.get::<_, bool>(7) || is_make_url(&r.get::<_, String>(2)),
                secrets: secrets
                    .into_iter()
                    .zip(expiries)
                    .map(|(s, e)| (s, Some(e).filter(|e| !e.is_empty())))
                    .collect(),
            }
        })
        .collect())
}

/// Disables (with a reason) or enables an endpoint; false if no such id.
pub async fn set_enabled(
    c: &impl GenericClient,
    id: i64,
    enabled: bool,
    reason: &str,
) -> Result<bool, DbError> {
    let row = if enabled {
        c.query_one("SELECT webhooks.endpoint_resume($1)", &[&id]).await?
    } else {
        c.query_one("SELECT webhooks.endpoint_pause($1, $2)", &[&id, &reason])
            .await?
    };
    Ok(row.get::<_, Option<bool>>(0).unwrap_or(false))
}

/// Adds `secret` as the newest signing secret; older ones keep signing for
/// `overlap`, then expire. False if no such endpoint.
pub async fn rotate_secret(
    c: &mut deadpool_postgres::Client,
    id: i64,
    secret: &str,
    overlap: Duration,
) -> Result<bool, DbError> {
    let tx = c.transaction().await?;
    let exists = tx
        .query_opt(
            "SELECT 1 FROM webhooks.endpoints WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?;
    if exists.is_none() {
        return Ok(false);
    }
    tx.execute(
        "UPDATE webhooks.endpoint_secrets
            SET expires_at = least(coalesce(expires_at, 'infinity'), now() + make_interval(secs => $2))
          WHERE endpoint_id = $1",
        &[&id, &overlap.as_secs_f64()],
    )
    .await?;
    tx.execute(
        "INSERT INTO webhooks.endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)
         ON CONFLICT ON CONSTRAINT endpoint_secrets_pkey DO UPDATE SET expires_at = NULL, created_at = now()",
        &[&id, &secret],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Deliveries of an endpoint that still wait, by status.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub pending: i64,
    pub delivering: i64,
    pub failed: i64,
    pub dead: i64,
    /// The lowest ids, at most [`FIRST_IDS`].
    pub first_ids: Vec<i64>,
}

/// How many delivery ids a delete records.
pub const FIRST_IDS: i32 = 20;

impl Waiting {
    pub fn total(&self) -> i64 {
        self.pending + self.delivering + self.failed + self.dead
    }
    /// `2 pending, 1 dead`.
    pub fn describe(&self) -> String {
        [
            ("pending", self.pending),
            ("delivering", self.delivering),
            ("failed", self.failed),
            ("dead", self.dead),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// What [`delete`] did.
#[derive(Debug)]
pub enum Deleted {
    NotFound,
    /// Deliveries wait and `force` was not given: nothing changed.
    Refused(Waiting),
    Done {
        /// Every delivery deleted with it (delivered ones included).
        deliveries: i64,
        /// The waiting ones among them.
        dropped: Waiting,
        /// The `webhooks.endpoint.deleted` event recording them, if any.
        event: Option<uuid::Uuid>,
    },
}

/// Deletes an endpoint with its secrets, deliveries and their attempts
/// (foreign keys, ON DELETE CASCADE). Refused while deliveries wait
/// (pending, delivering, failed, dead) unless `force`; then, in the same
/// transaction, a `webhooks.endpoint.deleted` event (written directly:
/// `emit()` refuses webhooks.* types, which are pgwebhooks' own) records
/// the endpoint, how many were dropped by status, the first ids, the
/// database user and `by` (the operator's login).
pub async fn delete(
    c: &mut deadpool_postgres::Client,
    id: i64,
    force: bool,
    by: Option<&str>,
) -> Result<Deleted, DbError> {
    let tx = c.transaction().await?;
    let Some(endpoint) = tx
        .query_opt(
            "SELECT name, webhooks.url_redact(url) FROM webhooks.endpoints WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
    else {
        return Ok(Deleted::NotFound);
    };
    let row = tx
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'delivering'),
                    count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'dead'),
                    (array_agg(id ORDER BY id) FILTER (WHERE status <> 'delivered'))[1:$2]
               FROM webhooks.deliveries WHERE endpoint_id = $1",
            &[&id, &FIRST_IDS],
        )
        .await?;
    let waiting = Waiting {
        pending: row.get(0),
        delivering: row.get(1),
        failed: row.get(2),
        dead: row.get(3),
        first_ids: row.get::<_, Option<Vec<i64>>>(4).unwrap_or_default(),
    };
    if waiting.total() > 0 && !force {
        return Ok(Deleted::Refused(waiting));
    }
    let event = if waiting.total() > 0 {
        let name: Option<String> = endpoint.get(0);
        let url: String = endpoint.get(1);
        let payload = serde_json::json!({
            "endpointId": id,
            "endpointName": name,
            "endpointUrl": url,
            "dropped": waiting.total(),
            "droppedByStatus": {
                "pending": waiting.pending,
                "delivering": waiting.delivering,
                "failed": waiting.failed,
                "dead": waiting.dead,
            },
            "firstDeliveryIds": waiting.first_ids,
            "deletedByOsUser": by,
            "command": "pgwebhooks endpoint delete --force",
        });
        let row = tx
            .query_one(
                "WITH e AS (INSERT INTO webhooks.events (event_type, payload)
                            VALUES ('webhooks.endpoint.deleted',
                                    $1::jsonb || jsonb_build_object('deletedBy', session_user::text,
                                                                    'deletedAt', now()))
                            RETURNING event_id)
                 SELECT e.event_id FROM e, LATERAL webhooks.wake() w",
                &[&payload],
            )
            .await?;
        Some(row.get(0))
    } else {
        None
    };
    let deliveries: i64 = tx
        .query_one(
            "WITH n AS (SELECT count(*) AS deliveries FROM webhooks.deliveries WHERE endpoint_id = $1),
                  e AS (DELETE FROM webhooks.endpoints WHERE id = $1 RETURNING id)
             SELECT n.deliveries FROM e, n",
            &[&id],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(Deleted::Done {
        deliveries,
        dropped: waiting,
        event,
    })
}

/// Serialises environment-endpoint syncs (replicas starting together), to
/// the end of the caller's transaction.
pub async fn env_lock(c: &impl GenericClient) -> Result<(), DbError> {
    c.execute("SELECT pg_advisory_xact_lock(7070777768)", &[]).await?;
    Ok(())
}

/// Creates or updates the environment endpoint `name` (`env:<VAR>`);
/// re-enables it only if the environment had disabled it. Returns its id.
pub async fn env_upsert(
    c: &impl GenericClient,
    name: &str,
    url: &str,
    types: &[String],
    excludes: &[String],
) -> Result<i64, DbError> {
    let row = c
        .query_opt(
            "INSERT INTO webhooks.endpoints AS e (name, url, event_types, exclude_types, ignore_origins)
             VALUES ($1, $2, $3, $4, '{inbound/*}')
             ON CONFLICT ON CONSTRAINT endpoints_name_key DO UPDATE
                SET url = excluded.url, event_types = excluded.event_types,
                    exclude_types = excluded.exclude_types, updated_at = now(),
                    enabled = e.enabled OR e.disabled_reason LIKE 'env:%',
                    disabled_reason = CASE WHEN e.disabled_reason LIKE 'env:%' THEN NULL ELSE e.disabled_reason END
              WHERE (e.url, e.event_types, e.exclude_types) IS DISTINCT FROM
                    (excluded.url, excluded.event_types, excluded.exclude_types)
                 OR e.disabled_reason LIKE 'env:%'
             RETURNING id",
            &[&name, &url, &types, &excludes],
        )
        .await?;
    Ok(match row {
        Some(r) => r.get(0),
        // Unchanged: the conditional update returned nothing.
        None => c
            .query_one("SELECT id FROM webhooks.endpoints WHERE name = $1", &[&name])
            .await?
            .get(0),
    })
}

/// Makes `secret` the endpoint's signing secret; a different one it had
/// keeps signing for a day (receivers move over).
pub async fn secret_replace(c: &impl GenericClient, id: i64, secret: &str) -> Result<(), DbError> {
    c.execute(
        "INSERT INTO webhooks.endpoint_secrets (endpoint_id, secret) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&id, &secret],
    )
    .await?;
    c.execute(
        "UPDATE webhooks.endpoint_secrets SET expires_at = now() + interval '1 day'
          WHERE endpoint_id = $1 AND secret <> $2 AND expires_at IS NULL",
        &[&id, &secret],
    )
    .await?;
    Ok(())
}

pub async fn has_secret(c: &impl GenericClient, id: i64) -> Result<bool, DbError> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM webhooks.endpoint_secrets WHERE endpoint_id = $1)",
        &[&id],
    )
    .await?
    .get(0))
}

pub async fn secret_add(c: &impl GenericClient, id: i64, secret: &str) -> Result<(), DbError> {
    c.execute(
        "INSERT INTO webhooks.endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)",
        &[&id, &secret],
    )
    .await?;
    Ok(())
}

/// Disables the environment endpoints whose variable is no longer set
/// (their backlog waits); returns how many.
pub async fn env_disable_unset(c: &impl GenericClient, set: &[String]) -> Result<u64, DbError> {
    Ok(c.execute(
        "UPDATE webhooks.endpoints SET enabled = false, updated_at = now(),
                disabled_reason = 'env: ' || substr(name, 5) || ' is not set'
          WHERE name LIKE 'env:%' AND enabled AND NOT (name = ANY ($1))",
        &[&set],
    )
    .await?)
}
