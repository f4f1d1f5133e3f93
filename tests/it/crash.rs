//! Crash test of the real binary: `vfgate serve` with `ack = "spool"` in front of an
//! Elasticsearch-style mock (`_bulk` with `create` and `_id`: a second create of an id is a
//! 409) under `vfgate send --generate` load, the SIEM going down, hanging past the sink's
//! timeout and coming back on a seeded schedule, and kill -9 at seeded random moments, the
//! first before any delivery and several while the SIEM is down. Afterwards every id that got
//! a 2xx is indexed, each document was created exactly once, and nothing was dead-lettered.
//!
//! `VFGATE_CRASH_SEED` replays a run (the seed is printed); `VFGATE_CRASH_KILLS` sets the
//! number of kills (default 12). `scripts/crash.sh --minutes N` runs the long variant.

use crate::util::*;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Siem {
    Up,
    Down,
    Hang,
}

/// An Elasticsearch `_bulk` endpoint: `create` of a new `_id` is 201, of a known one 409.
#[derive(Clone, Default)]
struct Index {
    created: Arc<Mutex<HashMap<String, usize>>>,
    conflicts: Arc<Mutex<usize>>,
}

impl Index {
    fn reply(&self) -> Reply {
        let me = self.clone();
        Reply::Compute(Arc::new(move |q: &Captured| {
            let text = String::from_utf8_lossy(&q.body).to_string();
            let mut items = Vec::new();
            for action in text.lines().step_by(2) {
                let v: serde_json::Value = serde_json::from_str(action).unwrap();
                let id = v["create"]["_id"]
                    .as_str()
                    .expect("create with _id")
                    .to_string();
                let mut c = me.created.lock().unwrap();
                let status = if c.contains_key(&id) {
                    *me.conflicts.lock().unwrap() += 1;
                    409
                } else {
                    c.insert(id.clone(), 1);
                    201
                };
                items.push(serde_json::json!({"create": {"_id": id, "status": status}}));
            }
            (
                200,
                serde_json::json!({"errors": items.iter().any(|i| i["create"]["status"] != 201), "items": items})
                    .to_string(),
            )
        }))
    }

    fn set(&self, mock: &Mock, s: Siem) {
        mock.set_default(match s {
            Siem::Up => self.reply(),
            Siem::Down => Reply::Status(503, vec![], "{\"error\":\"down\"}".into()),
            Siem::Hang => Reply::Sleep(Duration::from_millis(1500)),
        });
    }
}

fn config(mock: &Mock) -> String {
    Toml::new()
        .spool()
        .with(r#"segment_bytes = "256KiB""#)
        .source(&["es"])
        .with(r#"ack = "spool""#)
        .sink("es", "elastic")
        .with(&format!(r#"url = "{}""#, mock.url("")))
        .with(r#"index = "logs-syvault.audit-default""#)
        .with(r#"op = "create""#)
        .with(r#"compression = "none""#)
        .with(r#"timeout = "1s""#)
        .with(r#"batch = { max_events = 200, linger = "5ms" }"#)
        .build()
}

/// A number from the environment variable `name`, or `default`.
fn from_env<T: std::str::FromStr>(name: &str, default: impl FnOnce() -> T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(default)
}

/// The first kill: events acknowledged, none delivered yet (the SIEM is down).
async fn kill_before_the_first_delivery(gw: &mut Gateway, index: &Index) {
    let t0 = Instant::now();
    while gw
        .metric("vfgate_requests_total{outcome=\"spooled\",scheme=\"vf\",source=\"syvault\"}")
        .await
        < 5.0
    {
        assert!(t0.elapsed() < Duration::from_secs(20), "no 202 came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(index.created.lock().unwrap().is_empty());
    gw.kill9();
    gw.restart().await;
}

/// Kills 2..=kills: the SIEM set to a random state, a kill -9 after a random wait, a restart.
/// A line for each kill.
async fn kill_at_random_moments(
    gw: &mut Gateway,
    mock: &Mock,
    index: &Index,
    rng: &mut rand::rngs::StdRng,
    kills: usize,
) -> Vec<String> {
    let mut log = Vec::new();
    for k in 2..=kills {
        let state = match rng.random_range(0..3) {
            0 => Siem::Up,
            1 => Siem::Down,
            _ => Siem::Hang,
        };
        index.set(mock, state);
        let wait = rng.random_range(200..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        gw.kill9();
        log.push(format!("kill {k}: after {wait} ms, SIEM {state:?}"));
        gw.restart().await;
    }
    log
}

/// Waits up to 60 s for every acknowledged id to be in the index.
async fn assert_every_acknowledged_event_is_indexed(
    index: &Index,
    acked: &HashSet<String>,
    seed: u64,
    gw: &Gateway,
) {
    let t1 = Instant::now();
    loop {
        let created: HashSet<String> = index.created.lock().unwrap().keys().cloned().collect();
        let missing: Vec<&String> = acked.difference(&created).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "seed {seed}: {} acknowledged events never reached the index, e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn kill_9_at_random_moments_with_a_flapping_siem_loses_and_duplicates_nothing() {
    let seed: u64 = from_env("VFGATE_CRASH_SEED", rand::random);
    let kills: usize = from_env("VFGATE_CRASH_KILLS", || 12);
    eprintln!("crash test: VFGATE_CRASH_SEED={seed} VFGATE_CRASH_KILLS={kills}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mock = Mock::start().await;
    let index = Index::default();
    index.set(&mock, Siem::Down);
    let mut gw = Gateway::start(&config(&mock)).await;
    let results = gw.dir.path().join("results.tsv");
    let rate = 400;
    let events = (rate as usize) * (kills * 11 / 10 + 4);
    let retries = ["--retry-schedule", "200ms,500ms,1s,2s"];
    let mut send = send_load(&gw, events, rate, &results, &retries);

    kill_before_the_first_delivery(&mut gw, &index).await;
    let mut log = vec!["kill 1: before the first delivery, SIEM down".to_string()];
    log.extend(kill_at_random_moments(&mut gw, &mock, &index, &mut rng, kills).await);
    index.set(&mock, Siem::Up);
    eprintln!("{}", log.join("\n"));

    wait_for_sender(&mut send, Duration::from_secs(90)).await;
    let text = std::fs::read_to_string(&results).unwrap();
    let acked = acknowledged(&text);
    assert!(
        acked.len() > events / 2,
        "most events were acknowledged: {} of {events}",
        acked.len()
    );
    assert_every_acknowledged_event_is_indexed(&index, &acked, seed, &gw).await;
    // Every document in the index is an event that was sent (nothing made up or mangled),
    // and a redelivery after a kill was a create the index refused (409), never a second
    // document.
    let created = index.created.lock().unwrap();
    let sent: HashSet<&str> = text.lines().filter_map(|l| l.split('\t').next()).collect();
    assert!(
        created.keys().all(|id| sent.contains(id.as_str())),
        "the index holds only events that were sent"
    );
    let dead = gw.dir.path().join("spool/dead-letter");
    let dead_letters = std::fs::read_dir(&dead).map(|d| d.count()).unwrap_or(0);
    assert_eq!(dead_letters, 0, "nothing was dead-lettered");
    eprintln!(
        "crash test seed {seed}: {kills} kills, {} sent, {} acknowledged, {} indexed, {} repeated creates answered 409",
        text.lines().count(),
        acked.len(),
        created.len(),
        index.conflicts.lock().unwrap()
    );
}
