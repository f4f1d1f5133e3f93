//! Per-event CPU path for 256 B, 1 KiB and 16 KiB events: verify (HMAC-SHA256 over the raw
//! body), parse and validate, dedupe check-and-mark against a table already holding 10 M ids,
//! and encode for the http sink; then all four together. Throughput is reported in events/s.
//!
//! `cargo bench --bench per_event` (set `VFGATE_BENCH_PREFILL` to change the table size,
//! default 10,000,000 ids).

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;
use vfgate::config::Config;
use vfgate::dedupe::memory::MemoryDedupe;
use vfgate::event::Event;
use vfgate::secret::Secret;
use vfgate::verify::{sign, Checker, RequestParts};

const SECRET: &str = "whsec_bench_0123456789abcdef";

fn event_of_size(i: u64, size: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"event_id":"evt_{i:016x}","event_type":"user.login.failed","timestamp":"{}","actor":{{"user_id":"usr_a1b2c3d4e5f6","email":"alice@acme.com"}},"target":{{"type":"session","id":"sess_x1y2z3w4v5u6"}},"context":{{"ip_address":"203.0.113.42","org_id":"org_m3n4o5p6q7r8","user_agent":"Mozilla/5.0 "#,
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    let pad = size.saturating_sub(head.len() + 3);
    format!("{head}{}\"}}}}", "x".repeat(pad)).into_bytes()
}

/// A per-iteration source name (decimal counter) in a reused buffer.
fn ns(n: u64, buf: &mut String) -> &str {
    buf.clear();
    let _ = write!(buf, "{n}");
    buf
}

fn checker() -> Checker {
    #[allow(clippy::disallowed_methods)] // the bench's own variable
    std::env::set_var("VFGATE_BENCH_SECRET", SECRET);
    let c = Config::parse(
        "[[source]]\nname = \"s\"\npath = \"/e\"\nsecrets = [{ env = \"VFGATE_BENCH_SECRET\" }]\nsinks = [\"f\"]\n[sink.f]\ntype = \"file\"\npath = \"/dev/null\"\n",
        vfgate::sinks::TYPES,
    )
    .unwrap();
    Checker::new(&c.sources[0])
}

/// A memory dedupe table already holding `ids` delivered ids.
fn prefilled(ids: u64) -> MemoryDedupe {
    let dedupe = MemoryDedupe::new(Duration::from_secs(86400), Duration::from_secs(60), ids * 2);
    for i in 0..ids {
        let k = dedupe.key("s", &format!("evt_prefill_{i}"));
        dedupe.begin(k, 1000);
        dedupe.commit(k, 1000);
    }
    dedupe
}

fn per_event(c: &mut Criterion) {
    let checker = checker();
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let prefill: u64 = std::env::var("VFGATE_BENCH_PREFILL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let mut n = 0u64;
    for (label, size) in [("256B", 256), ("1KiB", 1024), ("16KiB", 16 * 1024)] {
        // A fresh table per size: ids inserted and removed by an earlier group would leave
        // tombstones and longer probe chains behind, which a table in steady use does not have.
        let dedupe = prefilled(prefill);
        let body = Bytes::from(event_of_size(1, size));
        assert!(
            body.len() >= size && body.len() < size + 100,
            "{}",
            body.len()
        );
        let sig = sign(&Secret::new(SECRET.as_bytes().to_vec()), &body);
        let parts = RequestParts {
            signature: Some(sig.as_bytes()),
            version: Some(b"1"),
            content_type: Some(b"application/json"),
            headers: None,
        };
        let mut g = c.benchmark_group(format!("per_event_{label}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("verify", |b| {
            b.iter(|| {
                checker
                    .signature(black_box(parts), black_box(&body), now_ms)
                    .unwrap()
            })
        });
        g.bench_function("parse_validate", |b| {
            b.iter(|| {
                checker
                    .after_signature(black_box(parts), body.clone(), now_ms)
                    .unwrap()
            })
        });
        // Fresh ids written into a reused buffer (the server hashes the parsed id in place).
        let mut id = String::with_capacity(64);
        // Short enough that the table does not reach its next growth step (a resize of every
        // shard in mid-measurement; 10 M ids leave room for 4.7 M more) within this group.
        g.measurement_time(Duration::from_secs(1));
        g.bench_function("dedupe_check_and_mark", |b| {
            b.iter(|| {
                n += 1;
                id.clear();
                let _ = write!(id, "evt_{n:016x}");
                let k = dedupe.key("s", &id);
                dedupe.begin(k, 2000);
                dedupe.commit(k, 2000);
            })
        });
        g.measurement_time(Duration::from_secs(3));
        let ev = Arc::new(Event::parse(body.clone()).unwrap());
        let batch = vec![ev];
        g.bench_function("encode_http", |b| {
            b.iter(|| vfgate::sinks::http::encode(black_box(&batch), false))
        });
        g.bench_function("verify_parse_dedupe_encode", |b| {
            b.iter(|| {
                let (ev, _) = checker.check(parts, body.clone(), now_ms).unwrap();
                // The same body every time: a counter as the dedupe namespace (written into a
                // reused buffer, no allocation) keeps each iteration's id new.
                n += 1;
                let k = dedupe.key(ns(n, &mut id), &ev.get().event_id);
                dedupe.begin(k, 3000);
                dedupe.commit(k, 3000);
                let batch = [Arc::new(ev.into_inner())];
                black_box(vfgate::sinks::http::encode(&batch, false));
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = per_event
}
criterion_main!(benches);
