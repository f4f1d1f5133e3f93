//! Every provider preset end to end: the provider's own library signs where one does
//! (`stripe`, `slack_sdk`, `standardwebhooks`), Python's `hmac` computes the documented
//! algorithm where none does (GitHub, Shopify); vfgate verifies, dedupes and delivers to the
//! Splunk HEC and Elastic mocks with the mapped id, type and time; a changed byte in any
//! signed part, and a stale or future timestamp, fail; and what `vfgate sign --preset`
//! prints passes the provider's own check.

use crate::util::*;
use std::time::Duration;

/// Signs like each provider: `sign PRESET SECRET TS ID TYPE BODY` prints the request's
/// headers, one `Name: value` per line.
const PY_SIGN: &str = r#"
import sys, hmac, hashlib, base64, datetime
preset, secret, ts, eid, etype, body = sys.argv[1:7]
if preset == "github":
    mac = hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    print(f"X-Hub-Signature-256: sha256={mac}\nX-GitHub-Delivery: {eid}\nX-GitHub-Event: {etype}")
elif preset == "shopify":
    mac = base64.b64encode(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()).decode()
    print(f"X-Shopify-Hmac-SHA256: {mac}\nX-Shopify-Webhook-Id: {eid}\nX-Shopify-Topic: {etype}\nX-Shopify-Shop-Domain: acme.myshopify.com")
elif preset == "slack":
    from slack_sdk.signature import SignatureVerifier
    sig = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    print(f"X-Slack-Signature: {sig}\nX-Slack-Request-Timestamp: {ts}")
elif preset == "stripe":
    import stripe
    print("Stripe-Signature: " + stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=int(ts)))
elif preset == "okta":
    print(f"Authorization: {secret}")
elif preset == "standard-webhooks":
    from standardwebhooks.webhooks import Webhook
    t = datetime.datetime.fromtimestamp(int(ts), tz=datetime.timezone.utc)
    print(f"webhook-id: {eid}\nwebhook-timestamp: {ts}\nwebhook-signature: {Webhook(secret).sign(eid, t, body)}")
"#;

/// Checks headers as each provider's own verification does: `verify PRESET SECRET BODY`
/// with `Name: value` lines on stdin; prints `ok` or fails.
const PY_VERIFY: &str = r#"
import sys, hmac, hashlib, base64
preset, secret, body = sys.argv[1:4]
h = {}
for line in sys.stdin.read().splitlines():
    k, v = line.split(": ", 1)
    h[k.lower()] = v
if preset == "github":
    want = "sha256=" + hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(want, h["x-hub-signature-256"])
elif preset == "shopify":
    want = base64.b64encode(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()).decode()
    assert hmac.compare_digest(want, h["x-shopify-hmac-sha256"])
elif preset == "slack":
    from slack_sdk.signature import SignatureVerifier
    assert SignatureVerifier(secret).is_valid(body, h["x-slack-request-timestamp"], h["x-slack-signature"])
elif preset == "stripe":
    import stripe
    stripe.WebhookSignature.verify_header(body, h["stripe-signature"], secret, tolerance=300)
elif preset == "okta":
    assert hmac.compare_digest(h["authorization"], secret)
elif preset == "standard-webhooks":
    from standardwebhooks.webhooks import Webhook
    Webhook(secret).verify(body, h)
print("ok")
"#;

/// One preset's source and a delivery of it.
struct Case {
    preset: &'static str,
    env: &'static str,
    secret: &'static str,
    id: &'static str,
    event_type: &'static str,
    /// Whether the preset signs a timestamp (then it has a window).
    timed: bool,
}

const CASES: [Case; 6] = [
    Case {
        preset: "github",
        env: "GITHUB_WEBHOOK_SECRET",
        secret: "github-webhook-secret-0123456789",
        id: "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        event_type: "pull_request",
        timed: false,
    },
    Case {
        preset: "shopify",
        env: "SHOPIFY_WEBHOOK_SECRET",
        secret: "shopify-client-secret-0123456789",
        id: "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        event_type: "orders/create",
        timed: false,
    },
    Case {
        preset: "slack",
        env: "SLACK_SIGNING_SECRET",
        secret: "8f742231b10e8888abcd99yyyzzz85a5",
        id: "Ev0PV52K21",
        event_type: "app_mention",
        timed: true,
    },
    Case {
        preset: "stripe",
        env: "STRIPE_WEBHOOK_SECRET",
        secret: "whsec_test_secret_0123456789abcdef",
        id: "evt_1NG8Du2eZvKYlo2CUI79vXWy",
        event_type: "invoice.paid",
        timed: true,
    },
    Case {
        preset: "okta",
        env: "OKTA_EVENT_HOOK_SECRET",
        secret: "Bearer okta-hook-secret-0123456789",
        id: "b5a188b9-5ece-4636-b041-482ffda96311",
        event_type: "com.okta.event_hook",
        timed: false,
    },
    Case {
        preset: "standard-webhooks",
        env: "VANTA_WEBHOOK_SECRET",
        secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        id: "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        event_type: "vanta.test.failed",
        timed: false,
    },
];

impl Case {
    /// The body the provider sends, its event time `ts` where the body carries one.
    fn body(&self, ts: i64) -> String {
        match self.preset {
            "github" => r#"{"action":"opened","organization":{"login":"acme"},"number":7}"#.into(),
            "shopify" => r#"{"id":820982911946154508,"email":"jon@example.com"}"#.into(),
            "slack" => format!(
                r#"{{"type":"event_callback","team_id":"T061EG9R6","event_id":"{}","event_time":{ts},"event":{{"type":"{}","text":"hi"}}}}"#,
                self.id, self.event_type
            ),
            "stripe" => format!(
                r#"{{"id":"{}","object":"event","type":"{}","created":{ts},"account":"acct_1032D82eZvKYlo2C"}}"#,
                self.id, self.event_type
            ),
            "okta" => format!(
                r#"{{"eventType":"{}","eventId":"{}","eventTime":"{}","data":{{"events":[]}}}}"#,
                self.event_type,
                self.id,
                time::OffsetDateTime::from_unix_timestamp(ts)
                    .unwrap()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap()
            ),
            _ => format!(
                r#"{{"type":"{}","data":{{"org_id":"org_1"}}}}"#,
                self.event_type
            ),
        }
    }

    fn path(&self) -> String {
        format!("/hooks/{}", self.preset)
    }
}

fn config(mock: &Mock) -> String {
    let mut t = Toml::new();
    for c in &CASES {
        t = t
            .source_at(c.preset, &c.path(), &["splunk", "es"])
            .with(&format!("preset = \"{}\"", c.preset))
            .with(&format!("secrets = [{{ env = \"{}\" }}]", c.env));
    }
    t.sink("splunk", "splunk_hec")
        .with(&format!("url = \"{}\"", mock.url("")))
        .with(r#"token = { value = "12345678-1234-1234-1234-1234567890AB" }"#)
        .sink("es", "elastic")
        .with(&format!("url = \"{}\"", mock.url("")))
        .with(r#"index = "audit""#)
        .with("ecs = true")
        .build()
}

fn env() -> Vec<(&'static str, &'static str)> {
    CASES.iter().map(|c| (c.env, c.secret)).collect()
}

/// The provider's headers for `body` at `ts`, as (name, value) pairs.
fn provider_headers(py: &std::path::Path, c: &Case, ts: i64, body: &str) -> Vec<(String, String)> {
    let ts = ts.to_string();
    python(
        py,
        PY_SIGN,
        &[c.preset, c.secret, &ts, c.id, c.event_type, body],
    )
    .lines()
    .map(|l| {
        let (k, v) = l.split_once(": ").unwrap();
        (k.to_string(), v.to_string())
    })
    .collect()
}

async fn post(gw: &Gateway, c: &Case, headers: &[(String, String)], body: &str) -> Resp {
    let mut h: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    h.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    request(gw.port, "POST", &c.path(), &h, body.as_bytes())
        .await
        .unwrap()
}

/// The headers each preset's signature covers (an unsigned id header, such as GitHub's
/// delivery id, names another event rather than forging one: docs/presets.md).
fn signed_headers(preset: &str) -> &'static [&'static str] {
    match preset {
        "github" => &["x-hub-signature-256"],
        "shopify" => &["x-shopify-hmac-sha256"],
        "slack" => &["x-slack-signature", "x-slack-request-timestamp"],
        "stripe" => &["stripe-signature"],
        "okta" => &["authorization"],
        _ => &["webhook-id", "webhook-timestamp", "webhook-signature"],
    }
}

/// The headers with one signed value changed, for each signed value: its last character
/// (inside a MAC, a timestamp or an id), and for Stripe's `t=...,v1=...` its timestamp too.
fn each_signed_part_changed(
    preset: &str,
    headers: &[(String, String)],
) -> Vec<Vec<(String, String)>> {
    let flip = |c: char| if c == '1' { '2' } else { '1' };
    let mut out = Vec::new();
    for (i, (name, value)) in headers.iter().enumerate() {
        if !signed_headers(preset).contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        let mut positions = vec![value.len() - 1];
        if preset == "stripe" {
            positions.push(value.find(',').unwrap() - 1);
        }
        for at in positions {
            let mut h = headers.to_vec();
            let mut chars: Vec<char> = value.chars().collect();
            chars[at] = flip(chars[at]);
            h[i].1 = chars.into_iter().collect();
            out.push(h);
        }
    }
    assert!(!out.is_empty(), "{preset}");
    out
}

async fn assert_preset_verifies_and_refuses(
    py: &std::path::Path,
    gw: &Gateway,
    c: &Case,
    now: i64,
) {
    let ts = now - 30;
    let body = c.body(ts);
    let headers = provider_headers(py, c, ts, &body);
    let r = post(gw, c, &headers, &body).await;
    assert_eq!(
        (r.status, r.status_field()),
        (200, "accepted".into()),
        "{}: {:?}",
        c.preset,
        r.json()
    );
    let r = post(gw, c, &headers, &body).await;
    assert_eq!(r.status_field(), "duplicate", "{}", c.preset);
    // A shared secret does not protect the body (docs/presets.md says so): only the
    // signing presets refuse a changed body.
    if c.preset != "okta" {
        let mut flipped = body.clone().into_bytes();
        let at = flipped.len() - 2;
        flipped[at] = if flipped[at] == b'1' { b'2' } else { b'1' };
        let r = post(gw, c, &headers, std::str::from_utf8(&flipped).unwrap()).await;
        let refused = (r.status, r.error());
        assert_eq!(
            refused,
            (401, "invalid_signature".into()),
            "{} body",
            c.preset
        );
    }
    let r = post(gw, c, &[], &body).await;
    assert_eq!(r.status, 401, "{}: no signature headers", c.preset);
    for changed in each_signed_part_changed(c.preset, &headers) {
        let r = post(gw, c, &changed, &body).await;
        assert_eq!(r.status, 401, "{}: {changed:?}", c.preset);
    }
    if c.preset == "standard-webhooks" || c.timed {
        for off in [-600, 600] {
            let body = c.body(now + off);
            let headers = provider_headers(py, c, now + off, &body);
            let r = post(gw, c, &headers, &body).await;
            assert_eq!(
                (r.status, r.error()),
                (400, "stale_event".into()),
                "{} {off}",
                c.preset
            );
        }
    }
}

#[tokio::test]
async fn every_preset_verifies_the_providers_signature_and_delivers_the_mapped_fields() {
    let Some(py) = reference_python() else {
        return;
    };
    let mock = Mock::start().await;
    mock.set_default(siem_answers());
    let gw = Gateway::start_with(&config(&mock), "", &env()).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for c in &CASES {
        assert_preset_verifies_and_refuses(&py, &gw, c, now).await;
    }
    assert!(
        wait_until(Duration::from_secs(5), || indexed(&mock).len()
            == CASES.len())
        .await
    );
    // Every refusal above is counted by its reason, which the sender is not told.
    for c in &CASES {
        let reason = |r: &str| {
            format!(
                "vfgate_rejections_total{{reason=\"{r}\",source=\"{}\"}}",
                c.preset
            )
        };
        assert_eq!(
            gw.metric(&reason("signature_missing")).await,
            1.0,
            "{}",
            c.preset
        );
        assert!(
            gw.metric(&reason("no_key_matched")).await >= 1.0,
            "{}",
            c.preset
        );
        let windowed = if c.timed || c.preset == "standard-webhooks" {
            1.0
        } else {
            0.0
        };
        assert_eq!(gw.metric(&reason("stale")).await, windowed, "{}", c.preset);
        assert_eq!(gw.metric(&reason("future")).await, windowed, "{}", c.preset);
    }
    let docs = indexed(&mock);
    for c in &CASES {
        let doc = &docs[c.id];
        assert_eq!(doc["event"]["id"], c.id, "{}", c.preset);
        assert_eq!(doc["event"]["action"], c.event_type, "{}", c.preset);
        // A signed timestamp or the body's own time; the time of receipt for GitHub and
        // Shopify, which sign none.
        let t = unix(doc);
        match c.preset {
            "github" | "shopify" => assert!((now - 2..=now + 5).contains(&t), "{}", c.preset),
            _ => assert_eq!(t, now - 30, "{}", c.preset),
        }
    }
    // Splunk HEC got each accepted event once, its `time` the one Elastic got.
    let envelopes: Vec<serde_json::Value> = mock
        .requests()
        .iter()
        .filter(|q| q.path == "/services/collector/event")
        .flat_map(|q| {
            let text = String::from_utf8_lossy(&q.body).to_string();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            lines
        })
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    assert_eq!(
        envelopes.len(),
        CASES.len(),
        "one envelope per accepted event"
    );
    for c in &CASES {
        let sent: serde_json::Value = serde_json::from_str(&c.body(now - 30)).unwrap();
        let e = envelopes.iter().find(|e| e["event"] == sent);
        let e = e.unwrap_or_else(|| panic!("{}: no HEC envelope", c.preset));
        let want = unix(&docs[c.id]) as f64;
        assert_eq!(
            e["time"].as_f64().map(f64::floor),
            Some(want),
            "{}",
            c.preset
        );
    }
}

/// `vfgate sign --preset P` prints headers the provider's own verification accepts, and
/// `vfgate send --preset P` delivers through the gateway's preset source.
#[tokio::test]
async fn sign_and_send_with_a_preset_satisfy_the_provider_and_the_gateway() {
    let Some(py) = reference_python() else {
        return;
    };
    for c in &CASES {
        let body = format!(
            r#"{{"event_id":"{}","event_type":"{}","id":"{}","type":"{}","event":{{"type":"{}"}},"created":{}}}"#,
            c.id,
            c.event_type,
            c.id,
            c.event_type,
            c.event_type,
            time::OffsetDateTime::now_utc().unix_timestamp()
        );
        let (code, out, err) = run_cli(
            &["sign", "--secret-env", "S", "--preset", c.preset],
            &[("S", c.secret)],
            Some(body.as_bytes()),
        );
        assert_eq!(code, 0, "{}: {err}", c.preset);
        let verdict = std::process::Command::new(&py)
            .args(["-c", PY_VERIFY, c.preset, c.secret, &body])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(out.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&verdict.stdout).trim(),
            "ok",
            "{}: {}\n{out}",
            c.preset,
            String::from_utf8_lossy(&verdict.stderr)
        );
    }
    let mock = Mock::start().await;
    mock.set_default(siem_answers());
    let gw = Gateway::start_with(&config(&mock), "", &env()).await;
    for c in &CASES {
        let target = format!("http://127.0.0.1:{}{}", gw.port, c.path());
        let mut line = c.body(time::OffsetDateTime::now_utc().unix_timestamp()) + "\n";
        if !c.timed {
            // These send the id in a header, from the line's event_id.
            line = line.replacen('{', &format!("{{\"event_id\":\"send-{}\",", c.preset), 1);
        }
        let (preset, secret) = (c.preset, c.secret);
        let failed = gw.dir.path().join("failed");
        // On a blocking thread: the mock SIEM answers on this test's runtime.
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            let failed = failed.to_str().unwrap();
            let args = [
                "send",
                "--target",
                &target,
                "--secret-env",
                "S",
                "--preset",
                preset,
                "--retry-schedule",
                "100ms",
                "--failed-dir",
                failed,
            ];
            run_cli(&args, &[("S", secret)], Some(line.as_bytes()))
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{}: {out}{err}", c.preset);
    }
}

/// Slack's `url_verification` and Okta's one-time verification are answered by vfgate,
/// after the signature or shared secret is checked, counted, and never forwarded.
#[tokio::test]
async fn handshakes_are_answered_after_the_check_and_never_forwarded() {
    let Some(py) = reference_python() else {
        return;
    };
    let mock = Mock::start().await;
    mock.set_default(siem_answers());
    let gw = Gateway::start_with(&config(&mock), "", &env()).await;
    let slack = CASES.iter().find(|c| c.preset == "slack").unwrap();
    let challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P";
    let body = format!(
        r#"{{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"{challenge}","type":"url_verification"}}"#
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let headers = provider_headers(&py, slack, now, &body);
    let r = post(&gw, slack, &headers, &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({ "challenge": challenge }));
    let old = provider_headers(&py, slack, now - 600, &body);
    let r = post(&gw, slack, &old, &body).await;
    assert_eq!(
        (r.status, r.error()),
        (400, "stale_event".into()),
        "a replayed handshake"
    );
    let unsigned = post(&gw, slack, &[], &body).await;
    assert_eq!(
        unsigned.status, 401,
        "a handshake is answered only after the signature"
    );
    let okta = CASES.iter().find(|c| c.preset == "okta").unwrap();
    let port = gw.port;
    let get = |auth: &'static str, challenge: Option<&'static str>| async move {
        let mut h = vec![("authorization", auth)];
        if let Some(c) = challenge {
            h.push(("x-okta-verification-challenge", c));
        }
        request(port, "GET", "/hooks/okta", &h, b"").await.unwrap()
    };
    let value = "JqF7OGEkUmlzkd2zVt_2Q0nvDnLf2Kzz9ub0wAII";
    let r = get(okta.secret, Some(value)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({ "verification": value }));
    assert_eq!(get("Bearer wrong", Some("abc")).await.status, 401);
    assert_eq!(
        get(okta.secret, None).await.status,
        405,
        "a GET without a challenge"
    );
    assert_eq!(
        get(okta.secret, Some("<script>")).await.status,
        400,
        "not echoed"
    );
    for (source, kind) in [("slack", "slack"), ("okta", "okta")] {
        let series = format!("vfgate_handshakes_total{{kind=\"{kind}\",source=\"{source}\"}}");
        assert_eq!(gw.metric(&series).await, 1.0, "{series}");
    }
    assert!(mock.requests().is_empty(), "nothing forwarded");
    assert!(gw.log_text().contains("answered the sender's handshake"));
}
