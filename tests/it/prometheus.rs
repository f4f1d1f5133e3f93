//! A real Prometheus (Debian's `prometheus`, installed by `.ci/run`) scraping the gateway's
//! admin listener every second: the series an operator graphs and alerts on arrive with the
//! right labels. Without `prometheus` on the PATH these tests fail (CI must run them); set
//! `VFGATE_SKIP_PROMETHEUS=1` to skip them on a machine without it (`.ci/run` never does).

use crate::util::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of `name` on the PATH; `None` (after saying so) when it is missing and the
/// environment asks to skip; a failure telling how to install it otherwise.
fn require(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() && std::env::var_os("VFGATE_SKIP_PROMETHEUS").is_some() {
        eprintln!("SKIPPED: `{name}` is not installed and VFGATE_SKIP_PROMETHEUS is set");
        return None;
    }
    Some(found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: run .ci/run as root (it installs Debian's prometheus package), \
             or set VFGATE_SKIP_PROMETHEUS=1 to skip this test locally"
        )
    }))
}

/// A `prometheus` child on a free port with its own config and TSDB dir, killed by PID when
/// dropped.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
    /// Held while Prometheus listens on it (Go sets SO_REUSEADDR, so it can bind it).
    _port: ReservedPort,
}

impl Prometheus {
    /// Starts `bin` scraping `targets` (host:port of admin listeners) every second, with
    /// `rule_files` loaded (evaluated every second), and waits until it is ready.
    pub async fn start(bin: &Path, targets: &[String], rule_files: &[PathBuf]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let reserved = ReservedPort::new();
        let port = reserved.port;
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - '{}'\n", p.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\
             scrape_configs:\n  - job_name: vfgate\n    metrics_path: /metrics\n    static_configs:\n      - targets: [{}]\n",
            if rules.is_empty() { "  []\n".to_string() } else { rules.concat() },
            targets.join(", ")
        );
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.path().join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus {
            child,
            port,
            _dir: dir,
            log,
            _port: reserved,
        };
        let t0 = Instant::now();
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", p.log_text());
            }
            if matches!(http_get(port, "/-/ready"), Ok((200, _))) {
                return p;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "prometheus not ready within 30s:\n{}",
                p.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/api/v1/query?query=expr`: the HTTP status and the JSON answer.
    pub fn query(&self, expr: &str) -> (u16, serde_json::Value) {
        let (status, body) = http_get(
            self.port,
            &format!("/api/v1/query?query={}", percent_encode(expr)),
        )
        .unwrap_or_else(|e| panic!("query {expr}: {e}"));
        let v = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("query {expr}: {e}: {}", String::from_utf8_lossy(&body)));
        (status, v)
    }

    /// Polls `expr` (bounded by `within`) until it returns a series for which `ok` holds;
    /// the last answer's result vector.
    pub async fn wait_for(
        &self,
        expr: &str,
        within: Duration,
        ok: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let t0 = Instant::now();
        loop {
            let (status, v) = self.query(expr);
            assert_eq!(status, 200, "{expr}: {v}");
            assert_eq!(v["status"], "success", "{expr}: {v}");
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            if ok(&result) {
                return result;
            }
            assert!(
                t0.elapsed() < within,
                "{expr}: no satisfying series within {within:?}; last answer {v}\nprometheus log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 GET (the server closes after the answer, so no chunked framing): status
/// and body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((status, buf[split + 4..].to_vec()))
}

/// Query-string encoding of everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A value of a query result's first sample, as a number.
fn value(series: &serde_json::Value) -> f64 {
    series["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_gateway_with_the_expected_series() {
    let Some(bin) = require("prometheus") else {
        return;
    };
    let t0 = Instant::now();
    let mock = Mock::start().await;
    // Traffic that gives every dashboard query a series: a retry (the first upstream
    // answer is 503), a dead letter (the spooled sink refuses "reject-me"), a duplicate,
    // a bad signature, a secret with a not_after.
    mock.push(Reply::Status(503, vec![], "busy".into()));
    mock.set_default(Reply::RejectContaining("reject-me".into()));
    let cfg = format!(
        r#"
[spool]
dir = "{{dir}}/spool"

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
sinks = ["spooler"]

[sink.custom]
type = "http"
url = "{}"

[sink.spooler]
type = "http"
url = "{}"
timeout = "1s"
"#,
        mock.url("/in"),
        mock.url("/sp")
    );
    let gw = Gateway::start_with(&cfg, "", &[("VF_NEXT", "whsec_next_0123456789abcdef")]).await;
    let rules = repo_root().join("deploy/prometheus/vfgate-rules.yml");
    let prom = Prometheus::start(&bin, &[format!("127.0.0.1:{}", gw.admin)], &[rules]).await;
    for i in 0..3 {
        let r = gw
            .post_event(&event(&format!("prom-{i}"), "user.login"))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.json());
    }
    let dup = gw.post_event(&event("prom-0", "user.login")).await;
    assert_eq!(dup.status_field(), "duplicate", "{:?}", dup.json());
    let bad = post_signed(
        gw.port,
        "/v1/events",
        "not-the-secret-0123456789",
        &event("bad", "user.login"),
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 401);
    for id in ["spooled-ok", "reject-me-1"] {
        let r = post_signed(gw.port, "/v2/events", SECRET, &event(id, "user.login"))
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{:?}", r.json());
    }
    let within = Duration::from_secs(30);
    prom.wait_for(r#"up{job="vfgate"}"#, within, |r| {
        r.len() == 1 && value(&r[0]) == 1.0
    })
    .await;
    let r = prom
        .wait_for(
            r#"vfgate_requests_total{job="vfgate",source="syvault",outcome="accepted"}"#,
            within,
            |r| r.len() == 1 && value(&r[0]) == 3.0,
        )
        .await;
    assert_eq!(r[0]["metric"]["source"], "syvault");
    let r = prom
        .wait_for("vfgate_build_info", within, |r| r.len() == 1)
        .await;
    assert_eq!(r[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(value(&r[0]), 1.0);
    let r = prom
        .wait_for(r#"vfgate_sink_up{sink="custom"}"#, within, |r| r.len() == 1)
        .await;
    assert_eq!(value(&r[0]), 1.0);
    prom.wait_for(
        r#"vfgate_sink_sent_bytes_total{sink="custom"} > 0"#,
        within,
        |r| r.len() == 1,
    )
    .await;
    prom.wait_for(
        r#"process_resident_memory_bytes{job="vfgate"} > 0"#,
        within,
        |r| r.len() == 1,
    )
    .await;
    // The shipped alert rules load and evaluate against the live series without error.
    let want = alert_names();
    let t1 = Instant::now();
    loop {
        let (status, body) = http_get(prom.port, "/api/v1/rules").unwrap();
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let rules: Vec<&serde_json::Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        let names: Vec<&str> = rules.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, want, "every shipped rule is loaded");
        for r in &rules {
            assert_ne!(
                r["health"], "err",
                "rule {} fails: {}",
                r["name"], r["lastError"]
            );
        }
        if rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "rules not evaluated within 30s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every query of the shipped Grafana dashboard parses and returns a series.
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{exprs:?}");
    for expr in &exprs {
        prom.wait_for(expr, within, |r| !r.is_empty()).await;
    }
    eprintln!(
        "prometheus test took {:?} ({} dashboard queries)",
        t0.elapsed(),
        exprs.len()
    );
}

/// Every `expr` of deploy/grafana/vfgate-dashboard.json, in order.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text =
        std::fs::read_to_string(repo_root().join("deploy/grafana/vfgate-dashboard.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    walk(&v, &mut out);
    out
}

/// The `alert:` names in the shipped rules file, in order.
fn alert_names() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo_root().join("deploy/prometheus/vfgate-rules.yml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_shipped_alert_rules_pass_their_promtool_unit_tests() {
    let Some(promtool) = require("promtool") else {
        return;
    };
    let dir = repo_root().join("deploy/prometheus");
    for args in [
        ["check", "rules", "vfgate-rules.yml"],
        ["test", "rules", "vfgate-rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a test case, and each carries the three annotations.
    let tests = std::fs::read_to_string(dir.join("vfgate-rules.test.yml")).unwrap();
    let rules = std::fs::read_to_string(dir.join("vfgate-rules.yml")).unwrap();
    for name in alert_names() {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} has no promtool test"
        );
    }
    for key in ["summary:", "description:", "runbook:"] {
        assert_eq!(
            rules.matches(key).count(),
            alert_names().len(),
            "every alert has a {key} annotation"
        );
    }
}
