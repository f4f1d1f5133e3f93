//! The command line: `serve`, `check-config`, `keygen`, `sign`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// vfgate: verify VF audit-event webhooks, drop duplicates, deliver to your SIEM.
#[derive(Debug, Parser)]
#[command(name = "vfgate", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway in the foreground (SIGTERM/SIGINT stop it gracefully).
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file: exit 0 with a summary, or 2 naming the key and reason.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a new random 32-byte secret (URL-safe base64, no padding).
    Keygen,
    /// Print the X-VF-Signature-256 value (`sha256=<hex>`) of FILE's bytes (or stdin).
    Sign {
        /// Environment variable holding the secret.
        #[arg(long, value_name = "NAME")]
        secret_env: String,
        /// File to sign; stdin when absent or `-`.
        file: Option<PathBuf>,
    },
}
