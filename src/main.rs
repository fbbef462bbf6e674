//! The `pgwebhooks` command line. `anyhow` lives here and nowhere else.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgwebhooks::config::{self, DatabaseArgs};
use pgwebhooks::db;

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
}

fn main() -> ExitCode {
    // The config file must be in the environment before clap reads it.
    if let Some(path) = config_file_from_args() {
        if let Err(e) = config::load_env_file(&path) {
            eprintln!("pgwebhooks: {e}");
            return ExitCode::from(2);
        }
    }
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgwebhooks: {e:#}");
            ExitCode::FAILURE
        }
    }
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

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PGWEBHOOKS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Migrate { db: args, example } => {
            let mut client = db::connect(&args.connection()?).await?;
            let report = db::migrate::run(&mut client, example).await.context("migrate")?;
            if report.applied.is_empty() {
                println!("migrations: up to date");
            } else {
                for m in &report.applied {
                    println!("applied {m}");
                }
            }
            println!("sql definitions applied: {} file(s)", report.sql_files);
            Ok(ExitCode::SUCCESS)
        }
    }
}
