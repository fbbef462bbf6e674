//! The `pgwebhooks` command line. `anyhow` lives here and nowhere else.

use std::path::PathBuf;
use std::process::ExitCode;

mod cli;
mod out;

use out::outln;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgwebhooks::config::{self, DatabaseArgs, RunArgs};
use pgwebhooks::db;
use pgwebhooks::sidecar::Sidecar;
use tokio_util::sync::CancellationToken;

/// Postgres-native webhooks: triggers write an outbox in your transaction;
/// this sidecar delivers signed webhooks and applies callbacks.
///
/// Configuration comes from the environment (each option names its
/// variable); PGWEBHOOKS_CONFIG may name a KEY=VALUE file loaded first
/// (variables already set win).
#[derive(Debug, Parser)]
#[command(name = "pgwebhooks", version, max_term_width = 100)]
struct Cli {
    /// A KEY=VALUE file of settings, loaded before the environment is read.
    #[arg(long, env = "PGWEBHOOKS_CONFIG", global = true)]
    config: Option<PathBuf>,

    /// Log format: "text" (human-readable) or "json".
    #[arg(long, env = "PGWEBHOOKS_LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once from the command line")]
enum Command {
    /// Apply the embedded migrations and the SQL in sql/ (idempotent; safe
    /// when several replicas start at once).
    Migrate {
        #[command(flatten)]
        db: DatabaseArgs,
        /// Also install the example app (schema `app`).
        #[arg(long)]
        example: bool,
    },
    /// Run the sidecar: deliver events until SIGTERM/SIGINT, then stop
    /// gracefully (in-flight attempts finish or are released).
    #[command(after_help = RUN_AFTER_HELP)]
    Run(RunArgs),
    /// Manage subscriptions without SQL.
    #[command(subcommand)]
    Endpoint(cli::EndpointCommand),
    /// The whole loop on an embedded default: a throwaway local Postgres,
    /// the example app, a receiver that verifies signatures, traffic, a
    /// callback, and a live view (Ctrl-C stops and removes everything).
    /// Without the PostgreSQL server binaries it installs them first on
    /// Debian or Ubuntu (apt-get, as root or with `sudo -n`, each command
    /// printed before it runs); elsewhere it names the command and exits 1.
    Demo {
        /// Run once, print what was seen, exit 0 only if every webhook
        /// arrived verified and the callback was applied (1 if not, 130 if
        /// stopped by Ctrl-C first).
        #[arg(long)]
        check: bool,
    },
    /// Backlog, oldest pending age, per-endpoint health, dead letters.
    Status {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Re-queue failed or dead deliveries (a fresh retry schedule each).
    Retry {
        #[command(flatten)]
        db: DatabaseArgs,
        /// Delivery ids.
        ids: Vec<i64>,
        /// Every failed and dead delivery.
        #[arg(long, conflicts_with = "ids")]
        dead: bool,
        /// Every failed and dead delivery of this endpoint.
        #[arg(long, conflicts_with = "ids")]
        endpoint: Option<i64>,
    },
    /// Emit a fresh event (new id) for an existing row, e.g. `resend app.appointments 42`.
    Resend {
        #[command(flatten)]
        db: DatabaseArgs,
        /// The table (schema-qualified).
        table: String,
        /// The row's primary key.
        row_id: String,
        /// The event type to send (default: the row's latest).
        #[arg(long)]
        event: Option<String>,
    },
    /// Re-deliver past events to one endpoint, with their original ids.
    Replay {
        #[command(flatten)]
        db: DatabaseArgs,
        /// The endpoint's id (see `pgwebhooks endpoint list`).
        #[arg(long)]
        endpoint: i64,
        /// A timestamp (2024-05-01 10:00Z) or a relative time ("1 hour ago").
        #[arg(long)]
        since: String,
    },
}

const RUN_AFTER_HELP: &str = "\
Endpoints from the environment (created or updated at start-up as env:<VAR>;
an unset variable means no endpoint — events are still recorded):
  MAKE_WEBHOOK_APPOINTMENTS_URL        appointment.*
  MAKE_WEBHOOK_MESSAGES_URL            message.*
  MAKE_WEBHOOK_COHORT_ENROLLMENTS_URL  cohort.enrollment.*
  MAKE_WEBHOOK_COHORT_MESSAGES_URL     cohort.message.*
  MAKE_WEBHOOK_SUPPORT_TICKETS_URL     ticket.*
  MAKE_WEBHOOK_PAYMENTS_URL            payment.*, enrollment.*
  MAKE_WEBHOOK_ERRORS_URL              error.*
  WEBHOOK_URL, MAKE_WEBHOOK_ADMIN_URL  every event no URL above claims
  WEBHOOK_SECRET                       their signing secret (generated if unset)
They skip events caused by callbacks (origin inbound/*).

Logging:
  PGWEBHOOKS_LOG (or RUST_LOG)         log filter [default: info], e.g. debug or
                                       pgwebhooks=debug,warn

Logs go to stderr. At warn: one line per misconfiguration at start-up
(no inbound secret, no endpoints, disabled endpoints, refused targets), and
refused targets, unanswered attempts, 5xx/429 and other failed answers, dead
letters and paused endpoints at most once per endpoint and kind per minute,
with the endpoint's id, name and redacted URL, the reason and a count.";

fn main() -> ExitCode {
    // The config file must be in the environment before clap reads it.
    if let Some(path) = config_file_from_args() {
        if let Err(e) = config::load_env_file(&path) {
            eprintln!("pgwebhooks: {e}");
            return ExitCode::from(2);
        }
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match env_value_error(&e, std::env::args().skip(1).collect(), &|v| {
            std::env::var_os(v).is_some()
        }) {
            Some(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    // The demo's own output is the view: only problems are logged by default.
    let default_filter = if matches!(cli.command, Command::Demo { .. }) {
        "warn,deadpool=error"
    } else {
        "info"
    };
    init_tracing(cli.log_format, default_filter);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        // The reader of our stdout went away (`status | head -1`): it has
        // what it wanted; nothing to say, and not a failure.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<out::Closed>()
                    .is_some_and(out::Closed::is_broken_pipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgwebhooks: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// clap names the flag of a value it could not parse, even when the value
/// came from the environment. When the flag is not on the command line and
/// its variable is set, this says the variable instead:
/// `PGWEBHOOKS_TIMEOUT: invalid duration 'abc': …`.
fn env_value_error(e: &clap::Error, args: Vec<String>, is_set: &dyn Fn(&str) -> bool) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    if !matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return None;
    }
    let ContextValue::String(flag) = e.get(ContextKind::InvalidArg)? else {
        return None;
    };
    let long = flag.strip_prefix("--")?.split([' ', '=']).next()?.to_owned();
    // The subcommand the arguments name (global options are everywhere).
    let mut cmd = Cli::command();
    cmd.build();
    for a in &args {
        if let Some(sub) = cmd.find_subcommand(a) {
            cmd = sub.clone();
        }
    }
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()))?;
    let var = arg.get_env()?.to_str()?.to_owned();
    let on_command_line = args
        .iter()
        .any(|a| *a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
    if on_command_line || !is_set(&var) {
        return None;
    }
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) if !arg.is_hide_env_values_set() => Some(v.clone()),
        _ => None,
    };
    let reason = std::error::Error::source(e).map(|s| s.to_string());
    let valid = match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(v)) => Some(format!("expected one of {}", v.join(", "))),
        _ => None,
    };
    let mut out = format!("{var}: ");
    match (&value, &reason) {
        (Some(v), Some(r)) if r.contains(v.as_str()) => out.push_str(r),
        (Some(v), Some(r)) => out.push_str(&format!("invalid value '{v}': {r}")),
        (Some(v), None) => out.push_str(&format!("invalid value '{v}'")),
        (None, Some(r)) => out.push_str(&format!("invalid value: {r}")),
        (None, None) => out.push_str("invalid value"),
    }
    if let (Some(valid), None) = (valid, &reason) {
        out.push_str(&format!(" ({valid})"));
    }
    out.push_str(&format!(" (set by the environment; --{long} overrides it)"));
    Some(out)
}

/// The error and its causes, each said once: a cause whose text the
/// previous message already holds is skipped, and one that holds the
/// previous message replaces it.
fn error_chain(e: &anyhow::Error) -> String {
    chain_text(e.chain().map(|c| c.to_string()))
}

fn chain_text(messages: impl Iterator<Item = String>) -> String {
    let mut parts: Vec<String> = Vec::new();
    for text in messages {
        let text = text.trim().to_owned();
        let lower = text.to_lowercase();
        match parts.last_mut() {
            Some(last) if last.to_lowercase().contains(&lower) => {}
            Some(last) if lower.contains(&last.to_lowercase()) => *last = text,
            _ if text.is_empty() => {}
            _ => parts.push(text),
        }
    }
    parts.join(": ")
}

/// `--config FILE` / `--config=FILE` / `PGWEBHOOKS_CONFIG`, found before
/// clap parses (clap reads the environment the file may fill in).
fn config_file_from_args() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let s = arg.to_string_lossy();
        if s == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("PGWEBHOOKS_CONFIG").map(PathBuf::from)
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PGWEBHOOKS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colour only for a person at a terminal: a file, a pipe or `kubectl
    // logs` gets plain text, and NO_COLOR (https://no-color.org) is honoured.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Migrate { db: args, example } => {
            // No statement or lock timeout: a migration may run long over a big table.
            let mut client = db::connect(&args.connection()?.bounded(&db::SessionBounds::tool())).await?;
            let report = db::migrate::run(&mut client, example).await.context("migrate")?;
            if report.applied.is_empty() {
                outln!("migrations: up to date");
            } else {
                for m in &report.applied {
                    outln!("applied {m}");
                }
            }
            outln!("sql definitions applied: {} file(s)", report.sql_files);
            if !report.ddl_trigger {
                eprintln!(
                    "warning: the DDL event trigger was skipped (creating it needs a superuser, which this role is not): {}",
                    db::migrate::NO_DDL_TRIGGER
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let config = pgwebhooks::sidecar::SidecarConfig::from_args(&args)?;
            let sidecar = Sidecar::start(config).await.context("starting the sidecar")?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_on_shutdown(shutdown.clone()));
            sidecar.run_until(shutdown).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Endpoint(cmd) => {
            cli::endpoint(cmd).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { check } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_on_shutdown(shutdown.clone()));
            let outcome = pgwebhooks::demo::run(check, shutdown).await?;
            Ok(ExitCode::from(outcome.exit_code(check)))
        }
        Command::Status { db } => cli::status(&db).await.map(|_| ExitCode::SUCCESS),
        Command::Retry {
            db,
            ids,
            dead,
            endpoint,
        } => cli::retry(&db, &ids, dead, endpoint)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Resend {
            db,
            table,
            row_id,
            event,
        } => cli::resend(&db, &table, &row_id, event.as_deref())
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Replay { db, endpoint, since } => cli::replay(&db, endpoint, &since)
            .await
            .map(|_| ExitCode::SUCCESS),
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
async fn signal_on_shutdown(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every option and argument of every command says what it is.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help"
                    && id != "version"
                    && arg.get_help().is_none()
                    && arg.get_long_help().is_none()
                {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "pgwebhooks", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn causes_are_said_once() {
        let chain = |v: &[&str]| chain_text(v.iter().map(|s| s.to_string()));
        assert_eq!(chain(&["db error", "db error: ERROR: x"]), "db error: ERROR: x");
        assert_eq!(
            chain(&["reading the status", "boom", "Boom"]),
            "reading the status: boom"
        );
        assert_eq!(chain(&["a: b", "b"]), "a: b");
    }

    #[test]
    fn an_environment_value_error_names_the_variable_only_when_it_came_from_there() {
        let err = Cli::try_parse_from(["pgwebhooks", "run", "--timeout", "abc"]).unwrap_err();
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Parsed from the flag: clap's own message stands.
        assert_eq!(
            env_value_error(&err, args(&["run", "--timeout", "abc"]), &|_| true),
            None
        );
        // The same failure with the flag absent and the variable set.
        let message = env_value_error(&err, args(&["run"]), &|v| v == "PGWEBHOOKS_TIMEOUT").unwrap();
        assert!(
            message.starts_with("PGWEBHOOKS_TIMEOUT: invalid duration 'abc'"),
            "{message}"
        );
        assert_eq!(env_value_error(&err, args(&["run"]), &|_| false), None);
    }
}
