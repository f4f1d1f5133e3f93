//! Process lifecycle: graceful SIGTERM with a request in flight, and TLS on the listener.

use crate::util::*;
use std::time::{Duration, Instant};

#[tokio::test]
async fn sigterm_finishes_the_in_flight_request_then_exits_0() {
    let mock = Mock::start().await;
    mock.set_default(Reply::Sleep(Duration::from_millis(1200)));
    let cfg = Toml::new()
        .source(&["up"])
        .http_sink("up", &mock.url("/slow"))
        .with(r#"timeout = "5s""#)
        .build();
    let mut gw = Gateway::start(&cfg).await;
    let body = event("evt_term", "user.login");
    let port = gw.port;
    let pending = tokio::spawn(async move { post_signed(port, "/v1/events", SECRET, &body).await });
    mock.wait_for(1, Duration::from_secs(5)).await;
    let t0 = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let st = gw.terminate();
        (st, gw)
    });
    // While draining, new connections are refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "listener closed after SIGTERM"
    );
    let r = pending.await.unwrap().unwrap();
    assert_eq!(r.status_field(), "accepted", "in-flight request finished");
    let (st, _gw) = status.await.unwrap();
    assert_eq!(st.code(), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "exits once drained, not after the whole grace period: {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn tls_listener_with_a_self_signed_certificate() {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let cfg = Toml::new()
        .source(&["archive"])
        .file_sink("archive", "{dir}/events.ndjson")
        .build();
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert_path.display(),
        key_path.display()
    );
    let gw = Gateway::start_with(&cfg, &tls, &[]).await;
    let body = event("evt_tls", "user.login");
    let sig = sign(SECRET, body.as_bytes());
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            cert_path.to_str().unwrap(),
            "--resolve",
            &format!("localhost:{}:127.0.0.1", gw.port),
            "-H",
            "Content-Type: application/json",
            "-H",
            &format!("X-VF-Signature-256: {sig}"),
            "-H",
            "X-VF-Webhook-Version: 1",
            "--data-binary",
            &body,
            &format!("https://localhost:{}/v1/events", gw.port),
        ])
        .output()
        .expect("curl is installed");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        r#"{"status":"accepted"}"#,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain HTTP to the TLS port is not served.
    assert!(request(gw.port, "POST", "/v1/events", &[], body.as_bytes())
        .await
        .map(|r| r.status != 200)
        .unwrap_or(true));
    let written = std::fs::read_to_string(gw.dir.path().join("events.ndjson")).unwrap();
    assert_eq!(written, format!("{body}\n"));
}

#[tokio::test]
async fn a_taken_port_is_a_startup_error_not_a_false_ready() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let admin = ReservedPort::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let text = Toml::new()
        .table("[server]")
        .with(&format!(r#"listen = "127.0.0.1:{port}""#))
        .table("[admin]")
        .with(&format!(r#"listen = "127.0.0.1:{}""#, admin.port))
        .source_at("s", "/e", &["f"])
        .file_sink("f", "/dev/null")
        .build();
    std::fs::write(&cfg, text).unwrap();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run_cli(
            &["serve", "--config", cfg.to_str().unwrap()],
            &[("VF_SECRET", SECRET)],
            None,
        )
    })
    .await
    .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("server.listen 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("vfgate ready"), "{err}");
    drop(taken);
}
