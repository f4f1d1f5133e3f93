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
                param: None,
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

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// Both sources of [`config`] with `ack = "spool"`, delivering to an Elastic sink with ECS
/// fields (`_id`, `event.id`, `event.action`, `@timestamp`, `organization.id`: every mapped
/// field shows), and an admin token for the dead-letter API.
async fn start_spooled(mock: &Mock) -> Gateway {
    let toml = Toml::new()
        .spool()
        .source_at("vanta", "/hooks/vanta", &["es"])
        .with(r#"scheme = "standard-webhooks""#)
        .with(r#"secrets = [{ env = "VANTA_SECRET" }]"#)
        .with(r#"fields = { event_type = "/type", org_id = "/data/org_id" }"#)
        .with(r#"ack = "spool""#)
        .source_at("github", "/hooks/github", &["es"])
        .with(r#"scheme = "hmac""#)
        .with(r#"hmac = { header = "X-Hub-Signature-256", prefix = "sha256=" }"#)
        .with(r#"secrets = [{ env = "GITHUB_SECRET" }]"#)
        .with(r#"fields = { event_id = { header = "X-GitHub-Delivery" }, event_type = { header = "X-GitHub-Event" }, timestamp = "received" }"#)
        .with(r#"ack = "spool""#)
        .sink("es", "elastic")
        .with(&format!("url = \"{}\"", mock.url("")))
        .with(r#"index = "audit""#)
        .with(r#"auth = { api_key = { value = "aWQ6a2V5" } }"#)
        .with("ecs = true")
        .with(r#"batch = { max_events = 10, linger = "5ms" }"#)
        .build();
    let env = [
        ("VANTA_SECRET", WHSEC),
        ("GITHUB_SECRET", GITHUB_SECRET),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    Gateway::start_admin(&toml, "token = { env = \"ADMIN_TOKEN\" }", &env).await
}

async fn post_vanta(gw: &Gateway, id: &str, ts: i64, body: &str) -> Resp {
    let (sig, ts) = (sw_sign(id, ts, body), ts.to_string());
    let hs = [
        ("webhook-id", id),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    post(gw, "/hooks/vanta", &hs, body).await
}

async fn post_github(gw: &Gateway, delivery: &str, body: &str) -> Resp {
    let sig = github_sign(body);
    let hs = [
        ("x-hub-signature-256", sig.as_str()),
        ("x-github-delivery", delivery),
        ("x-github-event", "push"),
    ];
    post(gw, "/hooks/github", &hs, body).await
}

/// A spool record of another scheme keeps the fields its body does not carry (a Standard
/// Webhooks id and time are headers, GitHub's time is the receive time): events spooled
/// while the SIEM is down and carried across a `kill -9` reach it with the mapped id, type,
/// time and org. Before records carried them, the drainer read the body as a VF event and
/// dead-lettered it as corrupt after its 202.
#[tokio::test]
async fn spooled_events_of_other_schemes_survive_a_crash_with_their_mapped_fields() {
    let mock = Mock::start().await;
    mock.set_default(Reply::Status(503, vec![], "{}".into()));
    let mut gw = start_spooled(&mock).await;
    let ts = time::OffsetDateTime::now_utc().unix_timestamp() - 60;
    let body = r#"{"type":"vanta.test.failed","data":{"org_id":"org_9"}}"#;
    let r = post_vanta(&gw, "msg_sp_1", ts, body).await;
    assert_eq!((r.status, r.status_field()), (202, "accepted".to_string()));
    let before = time::OffsetDateTime::now_utc().unix_timestamp();
    let r = post_github(&gw, "gh-sp-1", r#"{"ref":"refs/heads/main"}"#).await;
    assert_eq!(r.status, 202);
    mock.wait_for(1, Duration::from_secs(5)).await;
    gw.kill9();
    mock.set_default(Reply::Status(200, vec![], r#"{"errors":false}"#.into()));
    gw.restart().await;
    assert!(
        wait_until(Duration::from_secs(10), || indexed(&mock).len() == 2).await,
        "{:?}",
        indexed(&mock).keys()
    );
    let docs = indexed(&mock);
    let vanta = &docs["msg_sp_1"];
    assert_eq!(vanta["event"]["id"], "msg_sp_1");
    assert_eq!(vanta["event"]["action"], "vanta.test.failed");
    assert_eq!(vanta["organization"]["id"], "org_9");
    assert_eq!(
        unix(vanta),
        ts,
        "the webhook-timestamp, not the receive time"
    );
    let github = &docs["gh-sp-1"];
    assert_eq!(github["event"]["action"], "push");
    assert_eq!(github["ref"], "refs/heads/main");
    assert!(
        (before - 1..=before + 1).contains(&unix(github)),
        "the receive time"
    );
    // Nothing was dead-lettered as corrupt (the series exist: a missing one would read 0).
    let text = gw.metrics().await;
    for source in ["vanta", "github"] {
        let series = format!("vfgate_spool_corrupt_records_total{{source=\"{source}\"}} 0");
        assert!(text.contains(&series), "{series}");
    }
}

/// A dead letter of another scheme keeps its mapped fields too: replayed through the admin
/// API, the event reaches the sink with its own id, time and org.
#[tokio::test]
async fn a_dead_letter_of_another_scheme_replays_with_its_mapped_fields() {
    let mock = Mock::start().await;
    mock.set_default(Reply::Status(400, vec![], r#"{"error":"mapper"}"#.into()));
    let gw = start_spooled(&mock).await;
    let ts = time::OffsetDateTime::now_utc().unix_timestamp() - 30;
    let body = r#"{"type":"vanta.vendor.added","data":{"org_id":"org_3"}}"#;
    assert_eq!(post_vanta(&gw, "msg_dl_1", ts, body).await.status, 202);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let list = || async {
        request(
            gw.admin,
            "GET",
            "/admin/failed",
            &[("authorization", &auth)],
            b"",
        )
        .await
        .unwrap()
        .json()
    };
    let mut entries = serde_json::Value::Null;
    for _ in 0..100 {
        entries = list().await["entries"].clone();
        if entries.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(entries[0]["event_id"], "msg_dl_1", "{entries}");
    assert_eq!(entries[0]["reason"], "rejected");
    mock.set_default(Reply::Status(200, vec![], r#"{"errors":false}"#.into()));
    let id = entries[0]["id"].as_str().unwrap();
    let path = format!("/admin/failed/{id}/replay");
    let r = request(gw.admin, "POST", &path, &[("authorization", &auth)], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    let doc = &indexed(&mock)["msg_dl_1"];
    assert_eq!(doc["organization"]["id"], "org_3");
    assert_eq!(doc["event"]["action"], "vanta.vendor.added");
    assert_eq!(unix(doc), ts);
}

/// `vfgate send --scheme ...` signs as each source verifies: delivered once, a repeat is a
/// duplicate (the same webhook-id / delivery id), and the request counter names the scheme.
async fn send_cli(args: &[&str], stdin: &str) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.as_bytes().to_vec();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = [("VANTA_SECRET", WHSEC), ("GITHUB_SECRET", GITHUB_SECRET)];
        run_cli(&a, &env, Some(&stdin))
    })
    .await
    .unwrap()
}

const GITHUB_SEND: &[&str] = &[
    "--scheme",
    "hmac",
    "--hmac-header",
    "X-Hub-Signature-256",
    "--hmac-prefix",
    "sha256=",
    "--id-header",
    "X-GitHub-Delivery",
    "--type-header",
    "X-GitHub-Event",
];

#[tokio::test]
async fn vfgate_send_signs_for_every_scheme() {
    let (mock, gw) = start().await;
    let vanta = format!("http://127.0.0.1:{}/hooks/vanta", gw.port);
    let github = format!("http://127.0.0.1:{}/hooks/github", gw.port);
    let sw_events = "{\"event_id\":\"msg_cli_1\",\"type\":\"a.b\",\"data\":{\"org_id\":\"o1\"}}\n{\"event_id\":\"msg_cli_1\",\"type\":\"a.b\",\"data\":{\"org_id\":\"o1\"}}\n";
    let args = ["send", "--target", &vanta, "--secret-env", "VANTA_SECRET"];
    let (code, out, err) = send_cli(
        &[&args[..], &["--scheme", "standard-webhooks"]].concat(),
        sw_events,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let gh_event = "{\"event_id\":\"gh-cli-1\",\"event_type\":\"push\",\"ref\":\"main\"}\n";
    let args = ["send", "--target", &github, "--secret-env", "GITHUB_SECRET"];
    let (code, out, err) = send_cli(&[&args[..], GITHUB_SEND].concat(), gh_event).await;
    assert_eq!(code, 0, "{out}{err}");
    let got = mock.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2, "the repeated webhook-id was a duplicate");
    let series = |source: &str, scheme: &str, outcome: &str| {
        format!("vfgate_requests_total{{outcome=\"{outcome}\",scheme=\"{scheme}\",source=\"{source}\"}}")
    };
    assert_eq!(
        gw.metric(&series("vanta", "standard-webhooks", "accepted"))
            .await,
        1.0
    );
    assert_eq!(
        gw.metric(&series("vanta", "standard-webhooks", "duplicate"))
            .await,
        1.0
    );
    assert_eq!(gw.metric(&series("github", "hmac", "accepted")).await, 1.0);
    let tmp = tempfile::tempdir().unwrap();
    let failed = tmp.path().join("failed");
    // The wrong scheme's signature is refused (both attempts) and counted under the
    // source's scheme.
    let args = [
        "send",
        "--target",
        &vanta,
        "--secret-env",
        "GITHUB_SECRET",
        "--retry-schedule",
        "10ms",
        "--failed-dir",
        failed.to_str().unwrap(),
    ];
    let (code, _, _) = send_cli(&args, gh_event).await;
    assert_eq!(code, 1);
    assert_eq!(
        gw.metric(&series("vanta", "standard-webhooks", "invalid_signature"))
            .await,
        2.0
    );
}

#[tokio::test]
async fn vfgate_sign_prints_the_headers_of_each_scheme() {
    let body = r#"{"event_id":"msg_sign_1","type":"x"}"#;
    let sign = |extra: &[&str]| {
        let mut a = vec!["sign", "--secret-env", "S", "--timestamp", "1700000000"];
        a.extend_from_slice(extra);
        run_cli(&a, &[("S", WHSEC)], Some(body.as_bytes()))
    };
    let (code, out, err) = sign(&["--scheme", "standard-webhooks"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "webhook-id: msg_sign_1".to_string(),
            "webhook-timestamp: 1700000000".to_string(),
            format!(
                "webhook-signature: {}",
                sw_sign("msg_sign_1", 1_700_000_000, body)
            ),
        ]
    );
    let (code, out, _) = sign(&["--scheme", "standard-webhooks", "--id", "msg_other"]);
    assert_eq!(code, 0);
    assert!(out.contains(&sw_sign("msg_other", 1_700_000_000, body)));
    // hmac: the signature header, then the id header.
    let (code, out, _) = run_cli(
        &[&["sign", "--secret-env", "S"][..], GITHUB_SEND].concat(),
        &[("S", GITHUB_SECRET)],
        Some(body.as_bytes()),
    );
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().take(2).collect::<Vec<_>>(),
        [
            format!("x-hub-signature-256: {}", github_sign(body)),
            "x-github-delivery: msg_sign_1".to_string(),
        ]
    );
    // Usage errors name the option.
    let (code, _, err) = sign(&["--hmac-header", "X"]);
    assert_eq!(
        (
            code,
            err.contains("--hmac-header is only for --scheme hmac")
        ),
        (2, true),
        "{err}"
    );
    let (code, _, err) = sign(&["--scheme", "hmac"]);
    assert_eq!(
        (code, err.contains("needs --hmac-header")),
        (2, true),
        "{err}"
    );
    let (code, _, err) = run_cli(
        &["sign", "--secret-env", "S", "--scheme", "standard-webhooks"],
        &[("S", WHSEC)],
        Some(b"{}"),
    );
    assert_eq!((code, err.contains("give --id")), (2, true), "{err}");
}

/// A `send --scheme standard-webhooks` delivery that failed is stored with its scheme, and
/// `vfgate failed replay` signs it the same way (a fresh webhook-timestamp, same id).
#[tokio::test]
async fn a_failed_send_of_another_scheme_replays_signed_the_same_way() {
    let mock = Mock::start().await;
    mock.set_default(Reply::Status(503, vec![], "{}".into()));
    let dir = tempfile::tempdir().unwrap();
    let failed = dir.path().join("failed");
    let failed_s = failed.to_str().unwrap();
    let target = mock.url("/hooks/vanta");
    let args = [
        "send",
        "--target",
        &target,
        "--secret-env",
        "VANTA_SECRET",
        "--scheme",
        "standard-webhooks",
        "--retry-schedule",
        "10ms",
        "--failed-dir",
        failed_s,
    ];
    let (code, _, err) = send_cli(&args, "{\"event_id\":\"msg_rp_1\",\"type\":\"t\"}\n").await;
    assert_eq!(code, 1, "{err}");
    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    let (code, out, err) = send_cli(&["failed", "replay", "--all", "--dir", failed_s], "").await;
    assert_eq!(code, 0, "{out}{err}");
    let got = mock.requests();
    let last = got.last().unwrap();
    assert_eq!(last.status, 200);
    assert_eq!(last.header("webhook-id"), Some("msg_rp_1"));
    let ts: i64 = last.header("webhook-timestamp").unwrap().parse().unwrap();
    let body = String::from_utf8(last.body.clone()).unwrap();
    assert_eq!(
        last.header("webhook-signature"),
        Some(sw_sign("msg_rp_1", ts, &body).as_str())
    );
    assert_eq!(last.header("x-vf-signature-256"), None);
}

/// One `standard-webhooks` source delivering to a sink of every type (the SIEM mocks answer
/// by path, as each service would).
fn every_sink_config(mock: &Mock, dir: &std::path::Path) -> String {
    let url = mock.url("");
    let sinks = ["up", "file", "relay", "splunk", "dd", "es", "azure", "law"];
    Toml::new()
        .source_at("vanta", "/hooks/vanta", &sinks)
        .with(r#"scheme = "standard-webhooks""#)
        .with(r#"secrets = [{ env = "VANTA_SECRET" }]"#)
        .with(r#"fields = { event_type = "/type", org_id = "/data/org_id" }"#)
        .http_sink("up", &mock.url("/up"))
        .file_sink("file", dir.join("events.ndjson").to_str().unwrap())
        .sink("relay", "webhook")
        .with(&format!("url = \"{}\"", mock.url("/relay")))
        .with(r#"secret = { value = "relay-secret" }"#)
        .sink("splunk", "splunk_hec")
        .with(&format!("url = \"{url}\""))
        .with(r#"token = { value = "12345678-1234-1234-1234-1234567890AB" }"#)
        .sink("dd", "datadog")
        .with(&format!("url = \"{}\"", mock.url("/api/v2/logs")))
        .with(r#"api_key = { value = "0123456789abcdef0123456789abcdef" }"#)
        .with(r#"compression = "none""#)
        .sink("es", "elastic")
        .with(&format!("url = \"{url}\""))
        .with(r#"index = "audit""#)
        .with("ecs = true")
        .sink("azure", "azure_logs_ingestion")
        .with(&format!("endpoint = \"{url}\""))
        .with(r#"dcr_immutable_id = "dcr-000a00a000a00000a000000aa000a0aa""#)
        .with(r#"stream = "Custom-Audit""#)
        .with(r#"tenant_id = "00000000-0000-0000-0000-000000000000""#)
        .with(r#"client_id = "11111111-1111-1111-1111-111111111111""#)
        .with(r#"client_secret = { value = "az" }"#)
        .with(&format!("authority_host = \"{url}\""))
        .with(r#"compression = "none""#)
        .sink("law", "sentinel_data_collector")
        .with(r#"workspace_id = "11111111-2222-3333-4444-555555555555""#)
        .with(r#"shared_key = { value = "c2hhcmVkLWtleQ==" }"#)
        .with(r#"log_type = "Audit""#)
        .with(&format!("url = \"{url}\""))
        .build()
}

/// The one request whose path starts with `prefix`, its body as JSON.
fn json_at(got: &[Captured], prefix: &str) -> serde_json::Value {
    let q = got
        .iter()
        .find(|q| q.path.starts_with(prefix))
        .unwrap_or_else(|| panic!("nothing reached {prefix}"));
    serde_json::from_slice(&q.body).unwrap()
}

/// A Standard Webhooks event reaches every sink type with the fields its source mapped: the
/// id from `webhook-id`, the time from `webhook-timestamp`, the type and org through JSON
/// pointers of the source's own choosing (a VF body would have them at fixed names).
#[tokio::test]
async fn a_mapped_event_reaches_every_sink_type_with_its_mapped_fields() {
    let mock = Mock::start().await;
    mock.set_default(siem_answers());
    let dir = tempfile::tempdir().unwrap();
    let env = [("VANTA_SECRET", WHSEC)];
    let gw = Gateway::start_with(&every_sink_config(&mock, dir.path()), "", &env).await;
    let ts = time::OffsetDateTime::now_utc().unix_timestamp() - 60;
    let body = r#"{"type":"vanta.x","data":{"org_id":"org_7"},"n":1}"#;
    let r = post_vanta(&gw, "msg_all_1", ts, body).await;
    assert_eq!(
        (r.status, r.status_field()),
        (200, "accepted".to_string()),
        "{:?}",
        r.json()
    );
    let got = mock.requests();
    let verbatim = |prefix: &str| got.iter().find(|q| q.path == prefix).unwrap().body.clone();
    assert_eq!(verbatim("/up"), body.as_bytes());
    assert_eq!(verbatim("/relay"), body.as_bytes());
    let file = std::fs::read_to_string(dir.path().join("events.ndjson")).unwrap();
    assert_eq!(file, format!("{body}\n"));
    let hec = json_at(&got, "/services/collector/event");
    assert_eq!(hec["time"], serde_json::json!(ts as f64));
    assert_eq!(hec["event"]["type"], "vanta.x");
    let dd = &json_at(&got, "/api/v2/logs")[0];
    assert_eq!(dd["timestamp"], ts * 1000);
    let tags = dd["ddtags"].as_str().unwrap();
    assert!(
        tags.contains("event_type:vanta.x") && tags.contains("org_id:org_7"),
        "{tags}"
    );
    let es = got.iter().find(|q| q.path.starts_with("/_bulk")).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&es.body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["create"]["_id"], "msg_all_1");
    assert_eq!(
        (unix(&lines[1]), &lines[1]["organization"]["id"]),
        (ts, &serde_json::json!("org_7"))
    );
    for (prefix, time_key) in [
        ("/dataCollectionRules/", "TimeGenerated"),
        ("/api/logs", ""),
    ] {
        let rec = &json_at(&got, prefix)[0];
        assert_eq!(rec["EventId"], "msg_all_1", "{prefix}");
        assert_eq!(rec["EventType"], "vanta.x", "{prefix}");
        assert_eq!(rec["OrgId"], "org_7", "{prefix}");
        if !time_key.is_empty() {
            let at = serde_json::json!({ "@timestamp": rec[time_key] });
            assert_eq!(unix(&at), ts);
        }
    }
}

const PY_ED25519: &str = r#"
import sys, base64
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
seed = bytes.fromhex(sys.argv[2])
k = Ed25519PrivateKey.from_private_bytes(seed)
pub = k.public_key()
if sys.argv[1] == "keys":
    print("whsk_" + base64.b64encode(seed).decode())
    print("whpk_" + base64.b64encode(pub.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode())
elif sys.argv[1] == "sign":
    msg_id, ts, body = sys.argv[3:6]
    print("v1a," + base64.b64encode(k.sign(f"{msg_id}.{ts}.{body}".encode())).decode())
else:
    msg_id, ts, body, sig = sys.argv[3:7]
    assert sig.startswith("v1a,")
    pub.verify(base64.b64decode(sig[4:]), f"{msg_id}.{ts}.{body}".encode())
    print("ok")
"#;

/// Standard Webhooks `v1a`: Python's `cryptography` signs with an ed25519 key, vfgate
/// verifies with the `whpk_` public key alone (and refuses a changed body); `vfgate sign`
/// with the `whsk_` key signs what `cryptography` verifies; a `whsk_` secret key given to a
/// source is refused at load (the gateway needs only the public key).
#[tokio::test]
async fn ed25519_signatures_cross_check_with_pythons_cryptography() {
    let Some(py) = reference_python() else {
        return;
    };
    let seed = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
    let keys = python(&py, PY_ED25519, &["keys", seed]);
    let (whsk, whpk) = keys.split_once('\n').unwrap();
    let toml = Toml::new()
        .source_at("vanta", "/hooks/vanta", &["up"])
        .with(r#"scheme = "standard-webhooks""#)
        .with(r#"secrets = [{ env = "VANTA_PUBLIC_KEY" }]"#)
        .with(r#"fields = { event_type = "/type" }"#);
    let mock = Mock::start().await;
    let cfg = toml.http_sink("up", &mock.url("/up")).build();
    let gw = Gateway::start_with(&cfg, "", &[("VANTA_PUBLIC_KEY", whpk)]).await;
    let body = r#"{"type":"a.b"}"#;
    let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let sig = python(&py, PY_ED25519, &["sign", seed, "msg_ed_1", &ts, body]);
    let hs = [
        ("webhook-id", "msg_ed_1"),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    let r = post(&gw, "/hooks/vanta", &hs, body).await;
    assert_eq!((r.status, r.status_field()), (200, "accepted".into()));
    let r = post(&gw, "/hooks/vanta", &hs, r#"{"type":"a.c"}"#).await;
    assert_eq!(r.status, 401);
    // vfgate signs with the whsk_ key; cryptography verifies with the public key.
    let (code, out, err) = run_cli(
        &[
            "sign",
            "--secret-env",
            "S",
            "--scheme",
            "standard-webhooks",
            "--timestamp",
            &ts,
        ],
        &[("S", whsk)],
        Some(br#"{"event_id":"msg_ed_2"}"#),
    );
    assert_eq!(code, 0, "{err}");
    let ours = out
        .lines()
        .find_map(|l| l.strip_prefix("webhook-signature: "))
        .unwrap();
    let verdict = python(
        &py,
        PY_ED25519,
        &[
            "verify",
            seed,
            "msg_ed_2",
            &ts,
            r#"{"event_id":"msg_ed_2"}"#,
            ours,
        ],
    );
    assert_eq!(verdict, "ok");
    // A secret key given to the gateway is refused, naming the key.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("c.toml");
    std::fs::write(&path, &cfg).unwrap();
    let (code, _, err) = run_cli(
        &["check-config", "--config", path.to_str().unwrap()],
        &[("VANTA_PUBLIC_KEY", whsk)],
        None,
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("source[0].secrets[0]: a whsk_ secret key signs"),
        "{err}"
    );
}
