//! `mta-server`: the MTA as a program — SMTP and HTTP injection, durable spool, delivery.
//!
//! # Layout
//! - `cli`: the command line (README, docs/operations.md); `main` maps outcomes to exit codes (0, 1, 2).
//! - `config` / `duration` (in `lib.rs`, shared with fuzzing): the TOML config, its defaults and validation.
//! - `serve`: start-up, listeners, signals and graceful stop.
//! - `smtp_handler`: the policy between SMTP sessions and the engine (relay control, AUTH, queueing).
//! - `http`: the HTTP API (injection, status, health, metrics).
//! - `transfer`: queue transfer to a peer node (`POST /api/v1/queue/transfer`, `queue transfer`).
//! - `spool_cmd`: offline spool tools; `secrets`: key and password hashes; `tls`, `telemetry`.

mod cli;
mod http;
mod secrets;
mod serve;
mod smtp_handler;
mod spool_cmd;
mod suppression_cmd;
mod telemetry;
mod tls;
mod transfer;

use std::io::Read;
use std::process::ExitCode;

use clap::Parser;
use mta_server::config;

use crate::cli::{Cli, Command, QueueCommand, SpoolCommand, SuppressionCommand};
use crate::config::Config;

/// Failures that are the user's to fix: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p).map_err(|e| UsageError(e.to_string()).into()),
        None => Ok(Config::default()),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = cli.config.clone();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let config = load_config(config_path.as_deref())?;
            telemetry::init_logs(config.log.format == config::LogFormat::Json);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("mta-worker").build()?;
            runtime.block_on(serve::run(config))
        }
        Command::CheckConfig => {
            let Some(path) = config_path else {
                return Err(UsageError("check-config needs --config PATH (or MTA_CONFIG)".into()).into());
            };
            let config = load_config(Some(&path))?;
            print!("{}", config.to_toml_redacted());
            Ok(())
        }
        Command::Spool { command } => {
            let config = load_config(config_path.as_deref())?;
            match command {
                SpoolCommand::List { json } => spool_cmd::list(&config, json),
                SpoolCommand::Show { id, raw } => spool_cmd::show(&config, &id, raw),
            }
        }
        Command::Suppression { command } => {
            let config = load_config(config_path.as_deref())?;
            match command {
                SuppressionCommand::Import { file, tenant } => {
                    suppression_cmd::import(&config, &file, tenant.as_deref())
                }
                SuppressionCommand::Export { tenant } => suppression_cmd::export(&config, tenant.as_deref()),
            }
        }
        Command::Queue { http, token, json, command } => {
            let config = load_config(config_path.as_deref())?;
            let url = http.unwrap_or_else(|| format!("http://{}", config.http.listen));
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            match command {
                None => runtime.block_on(http::client::queue_summary(&url, token.as_deref(), json)),
                Some(QueueCommand::Transfer { to, to_token, domain }) => runtime
                    .block_on(http::client::queue_transfer(&url, token.as_deref(), &to, &to_token, domain.as_deref())),
            }
        }
        Command::HashKey { password } => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            let secret = input.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                return Err(UsageError("hash-key: nothing on stdin".into()).into());
            }
            if password {
                println!("{}", secrets::argon2_hash(secret).map_err(|e| anyhow::anyhow!("argon2: {e}"))?);
            } else {
                println!("{}", secrets::sha256_hash(secret));
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mta-server: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
