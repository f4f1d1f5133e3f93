//! `elastic` sink: Elasticsearch / OpenSearch `_bulk`, NDJSON.
//!
//! Each event is an action line `{"create":{"_index":..,"_id":..}}` (or `index`) and a
//! document: the original event with `@timestamp` from `timestamp`, plus, with `ecs = true`,
//! `event.id`, `event.action`, `user.id`, `user.email`, `source.ip`, `user_agent.original`
//! and `organization.id`. `_id` is derived from `event_id` only (the id itself when it fits
//! Elasticsearch's 512-byte limit, else `sha256:<hex>` of it), so a re-send can never index
//! twice. Every line ends with `\n`, the last one included.
//!
//! The per-item results are read even on HTTP 200: 200/201 and 409 (already there, with
//! `create`) are delivered; 429 and 5xx items are retried alone; other 4xx items fail alone.
//! Auth: `{ api_key = <secret> }` (the encoded `id:key`, sent as `Authorization: ApiKey ...`)
//! or `{ user = "...", password = <secret> }` (Basic).
//! Limits: `http.max_content_length` defaults to 100 MB; vfgate splits batches over 50 MB.
//!
//! Owns: the `_bulk` encoding, the `_id` and per-item classification; sends through
//! `crate::client`; retries, batching and bisection are the pipeline's.

use super::Refusal;
use super::{compress, Attempt, Compression, RetryKind, SendResult, Sink, SinkType, Verdict};
use crate::client::{HttpClient, Request, Response, Target};
use crate::config::{sink_keys, ConfigError, RawClientTls, SinkCommon, SinkKind};
use crate::event::Event;
use crate::secret::{Secret, SecretRef};
use async_trait::async_trait;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::Digest;
use std::sync::Arc;

/// Most uncompressed bytes per request vfgate sends (half of the default 100 MB limit).
pub const MAX_BODY: usize = 50 * 1024 * 1024;
/// Elasticsearch's `_id` limit.
pub const MAX_ID: usize = 512;

/// The `elastic` sink type.
pub const TYPE: SinkType = SinkType {
    kind: SinkKind {
        name: "elastic",
        max_events: crate::config::defaults::MAX_BATCH_EVENTS,
        configure: |common, keys| Ok(Arc::new(configure(common, keys)?)),
    },
    build: |c| build(&c.common, c.settings()?),
};

/// `auth`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    untagged,
    expecting = "auth is { api_key = <secret> } or { user = \"...\", password = <secret> }"
)]
pub enum ElasticAuth {
    /// `Authorization: ApiKey <encoded>`.
    ApiKey {
        /// The encoded `id:key`.
        api_key: SecretRef,
    },
    /// Basic.
    Basic {
        /// User.
        user: String,
        /// Password.
        password: SecretRef,
    },
}

/// Bulk action.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Only if absent (409 when present): idempotent; required by data streams.
    Create,
    /// Create or replace.
    Index,
}

/// `[sink.NAME]` keys of an elastic sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticConfig {
    /// Cluster URL, e.g. `https://es.example.com:9200`.
    pub url: String,
    /// Index, alias or data stream.
    pub index: String,
    /// `create` (default) or `index`.
    #[serde(default = "default_op")]
    pub op: Op,
    /// Credentials.
    pub auth: Option<ElasticAuth>,
    /// Ingest pipeline.
    pub pipeline: Option<String>,
    /// Add ECS fields.
    #[serde(default)]
    pub ecs: bool,
    /// `gzip` or `none` (default).
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Outbound TLS.
    #[serde(default)]
    pub tls: RawClientTls,
}

fn default_op() -> Op {
    Op::Create
}
fn default_compression() -> Compression {
    Compression::None
}

/// Validated settings: the keys, the target and the `Authorization` value (secret loaded).
struct Settings {
    keys: ElasticConfig,
    target: Target,
    auth: Option<Secret>,
}

fn configure(common: &SinkCommon, keys: toml::Table) -> Result<Settings, ConfigError> {
    let c: ElasticConfig = sink_keys(common, keys)?;
    let key = common.key();
    let target =
        Target::parse(&c.url).map_err(|e| ConfigError::invalid(format!("{key}.url"), e))?;
    if c.index.is_empty() || c.index.contains(['/', ' ', '"', '*', '?', '#']) {
        return Err(ConfigError::invalid(
            format!("{key}.index"),
            "not a valid index, alias or data stream name",
        ));
    }
    let auth = match &c.auth {
        None => None,
        Some(ElasticAuth::ApiKey { api_key }) => {
            let k = api_key
                .load()
                .map_err(|e| ConfigError::invalid(format!("{key}.auth.api_key"), e.to_string()))?;
            let mut v = b"ApiKey ".to_vec();
            v.extend_from_slice(k.expose());
            Some(Secret::new(v))
        }
        Some(ElasticAuth::Basic { user, password }) => {
            let p = password
                .load()
                .map_err(|e| ConfigError::invalid(format!("{key}.auth.password"), e.to_string()))?;
            let mut raw = user.as_bytes().to_vec();
            raw.push(b':');
            raw.extend_from_slice(p.expose());
            Some(Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )))
        }
    };
    Ok(Settings {
        keys: c,
        target,
        auth,
    })
}

fn build(common: &SinkCommon, s: &Settings) -> Result<Arc<dyn Sink>, ConfigError> {
    let c = &s.keys;
    let mut path = format!(
        "{}/_bulk?filter_path=errors,items.*.status,items.*.error,items.*._id",
        s.target.path.trim_end_matches('/')
    );
    if let Some(p) = &c.pipeline {
        path.push_str("&pipeline=");
        path.push_str(&super::azure_logs_ingestion::form_encode(p));
    }
    let client = HttpClient::new(s.target.clone(), &c.tls, common.timeout)
        .map_err(|e| ConfigError::invalid(format!("{}.tls", common.key()), e))?;
    Ok(Arc::new(Elastic {
        client,
        path,
        auth: s.auth.as_ref().map(|a| a.expose().to_vec()),
        index: c.index.clone(),
        op: c.op,
        ecs: c.ecs,
        compression: c.compression,
    }))
}

/// The sink.
pub struct Elastic {
    client: HttpClient,
    path: String,
    auth: Option<Vec<u8>>,
    index: String,
    op: Op,
    ecs: bool,
    compression: Compression,
}

/// The document `_id` of an event: its `event_id`, or `sha256:<hex>` when too long.
pub fn doc_id(event_id: &str) -> String {
    if event_id.len() <= MAX_ID {
        event_id.to_string()
    } else {
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(event_id.as_bytes()))
        )
    }
}

fn set_path(doc: &mut Map<String, Value>, path: &[&str], v: Option<&str>) {
    let Some(v) = v else { return };
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = doc;
    for p in parents {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        match entry {
            Value::Object(m) => cur = m,
            _ => return, // the event has a non-object here: keep the event's value
        }
    }
    cur.insert(last.to_string(), Value::String(v.to_string()));
}

impl Elastic {
    /// The action line and document of one event (each ending in `\n`).
    pub fn encode_one(&self, ev: &Event, out: &mut Vec<u8>) -> Result<(), Verdict> {
        let v: Value = serde_json::from_slice(&ev.body)
            .map_err(|e| Verdict::permanent(Refusal::Rejected, e.to_string()))?;
        let Value::Object(mut doc) = v else {
            return Err(Verdict::permanent(
                Refusal::Rejected,
                "event is not an object",
            ));
        };
        doc.insert("@timestamp".into(), Value::String(ev.timestamp.clone()));
        if self.ecs {
            // Read the few source values first (owned, small) instead of cloning the document.
            let at = |p: &str| {
                let mut parts = p.split('.');
                let first = doc.get(parts.next()?)?;
                parts
                    .try_fold(first, |v, k| v.get(k))?
                    .as_str()
                    .map(str::to_string)
            };
            let fields: [(&[&str], Option<String>); 7] = [
                (&["event", "id"], Some(ev.event_id.clone())),
                (
                    &["event", "action"],
                    Some(ev.event_type.clone()).filter(|t| !t.is_empty()),
                ),
                (&["user", "id"], at("actor.user_id")),
                (&["user", "email"], at("actor.email")),
                (&["source", "ip"], at("context.ip_address")),
                (&["user_agent", "original"], at("context.user_agent")),
                // The source's field map's org (a VF event's `context.org_id`).
                (&["organization", "id"], ev.org_id.clone()),
            ];
            for (path, v) in &fields {
                set_path(&mut doc, path, v.as_deref());
            }
        }
        let op = match self.op {
            Op::Create => "create",
            Op::Index => "index",
        };
        serde_json::to_writer(
            &mut *out,
            &json!({ op: { "_index": self.index, "_id": doc_id(&ev.event_id) } }),
        )
        .expect("json");
        out.push(b'\n');
        serde_json::to_writer(&mut *out, &doc).expect("json");
        out.push(b'\n');
        Ok(())
    }

    /// The NDJSON body, or the verdict that stops the batch.
    pub fn encode_batch(&self, batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult> {
        let mut out = Vec::with_capacity(batch.iter().map(|e| e.body.len() * 2 + 100).sum());
        for e in batch {
            if let Err(Verdict::Permanent { reason, detail }) = self.encode_one(e, &mut out) {
                return Err(SendResult::Split { reason, detail });
            }
        }
        if out.len() > MAX_BODY && batch.len() > 1 {
            return Err(SendResult::Split {
                reason: Refusal::TooLarge,
                detail: format!("bulk body is {} bytes", out.len()),
            });
        }
        Ok(out)
    }
}

/// Classifies a bulk answer for `n` items.
pub fn classify(resp: &Response, n: usize) -> SendResult {
    if !(200..300).contains(&resp.status) {
        return super::classify_http(resp, "Elasticsearch", &[401, 403, 404]);
    }
    let v: Value = match serde_json::from_slice(&resp.body) {
        Ok(v) => v,
        Err(e) => {
            return SendResult::All(Verdict::retry(
                RetryKind::Unavailable,
                format!("unreadable bulk response: {e}"),
                None,
            ))
        }
    };
    if v["errors"] == Value::Bool(false) && v.get("items").is_none() {
        // filter_path drops `items` when every item succeeded on some versions.
        return SendResult::All(Verdict::Ok);
    }
    let Some(items) = v["items"].as_array().filter(|i| i.len() == n) else {
        return SendResult::All(Verdict::retry(
            RetryKind::Unavailable,
            format!("bulk response has no result per item (expected {n})"),
            None,
        ));
    };
    SendResult::PerEvent(
        items
            .iter()
            .map(|item| {
                let r = item
                    .as_object()
                    .and_then(|o| o.values().next())
                    .cloned()
                    .unwrap_or_default();
                let status = r["status"].as_u64().unwrap_or(0);
                let err = || {
                    format!(
                        "item {status}: {} {}",
                        r["error"]["type"].as_str().unwrap_or(""),
                        r["error"]["reason"].as_str().unwrap_or("")
                    )
                    .trim()
                    .to_string()
                };
                match status {
                    200 | 201 | 409 => Verdict::Ok,
                    429 | 500..=599 => Verdict::retry(RetryKind::Unavailable, err(), None),
                    401 | 403 | 404 => Verdict::retry(RetryKind::Config, err(), None),
                    _ => Verdict::permanent(Refusal::Rejected, err()),
                }
            })
            .collect(),
    )
}

#[async_trait]
impl Sink for Elastic {
    fn encode(&self, batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult> {
        self.encode_batch(batch)
    }

    async fn send(&self, batch: &[Arc<Event>]) -> Attempt {
        let body = match self.encode_batch(batch) {
            Ok(b) => b,
            Err(r) => return Attempt::not_sent(r),
        };
        let mut headers = vec![("content-type".to_string(), b"application/x-ndjson".to_vec())];
        if let Some(a) = &self.auth {
            headers.push(("authorization".into(), a.clone()));
        }
        let body = compress(self.compression, body, &mut headers);
        let req = Request {
            method: "POST",
            path: self.path.clone(),
            headers,
            body,
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
    use bytes::Bytes;

    #[test]
    fn items_classified_one_by_one() {
        let body = r#"{"errors":true,"items":[{"create":{"_id":"a","status":201}},{"create":{"_id":"b","status":409,"error":{"type":"version_conflict_engine_exception"}}},{"create":{"_id":"c","status":429,"error":{"type":"es_rejected_execution_exception"}}},{"create":{"_id":"d","status":400,"error":{"type":"mapper_parsing_exception","reason":"bad"}}}]}"#;
        let r = classify(
            &Response {
                status: 200,
                headers: vec![],
                body: Bytes::from(body),
            },
            4,
        );
        let SendResult::PerEvent(v) = r else { panic!() };
        assert_eq!(v[0], Verdict::Ok);
        assert_eq!(v[1], Verdict::Ok);
        assert!(matches!(
            v[2],
            Verdict::Retry {
                kind: RetryKind::Unavailable,
                ..
            }
        ));
        assert!(
            matches!(&v[3], Verdict::Permanent { detail, .. } if detail.contains("mapper_parsing_exception"))
        );
    }

    #[test]
    fn ids() {
        assert_eq!(doc_id("evt_1"), "evt_1");
        let long = "x".repeat(600);
        assert!(doc_id(&long).starts_with("sha256:"));
        assert_eq!(doc_id(&long), doc_id(&long));
    }
}

#[cfg(test)]
mod auth_tests {
    use crate::config::Config;

    /// The `Authorization` value configured by `auth`.
    fn auth(auth: &str) -> Vec<u8> {
        let text = format!("[[source]]\nname = \"s\"\npath = \"/e\"\nsecrets = [{{ value = \"k\" }}]\nsinks = [\"es\"]\n[sink.es]\ntype = \"elastic\"\nurl = \"http://127.0.0.1:9200\"\nindex = \"logs-a-b\"\nauth = {auth}\n");
        let c = Config::parse(&text, crate::sinks::TYPES).unwrap();
        let s = c.sinks[0].settings::<super::Settings>().unwrap();
        s.auth.as_ref().unwrap().expose().to_vec()
    }

    #[test]
    fn basic_and_api_key_headers_match_the_documented_examples() {
        let a = auth("{ user = \"gateway_writer\", password = { value = \"s3cret\" } }");
        assert_eq!(a, b"Basic Z2F0ZXdheV93cml0ZXI6czNjcmV0");
        let a = auth("{ api_key = { value = \"VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==\" } }");
        assert_eq!(
            a,
            b"ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
        );
    }
}
