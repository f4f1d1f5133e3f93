//! A running `vfgate serve` on reserved ports, and `vfgate send` load against it.

use super::{bin, post_signed, request, ReservedPort, Resp, SECRET};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `vfgate serve`.
pub struct Gateway {
    pub child: Option<Child>,
    pub port: u16,
    pub admin: u16,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    /// `port` and `admin`, held while the gateway may (re)bind them.
    _ports: [ReservedPort; 2],
}

impl Gateway {
    /// Starts `vfgate serve` with `body` appended to a generated `[server]`/`[admin]` header.
    /// `{dir}` in `body` is replaced by the gateway's temp dir.
    pub async fn start(body: &str) -> Gateway {
        Self::start_with(body, "", &[]).await
    }

    /// Like [`Gateway::start_with`], with extra keys in the generated `[admin]` table.
    pub async fn start_admin(body: &str, admin_extra: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_full(body, "", admin_extra, env).await
    }

    pub async fn start_with(body: &str, server_extra: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_full(body, server_extra, "", env).await
    }

    pub async fn start_full(
        body: &str,
        server_extra: &str,
        admin_extra: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let ports = [ReservedPort::new(), ReservedPort::new()];
            let (port, admin) = (ports[0].port, ports[1].port);
            // One worker thread unless the test sets its own.
            let threads = if server_extra.contains("threads =") {
                ""
            } else {
                "threads = 1\n"
            };
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\ngrace_period = \"5s\"\n{threads}{server_extra}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{admin_extra}\n{}",
                body.replace("{dir}", dir.path().to_str().unwrap())
            );
            let cfg = dir.path().join("vfgate.toml");
            std::fs::write(&cfg, text).unwrap();
            let log = dir.path().join("vfgate.log");
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let mut g = Gateway {
                child: None,
                port,
                admin,
                dir,
                log,
                env,
                _ports: ports,
            };
            g.spawn();
            if g.wait_ready(Duration::from_secs(10)).await {
                return g;
            }
            g.stop_kill();
        }
        panic!("vfgate did not become ready");
    }

    fn spawn(&mut self) {
        let cfg = self.dir.path().join("vfgate.toml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(bin());
        // Relative paths (the default dedupe.dir, data/...) land in the test's own dir.
        cmd.args(["serve", "--config", cfg.to_str().unwrap()])
            .current_dir(self.dir.path())
            .env("VF_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            assert_eq!(send_signal(c.id() as i32, "KILL"), 0);
            let _ = c.wait();
        }
    }

    /// Starts the same config again (same dir, same ports) and waits until ready.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        for _ in 0..50 {
            self.spawn();
            if self.wait_ready(Duration::from_secs(10)).await {
                return;
            }
            // The port may still be held for a moment after a kill.
            self.stop_kill();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("vfgate did not restart:\n{}", self.log_text());
    }

    async fn wait_ready(&mut self, within: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if let Ok(r) = request(self.admin, "GET", "/readyz", &[], b"").await {
                if r.status == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// POSTs a signed event to `/v1/events`.
    pub async fn post_event(&self, body: &str) -> Resp {
        post_signed(self.port, "/v1/events", SECRET, body)
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        let r = request(self.admin, "GET", "/metrics", &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }

    /// The value of one sample line, e.g. `vfgate_requests_total{outcome="accepted",source="s"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let m = self.metrics().await;
        m.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// Waits up to 10 s for a sample to reach `want` (counters move after the effect they
    /// count is visible, e.g. a dead-letter file before its counter), returning the last value.
    pub async fn metric_reaches(&self, series: &str, want: f64) -> f64 {
        let t0 = Instant::now();
        loop {
            let v = self.metric(series).await;
            if v == want || t0.elapsed() > Duration::from_secs(10) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        let rc = send_signal(c.id() as i32, "TERM");
        assert_eq!(rc, 0);
        c.wait().unwrap()
    }

    fn stop_kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends a signal to a process this test started, through the `kill` command.
pub fn send_signal(pid: i32, name: &str) -> i32 {
    let st = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    if st.success() {
        0
    } else {
        -1
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop_kill();
    }
}

/// Starts `vfgate send --generate events --rate rate` (16 orgs, 8 in flight, 2 s timeout)
/// against `gw`, writing `event_id<TAB>status` lines to `results`; `extra` args follow.
pub fn send_load(gw: &Gateway, events: usize, rate: u32, results: &Path, extra: &[&str]) -> Child {
    let target = format!("http://127.0.0.1:{}/v1/events", gw.port);
    let (events, rate) = (events.to_string(), rate.to_string());
    let failed = gw.dir.path().join("send-failed");
    let mut args = vec![
        "send",
        "--target",
        &target,
        "--secret-env",
        "VF_SECRET",
        "--generate",
        &events,
        "--rate",
        &rate,
        "--orgs",
        "16",
        "--concurrency",
        "8",
        "--timeout",
        "2s",
        "--quiet",
        "--failed-dir",
        failed.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Command::new(bin())
        .args(args)
        .env("VF_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits up to `within` for a [`send_load`] sender to finish.
pub async fn wait_for_sender(send: &mut Child, within: Duration) {
    let t0 = Instant::now();
    while send.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < within, "send did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids a [`send_load`] results file shows a 2xx for.
pub fn acknowledged(results: &str) -> std::collections::HashSet<String> {
    results
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, s)| s.starts_with('2'))
        .map(|(id, _)| id.to_string())
        .collect()
}
