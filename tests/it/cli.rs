//! The command line: check-config on every shipped config, sign against python3, keygen.

use crate::util::*;

const CI_ENV: [(&str, &str); 17] = [
    ("VF_SECRET", "s1"),
    (
        "OKTA_EVENT_HOOK_SECRET",
        "Bearer okta-hook-secret-0123456789",
    ),
    (
        "STRIPE_WEBHOOK_SECRET",
        "whsec_test_secret_0123456789abcdef",
    ),
    ("SLACK_SIGNING_SECRET", "8f742231b10e8888abcd99yyyzzz85a5"),
    ("SHOPIFY_WEBHOOK_SECRET", "shopify-client-secret"),
    (
        "VANTA_WEBHOOK_SECRET",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    ),
    ("GITHUB_WEBHOOK_SECRET", "github-webhook-secret-0123456789"),
    ("VF_SECRET_PREVIOUS", "s0"),
    ("CUSTOM_AUTH", "Bearer x"),
    ("SPLUNK_HEC_TOKEN", "12345678-1234-1234-1234-1234567890AB"),
    ("DD_API_KEY", "0123456789abcdef0123456789abcdef"),
    (
        "ES_API_KEY",
        "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==",
    ),
    ("AZURE_CLIENT_SECRET", "s3cr3t~value"),
    ("RELAY_SECRET", "relay-secret"),
    ("REDIS_PASSWORD", "redis-pw"),
    ("ADMIN_TOKEN", "admin-token-0123456789abcdef"),
    (
        "LA_SHARED_KEY",
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg==",
    ),
];

/// `tls.insecure_skip_verify = true` is warned about for every sink type that speaks TLS
/// (each shipped example, with the key added to its first sink), by check-config too.
#[test]
fn insecure_skip_verify_is_warned_for_every_sink_type() {
    let mut types = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let Some(at) = text.find("\n[sink.") else {
            continue;
        };
        let header_end = at + 1 + text[at + 1..].find('\n').unwrap();
        let section = &text[header_end..];
        let kind = section
            .lines()
            .find_map(|l| l.strip_prefix("type = "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        if kind == "file" {
            continue;
        }
        let edited = format!(
            "{}\ntls = {{ insecure_skip_verify = true }}{}",
            &text[..header_end],
            section
        );
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("c.toml");
        std::fs::write(&cfg, edited).unwrap();
        let (code, _, err) = run_cli(
            &["check-config", "--config", cfg.to_str().unwrap()],
            &CI_ENV,
            None,
        );
        assert_eq!(code, 0, "{kind}: {err}");
        assert!(
            err.contains(".tls.insecure_skip_verify: the upstream certificate is NOT verified"),
            "{kind}: {err}"
        );
        if kind == "azure_logs_ingestion" {
            assert!(err.contains("Azure token endpoint"), "{err}");
        }
        types.push(kind);
    }
    types.sort();
    types.dedup();
    assert!(types.len() >= 6, "{types:?}");
}

#[test]
fn every_shipped_config_is_valid() {
    let dir = repo_root().join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (code, out, err) = run_cli(
            &["check-config", "--config", path.to_str().unwrap()],
            &[
                CI_ENV.as_slice(),
                &[("TMPDIR", tmp.path().to_str().unwrap())],
            ]
            .concat(),
            None,
        );
        assert_eq!(code, 0, "{}: {err}", path.display());
        assert!(out.starts_with("ok: "), "{out}");
        assert_eq!(out.lines().count(), 1);
        n += 1;
    }
    assert!(n >= 8, "an example per sink type");
    let all: String = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    for t in vfgate::sinks::type_names() {
        assert!(
            all.contains(&format!("type = \"{t}\"")),
            "no example config for sink type {t}"
        );
    }
    for scheme in ["standard-webhooks", "hmac"] {
        assert!(
            all.contains(&format!("scheme = \"{scheme}\"")),
            "no example config for scheme {scheme}"
        );
    }
}

#[test]
fn bad_config_exits_2_naming_key_and_reason_without_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(
        &p,
        r#"
[[source]]
name = "s"
path = "/e"
secrets = [{ value = "TOPSECRETVALUE" }]
sinks = ["splunk"]
[sink.splunk]
type = "http"
url = "http://127.0.0.1:1/"
batch = { max_events = 20000 }
"#,
    )
    .unwrap();
    let (code, out, err) = run_cli(
        &["check-config", "--config", p.to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(
        err.contains("sink.splunk.batch.max_events: must be between 1 and 10000"),
        "{err}"
    );
    assert!(!err.contains("TOPSECRETVALUE"));

    std::fs::write(&p, "[[source]]\nname = \"s\"\npath = \"/e\"\nsecrets = [{ env = \"VFGATE_NOPE\" }]\nsinks = [\"f\"]\n[sink.f]\ntype = \"file\"\npath = \"/dev/null\"\n").unwrap();
    let (code, _, err) = run_cli(
        &["check-config", "--config", p.to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("source[0].secrets[0]: environment variable VFGATE_NOPE is not set"),
        "{err}"
    );

    let (code, _, err) = run_cli(
        &["check-config", "--config", "/nonexistent.toml"],
        &[],
        None,
    );
    assert_eq!(code, 2);
    assert_eq!(err.matches("/nonexistent.toml").count(), 1, "{err}");
}

#[test]
fn check_config_prints_every_error_one_per_line_with_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(
        &p,
        r#"
[server]
listen = "nowhere"
[[source]]
name = "s"
path = "/e"
secrets = [{ env = "VFGATE_NOPE" }]
sinks = ["f"]
[sink.f]
type = "file"
path = "/dev/null"
batch = { max_events = 0 }
"#,
    )
    .unwrap();
    let (code, out, err) = run_cli(
        &["check-config", "--config", p.to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(code, 2);
    assert!(out.is_empty());
    let f = p.display();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{f}: server.listen: \"nowhere\" is not an IP:port address (e.g. \"127.0.0.1:8080\")"),
            format!("{f}: sink.f.batch.max_events: must be between 1 and 10000"),
            format!("{f}: source[0].secrets[0]: environment variable VFGATE_NOPE is not set"),
        ]
    );
}

#[test]
fn sign_matches_python_hmac() {
    let body = std::fs::read(repo_root().join("tests/fixtures/sample-event.json")).unwrap();
    for secret in [SECRET, "correct horse battery staple", "ünïcødé key"] {
        let (code, out, err) = run_cli(
            &["sign", "--secret-env", "S"],
            &[("S", secret)],
            Some(&body),
        );
        assert_eq!(code, 0, "{err}");
        let py = std::process::Command::new("python3")
            .args([
                "-c",
                "import hmac,hashlib,os,sys; print('sha256='+hmac.new(os.environ['S'].encode(), sys.stdin.buffer.read(), hashlib.sha256).hexdigest())",
            ])
            .env("S", secret)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(&body)?;
                c.wait_with_output()
            })
            .expect("python3 is installed");
        assert_eq!(
            out,
            String::from_utf8(py.stdout).unwrap(),
            "secret {secret:?}"
        );
    }
    // From a file, and the documented vector.
    let f = repo_root().join("tests/fixtures/sample-event.json");
    let (code, out, _) = run_cli(
        &["sign", "--secret-env", "S", f.to_str().unwrap()],
        &[("S", SECRET)],
        None,
    );
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        "sha256=92a8ab5a22de1284b8bc00fa724f8ba0824fb7841244c0b9c2b159b50942af7a"
    );
    let (code, _, err) = run_cli(&["sign", "--secret-env", "VFGATE_UNSET_X"], &[], Some(b""));
    assert_ne!(code, 0);
    assert!(err.contains("VFGATE_UNSET_X"));
}

#[test]
fn keygen_prints_32_random_bytes_url_safe() {
    use base64::Engine;
    let (c1, a, _) = run_cli(&["keygen"], &[], None);
    let (c2, b, _) = run_cli(&["keygen"], &[], None);
    assert_eq!((c1, c2), (0, 0));
    let a = a.trim();
    assert_eq!(a.len(), 43);
    assert!(!a.contains('=') && !a.contains('+') && !a.contains('/'));
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(a)
            .unwrap()
            .len(),
        32
    );
    assert_ne!(a, b.trim());
}

#[test]
fn help_on_every_subcommand_and_usage_errors() {
    for sub in ["serve", "check-config", "keygen", "sign"] {
        let (code, out, _) = run_cli(&[sub, "--help"], &[], None);
        assert_eq!(code, 0, "{sub}");
        assert!(out.contains("Usage:"), "{sub}");
    }
    let (code, _, err) = run_cli(&["serve"], &[], None);
    assert_eq!(code, 2);
    assert!(err.contains("--config"));
    let (code, _, _) = run_cli(&["frobnicate"], &[], None);
    assert_eq!(code, 2);
}

#[test]
fn failed_list_escapes_control_characters_of_outside_text() {
    let dir = tempfile::tempdir().unwrap();
    let entry = serde_json::json!({
        "id": "20260101T000000000Z-0000abcd",
        "target": "http://127.0.0.1:1/x",
        "version": "1",
        "secret_ref": "env VF_SECRET",
        "event_id": "evt\n\u{1b}[31mFORGED",
        "event_type": "user.login",
        "reason": "test",
        "created_at": "2026-01-01T00:00:00.000Z",
        "attempts": [],
        "event": "{}"
    });
    std::fs::write(
        dir.path().join("20260101T000000000Z-0000abcd.json"),
        entry.to_string(),
    )
    .unwrap();
    let (code, out, err) = run_cli(
        &["failed", "list", "--dir", dir.path().to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\u{1b}'), "raw ESC printed: {out:?}");
    assert_eq!(out.lines().count(), 2, "no forged line: {out:?}");
    assert!(out.contains(r"evt\n\u{1b}[31mFORGED"), "{out}");
}

/// Bidirectional controls and other invisible code points in a stored event id are listed
/// escaped: a displayed id cannot be visually reordered.
#[test]
fn failed_list_escapes_bidi_controls_of_outside_text() {
    let dir = tempfile::tempdir().unwrap();
    let entry = serde_json::json!({
        "id": "20260101T000000000Z-0000abce",
        "target": "http://127.0.0.1:1/x",
        "version": "1",
        "secret_ref": "env VF_SECRET",
        "event_id": "evt_\u{202E}gpj.exe\u{2066}\u{2069}",
        "event_type": "user\u{2028}login\u{200F}\u{85}",
        "reason": "test",
        "created_at": "2026-01-01T00:00:00.000Z",
        "attempts": [],
        "event": "{}"
    });
    std::fs::write(
        dir.path().join("20260101T000000000Z-0000abce.json"),
        entry.to_string(),
    )
    .unwrap();
    let (code, out, err) = run_cli(
        &["failed", "list", "--dir", dir.path().to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    for c in [
        '\u{202E}', '\u{2066}', '\u{2069}', '\u{85}', '\u{2028}', '\u{200F}',
    ] {
        assert!(!out.contains(c), "raw U+{:04X} printed: {out:?}", c as u32);
    }
    assert!(
        out.contains(r"evt_\u{202e}gpj.exe\u{2066}\u{2069}"),
        "{out}"
    );
    assert!(out.contains(r"user\u{2028}login\u{200f}\u{85}"), "{out}");
    // `failed show` prints the entry as JSON with the same code points as `\uXXXX` escapes:
    // nothing raw, and the same JSON value.
    let (code, out, err) = run_cli(
        &[
            "failed",
            "show",
            "20260101T000000000Z-0000abce",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains('\u{202E}') && !out.contains('\u{85}'),
        "{out:?}"
    );
    assert!(out.contains(r"evt_\u202egpj.exe\u2066\u2069"), "{out}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["event_id"], entry["event_id"]);
    assert_eq!(shown["event_type"], entry["event_type"]);
}

/// The exit codes of the README: 0 ok, 1 runtime failure, 2 usage or config; a secret that
/// is not there or a sink that cannot be built is the caller's to fix (2), as in `send`.
#[test]
fn usage_and_config_problems_exit_2_in_every_subcommand() {
    let (code, out, err) = run_cli(&["sign", "--secret-env", "VFGATE_NOPE"], &[], Some(b"x"));
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("VFGATE_NOPE is not set"), "{err}");
    let (code, _, err) = run_cli(
        &["sign", "--secret-env", "S", "/nonexistent-input"],
        &[("S", "k")],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent-input"), "{err}");

    // A file sink whose path cannot be opened passes check-config (nothing is opened
    // there) but is a config error for serve.
    let tmp = tempfile::tempdir().unwrap();
    let not_dir = tmp.path().join("plain-file");
    std::fs::write(&not_dir, "").unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.2:0\"\n[dedupe]\npersist = false\n[[source]]\nname = \"s\"\npath = \"/e\"\nsecrets = [{{ value = \"0123456789abcdef\" }}]\nsinks = [\"f\"]\n[sink.f]\ntype = \"file\"\npath = \"{}/x.ndjson\"\n",
            not_dir.display()
        ),
    )
    .unwrap();
    let (code, _, err) = run_cli(&["serve", "--config", cfg.to_str().unwrap()], &[], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sink.f.path"), "{err}");
}

#[test]
fn config_path_defaults_to_vfgate_config() {
    let cfg = repo_root().join("config/vfgate.toml");
    let (code, out, err) = run_cli(
        &["check-config"],
        &[
            ("VFGATE_CONFIG", cfg.to_str().unwrap()),
            ("VF_SECRET", "s1"),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok: "), "{out}");
    let (code, _, err) = run_cli(
        &["check-config"],
        &[("VFGATE_CONFIG", "/nonexistent-env.toml")],
        None,
    );
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent-env.toml"), "{err}");
    let (_, out, _) = run_cli(&["serve", "--help"], &[], None);
    assert!(out.contains("VFGATE_CONFIG"), "{out}");
}

#[test]
fn completions_and_man_page_are_printed() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run_cli(&["completions", shell], &[], None);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("check-config"), "{shell}: {out}");
    }
    let (code, _, _) = run_cli(&["completions", "cmd.exe"], &[], None);
    assert_eq!(code, 2);
    let (code, out, err) = run_cli(&["man"], &[], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(".ie") || out.contains(".TH vfgate"),
        "{out}"
    );
    assert!(out.contains("check\\-config"), "{out}");
}

/// The shipped unit file keeps its hardening (systemd-analyze verify in .ci/run checks that
/// it parses), runs the binary the README installs, and reads the config from VFGATE_CONFIG.
#[test]
fn systemd_unit_is_hardened() {
    let unit = std::fs::read_to_string(repo_root().join("deploy/systemd/vfgate.service")).unwrap();
    let keys: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let value = |k: &str| {
        keys.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{k}= missing from the unit"))
    };
    for (k, v) in [
        ("ExecStart", "/usr/local/bin/vfgate serve"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Environment", "VFGATE_CONFIG=/etc/vfgate/vfgate.toml"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "vfgate"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("RestartPreventExitStatus", "2"),
    ] {
        assert_eq!(value(k), v, "{k}");
    }
    assert!(value("LimitNOFILE").parse::<u64>().unwrap() >= 65536);
    assert!(
        unit.contains("CAP_NET_BIND_SERVICE"),
        "says how to bind below 1024"
    );
}

/// `[log] format = "json"`: one JSON object per line with timestamp, level, target, message
/// and the fields, among them the start-up line naming what this process serves, without a
/// credential or a query string.
#[tokio::test]
async fn json_log_has_the_fields_and_a_start_up_line_without_credentials() {
    let mock = Mock::start().await;
    let gw = Gateway::start(&format!(
        r#"
[log]
format = "json"

[[source]]
name = "syvault"
path = "/v1/events"
secrets = [{{ env = "VF_SECRET" }}]
sinks = ["up"]

[sink.up]
type = "http"
url = "{}?key=QUERYSECRET"
headers = {{ "Authorization" = {{ value = "HEADERSECRET" }} }}
"#,
        mock.url("/in")
    ))
    .await;
    let text = gw.log_text();
    assert!(!text.contains("QUERYSECRET") && !text.contains("HEADERSECRET"));
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for l in &lines {
        for k in ["timestamp", "level", "target", "message"] {
            assert!(l[k].is_string(), "{k} in {l}");
        }
    }
    let start = lines
        .iter()
        .find(|l| l["message"] == "vfgate starting")
        .unwrap_or_else(|| panic!("no start-up line in {text}"));
    assert_eq!(start["level"], "INFO");
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        start["listen"],
        format!("127.0.0.1:{}, admin 127.0.0.1:{}", gw.port, gw.admin)
    );
    assert_eq!(start["sources"], "syvault /v1/events");
    assert_eq!(start["sinks"], format!("up http {}", mock.url("/in")));
    assert!(
        start["dedupe"]
            .as_str()
            .unwrap()
            .starts_with("memory (journal "),
        "{start}"
    );
}

/// `serve --log-format` overrides `[log] format`, and `[log] level` filters unless RUST_LOG
/// is set. The inline secret's warning is the line looked at; the taken admin port then
/// stops serve (exit 1) before it runs.
#[test]
fn log_format_flag_overrides_the_file_and_rust_log_the_level() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    let write = |log: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[log]\n{log}\n[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"{}\"\n[dedupe]\npersist = false\n[[source]]\nname = \"s\"\npath = \"/e\"\nsecrets = [{{ value = \"0123456789abcdef\" }}]\nsinks = [\"f\"]\n[sink.f]\ntype = \"file\"\npath = \"/dev/null\"\n",
                taken.local_addr().unwrap()
            ),
        )
        .unwrap();
    };
    let c = cfg.to_str().unwrap();
    write("format = \"text\"");
    let (code, _, err) = run_cli(&["serve", "--config", c, "--log-format", "json"], &[], None);
    assert_eq!(code, 1, "{err}");
    let warn = err
        .lines()
        .find(|l| l.contains("secret given inline"))
        .unwrap_or_else(|| panic!("{err}"));
    let v: serde_json::Value = serde_json::from_str(warn).unwrap();
    assert_eq!(v["level"], "WARN");
    let (_, _, err) = run_cli(&["serve", "--config", c], &[], None);
    assert!(err.lines().any(|l| l.contains("secret given inline")
        && serde_json::from_str::<serde_json::Value>(l).is_err()));

    write("level = \"error\"");
    let (code, _, err) = run_cli(&["serve", "--config", c], &[], None);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("secret given inline"), "{err}");
    let (_, _, err) = run_cli(&["serve", "--config", c], &[("RUST_LOG", "warn")], None);
    assert!(err.contains("secret given inline"), "{err}");
}
