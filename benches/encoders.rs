//! Each sink's encoder on a 500-event batch of 1 KiB events (events/s).
//!
//! `cargo bench --bench encoders`

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use std::time::Duration;
use vfgate::config::Config;
use vfgate::event::Event;

const SINKS: &str = r#"
[[source]]
name = "s"
path = "/e"
secrets = [{ value = "k" }]
sinks = ["file"]

[sink.file]
type = "file"
path = "/dev/null"
[sink.http]
type = "http"
url = "http://127.0.0.1:9/ingest"
[sink.splunk_hec]
type = "splunk_hec"
url = "http://127.0.0.1:9"
token = { value = "tok" }
index = "main"
fields = { org_id = "context.org_id" }
[sink.datadog]
type = "datadog"
url = "http://127.0.0.1:9/api/v2/logs"
api_key = { value = "k" }
[sink.elastic]
type = "elastic"
url = "http://127.0.0.1:9"
index = "logs-syvault.audit-default"
ecs = true
[sink.azure_logs_ingestion]
type = "azure_logs_ingestion"
endpoint = "http://127.0.0.1:9"
dcr_immutable_id = "dcr-000a00a000a00000a000000aa000a0aa"
stream = "Custom-SyVaultAudit"
tenant_id = "t"
client_id = "c"
client_secret = { value = "s" }
token_url = "http://127.0.0.1:9/token"
[sink.sentinel_data_collector]
type = "sentinel_data_collector"
workspace_id = "11111111-2222-3333-4444-555555555555"
shared_key = { value = "c2VjcmV0" }
log_type = "SyVaultAudit"
url = "http://127.0.0.1:9"
"#;

fn event(i: usize) -> Arc<Event> {
    let ts = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let head = format!(
        r#"{{"event_id":"evt_{i:016x}","event_type":"user.login.failed","timestamp":"{ts}","actor":{{"user_id":"usr_a1b2c3d4e5f6","email":"alice@acme.com"}},"target":{{"type":"session","id":"sess_x1y2z3w4v5u6"}},"context":{{"ip_address":"203.0.113.42","org_id":"org_m3n4o5p6q7r8","user_agent":"Mozilla/5.0 "#
    );
    let pad = 1024usize.saturating_sub(head.len() + 3);
    let body = format!("{head}{}\"}}}}", "x".repeat(pad));
    Arc::new(Event::parse(Bytes::from(body)).unwrap())
}

fn encoders(c: &mut Criterion) {
    let config = Config::parse(SINKS, vfgate::sinks::TYPES).unwrap();
    let batch: Vec<Arc<Event>> = (0..500).map(event).collect();
    let mut g = c.benchmark_group("encode_500x1KiB");
    g.throughput(Throughput::Elements(batch.len() as u64));
    for spec in &config.sinks {
        let sink = vfgate::sinks::build(spec).unwrap();
        if spec.common.kind == "azure_logs_ingestion" {
            // 500 such records are over the API's 1 MB per call: the sink splits them into
            // several calls. Measure the encoder itself without the per-call limit.
            use vfgate::sinks::azure_logs_ingestion::{encode_records, MAX_FIELD};
            assert!(
                sink.encode(&batch).is_err(),
                "over 1 MB: split before sending"
            );
            g.bench_function(spec.common.kind.as_str(), |b| {
                b.iter(|| {
                    encode_records(black_box(&batch), "TimeGenerated", MAX_FIELD, usize::MAX)
                        .unwrap()
                })
            });
            continue;
        }
        assert!(sink.encode(&batch).is_ok(), "{}", spec.common.kind);
        g.bench_function(spec.common.kind.as_str(), |b| {
            b.iter(|| sink.encode(black_box(&batch)).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = encoders
}
criterion_main!(benches);
