//! Sources of other signature schemes (`standard-webhooks`, `hmac`) verify, dedupe and
//! deliver like a VF source: the real binary, a signed request, what reaches the sink.

use crate::util::*;
use std::time::Duration;

const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const GITHUB_SECRET: &str = "It's a Secret to Everybody";

/// `v1,<base64>` of the Standard Webhooks scheme, computed here independently of vfgate.
fn sw_sign(id: &str, ts: i64, body: &str) -> String {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let key = base64::engine::general_purpose::STANDARD
        .decode(&WHSEC["whsec_".len()..])
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// GitHub's `sha256=<hex>` of a body.
fn github_sign(body: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(GITHUB_SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn config(mock: &Mock) -> String {
    format!(
        r#"
[[source]]
name = "vanta"
path = "/hooks/vanta"
scheme = "standard-webhooks"
secrets = [{{ env = "VANTA_SECRET" }}]
tolerance = "5m"
fields = {{ event_type = "/type", org_id = "/data/org_id" }}
sinks = ["up"]

[[source]]
name = "github"
path = "/hooks/github"
scheme = "hmac"
hmac = {{ header = "X-Hub-Signature-256", prefix = "sha256=", encoding = "hex", algorithm = "sha256" }}
secrets = [{{ env = "GITHUB_SECRET" }}]
fields = {{ event_id = {{ header = "X-GitHub-Delivery" }}, event_type = {{ header = "X-GitHub-Event" }}, timestamp = "received" }}
sinks = ["splunk"]

[sink.up]
type = "http"
url = "{}"

[sink.splunk]
type = "splunk_hec"
url = "{}"
token = {{ value = "12345678-1234-1234-1234-1234567890AB" }}
"#,
        mock.url("/up"),
        mock.url("")
    )
}

async fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    request(gw.port, "POST", path, &h, body.as_bytes())
        .await
        .unwrap()
}

async fn start() -> (Mock, Gateway) {
    let mock = Mock::start().await;
    mock.set_default(Reply::Status(
        200,
        vec![],
        r#"{"text":"Success","code":0}"#.into(),
    ));
    let env = [("VANTA_SECRET", WHSEC), ("GITHUB_SECRET", GITHUB_SECRET)];
    let gw = Gateway::start_with(&config(&mock), "", &env).await;
    (mock, gw)
}

#[tokio::test]
async fn a_standard_webhooks_delivery_is_verified_deduped_and_forwarded_as_sent() {
    let (mock, gw) = start().await;
    let body = r#"{"type":"vanta.test.failed","data":{"org_id":"org_9","test":"mfa"}}"#;
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    let sig = sw_sign("msg_2LJ", ts, body);
    let ts_text = ts.to_string();
    let hs = [
        ("webhook-id", "msg_2LJ"),
        ("webhook-timestamp", ts_text.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    let r = post(&gw, "/hooks/vanta", &hs, body).await;
    assert_eq!((r.status, r.status_field()), (200, "accepted".to_string()));
    let got = mock.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(
        (got[0].path.as_str(), got[0].body.as_slice()),
        ("/up", body.as_bytes())
    );
    // The sender's retry (the same webhook-id) is a duplicate, with svix-* names too.
    let svix = [
        ("svix-id", "msg_2LJ"),
        ("svix-timestamp", ts_text.as_str()),
        ("svix-signature", sig.as_str()),
    ];
    let r = post(&gw, "/hooks/vanta", &svix, body).await;
    assert_eq!(r.status_field(), "duplicate");
    // A flipped id, an old timestamp, a wrong signature.
    let other = [("webhook-id", "msg_other"), hs[1], hs[2]];
    assert_eq!(
        post(&gw, "/hooks/vanta", &other, body).await.error(),
        "invalid_signature"
    );
    let old_ts = (ts - 600).to_string();
    let old_sig = sw_sign("msg_old", ts - 600, body);
    let old = [
        ("webhook-id", "msg_old"),
        ("webhook-timestamp", old_ts.as_str()),
        ("webhook-signature", old_sig.as_str()),
    ];
    let r = post(&gw, "/hooks/vanta", &old, body).await;
    assert_eq!((r.status, r.error()), (400, "stale_event".to_string()));
    assert_eq!(mock.requests().len(), 1, "nothing else reached the sink");
}

#[tokio::test]
async fn a_github_shaped_delivery_reaches_splunk_with_its_delivery_id_and_event_type() {
    let (mock, gw) = start().await;
    let body = r#"{"zen":"Keep it logically awesome.","hook_id":123}"#;
    let sig = github_sign(body);
    let hs = [
        ("x-hub-signature-256", sig.as_str()),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("x-github-event", "ping"),
    ];
    let r = post(&gw, "/hooks/github", &hs, body).await;
    assert_eq!((r.status, r.status_field()), (200, "accepted".to_string()));
    let got = mock.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].path, "/services/collector/event");
    let envelope: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        envelope["event"],
        serde_json::from_str::<serde_json::Value>(body).unwrap()
    );
    assert_eq!(
        post(&gw, "/hooks/github", &hs, body).await.status_field(),
        "duplicate"
    );
    let unsigned = [hs[1], hs[2]];
    assert_eq!(
        post(&gw, "/hooks/github", &unsigned, body).await.error(),
        "invalid_signature"
    );
    let no_id = [hs[0], hs[2]];
    let r = post(&gw, "/hooks/github", &no_id, body).await;
    assert_eq!((r.status, r.error()), (400, "invalid_event".to_string()));
    assert_eq!(mock.requests().len(), 1);
}

/// The reference library's Python in the virtualenv `.ci/run` makes; a test without it fails
/// and says so (`VFGATE_SKIP_PYTHON=1` skips it on a machine without network access).
fn reference_python() -> Option<std::path::PathBuf> {
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
fn python(py: &std::path::Path, script: &str, args: &[&str]) -> String {
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

const PY_SIGN: &str = r#"
import sys, datetime
from standardwebhooks.webhooks import Webhook
secret, msg_id, ts, body = sys.argv[1:5]
t = datetime.datetime.fromtimestamp(int(ts), tz=datetime.timezone.utc)
print(Webhook(secret).sign(msg_id, t, body))
"#;

const PY_VERIFY: &str = r#"
import sys
from standardwebhooks.webhooks import Webhook
secret, msg_id, ts, sig, body = sys.argv[1:6]
Webhook(secret).verify(body, {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": sig})
print("ok")
"#;

#[tokio::test]
async fn the_reference_library_and_vfgate_verify_each_others_signatures() {
    let Some(py) = reference_python() else {
        return;
    };
    let (mock, gw) = start().await;
    let body = r#"{"type":"x.y","data":{"org_id":"o"}}"#;
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    let ts_text = ts.to_string();
    // It signs, vfgate verifies; a changed id, timestamp, body or signature fails.
    let sig = python(&py, PY_SIGN, &[WHSEC, "msg_py_1", &ts_text, body]);
    let ok = |id: &'static str, t: String, s: String| {
        vec![
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", t),
            ("webhook-signature", s),
        ]
    };
    let send = |h: Vec<(&'static str, String)>, b: &'static str| {
        let gw = &gw;
        async move {
            let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post(gw, "/hooks/vanta", &hs, b).await
        }
    };
    assert_eq!(
        send(ok("msg_py_1", ts_text.clone(), sig.clone()), body)
            .await
            .status_field(),
        "accepted"
    );
    assert_eq!(
        send(ok("msg_py_2", ts_text.clone(), sig.clone()), body)
            .await
            .error(),
        "invalid_signature"
    );
    assert_eq!(
        send(ok("msg_py_1", (ts + 1).to_string(), sig.clone()), body)
            .await
            .error(),
        "invalid_signature"
    );
    let other = r#"{"type":"x.y","data":{"org_id":"p"}}"#;
    assert_eq!(
        send(ok("msg_py_1", ts_text.clone(), sig.clone()), other)
            .await
            .error(),
        "invalid_signature"
    );
    let flipped = if sig.ends_with("A=") {
        sig.replace("A=", "B=")
    } else {
        format!("{}A=", &sig[..sig.len() - 2])
    };
    assert_eq!(
        send(ok("msg_py_1", ts_text.clone(), flipped), body)
            .await
            .error(),
        "invalid_signature"
    );
    // Several signatures in one header (a sender rotating): any one may match.
    let sig3 = python(&py, PY_SIGN, &[WHSEC, "msg_py_3", &ts_text, body]);
    let multi = format!("v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ= {sig3}");
    assert_eq!(
        send(ok("msg_py_3", ts_text.clone(), multi), body)
            .await
            .status_field(),
        "accepted"
    );
    // vfgate signs, it verifies.
    let key = vfgate::secret::standard_webhooks_key(&vfgate::secret::Secret::new(WHSEC)).unwrap();
    let ours = vfgate::verify::standard_webhooks::sign(key.expose(), "msg_vf", ts, body.as_bytes());
    assert_eq!(
        python(&py, PY_VERIFY, &[WHSEC, "msg_vf", &ts_text, &ours, body]),
        "ok"
    );
    assert_eq!(mock.wait_for(2, Duration::from_secs(5)).await.len(), 2);
}

#[test]
fn pythons_hmac_and_vfgate_agree_on_every_algorithm_and_encoding() {
    use vfgate::verify::hmac::{sign, verify, Algorithm, Encoding, Format, Key};
    let script = r#"
import sys, hmac, hashlib, base64
alg, enc, body = sys.argv[1:4]
mac = hmac.new(b"k3y", body.encode(), getattr(hashlib, alg)).digest()
print(mac.hex() if enc == "hex" else base64.b64encode(mac).decode())
"#;
    let py = std::path::Path::new("python3");
    for (alg, a) in [
        ("sha1", Algorithm::Sha1),
        ("sha256", Algorithm::Sha256),
        ("sha512", Algorithm::Sha512),
    ] {
        for (enc, e) in [("hex", Encoding::Hex), ("base64", Encoding::Base64)] {
            let f = Format {
                prefix: format!("{alg}="),
                encoding: e,
                algorithm: a,
            };
            let theirs = format!("{alg}={}", python(py, script, &[alg, enc, "{\"a\":1}"]));
            assert_eq!(sign(&f, b"k3y", b"{\"a\":1}"), theirs, "{alg} {enc}");
            let keys = [Key::new(&f, b"k3y", None)];
            assert_eq!(
                verify(&f, &keys, Some(theirs.as_bytes()), b"{\"a\":1}", 0),
                Ok(0)
            );
            assert!(verify(&f, &keys, Some(theirs.as_bytes()), b"{\"a\":2}", 0).is_err());
        }
    }
}

/// A spool record keeps the body alone: a `standard-webhooks` event spooled would lose its
/// id and time (they are headers), and the drainer would re-read the body as a VF event and
/// dead-letter it. Until records carry them, such a config is refused, not half-served.
#[test]
fn a_spooled_source_of_another_scheme_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("spooled.toml");
    let toml = format!(
        "{}\n[spool]\ndir = \"{}\"\n",
        Toml::new()
            .source_at("vanta", "/hooks/vanta", &["up"])
            .with(r#"scheme = "standard-webhooks""#)
            .with(r#"secrets = [{ env = "VANTA_SECRET" }]"#)
            .with(r#"ack = "spool""#)
            .http_sink("up", "http://127.0.0.1:9/up")
            .build(),
        tmp.path().join("spool").display()
    );
    std::fs::write(&cfg, toml).unwrap();
    let (code, _, err) = run_cli(
        &["check-config", "--config", cfg.to_str().unwrap()],
        &[("VANTA_SECRET", WHSEC)],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("source[0].ack: \"spool\" takes only scheme = \"vf\" sources for now"),
        "{err}"
    );
}
