//! Hostile input that once got through: framing that must close the connection, empty
//! secrets, case-changed bearer tokens.

use crate::util::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The source, delivering to nowhere (these tests are about what reaches the gateway).
fn file_sink() -> Toml {
    Toml::new().source(&["f"]).file_sink("f", "/dev/null")
}

/// Whether the server closed `s` (EOF or reset within 2 s) instead of serving more.
async fn closed(s: &mut tokio::net::TcpStream) -> bool {
    let mut b = [0u8; 256];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn signed_head(version: &str, body: &str, framing: &str) -> String {
    format!(
        "POST /v1/events {version}\r\nHost: x\r\nContent-Type: application/json\r\nX-VF-Signature-256: {}\r\nX-VF-Webhook-Version: 1\r\n{framing}\r\n",
        sign(SECRET, body.as_bytes())
    )
}

#[tokio::test]
async fn both_transfer_encoding_and_content_length_close_the_connection() {
    let gw = Gateway::start(&file_sink().build()).await;
    let body = event("evt_te_cl", "user.login");
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let framing = format!(
        "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
        body.len()
    );
    let req = format!(
        "{}{:x}\r\n{body}\r\n0\r\n\r\n",
        signed_head("HTTP/1.1", &body, &framing),
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_ne!(
        r.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("keep-alive"),
        "RFC 9112 6.1: the server closes after responding"
    );
    // A second request on that socket is never served.
    let again = event("evt_te_cl_2", "user.login");
    let req2 = format!(
        "{}{again}",
        signed_head(
            "HTTP/1.1",
            &again,
            &format!("Content-Length: {}\r\n", again.len())
        )
    );
    let _ = s.write_all(req2.as_bytes()).await;
    assert!(closed(&mut s).await, "the connection was closed");
}

#[tokio::test]
async fn http_1_0_without_keep_alive_is_closed_after_the_response() {
    let gw = Gateway::start(&file_sink().build()).await;
    let body = event("evt_http10", "user.login");
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let req = format!(
        "{}{body}",
        signed_head(
            "HTTP/1.0",
            &body,
            &format!("Content-Length: {}\r\n", body.len())
        )
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status_field(), "accepted");
    assert!(
        closed(&mut s).await,
        "HTTP/1.0 without keep-alive is closed"
    );
}

#[tokio::test]
async fn an_empty_inline_secret_is_refused_by_check_config_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        file_sink()
            .with_in("[[source]]", r#"secrets = [{ value = "" }]"#)
            .build(),
    )
    .unwrap();
    for cmd in ["check-config", "serve"] {
        let (code, _, err) = run_cli(&[cmd, "--config", cfg.to_str().unwrap()], &[], None);
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(
            err.contains("source[0].secrets[0]: the inline value is empty"),
            "{cmd}: {err}"
        );
    }
    // A short one is accepted with a warning, which check-config prints.
    std::fs::write(
        &cfg,
        file_sink()
            .with_in("[[source]]", r#"secrets = [{ value = "short" }]"#)
            .build(),
    )
    .unwrap();
    let (code, _, err) = run_cli(
        &["check-config", "--config", cfg.to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: source[0].secrets[0]: the secret (inline value) is only 5 bytes"),
        "{err}"
    );
    assert!(err.contains("secret given inline"), "{err}");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
    let token = "admin-token-0123456789abcdef";
    let gw = Gateway::start_admin(
        &file_sink().build(),
        "token = { env = \"ADMIN_TOKEN\" }",
        &[("ADMIN_TOKEN", token)],
    )
    .await;
    for (auth, want) in [
        (format!("Bearer {token}"), 200),
        (format!("bearer {token}"), 200),
        (format!("BEARER {token}"), 200),
        (format!("Bearer {token}x"), 401),
        (format!("Bearer {}", &token[..token.len() - 1]), 401),
        ("Bearer ".to_string(), 401),
        ("Bear".to_string(), 401),
        (token.to_string(), 401),
    ] {
        let r = request(
            gw.admin,
            "GET",
            "/admin/failed",
            &[("authorization", &auth)],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(r.status, want, "{auth:?}");
    }
}

#[tokio::test]
async fn deep_json_and_control_characters_in_event_id_are_400_before_any_sink() {
    let gw = Gateway::start(&file_sink().build()).await;
    let deep = format!(
        r#"{{"event_id":"deep","event_type":"x","timestamp":"{}","x":{}1{}}}"#,
        now_rfc3339(),
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = gw.post_event(&deep).await;
    assert_eq!((r.status, r.error()), (400, "invalid_event".to_string()));
    let ctl = format!(
        r#"{{"event_id":"a\nb\u001b[31m","event_type":"x","timestamp":"{}"}}"#,
        now_rfc3339()
    );
    let r = gw.post_event(&ctl).await;
    assert_eq!((r.status, r.error()), (400, "invalid_event".to_string()));
    assert_eq!(
        gw.metric(
            "vfgate_requests_total{outcome=\"invalid_event\",scheme=\"vf\",source=\"syvault\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn a_5xx_names_the_sink_and_error_kind_never_the_upstream_address() {
    // Reserved, never listening: connections to it are refused.
    let refused = ReservedPort::new();
    let port = refused.port;
    let cfg = Toml::new()
        .source(&["up"])
        .http_sink("up", &format!("http://127.0.0.1:{port}/x"))
        .with(r#"timeout = "300ms""#)
        .with(r#"retry = { budget = "300ms" }"#)
        .build();
    let gw = Gateway::start(&cfg).await;
    let r = gw.post_event(&event("evt_refused", "user.login")).await;
    assert_eq!(
        (r.status, r.error()),
        (503, "upstream_unavailable".to_string())
    );
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert_eq!(detail, "sink up: connect_error (retry budget spent)");
    assert!(!detail.contains("127.0.0.1") && !detail.contains(&port.to_string()));
    assert!(
        gw.log_text().contains("retry budget spent"),
        "the full text is logged"
    );
}

#[tokio::test]
async fn malformed_requests_never_put_tokens_or_signatures_in_the_log() {
    let token = "admin-token-0123456789abcdef";
    let gw = Gateway::start_full(
        &file_sink().build(),
        "",
        "token = { env = \"ADMIN_TOKEN\" }",
        &[("ADMIN_TOKEN", token), ("RUST_LOG", "debug")],
    )
    .await;
    for port in [gw.admin, gw.port] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let req = format!(
            "GET /admin/failed HTTP/1.1\r\nAuthorization: Bearer {token}\r\nX-VF-Signature-256: sha256=feedfacefeedface\r\nBad Header Line\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let _ = closed(&mut s).await;
    }
    // Well-formed requests too, at debug level.
    let r = request(
        gw.admin,
        "GET",
        "/admin/failed",
        &[("authorization", &format!("Bearer {token}"))],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let posted = event("evt_log", "user.login");
    let r = gw.post_event(&posted).await;
    assert_eq!(r.status_field(), "accepted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log_text();
    assert!(
        !log.contains(token),
        "the admin token is in the log:\n{log}"
    );
    assert!(
        !log.contains("feedface"),
        "a signature is in the log:\n{log}"
    );
    // The signature of the request that was served, at debug level.
    let sig = sign(SECRET, posted.as_bytes());
    assert!(
        !log.contains(&sig[7..27]),
        "a served signature is in the log"
    );
    assert!(!log.contains(SECRET), "the webhook secret is in the log");
}

#[tokio::test]
async fn a_slow_body_gets_408_and_held_bodies_are_capped_with_503() {
    let gw = Gateway::start_with(
        &file_sink().build(),
        "body_timeout = \"300ms\"\nmax_body_bytes = \"64KiB\"\nmax_inflight_body_bytes = \"128KiB\"",
        &[],
    )
    .await;
    // Slowloris: a declared body that never comes.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    slow.write_all(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{",
    )
    .await
    .unwrap();
    let t0 = std::time::Instant::now();
    let r = read_response(&mut slow).await.unwrap();
    assert_eq!((r.status, r.error()), (408, "body_timeout".to_string()));
    assert!(t0.elapsed() < Duration::from_secs(2));
    // Two slow senders hold 120 KB of the 128 KiB: a third body is refused at once.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{")
            .await
            .unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let big = format!(
        r#"{{"event_id":"evt_over","event_type":"x","timestamp":"{}","pad":"{}"}}"#,
        now_rfc3339(),
        "p".repeat(20_000)
    );
    let r = gw.post_event(&big).await;
    assert_eq!((r.status, r.error()), (503, "overloaded".to_string()));
    assert_eq!(r.header("retry-after"), Some("1"));
    // Once they time out, the room is back.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = gw.post_event(&big).await;
    assert_eq!(r.status_field(), "accepted", "{:?}", r.json());
    assert!(
        gw.metric(
            "vfgate_requests_total{outcome=\"body_timeout\",scheme=\"vf\",source=\"syvault\"}"
        )
        .await
            >= 3.0
    );
}

#[tokio::test]
async fn max_entries_is_an_exact_bound_evicting_or_rejecting() {
    let cfg = file_sink()
        .dedupe()
        .with("max_entries = 100")
        .with("persist = false");
    let gw = Gateway::start(&cfg.build()).await;
    for i in 0..150 {
        let r = gw
            .post_event(&event(&format!("evt_cap_{i}"), "user.login"))
            .await;
        assert_eq!(r.status_field(), "accepted");
    }
    assert_eq!(gw.metric("vfgate_dedupe_entries").await, 100.0);
    assert!(gw.metric("vfgate_dedupe_evictions_total").await >= 50.0);

    let cfg = file_sink()
        .dedupe()
        .with("max_entries = 3")
        .with(r#"on_full = "reject""#)
        .with("persist = false");
    let gw = Gateway::start(&cfg.build()).await;
    let bodies: Vec<String> = (0..4)
        .map(|i| event(&format!("evt_rej_{i}"), "user.login"))
        .collect();
    for b in &bodies[..3] {
        assert_eq!(gw.post_event(b).await.status_field(), "accepted");
    }
    let r = gw.post_event(&bodies[3]).await;
    assert_eq!((r.status, r.error()), (503, "dedupe_full".to_string()));
    assert_eq!(r.header("retry-after"), Some("30"));
    for b in &bodies[..3] {
        assert_eq!(
            gw.post_event(b).await.status_field(),
            "duplicate",
            "no live id forgotten"
        );
    }
    assert_eq!(gw.metric("vfgate_dedupe_evictions_total").await, 0.0);
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once() {
    // Two connections busy with a request (a head read, its body still coming): a third is
    // refused, since no connection is merely waiting.
    let gw = Gateway::start_with(&file_sink().build(), "max_connections = 2", &[]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        let head = signed_head("HTTP/1.1", "{}", "Content-Length: 100\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    assert!(closed(&mut third).await, "the third connection is closed");
    assert_eq!(gw.metric("vfgate_connections_refused_total").await, 1.0);
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = gw.post_event(&event("evt_after_cap", "user.login")).await;
    assert_eq!(r.status_field(), "accepted", "a slot freed is usable again");
}

/// A connection sending one byte of a never-ending header every 300 ms, for up to 6 s; how
/// long after `start` the gateway closed it (or the 6 s ended).
async fn trickle_a_header(port: u16, start: std::time::Instant) -> Duration {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    for i in 0..20u8 {
        if s.write_all(&[b'A' + i % 26]).await.is_err() {
            return start.elapsed();
        }
        let mut b = [0u8; 16];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await
        {
            return start.elapsed();
        }
    }
    start.elapsed()
}

#[tokio::test]
async fn idle_or_trickling_connections_never_lock_senders_out() {
    // The probe: every slot held by a connection sending one header byte now and then
    // (Pingora's read timeout restarts with every byte). A real sender still gets in: at the
    // limit the connection waiting longest for a head is closed, and none outlives
    // server.header_timeout without a whole head.
    let gw = Gateway::start_with(
        &file_sink().build(),
        "max_connections = 10\nheader_timeout = \"2s\"",
        &[],
    )
    .await;
    let start = std::time::Instant::now();
    let tricklers: Vec<_> = (0..10)
        .map(|_| tokio::spawn(trickle_a_header(gw.port, start)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Three senders at once: each takes a different waiting connection's slot.
    let bodies: Vec<String> = (0..3)
        .map(|i| event(&format!("evt_through_{i}"), "user.login"))
        .collect();
    let answers = futures::future::join_all(bodies.iter().map(|b| gw.post_event(b))).await;
    for r in answers {
        assert_eq!(r.status_field(), "accepted", "a sender gets a slot");
    }
    for t in tricklers {
        let lasted = t.await.unwrap();
        assert!(
            lasted < Duration::from_millis(3500),
            "a trickling connection is closed by its head deadline, lasted {lasted:?}"
        );
    }
    assert!(
        gw.metric("vfgate_connections_closed_total{reason=\"evicted_idle\"}")
            .await
            >= 1.0
    );
    assert!(
        gw.metric("vfgate_connections_closed_total{reason=\"header_timeout\"}")
            .await
            >= 1.0
    );
    assert_eq!(gw.metric("vfgate_connections_refused_total").await, 0.0);
}

/// Posts `event` with a wrong signature to the default source, with `extra` headers.
async fn forged(gw: &Gateway, extra: &[(&str, &str)]) -> u16 {
    let body = event("forged", "t");
    let sig = sign("not-the-secret", body.as_bytes());
    let mut headers = vec![
        ("content-type", "application/json"),
        ("x-vf-webhook-version", "1"),
        ("x-vf-signature-256", sig.as_str()),
    ];
    headers.extend_from_slice(extra);
    request(gw.port, "POST", "/v1/events", &headers, body.as_bytes())
        .await
        .unwrap()
        .status
}

/// The refusal lines of the gateway's log.
fn refusal_lines(gw: &Gateway) -> Vec<String> {
    gw.log_text()
        .lines()
        .filter(|l| l.contains("webhooks refused"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn refusals_are_logged_once_per_source_and_reason_with_the_peer() {
    let gw = Gateway::start(&file_sink().build()).await;
    let xff = [("x-forwarded-for", "198.51.100.23")];
    for _ in 0..5 {
        assert_eq!(forged(&gw, &xff).await, 401);
    }
    let r = request(gw.port, "POST", "/nowhere", &[], b"{}")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let lines = refusal_lines(&gw);
    assert_eq!(
        lines.len(),
        2,
        "one line per (source, reason) per 10 s: {lines:#?}"
    );
    let sig = lines
        .iter()
        .find(|l| l.contains("invalid_signature"))
        .unwrap();
    assert!(
        sig.contains("source=syvault") && sig.contains("count=1"),
        "{sig}"
    );
    assert!(sig.contains("peer=127.0.0.1"), "{sig}");
    assert!(
        !sig.contains("198.51.100.23"),
        "X-Forwarded-For from an untrusted peer: {sig}"
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("source=none") && l.contains("not_found")));
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_for_is_logged_escaped() {
    let gw = Gateway::start_with(
        &file_sink().build(),
        r#"trusted_proxies = ["127.0.0.0/8"]"#,
        &[],
    )
    .await;
    let xff = [("x-forwarded-for", "198.51.100.23, \u{202e}evil")];
    assert_eq!(forged(&gw, &xff).await, 401);
    let lines = refusal_lines(&gw);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("198.51.100.23"), "{}", lines[0]);
    assert!(
        !lines[0].contains('\u{202e}'),
        "a bidi control reached the log: {}",
        lines[0]
    );
}
