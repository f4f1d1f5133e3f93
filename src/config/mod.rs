//! Configuration: the validated types the runtime is built from ([`Config`] and its parts,
//! [`SinkConfig`], [`ConfigError`]) and the entry points [`Config::load`] / [`Config::parse`],
//! which read the TOML into its serde shape (`raw.rs`, `deny_unknown_fields`) and hand it to
//! `validate.rs`; the string value types are in `units.rs`, every default in [`defaults`].
//! The raw and unit types are re-exported here, so `crate::config::RawClientTls` or
//! `crate::config::DurationStr` keep resolving. Every error names the key path
//! (`sink.splunk.batch.max_events`) and the reason; secrets are loaded during validation, so
//! a missing env var or file is a config error, never a runtime surprise, and messages name
//! the reference (`env VF_SECRET`), never the value.
//!
//! A sink type's own keys are parsed and validated by the type itself: the loader is given
//! the catalog of sink types ([`SinkCatalog`], the gateway's is `crate::sinks::TYPES`), calls
//! each type's [`SinkKind::configure`] once, and keeps the typed settings it returns in
//! [`SinkConfig`], from which the sink is built without parsing again.
//!
//! Config is the bottom layer: from the crate it uses only `secret` and `time`, and must not
//! import sinks, server, ingest, spool, pipeline, sender or cmd.

use crate::secret::{Secret, SecretRef};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod defaults;
pub mod presets;
mod raw;
mod units;
mod validate;
pub use validate::{is_header_name, preset_scheme};

pub use raw::{
    OneOrMany, RawAdmin, RawBatch, RawClientTls, RawConfig, RawDedupe, RawLog, RawRetry, RawServer,
    RawServerTls, RawSinkCommon, RawSource, RawSourceSecret, RawSpool,
};
pub use units::{ByteSize, DurationStr, SizeError};

/// Secrets shorter than this are warned about (HMAC keys should be random and long).
pub const MIN_SECRET_BYTES: usize = 16;

/// A configuration problem: the key path and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// Config file path.
        path: String,
        /// Why.
        reason: String,
    },
    /// TOML syntax error (the message carries line and column).
    #[error("syntax: {0}")]
    Syntax(String),
    /// A key has a bad value.
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted key path, e.g. `sink.splunk.batch.max_events`.
        key: String,
        /// Why it is wrong.
        reason: String,
    },
    /// Several problems, in file order: one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
}

impl ConfigError {
    /// `errors` as one error: the error itself when there is one, else [`ConfigError::Many`].
    pub fn many(mut errors: Vec<ConfigError>) -> Self {
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            ConfigError::Many(errors)
        }
    }

    /// Every single problem (a [`ConfigError::Many`] flattened), for printing one per line.
    pub fn all(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Many(v) => v.iter().flat_map(ConfigError::all).collect(),
            e => vec![e],
        }
    }

    /// A bad value at `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Deserialises `value` into `T`, naming the failing key under `prefix` in the error.
pub fn from_value<T: serde::de::DeserializeOwned>(
    prefix: &str,
    value: toml::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let key = match (prefix.is_empty(), inner == ".") {
            (true, _) => inner,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{inner}"),
        };
        // toml's own message may repeat position info; keep the serde reason only.
        let msg = e.into_inner().to_string();
        let first = msg.lines().next().unwrap_or("").trim();
        ConfigError::invalid(key, humane(first))
    })
}

/// serde's wording with Rust's type names replaced by what a person writes in TOML: the
/// `expected usize` of a number key, and a fallback for any struct or untagged enum still
/// without its own `expecting` (each raw type has one).
fn humane(msg: &str) -> String {
    let mut m = msg.to_string();
    for (rust, person) in [
        ("expected usize", "expected a whole number of 0 or more"),
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected u32", "expected a whole number of 0 or more"),
        ("expected u16", "expected a whole number of 0 or more"),
        ("expected u8", "expected a whole number of 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a borrowed string", "expected a string"),
    ] {
        m = m.replace(rust, person);
    }
    if let Some(at) = m.find("expected struct ") {
        m.replace_range(at.., "expected a table { key = value, ... }");
    }
    if let Some(at) = m.find("data did not match any variant of untagged enum") {
        m.replace_range(at.., "not a value this key accepts");
    }
    without_quoted_value(&m)
}

/// serde quotes the value it refused (`invalid type: string "whsec_...", expected ...`): a
/// secret written in the wrong shape would be printed, logged and, on a reload, answered to
/// the admin API. The message keeps the kind of value and drops the value.
fn without_quoted_value(m: &str) -> String {
    let mut out = m.to_string();
    for lead in ["invalid type: string \"", "invalid value: string \""] {
        while let Some(at) = out.find(lead) {
            let start = at + lead.len() - 1;
            let Some(len) = out[start + 1..].find('"') else {
                out.truncate(start);
                break;
            };
            out.replace_range(start - 1..start + len + 2, "");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The validated configuration.

/// The validated configuration: what the runtime is built from.
#[derive(Debug, Clone)]
pub struct Config {
    /// Webhook listener.
    pub server: ServerConfig,
    /// Admin listener.
    pub admin: AdminConfig,
    /// Dedupe store.
    pub dedupe: DedupeConfig,
    /// The spool, when `[spool]` is present.
    pub spool: Option<SpoolConfig>,
    /// Sources, in file order.
    pub sources: Vec<SourceConfig>,
    /// Sinks by name (sorted).
    pub sinks: Vec<SinkConfig>,
    /// `serve`'s log.
    pub log: LogConfig,
    /// Warnings to log at start-up (inline secrets, TLS verification off).
    pub warnings: Vec<String>,
}

/// How `serve`'s log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields.
    Json,
}

/// `[log]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Line format (`serve --log-format` overrides it).
    pub format: LogFormat,
    /// Level or filter directives (`RUST_LOG` overrides them).
    pub level: String,
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen addresses.
    pub listen: Vec<SocketAddr>,
    /// SIGTERM grace period.
    pub grace_period: Duration,
    /// Largest accepted body.
    pub max_body_bytes: u64,
    /// Deadline for reading one body (408 `body_timeout`).
    pub body_timeout: Duration,
    /// Unverified body bytes held at once (beyond: 503 `overloaded`).
    pub max_inflight_body_bytes: u64,
    /// Open webhook connections at most.
    pub max_connections: usize,
    /// Deadline for a new connection's whole request head (then the connection is closed).
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next whole request head.
    pub keepalive_timeout: Duration,
    /// Peers whose `X-Forwarded-For` is believed enough to be logged with a refusal (a
    /// load balancer in front of vfgate); empty: never logged.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// TLS cert and key paths.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Worker threads.
    pub threads: usize,
}

/// `[admin]`, validated.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Bearer token of the `/admin/...` routes; `None` turns them off.
    pub token: Option<Secret>,
    /// Failed-deliveries store served by `/admin/failed`.
    pub failed_dir: PathBuf,
}

/// When spool appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// One fsync per group of concurrent requests (group commit).
    Batch,
    /// One fsync per event.
    Always,
    /// No fsync: a kill of the process loses nothing, a power loss may lose the tail.
    Never,
}

/// `[spool]`, validated.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Directory.
    pub dir: PathBuf,
    /// Disk budget.
    pub max_bytes: u64,
    /// Fsync policy.
    pub fsync: FsyncPolicy,
    /// Dead-letter age.
    pub max_age: Duration,
    /// Segment file size.
    pub segment_bytes: u64,
}

/// How a source acknowledges an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// 200 after every sink accepted the event.
    Forward,
    /// 202 after the event is in the spool.
    Spool,
}

/// Dedupe backend choice.
#[derive(Debug, Clone)]
pub enum DedupeBackend {
    /// In-process sharded table.
    Memory,
    /// Shared Redis.
    Redis(RedisConfig),
}

/// What to do when Redis fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Answer 503 so the sender retries (never a silent duplicate or loss).
    Reject,
    /// Forward without dedupe and count `vfgate_dedupe_errors_total`.
    Allow,
}

/// `[dedupe]` with `backend = "redis"`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Connection URL (credentials, if any, stay inside; never logged).
    pub url: Secret,
    /// `host:port` for logs.
    pub display: String,
    /// Password from a secret reference.
    pub password: Option<Secret>,
    /// Key prefix.
    pub key_prefix: String,
    /// Failure policy.
    pub on_error: OnError,
    /// Per-call timeout.
    pub timeout: Duration,
}

/// `[dedupe]`, validated.
#[derive(Debug, Clone)]
pub struct DedupeConfig {
    /// Backend.
    pub backend: DedupeBackend,
    /// Memory of a delivered id.
    pub ttl: Duration,
    /// Capacity bound.
    pub max_entries: u64,
    /// In-flight lifetime; `None`: the longest sink retry budget + 2 timeouts + 60 s.
    pub in_flight_ttl: Option<Duration>,
    /// Memory backend: the journal directory (`None`: `persist = false`, or Redis).
    pub journal: Option<PathBuf>,
    /// Memory backend, `on_full = "reject"`.
    pub reject_when_full: bool,
}

/// One configured secret of a source: an HMAC key, a Standard Webhooks `whsec_` or `whpk_`
/// key, or a shared secret's expected header value, by the source's scheme.
#[derive(Debug, Clone)]
pub struct SourceSecret {
    /// Where it came from (printable).
    pub reference: SecretRef,
    /// The key.
    pub secret: Secret,
    /// Unix seconds after which it no longer matches.
    pub not_after: Option<i64>,
}

/// Which event types a source streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeFilter {
    /// `"*"`.
    All,
    /// Exact types and prefixes (`"user."` for `"user.*"`).
    Some {
        /// Exact matches.
        exact: Vec<String>,
        /// Prefixes including the trailing dot.
        prefixes: Vec<String>,
    },
}

impl TypeFilter {
    /// Whether `event_type` is streamed.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            TypeFilter::All => true,
            TypeFilter::Some { exact, prefixes } => {
                exact.iter().any(|e| e == event_type)
                    || prefixes
                        .iter()
                        .any(|p| event_type.len() > p.len() && event_type.starts_with(p.as_str()))
            }
        }
    }
}

/// `[[source]]`, validated.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Name.
    pub name: String,
    /// Path.
    pub path: String,
    /// Secrets in configured order (positions are metric labels).
    pub secrets: Vec<SourceSecret>,
    /// Accepted versions.
    pub versions: Vec<String>,
    /// Whether the version header is mandatory.
    pub require_version: bool,
    /// Oldest accepted event.
    pub max_event_age: Duration,
    /// Furthest-ahead accepted event.
    pub max_future_skew: Duration,
    /// Event type filter.
    pub event_types: TypeFilter,
    /// Sink names.
    pub sinks: Vec<String>,
    /// Acknowledgement mode.
    pub ack: Ack,
    /// How requests are signed.
    pub scheme: Scheme,
    /// Where the event's fields are (schemes other than `vf`; empty for `vf`).
    pub fields: FieldMap,
    /// The preset the source named, and the `key = value` lines it expanded to (with the
    /// source's overrides), for `check-config --explain`.
    pub preset: Option<(&'static str, Vec<String>)>,
    /// The sender's handshake vfgate answers, if any.
    pub handshake: Option<Handshake>,
}

/// A source's signature scheme, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// `X-VF-Signature-256: sha256=<hex>` over the body, and `X-VF-Webhook-Version`.
    Vf,
    /// Standard Webhooks: `{webhook-id}.{webhook-timestamp}.{body}`, the id is the dedupe
    /// key and the timestamp must be within `tolerance` of now, either way.
    StandardWebhooks {
        /// `source.tolerance`.
        tolerance: Duration,
    },
    /// A body MAC in one header.
    Hmac(HmacScheme),
    /// The secret itself in a header, compared in constant time: authenticates the sender,
    /// does not protect the body (Okta event hooks).
    SharedSecret {
        /// The header, lower-case.
        header: String,
    },
}

/// A sender's handshake that vfgate answers itself (never forwarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Slack's `url_verification`: a signed POST whose body is `{"type":"url_verification",
    /// "challenge":...}` is answered 200 `{"challenge":...}`.
    Slack,
    /// Okta's one-time verification: a `GET` with `X-Okta-Verification-Challenge` and the
    /// shared secret is answered `{"verification":...}`.
    Okta,
}

impl Handshake {
    /// The config and metric name.
    pub fn as_str(self) -> &'static str {
        match self {
            Handshake::Slack => "slack",
            Handshake::Okta => "okta",
        }
    }
}

impl Scheme {
    /// The config and metric name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Scheme::Vf => "vf",
            Scheme::StandardWebhooks { .. } => "standard-webhooks",
            Scheme::Hmac(_) => "hmac",
            Scheme::SharedSecret { .. } => "shared-secret",
        }
    }
}

/// `source.hmac`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacScheme {
    /// The header, lower-case.
    pub header: String,
    /// Text before the MAC.
    pub prefix: String,
    /// The MAC's encoding.
    pub encoding: HmacEncoding,
    /// The hash.
    pub algorithm: HmacAlgorithm,
    /// When set, the header is a `key=value,key=value` list and the MACs are the values of
    /// this key (Stripe's `v1`; any one may match); otherwise the whole value after `prefix`.
    pub param: Option<String>,
    /// The signed timestamp, for a sender that signs one (Stripe, Slack).
    pub timestamp: Option<SignedTimestamp>,
}

/// A timestamp signed with the body: the message is `{before}{timestamp}{between}{body}`,
/// and the timestamp (unix seconds) must be within `tolerance` of now, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTimestamp {
    /// Where the timestamp is.
    pub from: TimestampFrom,
    /// Signed text before it (Slack's `v0:`).
    pub before: String,
    /// Signed text between it and the body (Stripe's `.`).
    pub between: String,
    /// The accepted distance from now.
    pub tolerance: Duration,
}

/// Where a signed timestamp is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimestampFrom {
    /// Its own header (Slack's `X-Slack-Request-Timestamp`), lower-case.
    Header(String),
    /// A key of the signature header's `key=value` list (Stripe's `t`).
    Param(String),
}

/// How an `hmac` MAC is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacEncoding {
    /// Hex digits, either case.
    #[default]
    Hex,
    /// Standard base64.
    Base64,
}

/// The hash of an `hmac` MAC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    /// SHA-256.
    #[default]
    Sha256,
    /// SHA-512.
    Sha512,
    /// SHA-1 (weak: warned about).
    Sha1,
}

/// Where one event field is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A JSON pointer into the body.
    Pointer(String),
    /// A request header (lower-case name).
    Header(String),
}

/// Where the event time comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeField {
    /// A JSON pointer to an RFC 3339 string or unix seconds; the age window applies, unless
    /// the scheme signs a timestamp (then the window is on that, and this is only the time).
    Pointer(String),
    /// The time of receipt: no age check (replays are bounded by the dedupe TTL only).
    Received,
    /// The signed timestamp of an `hmac` scheme that has one (checked against `tolerance`).
    Signed,
}

/// Where a non-`vf` source finds its event's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldMap {
    /// The id (`hmac`; `standard-webhooks` uses `webhook-id`).
    pub event_id: Option<Field>,
    /// The type.
    pub event_type: Option<Field>,
    /// The time (`hmac`; `standard-webhooks` uses `webhook-timestamp`).
    pub timestamp: Option<TimeField>,
    /// The organisation.
    pub org_id: Option<Field>,
}

/// Batching limits of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most events per batch.
    pub max_events: usize,
    /// Most bytes per batch (sum of event body sizes).
    pub max_bytes: u64,
    /// Wait for more events after the first.
    pub linger: Duration,
}

/// Common sink settings, validated.
#[derive(Debug, Clone)]
pub struct SinkCommon {
    /// Sink name (the table key).
    pub name: String,
    /// Type name.
    pub kind: String,
    /// Batching.
    pub batch: BatchLimits,
    /// One attempt's timeout.
    pub timeout: Duration,
    /// Retry budget per event.
    pub retry_budget: Duration,
    /// Batches in flight.
    pub concurrency: usize,
}

/// A sink type's own validated settings: its keys parsed (`deny_unknown_fields`), checked,
/// and its secrets loaded, made by the type's module in `crate::sinks` and held here
/// type-erased, so that config names no sink type. Every `Send + Sync` type is one. They are
/// never printed (they hold loaded secrets): [`SinkConfig`]'s `Debug` shows the common keys.
pub trait SinkSettings: std::any::Any + Send + Sync {}

impl<T: std::any::Any + Send + Sync> SinkSettings for T {}

/// A validated `[sink.NAME]`: the keys every sink has and its type's own settings, loaded
/// once (a sink is built from this without parsing or loading a secret again).
#[derive(Clone)]
pub struct SinkConfig {
    /// Common keys.
    pub common: SinkCommon,
    /// The type's settings, made by its [`SinkKind::configure`].
    pub settings: std::sync::Arc<dyn SinkSettings>,
    /// SHA-256 of the `[sink.NAME]` table as written (not of the secret files it names):
    /// tells a reload whether the sink's keys changed.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("common", &self.common)
            .finish_non_exhaustive()
    }
}

impl SinkConfig {
    /// The key path prefix of this sink, e.g. `sink.archive`.
    pub fn key(&self) -> String {
        self.common.key()
    }

    /// The type's settings as `T`, the type its `configure` made. Asking for another type
    /// is a bug in the caller, reported as an error naming the sink rather than a panic.
    pub fn settings<T: std::any::Any>(&self) -> Result<&T, ConfigError> {
        let any: &dyn std::any::Any = &*self.settings;
        any.downcast_ref::<T>().ok_or_else(|| {
            ConfigError::invalid(
                format!("{}.type", self.key()),
                format!(
                    "internal error: the settings of this {} sink were made by another sink type",
                    self.common.kind
                ),
            )
        })
    }
}

impl SinkCommon {
    /// The key path prefix of this sink, e.g. `sink.archive`.
    pub fn key(&self) -> String {
        format!("sink.{}", self.name)
    }
}

/// A sink type's keys-to-settings step: the sink's common keys (for its name and timeout) and
/// the table of its own keys in, its settings out.
pub type Configure =
    fn(&SinkCommon, toml::Table) -> Result<std::sync::Arc<dyn SinkSettings>, ConfigError>;

/// One sink type as the loader sees it: its `type` name, the target's batch limit, and the
/// function that turns its keys into its settings (no side effects beyond reading secrets
/// and checking that named files exist).
pub struct SinkKind {
    /// The `type` value in `[sink.NAME]`.
    pub name: &'static str,
    /// The target's most events per request (`batch.max_events` may not exceed it).
    pub max_events: usize,
    /// Parses and validates the type's own keys (the table without the common keys).
    pub configure: Configure,
}

/// The sink types a configuration may name. The gateway's is `crate::sinks::TYPES`; config
/// takes it as an argument so that it never imports a sink.
pub trait SinkCatalog {
    /// The type called `name`, if there is one.
    fn kind(&self, name: &str) -> Option<&SinkKind>;
    /// Every type's name, for messages.
    fn names(&self) -> Vec<&'static str>;
}

/// For the unit tests of the layers below sinks, which need a whole config but no sink: a
/// catalog that takes any `type` with any keys and makes no settings.
#[cfg(test)]
pub(crate) struct AnySinkType;

#[cfg(test)]
const ANY_SINK: SinkKind = SinkKind {
    name: "any",
    max_events: usize::MAX,
    configure: |_, _| Ok(std::sync::Arc::new(())),
};

#[cfg(test)]
impl SinkCatalog for AnySinkType {
    fn kind(&self, _: &str) -> Option<&SinkKind> {
        Some(&ANY_SINK)
    }

    fn names(&self) -> Vec<&'static str> {
        vec![ANY_SINK.name]
    }
}

/// Parses a sink type's own keys into `T` (which should `deny_unknown_fields`), naming a
/// failing key as `sink.NAME.key`.
pub fn sink_keys<T: serde::de::DeserializeOwned>(
    common: &SinkCommon,
    keys: toml::Table,
) -> Result<T, ConfigError> {
    from_value(&common.key(), toml::Value::Table(keys))
}

// ---------------------------------------------------------------------------------------
// Loading (the validation itself is in validate.rs).

/// The file's tables into the raw shape, one section (and one `[[source]]`) at a time, so
/// that a wrong key in one does not hide those of the next: every such error is returned.
fn raw_sections(table: toml::Table) -> Result<RawConfig, ConfigError> {
    fn section<T: serde::de::DeserializeOwned>(
        errors: &mut Vec<ConfigError>,
        key: &str,
        value: toml::Value,
    ) -> Option<T> {
        from_value(key, value).map_err(|e| errors.push(e)).ok()
    }
    let mut errors = Vec::new();
    let mut raw = RawConfig::default();
    for (key, value) in table {
        match key.as_str() {
            "server" => raw.server = section(&mut errors, &key, value).unwrap_or_default(),
            "admin" => raw.admin = section(&mut errors, &key, value).unwrap_or_default(),
            "dedupe" => raw.dedupe = section(&mut errors, &key, value).unwrap_or_default(),
            "log" => raw.log = section(&mut errors, &key, value).unwrap_or_default(),
            "spool" => raw.spool = section(&mut errors, &key, value),
            "sink" => raw.sink = section(&mut errors, &key, value).unwrap_or_default(),
            "source" => match value {
                toml::Value::Array(list) => {
                    for (i, s) in list.into_iter().enumerate() {
                        let key = format!("source[{i}]");
                        let (s, preset) = match s {
                            toml::Value::Table(t) => match presets::expand(t) {
                                Ok((t, Some(p))) => {
                                    let lines = presets::explain(p, &t);
                                    (toml::Value::Table(t), Some((p.name, lines)))
                                }
                                Ok((t, None)) => (toml::Value::Table(t), None),
                                Err(e) => {
                                    errors.push(ConfigError::invalid(
                                        format!("{key}.preset"),
                                        e.to_string(),
                                    ));
                                    continue;
                                }
                            },
                            other => (other, None),
                        };
                        if let Some(mut src) = section::<RawSource>(&mut errors, &key, s) {
                            src.preset = preset;
                            raw.source.push(src);
                        }
                    }
                }
                _ => errors.push(ConfigError::invalid(
                    "source",
                    "expected [[source]] tables (an array of tables)",
                )),
            },
            _ => errors.push(ConfigError::invalid(
                key.clone(),
                format!(
                    "unknown section `{key}`, expected one of `server`, `admin`, `dedupe`, `log`, `spool`, `source`, `sink`"
                ),
            )),
        }
    }
    if errors.is_empty() {
        Ok(raw)
    } else {
        Err(ConfigError::many(errors))
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    /// `sinks` are the sink types it may name (`crate::sinks::TYPES`).
    pub fn load<C: SinkCatalog + ?Sized>(path: &Path, sinks: &C) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Config::parse(&text, sinks)
    }

    /// Parses and validates TOML text.
    pub fn parse<C: SinkCatalog + ?Sized>(text: &str, sinks: &C) -> Result<Config, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        Config::validate(raw_sections(table)?, sinks)
    }

    /// The listeners: `127.0.0.1:8080 (tls), admin 127.0.0.1:9090`.
    pub fn listen_summary(&self) -> String {
        let listen: Vec<String> = self.server.listen.iter().map(|a| a.to_string()).collect();
        format!(
            "{}{}, admin {}",
            listen.join(" "),
            if self.server.tls.is_some() {
                " (tls)"
            } else {
                ""
            },
            self.admin.listen
        )
    }

    /// The sources: `syvault /v1/events, other /v2 (ack spool)`.
    pub fn sources_summary(&self) -> String {
        self.sources
            .iter()
            .map(|s| match s.ack {
                Ack::Forward => format!("{} {}", s.name, s.path),
                Ack::Spool => format!("{} {} (ack spool)", s.name, s.path),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The dedupe backend: `memory (journal data/dedupe)`, `memory (not persisted)` or
    /// `redis host:port` (never the URL: it may hold a password).
    pub fn dedupe_summary(&self) -> String {
        match (&self.dedupe.backend, &self.dedupe.journal) {
            (DedupeBackend::Redis(r), _) => format!("redis {}", r.display),
            (DedupeBackend::Memory, Some(dir)) => format!("memory (journal {})", dir.display()),
            (DedupeBackend::Memory, None) => "memory (not persisted)".to_string(),
        }
    }

    /// One line for `check-config`.
    pub fn summary(&self) -> String {
        let sinks: Vec<String> = self
            .sinks
            .iter()
            .map(|s| format!("{} ({})", s.common.name, s.common.kind))
            .collect();
        format!(
            "ok: {} source(s) [{}], {} sink(s) [{}], listen {}{}",
            self.sources.len(),
            self.sources_summary(),
            self.sinks.len(),
            sinks.join(", "),
            self.listen_summary(),
            match &self.spool {
                Some(s) => format!(", spool {}", s.dir.display()),
                None => String::new(),
            }
        )
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_value_of_the_wrong_shape_is_never_quoted_in_the_error() {
        let e = parse("[[source]]\nname = \"s\"\npath = \"/e\"\nsecrets = [\"whsec_TOPSECRET\"]\nsinks = [\"f\"]\n[sink.f]\ntype = \"file\"\npath = \"/dev/null\"\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("TOPSECRET"), "{e}");
        assert!(e.contains("source[0].secrets[0]"), "{e}");
        assert_eq!(
            without_quoted_value("invalid type: string \"abc\", expected a table"),
            "invalid type: string, expected a table"
        );
    }
    use super::*;

    fn base(extra: &str) -> String {
        format!(
            r#"
[[source]]
name = "syvault"
path = "/v1/events"
secrets = [{{ value = "s3cret-value-0123456" }}]
sinks = ["archive"]

[sink.archive]
type = "file"
path = "/dev/null"
{extra}
"#
        )
    }

    /// Parses with a catalog that takes any sink type: the sink types' own keys are
    /// `crate::sinks`' tests.
    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &AnySinkType)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    /// A source written out by hand with the keys a preset prints (`--explain`) is the same
    /// source as the preset's, for every preset.
    #[test]
    fn every_preset_equals_its_keys_written_out() {
        for p in presets::PRESETS {
            let secret = match p.name {
                "standard-webhooks" => "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                _ => "s3cret-value-0123456",
            };
            let table = |keys: &str| {
                format!(
                    "[[source]]\nname = \"s\"\npath = \"/s\"\nsecrets = [{{ value = \"{secret}\" }}]\nsinks = [\"f\"]\n{keys}\n[sink.f]\ntype = \"file\"\npath = \"x\"\n"
                )
            };
            let by_preset = parse(&table(&format!("preset = \"{}\"", p.name))).unwrap();
            let (name, lines) = by_preset.sources[0].preset.clone().unwrap();
            assert_eq!(name, p.name);
            let by_hand = parse(&table(&lines.join("\n"))).unwrap();
            let mut a = by_preset.sources[0].clone();
            a.preset = None;
            assert_eq!(
                format!("{a:?}"),
                format!("{:?}", by_hand.sources[0]),
                "{}",
                p.name
            );
            assert_eq!(by_preset.warnings, by_hand.warnings, "{}", p.name);
        }
        // A typo inside an override is refused, as it is without a preset.
        let typo = "[[source]]\nname = \"s\"\npath = \"/s\"\npreset = \"github\"\nsecrets = [{ value = \"s3cret-value-0123456\" }]\nfields = { event_id = { headr = \"X-Id\" } }\nsinks = [\"f\"]\n[sink.f]\ntype = \"file\"\npath = \"x\"\n";
        assert!(
            err(typo).starts_with("source[0].fields.event_id:"),
            "{}",
            err(typo)
        );
        assert_eq!(
            err("[[source]]\nname = \"s\"\npath = \"/s\"\npreset = \"gitlab\"\nsecrets = []\nsinks = []\n"),
            format!("source[0].preset: unknown preset \"gitlab\"; the presets are {}", presets::names())
        );
    }

    #[test]
    fn empty_short_and_expired_secrets() {
        let with = |secrets: &str| {
            base("").replace(r#"secrets = [{ value = "s3cret-value-0123456" }]"#, secrets)
        };
        assert_eq!(
            err(&with(r#"secrets = [{ value = "" }]"#)),
            "source[0].secrets[0]: the inline value is empty"
        );
        #[allow(clippy::disallowed_methods)] // a test's own variable
        std::env::set_var("VFGATE_TEST_EMPTY_SECRET", "");
        assert!(
            err(&with(r#"secrets = [{ env = "VFGATE_TEST_EMPTY_SECRET" }]"#)).starts_with(
                "source[0].secrets[0]: environment variable VFGATE_TEST_EMPTY_SECRET is empty"
            )
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "\n").unwrap();
        assert!(err(&with(&format!(
            "secrets = [{{ file = \"{}\" }}]",
            f.display()
        )))
        .contains("is empty"));
        let c = parse(&with(r#"secrets = [{ value = "short" }]"#)).unwrap();
        assert!(
            c.warnings.iter().any(|w| w
                .starts_with("source[0].secrets[0]: the secret (inline value) is only 5 bytes")),
            "{:?}",
            c.warnings
        );
        let c = parse(&with(
            r#"secrets = [{ value = "0123456789abcdef0123", not_after = "2020-01-01T00:00:00Z" }]"#,
        ))
        .unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.starts_with("source[0].secrets: every secret is past its not_after")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(&base("")).unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.server.max_body_bytes, 1024 * 1024);
        assert_eq!(c.dedupe.ttl, Duration::from_secs(86400));
        assert_eq!(c.sources[0].max_event_age, c.dedupe.ttl);
        assert_eq!(c.sources[0].versions, vec!["1"]);
        assert_eq!(c.sinks[0].common.batch.max_events, 1);
        assert_eq!(c.warnings.len(), 1, "inline secret is warned about");
        assert!(!format!("{c:?}").contains("s3cret-value-0123456"));
    }

    #[test]
    fn errors_name_the_key_path() {
        assert_eq!(
            err(&base("batch = { max_events = 0 }")),
            "sink.archive.batch.max_events: must be between 1 and 10000"
        );
        assert!(err(&format!("{}\n[server]\nlisten = 5\n", base(""))).starts_with("server.listen"));
        assert!(
            err(&format!("{}\n[server]\nnope = 1\n", base("")))
                .starts_with("server.nope: unknown field `nope`"),
            "{}",
            err(&format!("{}\n[server]\nnope = 1\n", base("")))
        );
        assert!(err(&base("batch = { linger = \"soon\" }"))
            .starts_with("sink.archive.batch.linger: invalid duration"));
        let e = err(&base("").replace("sinks = [\"archive\"]", "sinks = [\"nope\"]"));
        assert_eq!(e, "source[0].sinks[0]: no [sink.nope] is defined");
    }

    #[test]
    fn every_section_source_and_sink_error_is_reported_not_only_the_first() {
        let text = base("batch = { max_events = 0 }")
            .replace(
                "{ value = \"s3cret-value-0123456\" }",
                "{ env = \"VFGATE_TEST_UNSET_SECRET_2\" }",
            )
            .replace("[[source]]", "[server]\nlisten = \"nowhere\"\n[dedupe]\nttl = \"0s\"\n[[source]]")
            + "\n[[source]]\nname = \"b\"\npath = \"nope\"\nsecrets = [{ value = \"0123456789abcdef\" }]\nsinks = [\"archive\"]\n";
        let e = parse(&text).unwrap_err();
        let lines: Vec<String> = e.all().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "server.listen: \"nowhere\" is not an IP:port address (e.g. \"127.0.0.1:8080\")",
                "dedupe.ttl: must be at least 1s",
                "sink.archive.batch.max_events: must be between 1 and 10000",
                "source[0].secrets[0]: environment variable VFGATE_TEST_UNSET_SECRET_2 is not set",
                "source[1].path: must start with '/' and contain no query or fragment",
            ]
        );
        assert_eq!(e.to_string(), lines.join("\n"));
        // Key errors of the file's shape: every section's, every source's.
        let text = format!(
            "{}\n[server]\nnope = 1\n[admin]\nlisten = 5\n[[source]]\nname = \"c\"\n",
            base("")
        );
        let lines: Vec<String> = parse(&text)
            .unwrap_err()
            .all()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("admin.listen: invalid type: integer"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("server.nope: unknown field `nope`"),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("source[1]: missing field `path`"),
            "{lines:?}"
        );
    }

    #[test]
    fn shape_errors_read_as_sentences_without_rust_type_names() {
        let cases = [
            base("").replace(
                "secrets = [{ value = \"s3cret-value-0123456\" }]",
                "secrets = [\"abc\"]",
            ),
            base("").replace(
                "secrets = [{ value = \"s3cret-value-0123456\" }]",
                "secrets = \"abc\"",
            ),
            format!("{}\n[server]\nmax_body_bytes = true\n", base("")),
            format!("{}\n[server]\nmax_connections = \"many\"\n", base("")),
            format!("{}\n[server]\ntls = \"yes\"\n", base("")),
            format!("{}\n[server]\nlisten = {{ a = 1 }}\n", base("")),
            format!("{}\n[admin]\ntoken = \"plain\"\n", base("")),
            format!("{}\n[dedupe]\nmax_entries = -1\n", base("")),
            format!("{}\n[spool]\ndir = 5\n", base("")),
            format!("spool = 5\n{}", base("")),
            base("batch = 5"),
            base("retry = \"1s\""),
            base("batch = { max_bytes = [1] }"),
            base("concurrency = 1.5"),
            "source = 5\n".to_string(),
            "[sink]\nx = 5\n".to_string(),
        ];
        for text in cases {
            let e = match parse(&text) {
                Ok(_) => panic!("accepted:\n{text}"),
                Err(e) => e.to_string(),
            };
            for rust in [
                "struct", "enum", "Raw", "usize", "u64", "i64", "f64", "variant",
            ] {
                assert!(!e.contains(rust), "{rust:?} in {e:?} for\n{text}");
            }
        }
        // A sink type's own nested tables (e.g. `tls = true`) get the same fallback.
        assert_eq!(
            humane("invalid type: boolean `true`, expected struct RawClientTls"),
            "invalid type: boolean `true`, expected a table { key = value, ... }"
        );
    }

    #[test]
    fn log_table_has_defaults_and_checked_values() {
        let c = parse(&base("")).unwrap();
        assert_eq!(
            c.log,
            LogConfig {
                format: LogFormat::Text,
                level: "info".into()
            }
        );
        let with = |l: &str| format!("{}\n[log]\n{l}\n", base(""));
        let c = parse(&with(
            "format = \"json\"\nlevel = \"warn,vfgate::dedupe=debug\"",
        ))
        .unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "warn,vfgate::dedupe=debug");
        assert_eq!(
            err(&with("format = \"xml\"")),
            "log.format: must be \"text\" or \"json\", got \"xml\""
        );
        assert!(err(&with("level = \"loud\"")).starts_with("log.level: "));
        assert!(err(&with("colour = true")).starts_with("log.colour: unknown field"));
    }

    #[test]
    fn memory_dedupe_persists_by_default_and_says_so_when_it_does_not() {
        let c = parse(&base("")).unwrap();
        assert_eq!(c.dedupe.journal, Some(PathBuf::from("data/dedupe")));
        assert!(
            !c.warnings.iter().any(|w| w.starts_with("dedupe.")),
            "{:?}",
            c.warnings
        );
        let spooled = format!("{}\n[spool]\ndir = \"/tmp/s\"\n", base(""));
        assert_eq!(
            parse(&spooled).unwrap().dedupe.journal,
            Some(PathBuf::from("/tmp/s/dedupe"))
        );
        let with = |d: &str| format!("{}\n[dedupe]\n{d}\n", base(""));
        let c = parse(&with("dir = \"/var/lib/vfgate/ids\"")).unwrap();
        assert_eq!(c.dedupe.journal, Some(PathBuf::from("/var/lib/vfgate/ids")));
        let c = parse(&with("persist = false")).unwrap();
        assert_eq!(c.dedupe.journal, None);
        assert!(
            c.warnings
                .iter()
                .any(|w| w.starts_with("dedupe.persist = false")
                    && w.contains("accepted (and delivered) again")),
            "{:?}",
            c.warnings
        );
        assert!(err(&with(
            "backend = \"redis\"\nurl = \"redis://h:1\"\npersist = true"
        ))
        .starts_with("dedupe.persist: only used with backend = \"memory\""));
        assert!(err(&with("dir = \"\"")).starts_with("dedupe.dir: must not be empty"));
    }

    #[test]
    fn spool_settings_are_validated_with_key_paths() {
        let spooled = base("").replace(
            "sinks = [\"archive\"]",
            "sinks = [\"archive\"]\nack = \"spool\"",
        );
        assert_eq!(
            err(&spooled),
            "source[0].ack: \"spool\" needs a [spool] section with a dir"
        );
        let with = |spool: &str| format!("{spooled}\n[spool]\n{spool}\n");
        let c = parse(&with("dir = \"/tmp/s\"")).unwrap();
        let sp = c.spool.unwrap();
        assert_eq!(sp.fsync, FsyncPolicy::Batch);
        assert_eq!(sp.max_bytes, 10 << 30);
        assert_eq!(sp.max_age, Duration::from_secs(7 * 86400));
        assert_eq!(sp.segment_bytes, 64 << 20);
        assert_eq!(c.sources[0].ack, Ack::Spool);
        assert_eq!(c.admin.failed_dir, PathBuf::from("/tmp/s/dead-letter"));
        assert!(err(&with("dir = \"/tmp/s\"\nfsync = \"sometimes\""))
            .starts_with("spool.fsync: must be \"batch\", \"always\" or \"never\""));
        assert!(err(&with("dir = \"/tmp/s\"\nmax_bytes = \"1MiB\""))
            .starts_with("spool.max_bytes: must be at least twice server.max_body_bytes"));
        assert!(err(&with("dir = \"/tmp/s\"\nmax_age = \"soon\""))
            .starts_with("spool.max_age: invalid duration"));
        assert!(err(&with("dir = \"/tmp/s\"\nsize = 1")).starts_with("spool.size: unknown field"));
        assert!(err(&base("").replace(
            "sinks = [\"archive\"]",
            "sinks = [\"archive\"]\nack = \"later\""
        ))
        .starts_with("source[0].ack: must be \"forward\" or \"spool\""));
    }

    #[test]
    fn missing_env_secret_is_an_error_naming_it() {
        let text = base("").replace(
            "{ value = \"s3cret-value-0123456\" }",
            "{ env = \"VFGATE_TEST_UNSET_SECRET\" }",
        );
        assert_eq!(
            err(&text),
            "source[0].secrets[0]: environment variable VFGATE_TEST_UNSET_SECRET is not set"
        );
    }

    #[test]
    fn max_event_age_cannot_exceed_ttl() {
        let text = base("").replace(
            "sinks = [\"archive\"]",
            "sinks = [\"archive\"]\nmax_event_age = \"48h\"",
        );
        assert!(err(&text).starts_with("source[0].max_event_age: must not exceed dedupe.ttl"));
    }

    #[test]
    fn dedupe_backends() {
        let text = |d: &str| format!("{}\n[dedupe]\n{d}\n", base(""));
        assert_eq!(
            err(&text("url = \"redis://x\"")),
            "dedupe.url: only used with backend = \"redis\""
        );
        assert!(err(&text("backend = \"redis\"")).starts_with("dedupe.url: required"));
        assert!(err(&text("backend = \"redis\"\nurl = \"http://x\""))
            .starts_with("dedupe.url: must be"));
        assert!(err(&text(
            "backend = \"redis\"\nurl = \"redis://x\"\non_error = \"maybe\""
        ))
        .starts_with("dedupe.on_error"));
        let c = parse(&text(
            "backend = \"redis\"\nurl = \"redis://:pw@cache:6380/1\"",
        ))
        .unwrap();
        let DedupeBackend::Redis(r) = &c.dedupe.backend else {
            panic!()
        };
        assert_eq!(
            (r.display.as_str(), r.on_error),
            ("cache:6380", OnError::Reject)
        );
        assert!(
            !format!("{c:?}").contains(":pw@"),
            "the URL with its password is a secret"
        );
        assert!(
            err(&text("backend = \"memcached\"")).starts_with("dedupe.backend: unknown backend")
        );
    }
}
