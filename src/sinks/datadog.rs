//! `datadog` sink: Datadog Logs intake v2, `POST https://http-intake.logs.<site>/api/v2/logs`.
//!
//! Each log is exactly `message` (the original event JSON as a string; the intake parses it
//! into attributes), `status` (`info`), `timestamp` (epoch milliseconds of the event),
//! `hostname`, `service`, `ddsource`, `ddtags` (configured tags plus `event_type:<type>` and
//! `org_id:<org>`). Body = JSON array; `DD-API-KEY` header; gzip by default.
//!
//! Limits (Datadog docs): at most 1,000 logs and 5,000,000 bytes uncompressed per request; a
//! log over 1,000,000 bytes is truncated by the intake and a timestamp older than 18 hours is
//! dropped, both while answering 202. vfgate refuses such an event itself (permanent failure
//! with the reason) rather than report a delivery that lost data. A batch over the byte limit
//! is split before sending.
//!
//! Owns: this target's log encoding, its limits and answer classification; sends through
//! `crate::client`; retries, batching and bisection are the pipeline's.

use super::Refusal;
use super::{compress, Attempt, Compression, SendResult, Sink, SinkType, Verdict};
use crate::client::{HttpClient, Request, Response, Target};
use crate::config::{sink_keys, ConfigError, RawClientTls, SinkCommon, SinkKind};
use crate::event::Event;
use crate::secret::{Secret, SecretRef};
use async_trait::async_trait;
use serde::Deserialize;
use std::sync::Arc;

/// Most logs per request.
pub const MAX_LOGS: usize = 1000;
/// Most uncompressed bytes per request.
pub const MAX_BODY: usize = 5_000_000;
/// Largest log the intake keeps whole.
pub const MAX_LOG: usize = 1_000_000;
/// Oldest timestamp the intake keeps.
pub const MAX_AGE_MS: i64 = 18 * 3600 * 1000;
/// Furthest-ahead timestamp the intake keeps.
pub const MAX_AHEAD_MS: i64 = 2 * 3600 * 1000;
/// Documented sites.
pub const SITES: &[&str] = &[
    "datadoghq.com",
    "datadoghq.eu",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "ap1.datadoghq.com",
    "ddog-gov.com",
];

/// The `datadog` sink type.
pub const TYPE: SinkType = SinkType {
    kind: SinkKind {
        name: "datadog",
        max_events: MAX_LOGS,
        configure: |common, keys| Ok(Arc::new(configure(common, keys)?)),
    },
    build: |c| build(&c.common, c.settings()?),
};

/// `[sink.NAME]` keys of a datadog sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatadogConfig {
    /// Datadog site, e.g. `datadoghq.eu`.
    pub site: Option<String>,
    /// Full intake URL (wins over `site`).
    pub url: Option<String>,
    /// API key.
    pub api_key: SecretRef,
    /// `service` of every log.
    #[serde(default = "default_service")]
    pub service: String,
    /// `ddsource` of every log.
    #[serde(default = "default_source")]
    pub ddsource: String,
    /// Extra `key:value` tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// `hostname` of every log (default: this machine's name).
    pub hostname: Option<String>,
    /// `gzip` (default) or `none`.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Outbound TLS.
    #[serde(default)]
    pub tls: RawClientTls,
}

fn default_service() -> String {
    "vfgate".into()
}
fn default_source() -> String {
    "syvault".into()
}
fn default_compression() -> Compression {
    Compression::Gzip
}

/// Validated settings: the keys, the intake target and the loaded API key.
struct Settings {
    keys: DatadogConfig,
    target: Target,
    api_key: Secret,
}

fn configure(common: &SinkCommon, keys: toml::Table) -> Result<Settings, ConfigError> {
    let c: DatadogConfig = sink_keys(common, keys)?;
    let key = common.key();
    let url = match (&c.url, &c.site) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) if SITES.contains(&s.as_str()) => {
            format!("https://http-intake.logs.{s}/api/v2/logs")
        }
        (None, Some(s)) => {
            return Err(ConfigError::invalid(
                format!("{key}.site"),
                format!(
                    "unknown site {s:?} (one of: {}); or give the full intake url",
                    SITES.join(", ")
                ),
            ))
        }
        (None, None) => return Err(ConfigError::invalid(key, "either site or url is required")),
    };
    let target = Target::parse(&url).map_err(|e| ConfigError::invalid(format!("{key}.url"), e))?;
    for (i, t) in c.tags.iter().enumerate() {
        if !t.contains(':') || t.contains(',') {
            return Err(ConfigError::invalid(
                format!("{key}.tags[{i}]"),
                format!("{t:?}: a tag is \"key:value\" without commas"),
            ));
        }
    }
    let api_key = c
        .api_key
        .load()
        .map_err(|e| ConfigError::invalid(format!("{key}.api_key"), e.to_string()))?;
    Ok(Settings {
        keys: c,
        target,
        api_key,
    })
}

fn build(common: &SinkCommon, s: &Settings) -> Result<Arc<dyn Sink>, ConfigError> {
    let c = &s.keys;
    let path = s.target.path.clone();
    let client = HttpClient::new(s.target.clone(), &c.tls, common.timeout)
        .map_err(|e| ConfigError::invalid(format!("{}.tls", common.key()), e))?;
    Ok(Arc::new(Datadog {
        client,
        path,
        api_key: s.api_key.expose().to_vec(),
        hostname: c.hostname.clone().unwrap_or_else(super::hostname),
        service: c.service.clone(),
        ddsource: c.ddsource.clone(),
        tags: c.tags.join(","),
        compression: c.compression,
        now_ms: crate::time::now_ms,
    }))
}

/// The sink.
pub struct Datadog {
    client: HttpClient,
    path: String,
    api_key: Vec<u8>,
    hostname: String,
    service: String,
    ddsource: String,
    tags: String,
    compression: Compression,
    now_ms: fn() -> i64,
}

#[derive(serde::Serialize)]
struct Log<'a> {
    message: &'a str,
    status: &'static str,
    timestamp: i64,
    hostname: &'a str,
    service: &'a str,
    ddsource: &'a str,
    ddtags: String,
}

impl Datadog {
    /// One log object.
    pub fn log(&self, ev: &Event, now_ms: i64) -> Result<Vec<u8>, Verdict> {
        let age = now_ms - ev.timestamp_ms;
        if age > MAX_AGE_MS {
            return Err(Verdict::permanent(Refusal::TooOld, format!("event timestamp {} is older than 18h: the Datadog intake would drop it while answering 202", ev.timestamp)));
        }
        if -age > MAX_AHEAD_MS {
            return Err(Verdict::permanent(
                Refusal::TooNew,
                format!(
                    "event timestamp {} is more than 2h ahead: the Datadog intake would drop it",
                    ev.timestamp
                ),
            ));
        }
        let message = std::str::from_utf8(&ev.body)
            .map_err(|_| Verdict::permanent(Refusal::Rejected, "event is not UTF-8"))?;
        let mut ddtags = self.tags.clone();
        let mut tag = |k: &str, v: &str| {
            if !v.is_empty() {
                if !ddtags.is_empty() {
                    ddtags.push(',');
                }
                ddtags.push_str(k);
                ddtags.push(':');
                ddtags.push_str(&v.replace(',', "_"));
            }
        };
        tag("event_type", &ev.event_type);
        tag("org_id", ev.org_id.as_deref().unwrap_or(""));
        let out = serde_json::to_vec(&Log {
            message,
            status: "info",
            timestamp: ev.timestamp_ms,
            hostname: &self.hostname,
            service: &self.service,
            ddsource: &self.ddsource,
            ddtags,
        })
        .expect("json of strings");
        if out.len() > MAX_LOG {
            return Err(Verdict::permanent(
                Refusal::TooLarge,
                format!(
                    "log is {} bytes; the Datadog intake truncates logs over {MAX_LOG}",
                    out.len()
                ),
            ));
        }
        Ok(out)
    }

    /// The JSON array body, or the verdict that stops the batch.
    pub fn encode_at(&self, batch: &[Arc<Event>], now_ms: i64) -> Result<Vec<u8>, SendResult> {
        let mut out = Vec::with_capacity(batch.iter().map(|e| e.body.len() * 11 / 10 + 200).sum());
        out.push(b'[');
        for (i, e) in batch.iter().enumerate() {
            let log = match self.log(e, now_ms) {
                Ok(l) => l,
                Err(Verdict::Permanent { reason, detail }) => {
                    return Err(SendResult::Split { reason, detail })
                }
                Err(v) => return Err(SendResult::All(v)),
            };
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&log);
        }
        out.push(b']');
        if out.len() > MAX_BODY {
            return Err(SendResult::Split {
                reason: Refusal::TooLarge,
                detail: format!(
                    "batch is {} bytes; the intake takes at most {MAX_BODY}",
                    out.len()
                ),
            });
        }
        Ok(out)
    }
}

/// Classifies an intake answer: 202 delivered, 401/403 configuration errors (a wrong key
/// or a key of another site), 408/429/5xx retried, 413 split, 400 bisected.
pub fn classify(resp: &Response) -> SendResult {
    super::classify_http(
        resp,
        "Datadog (check the API key and its site)",
        &[401, 403],
    )
}

#[async_trait]
impl Sink for Datadog {
    fn encode(&self, batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult> {
        self.encode_at(batch, (self.now_ms)())
    }

    async fn send(&self, batch: &[Arc<Event>]) -> Attempt {
        let body = match self.encode_at(batch, (self.now_ms)()) {
            Ok(b) => b,
            Err(r) => return Attempt::not_sent(r),
        };
        let mut headers = vec![
            ("dd-api-key".to_string(), self.api_key.clone()),
            ("content-type".to_string(), b"application/json".to_vec()),
        ];
        let body = compress(self.compression, body, &mut headers);
        let req = Request {
            method: "POST",
            path: self.path.clone(),
            headers,
            body,
        };
        super::exchange(&self.client, &req, classify).await
    }

    fn destination(&self) -> String {
        super::http_destination(TYPE.name(), self.client.target(), &self.path)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(keys: &str) -> Result<String, String> {
        let text = format!("[[source]]\nname = \"s\"\npath = \"/e\"\nsecrets = [{{ value = \"k\" }}]\nsinks = [\"dd\"]\n[sink.dd]\ntype = \"datadog\"\napi_key = {{ value = \"k\" }}\n{keys}\n");
        match Config::parse(&text, crate::sinks::TYPES) {
            Ok(c) => c.sinks[0]
                .settings::<super::Settings>()
                .map(|s| format!("{}{}", s.target.origin(), s.target.path))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn site_gives_the_intake_url_and_url_wins() {
        assert_eq!(
            err("site = \"datadoghq.eu\"").unwrap(),
            "https://http-intake.logs.datadoghq.eu/api/v2/logs"
        );
        assert_eq!(
            err("site = \"us5.datadoghq.com\"").unwrap(),
            "https://http-intake.logs.us5.datadoghq.com/api/v2/logs"
        );
        assert_eq!(
            err("site = \"ddog-gov.com\"").unwrap(),
            "https://http-intake.logs.ddog-gov.com/api/v2/logs"
        );
        assert_eq!(
            err("site = \"datadoghq.eu\"\nurl = \"http://127.0.0.1:1/x\"").unwrap(),
            "http://127.0.0.1:1/x"
        );
        assert!(err("site = \"datadoghq.moon\"")
            .unwrap_err()
            .starts_with("sink.dd.site: unknown site"));
        assert!(
            err("site = \"datadoghq.eu\"\nbatch = { max_events = 1001 }")
                .unwrap_err()
                .starts_with("sink.dd.batch.max_events: must be between 1 and 1000")
        );
        assert!(err("site = \"datadoghq.eu\"\ntags = [\"nocolon\"]")
            .unwrap_err()
            .starts_with("sink.dd.tags[0]"));
    }
}
