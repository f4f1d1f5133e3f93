//! The serde shape of the TOML file, exactly as written: `RawConfig` and its sections, every
//! field optional where the file may leave it out, every struct `deny_unknown_fields` so a
//! typo is an error naming its key. Nothing here checks values, fills in defaults or loads
//! secrets (that is `validate.rs`); a sink's own keys stay a raw `toml::Table` in
//! `sink` / `RawSinkCommon::rest` for the sink type to parse. It may use `units` and
//! `crate::secret`'s reference types, nothing else from the crate.

use super::units::{ByteSize, DurationStr};
use crate::secret::SecretRef;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

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

/// The whole file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the configuration file's tables")]
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
    /// `[log]`: the format and level of `serve`'s log on stderr.
    #[serde(default)]
    pub log: RawLog,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [log] table { format = \"text\" or \"json\", level = \"info\" }"
)]
pub struct RawLog {
    /// `"text"` (default) or `"json"` (one object per line); `serve --log-format` overrides.
    pub format: Option<String>,
    /// `error`, `warn`, `info` (default), `debug`, `trace`, or directives such as
    /// `"info,vfgate::dedupe=debug"`; the `RUST_LOG` environment variable overrides.
    pub level: Option<String>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [server] table")]
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
    /// Peers (addresses or CIDR ranges) whose `X-Forwarded-For` is logged with a refusal.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// TLS for the webhook listener.
    pub tls: Option<RawServerTls>,
    /// Worker threads for the webhook listener (default: number of cores).
    pub threads: Option<usize>,
}

/// `server.tls`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table { cert = \"PATH\", key = \"PATH\" }"
)]
pub struct RawServerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [admin] table")]
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
#[serde(deny_unknown_fields, expecting = "a [dedupe] table")]
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
#[serde(
    deny_unknown_fields,
    expecting = "a [spool] table with at least dir = \"PATH\""
)]
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
#[serde(
    deny_unknown_fields,
    expecting = "a secret table: { env = \"NAME\" }, { file = \"PATH\" } or { value = \"...\" }, with an optional not_after"
)]
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
#[serde(
    deny_unknown_fields,
    expecting = "a [[source]] table with name, path, secrets and sinks"
)]
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
    /// How requests are signed: `"vf"` (default), `"standard-webhooks"`, `"hmac"` or
    /// `"shared-secret"`.
    pub scheme: Option<RawScheme>,
    /// `standard-webhooks`: the accepted distance of `webhook-timestamp` from now.
    pub tolerance: Option<DurationStr>,
    /// `hmac`: the header and how the MAC is written in it.
    pub hmac: Option<RawHmac>,
    /// Where the event's id, type, time and org are, for schemes other than `vf`.
    pub fields: Option<RawFields>,
    /// `shared-secret`: the header that carries the secret itself.
    pub shared_secret: Option<RawSharedSecret>,
    /// A sender's handshake answered by vfgate: `"slack"` (url_verification) or `"okta"`
    /// (the one-time verification GET).
    pub handshake: Option<String>,
    /// The preset this table was expanded from (`preset` itself is gone by then), and what
    /// it expanded to.
    #[serde(skip)]
    pub preset: Option<(&'static str, Vec<String>)>,
}

/// `source.scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawScheme {
    /// `X-VF-Signature-256`.
    Vf,
    /// `webhook-*` / `svix-*` headers.
    StandardWebhooks,
    /// A body MAC in one named header.
    Hmac,
    /// The secret itself in a header (no body signature).
    SharedSecret,
}

/// `source.shared_secret`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table { header = \"Authorization\" }"
)]
pub struct RawSharedSecret {
    /// The header.
    pub header: String,
}

/// `source.hmac`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table { header = \"X-Hub-Signature-256\", prefix = \"sha256=\", encoding = \"hex\", algorithm = \"sha256\" } (optionally param, signed, timestamp)"
)]
pub struct RawHmac {
    /// The header carrying the MAC.
    pub header: String,
    /// Text before the MAC in the header (default none).
    #[serde(default)]
    pub prefix: String,
    /// `hex` (default) or `base64`.
    #[serde(default)]
    pub encoding: super::HmacEncoding,
    /// `sha256` (default), `sha512` or `sha1`.
    #[serde(default)]
    pub algorithm: super::HmacAlgorithm,
    /// The header is a `key=value,...` list; the MACs are this key's values (`v1`).
    pub param: Option<String>,
    /// The signed message: `"{body}"` (default), or with the timestamp, e.g.
    /// `"{timestamp}.{body}"`, `"v0:{timestamp}:{body}"`.
    pub signed: Option<String>,
    /// Where a signed timestamp is: `{ header = "..." }` or `{ param = "t" }`.
    pub timestamp: Option<RawTimestampFrom>,
}

/// `source.hmac.timestamp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    deny_unknown_fields,
    expecting = "{ header = \"X-Slack-Request-Timestamp\" } or { param = \"t\" }"
)]
pub enum RawTimestampFrom {
    /// Its own header.
    Header {
        /// The header's name.
        header: String,
    },
    /// A key of the signature header's list.
    Param {
        /// The key.
        param: String,
    },
}

/// `source.fields`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table { event_id = ..., event_type = ..., timestamp = ..., org_id = ... }"
)]
pub struct RawFields {
    /// The event id (the dedupe key).
    pub event_id: Option<RawField>,
    /// The event type (filters, sinks).
    pub event_type: Option<RawField>,
    /// The event time: a JSON pointer, or `"received"`.
    pub timestamp: Option<RawField>,
    /// The organisation (per-org ordering, sinks' org column).
    pub org_id: Option<RawField>,
}

/// Where one field is: a JSON pointer into the body (`"/data/id"`), or a header.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    deny_unknown_fields,
    expecting = "a JSON pointer such as \"/data/id\", or { header = \"Name\" }"
)]
pub enum RawField {
    /// A JSON pointer (or, for `timestamp`, `"received"`).
    Pointer(String),
    /// A request header.
    Header {
        /// Its name.
        header: String,
    },
}

/// `sink.NAME.batch`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table { max_events = N, max_bytes = \"1MiB\", linger = \"1s\" }"
)]
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
#[serde(deny_unknown_fields, expecting = "a table { budget = \"5m\" }")]
pub struct RawRetry {
    /// Total time one event may spend on retries before the sender gets a 5xx.
    pub budget: Option<DurationStr>,
}

/// `sink.NAME.tls` (outbound).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table { ca_file = \"PATH\", insecure_skip_verify = false }"
)]
pub struct RawClientTls {
    /// PEM bundle of CAs to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Do not verify the upstream certificate (test setups only; warned at start-up).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// The keys every sink has, whatever its type.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a [sink.NAME] table with at least type = \"...\"")]
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
