//! `vfgate send`: file, test and load-generation modes over [`crate::sender`], with progress
//! output, a summary and the exit code (0 all delivered, 1 some failed, 2 usage). Owns:
//! that output and exit code; signing, ordering, retries and the failed-deliveries store
//! are `sender`'s and `deadletter`'s, and it builds no request itself.

use super::args::parse_header;
use super::args::SendArgs;
use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::config::RawClientTls;
use crate::deadletter::FailedStore;
use crate::escape::printable;
use crate::secret::SecretRef;
use crate::sender::load::{generated_event, send_ordered, Summary};
use crate::sender::{Answer, Outcome, SenderSettings, WebhookSender};
use bytes::Bytes;
use std::io::{BufRead, IsTerminal};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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

/// The TLS settings of `--ca-file`.
pub(super) fn parse_tls(ca_file: &Option<std::path::PathBuf>) -> RawClientTls {
    RawClientTls {
        ca_file: ca_file.clone(),
        insecure_skip_verify: false,
    }
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
        None => crate::sender::DEFAULT_SCHEDULE.to_vec(),
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
pub async fn run(args: SendArgs) -> u8 {
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
    let status = ans.status.map(|s| s.to_string()).unwrap_or_else(|| {
        ans.error
            .as_ref()
            .map(|e| e.to_string())
            .unwrap_or_default()
    });
    println!("outcome: {outcome}");
    println!("status: {status}");
    println!("rtt: {:.2}ms", ans.rtt.as_secs_f64() * 1000.0);
    println!("reply: {}", printable(&String::from_utf8_lossy(&ans.body)));
}
