//! SIEM sinks end to end: signed events in through `vfgate serve`, strict mocks checking the
//! exact request (method, path, query, headers, auth, encoding, body field by field), and
//! each target's documented failures.

use crate::forward::futures_join;
use crate::util::*;
use serde_json::Value;
use std::collections::HashSet;
use std::io::Read;
use std::sync::{Arc, Mutex};

/// The source (accepting events up to two days old) to `sink`, whose table follows.
fn source(sink: &str) -> String {
    Toml::new()
        .dedupe()
        .with(r#"ttl = "48h""#)
        .source(&[sink])
        .with(r#"max_event_age = "48h""#)
        .build()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("gzip body");
    out
}

fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// An event with a given timestamp (unix ms) and org.
fn event_at(id: &str, ms: i64, org: &str) -> String {
    let ts = vfgate::time::rfc3339_ms(ms);
    format!(
        r#"{{"event_id":"{id}","event_type":"user.login.failed","timestamp":"{ts}","actor":{{"user_id":"usr_{id}","email":"{id}@example.com"}},"target":{{"type":"session","id":"sess_{id}"}},"context":{{"ip_address":"203.0.113.7","user_agent":"Mozilla/5.0","org_id":"{org}"}},"custom":{{"n":1}}}}"#
    )
}

fn now_ms() -> i64 {
    vfgate::time::now_ms()
}

async fn post_all(gw: &Gateway, bodies: &[String]) -> Vec<Resp> {
    futures_join(bodies.iter().map(|b| gw.post_event(b)).collect()).await
}

fn split_envelopes(body: &[u8]) -> Vec<String> {
    String::from_utf8(body.to_vec())
        .unwrap()
        .split('\n')
        .map(str::to_string)
        .collect()
}

/// A Splunk HEC sink with an index, source, host and indexed fields, batching up to 10.
fn splunk_config(mock: &Mock) -> String {
    format!(
        r#"{}
[sink.splunk]
type = "splunk_hec"
url = "{}"
token = {{ env = "HEC_TOKEN" }}
index = "security_audit"
source = "vfgate-test"
host = "gw-01"
fields = {{ org_id = "context.org_id", n = "custom.n", missing = "no.such.path" }}
batch = {{ max_events = 10, linger = "800ms" }}
retry = {{ budget = "1s" }}
"#,
        source("splunk"),
        mock.url("")
    )
}

/// The HEC request: path, token, channel, and one envelope per event in `bodies` (sent at
/// `t` + its index in milliseconds) with time, metadata, the original event and the fields.
fn assert_hec_request(q: &Captured, bodies: &[String], t: i64) {
    assert_eq!(
        (q.method.as_str(), q.path.as_str()),
        ("POST", "/services/collector/event")
    );
    assert_eq!(
        q.header("authorization"),
        Some("Splunk 12345678-1234-1234-1234-1234567890AB")
    );
    assert_eq!(q.header("content-type"), Some("application/json"));
    assert!(is_guid(q.header("x-splunk-request-channel").unwrap()));
    let envs = split_envelopes(&q.body);
    assert_eq!(envs.len(), 3);
    for env in &envs {
        let v: Value = serde_json::from_str(env).unwrap();
        let id = v["event"]["event_id"].as_str().unwrap();
        let i: i64 = id.trim_start_matches("evt_hec_").parse().unwrap();
        let ms = t + i;
        // time is secs.mmm printed from integer milliseconds
        assert!(
            env.starts_with(&format!("{{\"time\":{}.{:03},", ms / 1000, ms % 1000)),
            "{env}"
        );
        assert_eq!(v["host"], "gw-01");
        assert_eq!(v["source"], "vfgate-test");
        assert_eq!(v["sourcetype"], "syvault:audit");
        assert_eq!(v["index"], "security_audit");
        let original: Value = serde_json::from_str(&bodies[i as usize]).unwrap();
        assert_eq!(v["event"], original, "event is the original object");
        assert_eq!(
            v["fields"],
            serde_json::json!({"org_id": "org_42", "n": "1"})
        );
        assert_eq!(v.as_object().unwrap().len(), 7);
    }
}

/// The `event_id` of each envelope in a HEC body.
fn envelope_ids(body: &[u8]) -> Vec<String> {
    split_envelopes(body)
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["event"]["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// HEC names the bad event's position: the ones before it are indexed (not re-sent), it
/// fails alone, the rest is retried.
async fn assert_hec_position_fails_alone(gw: &Gateway, mock: &Mock, t: i64) {
    let more: Vec<String> = (10..13)
        .map(|i| event_at(&format!("evt_hec_{i}"), t + i, "org_42"))
        .collect();
    mock.push(Reply::Status(
        400,
        vec![],
        r#"{"text":"Invalid data format","code":6,"invalid-event-number":1}"#.into(),
    ));
    let results = post_all(gw, &more).await;
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3, "one batch, then one retry of the remainder");
    let first = envelope_ids(&reqs[1].body);
    let retry = envelope_ids(&reqs[2].body);
    assert_eq!(first.len(), 3);
    assert_eq!(
        retry,
        vec![first[2].clone()],
        "only the events after the bad one are re-sent"
    );
    for (body, r) in more.iter().zip(&results) {
        let id = serde_json::from_str::<Value>(body).unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_string();
        if id == first[1] {
            assert_eq!((r.status, r.error()), (502, "upstream_error".into()));
            assert!(r.json()["detail"].as_str().unwrap().contains("rejected"));
        } else {
            assert_eq!(r.status_field(), "accepted", "{id}");
        }
    }
}

#[tokio::test]
async fn splunk_hec_envelopes_and_positional_failure() {
    let mock = Mock::start().await;
    let cfg = splunk_config(&mock);
    let gw = Gateway::start_with(
        &cfg,
        "",
        &[("HEC_TOKEN", "12345678-1234-1234-1234-1234567890AB")],
    )
    .await;
    let t = now_ms() - 5000;
    let bodies: Vec<String> = (0..3)
        .map(|i| event_at(&format!("evt_hec_{i}"), t + i, "org_42"))
        .collect();
    mock.set_default(Reply::Status(
        200,
        vec![],
        r#"{"text":"Success","code":0}"#.into(),
    ));
    for r in post_all(&gw, &bodies).await {
        assert_eq!(r.status_field(), "accepted");
    }
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_hec_request(&reqs[0], &bodies, t);
    // Duplicates are not forwarded twice.
    assert_eq!(gw.post_event(&bodies[0]).await.status_field(), "duplicate");
    assert_eq!(mock.requests().len(), 1);

    assert_hec_position_fails_alone(&gw, &mock, t).await;
    // A token problem is a configuration error: 503, the event is kept for the retry.
    mock.push(Reply::Status(
        403,
        vec![],
        r#"{"text":"Invalid token","code":4}"#.into(),
    ));
    mock.set_default(Reply::Status(
        403,
        vec![],
        r#"{"text":"Invalid token","code":4}"#.into(),
    ));
    let r = gw.post_event(&event_at("evt_hec_cfg", t, "org_42")).await;
    assert_eq!((r.status, r.error()), (503, "upstream_unavailable".into()));
    assert!(
        gw.metric("vfgate_sink_events_failed_total{reason=\"config_error\",sink=\"splunk\"}")
            .await
            >= 1.0
    );
    assert!(
        !gw.log_text().contains("1234567890AB"),
        "token never logged"
    );
}

#[tokio::test]
async fn splunk_hec_indexer_acknowledgement() {
    let mock = Mock::start().await;
    let cfg = format!(
        r#"{}
[sink.splunk]
type = "splunk_hec"
url = "{}"
token = {{ env = "HEC_TOKEN" }}
ack = {{ enabled = true, channel = "2f1e6f0a-8c3b-4d6e-9f51-3b1c0a7d9e42", poll = "50ms", timeout = "5s" }}
"#,
        source("splunk"),
        mock.url("/services/collector/event")
    );
    let gw = Gateway::start_with(&cfg, "", &[("HEC_TOKEN", "tok")]).await;
    mock.push(Reply::Status(
        200,
        vec![],
        r#"{"text":"Success","code":0,"ackId":7}"#.into(),
    ));
    mock.push(Reply::Status(200, vec![], r#"{"acks":{"7":false}}"#.into()));
    mock.push(Reply::Status(200, vec![], r#"{"acks":{"7":true}}"#.into()));
    let r = gw.post_event(&event_at("evt_ack", now_ms(), "org_1")).await;
    assert_eq!(r.status_field(), "accepted");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3);
    for q in &reqs {
        assert_eq!(
            q.header("x-splunk-request-channel"),
            Some("2f1e6f0a-8c3b-4d6e-9f51-3b1c0a7d9e42")
        );
        assert_eq!(q.header("authorization"), Some("Splunk tok"));
    }
    assert_eq!(reqs[1].path, "/services/collector/ack");
    assert_eq!(
        serde_json::from_slice::<Value>(&reqs[1].body).unwrap(),
        serde_json::json!({"acks": [7]})
    );
}

/// A Datadog sink (EU site, gzip) with a service, hostname and tags, batching up to 10.
fn datadog_config(mock: &Mock) -> String {
    format!(
        r#"{}
[sink.dd]
type = "datadog"
site = "datadoghq.eu"
url = "{}"
api_key = {{ env = "DD_KEY" }}
service = "syvault"
hostname = "gw-01"
tags = ["env:test", "team:secops"]
batch = {{ max_events = 10, linger = "800ms" }}
retry = {{ budget = "1s" }}
"#,
        source("dd"),
        mock.url("/api/v2/logs")
    )
}

/// The Datadog request: path, key, gzip, and one log per event in `bodies` with exactly the
/// documented keys, the original event as its message, its time, metadata and tags.
fn assert_dd_request(q: &Captured, bodies: &[String]) {
    assert_eq!(
        (q.method.as_str(), q.path.as_str()),
        ("POST", "/api/v2/logs")
    );
    assert_eq!(
        q.header("dd-api-key"),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(q.header("content-type"), Some("application/json"));
    assert_eq!(q.header("content-encoding"), Some("gzip"));
    let logs: Vec<Value> = serde_json::from_slice(&gunzip(&q.body)).unwrap();
    assert_eq!(logs.len(), 2);
    for log in &logs {
        let o = log.as_object().unwrap();
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "ddsource",
                "ddtags",
                "hostname",
                "message",
                "service",
                "status",
                "timestamp"
            ]
        );
        let msg = log["message"].as_str().unwrap();
        assert!(
            bodies.iter().any(|b| b == msg),
            "message is the original event JSON string"
        );
        let ev: Value = serde_json::from_str(msg).unwrap();
        let ms = vfgate::time::parse_rfc3339_ms(ev["timestamp"].as_str().unwrap()).unwrap();
        assert_eq!(log["timestamp"].as_i64(), Some(ms));
        assert_eq!(log["status"], "info");
        assert_eq!(log["hostname"], "gw-01");
        assert_eq!(log["service"], "syvault");
        assert_eq!(log["ddsource"], "syvault");
        assert_eq!(
            log["ddtags"].as_str().unwrap(),
            format!(
                "env:test,team:secops,event_type:user.login.failed,org_id:{}",
                ev["context"]["org_id"].as_str().unwrap()
            )
        );
    }
}

/// An event older than 18 h would be dropped by the intake while it answers 202: refused
/// here, nothing sent for it (the mock still has the one request before it), counted.
async fn assert_dd_refuses_an_event_too_old(gw: &Gateway, mock: &Mock) {
    let r = gw
        .post_event(&event_at(
            "evt_dd_old",
            now_ms() - 20 * 3600 * 1000,
            "org_a",
        ))
        .await;
    assert_eq!((r.status, r.error()), (502, "upstream_error".into()));
    assert!(r.json()["detail"].as_str().unwrap().contains("too_old"));
    assert_eq!(mock.requests().len(), 1, "nothing sent for it");
    assert_eq!(
        gw.metric("vfgate_sink_events_failed_total{reason=\"too_old\",sink=\"dd\"}")
            .await,
        1.0
    );
}

/// 413 splits the batch; 429 is retried. Requests after the first are these.
async fn assert_dd_413_splits_and_429_retries(gw: &Gateway, mock: &Mock, t: i64) {
    mock.push(Reply::Status(413, vec![], "Payload too large".into()));
    mock.push(Reply::Status(
        429,
        vec![("Retry-After".into(), "0".into())],
        "".into(),
    ));
    let more = vec![
        event_at("evt_dd_3", t, "org_a"),
        event_at("evt_dd_4", t, "org_a"),
    ];
    for r in post_all(gw, &more).await {
        assert_eq!(r.status_field(), "accepted");
    }
    let sizes: Vec<usize> = mock.requests()[1..]
        .iter()
        .map(|q| {
            serde_json::from_slice::<Vec<Value>>(&gunzip(&q.body))
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(sizes[0], 2);
    assert!(sizes[1..].iter().all(|n| *n == 1), "{sizes:?}");
}

#[tokio::test]
async fn datadog_logs_shape_gzip_and_refusals() {
    let mock = Mock::start().await;
    let cfg = datadog_config(&mock);
    let gw = Gateway::start_with(&cfg, "", &[("DD_KEY", "0123456789abcdef0123456789abcdef")]).await;
    mock.set_default(Reply::Status(202, vec![], "{}".into()));
    let t = now_ms() - 1000;
    let bodies = vec![
        event_at("evt_dd_1", t, "org_a"),
        event_at("evt_dd_2", t + 1, "org_b"),
    ];
    for r in post_all(&gw, &bodies).await {
        assert_eq!(r.status_field(), "accepted");
    }
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_dd_request(&reqs[0], &bodies);
    assert_dd_refuses_an_event_too_old(&gw, &mock).await;
    assert_dd_413_splits_and_429_retries(&gw, &mock, t).await;
    // A wrong key / wrong site: configuration error, 503, kept.
    mock.set_default(Reply::Status(
        403,
        vec![],
        r#"{"errors":["Forbidden"]}"#.into(),
    ));
    let r = gw.post_event(&event_at("evt_dd_5", t, "org_a")).await;
    assert_eq!((r.status, r.error()), (503, "upstream_unavailable".into()));
    assert!(!gw.log_text().contains("0123456789abcdef0123456789abcdef"));
}

/// An Elastic sink (API key, pipeline, ECS), batching up to 10.
fn elastic_config(mock: &Mock) -> String {
    format!(
        r#"{}
[sink.es]
type = "elastic"
url = "{}"
index = "logs-syvault.audit-default"
auth = {{ api_key = {{ env = "ES_KEY" }} }}
pipeline = "audit pipe"
ecs = true
batch = {{ max_events = 10, linger = "800ms" }}
"#,
        source("es"),
        mock.url("")
    )
}

/// A `_bulk` answer per item: `evt_es_0` created, 1 already there (409), 2 throttled once
/// (429), 3 unmappable (400).
fn elastic_per_item_replies() -> Reply {
    let seen = Arc::new(Mutex::new(HashSet::<String>::new()));
    Reply::Compute(Arc::new(move |q: &Captured| {
        let text = String::from_utf8_lossy(&q.body).to_string();
        let items: Vec<Value> = text
            .lines()
            .step_by(2)
            .map(|line| {
                let action: Value = serde_json::from_str(line).unwrap();
                let id = action["create"]["_id"].as_str().unwrap().to_string();
                let first = seen.lock().unwrap().insert(id.clone());
                let (status, err) = match id.as_str() {
                    "evt_es_0" => (201, None),
                    "evt_es_1" => (409, Some("version_conflict_engine_exception")),
                    "evt_es_2" if first => (429, Some("es_rejected_execution_exception")),
                    "evt_es_2" => (201, None),
                    _ => (400, Some("mapper_parsing_exception")),
                };
                let mut o = serde_json::json!({"_id": id, "status": status});
                if let Some(e) = err {
                    o["error"] = serde_json::json!({"type": e, "reason": "x"});
                }
                serde_json::json!({ "create": o })
            })
            .collect();
        (
            200,
            serde_json::json!({"errors": true, "items": items}).to_string(),
        )
    }))
}

const ES_KEY: &str = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==";

/// The first `_bulk` request: the path with filter and pipeline, the API key, NDJSON with a
/// `create` action and an ECS document for each of the 4 events.
fn assert_es_bulk_request(q: &Captured) {
    assert_eq!(q.method, "POST");
    assert_eq!(
        q.path,
        "/_bulk?filter_path=errors,items.*.status,items.*.error,items.*._id&pipeline=audit+pipe"
    );
    assert_eq!(
        q.header("authorization"),
        Some(format!("ApiKey {ES_KEY}").as_str())
    );
    assert_eq!(q.header("content-type"), Some("application/x-ndjson"));
    let text = String::from_utf8(q.body.clone()).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
    assert_eq!(lines.len(), 8);
    for pair in lines.chunks(2) {
        assert_es_action_and_ecs_doc(pair[0], pair[1]);
    }
}

fn assert_es_action_and_ecs_doc(action: &str, doc: &str) {
    let action: Value = serde_json::from_str(action).unwrap();
    let doc: Value = serde_json::from_str(doc).unwrap();
    let id = doc["event_id"].as_str().unwrap();
    assert_eq!(
        action,
        serde_json::json!({"create": {"_index": "logs-syvault.audit-default", "_id": id}})
    );
    assert_eq!(doc["@timestamp"], doc["timestamp"]);
    assert_eq!(doc["event"]["id"], id);
    assert_eq!(doc["event"]["action"], "user.login.failed");
    assert_eq!(doc["user"]["id"], doc["actor"]["user_id"]);
    assert_eq!(doc["user"]["email"], doc["actor"]["email"]);
    assert_eq!(doc["source"]["ip"], "203.0.113.7");
    assert_eq!(doc["user_agent"]["original"], "Mozilla/5.0");
    assert_eq!(doc["organization"]["id"], "org_42");
    assert_eq!(doc["custom"]["n"], 1, "unknown fields kept");
}

#[tokio::test]
async fn elastic_bulk_ndjson_ecs_and_per_item_results() {
    let mock = Mock::start().await;
    let cfg = elastic_config(&mock);
    let gw = Gateway::start_with(&cfg, "", &[("ES_KEY", ES_KEY)]).await;
    let t = now_ms() - 1000;
    let bodies: Vec<String> = (0..4)
        .map(|i| event_at(&format!("evt_es_{i}"), t + i, "org_42"))
        .collect();
    mock.set_default(elastic_per_item_replies());
    let results = post_all(&gw, &bodies).await;
    let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![200, 200, 200, 502],
        "{:?}",
        results
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).to_string())
            .collect::<Vec<_>>()
    );
    assert!(results[3].json()["detail"]
        .as_str()
        .unwrap()
        .contains("rejected"));
    let reqs: Vec<Captured> = mock
        .requests()
        .into_iter()
        .filter(|q| q.path.contains("_bulk"))
        .collect();
    assert_eq!(reqs.len(), 2, "the batch, then item 2 alone");
    assert_es_bulk_request(&reqs[0]);
    let retried = String::from_utf8(reqs[1].body.clone()).unwrap();
    assert_eq!(retried.lines().count(), 2);
    assert!(retried.contains("\"_id\":\"evt_es_2\""));
}

const AZ_SECRET: &str = "s3cr3t~value/+&=";

/// An Azure Logs Ingestion sink posting to `ingest`, its tokens from `token`.
fn azure_config(ingest: &Mock, token: &Mock) -> String {
    format!(
        r#"{}
[sink.sentinel]
type = "azure_logs_ingestion"
endpoint = "{}"
dcr_immutable_id = "dcr-000a00a000a00000a000000aa000a0aa"
stream = "Custom-SyVaultAudit"
tenant_id = "00000000-0000-0000-0000-000000000000"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = {{ env = "AZ_SECRET" }}
authority_host = "{}"
batch = {{ max_events = 10, linger = "800ms" }}
"#,
        source("sentinel"),
        ingest.url(""),
        token.url("")
    )
}

/// Two tokens to hand out, the first of which the ingestion endpoint calls expired.
fn script_an_expired_first_token(ingest: &Mock, token: &Mock) {
    for tok in ["tok-1", "tok-2"] {
        token.push(Reply::Status(
            200,
            vec![],
            format!(r#"{{"token_type":"Bearer","expires_in":3599,"access_token":"{tok}"}}"#),
        ));
    }
    ingest.push(Reply::Status(
        401,
        vec![],
        r#"{"error":{"code":"InvalidToken","message":"expired"}}"#.into(),
    ));
    ingest.set_default(Reply::Status(204, vec![], String::new()));
}

/// Token requests, checked against python's own form encoding.
fn assert_token_requests(toks: &[Captured]) {
    let expected = std::process::Command::new("python3")
        .args(["-c", "import os,urllib.parse as u; print(u.urlencode({'client_id':'11111111-1111-1111-1111-111111111111','client_secret':os.environ['S'],'grant_type':'client_credentials','scope':'https://monitor.azure.com//.default'}), end='')"])
        .env("S", AZ_SECRET)
        .output()
        .unwrap();
    for q in toks {
        assert_eq!(q.method, "POST");
        assert_eq!(
            q.path,
            "/00000000-0000-0000-0000-000000000000/oauth2/v2.0/token"
        );
        assert_eq!(
            q.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            String::from_utf8_lossy(&q.body),
            String::from_utf8_lossy(&expected.stdout)
        );
    }
}

/// An ingestion request: the DCR stream path, gzip JSON, a request GUID, and one record of
/// the stream's columns for each event in `bodies`.
fn assert_azure_ingestion_request(q: &Captured, bodies: &[String]) {
    assert_eq!(q.path, "/dataCollectionRules/dcr-000a00a000a00000a000000aa000a0aa/streams/Custom-SyVaultAudit?api-version=2023-01-01");
    assert_eq!(q.header("content-type"), Some("application/json"));
    assert_eq!(q.header("content-encoding"), Some("gzip"));
    assert!(is_guid(q.header("x-ms-client-request-id").unwrap()));
    let recs: Vec<Value> = serde_json::from_slice(&gunzip(&q.body)).unwrap();
    assert_eq!(recs.len(), 2);
    for r in &recs {
        let raw: Value = serde_json::from_str(r["RawEvent"].as_str().unwrap()).unwrap();
        let id = raw["event_id"].as_str().unwrap();
        let original: Value =
            serde_json::from_str(bodies.iter().find(|b| b.contains(id)).unwrap()).unwrap();
        assert_eq!(raw, original);
        let expect = serde_json::json!({
            "TimeGenerated": original["timestamp"],
            "EventId": id,
            "EventType": "user.login.failed",
            "ActorUserId": original["actor"]["user_id"],
            "ActorEmail": original["actor"]["email"],
            "TargetType": "session",
            "TargetId": original["target"]["id"],
            "IpAddress": "203.0.113.7",
            "UserAgent": "Mozilla/5.0",
            "OrgId": original["context"]["org_id"],
            "RawEvent": r["RawEvent"],
        });
        assert_eq!(r, &expect);
    }
}

#[tokio::test]
async fn azure_logs_ingestion_token_refresh_and_records() {
    let ingest = Mock::start().await;
    let token = Mock::start().await;
    let cfg = azure_config(&ingest, &token);
    let gw = Gateway::start_with(&cfg, "", &[("AZ_SECRET", AZ_SECRET)]).await;
    script_an_expired_first_token(&ingest, &token);
    let t = now_ms() - 1000;
    let bodies = vec![
        event_at("evt_az_1", t, "org_42"),
        event_at("evt_az_2", t + 2, "org_43"),
    ];
    for r in post_all(&gw, &bodies).await {
        assert_eq!(r.status_field(), "accepted");
    }
    let toks = token.requests();
    assert_eq!(toks.len(), 2, "expired token refreshed once");
    assert_token_requests(&toks);
    let reqs = ingest.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(reqs[1].header("authorization"), Some("Bearer tok-2"));
    assert_azure_ingestion_request(&reqs[1], &bodies);
    // The cached token is reused.
    assert_eq!(
        gw.post_event(&event_at("evt_az_3", t, "org_42"))
            .await
            .status_field(),
        "accepted"
    );
    assert_eq!(token.requests().len(), 2);
    assert!(!gw.log_text().contains("tok-") && !gw.log_text().contains("s3cr3t"));
}

const LA_KEY: &str =
    "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg==";

/// A Sentinel Data Collector sink posting to the mock, retrying for at most 1 s.
fn sentinel_config(mock: &Mock) -> String {
    format!(
        r#"{}
[sink.law]
type = "sentinel_data_collector"
workspace_id = "11111111-2222-3333-4444-555555555555"
shared_key = {{ env = "LA_KEY" }}
log_type = "SyVaultAudit"
url = "{}"
batch = {{ max_events = 10, linger = "200ms" }}
retry = {{ budget = "1s" }}
"#,
        source("law"),
        mock.url("")
    )
}

/// The request's method, path and headers, and its `SharedKey` signature, checked by an
/// independent one: python3's hmac over the byte length of what was received.
fn assert_dc_request_signed(q: &Captured) {
    assert_eq!(
        (q.method.as_str(), q.path.as_str()),
        ("POST", "/api/logs?api-version=2016-04-01")
    );
    assert_eq!(q.header("content-type"), Some("application/json"));
    assert_eq!(q.header("log-type"), Some("SyVaultAudit"));
    assert_eq!(q.header("time-generated-field"), Some("EventTime"));
    let date = q.header("x-ms-date").unwrap().to_string();
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
    let py = std::process::Command::new("python3")
        .args(["-c", "import base64,hmac,hashlib,os; s='POST\\n%s\\napplication/json\\nx-ms-date:%s\\n/api/logs' % (os.environ['LEN'], os.environ['DATE']); print(base64.b64encode(hmac.new(base64.b64decode(os.environ['KEY']), s.encode(), hashlib.sha256).digest()).decode(), end='')"])
        .env("LEN", q.body.len().to_string())
        .env("DATE", &date)
        .env("KEY", LA_KEY)
        .output()
        .unwrap();
    let sig = String::from_utf8(py.stdout).unwrap();
    assert_eq!(
        q.header("authorization"),
        Some(format!("SharedKey 11111111-2222-3333-4444-555555555555:{sig}").as_str())
    );
}

/// Bad signature (403 InvalidAuthorization): configuration error, 503, data kept; once the
/// key is fixed upstream, the sender's retry goes through.
async fn assert_dc_bad_key_is_a_config_error_then_retried(gw: &Gateway, mock: &Mock, t: i64) {
    mock.set_default(Reply::Status(
        403,
        vec![],
        r#"{"Error":"InvalidAuthorization","Message":"An invalid scheme was specified"}"#.into(),
    ));
    let r = gw.post_event(&event_at("evt_dc_2", t, "org_1")).await;
    assert_eq!((r.status, r.error()), (503, "upstream_unavailable".into()));
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .contains("upstream answered 403"));
    assert!(
        gw.metric("vfgate_sink_events_failed_total{reason=\"config_error\",sink=\"law\"}")
            .await
            >= 1.0
    );
    mock.set_default(Reply::Status(200, vec![], String::new()));
    assert_eq!(
        gw.post_event(&event_at("evt_dc_2", t, "org_1"))
            .await
            .status_field(),
        "accepted"
    );
}

#[tokio::test]
async fn sentinel_data_collector_signature_and_bad_key() {
    let mock = Mock::start().await;
    let gw = Gateway::start_with(&sentinel_config(&mock), "", &[("LA_KEY", LA_KEY)]).await;
    let t = now_ms() - 1000;
    let body = event_at("evt_dc_1", t, "org_ë");
    assert_eq!(gw.post_event(&body).await.status_field(), "accepted");
    let q = &mock.requests()[0];
    assert_dc_request_signed(q);
    let recs: Vec<Value> = serde_json::from_slice(&q.body).unwrap();
    assert_eq!(
        recs[0]["EventTime"],
        serde_json::from_str::<Value>(&body).unwrap()["timestamp"]
    );
    assert!(recs[0].get("TimeGenerated").is_none());
    assert_eq!(recs[0]["OrgId"], "org_ë");
    assert_eq!(recs[0]["RawEvent"].as_str().unwrap(), body);
    assert_dc_bad_key_is_a_config_error_then_retried(&gw, &mock, t).await;
}
