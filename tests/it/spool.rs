//! `ack = "spool"`: crash safety under load (kill -9), SIEM outages, a full spool, dead
//! letters, and dedupe that survives a restart. Real processes, real faults.

use crate::util::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A spool, the source acknowledging once spooled (to `sinks`), and two HTTP sinks: `up`
/// (`mock` at `/up`) and `side` (`side` at `/side`), batching up to `max_events` events.
fn spool_config(mock: &Mock, side: &Mock, sinks: &[&str], max_events: u32) -> Toml {
    let batch = format!(r#"batch = {{ max_events = {max_events}, linger = "5ms" }}"#);
    Toml::new()
        .spool()
        .source(sinks)
        .with(r#"ack = "spool""#)
        .http_sink("up", &mock.url("/up"))
        .with(r#"timeout = "1s""#)
        .with(&batch)
        .http_sink("side", &side.url("/side"))
        .with(r#"timeout = "1s""#)
        .with(&batch)
}

/// Every `event_id` in a captured request body, in order.
fn ids_in(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    text.match_indices("\"event_id\":\"")
        .map(|(i, m)| {
            let rest = &text[i + m.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

/// Event ids the mock accepted (2xx) at `path`, in arrival order (repeats kept).
fn received(mock: &Mock, path: &str) -> Vec<String> {
    mock.requests()
        .iter()
        .filter(|c| c.path == path && (200..300).contains(&c.status))
        .flat_map(|c| ids_in(&c.body))
        .collect()
}

fn json_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

fn org_event(org: usize, n: usize) -> String {
    format!(
        r#"{{"event_id":"o{org}-{n:04}","event_type":"user.login","timestamp":"{}","context":{{"org_id":"org_{org}"}}}}"#,
        now_rfc3339()
    )
}

/// Kill points: under plain load; with a backlog (the SIEM refusing, so events are only in
/// the spool); and right after the SIEM came back (drainer mid-delivery).
async fn kill_under_load_with_a_backlog_and_mid_recovery(gw: &mut Gateway, mock: &Mock) {
    tokio::time::sleep(Duration::from_millis(800)).await;
    gw.kill9();
    gw.restart().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    mock.set_default(Reply::Status(503, vec![], "{}".into()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    gw.kill9();
    gw.restart().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.kill9();
    gw.restart().await;
}

/// Waits up to 60 s for every acknowledged id to reach the mock at `/up`; what it received.
async fn assert_every_acknowledged_event_arrives(
    mock: &Mock,
    gw: &Gateway,
    acked: &HashSet<String>,
) -> Vec<String> {
    let done = wait_until(Duration::from_secs(60), || {
        let got: HashSet<String> = received(mock, "/up").into_iter().collect();
        acked.is_subset(&got)
    })
    .await;
    let got: Vec<String> = received(mock, "/up");
    let set: HashSet<&String> = got.iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !set.contains(id)).collect();
    assert!(
        done,
        "{} acknowledged events never reached the SIEM, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        gw.log_text()
    );
    got
}

#[tokio::test]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    let mock = Mock::start().await;
    let mut gw = Gateway::start(
        &spool_config(&mock, &mock, &["up"], 100)
            .with_in("[spool]", r#"fsync = "batch""#)
            .build(),
    )
    .await;
    let results = gw.dir.path().join("results.tsv");
    let mut send = send_load(&gw, 4000, 800, &results, &[]);
    kill_under_load_with_a_backlog_and_mid_recovery(&mut gw, &mock).await;
    wait_for_sender(&mut send, Duration::from_secs(60)).await;
    let text = std::fs::read_to_string(&results).unwrap();
    let acked = acknowledged(&text);
    assert!(
        acked.len() > 2000,
        "most events were acknowledged: {}",
        acked.len()
    );
    let got = assert_every_acknowledged_event_arrives(&mock, &gw, &acked).await;
    let set: HashSet<&String> = got.iter().collect();
    // At least once: a crash between delivery and the cursor save repeats at most the
    // batches in flight at each kill.
    let repeats = got.len() - set.len();
    eprintln!(
        "kill -9 x3: {} sent, {} acknowledged, {} received, {} repeats",
        text.lines().count(),
        acked.len(),
        set.len(),
        repeats
    );
    assert!(repeats <= 3 * 100, "{repeats} events delivered twice");
    assert!(
        gw.log_text().matches("vfgate ready").count() >= 4,
        "restarted three times"
    );
}

/// Posts `per_org` events for each of `orgs` orgs, interleaved, each accepted; after the
/// 8th round the SIEM turns from refusing to hanging.
async fn post_through_an_outage(gw: &Gateway, mock: &Mock, orgs: usize, per_org: usize) {
    for n in 0..per_org {
        for org in 0..orgs {
            let r = gw.post_event(&org_event(org, n)).await;
            assert_eq!(r.status, 202, "{:?}", r.json());
            assert_eq!(r.json()["status"], "accepted");
        }
        if n == 7 {
            // Second phase of the outage: the SIEM accepts connections but answers only
            // after the sink's 1 s timeout.
            mock.set_default(Reply::Sleep(Duration::from_millis(1500)));
        }
    }
}

/// During the outage `up`'s backlog, its oldest event's age and the spool's bytes grow,
/// while `side` has no backlog.
async fn assert_the_outage_shows_in_the_metrics(gw: &Gateway) {
    let backlog = gw.metric("vfgate_spool_events{sink=\"up\"}").await;
    assert!(backlog >= 1.0, "backlog grows: {backlog}");
    assert_eq!(gw.metric("vfgate_spool_events{sink=\"side\"}").await, 0.0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let age = gw
        .metric("vfgate_spool_oldest_event_age_seconds{sink=\"up\"}")
        .await;
    assert!(age >= 1.0, "oldest age grows: {age}");
    assert!(gw.metric("vfgate_spool_bytes").await > 0.0);
}

/// Per-org order: the first delivery of each id follows the org's sequence.
fn assert_per_org_order(mock: &Mock) {
    let mut seen = HashSet::new();
    let mut per: HashMap<String, Vec<String>> = HashMap::new();
    for id in received(mock, "/up") {
        if seen.insert(id.clone()) {
            per.entry(id[..2].to_string()).or_default().push(id);
        }
    }
    for (org, ids) in per {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "org {org} in order");
    }
}

#[tokio::test]
async fn outage_keeps_accepting_and_delivers_in_order_after_recovery() {
    let mock = Mock::start().await;
    let side = Mock::start().await;
    // `up` is down (refuses, then times out); `side` stays healthy and is not held back.
    mock.set_default(Reply::Status(503, vec![], "{\"error\":\"down\"}".into()));
    let gw = Gateway::start(&spool_config(&mock, &side, &["up", "side"], 100).build()).await;
    let (orgs, per_org) = (4, 15);
    post_through_an_outage(&gw, &mock, orgs, per_org).await;
    let total = orgs * per_org;
    assert!(
        wait_until(Duration::from_secs(10), || received(&side, "/side").len()
            >= total)
        .await,
        "the healthy sink got everything during the other's outage"
    );
    assert_the_outage_shows_in_the_metrics(&gw).await;

    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    let ok = wait_until(Duration::from_secs(40), || {
        received(&mock, "/up").iter().collect::<HashSet<_>>().len() >= total
    })
    .await;
    assert!(ok, "all events arrive after recovery");
    assert_per_org_order(&mock);
    assert_eq!(gw.metric("vfgate_spool_events{sink=\"up\"}").await, 0.0);
    assert_eq!(
        gw.metric("vfgate_spool_oldest_event_age_seconds{sink=\"up\"}")
            .await,
        0.0
    );
}

/// Posts 1 KB events until the spool is full: the ids accepted before, and the 503.
async fn fill_the_spool(gw: &Gateway) -> (Vec<String>, Resp) {
    let pad = "x".repeat(1000);
    let mut accepted = Vec::new();
    for n in 0..200 {
        let body = format!(
            r#"{{"event_id":"full-{n:04}","event_type":"user.login","timestamp":"{}","pad":"{pad}"}}"#,
            now_rfc3339()
        );
        let r = gw.post_event(&body).await;
        match r.status {
            202 => accepted.push(format!("full-{n:04}")),
            503 => return (accepted, r),
            s => panic!("unexpected {s}: {:?}", r.json()),
        }
    }
    panic!("the spool fills up")
}

/// Waits up to 10 s for `/readyz` to answer 200.
async fn assert_ready_again(gw: &Gateway) {
    let t0 = Instant::now();
    loop {
        let r = request(gw.admin, "GET", "/readyz", &[], b"").await.unwrap();
        if r.status == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn full_spool_answers_503_and_still_delivers_everything_accepted() {
    let mock = Mock::start().await;
    mock.set_default(Reply::Status(503, vec![], "{}".into()));
    let cfg = spool_config(&mock, &mock, &["up"], 100)
        .with_in("[spool]", r#"max_bytes = "64KiB""#)
        .build();
    let gw = Gateway::start_with(&cfg, "max_body_bytes = \"8KiB\"", &[]).await;
    let (accepted, r) = fill_the_spool(&gw).await;
    assert_eq!(r.error(), "spool_full");
    assert_eq!(r.header("retry-after"), Some("30"));
    assert!(accepted.len() >= 40, "{}", accepted.len());
    let ready = request(gw.admin, "GET", "/readyz", &[], b"").await.unwrap();
    assert_eq!(ready.status, 503);
    assert!(String::from_utf8_lossy(&ready.body).contains("spool_full"));
    assert_eq!(
        gw.metric("vfgate_requests_total{outcome=\"spool_full\",scheme=\"vf\",source=\"syvault\"}")
            .await,
        1.0
    );

    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    let ok = wait_until(Duration::from_secs(30), || {
        let got: HashSet<String> = received(&mock, "/up").into_iter().collect();
        accepted.iter().all(|id| got.contains(id))
    })
    .await;
    assert!(
        ok,
        "everything accepted before the spool filled is delivered"
    );
    // Drained segments are reclaimed: ready again, and new events are accepted.
    assert_ready_again(&gw).await;
    let r = gw.post_event(&event("after-full", "user.login")).await;
    assert_eq!(r.status, 202);
}

/// `dl-bad` is refused (400), `dl-slow` fails (500) until it expires, the rest go through.
fn refuse_bad_and_fail_slow() -> Reply {
    Reply::Compute(std::sync::Arc::new(|c: &Captured| {
        let body = String::from_utf8_lossy(&c.body);
        if body.contains("dl-bad") {
            (400, "{\"error\":\"schema\"}".into())
        } else if body.contains("dl-slow") {
            (500, "{}".into())
        } else {
            (200, "{}".into())
        }
    }))
}

/// `failed list` shows both dead letters, their reasons and the far side's own statuses,
/// not a generic error.
fn assert_dead_letters_listed_with_reasons_and_statuses(dir: &str) {
    let (code, out, err) = run_cli(&["failed", "list", "--dir", dir], &[], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dl-bad") && out.contains("dl-slow"), "{out}");
    assert!(out.contains("rejected") && out.contains("expired"), "{out}");
    let line = |id: &str| out.lines().find(|l| l.contains(id)).unwrap().to_string();
    assert!(line("dl-bad").contains(" 400 "), "{out}");
    assert!(line("dl-slow").contains(" 500 "), "{out}");
}

/// `failed replay --all --dir dir --config cfg`, on a blocking thread: the mock SIEM runs on
/// this test's runtime.
async fn replay_all_with_the_config(dir: String, cfg: std::path::PathBuf) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let cfg = cfg.to_str().unwrap();
        let args = ["failed", "replay", "--all", "--dir", &dir, "--config", cfg];
        run_cli(&args, &[("VF_SECRET", SECRET)], None)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn refused_and_expired_events_become_dead_letters_replayed_to_their_sink_only() {
    let mock = Mock::start().await;
    let side = Mock::start().await;
    mock.set_default(refuse_bad_and_fail_slow());
    // One event per request, so that the mock's verdict is per event.
    let cfg = spool_config(&mock, &side, &["up", "side"], 1)
        .with_in("[spool]", r#"max_age = "2s""#)
        .build();
    let mut gw = Gateway::start(&cfg).await;
    for id in ["dl-bad", "dl-slow", "dl-good"] {
        assert_eq!(gw.post_event(&event(id, "user.login")).await.status, 202);
    }
    let dir = gw.dir.path().join("spool/dead-letter");
    let dir_s = dir.to_str().unwrap().to_string();
    let ok = wait_until(Duration::from_secs(15), || json_files(&dir) >= 2).await;
    assert!(ok, "two dead letters\n{}", gw.log_text());
    assert!(
        wait_until(Duration::from_secs(5), || received(&mock, "/up")
            .contains(&"dl-good".to_string()))
        .await,
        "{}",
        gw.log_text()
    );
    for reason in ["rejected", "expired"] {
        let series = format!("vfgate_dead_letter_events_total{{reason=\"{reason}\",sink=\"up\"}}");
        assert_eq!(gw.metric(&series).await, 1.0, "{reason}");
    }
    assert_dead_letters_listed_with_reasons_and_statuses(&dir_s);

    // A file that is not an entry is skipped and reported, not fatal.
    std::fs::write(dir.join("20200101T000000000Z-00000000.json"), "{broken").unwrap();
    // Without the gateway's config a sink's dead letter cannot be replayed: it says so.
    let (code, out, _) = run_cli(&["failed", "replay", "--all", "--dir", &dir_s], &[], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("give --config"), "{out}");
    // With it, each goes to its sink `up` only, straight through the sink (the events are
    // older than nothing here, but no age window would apply either); `side` already had
    // them and gets nothing again.
    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    let side_before = received(&side, "/side").len();
    let (code, out, err) =
        replay_all_with_the_config(dir_s, gw.dir.path().join("vfgate.toml")).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("skipped 20200101T000000000Z-00000000.json"),
        "{err}"
    );
    let got = received(&mock, "/up");
    assert!(got.contains(&"dl-bad".to_string()) && got.contains(&"dl-slow".to_string()));
    assert_eq!(
        received(&side, "/side").len(),
        side_before,
        "no duplicate on the other sink"
    );
    assert_eq!(side_before, 3);
    assert_eq!(json_files(&dir), 1, "only the broken file is left");
    gw.kill9();
}
#[tokio::test]
async fn memory_dedupe_remembers_delivered_ids_across_a_restart() {
    let mock = Mock::start().await;
    let mut gw = Gateway::start(&spool_config(&mock, &mock, &["up"], 100).build()).await;
    let e = event("evt_restart_1", "user.login");
    assert_eq!(gw.post_event(&e).await.status, 202);
    assert!(wait_until(Duration::from_secs(5), || received(&mock, "/up").len() == 1).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.kill9();
    gw.restart().await;
    let r = gw.post_event(&e).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.status_field(), "duplicate");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received(&mock, "/up").len(), 1, "delivered once");
    assert!(gw.log_text().contains("delivered ids loaded"));
}

#[tokio::test]
async fn memory_dedupe_persists_by_default_without_a_spool() {
    let mock = Mock::start().await;
    let cfg = Toml::new()
        .source(&["up"])
        .http_sink("up", &mock.url("/up"))
        .build();
    let mut gw = Gateway::start(&cfg).await;
    let e = event("evt_no_spool_1", "user.login");
    assert_eq!(gw.post_event(&e).await.status_field(), "accepted");
    // kill -9 right after the answer: the mark was written before it.
    gw.kill9();
    gw.restart().await;
    let r = gw.post_event(&e).await;
    assert_eq!(r.status_field(), "duplicate", "{:?}", r.json());
    assert_eq!(received(&mock, "/up").len(), 1, "delivered once");
    // data/dedupe under the working directory, private.
    use std::os::unix::fs::PermissionsExt;
    let d = gw.dir.path().join("data/dedupe");
    let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

/// A spool and a webhook sink relaying to `far` (a key in the URL's query), version 2,
/// retried after 200 ms and 300 ms.
fn webhook_relay_config(far: &Mock) -> String {
    Toml::new()
        .spool()
        .source(&["relay"])
        .with(r#"ack = "spool""#)
        .sink("relay", "webhook")
        .with(&format!(
            r#"url = "{}""#,
            far.url("/v1/events?token=s3cr3t-in-query")
        ))
        .with(r#"secret = { env = "VF_SECRET" }"#)
        .with(r#"version = "2""#)
        .with(r#"retry_schedule = ["200ms", "300ms"]"#)
        .build()
}

/// The only file in `dir`.
fn only_file(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

/// The entry says where it was going, as a sender-mode entry does: the sink's type and URL
/// (never its query string, which may carry a key), and the webhook version it sent.
fn assert_webhook_entry_names_its_target(dir: &std::path::Path, far: &Mock) {
    let file = only_file(dir);
    let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        entry["target"],
        format!("webhook http://127.0.0.1:{}/v1/events", far.port),
        "{entry}"
    );
    assert_eq!(entry["version"], "2", "{entry}");
    assert_eq!(entry["sink"], "relay");
    assert!(!entry.to_string().contains("s3cr3t-in-query"), "{entry}");
}

#[tokio::test]
async fn spooled_webhook_sink_retries_on_its_schedule_then_dead_letters() {
    let far = Mock::start().await;
    far.set_default(Reply::Status(500, vec![], "{}".into()));
    let gw = Gateway::start(&webhook_relay_config(&far)).await;
    let t0 = Instant::now();
    assert_eq!(
        gw.post_event(&event("wh-1", "user.login")).await.status,
        202
    );
    let dir = gw.dir.path().join("spool/dead-letter");
    assert!(wait_until(Duration::from_secs(10), || json_files(&dir) == 1).await);
    // First attempt plus one per schedule step, then the dead letter.
    assert_eq!(far.requests().len(), 3);
    assert!(t0.elapsed() >= Duration::from_millis(500));
    let (code, out, _) = run_cli(
        &["failed", "list", "--dir", dir.to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(code, 0);
    assert!(out.contains("relay: retries_exhausted"), "{out}");
    let line = out.lines().find(|l| l.contains("wh-1")).unwrap();
    assert!(line.contains(" 500 "), "the far side's last status: {out}");
    assert_webhook_entry_names_its_target(&dir, &far);
    assert!(
        out.contains(&format!("webhook http://127.0.0.1:{}/v1/events", far.port)),
        "{out}"
    );
    assert_eq!(far.requests()[0].header("x-vf-webhook-version"), Some("2"));
    assert_eq!(
        gw.metric_reaches(
            "vfgate_dead_letter_events_total{reason=\"retries_exhausted\",sink=\"relay\"}",
            1.0
        )
        .await,
        1.0
    );
}

const ADMIN_AUTH: &str = "Bearer admin-token-0123456789abcdef";

/// A gateway with an admin token (`ADMIN_AUTH`).
async fn start_with_admin_token(cfg: &str) -> Gateway {
    let token = ADMIN_AUTH.strip_prefix("Bearer ").unwrap();
    Gateway::start_admin(
        cfg,
        "token = { env = \"ADMIN_TOKEN\" }",
        &[("ADMIN_TOKEN", token)],
    )
    .await
}

/// `method path` on the admin port with the admin token.
async fn admin(gw: &Gateway, method: &str, path: &str) -> Resp {
    admin_at(gw.admin, method, path).await
}

async fn admin_at(port: u16, method: &str, path: &str) -> Resp {
    request(port, method, path, &[("authorization", ADMIN_AUTH)], b"")
        .await
        .unwrap()
}

/// Three dead letters and a broken file, listed two a page: the first page (returned) has
/// two entries and reports the broken file, the next one the third entry and no next page;
/// a limit of 0 is refused.
async fn assert_dead_letters_paged(gw: &Gateway) -> serde_json::Value {
    let p1 = admin(gw, "GET", "/admin/failed?limit=2").await;
    assert_eq!(p1.status, 200);
    let j = p1.json();
    assert_eq!(j["entries"].as_array().unwrap().len(), 2);
    assert_eq!(j["skipped"].as_array().unwrap().len(), 1, "{j}");
    let next = j["next"].as_str().unwrap().to_string();
    let p2 = admin(gw, "GET", &format!("/admin/failed?limit=2&after={next}"))
        .await
        .json();
    assert_eq!(p2["entries"].as_array().unwrap().len(), 1);
    assert!(p2["next"].is_null());
    assert_eq!(
        admin(gw, "GET", "/admin/failed?limit=0").await.status,
        400,
        "a limit out of range is refused"
    );
    j
}

#[tokio::test]
async fn admin_api_pages_dead_letters_and_replays_them_to_their_sink_only() {
    let mock = Mock::start().await;
    let side = Mock::start().await;
    mock.set_default(Reply::Status(400, vec![], "{\"error\":\"schema\"}".into()));
    let gw = start_with_admin_token(&spool_config(&mock, &side, &["up", "side"], 1).build()).await;
    for id in ["adm-1", "adm-2", "adm-3"] {
        assert_eq!(gw.post_event(&event(id, "user.login")).await.status, 202);
    }
    let dir = gw.dir.path().join("spool/dead-letter");
    assert!(wait_until(Duration::from_secs(10), || json_files(&dir) == 3).await);
    std::fs::write(dir.join("20200101T000000000Z-00000000.json"), "{broken").unwrap();
    let j = assert_dead_letters_paged(&gw).await;

    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    let id = j["entries"][0]["id"].as_str().unwrap().to_string();
    let event_id = j["entries"][0]["event_id"].as_str().unwrap().to_string();
    let side_before = received(&side, "/side").len();
    let r = admin(&gw, "POST", &format!("/admin/failed/{id}/replay")).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["sink"], "up");
    assert!(received(&mock, "/up").contains(&event_id));
    assert_eq!(
        received(&side, "/side").len(),
        side_before,
        "side gets nothing again"
    );
    assert_eq!(json_files(&dir), 3, "two entries and the broken file left");
    for (path, want) in [
        ("/admin/failed/replay", 404),
        ("/admin/failed//replay", 400),
        ("/admin/failed/nope/replay", 404),
    ] {
        assert_eq!(admin(&gw, "POST", path).await.status, want, "{path}");
    }
}

/// The id of the only dead letter in `dir` (its file name without `.json`).
fn only_dead_letter_id(dir: &std::path::Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_string)
        })
        .next()
        .unwrap()
}

/// `POST path` from `n` callers at once; their answers.
async fn post_concurrently(gw: &Gateway, path: &str, n: usize) -> Vec<Resp> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (path, port) = (path.to_string(), gw.admin);
            tokio::spawn(async move { admin_at(port, "POST", &path).await })
        })
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    answers
}

/// Exactly one caller is told it succeeded; the others that overlapped are refused (409
/// `replay_in_progress`) or find the entry gone (404 `not_found`).
fn assert_one_success_and_the_rest_refused(answers: &[Resp]) {
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "exactly one success answer: {statuses:?}"
    );
    assert!(
        statuses.contains(&409),
        "replays that overlap the first are refused: {statuses:?}"
    );
    for r in answers.iter().filter(|r| r.status != 200) {
        match r.status {
            409 => assert_eq!(r.error(), "replay_in_progress"),
            404 => assert_eq!(r.error(), "not_found"),
            s => panic!("unexpected {s}: {:?}", r.json()),
        }
    }
}

/// Concurrent `POST /admin/failed/{id}/replay` of one dead letter: one replay claims it, the
/// sink gets the event once, exactly one caller is told `delivered`, the others are told the
/// replay is in progress (409) or the entry is gone (404), and nothing is left behind.
#[tokio::test]
async fn concurrent_admin_replays_of_one_dead_letter_deliver_it_once() {
    let mock = Mock::start().await;
    mock.set_default(Reply::Status(400, vec![], "{\"error\":\"schema\"}".into()));
    let gw = start_with_admin_token(&spool_config(&mock, &mock, &["up"], 1).build()).await;
    assert_eq!(
        gw.post_event(&event("race-1", "user.login")).await.status,
        202
    );
    let dir = gw.dir.path().join("spool/dead-letter");
    assert!(wait_until(Duration::from_secs(10), || json_files(&dir) == 1).await);
    let id = only_dead_letter_id(&dir);
    // The sink now takes events, slowly: every replay that starts overlaps the first.
    mock.set_default(Reply::Sleep(Duration::from_millis(400)));
    let before = mock.requests().len();
    let path = format!("/admin/failed/{id}/replay");
    let answers = post_concurrently(&gw, &path, 6).await;
    assert_one_success_and_the_rest_refused(&answers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent: Vec<String> = mock.requests()[before..]
        .iter()
        .flat_map(|c| ids_in(&c.body))
        .collect();
    assert_eq!(sent, vec!["race-1".to_string()], "delivered once");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "the entry and its claim are gone"
    );
    assert_eq!(admin(&gw, "POST", &path).await.status, 404);
}
