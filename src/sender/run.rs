//! `vfgate send` and `vfgate failed ...`: file, test and load-generation modes, with per-org
//! ordering, progress output and a summary.

use super::{
    org_of, parse_header, parse_secret_ref, Answer, Outcome, SenderSettings, WebhookSender,
};
use crate::cli::{FailedCmd, SendArgs};
use crate::config::RawClientTls;
use crate::deadletter::{Claim, FailedStore, StoreError};
use crate::escape::{printable, printable_json, Printable};
use crate::secret::SecretRef;
use bytes::Bytes;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Exit codes.
pub const EXIT_OK: u8 = 0;
/// Some events were not delivered.
pub const EXIT_FAILED: u8 = 1;
/// Usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// Statistics of a run.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Requests whose final outcome is known.
    pub sent: u64,
    /// 2xx with `{"status":"accepted"}` (or any other 2xx body).
    pub accepted: u64,
    /// 2xx with `{"status":"duplicate"}`.
    pub duplicate: u64,
    /// 2xx with `{"status":"filtered"}`.
    pub filtered: u64,
    /// Final 4xx.
    pub client_errors: u64,
    /// Final 5xx.
    pub server_errors: u64,
    /// No answer.
    pub errors: u64,
    /// Round-trip time of every final attempt.
    pub latencies: Vec<Duration>,
    /// Failed events: (event_id, failed-store entry, last status or error).
    pub failed: Vec<(String, Option<String>, String)>,
}

impl Summary {
    fn record(&mut self, body: &[u8], outcome: &Outcome) {
        self.sent += 1;
        let last = match outcome {
            Outcome::Delivered { last, .. } => last,
            Outcome::Failed { last, .. } => last,
        };
        self.latencies.push(last.rtt);
        match last.status {
            Some(200..=299) => {
                let v: serde_json::Value = serde_json::from_slice(&last.body).unwrap_or_default();
                match v["status"].as_str() {
                    Some("duplicate") => self.duplicate += 1,
                    Some("filtered") => self.filtered += 1,
                    _ => self.accepted += 1,
                }
            }
            Some(400..=499) => self.client_errors += 1,
            Some(_) => self.server_errors += 1,
            None => self.errors += 1,
        }
        if let Outcome::Failed { entry, .. } = outcome {
            let id = super::event_fields(body).0;
            let what = last
                .status
                .map(|s| s.to_string())
                .or_else(|| last.error.clone())
                .unwrap_or_default();
            self.failed.push((id, entry.clone(), what));
        }
    }

    /// Latency percentile `p` (0..=100) of latencies sorted once by the caller.
    fn percentile_of(sorted: &[Duration], p: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[idx.min(sorted.len() - 1)]
    }

    /// Latency percentile `p` (0..=100).
    pub fn percentile(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        Self::percentile_of(&v, p)
    }

    /// The printed summary.
    pub fn render(&self, elapsed: Duration) -> String {
        let ms = |d: Duration| format!("{:.2}ms", d.as_secs_f64() * 1000.0);
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let pct = |p| Self::percentile_of(&sorted, p);
        format!(
            "sent {}: 2xx accepted {}, duplicate {}, filtered {}; 4xx {}; 5xx {}; errors {}\nlatency p50 {} p90 {} p99 {} max {}; {:.1} events/s over {:.2}s",
            self.sent,
            self.accepted,
            self.duplicate,
            self.filtered,
            self.client_errors,
            self.server_errors,
            self.errors,
            ms(pct(50.0)),
            ms(pct(90.0)),
            ms(pct(99.0)),
            ms(pct(100.0)),
            self.sent as f64 / elapsed.as_secs_f64().max(1e-9),
            elapsed.as_secs_f64()
        )
    }
}

/// Progress output: a bar on a terminal, periodic lines otherwise, nothing with `--quiet`.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    last: Instant,
    total: Option<u64>,
}

impl Progress {
    fn new(total: Option<u64>, quiet: bool) -> Progress {
        let term = std::io::stderr().is_terminal();
        let bar = (!quiet && term).then(|| {
            let b = match total {
                Some(n) => indicatif::ProgressBar::new(n),
                None => indicatif::ProgressBar::new_spinner(),
            };
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} {per_sec} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Progress {
            bar,
            plain: !quiet && !term,
            last: Instant::now(),
            total,
        }
    }

    fn update(&mut self, s: &Summary) {
        if let Some(b) = &self.bar {
            b.set_position(s.sent);
        } else if self.plain && self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            let total = self.total.map(|t| format!("/{t}")).unwrap_or_default();
            eprintln!(
                "progress: {}{total} done, {} failed",
                s.sent,
                s.failed.len()
            );
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn parse_tls(ca_file: &Option<std::path::PathBuf>) -> RawClientTls {
    RawClientTls {
        ca_file: ca_file.clone(),
        insecure_skip_verify: false,
    }
}

/// Sends events in order per org through `concurrency` workers; `retries` runs the schedule
/// for failed first attempts in the background (they do not hold back later events).
pub async fn send_ordered(
    sender: Arc<WebhookSender>,
    mut events: mpsc::Receiver<Bytes>,
    concurrency: usize,
    retries: bool,
    done: mpsc::UnboundedSender<(Bytes, Outcome)>,
) {
    let mut workers = Vec::new();
    let mut txs = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (tx, mut rx) = mpsc::channel::<Bytes>(256);
        txs.push(tx);
        let (sender, done) = (sender.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut retrying = tokio::task::JoinSet::new();
            while let Some(body) = rx.recv().await {
                let first = sender.attempt(&body).await;
                if first.1.ok() {
                    let _ = done.send((
                        body,
                        Outcome::Delivered {
                            attempts: 1,
                            last: first.1,
                        },
                    ));
                } else if retries {
                    let (sender, done) = (sender.clone(), done.clone());
                    retrying.spawn(async move {
                        let o = sender.retry(body.clone(), first).await;
                        let _ = done.send((body, o));
                    });
                } else {
                    let entry = sender.store_failed(&body, std::slice::from_ref(&first.0), None);
                    let _ = done.send((
                        body,
                        Outcome::Failed {
                            entry,
                            attempts: vec![first.0],
                            last: first.1,
                        },
                    ));
                }
            }
            while retrying.join_next().await.is_some() {}
        }));
    }
    while let Some(body) = events.recv().await {
        let org = org_of(&body).unwrap_or_default();
        let i = (xxhash_rust::xxh3::xxh3_64(org.as_bytes()) as usize) % txs.len();
        if txs[i].send(body).await.is_err() {
            break;
        }
    }
    drop(txs);
    for w in workers {
        let _ = w.await;
    }
}

/// A generated event of about `size` bytes.
pub fn generated_event(event_type: &str, org: usize, size: usize) -> Bytes {
    let mut r = [0u8; 14];
    getrandom::fill(&mut r).expect("OS random source");
    let ts = crate::time::now_rfc3339();
    let head = format!(
        r#"{{"event_id":"evt_{}","event_type":"{event_type}","timestamp":"{ts}","actor":{{"user_id":"usr_{}","email":"user{}@example.com"}},"target":{{"type":"session","id":"sess_{}"}},"context":{{"ip_address":"203.0.113.{}","org_id":"org_{org:06}","user_agent":"vfgate-send"#,
        hex::encode(&r[..8]),
        hex::encode(&r[8..12]),
        u16::from_le_bytes([r[12], r[13]]),
        hex::encode(&r[8..14]),
        1 + r[12] % 254,
    );
    let tail = "\"}}";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut s = head;
    if pad > 0 {
        s.push(' ');
        s.push_str(&"x".repeat(pad.saturating_sub(1)));
    }
    s.push_str(tail);
    Bytes::from(s)
}

const TYPES: &[&str] = &[
    "user.login.succeeded",
    "user.login.failed",
    "user.logout",
    "vault.item.read",
    "vault.item.updated",
    "admin.settings.changed",
];

fn settings_from(args: &SendArgs) -> Result<SenderSettings, String> {
    let headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let schedule = match &args.retry_schedule {
        Some(s) => s.clone(),
        None => super::DEFAULT_SCHEDULE.to_vec(),
    };
    Ok(SenderSettings {
        url: args.target.clone(),
        secret: SecretRef::Env {
            env: args.secret_env.clone(),
        },
        version: args.version.clone(),
        headers,
        timeout: args.timeout,
        schedule,
        failed: Some(FailedStore::new(&args.failed_dir)),
        tls: parse_tls(&args.ca_file),
    })
}

/// `vfgate send`.
pub async fn send(args: SendArgs) -> u8 {
    let settings = match settings_from(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let sender = match WebhookSender::new(settings) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    if args.test {
        let body = generated_event("vf.test", 0, 0);
        let (_, ans) = sender.attempt(&body).await;
        print_test(&ans);
        return if ans.ok() { EXIT_OK } else { EXIT_FAILED };
    }
    let t0 = Instant::now();
    let (etx, erx) = mpsc::channel::<Bytes>(1024);
    let (dtx, mut drx) = mpsc::unbounded_channel();
    let total;
    let producer: tokio::task::JoinHandle<Result<(), String>>;
    let retries;
    if let Some(n) = args.generate {
        let dups = ((n as f64) * args.duplicates / 100.0).round() as u64;
        total = Some(n + dups);
        retries = false;
        let (size, orgs, rate) = (args.size, args.orgs.max(1), args.rate);
        producer = tokio::spawn(async move {
            let mut sent: Vec<Bytes> = Vec::new();
            let mut tick = rate.filter(|r| *r > 0.0).map(|r| {
                let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                i
            });
            let all = n + dups;
            let mut made_dups = 0u64;
            for i in 0..all {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                // Spread the repeats evenly; a repeat goes to the same org worker as its
                // original and after it, as a sender's retry would.
                let want = (i + 1) * dups / all.max(1);
                let body = if want > made_dups && !sent.is_empty() {
                    made_dups += 1;
                    sent[(rand::random::<u64>() as usize) % sent.len()].clone()
                } else {
                    let b = generated_event(
                        TYPES[(i as usize) % TYPES.len()],
                        (i as usize) % orgs,
                        size,
                    );
                    sent.push(b.clone());
                    b
                };
                if etx.send(body).await.is_err() {
                    break;
                }
            }
            Ok(())
        });
    } else {
        total = None;
        retries = true;
        let file = args.file.clone();
        producer = tokio::task::spawn_blocking(move || {
            let reader: Box<dyn BufRead + Send> = match file.as_deref() {
                None => Box::new(std::io::BufReader::new(std::io::stdin())),
                Some(p) if p.as_os_str() == "-" => {
                    Box::new(std::io::BufReader::new(std::io::stdin()))
                }
                Some(p) => Box::new(std::io::BufReader::new(
                    std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?,
                )),
            };
            for (n, line) in reader.split(b'\n').enumerate() {
                let mut line = line.map_err(|e| format!("line {}: {e}", n + 1))?;
                if line.ends_with(b"\r") {
                    line.pop();
                }
                if line.iter().all(|c| c.is_ascii_whitespace()) {
                    continue;
                }
                if etx.blocking_send(Bytes::from(line)).is_err() {
                    break;
                }
            }
            Ok(())
        });
    }
    let sending = tokio::spawn(send_ordered(
        sender.clone(),
        erx,
        args.concurrency,
        retries,
        dtx,
    ));
    let mut progress = Progress::new(total, args.quiet);
    let mut summary = Summary::default();
    let mut results = match &args.results {
        None => None,
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Some(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("error: --results {}: {e}", p.display());
                return EXIT_USAGE;
            }
        },
    };
    while let Some((body, outcome)) = drx.recv().await {
        summary.record(&body, &outcome);
        progress.update(&summary);
        if let Some(w) = results.as_mut() {
            use std::io::Write;
            let last = match &outcome {
                Outcome::Delivered { last, .. } | Outcome::Failed { last, .. } => last,
            };
            let status = last
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "error".into());
            let id = crate::event::Event::parse(body.clone())
                .map(|e| e.event_id)
                .unwrap_or_default();
            let _ = writeln!(w, "{id}\t{status}");
        }
    }
    if let Some(mut w) = results {
        use std::io::Write;
        if let Err(e) = w.flush() {
            eprintln!("error: --results: {e}");
        }
    }
    progress.finish();
    let _ = sending.await;
    match producer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    }
    let out = summary.render(t0.elapsed());
    if !args.quiet || !summary.failed.is_empty() {
        println!("{out}");
    }
    for (id, entry, last) in &summary.failed {
        println!(
            "failed: event_id {} (last: {last}){}",
            printable(id),
            entry
                .as_ref()
                .map(|e| format!(", stored as {e} in {}", args.failed_dir.display()))
                .unwrap_or_default()
        );
    }
    if summary.failed.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

fn print_test(ans: &Answer) {
    let outcome = if ans.ok() { "delivered" } else { "failed" };
    let status = ans
        .status
        .map(|s| s.to_string())
        .unwrap_or_else(|| ans.error.clone().unwrap_or_default());
    println!("outcome: {outcome}");
    println!("status: {status}");
    println!("rtt: {:.2}ms", ans.rtt.as_secs_f64() * 1000.0);
    println!("reply: {}", printable(&String::from_utf8_lossy(&ans.body)));
}

/// Re-sends one claimed entry to its recorded target once; on success the entry is
/// removed, otherwise it goes back to the store with the attempt added. Either way the claim
/// is finished here (an entry that cannot be sent goes back untouched).
pub async fn replay_entry(
    claim: Claim,
    secret_override: Option<&str>,
    headers: &[(String, Vec<u8>)],
    timeout: Duration,
    tls: &RawClientTls,
) -> Result<Answer, String> {
    let entry = claim.entry();
    let id = entry.id.clone();
    let secret = match secret_override {
        Some(env) => Some(SecretRef::Env {
            env: env.to_string(),
        }),
        None => parse_secret_ref(&entry.secret_ref),
    };
    let Some(secret) = secret else {
        let why = format!(
            "entry {id} records no usable secret reference ({:?}); give --secret-env",
            entry.secret_ref
        );
        claim.release().map_err(|e| e.to_string())?;
        return Err(why);
    };
    let sender = match WebhookSender::new(SenderSettings {
        url: entry.target.clone(),
        secret,
        version: entry.version.clone(),
        headers: headers.to_vec(),
        timeout,
        schedule: vec![],
        failed: None,
        tls: tls.clone(),
    }) {
        Ok(s) => s,
        Err(e) => {
            claim.release().map_err(|e| e.to_string())?;
            return Err(e.to_string());
        }
    };
    let body = Bytes::from(entry.event.clone().into_bytes());
    let (log, ans) = sender.attempt(&body).await;
    if ans.ok() {
        claim.delivered().map_err(|e| e.to_string())?;
    } else {
        claim.keep(log).map_err(|e| e.to_string())?;
    }
    Ok(ans)
}

fn report_skipped(skipped: &[crate::deadletter::Skipped]) {
    for s in skipped {
        eprintln!("skipped {}: {}", s.file, s.reason);
    }
}

/// Sinks built from the gateway's config for replays, by name.
#[derive(Default)]
struct SinkCache(std::collections::HashMap<String, std::sync::Arc<dyn crate::sinks::Sink>>);

/// Replays a claimed dead letter of a spooled sink to that sink (built from `config`). The
/// line to print, as `Err` when it was not delivered (the entry is then back in the store).
async fn replay_sink_entry(
    claim: Claim,
    config: Option<&crate::config::Config>,
    cache: &mut SinkCache,
) -> Result<String, String> {
    let id = claim.entry().id.clone();
    let sink = claim.entry().sink.clone().unwrap_or_default();
    let sink = sink.as_str();
    let built = match built_sink(&id, sink, config, cache) {
        Ok(s) => s,
        Err(why) => {
            claim.release().map_err(|e| format!("{id}: {e}"))?;
            return Err(why);
        }
    };
    let metrics = crate::metrics::Metrics::new();
    match crate::spool::drain::replay_to_sink(claim, &*built, &metrics).await {
        Ok(r) if r.delivered => Ok(format!(
            "{id}: delivered to sink {} ({})",
            printable(sink),
            r.status
        )),
        Ok(r) => Err(format!(
            "{id}: sink {} did not take it ({}: {}), kept",
            printable(sink),
            r.status,
            printable(&r.detail.unwrap_or_default())
        )),
        Err(e) => Err(format!("{id}: {e}")),
    }
}

/// Sink `sink` of `config` (built once per run), for replaying entry `id`.
fn built_sink(
    id: &str,
    sink: &str,
    config: Option<&crate::config::Config>,
    cache: &mut SinkCache,
) -> Result<std::sync::Arc<dyn crate::sinks::Sink>, String> {
    let Some(config) = config else {
        return Err(format!(
            "{id}: a dead letter of sink {:?}: give --config FILE (the gateway's config) to deliver it to that sink",
            Printable(sink)
        ));
    };
    if let Some(s) = cache.0.get(sink) {
        return Ok(s.clone());
    }
    let spec = config
        .sinks
        .iter()
        .find(|s| s.common.name == sink)
        .ok_or_else(|| {
            format!(
                "{id}: sink {:?} is not in the config; entry kept",
                Printable(sink)
            )
        })?;
    let s = crate::sinks::build(spec).map_err(|e| format!("{id}: {e}"))?;
    cache.0.insert(sink.to_string(), s.clone());
    Ok(s)
}

/// `vfgate failed ...`.
pub async fn failed(cmd: FailedCmd) -> u8 {
    match cmd {
        FailedCmd::List { dir } => match FailedStore::new(&dir).list() {
            Ok(listing) => {
                report_skipped(&listing.skipped);
                let entries = listing.entries;
                let mut out = std::io::stdout();
                let _ = writeln!(
                    out,
                    "{:<33} {:<40} {:<24} {:<24} {:>8} {:<12} {:<28} LAST_ATTEMPT",
                    "ID", "TARGET", "EVENT_ID", "EVENT_TYPE", "ATTEMPTS", "LAST", "REASON"
                );
                for e in entries {
                    let last = e.attempts.last();
                    let status = last
                        .map(|a| {
                            a.status
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "error".into())
                        })
                        .unwrap_or_default();
                    let when = last.map(|a| a.at.clone()).unwrap_or_default();
                    let target = crate::client::Target::parse(&e.target)
                        .map(|t| t.origin())
                        .unwrap_or(e.target.clone());
                    let reason = match &e.sink {
                        Some(sink) => format!("{sink}: {}", e.reason),
                        None => e.reason.clone(),
                    };
                    let _ = writeln!(
                        out,
                        "{:<33} {:<40} {:<24} {:<24} {:>8} {:<12} {:<28} {}",
                        e.id,
                        printable(&target),
                        printable(&e.event_id),
                        printable(&e.event_type),
                        e.attempts.len(),
                        status,
                        printable(&reason),
                        printable(&when)
                    );
                }
                EXIT_OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_FAILED
            }
        },
        FailedCmd::Show { id, dir } => match FailedStore::new(&dir).get(&id) {
            Ok(e) => {
                let json = serde_json::to_string_pretty(&e).expect("json");
                println!("{}", printable_json(&json));
                EXIT_OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_FAILED
            }
        },
        FailedCmd::Replay {
            id,
            all,
            dir,
            secret_env,
            headers,
            timeout,
            ca_file,
            config,
        } => {
            let store = FailedStore::new(&dir);
            let headers = match headers
                .iter()
                .map(|h| parse_header(h))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_USAGE;
                }
            };
            let config = match config.as_deref().map(crate::config::Config::load) {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    eprintln!("error: {e}");
                    return EXIT_USAGE;
                }
            };
            // Each entry is claimed before it is replayed (another replay of it may be
            // running); its route decides how it is replayed.
            let ids: Vec<String> = match (id, all) {
                (Some(id), false) => vec![id],
                (None, true) => match store.list() {
                    Ok(v) => {
                        report_skipped(&v.skipped);
                        v.entries.into_iter().map(|e| e.id).collect()
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return EXIT_FAILED;
                    }
                },
                _ => {
                    eprintln!("error: give one ID or --all");
                    return EXIT_USAGE;
                }
            };
            let mut sinks = SinkCache::default();
            let mut failures = 0;
            for id in ids {
                let claim = match store.claim(&id) {
                    Ok(c) => c,
                    Err(StoreError::InProgress(_)) => {
                        failures += 1;
                        println!("{id}: another replay of it is in progress; skipped");
                        continue;
                    }
                    Err(e) => {
                        failures += 1;
                        println!("{id}: {e}");
                        continue;
                    }
                };
                let line = if claim.entry().sink_route().is_some() {
                    match replay_sink_entry(claim, config.as_ref(), &mut sinks).await {
                        Ok(line) => line,
                        Err(line) => {
                            failures += 1;
                            line
                        }
                    }
                } else {
                    match replay_entry(
                        claim,
                        secret_env.as_deref(),
                        &headers,
                        timeout,
                        &parse_tls(&ca_file),
                    )
                    .await
                    {
                        Ok(a) if a.ok() => format!("{id}: delivered ({})", a.status.unwrap_or(0)),
                        Ok(a) => {
                            failures += 1;
                            format!(
                                "{id}: failed ({}), kept",
                                a.status
                                    .map(|s| s.to_string())
                                    .or(a.error)
                                    .unwrap_or_default()
                            )
                        }
                        Err(e) => {
                            failures += 1;
                            format!("{id}: {e}")
                        }
                    }
                };
                println!("{line}");
            }
            if failures == 0 {
                EXIT_OK
            } else {
                EXIT_FAILED
            }
        }
        FailedCmd::Purge { older_than, dir } => {
            let now = crate::time::now_ms();
            match FailedStore::new(&dir).purge_before(now - older_than.as_millis() as i64) {
                Ok((n, skipped)) => {
                    report_skipped(&skipped);
                    println!(
                        "purged {n} entries older than {}",
                        humantime::format_duration(older_than)
                    );
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_FAILED
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_events_are_valid_and_sized() {
        for size in [0, 256, 1024, 16384] {
            let b = generated_event("user.login", 3, size);
            let e = crate::event::Event::parse(b.clone()).unwrap();
            assert_eq!(e.org_id.as_deref(), Some("org_000003"));
            if size >= 400 {
                assert_eq!(b.len(), size);
            }
        }
        assert_ne!(generated_event("t", 0, 0), generated_event("t", 0, 0));
    }

    #[test]
    fn percentiles() {
        let s = Summary {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            ..Default::default()
        };
        assert_eq!(s.percentile(50.0), Duration::from_millis(51));
        assert_eq!(s.percentile(100.0), Duration::from_millis(100));
    }
}
