//! Command implementations that print for people (the binary's side:
//! `anyhow` is allowed here, not in the library).

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pgwebhooks::config::{parse_duration, DatabaseArgs, TargetArgs};
use pgwebhooks::db;
use pgwebhooks::db::endpoints::{Deleted, NewEndpoint, Shaping};
use pgwebhooks::deliver::target::{self, TargetError};
use pgwebhooks::deliver::MAX_ENDPOINT_TIMEOUT;
use pgwebhooks::endpoints::{is_make_url, split_patterns};
use pgwebhooks::sign::{generate_secret, SigningKey};

use crate::out::outln;

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once from the command line")]
pub enum EndpointCommand {
    /// Add a subscription; prints its id alone on the last line.
    Add {
        #[command(flatten)]
        db: DatabaseArgs,
        /// Where to POST (http or https, no user:password@). Its host must
        /// not be, or resolve to, a private address unless
        /// --allow-private-targets.
        #[arg(long)]
        url: String,
        /// Signing secret (whsec_<base64>, or a plain shared string of 8+
        /// characters); generated and printed when absent.
        #[arg(long, env = "PGWEBHOOKS_ENDPOINT_SECRET", hide_env_values = true)]
        secret: Option<String>,
        #[command(flatten)]
        settings: EndpointFlags,
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// Change an endpoint: the flags of `add`, each optional; what is not
    /// given stays as it is. Prints what changed.
    Update {
        #[command(flatten)]
        db: DatabaseArgs,
        /// The endpoint's id (`endpoint list`).
        id: i64,
        /// A new URL, checked as `add` checks it.
        #[arg(long)]
        url: Option<String>,
        /// Replace every signing secret with this one at once (no overlap:
        /// `rotate-secret` keeps the old ones signing for a while).
        #[arg(long)]
        secret: Option<String>,
        #[command(flatten)]
        settings: EndpointFlags,
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// List subscriptions (secrets, and URLs' paths and queries, hidden
    /// unless --show-secrets).
    List {
        #[command(flatten)]
        db: DatabaseArgs,
        /// Show full URLs and signing secrets.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Stop delivering to an endpoint; its deliveries wait, nothing is dropped.
    Disable {
        #[command(flatten)]
        db: DatabaseArgs,
        /// The endpoint's id (see `pgwebhooks endpoint list`).
        id: i64,
        /// Why, shown by `endpoint list` and `status`.
        #[arg(long, default_value = "disabled by an operator")]
        reason: String,
    },
    /// Delete an endpoint with its secrets, deliveries and their attempts.
    /// Refused while deliveries wait (pending, delivering, failed or dead)
    /// unless --force.
    #[command(visible_alias = "remove")]
    Delete {
        #[command(flatten)]
        db: DatabaseArgs,
        /// The endpoint's id (see `pgwebhooks endpoint list`).
        id: i64,
        /// Delete even though deliveries wait: they are dropped, and a
        /// `webhooks.endpoint.deleted` event (in webhooks.events) records
        /// how many, the first ids, who and when.
        #[arg(long)]
        force: bool,
    },
    /// Resume an endpoint; its backlog drains.
    Enable {
        #[command(flatten)]
        db: DatabaseArgs,
        /// The endpoint's id (see `pgwebhooks endpoint list`).
        id: i64,
    },
    /// Add a new signing secret; the old ones keep signing for --overlap.
    RotateSecret {
        #[command(flatten)]
        db: DatabaseArgs,
        /// The endpoint's id (see `pgwebhooks endpoint list`).
        id: i64,
        /// The new secret (generated and printed when absent).
        #[arg(long, env = "PGWEBHOOKS_ENDPOINT_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// How long the previous secrets keep signing next to the new one
        /// (receivers accept any of them meanwhile).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        overlap: Duration,
    },
    /// Send one signed event to this endpoint alone, through the running
    /// sidecar's normal path (headers, signature, recording); print what was
    /// sent (type, webhook-id, body) and the answer's status, latency and
    /// excerpt. Exit 0 on a 2xx answer, 1 otherwise. Needs `pgwebhooks run`
    /// running. What is sent:
    ///
    /// - by default, the `webhooks.test` ping, as the standard envelope (never
    ///   through a body template: it cannot pass for one of your events);
    ///
    /// - with --event-type T, a copy (new webhook-id) of the latest stored T
    ///   event this endpoint would receive, shaped exactly as its delivery
    ///   (template, masks): what a Make scenario's "determine data structure"
    ///   needs;
    ///
    /// - with --event-type T --sample FILE, a T event whose data is FILE's JSON.
    #[command(verbatim_doc_comment)]
    Test {
        #[command(flatten)]
        db: DatabaseArgs,
        /// The endpoint's id (see `pgwebhooks endpoint list`).
        id: i64,
        /// Send an event of this type (one the endpoint receives): the latest
        /// stored one, or --sample as one.
        #[arg(long, value_name = "TYPE")]
        event_type: Option<String>,
        /// A JSON file (`-`: standard input) sent as the event's data (what
        /// the envelope's `data` and a template's `{{data}}` hold); needs
        /// --event-type.
        #[arg(long, value_name = "FILE", requires = "event_type")]
        sample: Option<String>,
        /// How long to wait for the sidecar to send it and record the answer.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        wait: Duration,
    },
}

/// The settings `endpoint add` and `endpoint update` share. For `update`
/// every one is optional (absent: unchanged); a repeatable flag given
/// replaces the whole list (`--mask ''` empties it), and `''` clears
/// --tenant, --name, --body-template, --filter, --signature-header and
/// --secret-header.
#[derive(Debug, Args, Default)]
pub struct EndpointFlags {
    /// Event types, comma-separated, `*` wildcards [add's default: *].
    #[arg(long)]
    events: Option<String>,
    /// Only events of this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// A unique name.
    #[arg(long)]
    name: Option<String>,
    /// Apply the Make.com rules (automatic for hook.*.make.com URLs);
    /// --make=false turns them off.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    make: Option<bool>,
    /// Extra header sent with every request, e.g. 'x-make-apikey: …' or
    /// 'Idempotency-Key: appointment:{{data.appointment.id}}:{{type}}'
    /// (placeholders as in --body-template; repeatable). Replaces a header
    /// of ours (user-agent), never a signature header or content-type;
    /// host, connection, proxy-* and expect are refused (never sent).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Skip events whose origin matches, e.g. 'inbound/*' (repeatable).
    /// Make.com endpoints default to 'inbound/*', so a scenario's own
    /// callbacks are not echoed back to it.
    #[arg(long = "ignore-origin")]
    ignore_origins: Vec<String>,
    /// Deliver every event to a Make.com endpoint, its scenario's own
    /// callbacks included (no default 'inbound/*').
    #[arg(long, conflicts_with = "ignore_origins")]
    no_ignore_origin: bool,
    /// Signature styles: standard, sha256-hex (x-webhook-signature, or
    /// --signature-header), secret-header (x-webhook-secret, or
    /// --secret-header); comma-separated [add's default: standard].
    #[arg(long)]
    signature: Option<String>,
    /// The sha256-hex style's header name instead of x-webhook-signature,
    /// e.g. X-Make-Signature (value: sha256=<hex HMAC of the body>).
    #[arg(long)]
    signature_header: Option<String>,
    /// The secret-header style's header name instead of x-webhook-secret.
    #[arg(long)]
    secret_header: Option<String>,
    /// The body as a JSON template instead of the standard envelope, e.g.
    /// '{"event": "{{type}}", "task": "{{data}}"}'. "{{path}}" alone keeps
    /// the value's type; inside text it is interpolated; "...": "{{data}}"
    /// merges an object's members in. Paths: id, type, timestamp,
    /// tenant_id, data[.a.b], previous[.a.b].
    #[arg(long)]
    body_template: Option<String>,
    /// Deliver only events this SQL/JSON path predicate accepts, as
    /// Postgres's jsonb_path_match reads it over the envelope, e.g.
    /// '$.data.severity == "HIGH" || $.data.severity == "CRITICAL"'.
    #[arg(long)]
    filter: Option<String>,
    /// Payload fields to mask, e.g. phone or customer.phone (repeatable).
    #[arg(long = "mask")]
    masked: Vec<String>,
    /// Per-attempt timeout for this endpoint (at most 5m; the sidecar
    /// uses at most a fifth of PGWEBHOOKS_LEASE).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Concurrent requests to this endpoint.
    #[arg(long)]
    max_in_flight: Option<i32>,
    /// Requests per 10 s, shared by every replica.
    #[arg(long)]
    rate_limit: Option<i32>,
    /// Deliver each row's events in order (a later event waits until the
    /// earlier one is delivered or dead); --ordered=false turns it off.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    ordered: Option<bool>,
}

/// `Some("")` clears (`None` in the row), `Some(x)` sets, `None` keeps.
fn clearable(given: &Option<String>, current: &mut Option<String>) {
    if let Some(v) = given {
        *current = Some(v.trim().to_owned()).filter(|v| !v.is_empty());
    }
}

/// A repeatable flag given replaces the list; empty entries are dropped.
fn replace_list(given: &[String], current: &mut Vec<String>) {
    if !given.is_empty() {
        *current = given
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
    }
}

/// Applies `flags` (and a new URL) to `e`, checking each value and the
/// result as a whole: the same checks for `add` (from the defaults) and
/// `update` (from the stored endpoint). The filter is checked by Postgres
/// afterwards.
fn apply(flags: &EndpointFlags, url: Option<&str>, e: &mut NewEndpoint) -> anyhow::Result<()> {
    if let Some(url) = url {
        check_url(url)?;
        e.url = url.to_owned();
    }
    if let Some(events) = &flags.events {
        e.event_types = split_patterns(&[events]);
        if e.event_types.is_empty() {
            bail!("--events needs at least one pattern (default: *)");
        }
    }
    clearable(&flags.tenant, &mut e.tenant_id);
    clearable(&flags.name, &mut e.name);
    if let Some(make) = flags.make {
        e.make = make;
    }
    if !flags.headers.is_empty() {
        let mut header_map = serde_json::Map::new();
        for h in flags.headers.iter().filter(|h| !h.trim().is_empty()) {
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("--header {h:?}: expected 'name: value'"))?;
            let k = k.trim().to_ascii_lowercase();
            reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .with_context(|| format!("--header {h:?}: invalid header name"))?;
            header_map.insert(k, serde_json::Value::String(v.trim().to_owned()));
        }
        e.headers = header_map;
    }
    replace_list(&flags.ignore_origins, &mut e.ignore_origins);
    if flags.no_ignore_origin {
        e.ignore_origins.clear();
    }
    if let Some(signature) = &flags.signature {
        let styles = split_patterns(&[signature]);
        if let Some(bad) = styles
            .iter()
            .find(|s| !["standard", "sha256-hex", "secret-header"].contains(&s.as_str()))
        {
            bail!("--signature {bad:?}: use standard, sha256-hex or secret-header");
        }
        e.signature_styles = styles;
    }
    clearable(&flags.signature_header, &mut e.signature_header);
    clearable(&flags.secret_header, &mut e.secret_header);
    if let Some(t) = &flags.body_template {
        e.body_template = if t.trim().is_empty() {
            None
        } else {
            let value: serde_json::Value = serde_json::from_str(t)
                .map_err(|err| anyhow::anyhow!("--body-template: not valid JSON: {err}"))?;
            Some(value)
        };
    }
    clearable(&flags.filter, &mut e.filter);
    replace_list(&flags.masked, &mut e.masked_fields);
    if let Some(t) = flags.timeout {
        if t > MAX_ENDPOINT_TIMEOUT {
            bail!(
                "--timeout {}: at most {} (and the sidecar uses at most a fifth of PGWEBHOOKS_LEASE, \
                 12s by default: a longer attempt would be taken over and sent twice)",
                humantime::format_duration(t),
                humantime::format_duration(MAX_ENDPOINT_TIMEOUT)
            );
        }
        e.timeout_ms = Some(t.as_millis().clamp(1, i32::MAX as u128) as i32);
    }
    if let Some(n) = flags.max_in_flight {
        e.max_in_flight = Some(n);
    }
    if let Some(n) = flags.rate_limit {
        e.rate_limit = Some(n);
    }
    if let Some(o) = flags.ordered {
        e.ordered = o;
    }
    // The whole: header names against the signature headers, templates
    // compiled, exactly as the sidecar will when it loads the endpoint.
    Shaping::compile(
        &serde_json::Value::Object(e.headers.clone()),
        e.body_template.as_ref(),
        e.signature_header.clone(),
        e.secret_header.clone(),
    )
    .and_then(|s| s.check_configured())
    .map_err(|m| anyhow::anyhow!("{m}"))?;
    Ok(())
}

/// The flags whose setting differs between `a` and `b`.
fn changed(a: &NewEndpoint, b: &NewEndpoint) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            out.push(name);
        }
    };
    check("url", a.url != b.url);
    check("name", a.name != b.name);
    check("events", a.event_types != b.event_types);
    check("tenant", a.tenant_id != b.tenant_id);
    check("make", a.make != b.make);
    check("header", a.headers != b.headers);
    check("ignore-origin", a.ignore_origins != b.ignore_origins);
    check("signature", a.signature_styles != b.signature_styles);
    check("signature-header", a.signature_header != b.signature_header);
    check("secret-header", a.secret_header != b.secret_header);
    check("body-template", a.body_template != b.body_template);
    check("filter", a.filter != b.filter);
    check("mask", a.masked_fields != b.masked_fields);
    check("timeout", a.timeout_ms != b.timeout_ms);
    check("max-in-flight", a.max_in_flight != b.max_in_flight);
    check("rate-limit", a.rate_limit != b.rate_limit);
    check("ordered", a.ordered != b.ordered);
    check("secret", !b.secret.is_empty());
    out
}

async fn pool(args: &DatabaseArgs) -> anyhow::Result<deadpool_postgres::Client> {
    let config = args.connection()?.bounded(&db::SessionBounds::tool());
    let pool = db::pool(config.clone(), 1);
    // The error says where it connected and why it failed.
    Ok(pool.get().await.map_err(|e| config.pool_error(e))?)
}

/// The URL's form (never echoed: it may hold a credential).
fn check_url(url: &str) -> anyhow::Result<()> {
    target::parse(url).map_err(|e| anyhow::anyhow!("invalid --url: {e}"))?;
    Ok(())
}

/// Resolves the URL's host and refuses a private target unless allowed. A
/// host that does not resolve now is only a warning: the sidecar checks
/// the addresses at every delivery.
async fn check_target(url: &str, allow_private: bool, refused: &str) -> anyhow::Result<()> {
    match target::check_resolved(url, allow_private).await {
        Ok(_) => {
            // Allowed by the flag alone: `run` must allow it too, or every
            // delivery is refused. One setting serves both: say which.
            if allow_private && !TargetArgs::allowed_by_environment() {
                if let Err(TargetError::Refused(r)) = target::check_resolved(url, false).await {
                    eprintln!(
                        "note: {} (allowed by --allow-private-targets); `pgwebhooks run` refuses to deliver to it \
                         unless it allows private targets too: set {}=true where both commands run \
                         (one setting for both), or pass --allow-private-targets to `run` as well",
                        r.what(),
                        TargetArgs::VAR
                    );
                }
            }
            Ok(())
        }
        Err(TargetError::Unresolved { host, source }) => {
            eprintln!(
                "warning: cannot resolve {host} now ({source}); its addresses are checked at every delivery"
            );
            Ok(())
        }
        Err(e) => bail!("{refused}: {e}"),
    }
}

fn secret_or_new(secret: Option<String>) -> anyhow::Result<(String, bool)> {
    match secret {
        Some(s) => {
            SigningKey::parse(&s).map_err(|e| anyhow::anyhow!("invalid secret: {e}"))?;
            Ok((s, false))
        }
        None => Ok((generate_secret().context("reading /dev/urandom")?, true)),
    }
}

/// The origins an endpoint skips: as given, else `inbound/*` for a Make.com
/// endpoint (a scenario's callback writes rows whose events would go back
/// to the same scenario), unless `--no-ignore-origin`.
fn origins_to_ignore(given: Vec<String>, none: bool, make: bool) -> Vec<String> {
    if given.is_empty() && make && !none {
        eprintln!("ignoring events of origin inbound/* (a callback's own changes go back to no Make scenario; --no-ignore-origin to change)");
        return vec!["inbound/*".to_owned()];
    }
    given
}

pub async fn endpoint(cmd: EndpointCommand) -> anyhow::Result<()> {
    match cmd {
        EndpointCommand::Add {
            db: args,
            url,
            secret,
            settings,
            targets,
        } => {
            let mut e = NewEndpoint::with_defaults();
            apply(&settings, Some(&url), &mut e)?;
            e.ignore_origins = origins_to_ignore(
                std::mem::take(&mut e.ignore_origins),
                settings.no_ignore_origin,
                e.make || is_make_url(&url),
            );
            let (secret, generated) = secret_or_new(secret)?;
            e.secret = secret.clone();
            check_target(&url, targets.allow_private_targets, "endpoint not added").await?;
            let mut client = pool(&args).await?;
            if let Some(f) = &e.filter {
                db::endpoints::check_filter(&client, f)
                    .await
                    .map_err(|m| anyhow::anyhow!("endpoint not added: {m}"))?;
            }
            let id = db::endpoints::add(&mut client, &e)
                .await
                .context("adding the endpoint")?;
            if generated {
                outln!("secret: {secret}");
            }
            outln!("{id}");
        }
        EndpointCommand::Update {
            db: args,
            id,
            url,
            secret,
            settings,
            targets,
        } => {
            if let Some(s) = &secret {
                SigningKey::parse(s).map_err(|e| anyhow::anyhow!("invalid secret: {e}"))?;
            }
            if let Some(url) = &url {
                check_url(url)?;
                check_target(
                    url,
                    targets.allow_private_targets,
                    &format!("endpoint {id} not updated"),
                )
                .await?;
            }
            let mut client = pool(&args).await?;
            let result = db::endpoints::update(&mut client, id, |before| {
                let mut after = before.clone();
                apply(&settings, url.as_deref(), &mut after).map_err(|e| format!("{e:#}"))?;
                after.secret = secret.clone().unwrap_or_default();
                Ok(after)
            })
            .await;
            let (before, after) = match result {
                Ok(Some(pair)) => pair,
                Ok(None) => bail!("no endpoint {id}"),
                Err(db::endpoints::UpdateError::Refused(m)) => bail!("endpoint {id} not updated: {m}"),
                Err(db::endpoints::UpdateError::Db(e)) => {
                    return Err(anyhow::Error::from(e)).context(format!("updating endpoint {id}"))
                }
            };
            let changes = changed(&before, &after);
            if changes.is_empty() {
                outln!("endpoint {id}: nothing changed");
            } else {
                outln!("endpoint {id} updated: {}", changes.join(", "));
            }
        }
        EndpointCommand::List {
            db: args,
            show_secrets,
        } => {
            let client = pool(&args).await?;
            let rows = db::endpoints::list(&client).await?;
            if rows.is_empty() {
                outln!("no endpoints (add one with `pgwebhooks endpoint add --url …`)");
            }
            for e in rows {
                let state = if e.enabled {
                    "enabled".to_owned()
                } else {
                    format!("disabled: {}", e.disabled_reason.as_deref().unwrap_or("-"))
                };
                outln!(
                    "{:>4}  {}  {}  events={}  tenant={}  {}{}",
                    e.id,
                    e.name.as_deref().unwrap_or("-"),
                    if show_secrets {
                        e.url.clone()
                    } else {
                        target::redact(&e.url)
                    },
                    e.event_types.join(","),
                    e.tenant_id.as_deref().unwrap_or("*"),
                    state,
                    if e.make { "  make.com" } else { "" }
                );
                for (s, exp) in &e.secrets {
                    let shown = if show_secrets {
                        s.as_str()
                    } else {
                        "••••••"
                    };
                    match exp {
                        Some(exp) => outln!("      secret {shown} (expires {exp})"),
                        None => outln!("      secret {shown}"),
                    }
                }
            }
        }
        EndpointCommand::Disable { db: args, id, reason } => {
            let client = pool(&args).await?;
            if !db::endpoints::set_enabled(&client, id, false, &reason).await? {
                bail!("no endpoint {id}");
            }
            outln!("endpoint {id} disabled; its deliveries wait until it is enabled");
        }
        EndpointCommand::Delete { db: args, id, force } => {
            let mut client = pool(&args).await?;
            let by = std::env::var("USER").ok();
            match db::endpoints::delete(&mut client, id, force, by.as_deref()).await? {
                Deleted::NotFound => bail!("no endpoint {id}"),
                Deleted::Refused(waiting) => bail!(
                    "endpoint {id} not deleted: {} deliveries wait ({}); let them finish, \
                     `pgwebhooks endpoint disable {id}` to keep them, or pass --force to drop them \
                     (recorded as a webhooks.endpoint.deleted event)",
                    waiting.total(),
                    waiting.describe()
                ),
                Deleted::Done {
                    deliveries,
                    dropped,
                    event,
                } => {
                    outln!("endpoint {id} deleted, with its {deliveries} deliveries and their attempts");
                    if let Some(event) = event {
                        outln!(
                            "dropped {} waiting deliveries ({}; first ids {}); recorded as event {event} \
                             (webhooks.endpoint.deleted)",
                            dropped.total(),
                            dropped.describe(),
                            dropped
                                .first_ids
                                .iter()
                                .map(i64::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                }
            }
        }
        EndpointCommand::Enable { db: args, id } => {
            let client = pool(&args).await?;
            if !db::endpoints::set_enabled(&client, id, true, "").await? {
                bail!("no endpoint {id}");
            }
            outln!("endpoint {id} enabled");
        }
        EndpointCommand::RotateSecret {
            db: args,
            id,
            secret,
            overlap,
        } => {
            let (secret, generated) = secret_or_new(secret)?;
            let mut client = pool(&args).await?;
            if !db::endpoints::rotate_secret(&mut client, id, &secret, overlap).await? {
                bail!("no endpoint {id}");
            }
            if generated {
                outln!("secret: {secret}");
            }
            outln!(
                "endpoint {id}: new secret active; previous secrets sign for another {}",
                humantime::format_duration(overlap)
            );
        }
        EndpointCommand::Test {
            db: args,
            id,
            event_type,
            sample,
            wait,
        } => {
            let sample = sample.as_deref().map(read_sample).transpose()?;
            let what = db::ops::TestEvent::from_parts(event_type, sample).map_err(anyhow::Error::msg)?;
            return endpoint_test(&args, id, &what, wait).await;
        }
    }
    Ok(())
}

/// `--sample FILE|-`: the JSON a test sends as the event's data.
fn read_sample(path: &str) -> anyhow::Result<serde_json::Value> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).context("--sample -: reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("--sample {path}: cannot read it"))?
    };
    let data: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("--sample {path}: not JSON"))?;
    if data.is_null() {
        bail!("--sample {path}: the event's data is null; give the JSON the event carries");
    }
    Ok(data)
}

/// How much of a test's body `endpoint test` prints.
const SHOWN_BODY: usize = 2048;

/// `pgwebhooks endpoint test`: queue one test delivery, say what it sends,
/// wait for its first attempt to be recorded, report it. A failed test is
/// not retried.
async fn endpoint_test(
    args: &DatabaseArgs,
    id: i64,
    what: &db::ops::TestEvent,
    wait: Duration,
) -> anyhow::Result<()> {
    let client = pool(args).await?;
    let queued = db::ops::endpoint_test(&client, id, what)
        .await
        .with_context(|| format!("testing endpoint {id}"))?;
    let delivery = queued.delivery_id;
    let event = &queued.event;
    let kind = match what {
        db::ops::TestEvent::Ping => "the test ping".to_owned(),
        db::ops::TestEvent::Latest(_) => format!(
            "a copy of the latest stored one{}",
            queued
                .source
                .as_deref()
                .map(|s| format!(", {s}"))
                .unwrap_or_default()
        ),
        db::ops::TestEvent::Sample { .. } => "your sample as its data".to_owned(),
    };
    outln!(
        "endpoint {id}: sending {} ({kind}) as delivery {delivery}, webhook-id {}",
        event.event_type,
        event.id
    );
    let snapshot = db::endpoints::load(&client).await?;
    match snapshot.get(id) {
        Some(ep) => {
            let (body, _) = event.request_for(ep);
            outln!("body ({} bytes): {}", body.len(), shown(&body, SHOWN_BODY));
            if event.is_ping() && ep.body_template.is_some() {
                outln!(
                    "(the ping goes as the standard envelope, not through this endpoint's body template; \
                     --event-type TYPE sends the latest stored event of that type as it is delivered, \
                     --event-type TYPE --sample FILE your own data as one)"
                );
            }
        }
        None => outln!("body: not shown (endpoint {id}'s configuration could not be loaded)"),
    }
    outln!("waiting up to {}", humantime::format_duration(wait));
    let deadline = tokio::time::Instant::now() + wait;
    let attempt = loop {
        if let Some(a) = db::ops::first_attempt(&client, delivery).await? {
            break a;
        }
        if tokio::time::Instant::now() >= deadline {
            db::ops::endpoint_test_cancel(&client, delivery).await?;
            bail!(
                "no attempt within {}: is `pgwebhooks run` running against this database? (the test was withdrawn)",
                humantime::format_duration(wait)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    db::ops::endpoint_test_cancel(&client, delivery).await?;
    let status = attempt
        .status
        .map_or("no answer".to_owned(), |s| format!("HTTP {s}"));
    outln!("{status} in {:.0} ms", attempt.duration_ms);
    if let Some(e) = attempt.error.as_deref().filter(|e| !e.is_empty()) {
        outln!("error: {e}");
    }
    if let Some(x) = attempt.excerpt.as_deref().filter(|x| !x.is_empty()) {
        outln!("answer: {}", x.chars().take(500).collect::<String>());
    }
    if attempt.status.is_some_and(|s| (200..300).contains(&s)) {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "endpoint {id} did not accept the test event ({status})"
        ))
    }
}

/// At most `max` bytes of `text` (cut at a character boundary), saying
/// how much was left out.
fn shown(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (the first {end} bytes)", &text[..end])
}

fn age(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) => humantime::format_duration(Duration::from_secs(s.max(0.0) as u64)).to_string(),
    }
}

/// `pgwebhooks status`.
pub async fn status(args: &DatabaseArgs) -> anyhow::Result<()> {
    let client = pool(args).await?;
    let s = db::ops::status(&client).await.context("reading the status")?;
    outln!(
        "backlog: {} waiting (oldest {}), {} not yet fanned out; dead letters: {}; NOTIFY queue {:.1}% used",
        s.waiting,
        age(s.oldest_seconds),
        s.not_fanned_out,
        s.dead_letters,
        s.notification_queue_usage * 100.0
    );
    if let Some((pid, secs, state)) = &s.holding_back {
        outln!(
            "warning: write transaction of backend {pid} ({state}) has been open for {}: \
             events committed after it started wait until it ends \
             (SELECT pg_terminate_backend({pid}) ends it; idle_in_transaction_session_timeout prevents it)",
            age(Some(*secs))
        );
    }
    for d in &s.degraded {
        outln!(
            "capture degraded: {} ({} event(s) went out unshaped or an option broke, last {} ago): {}\n  \
             fix it, then `pgwebhooks resend {} <row key>`; the table is healthy again at its next shaped write",
            d.table,
            d.failures,
            age(d.seconds_ago),
            d.last_error.as_deref().unwrap_or("-"),
            d.table
        );
    }
    outln!();
    outln!(
        "{:>4}  {:<40}  {:<12}  {:>8}  {:>6}  {:>10}  {:>8}  {:>7}",
        "id",
        "endpoint",
        "state",
        "pending",
        "dead",
        "1h tries",
        "success",
        "p95 ms"
    );
    for e in &s.endpoints {
        let mut name = e.endpoint.clone();
        if name.len() > 40 {
            name = format!("{}…", name.chars().take(39).collect::<String>());
        }
        outln!(
            "{:>4}  {:<40}  {:<12}  {:>8}  {:>6}  {:>10}  {:>8}  {:>7}",
            e.id,
            name,
            e.state,
            e.pending,
            e.dead,
            e.attempts_1h,
            e.success_rate.map_or("-".into(), |r| format!("{r:.1}%")),
            e.p95_ms.map_or("-".into(), |p| format!("{p:.0}")),
        );
        if let Some(reason) = &e.reason {
            outln!("      {reason}");
        }
        if let Some(f) = &e.last_failure {
            outln!(
                "      last failure {} ago ({}): {}",
                age(Some(f.seconds_ago)),
                f.at,
                f.reason()
            );
        }
    }
    if s.endpoints.is_empty() {
        outln!("(no endpoints: events are recorded and wait for one)");
    }
    if s.dead_letters > 0 {
        outln!(
            "\n{} dead letter(s): `pgwebhooks retry --dead` re-queues them",
            s.dead_letters
        );
    }
    Ok(())
}

/// `pgwebhooks retry`.
pub async fn retry(
    args: &DatabaseArgs,
    ids: &[i64],
    dead: bool,
    endpoint: Option<i64>,
) -> anyhow::Result<()> {
    let client = pool(args).await?;
    if !ids.is_empty() {
        let done = db::ops::retry(&client, ids).await?;
        for id in ids.iter().filter(|id| !done.contains(id)) {
            eprintln!("delivery {id}: not re-queued (no such delivery, already delivered, or in flight)");
        }
        outln!("re-queued {} of {} deliveries", done.len(), ids.len());
        if done.len() < ids.len() {
            bail!("some deliveries were not re-queued");
        }
    } else if dead || endpoint.is_some() {
        let n = db::ops::retry_dead(&client, endpoint).await?;
        outln!("re-queued {n} failed or dead deliveries");
    } else {
        bail!("name delivery ids, or pass --dead (all failed and dead) or --endpoint <id>");
    }
    Ok(())
}

/// `pgwebhooks resend`.
pub async fn resend(args: &DatabaseArgs, table: &str, row: &str, event: Option<&str>) -> anyhow::Result<()> {
    let client = pool(args).await?;
    let id = db::ops::resend(&client, table, row, event).await?;
    outln!("emitted a new event for {table} row {row}");
    outln!("{id}");
    Ok(())
}

/// `pgwebhooks replay`.
pub async fn replay(args: &DatabaseArgs, endpoint: i64, since: &str) -> anyhow::Result<()> {
    let client = pool(args).await?;
    let n = db::ops::replay(&client, endpoint, since).await?;
    outln!("re-queued {n} past event(s) for endpoint {endpoint} (original ids)");
    Ok(())
}
