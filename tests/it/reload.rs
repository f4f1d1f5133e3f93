//! Config reload: SIGHUP and `POST /admin/reload` put a new config in force without a
//! restart, refuse what needs one, and keep the running config on any error.

use crate::util::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "admin-token-0123456789abcdef";
const SECRET_A: &str = "whsec_rotation_a_0123456789abcdef";
const SECRET_B: &str = "whsec_rotation_b_0123456789abcdef";

/// The gateway's config file, edited in place: every `from` becomes `to` (which must change
/// something, so a stale edit fails loudly).
fn edit(gw: &Gateway, from: &str, to: &str) {
    let path = gw.dir.path().join("vfgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in the config:\n{text}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

fn hup(gw: &Gateway) {
    let pid = gw.child.as_ref().unwrap().id() as i32;
    assert_eq!(send_signal(pid, "HUP"), 0);
}

async fn reloads(gw: &Gateway, result: &str, want: f64) {
    let series = format!("vfgate_config_reloads_total{{result=\"{result}\"}}");
    assert_eq!(gw.metric_reaches(&series, want).await, want, "{series}");
}

async fn admin_reload(gw: &Gateway) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    request(
        gw.admin,
        "POST",
        "/admin/reload",
        &[("authorization", auth.as_str())],
        b"",
    )
    .await
    .unwrap()
}

/// `vfgate send --generate` signed with `secret`, `event_id<TAB>status` lines to `results`.
fn load(gw: &Gateway, secret: &str, events: usize, rate: u32, results: &Path) -> Child {
    let target = format!("http://127.0.0.1:{}/v1/events", gw.port);
    Command::new(bin())
        .args(["send", "--target", &target, "--secret-env", "LOAD_SECRET"])
        .args([
            "--generate",
            &events.to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .args([
            "--orgs",
            "8",
            "--concurrency",
            "8",
            "--timeout",
            "5s",
            "--quiet",
        ])
        .arg("--results")
        .arg(results)
        .arg("--failed-dir")
        .arg(gw.dir.path().join("send-failed"))
        .env("LOAD_SECRET", secret)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Every answer the load recorded, as (event_id, status).
fn answers(results: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(results)
        .unwrap()
        .lines()
        .map(|l| {
            let (id, status) = l.split_once('\t').unwrap();
            (id.to_string(), status.to_string())
        })
        .collect()
}

/// Each results file has `n` answers, every one 2xx.
fn all_2xx(files: &[&Path], n: usize) {
    for file in files {
        let got = answers(file);
        assert_eq!(got.len(), n, "{}", file.display());
        let refused: Vec<_> = got.iter().filter(|(_, s)| !s.starts_with('2')).collect();
        assert!(refused.is_empty(), "non-2xx answers: {refused:?}");
    }
}

fn wait_exit(mut c: Child, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while c.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the load did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn in_an_hour() -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn a_secret_rotated_by_two_sighups_under_load_refuses_no_signed_request() {
    let mock = Mock::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (a, b) = (keys.path().join("secret-a"), keys.path().join("secret-b"));
    std::fs::write(&a, SECRET_A).unwrap();
    let only_a = format!(r#"secrets = [{{ file = "{}" }}]"#, a.display());
    let cfg = Toml::new()
        .source(&["up"])
        .with(&only_a)
        .http_sink("up", &mock.url("/in"))
        .build();
    let gw = Gateway::start(&cfg).await;
    let (ra, rb) = (gw.dir.path().join("a.tsv"), gw.dir.path().join("b.tsv"));
    let old = load(&gw, SECRET_A, 400, 100, &ra);
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Step 1: the new secret first, the old one until a time ahead.
    std::fs::write(&b, SECRET_B).unwrap();
    let until = in_an_hour();
    let both = format!(
        r#"secrets = [{{ file = "{}" }}, {{ file = "{}", not_after = "{until}" }}]"#,
        b.display(),
        a.display()
    );
    edit(&gw, &only_a, &both);
    hup(&gw);
    reloads(&gw, "ok", 1.0).await;
    // The sender switches to the new secret while the old one is still in flight.
    let new = load(&gw, SECRET_B, 400, 100, &rb);
    tokio::task::spawn_blocking(move || wait_exit(old, Duration::from_secs(60)))
        .await
        .unwrap();
    // Step 2: the old secret removed.
    let only_b = format!(r#"secrets = [{{ file = "{}" }}]"#, b.display());
    edit(&gw, &both, &only_b);
    hup(&gw);
    reloads(&gw, "ok", 2.0).await;
    tokio::task::spawn_blocking(move || wait_exit(new, Duration::from_secs(60)))
        .await
        .unwrap();
    all_2xx(&[&ra, &rb], 400);
    assert_eq!(
        gw.metric("vfgate_config_reloads_total{result=\"error\"}")
            .await,
        0.0
    );
    // And the old secret no longer opens the door.
    let r = post_signed(gw.port, "/v1/events", SECRET_A, &event("late", "t"))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.error()),
        (401, "invalid_signature".to_string())
    );
}

#[tokio::test]
async fn an_invalid_or_restart_only_change_keeps_the_running_config() {
    let mock = Mock::start().await;
    let cfg = Toml::new()
        .source(&["up", "archive"])
        .http_sink("up", &mock.url("/in"))
        .file_sink("archive", "{dir}/archive.ndjson")
        .build();
    let admin = "token = { env = \"ADMIN_TOKEN\" }";
    let gw = Gateway::start_admin(&cfg, admin, &[("ADMIN_TOKEN", TOKEN)]).await;
    // A SIGHUP no longer ends the process; a syntax error is counted and logged.
    edit(&gw, "[sink.up]", "[sink.up");
    hup(&gw);
    reloads(&gw, "error", 1.0).await;
    edit(&gw, "[sink.up", "[sink.up]");
    assert_eq!(gw.post_event(&event("e1", "t")).await.status, 200);
    // What only a restart can change is refused with its key path, by either trigger.
    edit(&gw, "grace_period = \"5s\"", "grace_period = \"6s\"");
    hup(&gw);
    reloads(&gw, "error", 2.0).await;
    let log = gw.log_text();
    assert!(
        log.contains("server.grace_period: changes only with a restart"),
        "{log}"
    );
    let r = admin_reload(&gw).await;
    assert_eq!((r.status, r.error()), (422, "reload_failed".to_string()));
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .contains("server.grace_period"));
    edit(&gw, "grace_period = \"6s\"", "grace_period = \"5s\"");
    // Two writers on one file would cut each other's lines: a file sink's keys wait too.
    edit(&gw, "archive.ndjson", "archive2.ndjson");
    let r = admin_reload(&gw).await;
    assert_eq!(r.status, 422);
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.starts_with("sink.archive: a file sink's keys change only with a restart"),
        "{detail}"
    );
    edit(&gw, "archive2.ndjson", "archive.ndjson");
    // Without the token the route is refused; with it a valid config takes effect.
    let r = request(gw.admin, "POST", "/admin/reload", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = admin_reload(&gw).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["kept"], serde_json::json!(["archive"]));
    assert_eq!(r.json()["rebuilt"], serde_json::json!(["up"]));
    reloads(&gw, "ok", 1.0).await;
    assert_eq!(
        gw.metric("vfgate_config_reloads_total{result=\"error\"}")
            .await,
        4.0
    );
    assert_eq!(gw.post_event(&event("e2", "t")).await.status, 200);
    let lines = std::fs::read_to_string(gw.dir.path().join("archive.ndjson")).unwrap();
    assert_eq!(lines.lines().count(), 2, "the kept file sink still writes");
}

#[tokio::test]
async fn a_reload_moves_sinks_to_their_new_url_and_a_retrying_drainer_follows() {
    let (first, second) = (Mock::start().await, Mock::start().await);
    let cfg = Toml::new()
        .source(&["fwd"])
        .source_at("spooled", "/v1/spooled", &["queued"])
        .with(r#"ack = "spool""#)
        .spool()
        .http_sink("fwd", &first.url("/fwd"))
        .http_sink("queued", &first.url("/queued"))
        .build();
    let gw = Gateway::start(&cfg).await;
    assert_eq!(gw.post_event(&event("f1", "t")).await.status, 200);
    // The spooled sink's target is down: its drainer keeps retrying spooled-1 on the old sink.
    first.set_default(Reply::Status(503, vec![], "down".into()));
    let r = post_signed(gw.port, "/v1/spooled", SECRET, &event("spooled-1", "t"))
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    let retried = "vfgate_sink_retries_total{sink=\"queued\"}";
    assert!(gw.metric_reaches(retried, 1.0).await >= 1.0);
    edit(&gw, &first.url("/fwd"), &second.url("/fwd"));
    edit(&gw, &first.url("/queued"), &second.url("/queued"));
    hup(&gw);
    reloads(&gw, "ok", 1.0).await;
    assert_eq!(gw.post_event(&event("f2", "t")).await.status, 200);
    let got = second.wait_for(2, Duration::from_secs(20)).await;
    let mut paths: Vec<(String, bool)> = got
        .iter()
        .map(|c| {
            (
                c.path.clone(),
                String::from_utf8_lossy(&c.body).contains("\"spooled-1\""),
            )
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [("/fwd".to_string(), false), ("/queued".to_string(), true)],
        "f2 forwarded and spooled-1 drained to the new target, once each"
    );
    let on_first: Vec<String> = first
        .requests()
        .iter()
        .filter(|c| c.path == "/fwd")
        .map(|c| String::from_utf8_lossy(&c.body).into_owned())
        .collect();
    assert_eq!(on_first.len(), 1, "only f1 went to the old target");
    assert!(on_first[0].contains("\"f1\""));
}
