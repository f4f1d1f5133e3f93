//! Every row of the receive-path status table, and the metrics that count them.

use crate::util::*;
use std::time::Duration;

/// The source under test (filtered to `user.*` and `vault.item.read`) and its one sink, with a
/// short timeout and retry budget so that the upstream failure rows answer quickly.
fn config(mock: &Mock) -> Toml {
    Toml::new()
        .dedupe()
        .with(r#"ttl = "1h""#)
        .source(&["up"])
        .with(r#"max_future_skew = "5m""#)
        .with(r#"event_types = ["user.*", "vault.item.read"]"#)
        .http_sink("up", &mock.url("/ingest"))
        .with(r#"timeout = "300ms""#)
        .with(r#"retry = { budget = "700ms" }"#)
}

fn headers<'a>(sig: &'a str, version: &'a str, ct: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("Content-Type", ct),
        ("X-VF-Signature-256", sig),
        ("X-VF-Webhook-Version", version),
    ]
}

/// One request of the status table and the answer it must get.
struct Case {
    name: String,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    want_status: u16,
    /// The `error` of a refusal, the `status` of a 200 (the outcome the metrics count).
    want_outcome: &'static str,
    want_header: Option<(&'static str, &'static str)>,
}

impl Case {
    /// A POST of `body` to `/v1/events` as a sender makes it: signed with the test secret,
    /// version 1, JSON.
    fn post(name: &str, body: impl Into<Vec<u8>>) -> Case {
        let body = body.into();
        Case {
            name: name.to_string(),
            method: "POST",
            path: "/v1/events",
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("X-VF-Signature-256", sign(SECRET, &body)),
                ("X-VF-Webhook-Version", "1".into()),
            ],
            body,
            want_status: 200,
            want_outcome: "accepted",
            want_header: None,
        }
    }

    /// A request with no headers and no body.
    fn bare(name: &str, method: &'static str, path: &'static str) -> Case {
        Case {
            method,
            path,
            headers: Vec::new(),
            ..Case::post(name, "")
        }
    }

    fn path(self, path: &'static str) -> Case {
        Case { path, ..self }
    }

    /// Another body, the headers (and signature) kept.
    fn body(self, body: Vec<u8>) -> Case {
        Case { body, ..self }
    }

    /// Sets a header, replacing one of the same name.
    fn header(mut self, name: &'static str, value: &str) -> Case {
        self.headers.retain(|(k, _)| *k != name);
        self.headers.push((name, value.to_string()));
        self
    }

    fn without(mut self, name: &'static str) -> Case {
        self.headers.retain(|(k, _)| *k != name);
        self
    }

    fn want(self, want_status: u16, want_outcome: &'static str) -> Case {
        Case {
            want_status,
            want_outcome,
            ..self
        }
    }

    fn want_header(self, name: &'static str, value: &'static str) -> Case {
        Case {
            want_header: Some((name, value)),
            ..self
        }
    }

    async fn send(&self, port: u16) -> Resp {
        let headers: Vec<(&str, &str)> =
            self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request(port, self.method, self.path, &headers, &self.body)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

/// A chunked body of 20 × 64 KiB: over the 1 MiB limit only by counting.
fn chunked_over_the_limit() -> Vec<u8> {
    let mut chunked = Vec::new();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 65536).as_bytes());
        chunked.extend_from_slice(&vec![b'y'; 65536]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    chunked
}

/// Every refusal row, then the filtered ones; `body` is a valid event.
fn refused_and_filtered(body: &str) -> Vec<Case> {
    let mut cases = refused_requests(body);
    cases.extend(refused_and_filtered_events());
    cases
}

/// The rows refused for the request itself (path, method, size, signature, version, media
/// type); `body` is a valid event.
fn refused_requests(body: &str) -> Vec<Case> {
    let sig = "X-VF-Signature-256";
    let version = "X-VF-Webhook-Version";
    vec![
        Case::post("unknown path", body)
            .path("/nope")
            .want(404, "not_found"),
        Case::bare("GET", "GET", "/v1/events")
            .want(405, "method_not_allowed")
            .want_header("allow", "POST"),
        // By Content-Length, before any body byte is read: the client waits for 100
        // Continue and gets the 413 instead.
        Case::post("413 by Content-Length", body)
            .header("Expect", "100-continue")
            .body(vec![b'x'; 1024 * 1024 + 1])
            .want(413, "body_too_large"),
        Case::post("413 by counting a chunked body", body)
            .header("Transfer-Encoding", "chunked")
            .body(chunked_over_the_limit())
            .want(413, "body_too_large"),
        // Missing, malformed, wrong: one detail for all three (checked by the caller).
        Case::post("signature missing", body)
            .without(sig)
            .want(401, "invalid_signature"),
        Case::post("signature malformed", body)
            .header(sig, "sha256=zz")
            .want(401, "invalid_signature"),
        Case::post("signature wrong", body)
            .header(sig, &sign("not-the-secret", body.as_bytes()))
            .want(401, "invalid_signature"),
        Case::post("version missing", body)
            .without(version)
            .want(400, "unsupported_version"),
        Case::post("version unknown", body)
            .header(version, "2")
            .want(400, "unsupported_version"),
        Case::post("text/plain", body)
            .header("Content-Type", "text/plain")
            .want(415, "unsupported_media_type"),
    ]
}

/// The rows refused or filtered for the event in a well-formed, signed request.
fn refused_and_filtered_events() -> Vec<Case> {
    let mut cases = Vec::new();
    // Not JSON, not an object, id missing / empty / wrong type, bad timestamp (with a charset,
    // which is allowed).
    for bad in [
        "not json".to_string(),
        "[1,2]".to_string(),
        format!(r#"{{"timestamp":"{}"}}"#, now_rfc3339()),
        format!(r#"{{"event_id":"","timestamp":"{}"}}"#, now_rfc3339()),
        format!(r#"{{"event_id":5,"timestamp":"{}"}}"#, now_rfc3339()),
        r#"{"event_id":"e","timestamp":"yesterday"}"#.to_string(),
        r#"{"event_id":"e","timestamp":12345}"#.to_string(),
    ] {
        cases.push(
            Case::post(&bad, bad.as_str())
                .header("Content-Type", "application/json; charset=utf-8")
                .want(400, "invalid_event"),
        );
    }
    // Too old, too far ahead.
    for ts in ["2020-01-01T00:00:00.000Z", "2999-01-01T00:00:00.000Z"] {
        let b = format!(r#"{{"event_id":"evt_stale","event_type":"user.x","timestamp":"{ts}"}}"#);
        cases.push(Case::post(ts, b).want(400, "stale_event"));
    }
    // "user.*" does not match "user", nor other types.
    for t in ["user", "admin.settings.changed", "vault.item.readx"] {
        cases.push(Case::post(t, event(&format!("evt_f_{t}"), t)).want(200, "filtered"));
    }
    cases
}

#[tokio::test]
async fn status_table_rows() {
    let mock = Mock::start().await;
    let gw = Gateway::start(&config(&mock).build()).await;
    let body = event("evt_table_1", "user.login.failed");

    let mut unsigned_details = Vec::new();
    for c in refused_and_filtered(&body) {
        let r = c.send(gw.port).await;
        let outcome = if r.status == 200 {
            r.status_field()
        } else {
            r.error()
        };
        let name = &c.name;
        assert_eq!(
            (r.status, outcome.as_str()),
            (c.want_status, c.want_outcome),
            "{name}"
        );
        if let Some((h, v)) = c.want_header {
            assert_eq!(r.header(h), Some(v), "{name}");
        }
        match c.want_outcome {
            "invalid_signature" => unsigned_details.push(r.json()["detail"].clone()),
            "invalid_event" => assert!(!r.json()["detail"].as_str().unwrap().is_empty(), "{name}"),
            _ => {}
        }
    }
    assert_eq!(unsigned_details.len(), 3);
    assert!(
        unsigned_details.iter().all(|d| *d == unsigned_details[0]),
        "one detail for every bad signature: {unsigned_details:?}"
    );
    assert!(
        mock.requests().is_empty(),
        "nothing refused or filtered was forwarded"
    );

    // 200 accepted, then 200 duplicate.
    let r = gw.post_event(&body).await;
    assert_eq!((r.status, r.status_field()), (200, "accepted".into()));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = gw.post_event(&body).await;
    assert_eq!((r.status, r.status_field()), (200, "duplicate".into()));
    let got = mock.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].body,
        body.as_bytes(),
        "forwarded byte for byte, unknown fields kept"
    );
    assert_each_row_counted(&gw).await;
}

/// The metrics count each outcome of [`status_table_rows`].
async fn assert_each_row_counted(gw: &Gateway) {
    let m = |o: &str| {
        format!("vfgate_requests_total{{outcome=\"{o}\",scheme=\"vf\",source=\"syvault\"}}")
    };
    assert_eq!(
        gw.metric("vfgate_requests_total{outcome=\"not_found\",scheme=\"none\",source=\"none\"}")
            .await,
        1.0
    );
    for (o, n) in [
        ("method_not_allowed", 1.0),
        ("body_too_large", 2.0),
        ("invalid_signature", 3.0),
        ("unsupported_version", 2.0),
        ("unsupported_media_type", 1.0),
        ("invalid_event", 7.0),
        ("stale_event", 2.0),
        ("filtered", 3.0),
        ("accepted", 1.0),
        ("duplicate", 1.0),
    ] {
        assert_eq!(gw.metric(&m(o)).await, n, "{o}");
    }
    assert_eq!(
        gw.metric("vfgate_secret_matches_total{secret=\"0\",source=\"syvault\"}")
            .await,
        17.0
    );
    assert_eq!(
        gw.metric("vfgate_events_forwarded_total{sink=\"up\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("vfgate_sink_requests_total{sink=\"up\",status=\"200\"}")
            .await,
        1.0
    );
    assert!(gw.metrics().await.contains("vfgate_build_info{version=\""));
}

/// 400 from the upstream for a single event: permanent, 502 with the reason. The sender is
/// an outside party: it learns the sink and the status, never the upstream's body (which
/// went to the log).
async fn assert_a_400_is_a_502_without_the_upstream_body(gw: &Gateway, mock: &Mock, body: &str) {
    mock.push(Reply::Status(
        400,
        vec![],
        r#"{"error":"bad field"}"#.into(),
    ));
    let r = gw.post_event(body).await;
    assert_eq!((r.status, r.error()), (502, "upstream_error".into()));
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("sink up") && detail.contains("upstream answered 400"),
        "{detail}"
    );
    assert!(!detail.contains("bad field"), "{detail}");
    assert!(
        gw.log_text().contains("bad field"),
        "the log has the upstream's answer"
    );
}

/// 503 until the budget is spent: 503 + Retry-After. No answer in time: 504 + Retry-After.
async fn assert_503_and_504_ask_for_a_retry(gw: &Gateway, mock: &Mock, body: &str) {
    mock.set_default(Reply::Status(503, vec![], "busy".into()));
    let r = gw.post_event(body).await;
    assert_eq!((r.status, r.error()), (503, "upstream_unavailable".into()));
    assert!(r.header("retry-after").is_some());
    assert!(mock.requests().len() >= 3, "retried within the budget");

    mock.set_default(Reply::Sleep(Duration::from_millis(1500)));
    let r = gw.post_event(body).await;
    assert_eq!((r.status, r.error()), (504, "upstream_timeout".into()));
    assert!(r.header("retry-after").is_some());
}

/// Retry-After from the upstream is honoured within the budget.
async fn assert_an_upstream_retry_after_is_honoured(gw: &Gateway, mock: &Mock) {
    let before = mock.requests().len();
    mock.push(Reply::Status(
        429,
        vec![("Retry-After".into(), "0".into())],
        "slow down".into(),
    ));
    let r = gw.post_event(&event("evt_up_2", "user.login")).await;
    assert_eq!(r.status_field(), "accepted");
    assert_eq!(mock.requests().len(), before + 2);
}

#[tokio::test]
async fn upstream_failures_map_to_502_503_504_and_release_the_id() {
    let mock = Mock::start().await;
    let gw = Gateway::start(&config(&mock).build()).await;
    let body = event("evt_up_1", "user.login");
    assert_a_400_is_a_502_without_the_upstream_body(&gw, &mock, &body).await;
    assert_503_and_504_ask_for_a_retry(&gw, &mock, &body).await;

    // The id was released each time: the sender's retry goes through once the upstream is back.
    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    let r = gw.post_event(&body).await;
    assert_eq!((r.status, r.status_field()), (200, "accepted".into()));
    let r = gw.post_event(&body).await;
    assert_eq!(r.status_field(), "duplicate");

    assert_an_upstream_retry_after_is_honoured(&gw, &mock).await;
    let m = |o: &str| {
        format!("vfgate_requests_total{{outcome=\"{o}\",scheme=\"vf\",source=\"syvault\"}}")
    };
    assert_eq!(gw.metric(&m("upstream_error")).await, 1.0);
    assert_eq!(gw.metric(&m("upstream_unavailable")).await, 1.0);
    assert_eq!(gw.metric(&m("upstream_timeout")).await, 1.0);
    assert_eq!(
        gw.metric("vfgate_sink_events_failed_total{reason=\"rejected\",sink=\"up\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn concurrent_same_id_gets_409_in_flight() {
    let mock = Mock::start().await;
    mock.set_default(Reply::Sleep(Duration::from_millis(400)));
    let cfg = config(&mock).with(r#"timeout = "2s""#).build();
    let gw = Gateway::start(&cfg).await;
    let body = event("evt_race", "user.login");
    let (a, b) = tokio::join!(gw.post_event(&body), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gw.post_event(&body).await
    });
    assert_eq!(a.status_field(), "accepted");
    assert_eq!((b.status, b.error()), (409, "in_flight".into()));
    assert_eq!(b.header("retry-after"), Some("1"));
    assert_eq!(mock.requests().len(), 1);
    assert_eq!(gw.post_event(&body).await.status_field(), "duplicate");
}

#[tokio::test]
async fn secret_rotation_old_and_new_pass_third_fails_expired_fails() {
    let mock = Mock::start().await;
    let cfg = config(&mock)
        .with_in(
            "[[source]]",
            r#"secrets = [{ env = "VF_SECRET" }, { env = "VF_OLD" }, { env = "VF_EXPIRED", not_after = "2020-01-01T00:00:00Z" }]"#,
        )
        .build();
    let gw = Gateway::start_with(
        &cfg,
        "",
        &[("VF_OLD", "old-secret"), ("VF_EXPIRED", "expired-secret")],
    )
    .await;
    let send = |secret: &'static str, id: &'static str| {
        let body = event(id, "user.login");
        let sig = sign(secret, body.as_bytes());
        let port = gw.port;
        async move {
            request(
                port,
                "POST",
                "/v1/events",
                &headers(&sig, "1", "application/json"),
                body.as_bytes(),
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(send(SECRET, "evt_rot_1").await.status_field(), "accepted");
    assert_eq!(
        send("old-secret", "evt_rot_2").await.status_field(),
        "accepted"
    );
    assert_eq!(send("third-secret", "evt_rot_3").await.status, 401);
    assert_eq!(send("expired-secret", "evt_rot_4").await.status, 401);
    assert_eq!(
        gw.metric("vfgate_secret_matches_total{secret=\"0\",source=\"syvault\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("vfgate_secret_matches_total{secret=\"1\",source=\"syvault\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("vfgate_secret_matches_total{secret=\"2\",source=\"syvault\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn protocol_test_vector_is_accepted_end_to_end() {
    // The documented sample event with its documented header value (its timestamp is old, so
    // this source accepts events up to ten years old).
    let mock = Mock::start().await;
    let cfg = config(&mock)
        .with_in("[[source]]", r#"max_event_age = "3650d""#)
        .with_in("[dedupe]", r#"ttl = "3650d""#)
        .build();
    let gw = Gateway::start(&cfg).await;
    let body = std::fs::read(repo_root().join("tests/fixtures/sample-event.json")).unwrap();
    let sig = "sha256=92a8ab5a22de1284b8bc00fa724f8ba0824fb7841244c0b9c2b159b50942af7a";
    let r = request(
        gw.port,
        "POST",
        "/v1/events",
        &headers(sig, "1", "application/json"),
        &body,
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.status_field()), (200, "accepted".into()));
    assert_eq!(mock.requests()[0].body, body);
}

#[tokio::test]
async fn expect_100_continue_and_keep_alive() {
    let mock = Mock::start().await;
    let gw = Gateway::start(&config(&mock).build()).await;
    let body = event("evt_cont", "user.login");
    let sig = sign(SECRET, body.as_bytes());
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-VF-Signature-256: {sig}\r\nX-VF-Webhook-Version: 1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The interim 100 arrives before we send the body.
    let mut first = [0u8; 25];
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut first),
    )
    .await
    .expect("100 Continue within 2s")
    .unwrap();
    assert!(
        first.starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    s.write_all(body.as_bytes()).await.unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status_field(), "accepted");
    // Same connection, second request: keep-alive works (Content-Length is always set).
    s.write_all(head.replace("Expect: 100-continue\r\n", "").as_bytes())
        .await
        .unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status_field(), "duplicate");
}

#[tokio::test]
async fn admin_and_webhook_listeners_do_not_serve_each_other() {
    let mock = Mock::start().await;
    let gw = Gateway::start(&config(&mock).build()).await;
    let r = request(gw.port, "GET", "/metrics", &[], b"").await.unwrap();
    assert_eq!(r.status, 404);
    let body = event("evt_adm", "user.login");
    let sig = sign(SECRET, body.as_bytes());
    let r = request(
        gw.admin,
        "POST",
        "/v1/events",
        &headers(&sig, "1", "application/json"),
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 405);
    let r = request(gw.admin, "GET", "/v1/events", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(
        request(gw.admin, "GET", "/healthz", &[], b"")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        request(gw.admin, "GET", "/readyz", &[], b"")
            .await
            .unwrap()
            .status,
        200
    );
    assert!(mock.requests().is_empty());
}
