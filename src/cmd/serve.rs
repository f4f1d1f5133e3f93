//! `vfgate serve`: load the config (exit 2 naming each key on an error; a sink or TLS
//! setting that cannot be built is one too), then run the gateway in the foreground until
//! SIGTERM/SIGINT (a runtime failure: exit 1). Owns: that exit code only; what runs is
//! `crate::server`'s.

use super::{EXIT_OK, EXIT_USAGE};
use crate::config::Config;
use crate::server::ServeError;
use std::path::Path;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pingora_core=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs `serve --config FILE`.
pub fn run(config: &Path) -> anyhow::Result<u8> {
    init_logging();
    let cfg = match Config::load(config, crate::sinks::TYPES) {
        Ok(c) => c,
        Err(e) => {
            super::print_config_error(config, &e);
            return Ok(EXIT_USAGE);
        }
    };
    match crate::server::run(cfg, config) {
        Ok(()) => Ok(EXIT_OK),
        // A sink that cannot be built (an unwritable file path, a bad CA file) or TLS
        // settings that do not load are the config's fault, as check-config's errors are.
        Err(ServeError::Config(e)) => {
            super::print_config_error(config, &e);
            Ok(EXIT_USAGE)
        }
        Err(e @ ServeError::Tls(_)) => {
            eprintln!("{}: {e}", config.display());
            Ok(EXIT_USAGE)
        }
        Err(e) => Err(e.into()),
    }
}
