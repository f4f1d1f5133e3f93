//! Operability: `/readyz` naming each failing component (a down sink, unreachable Redis),
//! sink health logged once each way, dead letters summarised per batch, and the metric
//! families that exist from start-up (bytes in and out, secret expiry, spool capacity).

use crate::util::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

async fn readyz(gw: &Gateway) -> (u16, serde_json::Value) {
    let r = request(gw.admin, "GET", "/readyz", &[], b"").await.unwrap();
    let v = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.body)));
    (r.status, v)
}

fn forward_config(mock: &Mock) -> String {
    format!(
        r#"
[[source]]
name = "syvault"
path = "/v1/events"
secrets = [{{ env = "VF_SECRET" }}]
sinks = ["splunk"]

[sink.splunk]
type = "http"
url = "{}"
timeout = "1s"
retry = {{ budget = "300ms" }}
"#,
        mock.url("/hec")
    )
}

#[tokio::test]
async fn a_down_forward_sink_makes_readyz_503_and_is_logged_once_each_way() {
    let mock = Mock::start().await;
    mock.set_default(Reply::Status(503, vec![], "busy".into()));
    let gw = Gateway::start(&forward_config(&mock)).await;
    assert_eq!(
        gw.metric("vfgate_sink_up{sink=\"splunk\"}").await,
        1.0,
        "up from the start"
    );
    // Keep failing deliveries going until the rule (5 failures in a row over 10 s) holds.
    let t0 = Instant::now();
    let mut i = 0;
    let body = loop {
        assert!(t0.elapsed() < Duration::from_secs(40), "never went down");
        let r = gw
            .post_event(&event(&format!("down-{i}"), "user.login"))
            .await;
        assert_eq!(r.status, 503, "{:?}", r.json());
        i += 1;
        let (status, body) = readyz(&gw).await;
        if status == 503 {
            break body;
        }
        assert_eq!(body["status"], "ready");
    };
    assert!(
        t0.elapsed() >= Duration::from_secs(10),
        "not down before 10s of failures"
    );
    assert_eq!(body["status"], "not_ready", "{body}");
    let failing = body["failing"].as_array().unwrap();
    assert_eq!(failing.len(), 1, "{body}");
    assert_eq!(failing[0]["component"], "sink");
    assert_eq!(failing[0]["sink"], "splunk");
    assert_eq!(failing[0]["reason"], "sink_down");
    assert_eq!(gw.metric("vfgate_sink_up{sink=\"splunk\"}").await, 0.0);
    // Liveness is not readiness.
    let h = request(gw.admin, "GET", "/healthz", &[], b"")
        .await
        .unwrap();
    assert_eq!(h.status, 200);
    // More failures: still one "down" line.
    for j in 0..3 {
        gw.post_event(&event(&format!("more-{j}"), "user.login"))
            .await;
    }
    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    let r = gw.post_event(&event("back", "user.login")).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.metric("vfgate_sink_up{sink=\"splunk\"}").await, 1.0);
    let log = gw.log_text();
    let downs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sink splunk down: 503 ("))
        .collect();
    assert_eq!(downs.len(), 1, "{log}");
    assert!(downs[0].contains("WARN"), "{}", downs[0]);
    assert!(downs[0].contains(" failures in "), "{}", downs[0]);
    let ups: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sink splunk recovered after "))
        .collect();
    assert_eq!(ups.len(), 1, "{log}");
    assert!(ups[0].contains("INFO"), "{}", ups[0]);
}

/// A `redis-server` on a free port, killed by PID when dropped.
/// (The port stays reserved while the server runs.)
struct RedisChild(Child, u16, #[allow(dead_code)] ReservedPort);

impl RedisChild {
    async fn start() -> RedisChild {
        let reserved = ReservedPort::new();
        let port = reserved.port;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed by .ci/run");
        let r = RedisChild(child, port, reserved);
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(up, "redis-server did not start");
        r
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn unreachable_redis_with_on_error_reject_makes_readyz_503() {
    let mut redis = RedisChild::start().await;
    let cfg = |on_error: &str| {
        format!(
            r#"
[dedupe]
backend = "redis"
url = "redis://127.0.0.1:{}/0"
key_prefix = "vfgate-health:"
on_error = "{on_error}"
timeout = "300ms"

[[source]]
name = "syvault"
path = "/v1/events"
secrets = [{{ env = "VF_SECRET" }}]
sinks = ["archive"]

[sink.archive]
type = "file"
path = "{{dir}}/events.ndjson"
"#,
            redis.1
        )
    };
    let reject = Gateway::start(&cfg("reject")).await;
    let allow = Gateway::start(&cfg("allow")).await;
    let _ = redis.0.kill();
    let _ = redis.0.wait();
    let (status, body) = readyz(&reject).await;
    assert_eq!(status, 503, "{body}");
    let failing = body["failing"].as_array().unwrap();
    assert_eq!(failing.len(), 1, "{body}");
    assert_eq!(failing[0]["component"], "dedupe");
    assert_eq!(failing[0]["reason"], "redis_unreachable");
    // Under "allow" requests go on without dedupe: still ready.
    let (status, body) = readyz(&allow).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn series_exist_from_start_up_and_bytes_in_and_out_are_counted() {
    let mock = Mock::start().await;
    let cfg = format!(
        r#"
[spool]
dir = "{{dir}}/spool"
max_bytes = "64MiB"

[[source]]
name = "syvault"
path = "/v1/events"
secrets = [{{ env = "VF_SECRET" }}, {{ env = "VF_NEXT", not_after = "2099-01-01T00:00:00Z" }}]
sinks = ["custom"]

[[source]]
name = "spooled"
path = "/v2/events"
secrets = [{{ env = "VF_SECRET" }}]
ack = "spool"
sinks = ["archive"]

[sink.custom]
type = "http"
url = "{}"

[sink.archive]
type = "file"
path = "{{dir}}/events.ndjson"
"#,
        mock.url("/in")
    );
    let gw = Gateway::start_with(&cfg, "", &[("VF_NEXT", "whsec_next_0123456789abcdef")]).await;
    let m = gw.metrics().await;
    for series in [
        r#"vfgate_requests_total{outcome="accepted",scheme="vf",source="syvault"} 0"#,
        r#"vfgate_received_bytes_total{source="syvault"} 0"#,
        r#"vfgate_received_bytes_total{source="spooled"} 0"#,
        r#"vfgate_sink_sent_bytes_total{sink="custom"} 0"#,
        r#"vfgate_sink_sent_bytes_total{sink="archive"} 0"#,
        r#"vfgate_events_forwarded_total{sink="custom"} 0"#,
        r#"vfgate_sink_events_failed_total{reason="unavailable",sink="custom"} 0"#,
        r#"vfgate_sink_up{sink="custom"} 1"#,
        r#"vfgate_sink_up{sink="archive"} 1"#,
        r#"vfgate_secret_not_after_timestamp_seconds{position="1",source="syvault"} 4070908800"#,
        r#"vfgate_spool_capacity_bytes 67108864"#,
        r#"vfgate_config_reloads_total{result="error"} 0"#,
    ] {
        assert!(m.lines().any(|l| l == series), "missing {series}:\n{m}");
    }
    assert!(
        !m.contains(r#"vfgate_secret_not_after_timestamp_seconds{position="0""#),
        "a secret without not_after has no expiry series"
    );
    for name in [
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(m.lines().any(|l| l.starts_with(name)), "missing {name}");
    }

    let a = event("bytes-1", "user.login");
    assert_eq!(gw.post_event(&a).await.status, 200);
    let n = a.len() as f64;
    assert_eq!(
        gw.metric("vfgate_received_bytes_total{source=\"syvault\"}")
            .await,
        n
    );
    // The http sink sends a single event's bytes as they came.
    assert_eq!(mock.requests()[0].body.len() as f64, n);
    assert_eq!(
        gw.metric_reaches("vfgate_sink_sent_bytes_total{sink=\"custom\"}", n)
            .await,
        n
    );
    let b = event("bytes-2", "user.login");
    let r = post_signed(gw.port, "/v2/events", SECRET, &b)
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    // The file sink writes the event as one line.
    let want = b.len() as f64 + 1.0;
    assert_eq!(
        gw.metric_reaches("vfgate_sink_sent_bytes_total{sink=\"archive\"}", want)
            .await,
        want
    );
}

#[tokio::test]
async fn dead_letters_are_logged_once_per_batch_with_outside_text_escaped() {
    let mock = Mock::start().await;
    // The first attempt fails (retried later), so the next events queue up behind it and
    // go as one batch, which the target refuses event by event (with an escape sequence in
    // its answer, which must not reach the log raw).
    mock.push(Reply::Status(503, vec![], "later".into()));
    mock.set_default(Reply::Status(400, vec![], "no\u{1b}[31m".into()));
    let cfg = format!(
        r#"
[spool]
dir = "{{dir}}/spool"

[[source]]
name = "syvault"
path = "/v1/events"
secrets = [{{ env = "VF_SECRET" }}]
ack = "spool"
sinks = ["up"]

[sink.up]
type = "http"
url = "{}"
timeout = "1s"
batch = {{ max_events = 100, linger = "5ms" }}
"#,
        mock.url("/up")
    );
    let gw = Gateway::start(&cfg).await;
    for i in 0..5 {
        let r = gw
            .post_event(&event(&format!("dl-{i}"), "user.login"))
            .await;
        assert_eq!(r.status, 202, "{:?}", r.json());
    }
    let got = gw
        .metric_reaches(
            "vfgate_dead_letter_events_total{reason=\"rejected\",sink=\"up\"}",
            5.0,
        )
        .await;
    assert_eq!(got, 5.0);
    let log = gw.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("spool: dead-lettered "))
        .collect();
    let total: usize = lines
        .iter()
        .map(|l| {
            let rest = l.split("spool: dead-lettered ").nth(1).unwrap();
            rest.split(' ').next().unwrap().parse::<usize>().unwrap()
        })
        .sum();
    assert_eq!(total, 5, "{log}");
    assert!(
        lines.len() <= 2,
        "one line per batch, not per event:\n{log}"
    );
    assert!(lines.iter().all(|l| l.contains("rejected")), "{log}");
    assert!(!log.contains('\u{1b}'), "no raw escape in the log:\n{log}");
}
