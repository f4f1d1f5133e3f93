//! Sinks: where verified events go.
//!
//! A sink type is one file here that provides a [`SinkType`] (its name; its `configure`, which
//! turns its TOML keys into typed settings with secrets loaded, once, at config load; and its
//! `build` from those settings) and implements [`Sink`]: send one batch once and say, per
//! event, whether it was delivered, may be retried, or can never be delivered. Batching, retries with backoff within
//! the budget, splitting on 413 and bisecting whole-batch payload refusals are done once, in
//! [`crate::pipeline`], for every sink.
//!
//! To add a sink type: write `sinks/<name>.rs` with its `TYPE` (a [`SinkType`]) and a
//! [`Sink`] (`send`, `encode`, `destination`), then add its `pub mod` and its line in
//! [`TYPES`] here; the README's Development section lists the rest (an example config, a
//! guide).
//!
//! Owns: the [`Sink`] trait, the type table and what the HTTP sinks share (answer
//! classification, `http_destination`, `exchange`). Uses `client`, `config` and `event`;
//! knows nothing of the pipeline, the spool or requests. One sink reaches up: `webhook.rs`
//! sends through `crate::sender`.

pub mod azure_logs_ingestion;
pub mod datadog;
pub mod elastic;
pub mod file;
pub mod http;
pub mod sentinel_data_collector;
pub mod splunk_hec;
pub mod webhook;

use crate::config::{ConfigError, SinkCatalog, SinkConfig, SinkKind};
use crate::event::Event;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// Why an event may be retried, which decides the sender's status if the budget runs out
/// (the `reason` label of `vfgate_sink_events_failed_total` then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// The target answered with a transient failure (5xx, 429, connection refused): 503.
    Unavailable,
    /// No answer within the timeout: 504.
    Timeout,
    /// Authentication or authorisation refused (a configuration error, not the event's
    /// fault): the data is kept, the sender gets 503 and retries.
    Config,
}

/// Every `reason` label of `vfgate_sink_events_failed_total`: each [`RetryKind`] and
/// [`Refusal`] (the series are created at start-up with value 0).
pub const FAILURE_REASONS: &[&str] = &[
    RetryKind::Unavailable.as_str(),
    RetryKind::Timeout.as_str(),
    RetryKind::Config.as_str(),
    Refusal::Rejected.as_str(),
    Refusal::TooLarge.as_str(),
    Refusal::TooOld.as_str(),
    Refusal::TooNew.as_str(),
];

impl RetryKind {
    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            RetryKind::Unavailable => "unavailable",
            RetryKind::Timeout => "timeout",
            RetryKind::Config => "config_error",
        }
    }
}

/// Why a target refuses an event for good: the `reason` label of the failure metrics and
/// dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The target refused it (malformed for it, a 4xx for the event).
    Rejected,
    /// Over the target's size limit, alone.
    TooLarge,
    /// Older than the target keeps (Datadog's 18 h).
    TooOld,
    /// Dated further ahead than the target accepts (Datadog's 2 h).
    TooNew,
}

impl Refusal {
    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Rejected => "rejected",
            Refusal::TooLarge => "too_large",
            Refusal::TooOld => "too_old",
            Refusal::TooNew => "too_new",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event's result at one sink: the one vocabulary from a sink's classification of an
/// attempt, through the pipeline (which retries `Retry` within the budget and then answers
/// each waiting request with the last verdict), to `ingest` (which keeps the most telling
/// failure over its sinks, [`Verdict::severity`]); `server/outcome.rs` maps it to the
/// sender's status once (`Permanent` 502, `Retry` 503, or 504 for a timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted by the target.
    Ok,
    /// Not accepted now; may succeed later.
    Retry {
        /// Which kind of failure.
        kind: RetryKind,
        /// Human detail (never a secret).
        detail: String,
        /// The target's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// Can never be accepted (malformed for the target, over its size limit).
    Permanent {
        /// Why (its metric label).
        reason: Refusal,
        /// Human detail (never a secret).
        detail: String,
    },
}

impl Verdict {
    /// A retryable failure.
    pub fn retry(
        kind: RetryKind,
        detail: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        Verdict::Retry {
            kind,
            detail: detail.into(),
            retry_after,
        }
    }
    /// A permanent failure.
    pub fn permanent(reason: Refusal, detail: impl Into<String>) -> Self {
        Verdict::Permanent {
            reason,
            detail: detail.into(),
        }
    }

    /// How telling a result is to the sender, when an event went to several sinks: a
    /// permanent refusal outranks an outage (or refused credentials), which outranks a
    /// timeout, which outranks delivery.
    pub fn severity(&self) -> u8 {
        match self {
            Verdict::Ok => 0,
            Verdict::Retry {
                kind: RetryKind::Timeout,
                ..
            } => 1,
            Verdict::Retry { .. } => 2,
            Verdict::Permanent { .. } => 3,
        }
    }
}

/// The result of sending one batch once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    /// The same verdict for every event.
    All(Verdict),
    /// One verdict per event, in batch order.
    PerEvent(Vec<Verdict>),
    /// The whole batch was refused for its size or payload (413, a whole-batch 400): the
    /// pipeline halves it and resends each half, until a single event is refused alone,
    /// which then fails permanently with this detail.
    Split {
        /// Why (its metric label).
        reason: Refusal,
        /// Human detail.
        detail: String,
    },
}

/// One attempt: its metric status label (HTTP status or error kind) and result.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// `"200"`, `"503"`, `"timeout"`, `"connect_error"`, `"io_error"`...
    pub status: String,
    /// Per-event outcome.
    pub result: SendResult,
}

/// A destination.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Sends `batch` once (one upstream request, or one write) and classifies the answer.
    /// Must not retry by itself: the pipeline owns retries and their budget.
    async fn send(&self, batch: &[Arc<Event>]) -> Attempt;

    /// The request body (or file bytes) `send` would write for `batch`, before compression;
    /// or the verdict that stops the batch before anything is sent (an event over a limit).
    /// Pure: no I/O, no clock beyond what the target's rules need.
    fn encode(&self, batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult>;

    /// Whether batches must be sent one at a time (to keep order in a file, say).
    fn ordered(&self) -> bool {
        false
    }

    /// Whether two instances must never run side by side (two file sinks appending to one
    /// file would cut each other's lines): a config reload keeps the running one while its
    /// keys are unchanged, and refuses a change to them until a restart.
    fn exclusive(&self) -> bool {
        false
    }

    /// Where this sink delivers, for a dead letter's `target` and messages: its type and
    /// destination, as [`http_destination`] writes it for a sink that sends over HTTP
    /// (`webhook https://gw.example/v1/events`) and `file PATH` for the file sink. Never a
    /// credential or a query string.
    fn destination(&self) -> String;

    /// The `X-VF-Webhook-Version` this sink sends, for a sink that speaks the VF webhook
    /// protocol (recorded in its dead letters, as sender mode records it).
    fn webhook_version(&self) -> Option<&str> {
        None
    }

    /// For spooled events: the fixed waits before each retry (after the last, the event is
    /// dead-lettered), when the target wants one; `None` means capped exponential backoff
    /// with jitter for as long as `spool.max_age` allows.
    fn retry_schedule(&self) -> Option<&[std::time::Duration]> {
        None
    }
}

/// A sink type: what the config loader needs ([`SinkKind`]: its `type` name, batch limit and
/// `configure`, which turns its keys into validated settings once) and its builder.
pub struct SinkType {
    /// Name, limit, and the keys-to-settings step, run by [`crate::config::Config::parse`].
    pub kind: SinkKind,
    /// Builds the sink from its validated config (may open files, read CA bundles); never
    /// parses a key or loads a secret again.
    pub build: fn(&SinkConfig) -> Result<Arc<dyn Sink>, ConfigError>,
}

impl SinkType {
    /// The `type` value in `[sink.NAME]`.
    pub const fn name(&self) -> &'static str {
        self.kind.name
    }
}

/// Every sink type: the catalog a configuration is loaded with
/// (`Config::load(path, sinks::TYPES)`).
pub const TYPES: &[SinkType] = &[
    file::TYPE,
    http::TYPE,
    splunk_hec::TYPE,
    datadog::TYPE,
    elastic::TYPE,
    azure_logs_ingestion::TYPE,
    sentinel_data_collector::TYPE,
    webhook::TYPE,
];

impl SinkCatalog for [SinkType] {
    fn kind(&self, name: &str) -> Option<&SinkKind> {
        self.iter().map(|t| &t.kind).find(|k| k.name == name)
    }

    fn names(&self) -> Vec<&'static str> {
        type_names()
    }
}

/// The names of every sink type.
pub fn type_names() -> Vec<&'static str> {
    TYPES.iter().map(SinkType::name).collect()
}

/// Builds a sink from its validated config.
pub fn build(config: &SinkConfig) -> Result<Arc<dyn Sink>, ConfigError> {
    let t = TYPES
        .iter()
        .find(|t| t.name() == config.common.kind)
        .ok_or_else(|| {
            ConfigError::invalid(
                format!("{}.type", config.key()),
                format!(
                    "unknown sink type {:?} (one of: {})",
                    config.common.kind,
                    type_names().join(", ")
                ),
            )
        })?;
    (t.build)(config)
}

/// `KIND scheme://host[:port]/path` of a sink of type `kind` that sends to `path` on `target`:
/// the query string is left out (it may carry a key or a token), and a URL never holds
/// credentials ([`crate::client::Target::parse`] refuses them).
pub fn http_destination(kind: &str, target: &crate::client::Target, path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    format!("{kind} {}{path}", target.origin())
}

/// Classifies an HTTP status the way every target here documents it: 2xx ok; the
/// `config` statuses (401/403, and 404 for targets where it means a wrong URL or resource)
/// are configuration errors, kept and retried; 408/429/5xx retried honouring `Retry-After`;
/// 413 splits the batch; any other 4xx splits it until the refused event is alone.
/// `who` names the target in the detail.
pub fn classify_http(resp: &crate::client::Response, who: &str, config: &[u16]) -> SendResult {
    let s = resp.status;
    let detail = || format!("{who} answered {s}: {}", body_snippet(resp));
    match s {
        200..=299 => SendResult::All(Verdict::Ok),
        _ if config.contains(&s) => {
            SendResult::All(Verdict::retry(RetryKind::Config, detail(), None))
        }
        408 | 429 | 500..=599 => SendResult::All(Verdict::retry(
            RetryKind::Unavailable,
            detail(),
            resp.retry_after(),
        )),
        413 => SendResult::Split {
            reason: Refusal::TooLarge,
            detail: detail(),
        },
        _ => SendResult::Split {
            reason: Refusal::Rejected,
            detail: detail(),
        },
    }
}

/// [`classify_http`] for a target without a richer reply format.
pub fn classify_status(resp: &crate::client::Response) -> SendResult {
    classify_http(resp, "upstream", &[401, 403])
}

impl Attempt {
    /// A batch stopped before sending (an event over a limit): no request was made.
    pub fn not_sent(result: SendResult) -> Attempt {
        Attempt {
            status: "not_sent".into(),
            result,
        }
    }
}

/// Sends `req` once and classifies the answer with `classify` (a missing answer is retried).
pub async fn exchange(
    client: &crate::client::HttpClient,
    req: &crate::client::Request,
    classify: impl FnOnce(&crate::client::Response) -> SendResult,
) -> Attempt {
    match client.send(req).await {
        Ok(r) => Attempt {
            status: r.status.to_string(),
            result: classify(&r),
        },
        Err(e) => client_error_attempt(&e),
    }
}

/// The attempt of a request that got no answer.
pub fn client_error_attempt(e: &crate::client::ClientError) -> Attempt {
    let kind = match e {
        crate::client::ClientError::Timeout(_) => RetryKind::Timeout,
        _ => RetryKind::Unavailable,
    };
    Attempt {
        status: e.label().to_string(),
        result: SendResult::All(Verdict::retry(kind, e.to_string(), None)),
    }
}

/// Request body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// `Content-Encoding: gzip`.
    Gzip,
    /// No compression.
    None,
}

/// Gzips `data` (fast level: the targets care about size limits measured before compression).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(data).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// Applies `c` to `body`, adding the Content-Encoding header when compressing.
pub fn compress(
    c: Compression,
    body: Vec<u8>,
    headers: &mut Vec<(String, Vec<u8>)>,
) -> bytes::Bytes {
    match c {
        Compression::Gzip => {
            headers.push(("content-encoding".into(), b"gzip".to_vec()));
            bytes::Bytes::from(gzip(&body))
        }
        Compression::None => bytes::Bytes::from(body),
    }
}

/// The string at a dotted path of a JSON value (`"context.org_id"`), if it is a string.
pub fn str_at<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a str> {
    path.split('.').try_fold(v, |v, k| v.get(k))?.as_str()
}

/// The flattened audit columns shared by the Azure sinks (and usable by others).
pub fn audit_columns(ev: &Event, v: &serde_json::Value) -> Vec<(&'static str, Option<String>)> {
    let s = |p: &str| str_at(v, p).map(str::to_string);
    vec![
        ("EventId", Some(ev.event_id.clone())),
        (
            "EventType",
            Some(ev.event_type.clone()).filter(|t| !t.is_empty()),
        ),
        ("ActorUserId", s("actor.user_id")),
        ("ActorEmail", s("actor.email")),
        ("TargetType", s("target.type")),
        ("TargetId", s("target.id")),
        ("IpAddress", s("context.ip_address")),
        ("UserAgent", s("context.user_agent")),
        // The source's field map's org (a VF event's `context.org_id`).
        ("OrgId", ev.org_id.clone()),
    ]
}

/// The body of a request that failed, for a short detail (never includes request data).
pub fn body_snippet(resp: &crate::client::Response) -> String {
    String::from_utf8_lossy(&resp.body[..resp.body.len().min(300)])
        .trim()
        .to_string()
}

/// A random RFC 4122 version-4 UUID, e.g. for a Splunk channel or an Azure request id.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("OS random source");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// This machine's host name (for Splunk `host` and Datadog `hostname` defaults).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "vfgate".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sink_type_names_its_destination_without_query_or_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.ndjson");
        let sinks = format!(
            r#"
[sink.file]
type = "file"
path = "{}"
[sink.http]
type = "http"
url = "https://siem.example.com/ingest?key=QUERYSECRET"
headers = {{ "Authorization" = {{ value = "HEADERSECRET" }} }}
[sink.webhook]
type = "webhook"
url = "https://gateway.example.com:8443/v1/events?token=QUERYSECRET"
secret = {{ value = "SIGNINGSECRET" }}
[sink.splunk_hec]
type = "splunk_hec"
url = "https://splunk.example.com:8088"
token = {{ value = "12345678-1234-1234-1234-1234567890AB" }}
[sink.datadog]
type = "datadog"
site = "datadoghq.eu"
api_key = {{ value = "0123456789abcdef0123456789abcdef" }}
[sink.elastic]
type = "elastic"
url = "https://es.example.com:9200"
index = "logs-a-b"
auth = {{ api_key = {{ value = "APIKEYSECRET" }} }}
[sink.azure_logs_ingestion]
type = "azure_logs_ingestion"
endpoint = "https://dce.eastus-1.ingest.monitor.azure.com"
dcr_immutable_id = "dcr-000a00a000a00000a000000aa000a0aa"
stream = "Custom-VF"
tenant_id = "00000000-0000-0000-0000-000000000000"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = {{ value = "CLIENTSECRET" }}
[sink.sentinel_data_collector]
type = "sentinel_data_collector"
workspace_id = "11111111-2222-3333-4444-555555555555"
shared_key = {{ value = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" }}
log_type = "VF"
"#,
            file.display()
        );
        let names = TYPES.iter().map(|t| format!("\"{}\"", t.name()));
        let text = format!(
            "[[source]]\nname = \"s\"\npath = \"/e\"\nsecrets = [{{ value = \"k\" }}]\nsinks = [{}]\n{sinks}",
            names.collect::<Vec<_>>().join(", ")
        );
        let config = crate::config::Config::parse(&text, TYPES).unwrap();
        let want = [
            ("file", format!("file {}", file.display())),
            ("http", "http https://siem.example.com/ingest".into()),
            (
                "webhook",
                "webhook https://gateway.example.com:8443/v1/events".into(),
            ),
            (
                "splunk_hec",
                "splunk_hec https://splunk.example.com:8088/services/collector/event".into(),
            ),
            (
                "datadog",
                "datadog https://http-intake.logs.datadoghq.eu/api/v2/logs".into(),
            ),
            ("elastic", "elastic https://es.example.com:9200/_bulk".into()),
            (
                "azure_logs_ingestion",
                "azure_logs_ingestion https://dce.eastus-1.ingest.monitor.azure.com/dataCollectionRules/dcr-000a00a000a00000a000000aa000a0aa/streams/Custom-VF".into(),
            ),
            (
                "sentinel_data_collector",
                "sentinel_data_collector https://11111111-2222-3333-4444-555555555555.ods.opinsights.azure.com/api/logs".into(),
            ),
        ];
        assert_eq!(want.len(), TYPES.len(), "a case for every sink type");
        for (name, dest) in want {
            let spec = config.sinks.iter().find(|s| s.common.name == name).unwrap();
            let sink = build(spec).unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = sink.destination();
            assert_eq!(got, dest, "{name}");
            assert!(!got.contains("SECRET") && !got.contains('?'), "{got}");
            assert_eq!(
                sink.webhook_version(),
                (name == "webhook").then_some("1"),
                "{name}"
            );
        }
    }

    #[test]
    fn a_sink_types_own_keys_are_checked_at_load_and_never_printed() {
        let text = |keys: &str| {
            format!("[[source]]\nname = \"s\"\npath = \"/e\"\nsecrets = [{{ value = \"k\" }}]\nsinks = [\"h\"]\n[sink.h]\n{keys}\n")
        };
        let err = |keys: &str| {
            crate::config::Config::parse(&text(keys), TYPES)
                .unwrap_err()
                .to_string()
        };
        let e = err("type = \"file\"\npath = \"/dev/null\"\nbogus = 1");
        assert!(e.starts_with("sink.h.bogus: unknown field `bogus`"), "{e}");
        let e = err("type = \"nope\"");
        assert!(
            e.starts_with("sink.h.type: unknown sink type \"nope\" (one of: file, http"),
            "{e}"
        );
        let e = err("type = \"datadog\"\nsite = \"datadoghq.com\"\napi_key = { value = \"k\" }\nbatch = { max_events = 1001 }");
        assert_eq!(
            e,
            "sink.h.batch.max_events: must be between 1 and 1000 for a datadog sink"
        );
        let c = crate::config::Config::parse(
            &text("type = \"http\"\nurl = \"http://127.0.0.1:1/\"\nheaders = { \"Authorization\" = { value = \"Bearer sink-secret-value\" } }"),
            TYPES,
        )
        .unwrap();
        assert!(
            !format!("{c:?}").contains("sink-secret-value"),
            "a sink's settings are never printed"
        );
    }

    #[test]
    fn the_sender_sees_the_most_telling_verdict() {
        let ranked = [
            Verdict::Ok,
            Verdict::retry(RetryKind::Timeout, "t", None),
            Verdict::retry(RetryKind::Unavailable, "u", None),
            Verdict::permanent(Refusal::TooLarge, "p"),
        ];
        for w in ranked.windows(2) {
            assert!(w[0].severity() < w[1].severity(), "{w:?}");
        }
        assert_eq!(
            Verdict::retry(RetryKind::Config, "c", None).severity(),
            ranked[2].severity(),
            "refused credentials rank as an outage (503)"
        );
        let labels = [
            RetryKind::Unavailable,
            RetryKind::Timeout,
            RetryKind::Config,
        ]
        .map(RetryKind::as_str);
        assert_eq!(labels, ["unavailable", "timeout", "config_error"]);
    }

    #[test]
    fn uuid_shape() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, uuid_v4());
    }

    #[test]
    fn gzip_roundtrip() {
        use std::io::Read;
        let data = b"hello hello hello".repeat(100);
        let z = gzip(&data);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }
}
