//! Configuration: the TOML file's serde shape (`Raw*`, `deny_unknown_fields`) and its
//! validation into [`Config`], the only type the runtime sees.
//!
//! Every validation error names the key path (`sink.splunk.batch.max_events`) and the reason.
//! Secrets are loaded here, so a missing env var or file is a config error, never a runtime
//! surprise; error messages name the reference (`env VF_SECRET`), never the value.
//! All defaults live in [`defaults`].

use crate::secret::{Secret, SecretRef};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every default value of the configuration, in one place.
pub mod defaults {
    use std::time::Duration;
    /// `server.listen`.
    pub const LISTEN: &str = "127.0.0.1:8080";
    /// `admin.listen`.
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
    /// `admin.failed_dir`, and the default store of `vfgate send` / `vfgate failed`.
    pub const FAILED_DIR: &str = "data/failed";
    /// `server.grace_period`.
    pub const GRACE_PERIOD: Duration = Duration::from_secs(10);
    /// `server.max_body_bytes`: 1 MiB.
    pub const MAX_BODY_BYTES: u64 = 1024 * 1024;
    /// `server.body_timeout`.
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
    /// `server.max_connections`.
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// `server.header_timeout`.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// `server.keepalive_timeout`.
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `server.max_inflight_body_bytes`: 256 MiB.
    pub const MAX_INFLIGHT_BODY_BYTES: u64 = 256 << 20;
    /// `dedupe.ttl`.
    pub const DEDUPE_TTL: Duration = Duration::from_secs(24 * 3600);
    /// `dedupe.max_entries`.
    pub const DEDUPE_MAX_ENTRIES: u64 = 10_000_000;
    /// `source.max_future_skew`.
    pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(300);
    /// `source.require_version`.
    pub const REQUIRE_VERSION: bool = true;
    /// `sink.*.batch.max_events`.
    pub const BATCH_MAX_EVENTS: usize = 1;
    /// `sink.*.batch.max_bytes`: 1 MiB.
    pub const BATCH_MAX_BYTES: u64 = 1024 * 1024;
    /// `sink.*.batch.linger`.
    pub const BATCH_LINGER: Duration = Duration::ZERO;
    /// `sink.*.timeout`.
    pub const SINK_TIMEOUT: Duration = Duration::from_secs(10);
    /// `sink.*.retry.budget`.
    pub const RETRY_BUDGET: Duration = Duration::from_secs(10);
    /// `sink.*.concurrency`: batches in flight per sink.
    pub const SINK_CONCURRENCY: usize = 8;
    /// Largest `batch.max_events` any sink accepts.
    pub const MAX_BATCH_EVENTS: usize = 10_000;
    /// `spool.max_bytes`.
    pub const SPOOL_MAX_BYTES: u64 = 10 << 30;
    /// `spool.max_age`.
    pub const SPOOL_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
    /// `spool.segment_bytes` (also capped at an eighth of `max_bytes`).
    pub const SPOOL_SEGMENT_BYTES: u64 = 64 << 20;
    /// `dedupe.dir` without a spool (with one: `<spool.dir>/dedupe`).
    pub const DEDUPE_DIR: &str = "data/dedupe";
    /// `dedupe.persist`.
    pub const DEDUPE_PERSIST: bool = true;
}

/// Secrets shorter than this are warned about (HMAC keys should be random and long).
pub const MIN_SECRET_BYTES: usize = 16;

/// A configuration problem: the key path and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
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
}

impl ConfigError {
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
        let first = msg.lines().next().unwrap_or("").trim().to_string();
        ConfigError::invalid(key, first)
    })
}

// ---------------------------------------------------------------------------------------
// Value types shared by every section.

/// A duration written as `"500ms"`, `"30s"`, `"24h"`, `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(DurationStr)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({e}); write e.g. \"500ms\", \"30s\", \"24h\""
                ))
            })
    }
}

/// A size in bytes: an integer, or a string such as `"512KiB"`, `"10GiB"`, `"1MB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"512KiB"`, `"10 GiB"`, `"1MB"`, `"42"`, `"42B"`.
    pub fn parse(s: &str) -> Result<u64, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(format!("invalid size {s:?}: expected a number with an optional unit (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"));
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid size {s:?}: number too large"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            "TB" => 1_000_000_000_000,
            "TiB" => 1 << 40,
            u => {
                return Err(format!(
                    "invalid size {s:?}: unknown unit {u:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
                ))
            }
        };
        n.checked_mul(mult)
            .ok_or_else(|| format!("invalid size {s:?}: too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(i) if i >= 0 => Ok(ByteSize(i as u64)),
            Raw::Int(i) => Err(serde::de::Error::custom(format!(
                "size must not be negative, got {i}"
            ))),
            Raw::Str(s) => ByteSize::parse(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// One address or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "an address string like \"127.0.0.1:8080\" or a list of them"
)]
pub enum OneOrMany {
    /// `listen = "127.0.0.1:8080"`
    One(String),
    /// `listen = ["127.0.0.1:8080", "[::1]:8080"]`
    Many(Vec<String>),
}

// ---------------------------------------------------------------------------------------
// The raw (serde) shape of the file.

/// The whole file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`: the webhook listener.
    #[serde(default)]
    pub server: RawServer,
    /// `[admin]`: metrics and health listener.
    #[serde(default)]
    pub admin: RawAdmin,
    /// `[dedupe]`: duplicate detection.
    #[serde(default)]
    pub dedupe: RawDedupe,
    /// `[spool]`: durable acceptance for sources with `ack = "spool"`.
    pub spool: Option<RawSpool>,
    /// `[[source]]`: one per webhook path.
    #[serde(default)]
    pub source: Vec<RawSource>,
    /// `[sink.NAME]`: destinations; the keys depend on `type`.
    #[serde(default)]
    pub sink: BTreeMap<String, toml::Table>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address(es) to listen on for webhooks.
    pub listen: Option<OneOrMany>,
    /// How long SIGTERM waits for in-flight requests.
    pub grace_period: Option<DurationStr>,
    /// Largest accepted request body.
    pub max_body_bytes: Option<ByteSize>,
    /// Deadline for reading one request body.
    pub body_timeout: Option<DurationStr>,
    /// Bytes of unverified bodies held in memory at once, over all connections.
    pub max_inflight_body_bytes: Option<ByteSize>,
    /// Open webhook connections at most; more are closed at once.
    pub max_connections: Option<usize>,
    /// Deadline for a new connection's whole request head.
    pub header_timeout: Option<DurationStr>,
    /// How long a kept-alive connection may wait for its next whole request head.
    pub keepalive_timeout: Option<DurationStr>,
    /// TLS for the webhook listener.
    pub tls: Option<RawServerTls>,
    /// Worker threads for the webhook listener (default: number of cores).
    pub threads: Option<usize>,
}

/// `server.tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address for `/metrics`, `/healthz`, `/readyz`.
    pub listen: Option<String>,
    /// Bearer token for the `/admin/...` routes (off without one).
    pub token: Option<SecretRef>,
    /// Failed-deliveries store served by `/admin/failed`.
    pub failed_dir: Option<PathBuf>,
}

/// `[dedupe]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDedupe {
    /// `"memory"` (default) or `"redis"`.
    pub backend: Option<String>,
    /// Redis: `redis://host:port/db` or `rediss://...` (TLS).
    pub url: Option<String>,
    /// Redis: password (overrides one in the URL).
    pub password: Option<SecretRef>,
    /// Redis: key prefix.
    pub key_prefix: Option<String>,
    /// Redis: `"reject"` (503, default) or `"allow"` (forward, count the error).
    pub on_error: Option<String>,
    /// Redis: timeout of one call.
    pub timeout: Option<DurationStr>,
    /// How long a delivered event_id is remembered.
    pub ttl: Option<DurationStr>,
    /// Upper bound on remembered ids; the oldest are evicted beyond it.
    pub max_entries: Option<u64>,
    /// How long an in-flight mark outlives a request that neither commits nor releases it
    /// (a crashed replica); a request still waiting renews its own.
    pub in_flight_ttl: Option<DurationStr>,
    /// Memory: where delivered ids are journalled (default `<spool.dir>/dedupe` with a
    /// spool, else `data/dedupe`).
    pub dir: Option<PathBuf>,
    /// Memory: `false` keeps ids in memory only (forgotten on restart).
    pub persist: Option<bool>,
    /// Memory, at `max_entries`: `"evict"` (default: forget the oldest delivered ids) or
    /// `"reject"` (503 `dedupe_full`: never forget an id inside its TTL).
    pub on_full: Option<String>,
}

/// `[spool]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    /// Directory of the spool (segments, cursors, dead letters, dedupe ids).
    pub dir: PathBuf,
    /// Disk budget; when reached, spooled sources answer 503 + Retry-After.
    pub max_bytes: Option<ByteSize>,
    /// `"batch"` (group commit, default), `"always"` (one fsync per event) or `"never"`.
    pub fsync: Option<String>,
    /// Undelivered events older than this move to the dead-letter store.
    pub max_age: Option<DurationStr>,
    /// Size of one log segment file.
    pub segment_bytes: Option<ByteSize>,
}

/// One entry of `source.secrets`: a secret reference plus an optional expiry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSourceSecret {
    /// Environment variable holding the secret.
    pub env: Option<String>,
    /// File holding the secret.
    pub file: Option<PathBuf>,
    /// Inline secret (warned about at start-up).
    pub value: Option<crate::secret::InlineSecret>,
    /// After this RFC 3339 instant the secret no longer matches.
    pub not_after: Option<String>,
}

/// `[[source]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Name used in metrics and the dedupe key.
    pub name: String,
    /// URL path senders POST to.
    pub path: String,
    /// HMAC secrets; any may match (rotation).
    pub secrets: Vec<RawSourceSecret>,
    /// Accepted `X-VF-Webhook-Version` values.
    pub versions: Option<Vec<String>>,
    /// Whether a request without a version header is refused.
    pub require_version: Option<bool>,
    /// Oldest accepted event timestamp (default = dedupe.ttl).
    pub max_event_age: Option<DurationStr>,
    /// How far in the future an event timestamp may be.
    pub max_future_skew: Option<DurationStr>,
    /// Streamed event types: `"*"`, exact types, or prefixes `"user.*"`.
    pub event_types: Option<Vec<String>>,
    /// Sink names this source delivers to.
    pub sinks: Vec<String>,
    /// `"forward"` (default: answer after the sinks took the event) or `"spool"` (answer
    /// 202 once the event is on disk).
    pub ack: Option<String>,
}

/// `sink.NAME.batch`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    /// Most events per upstream request.
    pub max_events: Option<usize>,
    /// Most body bytes (events' bytes) per upstream request.
    pub max_bytes: Option<ByteSize>,
    /// How long the first event of a batch waits for others.
    pub linger: Option<DurationStr>,
}

/// `sink.NAME.retry`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Total time one event may spend on retries before the sender gets a 5xx.
    pub budget: Option<DurationStr>,
}

/// `sink.NAME.tls` (outbound).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientTls {
    /// PEM bundle of CAs to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Do not verify the upstream certificate (test setups only; warned at start-up).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// The keys every sink has, whatever its type.
#[derive(Debug, Deserialize)]
pub struct RawSinkCommon {
    /// The sink type, e.g. `file`, `http`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Batching limits.
    #[serde(default)]
    pub batch: RawBatch,
    /// Timeout of one upstream attempt.
    pub timeout: Option<DurationStr>,
    /// Retry budget.
    #[serde(default)]
    pub retry: RawRetry,
    /// Batches in flight at once.
    pub concurrency: Option<usize>,
    /// The type's own keys.
    #[serde(flatten)]
    pub rest: toml::Table,
}

// ---------------------------------------------------------------------------------------
// The validated configuration.

/// The validated configuration: what the runtime is built from.
#[derive(Debug)]
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
    pub sinks: Vec<SinkSpec>,
    /// Warnings to log at start-up (inline secrets, TLS verification off).
    pub warnings: Vec<String>,
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

/// One configured HMAC secret of a source.
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

/// A sink's settings: the common part and the type's own keys, which the sink type parses.
/// `Debug` shows the keys of `rest`, never their values (they may hold inline secrets).
#[derive(Clone)]
pub struct SinkSpec {
    /// Common keys.
    pub common: SinkCommon,
    /// Type-specific keys, still raw (parsed by the sink type with `deny_unknown_fields`).
    pub rest: toml::Table,
}

impl std::fmt::Debug for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkSpec")
            .field("common", &self.common)
            .field("keys", &self.rest.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SinkSpec {
    /// The key path prefix of this sink, e.g. `sink.archive`.
    pub fn key(&self) -> String {
        format!("sink.{}", self.common.name)
    }
}

// ---------------------------------------------------------------------------------------
// Loading and validation.

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        let raw: RawConfig = from_value("", toml::Value::Table(table))?;
        Config::validate(raw)
    }

    /// Turns the raw shape into the validated config.
    pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        let server = validate_server(raw.server)?;
        let admin_listen = raw
            .admin
            .listen
            .unwrap_or_else(|| defaults::ADMIN_LISTEN.to_string());
        let token = match &raw.admin.token {
            None => None,
            Some(r) => {
                if r.is_inline() {
                    warnings.push("admin.token: token given inline in the config file; prefer { env = \"NAME\" } or { file = \"PATH\" }".into());
                }
                let t = r
                    .load()
                    .map_err(|e| ConfigError::invalid("admin.token", e.to_string()))?;
                if t.expose().len() < 16 {
                    return Err(ConfigError::invalid(
                        "admin.token",
                        "must be at least 16 bytes (vfgate keygen makes one)",
                    ));
                }
                Some(t)
            }
        };
        let spool = raw.spool.map(validate_spool).transpose()?;
        let persist_off = raw.dedupe.persist == Some(false);
        let dedupe = validate_dedupe(raw.dedupe, spool.as_ref().map(|s| s.dir.as_path()))?;
        if persist_off {
            warnings.push("dedupe.persist = false: delivered event ids are kept in memory only, so after a restart a replay of an event inside max_event_age is accepted (and delivered) again".into());
        }
        if let Some(sp) = &spool {
            if sp.max_bytes < 2 * server.max_body_bytes {
                return Err(ConfigError::invalid(
                    "spool.max_bytes",
                    format!(
                        "must be at least twice server.max_body_bytes ({} bytes)",
                        server.max_body_bytes
                    ),
                ));
            }
        }
        let admin = AdminConfig {
            listen: parse_addr("admin.listen", &admin_listen)?,
            token,
            failed_dir: raw
                .admin
                .failed_dir
                .clone()
                .or_else(|| spool.as_ref().map(|s| s.dir.join("dead-letter")))
                .unwrap_or_else(|| PathBuf::from(defaults::FAILED_DIR)),
        };
        if server.listen.contains(&admin.listen) {
            return Err(ConfigError::invalid(
                "admin.listen",
                "must differ from server.listen (the admin listener never serves webhooks)",
            ));
        }

        let mut sinks = Vec::new();
        for (name, table) in raw.sink {
            let skip_verify = table
                .get("tls")
                .and_then(|t| t.get("insecure_skip_verify"))
                .and_then(toml::Value::as_bool)
                == Some(true);
            let kind = table
                .get("type")
                .and_then(toml::Value::as_str)
                .unwrap_or("")
                .to_string();
            sinks.push(validate_sink(&name, table)?);
            if skip_verify {
                let also = if kind == "azure_logs_ingestion" {
                    " (nor the Azure token endpoint's: the client secret could go to an impostor)"
                } else {
                    ""
                };
                warnings.push(format!("sink.{name}.tls.insecure_skip_verify: the upstream certificate is NOT verified{also}; anyone on the path can read and alter what this sink sends"));
            }
        }
        let sink_names: HashSet<&str> = sinks.iter().map(|s| s.common.name.as_str()).collect();

        if raw.source.is_empty() {
            return Err(ConfigError::invalid(
                "source",
                "at least one [[source]] is required",
            ));
        }
        let mut sources = Vec::new();
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        for (i, s) in raw.source.into_iter().enumerate() {
            let src = validate_source(i, s, &dedupe, &sink_names, &mut warnings)?;
            if src.ack == Ack::Spool && spool.is_none() {
                return Err(ConfigError::invalid(
                    format!("source[{i}].ack"),
                    "\"spool\" needs a [spool] section with a dir",
                ));
            }
            if !names.insert(src.name.clone()) {
                return Err(ConfigError::invalid(
                    format!("source[{i}].name"),
                    format!("duplicate source name {:?}", src.name),
                ));
            }
            if !paths.insert(src.path.clone()) {
                return Err(ConfigError::invalid(
                    format!("source[{i}].path"),
                    format!("path {:?} is used by another source", src.path),
                ));
            }
            sources.push(src);
        }
        Ok(Config {
            server,
            admin,
            dedupe,
            spool,
            sources,
            sinks,
            warnings,
        })
    }

    /// One line for `check-config`.
    pub fn summary(&self) -> String {
        let listen: Vec<String> = self.server.listen.iter().map(|a| a.to_string()).collect();
        let sinks: Vec<String> = self
            .sinks
            .iter()
            .map(|s| format!("{} ({})", s.common.name, s.common.kind))
            .collect();
        format!(
            "ok: {} source(s) [{}], {} sink(s) [{}], listen {}{}, admin {}{}",
            self.sources.len(),
            self.sources
                .iter()
                .map(|s| match s.ack {
                    Ack::Forward => format!("{} {}", s.name, s.path),
                    Ack::Spool => format!("{} {} (ack spool)", s.name, s.path),
                })
                .collect::<Vec<_>>()
                .join(", "),
            self.sinks.len(),
            sinks.join(", "),
            listen.join(" "),
            if self.server.tls.is_some() {
                " (tls)"
            } else {
                ""
            },
            self.admin.listen,
            match &self.spool {
                Some(s) => format!(", spool {}", s.dir.display()),
                None => String::new(),
            }
        )
    }
}

fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("{s:?} is not an IP:port address (e.g. \"127.0.0.1:8080\")"),
        )
    })
}

fn validate_server(raw: RawServer) -> Result<ServerConfig, ConfigError> {
    let listen_raw = match raw.listen {
        None => vec![defaults::LISTEN.to_string()],
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    if listen_raw.is_empty() {
        return Err(ConfigError::invalid(
            "server.listen",
            "at least one address is required",
        ));
    }
    let mut listen = Vec::new();
    for (i, a) in listen_raw.iter().enumerate() {
        let key = if listen_raw.len() == 1 {
            "server.listen".to_string()
        } else {
            format!("server.listen[{i}]")
        };
        let addr = parse_addr(&key, a)?;
        if listen.contains(&addr) {
            return Err(ConfigError::invalid(key, "listed twice"));
        }
        listen.push(addr);
    }
    let max_body_bytes = raw
        .max_body_bytes
        .map(|b| b.0)
        .unwrap_or(defaults::MAX_BODY_BYTES);
    if !(64..=64 * 1024 * 1024).contains(&max_body_bytes) {
        return Err(ConfigError::invalid(
            "server.max_body_bytes",
            "must be between 64 bytes and 64 MiB",
        ));
    }
    let body_timeout = raw
        .body_timeout
        .map(|d| d.0)
        .unwrap_or(defaults::BODY_TIMEOUT);
    if body_timeout < Duration::from_millis(100) {
        return Err(ConfigError::invalid(
            "server.body_timeout",
            "must be at least 100ms",
        ));
    }
    let max_inflight_body_bytes = raw
        .max_inflight_body_bytes
        .map(|b| b.0)
        .unwrap_or(defaults::MAX_INFLIGHT_BODY_BYTES);
    if max_inflight_body_bytes < max_body_bytes {
        return Err(ConfigError::invalid(
            "server.max_inflight_body_bytes",
            format!("must be at least server.max_body_bytes ({max_body_bytes} bytes)"),
        ));
    }
    let max_connections = raw.max_connections.unwrap_or(defaults::MAX_CONNECTIONS);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(ConfigError::invalid(
            "server.max_connections",
            "must be between 1 and 1000000",
        ));
    }
    let header_timeout = raw
        .header_timeout
        .map(|d| d.0)
        .unwrap_or(defaults::HEADER_TIMEOUT);
    if header_timeout < Duration::from_millis(100) {
        return Err(ConfigError::invalid(
            "server.header_timeout",
            "must be at least 100ms",
        ));
    }
    let keepalive_timeout = raw
        .keepalive_timeout
        .map(|d| d.0)
        .unwrap_or(defaults::KEEPALIVE_TIMEOUT);
    if keepalive_timeout < header_timeout {
        return Err(ConfigError::invalid(
            "server.keepalive_timeout",
            format!(
                "must be at least server.header_timeout ({}): it covers the wait for the next request and its head",
                humantime::format_duration(header_timeout)
            ),
        ));
    }
    let threads = match raw.threads {
        Some(0) => return Err(ConfigError::invalid("server.threads", "must be at least 1")),
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let tls = match raw.tls {
        None => None,
        Some(t) => {
            for (k, p) in [("server.tls.cert", &t.cert), ("server.tls.key", &t.key)] {
                std::fs::metadata(p).map_err(|e| {
                    ConfigError::invalid(k, format!("cannot read {}: {e}", p.display()))
                })?;
            }
            Some((t.cert, t.key))
        }
    };
    Ok(ServerConfig {
        listen,
        grace_period: raw
            .grace_period
            .map(|d| d.0)
            .unwrap_or(defaults::GRACE_PERIOD),
        max_body_bytes,
        body_timeout,
        max_inflight_body_bytes,
        max_connections,
        header_timeout,
        keepalive_timeout,
        tls,
        threads,
    })
}

fn validate_dedupe(raw: RawDedupe, spool_dir: Option<&Path>) -> Result<DedupeConfig, ConfigError> {
    let backend = match raw.backend.as_deref().unwrap_or("memory") {
        "memory" => {
            for (k, set) in [
                ("url", raw.url.is_some()),
                ("password", raw.password.is_some()),
                ("key_prefix", raw.key_prefix.is_some()),
                ("on_error", raw.on_error.is_some()),
                ("timeout", raw.timeout.is_some()),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        format!("dedupe.{k}"),
                        "only used with backend = \"redis\"",
                    ));
                }
            }
            DedupeBackend::Memory
        }
        "redis" => {
            for (k, set) in [
                ("dir", raw.dir.is_some()),
                ("persist", raw.persist.is_some()),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        format!("dedupe.{k}"),
                        "only used with backend = \"memory\" (Redis keeps the ids itself)",
                    ));
                }
            }
            let url = raw.url.clone().ok_or_else(|| {
                ConfigError::invalid(
                    "dedupe.url",
                    "required with backend = \"redis\" (redis://host:6379/0)",
                )
            })?;
            let parsed: http::Uri = url
                .replacen("redis://", "http://", 1)
                .replacen("rediss://", "https://", 1)
                .parse()
                .map_err(|_| {
                    ConfigError::invalid("dedupe.url", "not a redis:// or rediss:// URL")
                })?;
            if !(url.starts_with("redis://") || url.starts_with("rediss://"))
                || parsed.host().is_none()
            {
                return Err(ConfigError::invalid(
                    "dedupe.url",
                    "must be redis://host:port/db or rediss://host:port/db",
                ));
            }
            let display = format!(
                "{}:{}",
                parsed.host().unwrap_or(""),
                parsed.port_u16().unwrap_or(6379)
            );
            let password = match &raw.password {
                None => None,
                Some(r) => Some(
                    r.load()
                        .map_err(|e| ConfigError::invalid("dedupe.password", e.to_string()))?,
                ),
            };
            let on_error = match raw.on_error.as_deref().unwrap_or("reject") {
                "reject" => OnError::Reject,
                "allow" => OnError::Allow,
                other => {
                    return Err(ConfigError::invalid(
                        "dedupe.on_error",
                        format!("{other:?}: use \"reject\" or \"allow\""),
                    ))
                }
            };
            let timeout = raw
                .timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_millis(500));
            if timeout.is_zero() {
                return Err(ConfigError::invalid("dedupe.timeout", "must be above 0"));
            }
            DedupeBackend::Redis(RedisConfig {
                url: Secret::new(url.into_bytes()),
                display,
                password,
                key_prefix: raw
                    .key_prefix
                    .clone()
                    .unwrap_or_else(|| "vfgate:dedupe:".to_string()),
                on_error,
                timeout,
            })
        }
        other => {
            return Err(ConfigError::invalid(
                "dedupe.backend",
                format!("unknown backend {other:?} (available: \"memory\", \"redis\")"),
            ))
        }
    };
    let ttl = raw.ttl.map(|d| d.0).unwrap_or(defaults::DEDUPE_TTL);
    if ttl < Duration::from_secs(1) {
        return Err(ConfigError::invalid("dedupe.ttl", "must be at least 1s"));
    }
    let in_flight_ttl = raw.in_flight_ttl.map(|d| d.0);
    if in_flight_ttl.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err(ConfigError::invalid(
            "dedupe.in_flight_ttl",
            "must be at least 1s (a request renews its mark every third of it)",
        ));
    }
    let max_entries = raw.max_entries.unwrap_or(defaults::DEDUPE_MAX_ENTRIES);
    if !(1..=1_000_000_000).contains(&max_entries) {
        return Err(ConfigError::invalid(
            "dedupe.max_entries",
            "must be between 1 and 1000000000",
        ));
    }
    let journal = match backend {
        DedupeBackend::Memory if raw.persist.unwrap_or(defaults::DEDUPE_PERSIST) => match raw.dir {
            Some(d) if d.as_os_str().is_empty() => {
                return Err(ConfigError::invalid("dedupe.dir", "must not be empty"))
            }
            Some(d) => Some(d),
            None => spool_dir
                .map(|s| s.join("dedupe"))
                .or_else(|| Some(PathBuf::from(defaults::DEDUPE_DIR))),
        },
        _ => None,
    };
    let reject_when_full = match raw.on_full.as_deref().unwrap_or("evict") {
        "evict" => false,
        "reject" => true,
        other => {
            return Err(ConfigError::invalid(
                "dedupe.on_full",
                format!("{other:?}: use \"evict\" or \"reject\""),
            ))
        }
    };
    Ok(DedupeConfig {
        backend,
        ttl,
        max_entries,
        journal,
        reject_when_full,
        in_flight_ttl,
    })
}

fn validate_source(
    i: usize,
    raw: RawSource,
    dedupe: &DedupeConfig,
    sinks: &HashSet<&str>,
    warnings: &mut Vec<String>,
) -> Result<SourceConfig, ConfigError> {
    let key = |k: &str| format!("source[{i}].{k}");
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ConfigError::invalid(
            key("name"),
            "must be non-empty and use only letters, digits, '_' and '-'",
        ));
    }
    if !raw.path.starts_with('/') || raw.path.contains('?') || raw.path.contains('#') {
        return Err(ConfigError::invalid(
            key("path"),
            "must start with '/' and contain no query or fragment",
        ));
    }
    if raw.secrets.is_empty() {
        return Err(ConfigError::invalid(
            key("secrets"),
            "at least one secret is required",
        ));
    }
    let mut secrets = Vec::new();
    for (j, s) in raw.secrets.into_iter().enumerate() {
        let skey = key(&format!("secrets[{j}]"));
        let reference = match (s.env, s.file, s.value) {
            (Some(env), None, None) if !env.is_empty() => SecretRef::Env { env },
            (None, Some(file), None) => SecretRef::File { file },
            (None, None, Some(value)) => SecretRef::Value { value },
            _ => {
                return Err(ConfigError::invalid(
                    skey,
                    "exactly one of env, file or value is required",
                ))
            }
        };
        let secret = reference
            .load()
            .map_err(|e| ConfigError::invalid(skey.clone(), e.to_string()))?;
        if reference.is_inline() {
            warnings.push(format!(
                "{skey}: secret given inline in the config file; prefer {{ env = \"NAME\" }} or {{ file = \"PATH\" }}"
            ));
        }
        if secret.expose().len() < MIN_SECRET_BYTES {
            warnings.push(format!(
                "{skey}: the secret ({}) is only {} bytes; use at least {MIN_SECRET_BYTES} random bytes (vfgate keygen makes 32)",
                reference.describe(),
                secret.expose().len()
            ));
        }
        let not_after = match s.not_after {
            None => None,
            Some(t) => Some(
                crate::time::parse_rfc3339_s(&t)
                    .map_err(|e| ConfigError::invalid(format!("{skey}.not_after"), e))?,
            ),
        };
        secrets.push(SourceSecret {
            reference,
            secret,
            not_after,
        });
    }
    let now_s = crate::time::now_ms() / 1000;
    if secrets
        .iter()
        .all(|s| s.not_after.is_some_and(|t| t <= now_s))
    {
        warnings.push(format!(
            "{}: every secret is past its not_after: this source refuses every request (401) until a current secret is added",
            key("secrets")
        ));
    }
    let versions = raw.versions.unwrap_or_else(|| vec!["1".to_string()]);
    if versions.is_empty() || versions.iter().any(|v| v.is_empty()) {
        return Err(ConfigError::invalid(
            key("versions"),
            "must list at least one non-empty version",
        ));
    }
    let max_event_age = raw.max_event_age.map(|d| d.0).unwrap_or(dedupe.ttl);
    if max_event_age > dedupe.ttl {
        return Err(ConfigError::invalid(
            key("max_event_age"),
            format!(
                "must not exceed dedupe.ttl ({}): an older event could be a forgotten duplicate",
                humantime::format_duration(dedupe.ttl)
            ),
        ));
    }
    let event_types = validate_event_types(&key("event_types"), raw.event_types)?;
    if raw.sinks.is_empty() {
        return Err(ConfigError::invalid(
            key("sinks"),
            "at least one sink is required",
        ));
    }
    for (j, s) in raw.sinks.iter().enumerate() {
        if !sinks.contains(s.as_str()) {
            return Err(ConfigError::invalid(
                key(&format!("sinks[{j}]")),
                format!("no [sink.{s}] is defined"),
            ));
        }
        if raw.sinks[..j].contains(s) {
            return Err(ConfigError::invalid(
                key(&format!("sinks[{j}]")),
                "listed twice",
            ));
        }
    }
    Ok(SourceConfig {
        name: raw.name,
        path: raw.path,
        secrets,
        versions,
        require_version: raw.require_version.unwrap_or(defaults::REQUIRE_VERSION),
        max_event_age,
        max_future_skew: raw
            .max_future_skew
            .map(|d| d.0)
            .unwrap_or(defaults::MAX_FUTURE_SKEW),
        event_types,
        sinks: raw.sinks,
        ack: match raw.ack.as_deref().unwrap_or("forward") {
            "forward" => Ack::Forward,
            "spool" => Ack::Spool,
            other => {
                return Err(ConfigError::invalid(
                    key("ack"),
                    format!("must be \"forward\" or \"spool\", got {other:?}"),
                ))
            }
        },
    })
}

fn validate_spool(raw: RawSpool) -> Result<SpoolConfig, ConfigError> {
    if raw.dir.as_os_str().is_empty() {
        return Err(ConfigError::invalid("spool.dir", "must not be empty"));
    }
    let max_bytes = raw
        .max_bytes
        .map(|b| b.0)
        .unwrap_or(defaults::SPOOL_MAX_BYTES);
    if max_bytes < 64 * 1024 {
        return Err(ConfigError::invalid(
            "spool.max_bytes",
            "must be at least 64KiB",
        ));
    }
    let fsync = match raw.fsync.as_deref().unwrap_or("batch") {
        "batch" => FsyncPolicy::Batch,
        "always" => FsyncPolicy::Always,
        "never" => FsyncPolicy::Never,
        other => {
            return Err(ConfigError::invalid(
                "spool.fsync",
                format!("must be \"batch\", \"always\" or \"never\", got {other:?}"),
            ))
        }
    };
    let max_age = raw.max_age.map(|d| d.0).unwrap_or(defaults::SPOOL_MAX_AGE);
    if max_age < Duration::from_secs(1) {
        return Err(ConfigError::invalid("spool.max_age", "must be at least 1s"));
    }
    let segment_bytes = match raw.segment_bytes {
        Some(b) if b.0 < 4096 => {
            return Err(ConfigError::invalid(
                "spool.segment_bytes",
                "must be at least 4KiB",
            ))
        }
        Some(b) => b.0,
        None => defaults::SPOOL_SEGMENT_BYTES.min(max_bytes / 8),
    };
    Ok(SpoolConfig {
        dir: raw.dir,
        max_bytes,
        fsync,
        max_age,
        segment_bytes,
    })
}

fn validate_event_types(key: &str, raw: Option<Vec<String>>) -> Result<TypeFilter, ConfigError> {
    let list = raw.unwrap_or_else(|| vec!["*".to_string()]);
    if list.is_empty() {
        return Err(ConfigError::invalid(
            key,
            "must list at least one type (\"*\" for all)",
        ));
    }
    if list.iter().any(|t| t == "*") {
        return Ok(TypeFilter::All);
    }
    let mut exact = Vec::new();
    let mut prefixes = Vec::new();
    for (j, t) in list.into_iter().enumerate() {
        if let Some(p) = t.strip_suffix(".*") {
            if p.is_empty() || p.contains('*') {
                return Err(ConfigError::invalid(
                    format!("{key}[{j}]"),
                    format!("{t:?}: a prefix is written \"word.*\""),
                ));
            }
            prefixes.push(format!("{p}."));
        } else if t.is_empty() || t.contains('*') {
            return Err(ConfigError::invalid(
                format!("{key}[{j}]"),
                format!("{t:?}: use \"*\", an exact type or a prefix \"word.*\""),
            ));
        } else {
            exact.push(t);
        }
    }
    Ok(TypeFilter::Some { exact, prefixes })
}

fn validate_sink(name: &str, table: toml::Table) -> Result<SinkSpec, ConfigError> {
    let key = format!("sink.{name}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ConfigError::invalid(
            key,
            "a sink name uses only letters, digits, '_' and '-'",
        ));
    }
    if !table.contains_key("type") {
        return Err(ConfigError::invalid(
            format!("{key}.type"),
            format!(
                "missing (one of: {})",
                crate::sinks::type_names().join(", ")
            ),
        ));
    }
    let raw: RawSinkCommon = from_value(&key, toml::Value::Table(table))?;
    let max_events = raw.batch.max_events.unwrap_or(defaults::BATCH_MAX_EVENTS);
    if !(1..=defaults::MAX_BATCH_EVENTS).contains(&max_events) {
        return Err(ConfigError::invalid(
            format!("{key}.batch.max_events"),
            format!("must be between 1 and {}", defaults::MAX_BATCH_EVENTS),
        ));
    }
    let max_bytes = raw
        .batch
        .max_bytes
        .map(|b| b.0)
        .unwrap_or(defaults::BATCH_MAX_BYTES);
    if !(1..=1024 * 1024 * 1024).contains(&max_bytes) {
        return Err(ConfigError::invalid(
            format!("{key}.batch.max_bytes"),
            "must be between 1 byte and 1 GiB",
        ));
    }
    let linger = raw
        .batch
        .linger
        .map(|d| d.0)
        .unwrap_or(defaults::BATCH_LINGER);
    if linger > Duration::from_secs(60) {
        return Err(ConfigError::invalid(
            format!("{key}.batch.linger"),
            "must be at most 60s",
        ));
    }
    let timeout = raw.timeout.map(|d| d.0).unwrap_or(defaults::SINK_TIMEOUT);
    if timeout < Duration::from_millis(1) {
        return Err(ConfigError::invalid(
            format!("{key}.timeout"),
            "must be at least 1ms",
        ));
    }
    let retry_budget = raw
        .retry
        .budget
        .map(|d| d.0)
        .unwrap_or(defaults::RETRY_BUDGET);
    let concurrency = raw.concurrency.unwrap_or(defaults::SINK_CONCURRENCY);
    if !(1..=1024).contains(&concurrency) {
        return Err(ConfigError::invalid(
            format!("{key}.concurrency"),
            "must be between 1 and 1024",
        ));
    }
    let spec = SinkSpec {
        common: SinkCommon {
            name: name.to_string(),
            kind: raw.kind,
            batch: BatchLimits {
                max_events,
                max_bytes,
                linger,
            },
            timeout,
            retry_budget,
            concurrency,
        },
        rest: raw.rest,
    };
    crate::sinks::check_spec(&spec)?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
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
        let c = Config::parse(&with(r#"secrets = [{ value = "short" }]"#)).unwrap();
        assert!(
            c.warnings.iter().any(|w| w
                .starts_with("source[0].secrets[0]: the secret (inline value) is only 5 bytes")),
            "{:?}",
            c.warnings
        );
        let c = Config::parse(&with(
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
        let c = Config::parse(&base("")).unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.server.max_body_bytes, 1024 * 1024);
        assert_eq!(c.dedupe.ttl, Duration::from_secs(86400));
        assert_eq!(c.sources[0].max_event_age, c.dedupe.ttl);
        assert_eq!(c.sources[0].versions, vec!["1"]);
        assert_eq!(c.sinks[0].common.batch.max_events, 1);
        assert_eq!(c.warnings.len(), 1, "inline secret is warned about");
        assert!(!format!("{c:?}").contains("s3cret-value-0123456"));
        let with_sink_secret = base("").replace(
            "path = \"/dev/null\"",
            "path = \"/dev/null\"\n[sink.h]\ntype = \"http\"\nurl = \"http://127.0.0.1:1/\"\nheaders = { \"Authorization\" = { value = \"Bearer sink-secret-value\" } }",
        );
        let c = Config::parse(&with_sink_secret).unwrap();
        assert!(
            !format!("{c:?}").contains("sink-secret-value"),
            "sink keys' values are not printed"
        );
    }

    #[test]
    fn errors_name_the_key_path() {
        assert_eq!(
            err(&base("batch = { max_events = 0 }")),
            "sink.archive.batch.max_events: must be between 1 and 10000"
        );
        assert!(err(&base("bogus = 1")).starts_with("sink.archive.bogus: unknown field `bogus`"));
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
    fn memory_dedupe_persists_by_default_and_says_so_when_it_does_not() {
        let c = Config::parse(&base("")).unwrap();
        assert_eq!(c.dedupe.journal, Some(PathBuf::from("data/dedupe")));
        assert!(
            !c.warnings.iter().any(|w| w.starts_with("dedupe.")),
            "{:?}",
            c.warnings
        );
        let spooled = format!("{}\n[spool]\ndir = \"/tmp/s\"\n", base(""));
        assert_eq!(
            Config::parse(&spooled).unwrap().dedupe.journal,
            Some(PathBuf::from("/tmp/s/dedupe"))
        );
        let with = |d: &str| format!("{}\n[dedupe]\n{d}\n", base(""));
        let c = Config::parse(&with("dir = \"/var/lib/vfgate/ids\"")).unwrap();
        assert_eq!(c.dedupe.journal, Some(PathBuf::from("/var/lib/vfgate/ids")));
        let c = Config::parse(&with("persist = false")).unwrap();
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
        let c = Config::parse(&with("dir = \"/tmp/s\"")).unwrap();
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
        let c = Config::parse(&text(
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

    #[test]
    fn type_filter_prefixes() {
        let f = validate_event_types("k", Some(vec!["user.*".into(), "vault.item.read".into()]))
            .unwrap();
        assert!(f.matches("user.x"));
        assert!(f.matches("user.login.failed"));
        assert!(!f.matches("user"));
        assert!(!f.matches("user."));
        assert!(!f.matches("users.x"));
        assert!(f.matches("vault.item.read"));
        assert!(!f.matches("vault.item.readx"));
        assert!(validate_event_types("k", Some(vec!["u*".into()])).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("512KiB").unwrap(), 512 * 1024);
        assert_eq!(ByteSize::parse("10GiB").unwrap(), 10 << 30);
        assert_eq!(ByteSize::parse("1MB").unwrap(), 1_000_000);
        assert_eq!(ByteSize::parse("42").unwrap(), 42);
        assert!(ByteSize::parse("12XB").is_err());
        assert!(ByteSize::parse("KiB").is_err());
        assert!(ByteSize::parse("99999999999999999999").is_err());
    }

    proptest! {
        #[test]
        fn size_parser_never_panics_and_roundtrips_numbers(s in ".{0,24}", n in 0u64..(1u64<<40)) {
            let _ = ByteSize::parse(&s);
            prop_assert_eq!(ByteSize::parse(&n.to_string()).unwrap(), n);
            prop_assert_eq!(ByteSize::parse(&format!("{n}KiB")).unwrap(), n * 1024);
        }
    }
}
