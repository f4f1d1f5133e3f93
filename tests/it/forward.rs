//! Forwarding: byte-for-byte delivery, batching of concurrent requests, fan-out, headers.

use crate::util::*;
use std::time::Duration;

#[tokio::test]
async fn file_and_http_sinks_get_exact_bytes_with_fan_out() {
    let mock = Mock::start().await;
    let cfg = Toml::new()
        .source(&["archive", "custom"])
        .file_sink("archive", "{dir}/out/events.ndjson")
        .http_sink("custom", &mock.url("/ingest?x=1"))
        .with(r#"headers = { "Authorization" = { env = "CUSTOM_AUTH" }, "X-Team" = "secops" }"#)
        .build();
    let gw = Gateway::start_with(&cfg, "", &[("CUSTOM_AUTH", "Bearer tok-123")]).await;
    let a = event("evt_fan_1", "user.login");
    // A pretty-printed body: forwarded as is over HTTP, compacted to one line in the file.
    let ts = now_rfc3339();
    let b = format!("{{\n  \"event_id\": \"evt_fan_2\",\n  \"timestamp\": \"{ts}\",\n  \"note\": \"a b\\nc\"\n}}");
    assert_eq!(gw.post_event(&a).await.status_field(), "accepted");
    assert_eq!(gw.post_event(&b).await.status_field(), "accepted");

    let got = mock.requests();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/ingest?x=1");
    assert_eq!(got[0].body, a.as_bytes());
    assert_eq!(got[1].body, b.as_bytes());
    assert_eq!(got[0].header("authorization"), Some("Bearer tok-123"));
    assert_eq!(got[0].header("x-team"), Some("secops"));
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert_eq!(
        got[0].header("host"),
        Some(format!("127.0.0.1:{}", mock.port).as_str())
    );

    let text = std::fs::read_to_string(gw.dir.path().join("out/events.ndjson")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], a);
    let compact = format!(r#"{{"event_id":"evt_fan_2","timestamp":"{ts}","note":"a b\nc"}}"#);
    assert_eq!(lines[1], compact);
    assert!(
        !gw.log_text().contains("tok-123"),
        "the header secret is never logged"
    );
}

#[tokio::test]
async fn concurrent_requests_join_one_batch_and_each_gets_its_outcome() {
    let mock = Mock::start().await;
    let cfg = Toml::new()
        .source(&["up"])
        .http_sink("up", &mock.url("/bulk"))
        .with(r#"batch = { max_events = 10, max_bytes = "1MiB", linger = "800ms" }"#)
        .build();
    let gw = Gateway::start(&cfg).await;
    let bodies: Vec<String> = (0..5)
        .map(|i| event(&format!("evt_batch_{i}"), "user.login"))
        .collect();
    let futs = bodies.iter().map(|b| gw.post_event(b));
    let results = futures_join(futs.collect()).await;
    for r in &results {
        assert_eq!(r.status_field(), "accepted");
    }
    let got = mock.requests();
    assert_eq!(got.len(), 1, "one upstream request for five events");
    let arr: Vec<serde_json::Value> = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(arr.len(), 5);
    let mut ids: Vec<String> = arr
        .iter()
        .map(|v| v["event_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        (0..5).map(|i| format!("evt_batch_{i}")).collect::<Vec<_>>()
    );
    assert!(gw
        .metrics()
        .await
        .contains("vfgate_sink_batch_events_bucket{sink=\"up\",le=\"5\"} 1"));
}

#[tokio::test]
async fn a_bad_event_in_a_batch_fails_alone() {
    let mock = Mock::start().await;
    let cfg = Toml::new()
        .source(&["up"])
        .http_sink("up", &mock.url("/bulk"))
        .with(r#"batch = { max_events = 10, linger = "800ms" }"#)
        .build();
    let gw = Gateway::start(&cfg).await;
    let poison = "evt_poison";
    mock.set_default(Reply::RejectContaining(poison.into()));
    let ids = ["evt_ok_a", poison, "evt_ok_c", "evt_ok_d"];
    let bodies: Vec<String> = ids.iter().map(|i| event(i, "user.login")).collect();
    let results = futures_join(bodies.iter().map(|b| gw.post_event(b)).collect()).await;
    for (id, r) in ids.iter().zip(&results) {
        if *id == poison {
            assert_eq!((r.status, r.error()), (502, "upstream_error".into()));
        } else {
            assert_eq!(r.status_field(), "accepted", "{id}");
        }
    }
    // The batch was bisected; each good event was accepted in exactly one upstream request.
    let reqs = mock.requests();
    assert!(reqs.len() >= 3, "bisected: {} requests", reqs.len());
    assert!(
        serde_json::from_slice::<Vec<serde_json::Value>>(&reqs[0].body)
            .unwrap()
            .len()
            == 4
    );
    for id in ids.iter().filter(|i| **i != poison) {
        let accepted = reqs
            .iter()
            .filter(|r| {
                let b = String::from_utf8_lossy(&r.body);
                b.contains(id) && !b.contains(poison)
            })
            .count();
        assert_eq!(accepted, 1, "{id} delivered exactly once");
    }
}

/// Awaits every future concurrently (with an overall limit).
pub async fn futures_join<F: std::future::Future<Output = Resp>>(futs: Vec<F>) -> Vec<Resp> {
    tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(futs))
        .await
        .expect("all requests answered within 20s")
}

#[tokio::test]
async fn https_upstream_is_verified_against_ca_file() {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let mock = Mock::start_tls(&cert.pem(), &key.serialize_pem()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let url = format!("https://127.0.0.1:{}/ingest", mock.port);
    let cfg = Toml::new()
        .source(&["trusted"])
        .source_at("other", "/v1/untrusted", &["untrusted"])
        .http_sink("trusted", &url)
        .with(&format!(r#"tls = {{ ca_file = "{}" }}"#, ca.display()))
        .http_sink("untrusted", &url)
        .with(r#"timeout = "500ms""#)
        .with(r#"retry = { budget = "600ms" }"#)
        .build();
    let gw = Gateway::start(&cfg).await;
    let body = event("evt_tls_up", "user.login");
    let r = gw.post_event(&body).await;
    assert_eq!(
        r.status_field(),
        "accepted",
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(mock.requests()[0].body, body.as_bytes());

    // The same upstream without the CA: the certificate is not trusted, nothing is sent.
    let r = post_signed(gw.port, "/v1/untrusted", SECRET, &body)
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(mock.requests().len(), 1);
    assert!(
        gw.metric("vfgate_sink_requests_total{sink=\"untrusted\",status=\"connect_error\"}")
            .await
            >= 1.0
    );
}

/// Pingora's connector logs `failed to acquire reusable stream` at ERROR when a pooled
/// connection is still held by its idle watcher; it then opens a new one, so nothing is
/// wrong and nobody must act. Under concurrent senders it used to fill the log.
#[tokio::test]
async fn concurrent_forwarding_logs_no_error_for_a_handled_reconnect() {
    let mock = Mock::start().await;
    let cfg = Toml::new()
        .source(&["up"])
        .http_sink("up", &mock.url("/in"))
        .with("batch = { max_events = 1 }")
        .with("concurrency = 8")
        .build();
    let gw = Gateway::start(&cfg).await;
    let results = gw.dir.path().join("results.tsv");
    let mut send = send_load(&gw, 4000, 4000, &results, &[]);
    wait_for_sender(&mut send, Duration::from_secs(60)).await;
    let answered = std::fs::read_to_string(&results).unwrap();
    assert_eq!(
        answered.lines().filter(|l| l.ends_with("\t200")).count(),
        4000
    );
    let log = gw.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "ERROR lines for handled conditions: {errors:#?}"
    );
}

/// With `server.threads = 2` (a single-threaded runtime per worker thread, connections
/// spread over them), concurrent connections still get every event forwarded exactly once
/// and every repeat answered as a duplicate: the dedupe table and the batch are shared.
#[tokio::test]
async fn two_worker_threads_forward_every_event_once() {
    let mock = Mock::start().await;
    let cfg = Toml::new()
        .source(&["up"])
        .http_sink("up", &mock.url("/bulk"))
        .build();
    let gw = Gateway::start_with(&cfg, "threads = 2", &[]).await;
    // Two worker threads, each named after the service.
    let pid = gw.child.as_ref().unwrap().id();
    let workers = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "vfgate webhooks")
        })
        .count();
    assert_eq!(workers, 2);
    let bodies: Vec<String> = (0..40)
        .map(|i| event(&format!("evt_two_threads_{i:02}"), "user.login"))
        .collect();
    for (round, want) in [(1, "accepted"), (2, "duplicate")] {
        let results = futures_join(bodies.iter().map(|b| gw.post_event(b)).collect()).await;
        for r in &results {
            assert_eq!(r.status_field(), want, "round {round}");
        }
    }
    let mut ids: Vec<String> = mock
        .requests()
        .iter()
        .flat_map(|q| match serde_json::from_slice(&q.body).unwrap() {
            serde_json::Value::Array(batch) => batch,
            one => vec![one],
        })
        .map(|v| v["event_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let want: Vec<String> = (0..40).map(|i| format!("evt_two_threads_{i:02}")).collect();
    assert_eq!(ids, want);
}
