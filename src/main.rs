//! The `vfgate` binary: parse the command line, load config, run.

use anyhow::Context;
use base64::Engine;
use clap::Parser;
use std::io::{Read, Write};
use std::process::ExitCode;
use vfgate::cli::{Cli, Command};
use vfgate::config::Config;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pingora_core=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            init_logging();
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return Ok(ExitCode::from(2));
                }
            };
            vfgate::server::run(cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            // Validation only: nothing is opened, created or contacted.
            match Config::load(&config) {
                Ok(c) => {
                    for w in &c.warnings {
                        eprintln!("warning: {w}");
                    }
                    println!("{}", c.summary());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Send(args) => Ok(ExitCode::from(
            runtime()?.block_on(vfgate::sender::run::send(args)),
        )),
        Command::Failed { cmd } => Ok(ExitCode::from(
            runtime()?.block_on(vfgate::sender::run::failed(cmd)),
        )),
        Command::Keygen => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
            println!(
                "{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign { secret_env, file } => {
            let secret = vfgate::secret::SecretRef::Env { env: secret_env }
                .load()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut body = Vec::new();
            match file.as_deref() {
                None => std::io::stdin().read_to_end(&mut body)?,
                Some(p) if p.as_os_str() == "-" => std::io::stdin().read_to_end(&mut body)?,
                Some(p) => {
                    body =
                        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                    body.len()
                }
            };
            let mut out = std::io::stdout();
            writeln!(out, "{}", vfgate::verify::sign(&secret, &body))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
