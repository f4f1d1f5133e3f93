//! `azure_logs_ingestion` sink: Microsoft Sentinel / Azure Monitor Logs Ingestion API.
//!
//! `POST {endpoint}/dataCollectionRules/{dcr_immutable_id}/streams/{stream}?api-version=2023-01-01`
//! with `Authorization: Bearer <token>`; the token comes from the OAuth2 client-credentials
//! flow at `{authority_host}/{tenant_id}/oauth2/v2.0/token` (or `token_url`), scope
//! `https://monitor.azure.com//.default`, is cached, refreshed five minutes before it expires
//! and never logged; a 401 refreshes it and retries once.
//!
//! Body: a JSON array of flat records `TimeGenerated`, `EventId`, `EventType`, `ActorUserId`,
//! `ActorEmail`, `TargetType`, `TargetId`, `IpAddress`, `UserAgent`, `OrgId` and `RawEvent`
//! (the original event as a JSON string); absent values are omitted. Gzip by default.
//! Limits (Azure Monitor service limits): 1 MB per call, compressed or not (vfgate keeps the
//! uncompressed array at most 1,000,000 bytes and splits before sending), 64 KB per field
//! value (a longer RawEvent is a permanent failure, not a silent truncation).
//! Answers: 204 delivered; 400 bisected; 401 refresh, then configuration error; 403/404
//! configuration errors (kept); 413 split; 429/5xx retried honouring `Retry-After`.
//!
//! Owns: this target's records, its OAuth2 token and answer classification; sends through
//! `crate::client`; retries, batching and bisection are the pipeline's.

use super::Refusal;
use super::{
    audit_columns, body_snippet, client_error_attempt, compress, Attempt, Compression, RetryKind,
    SendResult, Sink, SinkType, Verdict,
};
use crate::client::{HttpClient, Request, Response, Target};
use crate::config::{sink_keys, ConfigError, RawClientTls, SinkCommon, SinkKind};
use crate::event::Event;
use crate::secret::{Secret, SecretRef};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Most uncompressed bytes per call.
pub const MAX_BODY: usize = 1_000_000;
/// Largest field value.
pub const MAX_FIELD: usize = 64 * 1024;
/// Default token authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Default token scope (as in Microsoft's REST tutorial and SDKs).
pub const DEFAULT_SCOPE: &str = "https://monitor.azure.com//.default";
/// Refresh this long before the token expires.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// The `azure_logs_ingestion` sink type.
pub const TYPE: SinkType = SinkType {
    kind: SinkKind {
        name: "azure_logs_ingestion",
        max_events: crate::config::defaults::MAX_BATCH_EVENTS,
        configure: |common, keys| Ok(Arc::new(configure(common, keys)?)),
    },
    build: |c| build(&c.common, c.settings()?),
};

/// `[sink.NAME]` keys of an azure_logs_ingestion sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsIngestionConfig {
    /// DCE or DCR logs-ingestion URL.
    pub endpoint: String,
    /// `dcr-...` immutable id.
    pub dcr_immutable_id: String,
    /// Stream name, e.g. `Custom-SyVaultAudit`.
    pub stream: String,
    /// Entra tenant.
    pub tenant_id: String,
    /// App (client) id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: SecretRef,
    /// Authority base URL (sovereign clouds), default the public Entra authority.
    pub authority_host: Option<String>,
    /// Complete token URL (wins over `authority_host`).
    pub token_url: Option<String>,
    /// Token scope (sovereign clouds: `https://monitor.azure.us//.default`).
    #[serde(default = "default_scope")]
    pub scope: String,
    /// `gzip` (default) or `none`.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Outbound TLS (ingestion and token endpoints).
    #[serde(default)]
    pub tls: RawClientTls,
}

fn default_scope() -> String {
    DEFAULT_SCOPE.into()
}
fn default_compression() -> Compression {
    Compression::Gzip
}

/// `application/x-www-form-urlencoded` encoding of one value: `A-Z a-z 0-9 - _ . ~` kept,
/// space as `+`, everything else percent-encoded.(unreserved characters
/// `A-Z a-z 0-9 - _ . ~` kept, space as `+`, everything else percent-encoded).
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The token request body.
pub fn token_form(client_id: &str, secret: &Secret, scope: &str) -> Vec<u8> {
    format!(
        "client_id={}&client_secret={}&grant_type=client_credentials&scope={}",
        form_encode(client_id),
        form_encode(secret.expose_str().unwrap_or("")),
        form_encode(scope)
    )
    .into_bytes()
}

/// Validated settings: the keys, both targets and the loaded client secret.
struct Settings {
    ingest: Target,
    token: Target,
    cfg: LogsIngestionConfig,
    secret: Secret,
}

fn configure(common: &SinkCommon, keys: toml::Table) -> Result<Settings, ConfigError> {
    let c: LogsIngestionConfig = sink_keys(common, keys)?;
    let key = common.key();
    let ingest = Target::parse(&c.endpoint)
        .map_err(|e| ConfigError::invalid(format!("{key}.endpoint"), e))?;
    if !c.dcr_immutable_id.starts_with("dcr-")
        || c.dcr_immutable_id.len() != 36
        || !c.dcr_immutable_id[4..]
            .chars()
            .all(|ch| ch.is_ascii_hexdigit())
    {
        return Err(ConfigError::invalid(
            format!("{key}.dcr_immutable_id"),
            "must be \"dcr-\" followed by 32 hex digits (the DCR's immutable id, not its name)",
        ));
    }
    if c.stream.is_empty()
        || !c
            .stream
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        return Err(ConfigError::invalid(
            format!("{key}.stream"),
            "must be a stream name such as \"Custom-SyVaultAudit\"",
        ));
    }
    for (k, v) in [("tenant_id", &c.tenant_id), ("client_id", &c.client_id)] {
        if v.is_empty()
            || !v
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.')
        {
            return Err(ConfigError::invalid(
                format!("{key}.{k}"),
                "must be a GUID or domain",
            ));
        }
    }
    let token_url = match (&c.token_url, &c.authority_host) {
        (Some(u), _) => u.clone(),
        (None, a) => format!(
            "{}/{}/oauth2/v2.0/token",
            a.as_deref()
                .unwrap_or(DEFAULT_AUTHORITY)
                .trim_end_matches('/'),
            c.tenant_id
        ),
    };
    let token = Target::parse(&token_url)
        .map_err(|e| ConfigError::invalid(format!("{key}.token_url"), e))?;
    let secret = c
        .client_secret
        .load()
        .map_err(|e| ConfigError::invalid(format!("{key}.client_secret"), e.to_string()))?;
    Ok(Settings {
        ingest,
        token,
        cfg: c,
        secret,
    })
}

fn build(common: &SinkCommon, p: &Settings) -> Result<Arc<dyn Sink>, ConfigError> {
    let key = common.key();
    let path = format!(
        "{}/dataCollectionRules/{}/streams/{}?api-version=2023-01-01",
        p.ingest.path.trim_end_matches('/'),
        p.cfg.dcr_immutable_id,
        p.cfg.stream
    );
    let token_path = p.token.path.clone();
    let tls = p.cfg.tls.clone();
    Ok(Arc::new(LogsIngestion {
        client: HttpClient::new(p.ingest.clone(), &tls, common.timeout)
            .map_err(|e| ConfigError::invalid(format!("{key}.tls"), e))?,
        path,
        tokens: TokenSource {
            client: HttpClient::new(p.token.clone(), &tls, common.timeout)
                .map_err(|e| ConfigError::invalid(format!("{key}.tls"), e))?,
            path: token_path,
            form: Secret::new(token_form(&p.cfg.client_id, &p.secret, &p.cfg.scope)),
            cached: tokio::sync::Mutex::new(None),
        },
        compression: p.cfg.compression,
    }))
}

/// An OAuth2 client-credentials token source with a cache.
pub struct TokenSource {
    client: HttpClient,
    path: String,
    form: Secret,
    cached: tokio::sync::Mutex<Option<(Secret, Instant)>>,
}

impl TokenSource {
    /// A `Bearer ...` header value; `refresh` forces a new token.
    pub async fn bearer(&self, refresh: bool) -> Result<Secret, Verdict> {
        let mut g = self.cached.lock().await;
        if let Some((t, until)) = g.as_ref() {
            if !refresh && Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let req = Request {
            method: "POST",
            path: self.path.clone(),
            headers: vec![(
                "content-type".into(),
                b"application/x-www-form-urlencoded".to_vec(),
            )],
            body: bytes::Bytes::copy_from_slice(self.form.expose()),
        };
        let resp = self.client.send(&req).await.map_err(|e| {
            Verdict::retry(RetryKind::Unavailable, format!("token endpoint: {e}"), None)
        })?;
        #[derive(Deserialize)]
        struct Tok {
            access_token: String,
            expires_in: Option<u64>,
        }
        match resp.status {
            200 => {}
            400 | 401 | 403 => {
                // The error body names the problem (e.g. AADSTS7000215 invalid secret) and never echoes the secret.
                return Err(Verdict::retry(
                    RetryKind::Config,
                    format!(
                        "token endpoint answered {}: {}",
                        resp.status,
                        body_snippet(&resp)
                    ),
                    None,
                ));
            }
            _ => {
                return Err(Verdict::retry(
                    RetryKind::Unavailable,
                    format!("token endpoint answered {}", resp.status),
                    resp.retry_after(),
                ))
            }
        }
        let tok: Tok = serde_json::from_slice(&resp.body).map_err(|_| {
            Verdict::retry(
                RetryKind::Unavailable,
                "token endpoint sent no access_token",
                None,
            )
        })?;
        let life = Duration::from_secs(tok.expires_in.unwrap_or(3600));
        let until = Instant::now() + life.saturating_sub(REFRESH_BEFORE.min(life / 2));
        let bearer = Secret::new(format!("Bearer {}", tok.access_token).into_bytes());
        *g = Some((bearer.clone(), until));
        Ok(bearer)
    }
}

/// The sink.
pub struct LogsIngestion {
    client: HttpClient,
    path: String,
    tokens: TokenSource,
    compression: Compression,
}

/// One flat record. `time_field` is `TimeGenerated` (Logs Ingestion) or `EventTime` (Data
/// Collector); `max_field` the target's field-value limit.
pub fn record(
    ev: &Event,
    time_field: &str,
    max_field: usize,
) -> Result<Map<String, Value>, Verdict> {
    let v: Value = serde_json::from_slice(&ev.body)
        .map_err(|e| Verdict::permanent(Refusal::Rejected, e.to_string()))?;
    let mut m = Map::new();
    m.insert(
        time_field.to_string(),
        Value::String(crate::time::rfc3339_ms(ev.timestamp_ms)),
    );
    for (k, val) in audit_columns(ev, &v) {
        if let Some(val) = val {
            m.insert(k.to_string(), Value::String(val));
        }
    }
    let raw = String::from_utf8(ev.one_line().to_vec())
        .map_err(|_| Verdict::permanent(Refusal::Rejected, "event is not UTF-8"))?;
    if raw.len() > max_field {
        return Err(Verdict::permanent(
            Refusal::TooLarge,
            format!(
                "RawEvent is {} bytes; the target keeps at most {max_field} per field",
                raw.len()
            ),
        ));
    }
    m.insert("RawEvent".into(), Value::String(raw));
    Ok(m)
}

/// A JSON array of records, at most `max_body` bytes, or the verdict that stops the batch.
pub fn encode_records(
    batch: &[Arc<Event>],
    time_field: &str,
    max_field: usize,
    max_body: usize,
) -> Result<Vec<u8>, SendResult> {
    let mut out = Vec::with_capacity(batch.iter().map(|e| e.body.len() * 2 + 200).sum());
    out.push(b'[');
    for (i, e) in batch.iter().enumerate() {
        let r = match record(e, time_field, max_field) {
            Ok(r) => r,
            Err(Verdict::Permanent { reason, detail }) => {
                return Err(SendResult::Split { reason, detail })
            }
            Err(v) => return Err(SendResult::All(v)),
        };
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &r).expect("json");
    }
    out.push(b']');
    if out.len() > max_body {
        return Err(SendResult::Split {
            reason: Refusal::TooLarge,
            detail: format!(
                "body is {} bytes; the target takes at most {max_body} per call",
                out.len()
            ),
        });
    }
    Ok(out)
}

/// Classifies an ingestion answer (401 is handled by the caller first): 403 (missing role)
/// and 404 (wrong endpoint, DCR or stream) are configuration errors.
pub fn classify(resp: &Response) -> SendResult {
    super::classify_http(resp, "Azure", &[401, 403, 404])
}

#[async_trait]
impl Sink for LogsIngestion {
    fn encode(&self, batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult> {
        encode_records(batch, "TimeGenerated", MAX_FIELD, MAX_BODY)
    }

    async fn send(&self, batch: &[Arc<Event>]) -> Attempt {
        let body = match self.encode(batch) {
            Ok(b) => b,
            Err(r) => return Attempt::not_sent(r),
        };
        let mut base = vec![("content-type".to_string(), b"application/json".to_vec())];
        let body = compress(self.compression, body, &mut base);
        let mut refresh = false;
        loop {
            let bearer = match self.tokens.bearer(refresh).await {
                Ok(b) => b,
                Err(v) => {
                    return Attempt {
                        status: "token_error".into(),
                        result: SendResult::All(v),
                    }
                }
            };
            let mut headers = base.clone();
            headers.push(("authorization".into(), bearer.expose().to_vec()));
            headers.push((
                "x-ms-client-request-id".into(),
                super::uuid_v4().into_bytes(),
            ));
            let req = Request {
                method: "POST",
                path: self.path.clone(),
                headers,
                body: body.clone(),
            };
            match self.client.send(&req).await {
                Ok(r) if r.status == 401 && !refresh => refresh = true,
                Ok(r) => {
                    return Attempt {
                        status: r.status.to_string(),
                        result: classify(&r),
                    }
                }
                Err(e) => return client_error_attempt(&e),
            }
        }
    }

    fn destination(&self) -> String {
        super::http_destination(TYPE.name(), self.client.target(), &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode("https://monitor.azure.com//.default"),
            "https%3A%2F%2Fmonitor.azure.com%2F%2F.default"
        );
        assert_eq!(form_encode("a b+c&d=é~*"), "a+b%2Bc%26d%3D%C3%A9~%2A");
    }
}
