//! Sender mode: `vfgate send` against `vfgate serve` and against flaky mocks, the failed
//! deliveries store and its CLI and admin API, the webhook relay sink.

use crate::util::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The source, archived to `{dir}/events.ndjson` (what the sender's events became).
fn file_sink() -> String {
    Toml::new()
        .source(&["archive"])
        .file_sink("archive", "{dir}/events.ndjson")
        .with("batch = { max_events = 100 }")
        .build()
}

/// Runs `vfgate send` off the test runtime.
async fn send(args: Vec<String>, stdin: Option<Vec<u8>>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&a, &[("VF_SECRET", SECRET)], stdin.as_deref())
    })
    .await
    .unwrap()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// `send --target target --secret-env VF_SECRET` followed by `extra`.
fn send_args(target: &str, extra: &[&str]) -> Vec<String> {
    let mut args = s(&["send", "--target", target, "--secret-env", "VF_SECRET"]);
    args.extend(s(extra));
    args
}

/// Runs `vfgate failed <args> --dir failed`.
async fn failed_cli(failed: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = s(&["failed"]);
    all.extend(s(args));
    all.extend(s(&["--dir", failed.to_str().unwrap()]));
    send(all, None).await
}

fn org_event(id: &str, org: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","event_type":"user.login","timestamp":"{}","context":{{"org_id":"{org}"}}}}"#,
        now_rfc3339()
    )
}

/// The `event_id` of each request the mock received, in order.
fn event_ids(mock: &Mock) -> Vec<String> {
    mock.requests()
        .iter()
        .map(|q| {
            serde_json::from_slice::<serde_json::Value>(&q.body).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn round_trip_send_to_serve_byte_identical() {
    let gw = Gateway::start(&file_sink()).await;
    let events: Vec<String> = (0..50)
        .map(|i| org_event(&format!("evt_rt_{i}"), &format!("org_{}", i % 4)))
        .collect();
    let file = gw.dir.path().join("in.ndjson");
    std::fs::write(&file, events.join("\n") + "\n").unwrap();
    let target = format!("http://127.0.0.1:{}/v1/events", gw.port);
    let args = send_args(&target, &["--quiet", file.to_str().unwrap()]);
    let (code, out, err) = send(args, None).await;
    assert_eq!(code, 0, "{out}{err}");
    let written = std::fs::read_to_string(gw.dir.path().join("events.ndjson")).unwrap();
    let mut got: Vec<&str> = written.lines().collect();
    let mut want: Vec<&str> = events.iter().map(String::as_str).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every event once, byte-identical");
    // Same file again from stdin: all duplicates, nothing written twice.
    let stdin = Some(std::fs::read(&file).unwrap());
    let (code, out, _) = send(send_args(&target, &["-"]), stdin).await;
    assert_eq!(code, 0);
    assert!(out.contains("duplicate 50"), "{out}");
    assert_eq!(
        std::fs::read_to_string(gw.dir.path().join("events.ndjson"))
            .unwrap()
            .lines()
            .count(),
        50
    );
}

#[tokio::test]
async fn signature_checked_by_python_and_headers() {
    let mock = Mock::start().await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let body = org_event("evt_py", "org_1");
    std::fs::write(file.path(), format!("{body}\n")).unwrap();
    let (code, _, err) = send(
        send_args(
            &mock.url("/hook?x=1"),
            &[
                "--version",
                "2",
                "--header",
                "X-Team: secops",
                "--quiet",
                file.path().to_str().unwrap(),
            ],
        ),
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let q = &mock.requests()[0];
    assert_eq!((q.method.as_str(), q.path.as_str()), ("POST", "/hook?x=1"));
    assert_eq!(q.body, body.as_bytes());
    assert_eq!(q.header("content-type"), Some("application/json"));
    assert_eq!(q.header("x-vf-webhook-version"), Some("2"));
    assert_eq!(q.header("x-team"), Some("secops"));
    let py = std::process::Command::new("python3")
        .args(["-c", "import hmac,hashlib,os,sys; print('sha256='+hmac.new(os.environ['S'].encode(), open(sys.argv[1],'rb').read().rstrip(b'\\n'), hashlib.sha256).hexdigest(), end='')", file.path().to_str().unwrap()])
        .env("S", SECRET)
        .output()
        .unwrap();
    assert_eq!(
        q.header("x-vf-signature-256"),
        Some(String::from_utf8(py.stdout).unwrap().as_str())
    );
}

/// Answers 503 twice, then 200; the times the attempts arrived.
fn fail_twice_then_accept(mock: &Mock) -> Arc<Mutex<Vec<Instant>>> {
    let times = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let t2 = times.clone();
    let n = Arc::new(Mutex::new(0));
    mock.set_default(Reply::Compute(Arc::new(move |_q: &Captured| {
        t2.lock().unwrap().push(Instant::now());
        let mut k = n.lock().unwrap();
        *k += 1;
        if *k <= 2 {
            (503, "busy".into())
        } else {
            (200, "{}".into())
        }
    })));
    times
}

/// Sends `file` to the mock with the schedule 200ms,400ms,800ms, a 300 ms timeout and the
/// store in `failed`.
async fn send_with_retries(mock: &Mock, failed: &Path, file: &Path) -> (i32, String, String) {
    let extra = [
        "--retry-schedule",
        "200ms,400ms,800ms",
        "--timeout",
        "300ms",
        "--failed-dir",
        failed.to_str().unwrap(),
        "--quiet",
        file.to_str().unwrap(),
    ];
    send(send_args(&mock.url("/h"), &extra), None).await
}

/// Three attempts, the gaps between them those of the schedule.
fn assert_gaps_follow_the_schedule(t: &[Instant]) {
    assert_eq!(t.len(), 3);
    let g1 = t[1] - t[0];
    let g2 = t[2] - t[1];
    assert!(
        g1 >= Duration::from_millis(200) && g1 < Duration::from_millis(600),
        "{g1:?}"
    );
    assert!(
        g2 >= Duration::from_millis(400) && g2 < Duration::from_millis(800),
        "{g2:?}"
    );
}

/// Always failing (a timeout, then 500s): four attempts, then the store, whose entry names
/// the target, the secret's reference (not the secret) and every attempt. Its store id.
async fn always_failing_goes_to_the_store(mock: &Mock, failed: &Path, file: &Path) -> String {
    mock.set_default(Reply::Status(500, vec![], "down".into()));
    mock.push(Reply::Sleep(Duration::from_millis(1000)));
    let before = mock.requests().len();
    std::fs::write(file, org_event("evt_dead", "org_1") + "\n").unwrap();
    let (code, out, _) = send_with_retries(mock, failed, file).await;
    assert_eq!(code, 1);
    assert!(out.contains("failed: line 1 event_id evt_dead"), "{out}");
    assert_eq!(mock.requests().len() - before, 4);
    let (code, list, _) = failed_cli(failed, &["list"]).await;
    assert_eq!(code, 0);
    let line = list
        .lines()
        .find(|l| l.contains("evt_dead"))
        .expect("listed");
    let id = line.split_whitespace().next().unwrap().to_string();
    assert!(line.contains(" 4 ") && line.contains("500"), "{line}");
    let (_, show, _) = failed_cli(failed, &["show", &id]).await;
    let entry: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(entry["target"], mock.url("/h"));
    assert_eq!(entry["secret_ref"], "env VF_SECRET");
    assert_eq!(entry["attempts"].as_array().unwrap().len(), 4);
    assert!(entry["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("no answer within"));
    assert_eq!(entry["attempts"][1]["status"], 500);
    assert!(!show.contains(SECRET));
    id
}

/// Replay once the receiver is back: delivered re-signed, the entry removed; a purge then
/// finds nothing old.
async fn replay_delivers_and_removes_the_entry(mock: &Mock, failed: &Path, id: &str) {
    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    let (code, out, _) = failed_cli(failed, &["replay", id]).await;
    assert_eq!(code, 0, "{out}");
    let last = mock.requests().pop().unwrap();
    assert!(String::from_utf8_lossy(&last.body).contains("evt_dead"));
    assert_eq!(
        last.header("x-vf-signature-256"),
        Some(sign(SECRET, &last.body).as_str())
    );
    let (_, list, _) = failed_cli(failed, &["list"]).await;
    assert!(!list.contains("evt_dead"));
    let (code, out, _) = failed_cli(failed, &["purge", "--older-than", "30d"]).await;
    assert_eq!(
        (code, out.trim()),
        (0, "purged 0 entries older than 30days")
    );
}

#[tokio::test]
async fn retries_follow_the_schedule_then_the_store_then_replay() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let failed = dir.path().join("failed");
    let file = dir.path().join("in.ndjson");
    // Fails twice, then succeeds: three attempts, gaps of the scaled schedule.
    let times = fail_twice_then_accept(&mock);
    std::fs::write(&file, org_event("evt_flaky", "org_1") + "\n").unwrap();
    let (code, out, err) = send_with_retries(&mock, &failed, &file).await;
    assert_eq!(code, 0, "{out}{err}");
    let times = times.lock().unwrap().clone();
    assert_gaps_follow_the_schedule(&times);

    let id = always_failing_goes_to_the_store(&mock, &failed, &file).await;
    replay_delivers_and_removes_the_entry(&mock, &failed, &id).await;
}

#[tokio::test]
async fn per_org_order_with_a_retried_event_not_holding_back_later_ones() {
    let mock = Mock::start().await;
    // a2's first attempt is refused.
    let seen = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    mock.set_default(Reply::Compute(Arc::new(move |q: &Captured| {
        let v: serde_json::Value = serde_json::from_slice(&q.body).unwrap();
        let id = v["event_id"].as_str().unwrap().to_string();
        let first = seen.lock().unwrap().insert(id.clone());
        if id == "a2" && first {
            (503, "later".into())
        } else {
            (200, "{}".into())
        }
    })));
    let ids = ["a1", "b1", "a2", "b2", "a3", "b3", "a4"];
    let lines: Vec<String> = ids
        .iter()
        .map(|i| org_event(i, if i.starts_with('a') { "org_a" } else { "org_b" }))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let failed = dir.path().join("f");
    let extra = [
        "--retry-schedule",
        "300ms",
        "--concurrency",
        "4",
        "--failed-dir",
        failed.to_str().unwrap(),
        "--quiet",
        file.to_str().unwrap(),
    ];
    let (code, out, err) = send(send_args(&mock.url("/h"), &extra), None).await;
    assert_eq!(code, 0, "{out}{err}");
    let order = event_ids(&mock);
    let pos = |id: &str| order.iter().position(|x| x == id).unwrap();
    let last_pos = |id: &str| order.iter().rposition(|x| x == id).unwrap();
    assert!(
        pos("a1") < pos("a2") && pos("a2") < pos("a3") && pos("a3") < pos("a4"),
        "{order:?}"
    );
    assert!(pos("b1") < pos("b2") && pos("b2") < pos("b3"), "{order:?}");
    assert!(
        last_pos("a2") > pos("a4"),
        "the retry of a2 did not hold back a3, a4: {order:?}"
    );
    assert_eq!(order.len(), 8);
}

/// 300 generated events with 10 % sent twice: the summary and the gateway both count
/// exactly the 30 duplicates.
async fn generate_counts_exactly_the_duplicates(gw: &Gateway, target: &str) {
    let extra = [
        "--generate",
        "300",
        "--duplicates",
        "10",
        "--concurrency",
        "8",
        "--orgs",
        "5",
        "--size",
        "512",
    ];
    let (code, out, err) = send(send_args(target, &extra), None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "sent 330: 2xx accepted 300, duplicate 30, filtered 0; 4xx 0; 5xx 0; errors 0"
        ),
        "{out}"
    );
    assert!(
        out.contains("latency p50 ") && out.contains("events/s"),
        "{out}"
    );
    assert_eq!(
        gw.metric("vfgate_requests_total{outcome=\"duplicate\",scheme=\"vf\",source=\"syvault\"}")
            .await,
        30.0
    );
}

/// At a rate: 20 events at 100/s take about 0.2 s.
async fn generate_keeps_to_the_rate(target: &str) {
    let t0 = Instant::now();
    let extra = ["--generate", "20", "--rate", "100", "--quiet"];
    let (code, out, _) = send(send_args(target, &extra), None).await;
    assert_eq!(code, 0, "{out}");
    assert!(t0.elapsed() >= Duration::from_millis(180));
}

/// `--test` sends one `vf.test` event and reports its delivery.
async fn test_mode_reports_the_delivery(gw: &Gateway, target: &str) {
    let (code, out, _) = send(send_args(target, &["--test"]), None).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("outcome: delivered")
            && out.contains("status: 200")
            && out.contains("rtt: ")
            && out.contains(r#"reply: {"status":"accepted"}"#),
        "{out}"
    );
    let line = std::fs::read_to_string(gw.dir.path().join("events.ndjson"))
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(line.contains(r#""event_type":"vf.test""#));
}

/// Wrong secret: the gateway refuses, exit 1.
async fn test_mode_with_a_wrong_secret_exits_1(target: String) {
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        run_cli(
            &["send", "--target", &target, "--secret-env", "X", "--test"],
            &[("X", "wrong")],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(out.contains("status: 401"), "{out}");
}

/// Usage errors (a target that is not HTTP, an unset secret variable) exit 2.
async fn usage_errors_exit_2() {
    let (code, _, err) = send(send_args("ftp://x", &["--test"]), None).await;
    assert_eq!(code, 2, "{err}");
    let mut args = s(&["send", "--target", "http://127.0.0.1:1/"]);
    args.extend(s(&["--secret-env", "VFGATE_UNSET", "--test"]));
    let (code, _, err) = send(args, None).await;
    assert_eq!(code, 2);
    assert!(err.contains("VFGATE_UNSET"));
}

#[tokio::test]
async fn generate_reports_exactly_the_duplicates_and_test_mode() {
    let gw = Gateway::start(&file_sink()).await;
    let target = format!("http://127.0.0.1:{}/v1/events", gw.port);
    generate_counts_exactly_the_duplicates(&gw, &target).await;
    generate_keeps_to_the_rate(&target).await;
    test_mode_reports_the_delivery(&gw, &target).await;
    test_mode_with_a_wrong_secret_exits_1(target).await;
    usage_errors_exit_2().await;
}

#[tokio::test]
async fn webhook_sink_relays_re_signed_to_another_gateway() {
    let far = Gateway::start(&file_sink()).await;
    let near_cfg = Toml::new()
        .source(&["relay"])
        .with(r#"secrets = [{ env = "NEAR_SECRET" }]"#)
        .sink("relay", "webhook")
        .with(&format!(
            r#"url = "http://127.0.0.1:{}/v1/events""#,
            far.port
        ))
        .with(r#"secret = { env = "VF_SECRET" }"#)
        .with(r#"headers = { "X-Relay" = "near" }"#)
        .build();
    let near = Gateway::start_with(&near_cfg, "", &[("NEAR_SECRET", "near-secret-123")]).await;
    let body = org_event("evt_relay", "org_1");
    let r = post_signed(near.port, "/v1/events", "near-secret-123", &body)
        .await
        .unwrap();
    assert_eq!(r.status_field(), "accepted");
    assert_eq!(
        std::fs::read_to_string(far.dir.path().join("events.ndjson")).unwrap(),
        format!("{body}\n")
    );
    // The far gateway answers duplicate for a retry; the near one forwards it once only.
    let r = post_signed(near.port, "/v1/events", "near-secret-123", &body)
        .await
        .unwrap();
    assert_eq!(r.status_field(), "duplicate");
}

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// Puts one failed entry (`evt_admin`) in a store under `dir` with the CLI; the store.
async fn a_store_with_one_failed_entry(mock: &Mock, dir: &Path) -> PathBuf {
    mock.set_default(Reply::Status(500, vec![], "down".into()));
    let file = dir.join("in.ndjson");
    std::fs::write(&file, org_event("evt_admin", "org_1") + "\n").unwrap();
    let failed = dir.join("failed");
    let extra = [
        "--retry-schedule",
        "10ms",
        "--failed-dir",
        failed.to_str().unwrap(),
        "--quiet",
        file.to_str().unwrap(),
    ];
    let (code, _, _) = send(send_args(&mock.url("/h"), &extra), None).await;
    assert_eq!(code, 1);
    failed
}

/// `method path` on the admin port with these headers.
async fn admin(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(gw.admin, method, path, headers, b"").await.unwrap()
}

/// With no token (nor store) in `[admin]`, `/admin/failed` does not exist.
async fn admin_failed_is_off_without_a_token(cfg: &str) {
    let gw = Gateway::start_with(cfg, "", &[("ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    assert_eq!(
        admin(&gw, "GET", "/admin/failed", &[]).await.status,
        404,
        "off without a token"
    );
}

/// No token, or the wrong one: 401.
async fn admin_failed_refuses_a_missing_or_wrong_token(gw: &Gateway) {
    assert_eq!(admin(gw, "GET", "/admin/failed", &[]).await.status, 401);
    let wrong = [("Authorization", "Bearer wrong-token-0123456789")];
    assert_eq!(admin(gw, "GET", "/admin/failed", &wrong).await.status, 401);
}

#[tokio::test]
async fn admin_api_lists_and_replays_with_a_bearer_token() {
    let mock = Mock::start().await;
    let store_dir = tempfile::tempdir().unwrap();
    let failed = a_store_with_one_failed_entry(&mock, store_dir.path()).await;
    let admin_extra = format!(
        "token = {{ env = \"ADMIN_TOKEN\" }}\nfailed_dir = \"{}\"\n",
        failed.display()
    );
    let cfg = file_sink();
    admin_failed_is_off_without_a_token(&cfg).await;
    let gw = Gateway::start_admin(&cfg, &admin_extra, &[("ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    admin_failed_refuses_a_missing_or_wrong_token(&gw).await;
    let auth = [("Authorization", "Bearer admin-token-0123456789abcdef")];
    let r = admin(&gw, "GET", "/admin/failed", &auth).await;
    assert_eq!(r.status, 200);
    let entries = r.json()["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["event_id"], "evt_admin");
    let id = entries[0]["id"].as_str().unwrap().to_string();
    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    let replay = format!("/admin/failed/{id}/replay");
    let r = admin(&gw, "POST", &replay, &auth).await;
    assert_eq!(
        (r.status, r.status_field()),
        (200, "delivered".into()),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    let r = admin(&gw, "GET", "/admin/failed", &auth).await;
    assert!(r.json()["entries"].as_array().unwrap().is_empty());
    assert_eq!(admin(&gw, "POST", &replay, &auth).await.status, 404);
}

/// Lines that are not JSON objects are reported with their numbers before anything is sent,
/// skipped and counted as failed (exit 1); a failed event's line names its line number.
#[tokio::test]
async fn send_reports_bad_lines_first_and_failures_by_line_number() {
    let mock = Mock::start().await;
    mock.set_default(Reply::RejectContaining("evt_refused".into()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.ndjson");
    let lines = [
        org_event("evt_l1", "o1"),
        "{not json".to_string(),
        "[1, 2]".to_string(),
        String::new(),
        org_event("evt_refused", "o1"),
        org_event("evt_l6", "o2"),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let failed = dir.path().join("failed");
    let (code, out, err) = send(
        s(&[
            "send",
            "--target",
            &mock.url("/in"),
            "--secret-env",
            "VF_SECRET",
            "--retry-schedule",
            "10ms",
            "--failed-dir",
            failed.to_str().unwrap(),
            file.to_str().unwrap(),
        ]),
        None,
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    let first: Vec<&str> = err.lines().take(2).collect();
    assert!(first[0].starts_with("line 2: not JSON ("), "{err}");
    assert_eq!(
        first[1],
        "line 3: not a JSON object (a JSON array): skipped, not sent"
    );
    assert!(!err.contains("{not json"), "the line itself is not echoed");
    assert!(
        out.contains("skipped 2 line(s) that are not JSON objects"),
        "{out}"
    );
    assert!(
        out.contains("failed: line 5 event_id evt_refused (last: 400)"),
        "{out}"
    );
    let sent: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).to_string())
        .collect();
    assert!(sent.iter().all(|b| b.starts_with('{')), "{sent:?}");
    assert_eq!(sent.iter().filter(|b| b.contains("evt_l")).count(), 2);
}

/// Ctrl-C while events wait for a retry: progress has said so and when; every undelivered
/// event goes to the failed store, the summary is printed, exit 130.
#[tokio::test]
async fn send_ctrl_c_stores_undelivered_events_and_exits_130() {
    use std::io::{BufRead, BufReader};
    let mock = Mock::start().await;
    mock.set_default(Reply::Status(503, vec![], "down".into()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.ndjson");
    let events: Vec<String> = (1..=3)
        .map(|i| org_event(&format!("evt_int_{i}"), "o1"))
        .collect();
    std::fs::write(&file, events.join("\n") + "\n").unwrap();
    let failed = dir.path().join("failed");
    let mut child = std::process::Command::new(bin())
        .args([
            "send",
            "--target",
            &mock.url("/in"),
            "--secret-env",
            "VF_SECRET",
            "--retry-schedule",
            "10m",
            "--failed-dir",
            failed.to_str().unwrap(),
            file.to_str().unwrap(),
        ])
        .env("VF_SECRET", SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let stderr = child.stderr.take().unwrap();
    // Read stderr to its end (a closed pipe would fail the child's last lines).
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let seen = tokio::task::spawn_blocking(move || {
        rx.iter()
            .find(|l| l.contains("3 waiting for a retry (next attempt in "))
    })
    .await
    .unwrap();
    let seen = seen.expect("progress shows the events waiting for a retry");
    assert!(
        seen.contains("next attempt in 9m") || seen.contains("next attempt in 10m"),
        "{seen}"
    );
    assert_eq!(send_signal(pid, "INT"), 0);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    reader.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("sent 0:"), "{stdout}");
    for i in 1..=3 {
        assert!(
            stdout.contains(&format!(
                "failed: line {i} event_id evt_int_{i} (interrupted), stored as "
            )),
            "{stdout}"
        );
    }
    let (code, list, _) = run_cli(
        &["failed", "list", "--dir", failed.to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(code, 0);
    assert_eq!(list.matches("evt_int_").count(), 3, "{list}");
}

/// Reads one request (head and Content-Length body) from `s`, or `None` at the end of the
/// connection.
async fn read_request(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(Vec<(String, String)>, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let h = owned_headers(req.headers);
            let len: usize = h
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            while buf.len() < n + len {
                let mut chunk = [0u8; 8192];
                let got = s.read(&mut chunk).await.ok()?;
                if got == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..got]);
            }
            let body = buf[n..n + len].to_vec();
            buf.drain(..n + len);
            return Some((h, body));
        }
        let mut chunk = [0u8; 8192];
        let got = s.read(&mut chunk).await.ok()?;
        if got == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// The answers a scripted server gives in turn, as the load generator must read them: a
/// length, chunks with a trailer, `Connection: close`, a body to the end of the connection,
/// a duplicate, and a kept connection the server closes without a word after answering
/// (the next request on it must go out again on a new one).
const ANSWERS: [(&str, bool); 6] = [
    ("HTTP/1.1 202 Accepted\r\nContent-Length: 21\r\n\r\n{\"status\":\"accepted\"}", true),
    ("HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"status\"\r\nc\r\n:\"accepted\"}\r\n0\r\nX-Trailer: 1\r\n\r\n", true),
    ("HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 21\r\n\r\n{\"status\":\"accepted\"}", false),
    ("HTTP/1.1 200 OK\r\n\r\n{\"status\":\"accepted\"}", false),
    ("HTTP/1.1 200 OK\r\nContent-Length: 22\r\n\r\n{\"status\":\"duplicate\"}", true),
    ("HTTP/1.1 202 Accepted\r\nContent-Length: 21\r\n\r\n{\"status\":\"accepted\"}", false),
];

/// Serves [`ANSWERS`] in turn over every connection; records each signed body.
async fn scripted_server(
    l: tokio::net::TcpListener,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    conns: Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::AsyncWriteExt;
    let turn = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let (mut s, _) = l.accept().await.unwrap();
        conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (bodies, turn) = (bodies.clone(), turn.clone());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some((h, body)) = read_request(&mut s, &mut buf).await {
                let sig = h
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("x-vf-signature-256"));
                assert_eq!(
                    sig.map(|(_, v)| v.as_str()),
                    Some(sign(SECRET, &body).as_str())
                );
                bodies.lock().unwrap().push(body);
                let i = turn.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (answer, keep) = ANSWERS[i % ANSWERS.len()];
                s.write_all(answer.as_bytes()).await.unwrap();
                if !keep {
                    break;
                }
            }
        });
    }
}

/// `send --generate` keeps one connection per slot and reads every framing of an answer;
/// each event reaches the server exactly once, signed, and the summary counts what the
/// server said. An open-loop `--rate` reports its latency from when each event was due.
#[tokio::test]
async fn generate_reads_every_answer_framing_on_kept_connections() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/v1/events", l.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(scripted_server(l, bodies.clone(), conns.clone()));
    let extra = ["--generate", "60", "--concurrency", "1"];
    let (code, out, err) = send(send_args(&target, &extra), None).await;
    assert_eq!(code, 0, "{out}{err}");
    let ids: std::collections::BTreeSet<String> = bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_slice::<serde_json::Value>(b).unwrap()["event_id"].to_string())
        .collect();
    assert_eq!((bodies.lock().unwrap().len(), ids.len()), (60, 60));
    // One slot: a new connection only after each of the 3 closing answers in every 6.
    assert_eq!(
        conns.load(std::sync::atomic::Ordering::SeqCst),
        1 + 60 / 6 * 3 - 1
    );
    assert!(out.contains("accepted 50, duplicate 10"), "{out}");

    let extra = ["--generate", "30", "--rate", "200", "--concurrency", "2"];
    let (code, out, err) = send(send_args(&target, &extra), None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("sent 30:"), "{out}");
}

/// Answers every request after `delay`, keeping the connection.
async fn slow_server(l: tokio::net::TcpListener, delay: Duration) {
    use tokio::io::AsyncWriteExt;
    loop {
        let (mut s, _) = l.accept().await.unwrap();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while read_request(&mut s, &mut buf).await.is_some() {
                tokio::time::sleep(delay).await;
                let ok =
                    "HTTP/1.1 202 Accepted\r\nContent-Length: 21\r\n\r\n{\"status\":\"accepted\"}";
                s.write_all(ok.as_bytes()).await.unwrap();
            }
        });
    }
}

/// Open loop: one slot at 200 events/s against a server taking 20 ms per answer falls
/// behind, and each event's latency counts from when it was due, so the last of 20 waited
/// about 20 x 20 - 19 x 5 = 305 ms. (Closed-loop timing would report about 20 ms.)
#[tokio::test]
async fn an_open_loop_rate_counts_latency_from_when_each_event_was_due() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/v1/events", l.local_addr().unwrap());
    tokio::spawn(slow_server(l, Duration::from_millis(20)));
    let extra = ["--generate", "20", "--rate", "200", "--concurrency", "1"];
    let (code, out, err) = send(send_args(&target, &extra), None).await;
    assert_eq!(code, 0, "{out}{err}");
    let max: f64 = out
        .split("max ")
        .nth(1)
        .and_then(|t| t.split("ms").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no max latency in {out}"));
    assert!(max >= 250.0, "max latency {max} ms: {out}");
}
