//! Test utilities: start the real `vfgate` binary on reserved ports ([`gateway`]), a raw
//! HTTP/1.1 client ([`http`]), a scriptable mock upstream that records exactly what arrives
//! ([`mock`]), a builder for the config's shared blocks ([`config`]), and a tmpfs for disk-full
//! tests ([`fs`]). Events, signing and the CLI are here.

mod config;
mod fs;
mod gateway;
mod http;
mod mock;
mod port;
mod provider;

pub use config::*;
pub use fs::*;
pub use gateway::*;
pub use http::*;
pub use mock::*;
pub use port::*;
pub use provider::*;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "whsec_test_0123456789abcdef";
/// The binary under test: this build's, or `VFGATE_TEST_BIN` (to show that a new test fails
/// on an older build: `VFGATE_TEST_BIN=/tmp/vfgate-old cargo test --test it NAME`).
pub fn bin() -> String {
    std::env::var("VFGATE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vfgate").to_string())
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
        // A child that exits before reading (a usage error) closes the pipe: not a failure.
        let _ = child.stdin.take().unwrap().write_all(input);
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
