//! Subscriptions as the sidecar sees them: which events an endpoint wants,
//! how to sign for it, and the Make.com rules. Loaded from
//! `webhooks.endpoints` into an immutable snapshot, replaced as a whole when
//! `webhooks.config_version` moves.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::sign::SigningKey;
use crate::template::{Template, Text};

/// Make.com accepts at most 300 requests per 10 s per webhook; pace a
/// little under it.
pub const MAKE_RATE: (u32, Duration) = (280, Duration::from_secs(10));
/// Make.com refuses bodies over 5 MB.
pub const MAKE_MAX_BODY: usize = 5 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Styles {
    pub standard: bool,
    pub sha256_hex: bool,
    pub secret_header: bool,
}

impl Styles {
    pub fn parse(names: &[String]) -> Styles {
        let has = |n: &str| names.iter().any(|s| s == n);
        Styles {
            standard: has("standard"),
            sha256_hex: has("sha256-hex"),
            secret_header: has("secret-header"),
        }
    }
}

/// The `sha256-hex` style's header unless `--signature-header` renames it.
pub const DEFAULT_SIGNATURE_HEADER: &str = "x-webhook-signature";
/// The `secret-header` style's header unless `--secret-header` renames it.
pub const DEFAULT_SECRET_HEADER: &str = "x-webhook-secret";
/// Headers no `--header` may set: the Standard Webhooks signature's, the
/// body's type and framing.
pub const PROTECTED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "transfer-encoding",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Headers a user's `--header` never sends: `host` would pick another
/// virtual host behind the URL's address (a shared ingress or CDN), around
/// the checks of the URL's target; the others belong to the connection
/// (hop-by-hop) or to a proxy (any `proxy-*`). Refused when an endpoint is
/// configured; dropped at send from rows written with SQL.
pub const NEVER_SENT_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Is `name` (lowercase) a header no user's header may set?
pub fn never_sent(name: &str) -> bool {
    NEVER_SENT_HEADERS.contains(&name) || name.starts_with("proxy-")
}

/// Checks a `--signature-header`/`--secret-header` name; returns it lowercase.
pub fn check_signature_header_name(flag: &str, name: &str) -> Result<String, String> {
    let lower = name.trim().to_ascii_lowercase();
    if reqwest::header::HeaderName::from_bytes(lower.as_bytes()).is_err() {
        return Err(format!("{flag} {name:?}: not a valid header name"));
    }
    if PROTECTED_HEADERS.contains(&lower.as_str()) || lower == "user-agent" {
        return Err(format!(
            "{flag} {name:?}: that header is already sent for another purpose"
        ));
    }
    Ok(lower)
}

/// Checks the extra headers against the signature header names: a user's
/// header may replace ours (`user-agent`), never a signature's or
/// `content-type`. Names must already be lowercase.
pub fn check_user_headers<'a>(
    names: impl IntoIterator<Item = &'a str>,
    signature_header: &str,
    secret_header: &str,
) -> Result<(), String> {
    if signature_header == secret_header {
        return Err(format!(
            "--signature-header and --secret-header are both {signature_header:?}"
        ));
    }
    for name in names {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("--header {name:?}: invalid header name"));
        }
        if PROTECTED_HEADERS.contains(&name) || name == signature_header || name == secret_header {
            return Err(format!(
                "--header {name:?}: a signature or content header cannot be overridden \
                 (rename the sha256-hex or secret header with --signature-header/--secret-header)"
            ));
        }
    }
    Ok(())
}

/// One subscription, ready to use.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: i64,
    pub name: Option<String>,
    pub url: String,
    pub event_types: Vec<String>,
    pub exclude_types: Vec<String>,
    pub tenant_id: Option<String>,
    pub ignore_origins: Vec<String>,
    pub styles: Styles,
    /// Extra headers (lowercase names), values with `{{path}}` placeholders;
    /// they replace ours except [`Endpoint::protects`]' names.
    pub headers: Vec<(String, Text)>,
    /// The body, shaped; `None` sends the standard envelope.
    pub body_template: Option<Template>,
    /// The `sha256-hex` style's header (lowercase).
    pub signature_header: String,
    /// The `secret-header` style's header (lowercase).
    pub secret_header: String,
    /// A SQL/JSON path predicate over the envelope (`jsonb_path_match`);
    /// events it rejects are not delivered here. Evaluated by Postgres at
    /// fan-out (`webhooks.filter_accepts`), only for endpoints that have one.
    pub filter: Option<String>,
    pub masked_fields: Vec<String>,
    pub timeout: Option<Duration>,
    pub max_in_flight: Option<usize>,
    pub retry_schedule: Option<Vec<Duration>>,
    /// Requests per window, shared by every replica.
    pub rate: Option<(u32, Duration)>,
    /// The Make.com rules apply (opted in, or a `hook.*.make.com` URL).
    pub make: bool,
    /// Each row's events reach this endpoint in order (via the retry path).
    pub ordered: bool,
    pub enabled: bool,
    /// Signing keys, newest first, with their expiry.
    pub keys: Vec<(SigningKey, Option<SystemTime>)>,
}

impl Endpoint {
    /// Does this endpoint want an event of this type, tenant and origin?
    /// (Its content filter, if any, is applied after, by Postgres.)
    pub fn wants(&self, event_type: &str, tenant_id: Option<&str>, origin: Option<&str>) -> bool {
        self.event_types.iter().any(|p| subscribes(p, event_type))
            && !self.exclude_types.iter().any(|p| matches(p, event_type))
            && (self.tenant_id.is_none() || self.tenant_id.as_deref() == tenant_id)
            && !origin.is_some_and(|o| self.ignore_origins.iter().any(|p| matches(p, o)) || self.is_about(o))
    }

    /// Is `origin` that of an operational event about this endpoint
    /// (`webhooks/endpoint/<id>`)? Such events never go to it.
    /// `endpoint test` events (`webhooks/test`) are queued for their
    /// endpoint directly and never fanned out.
    fn is_about(&self, origin: &str) -> bool {
        origin == "webhooks/test"
            || origin
                .strip_prefix("webhooks/endpoint/")
                .is_some_and(|id| id.parse() == Ok(self.id))
    }

    /// Is `name` (lowercase) one of the headers a user's header may not
    /// replace, or never sends ([`never_sent`])?
    pub fn protects(&self, name: &str) -> bool {
        PROTECTED_HEADERS.contains(&name)
            || name == self.signature_header
            || name == self.secret_header
            || never_sent(name)
    }

    /// Keys that sign now (a rotated-out key signs until it expires).
    pub fn active_keys(&self, now: SystemTime) -> Vec<SigningKey> {
        self.keys
            .iter()
            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The pacing to apply: the endpoint's own limit, else Make's.
    pub fn pacing(&self) -> Option<(u32, Duration)> {
        self.rate.or(self.make.then_some(MAKE_RATE))
    }
}

/// Does a subscription pattern take this event type? As [`matches`], but
/// pgwebhooks' own operational events (`webhooks.…`) go only to patterns
/// that name them (`webhooks.*`, `webhooks.endpoint.*`): a bare `*` does
/// not take them.
pub fn subscribes(pattern: &str, event_type: &str) -> bool {
    (!event_type.starts_with("webhooks.") || pattern.starts_with("webhooks.")) && matches(pattern, event_type)
}

/// `*` matches any run of characters (`appointment.*`, `*.created`, `*`).
pub fn matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Splits `appointment.*, ticket.created` lists into patterns.
pub fn split_patterns<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    items
        .iter()
        .flat_map(|s| s.as_ref().split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Is this a Make.com custom-webhook URL (`https://hook.<zone>.make.com/…`)?
pub fn is_make_url(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = u.host_str() else { return false };
    let host = host.to_ascii_lowercase();
    (host.starts_with("hook.") && host.ends_with(".make.com")) || host == "hook.make.com"
}

/// The current [`Snapshot`], shared by the stages that read it (fan-out,
/// retries, lanes, probes, the recorder's warnings) and replaced whole when
/// `webhooks.config_version` moves. Cheap to clone.
#[derive(Clone, Default)]
pub struct Subscriptions(Arc<RwLock<Arc<Snapshot>>>);

impl Subscriptions {
    pub fn new(snapshot: Snapshot) -> Subscriptions {
        Subscriptions(Arc::new(RwLock::new(Arc::new(snapshot))))
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, snapshot: Arc<Snapshot>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }
}

/// The subscriptions at one config version.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: i64,
    pub endpoints: Vec<Arc<Endpoint>>,
    by_id: HashMap<i64, Arc<Endpoint>>,
    /// Some endpoint has a content filter (else fan-out asks nothing more).
    pub any_filter: bool,
}

impl Snapshot {
    pub fn new(version: i64, endpoints: Vec<Endpoint>) -> Snapshot {
        let endpoints: Vec<Arc<Endpoint>> = endpoints.into_iter().map(Arc::new).collect();
        let by_id = endpoints.iter().map(|e| (e.id, e.clone())).collect();
        let any_filter = endpoints.iter().any(|e| e.filter.is_some());
        Snapshot {
            version,
            endpoints,
            by_id,
            any_filter,
        }
    }

    pub fn get(&self, id: i64) -> Option<&Arc<Endpoint>> {
        self.by_id.get(&id)
    }

    /// Every endpoint that wants the event, enabled or not (a disabled
    /// endpoint's deliveries wait for it).
    pub fn matching<'a>(
        &'a self,
        event_type: &'a str,
        tenant_id: Option<&'a str>,
        origin: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<Endpoint>> + 'a {
        self.endpoints
            .iter()
            .filter(move |e| e.wants(event_type, tenant_id, origin))
    }
}

#[cfg(test)]
impl Endpoint {
    /// An endpoint with every option at its default (unit tests).
    pub(crate) fn test(id: i64, url: &str) -> Endpoint {
        Endpoint {
            id,
            name: None,
            url: url.into(),
            event_types: vec!["*".into()],
            exclude_types: vec![],
            tenant_id: None,
            ignore_origins: vec![],
            styles: Styles::default(),
            headers: vec![],
            body_template: None,
            signature_header: DEFAULT_SIGNATURE_HEADER.into(),
            secret_header: DEFAULT_SECRET_HEADER.into(),
            filter: None,
            masked_fields: vec![],
            timeout: None,
            max_in_flight: None,
            retry_schedule: None,
            rate: None,
            make: false,
            ordered: false,
            enabled: true,
            keys: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(types: &[&str]) -> Endpoint {
        let mut e = Endpoint::test(1, "http://127.0.0.1/");
        e.event_types = types.iter().map(|s| s.to_string()).collect();
        e
    }

    #[test]
    fn wildcards() {
        assert!(matches("*", "anything.at.all"));
        assert!(matches("appointment.*", "appointment.payment.confirmed"));
        assert!(!matches("appointment.*", "appointments"));
        assert!(matches("*.created", "ticket.created"));
        assert!(matches("ticket.*ed", "ticket.status_changed"));
        assert!(!matches("ticket.created", "ticket.created.x"));
        assert!(matches("inbound/*", "inbound/payments"));
        assert_eq!(
            split_patterns(&["appointment.*, ticket.created", ""]),
            ["appointment.*", "ticket.created"]
        );
    }

    #[test]
    fn wants_types_tenants_and_origins() {
        let mut e = endpoint(&["appointment.*", "ticket.created"]);
        assert!(e.wants("appointment.created", None, None));
        assert!(!e.wants("ticket.updated", None, None));
        e.exclude_types = vec!["appointment.completed".into()];
        assert!(!e.wants("appointment.completed", None, None));
        e.tenant_id = Some("acme".into());
        assert!(!e.wants("ticket.created", Some("other"), None));
        assert!(e.wants("ticket.created", Some("acme"), None));
        e.ignore_origins = vec!["inbound/*".into()];
        assert!(!e.wants("ticket.created", Some("acme"), Some("inbound/support-tickets")));
    }

    #[test]
    fn make_urls() {
        assert!(subscribes("*", "appointment.created"));
        assert!(!subscribes("*", "webhooks.endpoint.paused"));
        assert!(!subscribes("*.paused", "webhooks.endpoint.paused"));
        assert!(subscribes("webhooks.*", "webhooks.endpoint.paused"));
        assert!(subscribes("webhooks.endpoint.*", "webhooks.endpoint.paused"));
        assert!(!subscribes("webhooks.delivery.*", "webhooks.endpoint.paused"));
        assert!(is_make_url("https://hook.eu1.make.com/abc"));
        assert!(is_make_url("https://HOOK.us2.make.com/abc"));
        assert!(!is_make_url("https://make.com.evil.example/abc"));
        assert!(!is_make_url("http://127.0.0.1:9/hook.eu1.make.com"));
    }
}
