//! The spool's restart matrix: SIGTERM and kill -9, each (a) before any delivery with the
//! SIEM down, (b) mid-backlog, (c) with several segments, (d) after a byte flip in a sealed
//! segment. Every 202 is delivered after the restart (for (d): everything outside the
//! quarantined record, which is counted).

use crate::util::*;
use std::collections::HashSet;
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Kill,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Case {
    BeforeFirstDelivery,
    MidBacklog,
    SeveralSegments,
    FlippedByte,
}

/// A spool, the source acknowledging once spooled, and one HTTP sink sending one event a
/// request.
fn config(mock: &Mock) -> Toml {
    Toml::new()
        .spool()
        .source(&["up"])
        .with(r#"ack = "spool""#)
        .http_sink("up", &mock.url("/up"))
        .with(r#"timeout = "1s""#)
        .with("batch = { max_events = 1 }")
}

fn body(n: usize, pad: usize) -> String {
    format!(
        r#"{{"event_id":"rm-{n:04}","event_type":"user.login","timestamp":"{}","context":{{"org_id":"org_1"}},"pad":"{}"}}"#,
        now_rfc3339(),
        "p".repeat(pad)
    )
}

fn delivered(mock: &Mock) -> HashSet<String> {
    mock.requests()
        .iter()
        .filter(|c| c.status == 200)
        .filter_map(|c| {
            let t = String::from_utf8_lossy(&c.body).to_string();
            let i = t.find("\"rm-")?;
            Some(t[i + 1..i + 8].to_string())
        })
        .collect()
}

fn segments(gw: &Gateway) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(gw.dir.path().join("spool/syvault"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

/// Cases with 4 KiB segments, so that their events fill several.
fn small(case: Case) -> bool {
    matches!(case, Case::SeveralSegments | Case::FlippedByte)
}

/// How many events a case posts, and the padding of each.
fn events(case: Case) -> (usize, usize) {
    match case {
        Case::BeforeFirstDelivery => (5, 10),
        Case::MidBacklog => (30, 10),
        Case::SeveralSegments | Case::FlippedByte => (40, 400),
    }
}

/// Starts a gateway with the SIEM down and posts the case's events, each acknowledged; in
/// `MidBacklog` the SIEM takes the first 10 before the stop.
async fn acknowledged_backlog(mock: &Mock, case: Case) -> Gateway {
    mock.set_default(Reply::Status(503, vec![], "{}".into()));
    let mut cfg = config(mock);
    if small(case) {
        cfg = cfg.with_in("[spool]", r#"segment_bytes = "4KiB""#);
    }
    let gw = Gateway::start(&cfg.build()).await;
    let (n, pad) = events(case);
    if case == Case::MidBacklog {
        for _ in 0..10 {
            mock.push(Reply::Status(200, vec![], "{}".into()));
        }
    }
    for i in 0..n {
        let r = gw.post_event(&body(i, pad)).await;
        assert_eq!(r.status, 202, "{:?}", r.json());
    }
    if case == Case::MidBacklog {
        assert!(
            wait_until(Duration::from_secs(10), || delivered(mock).len() >= 10).await,
            "part of the backlog went out"
        );
    }
    gw
}

fn stop_gateway(gw: &mut Gateway, stop: Stop) {
    match stop {
        Stop::Term => {
            let st = gw.terminate();
            assert_eq!(st.code(), Some(0));
        }
        Stop::Kill => gw.kill9(),
    }
}

/// Whole audit events on disk: private files in private directories.
fn assert_spool_is_private(gw: &Gateway) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for d in [
        "spool",
        "spool/syvault",
        "spool/syvault/cursors",
        "spool/dedupe",
    ] {
        assert_eq!(mode(&gw.dir.path().join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&segments(gw)[0]), 0o600);
    assert_eq!(mode(&gw.dir.path().join("spool/syvault/cursors/up")), 0o600);
}

/// Flips one byte of rm-0003's payload, in the first (sealed) segment.
fn flip_a_byte_of_rm_0003(gw: &Gateway) {
    let seg = &segments(gw)[0];
    let mut b = std::fs::read(seg).unwrap();
    let at = b
        .windows(7)
        .position(|w| w == b"rm-0003")
        .expect("in the first segment");
    b[at + 20] ^= 0x01;
    std::fs::write(seg, &b).unwrap();
}

/// Waits for every event in `want` to be delivered; what was.
async fn assert_all_delivered(
    mock: &Mock,
    gw: &Gateway,
    want: &HashSet<String>,
    what: &str,
) -> HashSet<String> {
    let ok = wait_until(Duration::from_secs(30), || want.is_subset(&delivered(mock))).await;
    let got = delivered(mock);
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(
        ok,
        "{what}: {} acknowledged events not delivered: {missing:?}\n{}",
        missing.len(),
        gw.log_text()
    );
    got
}

/// The damaged record is not sent, but counted, quarantined and logged.
async fn assert_the_damaged_record_is_quarantined(gw: &Gateway, got: &HashSet<String>) {
    assert!(!got.contains("rm-0003"), "the damaged record is not sent");
    assert_eq!(
        gw.metric("vfgate_spool_corrupt_records_total{source=\"syvault\"}")
            .await,
        1.0
    );
    let q = std::fs::read_dir(gw.dir.path().join("spool/quarantine"))
        .unwrap()
        .count();
    assert_eq!(q, 1, "the damaged range is quarantined");
    assert!(gw.log_text().contains("damaged records skipped"));
}

/// Waits up to 5 s for the sink's backlog to reach 0: the mock records a batch before the
/// gateway reads its answer and moves the cursor, so it does so a moment after the last event
/// arrived.
async fn assert_backlog_drains(gw: &Gateway, what: &str) {
    let t0 = std::time::Instant::now();
    while gw.metric("vfgate_spool_events{sink=\"up\"}").await != 0.0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(stop: Stop, case: Case) {
    let mock = Mock::start().await;
    let mut gw = acknowledged_backlog(&mock, case).await;
    stop_gateway(&mut gw, stop);
    if small(case) {
        let segs = segments(&gw);
        assert!(segs.len() >= 3, "several segments: {}", segs.len());
    }
    assert_spool_is_private(&gw);
    let mut lost = HashSet::new();
    if case == Case::FlippedByte {
        flip_a_byte_of_rm_0003(&gw);
        lost.insert("rm-0003".to_string());
    }
    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    gw.restart().await;
    let want: HashSet<String> = (0..events(case).0)
        .map(|i| format!("rm-{i:04}"))
        .filter(|id| !lost.contains(id))
        .collect();
    let got = assert_all_delivered(&mock, &gw, &want, &format!("{stop:?} {case:?}")).await;
    if case == Case::FlippedByte {
        assert_the_damaged_record_is_quarantined(&gw, &got).await;
    }
    if small(case) {
        assert!(
            wait_until(Duration::from_secs(5), || segments(&gw).len() == 1).await,
            "drained segments reclaimed: {:?}",
            segments(&gw)
        );
    }
    assert_backlog_drains(&gw, "backlog back to 0").await;
}

#[tokio::test]
async fn sigterm_before_the_first_delivery_with_the_siem_down() {
    run(Stop::Term, Case::BeforeFirstDelivery).await;
}

#[tokio::test]
async fn kill_9_before_the_first_delivery_with_the_siem_down() {
    run(Stop::Kill, Case::BeforeFirstDelivery).await;
}

#[tokio::test]
async fn sigterm_mid_backlog() {
    run(Stop::Term, Case::MidBacklog).await;
}

#[tokio::test]
async fn kill_9_mid_backlog() {
    run(Stop::Kill, Case::MidBacklog).await;
}

#[tokio::test]
async fn sigterm_with_several_segments() {
    run(Stop::Term, Case::SeveralSegments).await;
}

#[tokio::test]
async fn kill_9_with_several_segments() {
    run(Stop::Kill, Case::SeveralSegments).await;
}

#[tokio::test]
async fn sigterm_then_a_flipped_byte_in_a_sealed_segment() {
    run(Stop::Term, Case::FlippedByte).await;
}

#[tokio::test]
async fn kill_9_then_a_flipped_byte_in_a_sealed_segment() {
    run(Stop::Kill, Case::FlippedByte).await;
}

#[tokio::test]
async fn a_renamed_sink_with_a_backlog_refuses_to_start_and_keeps_the_events() {
    let mock = Mock::start().await;
    mock.set_default(Reply::Status(503, vec![], "{}".into()));
    let mut gw = Gateway::start(&config(&mock).build()).await;
    for i in 0..3 {
        assert_eq!(gw.post_event(&body(i, 10)).await.status, 202);
    }
    assert_eq!(gw.terminate().code(), Some(0));
    let cfg = gw.dir.path().join("vfgate.toml");
    let original = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        original
            .replace("sinks = [\"up\"]", "sinks = [\"up2\"]")
            .replace("[sink.up]", "[sink.up2]"),
    )
    .unwrap();
    let dir = gw.dir.path().to_path_buf();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["serve", "--config", cfg.to_str().unwrap()])
            .current_dir(&dir)
            .env("VF_SECRET", SECRET);
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
    .await
    .unwrap();
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("3 undelivered events for sink \"up\""),
        "names the orphaned backlog: {err}"
    );
    // Back under its old name, the backlog is delivered.
    std::fs::write(gw.dir.path().join("vfgate.toml"), original).unwrap();
    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    gw.restart().await;
    assert!(
        wait_until(Duration::from_secs(10), || delivered(&mock).len() == 3).await,
        "{}",
        gw.log_text()
    );
}

#[tokio::test]
async fn damage_to_the_last_record_after_delivery_never_costs_a_later_event() {
    // The probe: three delivered (cursor 3), one bit of the last record flipped at rest, a
    // restart, three more acknowledged: all three reach the sink.
    let mock = Mock::start().await;
    mock.set_default(Reply::Status(200, vec![], "{}".into()));
    let mut gw = Gateway::start(&config(&mock).build()).await;
    for i in 0..3 {
        assert_eq!(gw.post_event(&body(i, 10)).await.status, 202);
    }
    assert!(wait_until(Duration::from_secs(10), || delivered(&mock).len() == 3).await);
    assert_backlog_drains(&gw, "cursor moved past all three").await;
    assert_eq!(gw.terminate().code(), Some(0));
    let seg = segments(&gw).pop().unwrap();
    let mut b = std::fs::read(&seg).unwrap();
    let n = b.len();
    b[n - 3] ^= 0x01; // inside the payload of rm-0002, the last record
    std::fs::write(&seg, &b).unwrap();
    gw.restart().await;
    for i in 3..6 {
        assert_eq!(gw.post_event(&body(i, 10)).await.status, 202);
    }
    let want: HashSet<String> = (0..6).map(|i| format!("rm-{i:04}")).collect();
    let ok = wait_until(Duration::from_secs(10), || delivered(&mock) == want).await;
    assert!(
        ok,
        "missing: {:?}\n{}",
        want.difference(&delivered(&mock)).collect::<Vec<_>>(),
        gw.log_text()
    );
    // The damaged record is counted once, and the sink got nothing twice.
    assert_eq!(
        gw.metric("vfgate_spool_corrupt_records_total{source=\"syvault\"}")
            .await,
        1.0
    );
    assert_eq!(
        mock.requests().len(),
        6,
        "each event delivered exactly once"
    );
}
