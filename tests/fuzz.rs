//! Fuzz targets for every part that takes outside bytes: event parsing, the signature
//! header, the whole check path, config parsing, spool record decoding (a segment file as
//! found on disk), and every sink's response parsing (HEC, bulk, Azure, Datadog, Sentinel).
//!
//! Why not a coverage-guided fuzzer: cargo-fuzz needs a nightly toolchain and cargo-afl an
//! AFL++ build with LLVM plugins, neither of which this project's stable-only, offline
//! machines provide. So this is a mutation fuzzer on proptest: each case takes a seed from
//! the committed corpus (`fuzz/corpus/<target>/`) and applies random byte flips, inserts,
//! deletions, truncations and splices, then checks the target's invariants (never panics,
//! plus what each target promises). Proptest shrinks a failure to a minimal mutation list
//! and records it in `proptest-regressions/`.
//!
//! `cargo test --test fuzz` replays every corpus file and runs `FUZZ_CASES` (default 2000)
//! mutated cases per target; the long run for release checks is
//! `FUZZ_CASES=200000 cargo test --release --test fuzz`. `FUZZ_WRITE_SEEDS=1` rewrites the
//! generated seeds (signed requests, a spool segment) into the corpus.

use bytes::Bytes;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The committed seeds of `target`, plus `extra` (generated ones).
fn seeds(target: &str, extra: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    if std::env::var_os("FUZZ_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in extra.iter().enumerate() {
            std::fs::write(dir.join(format!("generated-{i}.bin")), s).unwrap();
        }
    }
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|d| {
            let mut files: Vec<PathBuf> = d.flatten().map(|e| e.path()).collect();
            files.sort();
            files
                .into_iter()
                .map(|p| std::fs::read(p).unwrap())
                .collect()
        })
        .unwrap_or_default();
    out.extend(extra);
    assert!(!out.is_empty(), "no seeds for {target}");
    out
}

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(u32, u8),
    Insert(u32, Vec<u8>),
    Delete(u32, u16),
    Truncate(u32),
    Splice(u32, u32, u16),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<u32>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<u32>(), proptest::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        2 => (any::<u32>(), 1u16..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<u32>().prop_map(Mutation::Truncate),
        1 => (any::<u32>(), any::<u32>(), 1u16..64).prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
    ]
}

fn mutate(seed: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for m in ms {
        let at = |i: u32, len: usize| if len == 0 { 0 } else { i as usize % (len + 1) };
        match m {
            Mutation::Flip(i, b) if !v.is_empty() => {
                let k = *i as usize % v.len();
                v[k] ^= b;
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(i, bytes) => {
                let k = at(*i, v.len());
                v.splice(k..k, bytes.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let k = at(*i, v.len());
                let end = (k + *n as usize).min(v.len());
                v.drain(k..end);
            }
            Mutation::Truncate(i) => {
                let k = at(*i, v.len());
                v.truncate(k);
            }
            Mutation::Splice(a, b, n) => {
                let from = at(*a, v.len());
                let end = (from + *n as usize).min(v.len());
                let chunk = v[from..end].to_vec();
                let to = at(*b, v.len());
                v.splice(to..to, chunk);
            }
        }
    }
    v
}

/// Runs `check` on every seed as it is, then on `cases()` mutated seeds.
fn fuzz(target: &str, seeds: Vec<Vec<u8>>, check: impl Fn(&[u8])) {
    for s in &seeds {
        check(s);
    }
    let n = seeds.len();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    });
    let strategy = (0..n, proptest::collection::vec(mutation(), 1..6));
    let result = runner.run(&strategy, |(i, ms)| {
        let input = mutate(&seeds[i], &ms);
        check(&input);
        Ok(())
    });
    if let Err(e) = result {
        panic!("fuzz target {target}: {e}");
    }
}

const SECRET: &[u8] = b"whsec_fuzz_0123456789abcdef";

fn checker() -> vfgate::verify::Checker {
    let cfg = vfgate::config::Config::parse(
        r#"
[dedupe]
ttl = "100000d"

[[source]]
name = "s"
path = "/e"
secrets = [{ value = "whsec_fuzz_0123456789abcdef" }]
sinks = ["f"]
max_event_age = "100000d"
max_future_skew = "100000d"
[sink.f]
type = "file"
path = "/dev/null"
"#,
        vfgate::sinks::TYPES,
    )
    .unwrap();
    vfgate::verify::Checker::new(&cfg.sources[0])
}

#[test]
fn event_parsing() {
    fuzz("event", seeds("event", vec![]), |b| {
        if let Ok(e) = vfgate::event::Event::parse(Bytes::copy_from_slice(b)) {
            assert!(!e.event_id.is_empty());
            assert!(!e.event_id.bytes().any(|c| c < 0x20 || c == 0x7f));
            assert_eq!(e.body.as_ref(), b, "the body is kept byte for byte");
        }
    });
}

#[test]
fn signature_header() {
    fuzz("signature", seeds("signature", vec![]), |b| {
        if let Some(d) = vfgate::verify::parse_signature(b) {
            // Whatever parses is exactly 32 bytes written as 64 hex digits after the prefix.
            let text = String::from_utf8_lossy(b).to_ascii_lowercase();
            assert!(text.trim().contains(&hex::encode(d)), "{text}");
        }
    });
}

/// A request as bytes: signature line, version line, content-type line, then the body.
fn request(sig: &str, version: &str, ct: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!("{sig}\n{version}\n{ct}\n").into_bytes();
    v.extend_from_slice(body);
    v
}

#[test]
fn whole_check_path() {
    let secret = vfgate::secret::Secret::new(SECRET.to_vec());
    let generated: Vec<Vec<u8>> = seeds("event", vec![])
        .iter()
        .map(|body| {
            let sig = vfgate::verify::sign(&secret, body);
            request(&sig, "1", "application/json", body)
        })
        .collect();
    let c = checker();
    fuzz("check", seeds("check", generated), |b| {
        let mut lines = b.splitn(4, |&c| c == b'\n');
        let sig = lines.next().unwrap_or_default();
        let version = lines.next().unwrap_or_default();
        let ct = lines.next().unwrap_or_default();
        let body = Bytes::copy_from_slice(lines.next().unwrap_or_default());
        let parts = vfgate::verify::RequestParts {
            signature: Some(sig),
            version: Some(version),
            content_type: Some(ct),
            headers: None,
        };
        let ok = c.check(parts, body.clone(), 1_800_000_000_000).is_ok();
        if ok {
            // Only a body signed with the secret gets through.
            let want = vfgate::verify::sign(&secret, &body);
            let got = vfgate::verify::parse_signature(sig).map(hex::encode);
            assert_eq!(got.as_deref(), want.strip_prefix("sha256="));
        }
    });
}

#[test]
fn config_parsing() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut shipped: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    shipped.sort();
    fuzz("config", shipped, |b| {
        let _ = vfgate::config::Config::parse(&String::from_utf8_lossy(b), vfgate::sinks::TYPES);
    });
}

fn segment_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut log =
        vfgate::spool::log::Log::open(dir.path(), 1 << 20, vfgate::spool::log::Fsync::Never)
            .unwrap();
    let recs: Vec<Bytes> = (0..4)
        .map(|i| {
            vfgate::spool::record::encode_body(
                1_700_000_000_000 + i,
                format!(r#"{{"event_id":"e{i}","timestamp":"2026-01-01T00:00:00Z"}}"#).as_bytes(),
            )
        })
        .collect();
    log.append(&recs).unwrap();
    drop(log);
    std::fs::read(dir.path().join(format!("seg-{:020}.log", 0))).unwrap()
}

#[test]
fn spool_segment_decoding() {
    fuzz("spool", seeds("spool", vec![segment_seed()]), |b| {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join(format!("seg-{:020}.log", 0)), b).unwrap();
        let log =
            vfgate::spool::log::Log::open(&src, 1 << 20, vfgate::spool::log::Fsync::Never).unwrap();
        let batch = log.read(0, 10_000).unwrap();
        assert!(batch.records.len() as u64 <= log.next_seq());
        let mut last = None;
        for (seq, payload) in &batch.records {
            assert!(last.is_none_or(|l| l < *seq), "in order");
            last = Some(*seq);
            let _ = vfgate::spool::record::decode(payload.clone());
        }
        let _ = vfgate::spool::record::decode(Bytes::copy_from_slice(b));
    });
}

#[test]
fn sink_response_parsing() {
    use vfgate::sinks::SendResult;
    let statuses = [
        200u16, 201, 202, 204, 207, 400, 401, 403, 404, 408, 413, 429, 500, 503,
    ];
    fuzz("response", seeds("response", vec![]), |b| {
        let status = statuses[b.len() % statuses.len()];
        let resp = vfgate::client::Response {
            status,
            headers: vec![("retry-after".into(), b.iter().take(4).copied().collect())],
            body: Bytes::copy_from_slice(b),
        };
        let n = 1 + b.first().copied().unwrap_or(0) as usize % 4;
        let per_event = |r: SendResult| {
            if let SendResult::PerEvent(v) = r {
                assert_eq!(v.len(), n, "one verdict per event");
            }
        };
        per_event(vfgate::sinks::splunk_hec::classify(&resp, n));
        per_event(vfgate::sinks::elastic::classify(&resp, n));
        per_event(vfgate::sinks::sentinel_data_collector::classify(&resp, n));
        let _ = vfgate::sinks::azure_logs_ingestion::classify(&resp);
        let _ = vfgate::sinks::datadog::classify(&resp);
        let _ = resp.retry_after();
    });
}
