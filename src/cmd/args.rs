//! The shape of the command line (clap): every subcommand and its arguments. Parsing only:
//! what each does is in its own file beside this one. Owns: the clap types only; from the
//! crate it reads `config::defaults` (default values), nothing else.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?}: {e} (write e.g. 500ms, 30s, 30d)"))
}

/// vfgate: verify VF audit-event webhooks, drop duplicates, deliver to your SIEM.
#[derive(Debug, Parser)]
#[command(name = "vfgate", version, about)]
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
        #[arg(long, short, value_name = "FILE", env = "VFGATE_CONFIG")]
        config: PathBuf,
        /// Log line format on stderr (default: the config's log.format, else text). The
        /// level is the config's log.level; RUST_LOG overrides it.
        #[arg(long, value_enum, value_name = "FORMAT")]
        log_format: Option<LogFormatArg>,
    },
    /// Validate a configuration file: exit 0 with a summary, or 2 naming each key and reason.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short, value_name = "FILE", env = "VFGATE_CONFIG")]
        config: PathBuf,
        /// Also print what each source's `preset` expanded to (its keys, with the source's
        /// own overrides), as `key = value` lines.
        #[arg(long)]
        explain: bool,
    },
    /// Print a new random 32-byte secret (URL-safe base64, no padding).
    Keygen,
    /// Print the signature of FILE's bytes (or stdin): for the VF scheme the
    /// X-VF-Signature-256 value (`sha256=<hex>`); for another --scheme every header the
    /// request needs, one `Name: value` line each (ready for `curl -H`).
    Sign {
        /// Environment variable holding the secret.
        #[arg(long, value_name = "NAME")]
        secret_env: String,
        /// The receiving source's scheme.
        #[command(flatten)]
        scheme: Box<SchemeArgs>,
        /// The event id to sign (standard-webhooks' webhook-id, hmac's --id-header);
        /// default: the body's event_id.
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// Unix seconds to sign as the time (standard-webhooks); default: now.
        #[arg(long, value_name = "UNIX")]
        timestamp: Option<i64>,
        /// File to sign; stdin when absent or `-`.
        file: Option<PathBuf>,
    },
    /// Sign and deliver events like the reference sender: an NDJSON file, a test event, or a
    /// generated load. Exit 0 when all were delivered, 1 when some failed, 2 on usage errors.
    Send(Box<SendArgs>),
    /// Inspect, replay and purge failed deliveries.
    Failed {
        /// What to do.
        #[command(subcommand)]
        cmd: FailedCmd,
    },
    /// Print the shell completion script for SHELL to stdout, e.g.
    /// `vfgate completions bash > /etc/bash_completion.d/vfgate`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, e.g. `vfgate man | man -l -`.
    Man,
}

/// `serve --log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, message, fields).
    Json,
}

/// `--scheme` and its options, shared by `sign` and `send`.
#[derive(Debug, Clone, Args)]
pub struct SchemeArgs {
    /// Signature scheme of the receiving source: vf (default), standard-webhooks (the
    /// secret is the `whsec_...` text) or hmac (with --hmac-header).
    #[arg(long, value_parser = ["vf", "standard-webhooks", "hmac"])]
    pub scheme: Option<String>,
    /// Sign as the provider preset P does (github, shopify, slack, stripe,
    /// standard-webhooks): the scheme, headers and signed layout of a source with
    /// `preset = "P"`.
    #[arg(long, value_name = "P", conflicts_with_all = ["scheme", "hmac_header", "hmac_prefix", "hmac_encoding", "hmac_algorithm", "id_header", "type_header"])]
    pub preset: Option<String>,
    /// hmac: the signature header, e.g. X-Hub-Signature-256.
    #[arg(long, value_name = "NAME")]
    pub hmac_header: Option<String>,
    /// hmac: text before the MAC, e.g. `sha256=` (default: none).
    #[arg(long, value_name = "TEXT")]
    pub hmac_prefix: Option<String>,
    /// hmac: the MAC's encoding (default hex).
    #[arg(long, value_parser = ["hex", "base64"])]
    pub hmac_encoding: Option<String>,
    /// hmac: the hash (default sha256).
    #[arg(long, value_parser = ["sha256", "sha512", "sha1"])]
    pub hmac_algorithm: Option<String>,
    /// hmac: send the event's event_id in this header too, e.g. X-GitHub-Delivery (for a
    /// source whose fields.event_id is that header).
    #[arg(long, value_name = "NAME")]
    pub id_header: Option<String>,
    /// hmac: send the event's event_type in this header too, e.g. X-GitHub-Event.
    #[arg(long, value_name = "NAME")]
    pub type_header: Option<String>,
}

/// `vfgate send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Target URL, e.g. http://127.0.0.1:8080/v1/events.
    #[arg(long)]
    pub target: String,
    /// Environment variable holding the signing secret.
    #[arg(long, value_name = "NAME")]
    pub secret_env: String,
    /// The receiving source's scheme.
    #[command(flatten)]
    pub scheme: SchemeArgs,
    /// X-VF-Webhook-Version to send (VF scheme).
    #[arg(long, default_value = "1")]
    pub version: String,
    /// Extra header, `'Name: value'` (repeatable).
    #[arg(long = "header", value_name = "'K: V'")]
    pub headers: Vec<String>,
    /// Timeout of one attempt.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub timeout: Duration,
    /// Waits before each retry (default 1s,5s,30s,2m,10m, the reference sender's).
    #[arg(long, value_delimiter = ',', value_parser = duration)]
    pub retry_schedule: Option<Vec<Duration>>,
    /// Failed-deliveries directory.
    #[arg(long, default_value = crate::config::defaults::FAILED_DIR)]
    pub failed_dir: PathBuf,
    /// PEM bundle of CAs to trust for an https target.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Send one generated test event (event_type vf.test) and print the answer.
    #[arg(long, conflicts_with_all = ["generate", "file"])]
    pub test: bool,
    /// Generate N unique valid events and send them (load generation; no retries).
    #[arg(long, value_name = "N")]
    pub generate: Option<u64>,
    /// Events per second (default: as fast as possible).
    #[arg(long, requires = "generate")]
    pub rate: Option<f64>,
    /// Approximate size of each generated event, in bytes.
    #[arg(long, default_value_t = 1024, requires = "generate")]
    pub size: usize,
    /// Number of organisations the generated events belong to.
    #[arg(long, default_value_t = 10)]
    pub orgs: usize,
    /// Deliveries in flight at once (events of one org stay in order).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Percentage of generated events sent a second time, as retries would be.
    #[arg(long, default_value_t = 0.0, requires = "generate")]
    pub duplicates: f64,
    /// Print only failures.
    #[arg(long)]
    pub quiet: bool,
    /// Write one line per event to this file: `event_id<TAB>status` (the final HTTP status,
    /// or `error`), to check afterwards which events were acknowledged.
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,
    /// NDJSON file of events, one per line; stdin when absent or `-`.
    #[arg(conflicts_with = "generate")]
    pub file: Option<PathBuf>,
}

/// `vfgate failed ...`.
#[derive(Debug, Subcommand)]
pub enum FailedCmd {
    /// Table of stored failed deliveries.
    List {
        /// Store directory.
        #[arg(long, default_value = crate::config::defaults::FAILED_DIR)]
        dir: PathBuf,
    },
    /// One entry in full (target URL, attempts, event).
    Show {
        /// Entry id.
        id: String,
        /// Store directory.
        #[arg(long, default_value = crate::config::defaults::FAILED_DIR)]
        dir: PathBuf,
    },
    /// Re-send one entry (or all) with its recorded target, version and secret reference; a
    /// delivered entry is removed.
    Replay {
        /// Entry id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every entry.
        #[arg(long)]
        all: bool,
        /// Store directory.
        #[arg(long, default_value = crate::config::defaults::FAILED_DIR)]
        dir: PathBuf,
        /// Sign with this environment variable instead of the recorded reference.
        #[arg(long, value_name = "NAME")]
        secret_env: Option<String>,
        /// Header to send, `'Name: value'` (values are not stored; repeatable).
        #[arg(long = "header", value_name = "'K: V'")]
        headers: Vec<String>,
        /// Timeout of the attempt.
        #[arg(long, default_value = "30s", value_parser = duration)]
        timeout: Duration,
        /// PEM bundle of CAs to trust.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// The gateway's config: needed for dead letters of a spooled sink, which are
        /// delivered to that sink again (and only to it).
        #[arg(long, value_name = "FILE", env = "VFGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Delete entries older than a duration.
    Purge {
        /// e.g. 30d.
        #[arg(long, value_parser = duration)]
        older_than: Duration,
        /// Store directory.
        #[arg(long, default_value = crate::config::defaults::FAILED_DIR)]
        dir: PathBuf,
    },
}

/// Parses a `--header "Name: value"` argument (the name lowercased, checked as an HTTP token).
pub fn parse_header(s: &str) -> Result<(String, Vec<u8>), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} is not \"Name: value\""))?;
    let k = k.trim().to_ascii_lowercase();
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!("header name {k:?} is not valid"));
    }
    Ok((k, v.trim().as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn header_arguments_are_name_colon_value() {
        assert_eq!(
            super::parse_header("X-Trace:  abc ").unwrap(),
            ("x-trace".to_string(), b"abc".to_vec())
        );
        assert!(super::parse_header("no colon").is_err());
        assert!(super::parse_header("bad name: v").is_err());
    }
}
