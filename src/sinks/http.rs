//! `http` sink: the sender's documented "Custom" target, a JSON POST to any endpoint.
//!
//! With `batch.max_events = 1` each event is POSTed as received, byte for byte; with more,
//! every request is a JSON array of the events' bytes, a batch of one too (`[{...}]`), so
//! the receiver parses one shape whatever the traffic. Custom headers are strings or secret refs.
//! Classification: 2xx ok; 401/403 configuration error (kept, retried); 408/429/5xx retried
//! honouring `Retry-After`; 413 and other 4xx split the batch until the bad event is alone.
//!
//! ```toml
//! [sink.custom]
//! type = "http"
//! url = "https://siem.example.com/ingest"
//! headers = { "Authorization" = { env = "CUSTOM_AUTH" }, "X-Team" = "secops" }
//! tls = { ca_file = "/etc/ssl/internal-ca.pem" }
//! ```
//!
//! Owns: this target's encoding and answer classification; sends through `crate::client`;
//! retries, batching and bisection are the pipeline's.

use super::{classify_status, Attempt, SendResult, Sink, SinkType};
use crate::client::{HttpClient, Request, Target};
use crate::config::{sink_keys, ConfigError, RawClientTls, SinkCommon, SinkKind};
use crate::event::Event;
use crate::secret::SecretRef;
use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The `http` sink type.
pub const TYPE: SinkType = SinkType {
    kind: SinkKind {
        name: "http",
        max_events: crate::config::defaults::MAX_BATCH_EVENTS,
        configure: |common, keys| Ok(Arc::new(configure(common, keys)?)),
    },
    build: |c| build(&c.common, c.settings()?),
};

/// A header value: plain text or a secret reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a header value: a string, or a secret { env = \"NAME\" } / { file = \"PATH\" } / { value = \"...\" }"
)]
pub enum HeaderValue {
    /// Plain text.
    Text(String),
    /// A secret.
    Secret(SecretRef),
}

/// `[sink.NAME]` keys of an http sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Target URL.
    pub url: String,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValue>,
    /// Outbound TLS.
    #[serde(default)]
    pub tls: RawClientTls,
}

/// Headers that vfgate sets itself.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
];

/// Resolves configured headers (loading secrets), checking names and values.
pub fn resolve_headers(
    key: &str,
    headers: &BTreeMap<String, HeaderValue>,
) -> Result<Vec<(String, Vec<u8>)>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let hkey = format!("{key}.headers.{name}");
        let lower = name.to_ascii_lowercase();
        if !is_token(&lower) {
            return Err(ConfigError::invalid(hkey, "not a valid header name"));
        }
        if RESERVED.contains(&lower.as_str()) {
            return Err(ConfigError::invalid(hkey, "set by vfgate itself"));
        }
        let bytes = match value {
            HeaderValue::Text(t) => t.as_bytes().to_vec(),
            HeaderValue::Secret(r) => r
                .load()
                .map_err(|e| ConfigError::invalid(hkey.clone(), e.to_string()))?
                .expose()
                .to_vec(),
        };
        if bytes.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ConfigError::invalid(
                hkey,
                "value contains a control character",
            ));
        }
        out.push((lower, bytes));
    }
    Ok(out)
}

/// Header-name syntax (RFC 9110 token).
fn is_token(s: &str) -> bool {
    let tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    !s.is_empty() && s.bytes().all(tchar)
}

/// Validated settings: the target, the headers with their secrets loaded, outbound TLS.
struct Settings {
    target: Target,
    headers: Vec<(String, Vec<u8>)>,
    tls: RawClientTls,
}

fn configure(common: &SinkCommon, keys: toml::Table) -> Result<Settings, ConfigError> {
    let c: HttpConfig = sink_keys(common, keys)?;
    let key = common.key();
    let target =
        Target::parse(&c.url).map_err(|e| ConfigError::invalid(format!("{key}.url"), e))?;
    let headers = resolve_headers(&key, &c.headers)?;
    if let Some(ca) = &c.tls.ca_file {
        std::fs::metadata(ca).map_err(|e| {
            ConfigError::invalid(
                format!("{key}.tls.ca_file"),
                format!("cannot read {}: {e}", ca.display()),
            )
        })?;
    }
    Ok(Settings {
        target,
        headers,
        tls: c.tls,
    })
}

fn build(common: &SinkCommon, s: &Settings) -> Result<Arc<dyn Sink>, ConfigError> {
    let mut headers = s.headers.clone();
    headers.push(("content-type".into(), b"application/json".to_vec()));
    let path = s.target.path.clone();
    let client = HttpClient::new(s.target.clone(), &s.tls, common.timeout)
        .map_err(|e| ConfigError::invalid(format!("{}.tls", common.key()), e))?;
    Ok(Arc::new(HttpSink {
        client,
        headers,
        path,
        array: common.batch.max_events > 1,
    }))
}

/// A custom HTTP endpoint.
pub struct HttpSink {
    client: HttpClient,
    headers: Vec<(String, Vec<u8>)>,
    path: String,
    /// `batch.max_events > 1`: every body is an array, whatever the batch's size.
    array: bool,
}

/// The body for a batch: a JSON array of the events' bytes when `array` (the sink batches),
/// else the single event's bytes.
pub fn encode(batch: &[Arc<Event>], array: bool) -> Bytes {
    if let ([one], false) = (batch, array) {
        return one.body.clone();
    }
    let mut out = Vec::with_capacity(batch.iter().map(|e| e.body.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&e.body);
    }
    out.push(b']');
    Bytes::from(out)
}

#[async_trait]
impl Sink for HttpSink {
    fn encode(&self, batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult> {
        Ok(encode(batch, self.array).to_vec())
    }

    async fn send(&self, batch: &[Arc<Event>]) -> Attempt {
        let req = Request {
            method: "POST",
            path: self.path.clone(),
            headers: self.headers.clone(),
            body: encode(batch, self.array),
        };
        super::exchange(&self.client, &req, classify_status).await
    }

    fn destination(&self) -> String {
        super::http_destination(TYPE.name(), self.client.target(), &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(max_events: usize) -> Arc<dyn Sink> {
        let text = format!(
            "[[source]]\nname = \"s\"\npath = \"/e\"\nsecrets = [{{ value = \"k\" }}]\nsinks = [\"h\"]\n[sink.h]\ntype = \"http\"\nurl = \"http://127.0.0.1:1/in\"\nbatch = {{ max_events = {max_events} }}\n"
        );
        let config = crate::config::Config::parse(&text, crate::sinks::TYPES).unwrap();
        crate::sinks::build(&config.sinks[0]).unwrap()
    }

    fn event(id: &str) -> Arc<Event> {
        let body = format!(
            r#"{{"event_id":"{id}","event_type":"user.login","timestamp":"2026-01-01T00:00:00Z"}}"#
        );
        Arc::new(Event::parse(Bytes::from(body)).unwrap())
    }

    #[test]
    fn a_batching_sink_sends_an_array_even_for_one_event() {
        let one = [event("a")];
        let two = [event("a"), event("b")];
        let body = |s: &Arc<dyn Sink>, b: &[Arc<Event>]| {
            String::from_utf8(s.encode(b).ok().unwrap()).unwrap()
        };
        let batching = sink(10);
        assert_eq!(body(&batching, &one), format!("[{}]", body(&sink(1), &one)));
        assert_eq!(
            serde_json::from_str::<Vec<serde_json::Value>>(&body(&batching, &two))
                .unwrap()
                .len(),
            2
        );
        // One event per request: the event as received, byte for byte.
        assert_eq!(body(&sink(1), &one).as_bytes(), &one[0].body[..]);
    }
}
