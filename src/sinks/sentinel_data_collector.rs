//! `sentinel_data_collector` sink: the legacy Azure Monitor HTTP Data Collector API.
//!
//! Microsoft's support for it ended on 14 September 2026 (existing ingestion keeps working for
//! TLS 1.2+ clients, with critical security fixes only); it is kept for workspaces that still
//! use it, with a start-up warning. New deployments should use `azure_logs_ingestion`.
//!
//! `POST {url}/api/logs?api-version=2016-04-01`, `url` defaulting to
//! `https://<workspace_id>.ods.opinsights.azure.com`; headers `Content-Type:
//! application/json`, `Log-Type`, a fresh `x-ms-date` (RFC 1123) per request,
//! `time-generated-field`, and `Authorization: SharedKey <workspace_id>:<signature>` where the
//! signature is base64(HMAC-SHA256(base64-decoded shared key, "POST\n<body byte
//! length>\napplication/json\nx-ms-date:<date>\n/api/logs")), computed over the exact bytes
//! sent. Body: a JSON array of the flat records of `azure_logs_ingestion`, with `EventTime`
//! in place of the reserved `TimeGenerated`.
//! Limits: 30 MB per call, 32 KB per field value (a longer RawEvent fails permanently).
//! Answers: 200 delivered; 400 InvalidDataFormat bisected, other 400 codes and 403
//! configuration errors (kept); 404 (wrong URL, or too large) split, then configuration error;
//! 429/5xx retried.
//!
//! Owns: the SharedKey signature and answer classification; takes its records from
//! `azure_logs_ingestion` and sends through `crate::client`; retries, batching and
//! bisection are the pipeline's.

use super::azure_logs_ingestion::encode_records;
use super::Refusal;
use super::{body_snippet, Attempt, SendResult, Sink, SinkType};
use crate::client::{HttpClient, Request, Response, Target};
use crate::config::{sink_keys, ConfigError, RawClientTls, SinkCommon, SinkKind};
use crate::event::Event;
use crate::secret::{Secret, SecretRef};
use async_trait::async_trait;
use base64::Engine;
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use std::sync::Arc;

/// Most bytes per call.
pub const MAX_BODY: usize = 30 * 1000 * 1000;
/// Largest field value.
pub const MAX_FIELD: usize = 32 * 1024;

/// The `sentinel_data_collector` sink type.
pub const TYPE: SinkType = SinkType {
    kind: SinkKind {
        name: "sentinel_data_collector",
        max_events: crate::config::defaults::MAX_BATCH_EVENTS,
        configure: |common, keys| Ok(Arc::new(configure(common, keys)?)),
    },
    build: |c| build(&c.common, c.settings()?),
};

/// `[sink.NAME]` keys of a sentinel_data_collector sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataCollectorConfig {
    /// Log Analytics workspace id.
    pub workspace_id: String,
    /// Workspace primary or secondary key (base64, as shown by Azure).
    pub shared_key: SecretRef,
    /// Record type; the table is `<log_type>_CL`.
    pub log_type: String,
    /// Record field used as TimeGenerated.
    #[serde(default = "default_time_field")]
    pub time_generated_field: String,
    /// Base URL (sovereign clouds, tests).
    pub url: Option<String>,
    /// Outbound TLS.
    #[serde(default)]
    pub tls: RawClientTls,
}

fn default_time_field() -> String {
    "EventTime".into()
}

/// The SharedKey signature of a request: base64(HMAC-SHA256(key, string-to-sign)).
pub fn signature(key: &[u8], content_length: usize, date: &str) -> String {
    let to_sign = format!("POST\n{content_length}\napplication/json\nx-ms-date:{date}\n/api/logs");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Validated settings: the keys, the target and the decoded shared key.
struct Settings {
    keys: DataCollectorConfig,
    target: Target,
    shared_key: Secret,
}

fn configure(common: &SinkCommon, keys: toml::Table) -> Result<Settings, ConfigError> {
    let c: DataCollectorConfig = sink_keys(common, keys)?;
    let key = common.key();
    if c.workspace_id.is_empty()
        || !c
            .workspace_id
            .chars()
            .all(|ch| ch.is_ascii_hexdigit() || ch == '-')
    {
        return Err(ConfigError::invalid(
            format!("{key}.workspace_id"),
            "must be the workspace GUID",
        ));
    }
    if c.log_type.is_empty()
        || c.log_type.len() > 100
        || !c
            .log_type
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    {
        return Err(ConfigError::invalid(
            format!("{key}.log_type"),
            "letters, digits and '_' only, at most 100 characters",
        ));
    }
    if c.time_generated_field.is_empty()
        || !c
            .time_generated_field
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    {
        return Err(ConfigError::invalid(
            format!("{key}.time_generated_field"),
            "letters, digits and '_' only",
        ));
    }
    let url = c
        .url
        .clone()
        .unwrap_or_else(|| format!("https://{}.ods.opinsights.azure.com", c.workspace_id));
    let target = Target::parse(&url).map_err(|e| ConfigError::invalid(format!("{key}.url"), e))?;
    let raw = c
        .shared_key
        .load()
        .map_err(|e| ConfigError::invalid(format!("{key}.shared_key"), e.to_string()))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(raw.expose().trim_ascii())
        .map_err(|_| {
            ConfigError::invalid(
                format!("{key}.shared_key"),
                "is not base64 (use the workspace key exactly as Azure shows it)",
            )
        })?;
    Ok(Settings {
        keys: c,
        target,
        shared_key: Secret::new(decoded),
    })
}

fn build(common: &SinkCommon, s: &Settings) -> Result<Arc<dyn Sink>, ConfigError> {
    let c = &s.keys;
    tracing::warn!(sink = %common.name, "Microsoft's support for the HTTP Data Collector API ended on 2026-09-14 (ingestion continues, critical fixes only); migrate to azure_logs_ingestion");
    let path = format!(
        "{}/api/logs?api-version=2016-04-01",
        s.target.path.trim_end_matches('/')
    );
    let client = HttpClient::new(s.target.clone(), &c.tls, common.timeout)
        .map_err(|e| ConfigError::invalid(format!("{}.tls", common.key()), e))?;
    Ok(Arc::new(DataCollector {
        client,
        path,
        key: s.shared_key.clone(),
        workspace_id: c.workspace_id.clone(),
        log_type: c.log_type.clone(),
        time_field: c.time_generated_field.clone(),
    }))
}

/// The sink.
pub struct DataCollector {
    client: HttpClient,
    path: String,
    key: Secret,
    workspace_id: String,
    log_type: String,
    time_field: String,
}

/// Classifies an answer for a batch of `n` records.
pub fn classify(resp: &Response, n: usize) -> SendResult {
    let code = serde_json::from_slice::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| v["Error"].as_str().map(str::to_string))
        .unwrap_or_default();
    match resp.status {
        // Only InvalidDataFormat is the payload's fault; the other 400 codes name the
        // workspace, log type, API version or content type: configuration.
        400 if code != "InvalidDataFormat" && !code.is_empty() => {
            super::classify_http(resp, "Data Collector", &[400, 401, 403])
        }
        // 404 means a wrong URL, or a request too large: split first, then configuration.
        404 if n > 1 => SendResult::Split {
            reason: Refusal::TooLarge,
            detail: format!("Data Collector answered 404: {}", body_snippet(resp)),
        },
        _ => super::classify_http(resp, "Data Collector", &[401, 403, 404]),
    }
}

#[async_trait]
impl Sink for DataCollector {
    fn encode(&self, batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult> {
        encode_records(batch, &self.time_field, MAX_FIELD, MAX_BODY)
    }

    async fn send(&self, batch: &[Arc<Event>]) -> Attempt {
        let body = match self.encode(batch) {
            Ok(b) => b,
            Err(r) => return Attempt::not_sent(r),
        };
        let date = crate::time::http_date_now();
        let sig = signature(self.key.expose(), body.len(), &date);
        let headers = vec![
            ("content-type".to_string(), b"application/json".to_vec()),
            ("log-type".into(), self.log_type.as_bytes().to_vec()),
            ("x-ms-date".into(), date.into_bytes()),
            (
                "time-generated-field".into(),
                self.time_field.as_bytes().to_vec(),
            ),
            (
                "authorization".into(),
                format!("SharedKey {}:{sig}", self.workspace_id).into_bytes(),
            ),
        ];
        let req = Request {
            method: "POST",
            path: self.path.clone(),
            headers,
            body: bytes::Bytes::from(body),
        };
        super::exchange(&self.client, &req, |r| classify(r, batch.len())).await
    }

    fn destination(&self) -> String {
        super::http_destination(TYPE.name(), self.client.target(), &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg==";

    #[test]
    fn documented_test_vectors() {
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .unwrap();
        assert_eq!(
            signature(&key, 1024, "Mon, 04 Apr 2016 08:00:00 GMT"),
            "RoBretOrVlpiXSRF0+2ErOcpr2xkXbtFagtM2Oowx5g="
        );
        assert_eq!(
            signature(&key, 351, "Tue, 14 May 2024 09:21:35 GMT"),
            "tXd6Xzfi6G4m0sA07zcjE3QaEVUj0OauQmLSQZVFEbU="
        );
    }
}
