//! What the provider and scheme tests share: the reference libraries' Python (from the
//! virtualenv `.ci/run` makes), SIEM mocks that answer by path, and readers of what reached
//! Elastic.

use super::{repo_root, Captured, Mock, Reply};

/// The reference library's Python in the virtualenv `.ci/run` makes; a test without it fails
/// and says so (`VFGATE_SKIP_PYTHON=1` skips it on a machine without network access).
pub fn reference_python() -> Option<std::path::PathBuf> {
    let py = repo_root().join("target/ci-venv/bin/python");
    if py.exists() {
        return Some(py);
    }
    assert!(
        std::env::var_os("VFGATE_SKIP_PYTHON").is_some(),
        "{} is missing: run .ci/run (it installs the standardwebhooks package there)",
        py.display()
    );
    None
}

/// Runs `script` with the reference library, `args` as sys.argv[1:]; its stdout.
pub fn python(py: &std::path::Path, script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Every document a `_bulk` request that was answered 2xx carried, by `_id`.
pub fn indexed(mock: &Mock) -> std::collections::HashMap<String, serde_json::Value> {
    let mut docs = std::collections::HashMap::new();
    let bulk = |q: &&Captured| q.status == 200 && q.path.starts_with("/_bulk");
    for q in mock.requests().iter().filter(bulk) {
        let text = String::from_utf8_lossy(&q.body).to_string();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for pair in lines.chunks(2) {
            let id = pair[0]["create"]["_id"].as_str().unwrap().to_string();
            docs.insert(id, pair[1].clone());
        }
    }
    docs
}

/// A document's `@timestamp` in unix seconds.
pub fn unix(doc: &serde_json::Value) -> i64 {
    let text = doc["@timestamp"].as_str().unwrap();
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp()
}

/// What each SIEM service answers, by path (Splunk HEC, Elastic `_bulk`, an Azure token;
/// `{}` otherwise).
pub fn siem_answers() -> Reply {
    Reply::Compute(std::sync::Arc::new(|q: &Captured| {
        let path = q.path.as_str();
        let body = if path.contains("/oauth2/") {
            r#"{"token_type":"Bearer","expires_in":3599,"access_token":"tok"}"#
        } else if path.starts_with("/_bulk") {
            r#"{"errors":false}"#
        } else if path.starts_with("/services/collector") {
            r#"{"text":"Success","code":0}"#
        } else {
            "{}"
        };
        (200, body.to_string())
    }))
}
