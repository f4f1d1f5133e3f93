//! `vfgate serve`: load the config (exit 2 naming each key on an error; a sink or TLS
//! setting that cannot be built is one too), then run the gateway in the foreground until
//! SIGTERM/SIGINT (a runtime failure: exit 1). Owns: that exit code only; what runs is
//! `crate::server`'s.

use super::args::LogFormatArg;
use super::{EXIT_OK, EXIT_USAGE};
use crate::config::{Config, LogFormat};
use crate::server::ServeError;
use std::path::Path;

/// Logs to stderr in `format`, at `level` unless `RUST_LOG` is set (it overrides).
fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},pingora_core=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // `timestamp`, `level`, `target`, then `message` and the event's own fields at the
        // top level (flattened), one object per line.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Runs `serve --config FILE [--log-format text|json]`.
pub fn run(config: &Path, log_format: Option<LogFormatArg>) -> anyhow::Result<u8> {
    let cfg = match Config::load(config, crate::sinks::TYPES) {
        Ok(c) => c,
        Err(e) => {
            super::print_config_error(config, &e);
            return Ok(EXIT_USAGE);
        }
    };
    let format = match log_format {
        Some(LogFormatArg::Text) => LogFormat::Text,
        Some(LogFormatArg::Json) => LogFormat::Json,
        None => cfg.log.format,
    };
    init_logging(format, &cfg.log.level);
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
