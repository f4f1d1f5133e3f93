//! `splunk_hec` sink: Splunk HTTP Event Collector, `/services/collector/event`.
//!
//! Envelope per event: `{"time":<secs.mmm>,"host","source","sourcetype","index","event":<the
//! original event object>,"fields":{...}}`; a batch is the envelopes one after another
//! (newline-separated). `time` is formatted from integer milliseconds, never through a float.
//! Every request carries `Authorization: Splunk <token>` and an `X-Splunk-Request-Channel`.
//!
//! Limits (Splunk defaults): request body `max_content_length` 800 MiB (1 MB on old versions
//! and commonly on Splunk Cloud: batch well below), single event `maxEventSize` 5 MiB.
//!
//! Classification reads HEC's JSON reply (`code`, `invalid-event-number`, `ackId`), not only
//! the status: with `invalid-event-number` N the envelopes before N were indexed (delivered),
//! N fails alone, and the rest are retried. Token and channel problems are configuration
//! errors (kept). With `ack.enabled`, a batch counts as delivered only once its ackId is
//! acknowledged by `/services/collector/ack`; an ack that never comes is retried (a resend
//! may duplicate, as Splunk documents).
//!
//! Owns: the HEC envelopes, the channel, acknowledgement polling and answer classification;
//! sends through `crate::client`; retries, batching and bisection are the pipeline's.

use super::Refusal;
use super::{
    body_snippet, client_error_attempt, compress, Attempt, Compression, RetryKind, SendResult,
    Sink, SinkType, Verdict,
};
use crate::client::{HttpClient, Request, Response, Target};
use crate::config::{sink_keys, ConfigError, DurationStr, RawClientTls, SinkCommon, SinkKind};
use crate::event::Event;
use crate::secret::{Secret, SecretRef};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Largest single event HEC accepts by default (`maxEventSize`).
pub const MAX_EVENT_BYTES: usize = 5 * 1024 * 1024;

/// The `splunk_hec` sink type.
pub const TYPE: SinkType = SinkType {
    kind: SinkKind {
        name: "splunk_hec",
        max_events: crate::config::defaults::MAX_BATCH_EVENTS,
        configure: |common, keys| Ok(Arc::new(configure(common, keys)?)),
    },
    build: |c| build(&c.common, c.settings()?),
};

/// `ack = { ... }`: indexer acknowledgement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckConfig {
    /// Whether to wait for indexer acknowledgement.
    #[serde(default)]
    pub enabled: bool,
    /// Channel GUID (default: a random one per start).
    pub channel: Option<String>,
    /// Poll interval.
    pub poll: Option<DurationStr>,
    /// Give up waiting (and retry the batch) after this long.
    pub timeout: Option<DurationStr>,
}

/// `[sink.NAME]` keys of a splunk_hec sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HecConfig {
    /// Collector base URL or the `/services/collector/event` URL.
    pub url: String,
    /// HEC token.
    pub token: SecretRef,
    /// Index (default: the token's).
    pub index: Option<String>,
    /// Sourcetype.
    #[serde(default = "default_sourcetype")]
    pub sourcetype: String,
    /// Source.
    pub source: Option<String>,
    /// Host (default: this machine's name).
    pub host: Option<String>,
    /// Indexed fields: name = dotted event path.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Indexer acknowledgement.
    pub ack: Option<AckConfig>,
    /// `gzip` or `none` (default).
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Outbound TLS.
    #[serde(default)]
    pub tls: RawClientTls,
}

fn default_sourcetype() -> String {
    "syvault:audit".into()
}
fn default_compression() -> Compression {
    Compression::None
}

struct Ack {
    poll: Duration,
    timeout: Duration,
}

/// The sink.
pub struct SplunkHec {
    client: HttpClient,
    event_path: String,
    ack_path: String,
    auth: Vec<u8>,
    channel: String,
    /// Envelope prefix after `time`: `,"host":..,"sourcetype":..,"event":`.
    meta: String,
    fields: Vec<(String, String)>,
    ack: Option<Ack>,
    compression: Compression,
}

fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Validated settings: the keys, the parsed target and the loaded token.
struct Settings {
    keys: HecConfig,
    target: Target,
    token: Secret,
}

fn configure(common: &SinkCommon, keys: toml::Table) -> Result<Settings, ConfigError> {
    let c: HecConfig = sink_keys(common, keys)?;
    let key = common.key();
    let target =
        Target::parse(&c.url).map_err(|e| ConfigError::invalid(format!("{key}.url"), e))?;
    let token = c
        .token
        .load()
        .map_err(|e| ConfigError::invalid(format!("{key}.token"), e.to_string()))?;
    if let Some(ch) = c.ack.as_ref().and_then(|a| a.channel.as_ref()) {
        if !is_guid(ch) {
            return Err(ConfigError::invalid(
                format!("{key}.ack.channel"),
                "must be a GUID like 2f1e6f0a-8c3b-4d6e-9f51-3b1c0a7d9e42",
            ));
        }
    }
    for (name, path) in &c.fields {
        if name.is_empty() || path.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.fields"),
                "names and paths must not be empty",
            ));
        }
    }
    Ok(Settings {
        keys: c,
        target,
        token,
    })
}

fn build(common: &SinkCommon, s: &Settings) -> Result<Arc<dyn Sink>, ConfigError> {
    let c = &s.keys;
    let base = s
        .target
        .path
        .trim_end_matches('/')
        .trim_end_matches("/services/collector/event")
        .trim_end_matches("/services/collector")
        .to_string();
    let event_path = format!("{base}/services/collector/event");
    let ack_path = format!("{base}/services/collector/ack");
    let mut auth = b"Splunk ".to_vec();
    auth.extend_from_slice(s.token.expose());
    let mut meta = String::new();
    let host = c.host.clone().unwrap_or_else(super::hostname);
    let js = |s: &str| serde_json::to_string(s).expect("string");
    meta.push_str(&format!(",\"host\":{}", js(&host)));
    if let Some(s) = &c.source {
        meta.push_str(&format!(",\"source\":{}", js(s)));
    }
    meta.push_str(&format!(",\"sourcetype\":{}", js(&c.sourcetype)));
    if let Some(i) = &c.index {
        meta.push_str(&format!(",\"index\":{}", js(i)));
    }
    meta.push_str(",\"event\":");
    let channel = c
        .ack
        .as_ref()
        .and_then(|a| a.channel.clone())
        .unwrap_or_else(super::uuid_v4);
    let ack = c.ack.as_ref().filter(|a| a.enabled).map(|a| Ack {
        poll: a.poll.map(|d| d.0).unwrap_or(Duration::from_secs(1)),
        timeout: a.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
    });
    let client = HttpClient::new(s.target.clone(), &c.tls, common.timeout)
        .map_err(|e| ConfigError::invalid(format!("{}.tls", common.key()), e))?;
    Ok(Arc::new(SplunkHec {
        client,
        event_path,
        ack_path,
        auth,
        channel,
        meta,
        fields: c.fields.clone().into_iter().collect(),
        ack,
        compression: c.compression,
    }))
}

/// `secs.mmm` from integer milliseconds (never via f64, never in exponent form).
pub fn hec_time(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let a = ms.unsigned_abs();
    format!("{sign}{}.{:03}", a / 1000, a % 1000)
}

impl SplunkHec {
    /// Encodes one envelope (no trailing newline).
    pub fn envelope(&self, ev: &Event, out: &mut Vec<u8>) -> Result<(), Verdict> {
        let body = ev.one_line();
        if body.len() > MAX_EVENT_BYTES {
            return Err(Verdict::permanent(
                Refusal::TooLarge,
                format!(
                    "event is {} bytes; HEC accepts at most {MAX_EVENT_BYTES}",
                    body.len()
                ),
            ));
        }
        out.extend_from_slice(b"{\"time\":");
        out.extend_from_slice(hec_time(ev.timestamp_ms).as_bytes());
        out.extend_from_slice(self.meta.as_bytes());
        out.extend_from_slice(&body);
        if !self.fields.is_empty() {
            let v: serde_json::Value = serde_json::from_slice(&ev.body).unwrap_or_default();
            let mut map = serde_json::Map::new();
            for (name, path) in &self.fields {
                let found = path.split('.').try_fold(&v, |v, k| v.get(k));
                let val = match found {
                    Some(serde_json::Value::String(s)) => {
                        Some(serde_json::Value::String(s.clone()))
                    }
                    Some(serde_json::Value::Number(n)) => {
                        Some(serde_json::Value::String(n.to_string()))
                    }
                    Some(serde_json::Value::Bool(b)) => {
                        Some(serde_json::Value::String(b.to_string()))
                    }
                    Some(serde_json::Value::Array(a)) if a.iter().all(|x| x.is_string()) => {
                        Some(serde_json::Value::Array(a.clone()))
                    }
                    _ => None,
                };
                if let Some(val) = val {
                    map.insert(name.clone(), val);
                }
            }
            if !map.is_empty() {
                out.extend_from_slice(b",\"fields\":");
                serde_json::to_writer(&mut *out, &map).expect("json to Vec");
            }
        }
        out.push(b'}');
        Ok(())
    }

    /// The request body for a batch, or the verdict that stops it.
    pub fn encode_batch(&self, batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult> {
        let mut out = Vec::with_capacity(
            batch
                .iter()
                .map(|e| e.body.len() + self.meta.len() + 32)
                .sum(),
        );
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                out.push(b'\n');
            }
            if let Err(Verdict::Permanent { reason, detail }) = self.envelope(e, &mut out) {
                return Err(SendResult::Split { reason, detail });
            }
        }
        Ok(out)
    }

    fn headers(&self) -> Vec<(String, Vec<u8>)> {
        vec![
            ("authorization".into(), self.auth.clone()),
            ("content-type".into(), b"application/json".to_vec()),
            (
                "x-splunk-request-channel".into(),
                self.channel.as_bytes().to_vec(),
            ),
        ]
    }

    async fn wait_for_ack(&self, ack_id: u64, ack: &Ack, n: usize) -> SendResult {
        let deadline = tokio::time::Instant::now() + ack.timeout;
        let body = bytes::Bytes::from(format!("{{\"acks\":[{ack_id}]}}"));
        loop {
            tokio::time::sleep(ack.poll).await;
            let req = Request {
                method: "POST",
                path: self.ack_path.clone(),
                headers: self.headers(),
                body: body.clone(),
            };
            if let Ok(r) = self.client.send(&req).await {
                if r.status == 200 {
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    if v["acks"][ack_id.to_string()].as_bool() == Some(true) {
                        return SendResult::All(Verdict::Ok);
                    }
                } else if let SendResult::All(
                    v @ Verdict::Retry {
                        kind: RetryKind::Config,
                        ..
                    },
                ) = classify(&r, n)
                {
                    return SendResult::All(v);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return SendResult::All(Verdict::retry(
                    RetryKind::Timeout,
                    format!(
                        "ackId {ack_id} not acknowledged within {:?}; resending",
                        ack.timeout
                    ),
                    None,
                ));
            }
        }
    }
}

/// Classifies a HEC answer for a batch of `n` envelopes.
pub fn classify(resp: &Response, n: usize) -> SendResult {
    #[derive(Deserialize, Default)]
    struct Reply {
        code: Option<i64>,
        text: Option<String>,
        #[serde(rename = "invalid-event-number")]
        invalid: Option<usize>,
    }
    let r: Reply = serde_json::from_slice(&resp.body).unwrap_or_default();
    let text = r.text.clone().unwrap_or_else(|| body_snippet(resp));
    let detail = format!(
        "HEC answered {} code {}: {text}",
        resp.status,
        r.code.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
    );
    let config = |d: String| SendResult::All(Verdict::retry(RetryKind::Config, d, None));
    match (resp.status, r.code) {
        (200..=299, Some(0) | None) => SendResult::All(Verdict::Ok),
        (_, Some(1..=4)) | (401 | 403, _) => config(detail),
        // Index not allowed, channel or ack misconfiguration, query-string auth: keep the data.
        (_, Some(5 | 7 | 10 | 11 | 14 | 16)) => config(detail),
        (_, Some(6 | 12 | 13 | 15)) => match r.invalid {
            Some(k) if k < n => SendResult::PerEvent(
                (0..n)
                    .map(|i| match i.cmp(&k) {
                        std::cmp::Ordering::Less => Verdict::Ok,
                        std::cmp::Ordering::Equal => {
                            Verdict::permanent(Refusal::Rejected, detail.clone())
                        }
                        std::cmp::Ordering::Greater => Verdict::retry(
                            RetryKind::Unavailable,
                            format!("after a refused event in the same batch: {detail}"),
                            None,
                        ),
                    })
                    .collect(),
            ),
            _ => SendResult::Split {
                reason: Refusal::Rejected,
                detail,
            },
        },
        (413, _) => SendResult::Split {
            reason: Refusal::TooLarge,
            detail,
        },
        (408 | 429 | 500..=599, _) | (_, Some(8 | 9)) => SendResult::All(Verdict::retry(
            RetryKind::Unavailable,
            detail,
            resp.retry_after(),
        )),
        (400..=499, _) => SendResult::Split {
            reason: Refusal::Rejected,
            detail,
        },
        _ => SendResult::All(Verdict::retry(RetryKind::Unavailable, detail, None)),
    }
}

#[async_trait]
impl Sink for SplunkHec {
    fn encode(&self, batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult> {
        self.encode_batch(batch)
    }

    async fn send(&self, batch: &[Arc<Event>]) -> Attempt {
        let body = match self.encode_batch(batch) {
            Ok(b) => b,
            Err(r) => return Attempt::not_sent(r),
        };
        let mut headers = self.headers();
        let body = compress(self.compression, body, &mut headers);
        let req = Request {
            method: "POST",
            path: self.event_path.clone(),
            headers,
            body,
        };
        let resp = match self.client.send(&req).await {
            Ok(r) => r,
            Err(e) => return client_error_attempt(&e),
        };
        let mut result = classify(&resp, batch.len());
        if let (Some(ack), SendResult::All(Verdict::Ok)) = (&self.ack, &result) {
            let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
            result = match v["ackId"].as_u64() {
                Some(id) => self.wait_for_ack(id, ack, batch.len()).await,
                None => SendResult::All(Verdict::retry(
                    RetryKind::Config,
                    "ack is enabled but HEC returned no ackId (is useACK on for this token?)",
                    None,
                )),
            };
        }
        Attempt {
            status: resp.status.to_string(),
            result,
        }
    }

    fn destination(&self) -> String {
        super::http_destination(TYPE.name(), self.client.target(), &self.event_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![],
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn time_from_integer_millis() {
        assert_eq!(hec_time(1715678493417), "1715678493.417");
        assert_eq!(hec_time(1715678501002), "1715678501.002");
        assert_eq!(hec_time(1000), "1.000");
    }

    #[test]
    fn positional_failure() {
        let r = classify(
            &resp(
                400,
                r#"{"text":"Invalid data format","code":6,"invalid-event-number":2}"#,
            ),
            5,
        );
        let SendResult::PerEvent(v) = r else {
            panic!("{r:?}")
        };
        assert_eq!(v[0], Verdict::Ok);
        assert_eq!(v[1], Verdict::Ok);
        assert!(matches!(v[2], Verdict::Permanent { .. }));
        assert!(matches!(
            v[3],
            Verdict::Retry {
                kind: RetryKind::Unavailable,
                ..
            }
        ));
        assert!(matches!(v[4], Verdict::Retry { .. }));
    }

    #[test]
    fn codes() {
        assert_eq!(
            classify(&resp(200, r#"{"text":"Success","code":0}"#), 2),
            SendResult::All(Verdict::Ok)
        );
        assert!(matches!(
            classify(&resp(403, r#"{"text":"Invalid token","code":4}"#), 1),
            SendResult::All(Verdict::Retry {
                kind: RetryKind::Config,
                ..
            })
        ));
        assert!(matches!(
            classify(
                &resp(
                    400,
                    r#"{"text":"Incorrect index","code":7,"invalid-event-number":1}"#
                ),
                3
            ),
            SendResult::All(Verdict::Retry {
                kind: RetryKind::Config,
                ..
            })
        ));
        assert!(matches!(
            classify(&resp(503, r#"{"text":"Server is busy","code":9}"#), 1),
            SendResult::All(Verdict::Retry {
                kind: RetryKind::Unavailable,
                ..
            })
        ));
        assert!(matches!(
            classify(&resp(413, "too big"), 4),
            SendResult::Split {
                reason: Refusal::TooLarge,
                ..
            }
        ));
        assert!(matches!(
            classify(
                &resp(400, r#"{"text":"Event field is required","code":12}"#),
                4
            ),
            SendResult::Split { .. }
        ));
    }
}
