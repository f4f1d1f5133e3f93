//! The guarantees at the edges the spool's fault model does not reach: the dedupe journal
//! after a disk-full, pruning and damage at rest. Each test is named after what it guards;
//! the disk-full ones mount a small tmpfs (root).

use crate::util::*;
use std::time::Duration;

/// A valid event of about 6 KiB: more than a page, so that on a nearly full disk part of
/// its write lands before ENOSPC.
fn big_event() -> String {
    event("big", "user.login").replace(
        "\"extra_field\"",
        &format!("\"pad\":\"{}\",\"extra_field\"", "p".repeat(6000)),
    )
}

/// The memory dedupe journal in `{dir}/dedupe` (set `dir` to move it), the source, and a
/// file sink `archive` in `{dir}/events.ndjson`.
fn forward_config() -> Toml {
    Toml::new()
        .dedupe()
        .with(r#"dir = "{dir}/dedupe""#)
        .source(&["archive"])
        .with(r#"max_future_skew = "60s""#)
        .file_sink("archive", "{dir}/events.ndjson")
}

#[tokio::test]
async fn a_disk_full_dedupe_journal_still_remembers_every_id_after_a_restart() {
    let disk = Tmpfs::mount("64k");
    let cfg = forward_config()
        .with_in(
            "[dedupe]",
            &format!(r#"dir = "{}/dedupe""#, disk.path.display()),
        )
        .build();
    let mut gw = Gateway::start(&cfg).await;
    // The journal's page fills up mid-record while the disk has no room for another.
    disk.fill();
    let ids: Vec<String> = (0..400).map(|i| format!("full-{i:03}")).collect();
    for id in &ids {
        let r = gw.post_event(&event(id, "user.login")).await;
        assert_eq!(r.status, 200, "{id}: {:?}", r.json());
    }
    disk.free();
    let r = gw.post_event(&event("after", "user.login")).await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.terminate().code(), Some(0));
    gw.restart().await;
    let mut accepted = Vec::new();
    for id in ids.iter().chain(std::iter::once(&"after".to_string())) {
        let r = gw.post_event(&event(id, "user.login")).await;
        if r.status_field() != "duplicate" {
            accepted.push(id.clone());
        }
    }
    assert!(
        accepted.is_empty(),
        "{} replays accepted after the restart: {:?}",
        accepted.len(),
        &accepted[..accepted.len().min(5)]
    );
}

#[tokio::test]
async fn a_future_dated_mark_outlives_journal_pruning_and_a_restart() {
    // ttl 4s: files rotate every second and files older than the TTL were pruned; the
    // event is dated 50s ahead, so its mark lives ~54s, far longer than its file's age.
    let mut gw = Gateway::start(
        &forward_config()
            .with_in("[dedupe]", r#"ttl = "4s""#)
            .build(),
    )
    .await;
    let ahead = event_dated("ahead", 50);
    assert_eq!(gw.post_event(&ahead).await.status_field(), "accepted");
    // Past a TTL and more of file age, with rotations (an accepted event may rotate and
    // prune).
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let r = gw
            .post_event(&event(&format!("tick-{i}"), "user.login"))
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(gw.terminate().code(), Some(0));
    gw.restart().await;
    let r = gw.post_event(&ahead).await;
    assert_eq!(r.status_field(), "duplicate", "{:?}", r.json());
    let lines = std::fs::read_to_string(gw.dir.path().join("events.ndjson")).unwrap();
    assert_eq!(
        lines.matches("\"ahead\"").count(),
        1,
        "the sink holds one copy"
    );
}

#[tokio::test]
async fn damage_to_the_dedupe_journal_at_rest_is_counted_and_a_damaged_seed_refuses_to_start() {
    let mut gw = Gateway::start(&forward_config().build()).await;
    for i in 0..3 {
        let r = gw.post_event(&event(&format!("d-{i}"), "user.login")).await;
        assert_eq!(r.status_field(), "accepted");
    }
    assert_eq!(gw.terminate().code(), Some(0));
    let dir = gw.dir.path().join("dedupe");
    let journal = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::metadata(p).unwrap().len() > 0 && p.extension().is_some_and(|x| x == "log")
        })
        .expect("a journal file with marks");
    let mut b = std::fs::read(&journal).unwrap();
    b[3] ^= 0x10; // one bit of the first mark
    std::fs::write(&journal, &b).unwrap();
    gw.restart().await;
    assert_eq!(
        gw.metric("vfgate_dedupe_journal_corrupt_records_total")
            .await,
        1.0
    );
    assert!(gw.log_text().contains("ERROR") && gw.log_text().contains("damaged records skipped"));
    // The other two are still duplicates.
    for i in 1..3 {
        let r = gw.post_event(&event(&format!("d-{i}"), "user.login")).await;
        assert_eq!(r.status_field(), "duplicate");
    }
    assert_eq!(gw.terminate().code(), Some(0));
    // One changed digit of the seed: serve refuses, naming the file.
    let seed = dir.join("seed");
    let text = std::fs::read_to_string(&seed).unwrap();
    let changed = format!(
        "{}{}",
        if text.starts_with('0') { '1' } else { '0' },
        &text[1..]
    );
    std::fs::write(&seed, changed).unwrap();
    let cfg = gw.dir.path().join("vfgate.toml");
    let out = std::process::Command::new(bin())
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .current_dir(gw.dir.path())
        .env("VF_SECRET", SECRET)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(seed.to_str().unwrap()) && err.contains("damaged"),
        "{err}"
    );
}

#[tokio::test]
async fn a_file_sink_after_a_disk_full_holds_only_whole_lines_and_never_names_its_path() {
    let disk = Tmpfs::mount("64k");
    let out = disk.path.join("events.ndjson");
    let cfg = forward_config()
        .with(&format!(r#"path = "{}""#, out.display()))
        .with(r#"retry = { budget = "500ms" }"#)
        .build();
    let gw = Gateway::start(&cfg).await;
    assert_eq!(
        gw.post_event(&event("first", "user.login")).await.status,
        200
    );
    disk.fill();
    // Larger than what is left of the file's last page: part of it lands, then ENOSPC.
    let big = big_event();
    let r = gw.post_event(&big).await;
    assert_eq!(r.status, 503, "{:?}", r.json());
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        !text.contains(out.to_str().unwrap()) && !text.contains("os error"),
        "{text}"
    );
    disk.free();
    assert_eq!(
        gw.post_event(&event("after", "user.login")).await.status,
        200
    );
    assert_eq!(gw.post_event(&big).await.status, 200, "the sender's retry");
    let lines = std::fs::read_to_string(&out).unwrap();
    let ids: Vec<String> = lines
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:.80}"));
            v["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids, ["first", "after", "big"]);
}

/// A spool in `spool_dir`, the source acknowledging once spooled, and a file sink.
fn spool_config(spool_dir: &str) -> String {
    Toml::new()
        .spool()
        .with(&format!(r#"dir = "{spool_dir}""#))
        .source(&["archive"])
        .with(r#"ack = "spool""#)
        .file_sink("archive", "{dir}/events.ndjson")
        .build()
}

async fn readyz(gw: &Gateway) -> (u16, String) {
    let r = request(gw.admin, "GET", "/readyz", &[], b"").await.unwrap();
    (r.status, String::from_utf8_lossy(&r.body).to_string())
}

#[tokio::test]
async fn a_spool_directory_removed_while_running_is_refused_not_acknowledged() {
    let gw = Gateway::start(&spool_config("{dir}/spool")).await;
    assert_eq!(
        gw.post_event(&event("before", "user.login")).await.status,
        202
    );
    // `rm -rf`, retried as an operator would: the drainer may be renaming a cursor file in it.
    let dir = gw.dir.path().join("spool/syvault");
    for _ in 0..50 {
        if std::fs::remove_dir_all(&dir).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!dir.exists());
    for i in 0..3 {
        let r = gw
            .post_event(&event(&format!("after-{i}"), "user.login"))
            .await;
        assert_eq!(r.status, 503, "{:?}", r.json());
        assert_eq!(r.json()["error"], "spool_error");
        assert!(r.header("retry-after").is_some());
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert!(!text.contains("/spool"), "no path to the sender: {text}");
    }
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("spool_unwritable"), "{body}");
    assert!(gw.log_text().contains("removed or replaced while running"));
}

#[tokio::test]
async fn a_full_spool_disk_tells_the_sender_a_fixed_sentence_and_recovers() {
    let disk = Tmpfs::mount("256k");
    let gw = Gateway::start(&spool_config(
        &disk.path.join("spool").display().to_string(),
    ))
    .await;
    assert_eq!(
        gw.post_event(&event("before", "user.login")).await.status,
        202
    );
    disk.fill();
    let big = big_event();
    let r = gw.post_event(&big).await;
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(r.json()["error"], "spool_error");
    assert!(r.header("retry-after").is_some());
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        !text.contains("seg-") && !text.contains("os error") && !text.contains("No space"),
        "{text}"
    );
    assert!(
        gw.log_text().contains("No space left on device"),
        "the log has the rest"
    );
    disk.free();
    assert_eq!(gw.post_event(&big).await.status, 202, "the sender's retry");
    let out = gw.dir.path().join("events.ndjson");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&out)
            .is_ok_and(|t| t.lines().count() == 2))
        .await
    );
}

#[tokio::test]
async fn a_resend_while_the_first_request_waits_past_its_in_flight_lifetime_is_in_flight() {
    let mock = Mock::start().await;
    mock.set_default(Reply::Sleep(Duration::from_secs(4)));
    let cfg = Toml::new()
        .dedupe()
        .with(r#"dir = "{dir}/dedupe""#)
        .with(r#"in_flight_ttl = "2s""#)
        .source(&["slow"])
        .http_sink("slow", &mock.url("/in"))
        .with(r#"timeout = "10s""#)
        .build();
    let gw = Gateway::start(&cfg).await;
    let body = event("evt_slow", "user.login");
    let (first, second) = tokio::join!(gw.post_event(&body), async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        gw.post_event(&body).await
    });
    assert_eq!(first.status_field(), "accepted");
    assert_eq!((second.status, second.error()), (409, "in_flight".into()));
    assert_eq!(mock.requests().len(), 1, "handed on once");
}
