//! The command line (README: "Command line").

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A durable store-and-forward MTA.
#[derive(Debug, Parser)]
#[command(name = "mta-server", version, about)]
pub struct Cli {
    /// TOML config file; every key is optional.
    #[arg(long, global = true, env = "MTA_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Print the effective config, or name the bad key and exit 2.
    CheckConfig,
    /// Offline spool tools (server stopped).
    Spool {
        /// Which tool.
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Suppression list CSV import/export (offline: the server must be stopped).
    Suppression {
        /// Which tool.
        #[command(subcommand)]
        command: SuppressionCommand,
    },
    /// Per-queue summary from a running server (or, with `transfer`, move its queue to a peer).
    Queue {
        /// Base URL of the server's HTTP API (default: from the config's http.listen).
        #[arg(long, global = true)]
        http: Option<String>,
        /// API key.
        #[arg(long, global = true)]
        token: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// A queue action (none: print the summary).
        #[command(subcommand)]
        command: Option<QueueCommand>,
    },
    /// Read an API key (or, with --password, an SMTP password) on stdin and print its hash for the config.
    HashKey {
        /// Make an argon2id password hash for `[[smtp.users]]` instead of a sha256 API-key hash.
        #[arg(long)]
        password: bool,
    },
}

/// `suppression` tools.
#[derive(Debug, Subcommand)]
pub enum SuppressionCommand {
    /// Add the rows of a CSV file (`-`: stdin) with columns email,reason,tenant; nothing is stored if a row is bad.
    Import {
        /// CSV file, or `-` for stdin.
        file: String,
        /// Tenant for rows when the file has no `tenant` column (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Write every entry as CSV (email,reason,tenant,created) to stdout.
    Export {
        /// Only this tenant's entries.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// `queue` actions on a running server.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Move queued messages (all, or one destination domain) to a peer node and wait until done.
    Transfer {
        /// The peer's API base URL (`http://host:port`).
        #[arg(long)]
        to: String,
        /// An API key of the peer.
        #[arg(long = "to-token")]
        to_token: String,
        /// Only this destination domain.
        #[arg(long)]
        domain: Option<String>,
    },
}

/// `spool` tools.
#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Every spooled message: id, size, received at, sender, recipients and states.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// One message.
    Show {
        /// Queue id.
        id: String,
        /// Write the stored message bytes exactly.
        #[arg(long)]
        raw: bool,
    },
}
