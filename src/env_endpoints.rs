//! Endpoints declared in the environment (`MAKE_WEBHOOK_*_URL`,
//! `WEBHOOK_URL`, `MAKE_WEBHOOK_ADMIN_URL`, `WEBHOOK_SECRET`), the way the
//! learning platform configures its Make.com scenarios. Checked like any
//! endpoint URL (`deliver::target`), then synced into `webhooks.endpoints`
//! at start-up, idempotently, under an advisory lock.

use deadpool_postgres::GenericClient;

use crate::db::DbError;
use crate::sign::generate_secret;

/// Each event group's variable and the event types it takes.
pub const GROUPS: &[(&str, &[&str])] = &[
    ("MAKE_WEBHOOK_APPOINTMENTS_URL", &["appointment.*"]),
    ("MAKE_WEBHOOK_MESSAGES_URL", &["message.*"]),
    ("MAKE_WEBHOOK_COHORT_ENROLLMENTS_URL", &["cohort.enrollment.*"]),
    ("MAKE_WEBHOOK_COHORT_MESSAGES_URL", &["cohort.message.*"]),
    ("MAKE_WEBHOOK_SUPPORT_TICKETS_URL", &["ticket.*"]),
    ("MAKE_WEBHOOK_PAYMENTS_URL", &["payment.*", "enrollment.*"]),
    ("MAKE_WEBHOOK_ERRORS_URL", &["error.*"]),
];

/// Take every event no group URL claims.
pub const FALLBACKS: &[&str] = &["WEBHOOK_URL", "MAKE_WEBHOOK_ADMIN_URL"];

/// What the environment declares.
#[derive(Debug, Clone, Default)]
pub struct EnvEndpoints {
    /// (variable, URL) for every variable that is set and non-empty.
    pub urls: Vec<(String, String)>,
    pub secret: Option<crate::config::Secret>,
}

impl EnvEndpoints {
    pub fn from_env() -> EnvEndpoints {
        let vars = GROUPS.iter().map(|(v, _)| *v).chain(FALLBACKS.iter().copied());
        EnvEndpoints {
            urls: vars
                .filter_map(|v| {
                    std::env::var(v)
                        .ok()
                        .filter(|u| !u.trim().is_empty())
                        .map(|u| (v.to_owned(), u.trim().to_owned()))
                })
                .collect(),
            secret: std::env::var("WEBHOOK_SECRET")
                .ok()
                .filter(|s| !s.is_empty())
                .map(crate::config::Secret::new),
        }
    }
}

impl EnvEndpoints {
    /// Checks each URL's form and, for an IP-literal host, its address (host
    /// names are checked as they resolve, at every delivery). The message
    /// names the variable, never the URL (a Make.com URL is a credential).
    pub fn check(&self, allow_private: bool) -> Result<(), String> {
        for (var, url) in &self.urls {
            crate::deliver::target::check(url, allow_private).map_err(|e| format!("{var}: {e}"))?;
        }
        Ok(())
    }
}

/// What a sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub upserted: Vec<(String, i64)>,
    pub disabled: u64,
    pub generated_secret: bool,
}

/// Creates or updates `env:<VAR>` endpoints; disables those whose variable
/// is no longer set (their backlog waits). Never re-enables an endpoint an
/// operator or a 410 paused.
pub async fn sync(c: &impl GenericClient, env: &EnvEndpoints) -> Result<Synced, DbError> {
    use crate::db::endpoints as store;
    store::env_lock(c).await?;
    let mut out = Synced::default();
    let claimed: Vec<String> = GROUPS
        .iter()
        .filter(|(v, _)| env.urls.iter().any(|(u, _)| u == v))
        .flat_map(|(_, p)| p.iter().map(|s| s.to_string()))
        .collect();
    for (var, url) in &env.urls {
        let (types, excludes): (Vec<String>, Vec<String>) = match GROUPS.iter().find(|(v, _)| v == var) {
            Some((_, p)) => (p.iter().map(|s| s.to_string()).collect(), vec![]),
            None => (vec!["*".into()], claimed.clone()),
        };
        let name = format!("env:{var}");
        let id = store::env_upsert(c, &name, url, &types, &excludes).await?;
        match &env.secret {
            // A changed WEBHOOK_SECRET: the old one keeps signing for a day.
            Some(secret) => store::secret_replace(c, id, secret.expose()).await?,
            None if !store::has_secret(c, id).await? => {
                let secret = generate_secret().map_err(|e| DbError::Other(e.to_string()))?;
                store::secret_add(c, id, &secret).await?;
                out.generated_secret = true;
            }
            None => {}
        }
        out.upserted.push((name, id));
    }
    let set: Vec<String> = env.urls.iter().map(|(v, _)| format!("env:{v}")).collect();
    out.disabled = store::env_disable_unset(c, &set).await?;
    Ok(out)
}
