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

    // Kill points: under plain load; with a backlog (the SIEM refusing, so events are only
    // in the spool); and right after the SIEM came back (drainer mid-delivery).
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

    let t0 = Instant::now();
    while send.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "send did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&results).unwrap();
    let acked: HashSet<String> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, s)| s.starts_with('2'))
        .map(|(id, _)| id.to_string())
        .collect();
    assert!(
        acked.len() > 2000,
        "most events were acknowledged: {}",
        acked.len()
    );
    let done = wait_until(Duration::from_secs(60), || {
        let got: HashSet<String> = received(&mock, "/up").into_iter().collect();
        acked.is_subset(&got)
    })
    .await;
    let got: Vec<String> = received(&mock, "/up");
    let set: HashSet<&String> = got.iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !set.contains(id)).collect();
    assert!(
        done,
        "{} acknowledged events never reached the SIEM, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        gw.log_text()
    );
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

#[tokio::test]
async fn outage_keeps_accepting_and_delivers_in_order_after_recovery() {
    let mock = Mock::start().await;
    let side = Mock::start().await;
    // `up` is down (refuses, then times out); `side` stays healthy and is not held back.
    mock.set_default(Reply::Status(503, vec![], "{\"error\":\"down\"}".into()));
    let gw = Gateway::start(&spool_config(&mock, &side, &["up", "side"], 100).build()).await;
    let orgs = 4;
    let per_org = 15;
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
    let total = orgs * per_org;
    assert!(
        wait_until(Duration::from_secs(10), || received(&side, "/side").len()
            >= total)
        .await,
        "the healthy sink got everything during the other's outage"
    );
    let backlog = gw.metric("vfgate_spool_events{sink=\"up\"}").await;
    assert!(backlog >= 1.0, "backlog grows: {backlog}");
    assert_eq!(gw.metric("vfgate_spool_events{sink=\"side\"}").await, 0.0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let age = gw
        .metric("vfgate_spool_oldest_event_age_seconds{sink=\"up\"}")
        .await;
    assert!(age >= 1.0, "oldest age grows: {age}");
    assert!(gw.metric("vfgate_spool_bytes").await > 0.0);

    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    let ok = wait_until(Duration::from_secs(40), || {
        received(&mock, "/up").iter().collect::<HashSet<_>>().len() >= total
    })
    .await;
    assert!(ok, "all events arrive after recovery");
    // Per-org order: the first delivery of each id follows the org's sequence.
    let mut seen = HashSet::new();
    let mut per: HashMap<String, Vec<String>> = HashMap::new();
    for id in received(&mock, "/up") {
        if seen.insert(id.clone()) {
            per.entry(id[..2].to_string()).or_default().push(id);
        }
    }
    for (org, ids) in per {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "org {org} in order");
    }
    assert_eq!(gw.metric("vfgate_spool_events{sink=\"up\"}").await, 0.0);
    assert_eq!(
        gw.metric("vfgate_spool_oldest_event_age_seconds{sink=\"up\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn full_spool_answers_503_and_still_delivers_everything_accepted() {
    let mock = Mock::start().await;
    mock.set_default(Reply::Status(503, vec![], "{}".into()));
    let cfg = spool_config(&mock, &mock, &["up"], 100)
        .with_in("[spool]", r#"max_bytes = "64KiB""#)
        .build();
    let gw = Gateway::start_with(&cfg, "max_body_bytes = \"8KiB\"", &[]).await;
    let pad = "x".repeat(1000);
    let mut accepted = Vec::new();
    let mut full = None;
    for n in 0..200 {
        let body = format!(
            r#"{{"event_id":"full-{n:04}","event_type":"user.login","timestamp":"{}","pad":"{pad}"}}"#,
            now_rfc3339()
        );
        let r = gw.post_event(&body).await;
        match r.status {
            202 => accepted.push(format!("full-{n:04}")),
            503 => {
                full = Some(r);
                break;
            }
            s => panic!("unexpected {s}: {:?}", r.json()),
        }
    }
    let r = full.expect("the spool fills up");
    assert_eq!(r.error(), "spool_full");
    assert_eq!(r.header("retry-after"), Some("30"));
    assert!(accepted.len() >= 40, "{}", accepted.len());
    let ready = request(gw.admin, "GET", "/readyz", &[], b"").await.unwrap();
    assert_eq!(ready.status, 503);
    assert!(String::from_utf8_lossy(&ready.body).contains("spool_full"));
    assert_eq!(
        gw.metric("vfgate_requests_total{outcome=\"spool_full\",source=\"syvault\"}")
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
    let t0 = Instant::now();
    loop {
        let r = request(gw.admin, "GET", "/readyz", &[], b"").await.unwrap();
        if r.status == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = gw.post_event(&event("after-full", "user.login")).await;
    assert_eq!(r.status, 202);
}

#[tokio::test]
async fn refused_and_expired_events_become_dead_letters_replayed_to_their_sink_only() {
    let mock = Mock::start().await;
    let side = Mock::start().await;
    mock.set_default(Reply::Compute(std::sync::Arc::new(|c: &Captured| {
        let body = String::from_utf8_lossy(&c.body);
        if body.contains("dl-bad") {
            (400, "{\"error\":\"schema\"}".into())
        } else if body.contains("dl-slow") {
            (500, "{}".into())
        } else {
            (200, "{}".into())
        }
    })));
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
    assert_eq!(
        gw.metric("vfgate_dead_letter_events_total{reason=\"rejected\",sink=\"up\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("vfgate_dead_letter_events_total{reason=\"expired\",sink=\"up\"}")
            .await,
        1.0
    );
    let (code, out, err) = run_cli(&["failed", "list", "--dir", &dir_s], &[], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dl-bad") && out.contains("dl-slow"), "{out}");
    assert!(out.contains("rejected") && out.contains("expired"), "{out}");
    // The far side's own statuses, not a generic error.
    let line = |id: &str| out.lines().find(|l| l.contains(id)).unwrap().to_string();
    assert!(line("dl-bad").contains(" 400 "), "{out}");
    assert!(line("dl-slow").contains(" 500 "), "{out}");

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
    let cfg_path = gw.dir.path().join("vfgate.toml");
    // The mock SIEM runs on this test's runtime: wait for the CLI on a blocking thread.
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(
            &[
                "failed",
                "replay",
                "--all",
                "--dir",
                &dir_s,
                "--config",
                cfg_path.to_str().unwrap(),
            ],
            &[("VF_SECRET", SECRET)],
            None,
        )
    })
    .await
    .unwrap();
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

#[tokio::test]
async fn spooled_webhook_sink_retries_on_its_schedule_then_dead_letters() {
    let far = Mock::start().await;
    far.set_default(Reply::Status(500, vec![], "{}".into()));
    let cfg = Toml::new()
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
        .build();
    let gw = Gateway::start(&cfg).await;
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
    // The entry says where it was going, as a sender-mode entry does: the sink's type and
    // URL (never its query string, which may carry a key), and the webhook version it sent.
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        entry["target"],
        format!("webhook http://127.0.0.1:{}/v1/events", far.port),
        "{entry}"
    );
    assert_eq!(entry["version"], "2", "{entry}");
    assert_eq!(entry["sink"], "relay");
    assert!(!entry.to_string().contains("s3cr3t-in-query"), "{entry}");
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

#[tokio::test]
async fn admin_api_pages_dead_letters_and_replays_them_to_their_sink_only() {
    let mock = Mock::start().await;
    let side = Mock::start().await;
    mock.set_default(Reply::Status(400, vec![], "{\"error\":\"schema\"}".into()));
    let cfg = spool_config(&mock, &side, &["up", "side"], 1).build();
    let token = "admin-token-0123456789abcdef";
    let gw = Gateway::start_admin(
        &cfg,
        "token = { env = \"ADMIN_TOKEN\" }",
        &[("ADMIN_TOKEN", token)],
    )
    .await;
    for id in ["adm-1", "adm-2", "adm-3"] {
        assert_eq!(gw.post_event(&event(id, "user.login")).await.status, 202);
    }
    let dir = gw.dir.path().join("spool/dead-letter");
    assert!(wait_until(Duration::from_secs(10), || json_files(&dir) == 3).await);
    std::fs::write(dir.join("20200101T000000000Z-00000000.json"), "{broken").unwrap();
    let auth = format!("Bearer {token}");
    let get = |q: String| {
        let auth = auth.clone();
        async move {
            request(gw.admin, "GET", &q, &[("authorization", &auth)], b"")
                .await
                .unwrap()
        }
    };
    let p1 = get("/admin/failed?limit=2".into()).await;
    assert_eq!(p1.status, 200);
    let j = p1.json();
    assert_eq!(j["entries"].as_array().unwrap().len(), 2);
    assert_eq!(j["skipped"].as_array().unwrap().len(), 1, "{j}");
    let next = j["next"].as_str().unwrap().to_string();
    let p2 = get(format!("/admin/failed?limit=2&after={next}"))
        .await
        .json();
    assert_eq!(p2["entries"].as_array().unwrap().len(), 1);
    assert!(p2["next"].is_null());
    assert_eq!(
        get("/admin/failed?limit=0".into()).await.status,
        400,
        "a limit out of range is refused"
    );

    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    let id = j["entries"][0]["id"].as_str().unwrap().to_string();
    let event_id = j["entries"][0]["event_id"].as_str().unwrap().to_string();
    let side_before = received(&side, "/side").len();
    let r = request(
        gw.admin,
        "POST",
        &format!("/admin/failed/{id}/replay"),
        &[("authorization", &auth)],
        b"",
    )
    .await
    .unwrap();
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
        let r = request(gw.admin, "POST", path, &[("authorization", &auth)], b"")
            .await
            .unwrap();
        assert_eq!(r.status, want, "{path}");
    }
}

/// Concurrent `POST /admin/failed/{id}/replay` of one dead letter: one replay claims it, the
/// sink gets the event once, exactly one caller is told `delivered`, the others are told the
/// replay is in progress (409) or the entry is gone (404), and nothing is left behind.
#[tokio::test]
async fn concurrent_admin_replays_of_one_dead_letter_deliver_it_once() {
    let mock = Mock::start().await;
    mock.set_default(Reply::Status(400, vec![], "{\"error\":\"schema\"}".into()));
    let cfg = spool_config(&mock, &mock, &["up"], 1).build();
    let token = "admin-token-0123456789abcdef";
    let gw = Gateway::start_admin(
        &cfg,
        "token = { env = \"ADMIN_TOKEN\" }",
        &[("ADMIN_TOKEN", token)],
    )
    .await;
    assert_eq!(
        gw.post_event(&event("race-1", "user.login")).await.status,
        202
    );
    let dir = gw.dir.path().join("spool/dead-letter");
    assert!(wait_until(Duration::from_secs(10), || json_files(&dir) == 1).await);
    let id = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_string)
        })
        .next()
        .unwrap();
    // The sink now takes events, slowly: every replay that starts overlaps the first.
    mock.set_default(Reply::Sleep(Duration::from_millis(400)));
    let before = mock.requests().len();
    let auth = format!("Bearer {token}");
    let path = format!("/admin/failed/{id}/replay");
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let (auth, path, port) = (auth.clone(), path.clone(), gw.admin);
            tokio::spawn(async move {
                request(port, "POST", &path, &[("authorization", &auth)], b"")
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
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
    let again = request(gw.admin, "POST", &path, &[("authorization", &auth)], b"")
        .await
        .unwrap();
    assert_eq!(again.status, 404);
}
