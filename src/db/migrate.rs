//! `pgwebhooks migrate`: the embedded refinery migrations (tables, indexes),
//! then the definitions in `sql/` (functions, triggers, views), re-applied
//! every time. Safe to run twice and from several replicas at once: the
//! whole run holds a session advisory lock.
//!
//! Before changing anything, [`missing_rights`] reads from the catalog
//! every right the migrate role lacks and refuses with the whole list of
//! statements that grant them (a non-superuser app role used to learn
//! them one failed run at a time). The DDL event trigger needs a superuser
//! and is the one optional part: without it the run succeeds and its
//! report says so ([`MigrateReport::ddl_trigger`]).

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
    /// The migrate role lacks rights; `statements` grant them all.
    #[error("{}", rights_message(role, statements))]
    Rights {
        role: String,
        statements: Vec<(String, &'static str)>,
    },
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
    /// Whether the DDL event trigger (`webhooks_ddl`, which refreshes a
    /// watched table's capture after `ALTER TABLE`) is installed. Creating
    /// it needs a superuser; without it the run still succeeds.
    pub ddl_trigger: bool,
}

/// What having no DDL event trigger means, and the two ways out.
pub const NO_DDL_TRIGGER: &str = "schema drift is not detected automatically: after your app's \
     migrations alter a watched table (a column added, renamed or dropped, a partition attached), \
     its capture keeps the old shape until the table's owner runs SELECT webhooks.rewatch() (or \
     watch() again); run `pgwebhooks migrate` once as a superuser to install the trigger";

fn rights_message(role: &str, statements: &[(String, &'static str)]) -> String {
    let width = statements.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
    let mut out = format!(
        "role {role} lacks rights that migrate needs (nothing was changed); run these once as a superuser, \
         then migrate again:"
    );
    for (sql, why) in statements {
        out.push_str(&format!("\n    {sql:width$}  -- {why}"));
    }
    out.push_str(&format!(
        "\n(Or run this migrate once as a superuser, which needs none of them.) Note that without a \
         superuser migrate goes on without the DDL event trigger, and then {NO_DDL_TRIGGER}."
    ));
    out
}

/// The roles `migrate` creates (sql/10_capture.sql, sql/90_roles.sql) and
/// what each is for.
const ROLES: [(&str, &str); 3] = [
    (
        "webhooks_capture",
        "owns the capture trigger function: inserts events, nothing else",
    ),
    (
        "webhooks_app",
        "for the app roles that watch() their tables or emit()",
    ),
    ("webhooks_sidecar", "for the role `pgwebhooks run` logs in as"),
];

/// Every right the connected role lacks for this run, as the statements a
/// superuser runs to grant them, each with its reason (empty: none). Reads
/// the catalog only.
pub async fn missing_rights(client: &Client, example: bool) -> Result<Vec<(String, &'static str)>, DbError> {
    let names: Vec<&str> = ROLES.iter().map(|(n, _)| *n).collect();
    let r = client
        .query_one(
            "SELECT r.rolsuper, r.rolcreaterole, quote_ident(current_user), quote_ident(current_database()),
                    has_database_privilege(current_database(), 'CREATE') AS db_create,
                    (SELECT quote_ident(pg_get_userbyid(n.nspowner)) FROM pg_namespace n
                      WHERE n.nspname = 'webhooks' AND NOT pg_has_role(current_user, n.nspowner, 'USAGE')) AS foreign_owner,
                    EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'webhooks') AS has_schema,
                    EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'app') AS has_app,
                    ARRAY(SELECT g FROM unnest($1::text[]) g
                           WHERE NOT EXISTS (SELECT 1 FROM pg_roles x WHERE x.rolname = g)) AS absent,
                    CASE WHEN EXISTS (SELECT 1 FROM pg_roles x WHERE x.rolname = 'webhooks_capture')
                         THEN pg_has_role(current_user, 'webhooks_capture', 'MEMBER') END AS capture_member,
                    CASE WHEN EXISTS (SELECT 1 FROM pg_roles x WHERE x.rolname = 'webhooks_capture')
                         THEN pg_has_role(current_user, 'webhooks_capture', 'MEMBER WITH ADMIN OPTION') END AS capture_admin,
                    current_setting('server_version_num')::int AS version
               FROM pg_roles r WHERE r.rolname = current_user",
            &[&names],
        )
        .await?;
    let superuser: bool = r.get(0);
    if superuser {
        return Ok(Vec::new());
    }
    let createrole: bool = r.get(1);
    let (me, db): (String, String) = (r.get(2), r.get(3));
    let db_create: bool = r.get("db_create");
    let foreign_owner: Option<String> = r.get("foreign_owner");
    let absent: Vec<String> = r.get("absent");
    let capture_member: Option<bool> = r.get("capture_member");
    let capture_admin: Option<bool> = r.get("capture_admin");
    let version: i32 = r.get("version");
    let mut out = Vec::new();
    if !createrole {
        for (name, why) in ROLES.iter().filter(|(n, _)| absent.iter().any(|a| a == n)) {
            out.push((format!("CREATE ROLE {name} NOLOGIN;"), *why));
        }
    }
    // A CREATEROLE role grants a role it creates (and, before 16, any
    // other); from 16 on, an existing one only with ADMIN OPTION.
    let can_grant =
        createrole && (capture_member.is_none() || version < 160000 || capture_admin == Some(true));
    if capture_member != Some(true) && !can_grant {
        out.push((
            format!("GRANT webhooks_capture TO {me};"),
            "migrate hands the capture functions to webhooks_capture",
        ));
    }
    let has_schema: bool = r.get("has_schema");
    let has_app: bool = r.get("has_app");
    if !db_create && (!has_schema || (example && !has_app)) {
        out.push((
            format!("GRANT CREATE ON DATABASE {db} TO {me};"),
            if example && !has_app {
                "to create schemas webhooks and app (--example)"
            } else {
                "to create schema webhooks (or: CREATE SCHEMA webhooks AUTHORIZATION <this role>)"
            },
        ));
    }
    if let Some(owner) = foreign_owner {
        out.push((
            format!("GRANT {owner} TO {me};"),
            "schema webhooks and its objects belong to that role (or run migrate as it)",
        ));
    }
    Ok(out)
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
    let statements = missing_rights(client, example).await?;
    if !statements.is_empty() {
        let role: String = client.query_one("SELECT current_user::text", &[]).await?.get(0);
        return Err(MigrateError::Rights { role, statements });
    }
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
    let ddl_trigger = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'webhooks_ddl' AND evtenabled <> 'D')",
            &[],
        )
        .await?
        .get(0);
    Ok(MigrateReport {
        applied,
        sql_files,
        ddl_trigger,
    })
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
