//! Operability: the metric families that exist from start-up (bytes in and out, secret
//! expiry, spool capacity, process).

use crate::util::*;

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
        r#"vfgate_requests_total{outcome="accepted",source="syvault"} 0"#,
        r#"vfgate_received_bytes_total{source="syvault"} 0"#,
        r#"vfgate_received_bytes_total{source="spooled"} 0"#,
        r#"vfgate_sink_sent_bytes_total{sink="custom"} 0"#,
        r#"vfgate_sink_sent_bytes_total{sink="archive"} 0"#,
        r#"vfgate_events_forwarded_total{sink="custom"} 0"#,
        r#"vfgate_sink_events_failed_total{reason="unavailable",sink="custom"} 0"#,
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
