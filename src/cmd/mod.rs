//! The command line's edge: one file per subcommand (`serve`, `check-config`, `keygen`,
//! `sign`, `send`, `failed`), each turning the library's results into printed lines and an
//! exit code: 0 ok, 1 a runtime failure (or events not delivered), 2 usage or config.
//!
//! Only this module prints to stdout/stderr for a person, exits, or uses `anyhow`; nothing
//! below it imports it (`main.rs` parses the arguments and calls [`run`]).

pub mod args;
mod check_config;
mod failed;
mod keygen;
mod send;
mod serve;
mod sign;

use args::{Cli, Command};
use std::process::ExitCode;

/// Success.
pub const EXIT_OK: u8 = 0;
/// A runtime failure, or some events were not delivered.
pub const EXIT_FAILED: u8 = 1;
/// Usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// Prints a configuration error to stderr, one problem per line, each after the file's path
/// (an unreadable file's message names the path itself, once).
fn print_config_error(path: &std::path::Path, e: &crate::config::ConfigError) {
    for one in e.all() {
        match one {
            crate::config::ConfigError::Io { .. } => eprintln!("{one}"),
            _ => eprintln!("{}: {one}", path.display()),
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Runs the parsed command line; errors that reach here are printed as `error: ...`, exit 1
/// (usage and config errors are printed where they are found, exit 2).
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve { config, log_format } => serve::run(&config, log_format),
        Command::CheckConfig { config, explain } => Ok(check_config::run(&config, explain)),
        Command::Send(args) => runtime().map(|rt| rt.block_on(send::run(*args))),
        Command::Failed { cmd } => runtime().map(|rt| rt.block_on(failed::run(cmd))),
        Command::Keygen => keygen::run(),
        Command::Sign {
            secret_env,
            scheme,
            id,
            timestamp,
            file,
        } => sign::run(&secret_env, &scheme, id, timestamp, file.as_deref()),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "vfgate", &mut std::io::stdout());
            Ok(EXIT_OK)
        }
        Command::Man => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .map(|()| EXIT_OK)
            .map_err(Into::into),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
