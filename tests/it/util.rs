//! Test utilities: start the real `vfgate` binary on free ports, a raw HTTP/1.1 client, and
//! a scriptable mock upstream that records exactly what arrives.

use std::collections::VecDeque;
use std::io::Write;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const SECRET: &str = "whsec_test_0123456789abcdef";
/// The binary under test: this build's, or `VFGATE_TEST_BIN` (to show that a new test fails
/// on an older build: `VFGATE_TEST_BIN=/tmp/vfgate-old cargo test --test it NAME`).
pub fn bin() -> String {
    std::env::var("VFGATE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vfgate").to_string())
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    vfgate::verify::sign(
        &vfgate::secret::Secret::new(secret.as_bytes().to_vec()),
        body,
    )
}

pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A valid event with a fresh timestamp.
pub fn event(id: &str, event_type: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","event_type":"{event_type}","timestamp":"{}","actor":{{"user_id":"usr_1","email":"a@example.com"}},"target":{{"type":"session","id":"s1"}},"context":{{"ip_address":"203.0.113.42","user_agent":"ua","org_id":"org_1"}},"extra_field":{{"kept":true}}}}"#,
        now_rfc3339()
    )
}

/// A running `vfgate serve`.
pub struct Gateway {
    pub child: Option<Child>,
    pub port: u16,
    pub admin: u16,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    env: Vec<(String, String)>,
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
            let port = free_port();
            let admin = free_port();
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\ngrace_period = \"5s\"\nthreads = 1\n{server_extra}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{admin_extra}\n{}",
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

/// A response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
    pub fn status_field(&self) -> String {
        self.json()["status"].as_str().unwrap_or("").to_string()
    }
}

/// POSTs `body` to `path` as a sender would: signed with `secret`, version 1, JSON.
pub async fn post_signed(port: u16, path: &str, secret: &str, body: &str) -> std::io::Result<Resp> {
    let sig = sign(secret, body.as_bytes());
    request(
        port,
        "POST",
        path,
        &[
            ("Content-Type", "application/json"),
            ("X-VF-Signature-256", &sig),
            ("X-VF-Webhook-Version", "1"),
        ],
        body.as_bytes(),
    )
    .await
}

/// One HTTP/1.1 request on a new connection.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    let mut has_len = false;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding") {
            has_len = true;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    let expect_continue = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("expect") && v.eq_ignore_ascii_case("100-continue"));
    if expect_continue {
        // Like curl: wait for the interim answer (or a final one) before sending the body.
        let r = read_response_raw(&mut s).await?;
        if r.status != 100 {
            return Ok(r);
        }
    }
    // The server may answer early (413) and close: a failed body write still has an answer.
    let _ = s.write_all(body).await;
    read_response(&mut s).await
}

/// Reads one final response, skipping interim 100 Continue answers.
pub async fn read_response(s: &mut TcpStream) -> std::io::Result<Resp> {
    loop {
        let r = read_response_raw(s).await?;
        if r.status != 100 {
            return Ok(r);
        }
    }
}

/// Reads one response (Content-Length framed, or to EOF), interim ones included.
pub async fn read_response_raw(s: &mut TcpStream) -> std::io::Result<Resp> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = r.parse(&buf) {
            let status = r.code.unwrap();
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).to_string(),
                    )
                })
                .collect();
            if status == 100 {
                return Ok(Resp {
                    status,
                    headers,
                    body: Vec::new(),
                });
            }
            let len = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse::<usize>().unwrap());
            let mut body = buf[n..].to_vec();
            match len {
                Some(len) => {
                    while body.len() < len {
                        let k = s.read(&mut tmp).await?;
                        if k == 0 {
                            break;
                        }
                        body.extend_from_slice(&tmp[..k]);
                    }
                    body.truncate(len);
                }
                None => loop {
                    let k = s.read(&mut tmp).await?;
                    if k == 0 {
                        break;
                    }
                    body.extend_from_slice(&tmp[..k]);
                },
            }
            return Ok(Resp {
                status,
                headers,
                body,
            });
        }
        let k = s.read(&mut tmp).await?;
        if k == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.extend_from_slice(&tmp[..k]);
    }
}

/// A request the mock upstream received.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the mock answered (0 until it answered).
    pub status: u16,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A reply computed from the request.
pub type ReplyFn = Arc<dyn Fn(&Captured) -> (u16, String) + Send + Sync>;

/// What the mock answers.
#[derive(Clone)]
pub enum Reply {
    /// Status, extra headers, body.
    Status(u16, Vec<(String, String)>, String),
    /// Sleep, then answer 200.
    Sleep(Duration),
    /// 400 when the body contains this text, else 200.
    RejectContaining(String),
    /// Status and body computed from the request.
    Compute(ReplyFn),
}

/// A scriptable upstream: answers from a queue of replies (then the default), records all.
#[derive(Clone)]
pub struct Mock {
    pub port: u16,
    pub got: Arc<Mutex<Vec<Captured>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    default: Arc<Mutex<Reply>>,
}

impl Mock {
    pub async fn start() -> Mock {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let m = Mock {
            port,
            got: Arc::default(),
            script: Arc::default(),
            default: Arc::new(Mutex::new(Reply::Status(200, vec![], "{}".into()))),
        };
        let mm = m.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = match l.accept().await {
                    Ok(x) => x,
                    Err(_) => return,
                };
                let mm = mm.clone();
                tokio::spawn(async move {
                    let _ = mm.serve_conn(s).await;
                });
            }
        });
        m
    }

    /// A mock that speaks HTTPS with the given PEM certificate chain and key.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Mock {
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let m = Mock {
            port,
            got: Arc::default(),
            script: Arc::default(),
            default: Arc::new(Mutex::new(Reply::Status(200, vec![], "{}".into()))),
        };
        let mm = m.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (mm, acceptor) = (mm.clone(), acceptor.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(s).await {
                        let _ = mm.serve_conn(tls).await;
                    }
                });
            }
        });
        m
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn push(&self, r: Reply) {
        self.script.lock().unwrap().push_back(r);
    }

    pub fn set_default(&self, r: Reply) {
        *self.default.lock().unwrap() = r;
    }

    pub fn requests(&self) -> Vec<Captured> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Captured> {
        let t0 = Instant::now();
        while self.got.lock().unwrap().len() < n && t0.elapsed() < within {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.requests()
    }

    async fn serve_conn<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        mut s: S,
    ) -> std::io::Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        let mut tmp = [0u8; 65536];
        loop {
            // Parse one request.
            let (cap, consumed) = loop {
                let mut hs = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Request::new(&mut hs);
                if let Ok(httparse::Status::Complete(n)) = r.parse(&buf) {
                    let headers: Vec<(String, String)> = r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).to_string(),
                            )
                        })
                        .collect();
                    let len = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .map(|(_, v)| v.parse::<usize>().unwrap())
                        .unwrap_or(0);
                    if buf.len() >= n + len {
                        let cap = Captured {
                            method: r.method.unwrap().to_string(),
                            path: r.path.unwrap().to_string(),
                            headers,
                            body: buf[n..n + len].to_vec(),
                            status: 0,
                        };
                        break (cap, n + len);
                    }
                }
                let k = s.read(&mut tmp).await?;
                if k == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&tmp[..k]);
            };
            buf.drain(..consumed);
            let idx = {
                let mut g = self.got.lock().unwrap();
                g.push(cap);
                g.len() - 1
            };
            let reply = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| self.default.lock().unwrap().clone());
            let (status, headers, body) = match reply {
                Reply::Status(s, h, b) => (s, h, b),
                Reply::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    (200, vec![], "{}".to_string())
                }
                Reply::Compute(f) => {
                    let last = self.got.lock().unwrap().last().unwrap().clone();
                    let (st, b) = f(&last);
                    (st, vec![], b)
                }
                Reply::RejectContaining(t) => {
                    let last = self.got.lock().unwrap().last().unwrap().body.clone();
                    if String::from_utf8_lossy(&last).contains(&t) {
                        (400, vec![], "bad payload".to_string())
                    } else {
                        (200, vec![], "{}".to_string())
                    }
                }
            };
            self.got.lock().unwrap()[idx].status = status;
            let mut out = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            out.push_str(&body);
            s.write_all(out.as_bytes()).await?;
        }
    }
}

/// Runs `vfgate` with arguments; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `f` every 50 ms until it holds or `within` has passed; its last answer.
pub async fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
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

/// A small tmpfs mounted at a fresh directory for a disk-full test, unmounted on drop. Needs
/// root (CI runs as root); elsewhere the test says so and fails.
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small");
        std::fs::create_dir(&path).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs for a disk-full test needs root"
        );
        Tmpfs { path, _dir: dir }
    }

    /// Fills what is left with a file `fill` (until ENOSPC).
    pub fn fill(&self) {
        let mut f = std::fs::File::create(self.path.join("fill")).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let one = [0u8; 1];
        while f.write_all(&one).is_ok() {}
    }

    /// Frees what [`Tmpfs::fill`] took.
    pub fn free(&self) {
        std::fs::remove_file(self.path.join("fill")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A valid event dated `offset_s` seconds from now.
pub fn event_dated(id: &str, offset_s: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_s);
    let ts = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    format!(
        r#"{{"event_id":"{id}","event_type":"user.login","timestamp":"{ts}","context":{{"org_id":"org_1"}}}}"#
    )
}
