//! `pgwebhooks migrate`: the embedded refinery migrations (tables, indexes),
//! then the definitions in `sql/` (functions, triggers, views), re-applied
//! every time. Safe to run twice and from several replicas at once: the
//! whole run holds a session advisory lock.

use tokio_postgres::Client;

use super::DbError;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The `sql/` files `migrate` applies, in order, one per noun (a file only
/// uses what the files before it define). `sql/schema.sql` is not among
/// them: it is the readable definition of what the migrations build.
pub const SQL_FILES: &[(&str, &str)] = &[
    ("sql/10_capture.sql", include_str!("../../sql/10_capture.sql")),
    ("sql/20_fanout.sql", include_str!("../../sql/20_fanout.sql")),
    ("sql/30_delivery.sql", include_str!("../../sql/30_delivery.sql")),
    ("sql/35_breaker.sql", include_str!("../../sql/35_breaker.sql")),
    ("sql/40_inbound.sql", include_str!("../../sql/40_inbound.sql")),
    ("sql/50_status.sql", include_str!("../../sql/50_status.sql")),
    ("sql/60_replay.sql", include_str!("../../sql/60_replay.sql")),
    ("sql/70_retention.sql", include_str!("../../sql/70_retention.sql")),
    ("sql/90_roles.sql", include_str!("../../sql/90_roles.sql")),
];

/// The example app (schema `app`), installed by `migrate --example`.
pub const EXAMPLE_FILES: &[(&str, &str)] = &[
    ("sql/example/app.sql", include_str!("../../sql/example/app.sql")),
    (
        "sql/example/inbound.sql",
        include_str!("../../sql/example/inbound.sql"),
    ),
];

/// Key of the advisory lock that serialises concurrent `migrate` runs.
const MIGRATE_LOCK: i64 = 0x7067_7768_6f6f_6b73; // "pgwhooks"

/// Table refinery records applied migrations in (kept out of `public`).
const HISTORY_TABLE: &str = "webhooks.refinery_schema_history";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("applying migrations")]
    Refinery(#[source] refinery::Error),
    #[error("applying {file}")]
    Sql {
        file: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Db(DbError::Query(e))
    }
}

/// What a migrate run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Names of the migrations applied by this run (empty when current).
    pub applied: Vec<String>,
    /// Number of `sql/` files (re)applied.
    pub sql_files: usize,
}

/// Brings the database up to date; `example` also installs schema `app`.
pub async fn run(client: &mut Client, example: bool) -> Result<MigrateReport, MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    let result = run_locked(client, example).await;
    // Unlock even on failure; if the connection is gone the lock went with it.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
        .await;
    result
}

async fn run_locked(client: &mut Client, example: bool) -> Result<MigrateReport, MigrateError> {
    client
        .batch_execute("SET client_min_messages = warning; CREATE SCHEMA IF NOT EXISTS webhooks")
        .await?;
    let report = embedded::migrations::runner()
        .set_migration_table_name(HISTORY_TABLE)
        .run_async(client)
        .await
        .map_err(MigrateError::Refinery)?;
    let applied = report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect();

    let files = SQL_FILES.iter().chain(if example { EXAMPLE_FILES } else { &[] });
    let tx = client.transaction().await?;
    let mut sql_files = 0;
    for (file, sql) in files {
        tx.batch_execute(sql)
            .await
            .map_err(|source| MigrateError::Sql { file, source })?;
        sql_files += 1;
    }
    tx.commit().await?;
    Ok(MigrateReport { applied, sql_files })
}

/// How many migrations are embedded in this binary.
pub fn embedded_count() -> usize {
    embedded::migrations::runner().get_migrations().len()
}

/// True when every embedded migration has been applied (for `/readyz`).
pub async fn is_current(client: &Client) -> Result<bool, DbError> {
    let latest = embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version() as i64)
        .max()
        .unwrap_or(0);
    let row = client
        .query_opt(
            "SELECT max(version)::bigint FROM webhooks.refinery_schema_history",
            &[],
        )
        .await;
    match row {
        Ok(Some(row)) => Ok(row.get::<_, Option<i64>>(0).unwrap_or(0) >= latest),
        Ok(None) => Ok(false),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
