//! `vfgate send`: file, test and load-generation modes over [`crate::sender`], with progress
//! output (events waiting for a retry and the next attempt's time too), a summary and the
//! exit code (0 all delivered, 1 some failed or a line skipped (not a JSON object, or not signable for --scheme), 2 usage, 130
//! stopped by Ctrl-C, the undelivered events stored as failed). Owns:
//! that output and exit code; signing, ordering, retries and the failed-deliveries store
//! are `sender`'s and `deadletter`'s, and it builds no request itself.

use super::args::parse_header;
use super::args::SendArgs;
use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::config::RawClientTls;
use crate::deadletter::FailedStore;
use crate::escape::printable;
use crate::secret::SecretRef;
use crate::sender::load::{generate, generated_event, send_ordered, Plan, RetryWaits, Summary};
use crate::sender::{Answer, Outcome, SenderSettings, WebhookSender};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
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

    fn update(&mut self, s: &Summary, waits: &RetryWaits) {
        let (waiting, next) = waits.snapshot();
        let retrying = match next {
            Some(at) if waiting > 0 => format!(
                ", {waiting} waiting for a retry (next attempt in {})",
                humantime::format_duration(Duration::from_secs(
                    at.saturating_duration_since(tokio::time::Instant::now())
                        .as_secs_f64()
                        .ceil() as u64
                ))
            ),
            _ => String::new(),
        };
        if let Some(b) = &self.bar {
            b.set_position(s.sent);
            b.set_message(format!("{} failed{retrying}", s.failed.len()));
        } else if self.plain && self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            let total = self.total.map(|t| format!("/{t}")).unwrap_or_default();
            eprintln!(
                "progress: {}{total} done, {} failed{retrying}",
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

fn settings_from(args: &SendArgs) -> Result<SenderSettings, String> {
    let headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let scheme = super::sign::send_scheme(&args.scheme)?;
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
        scheme,
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
    let (dtx, mut drx) = mpsc::unbounded_channel();
    let total;
    let producer: Option<tokio::task::JoinHandle<()>>;
    let sending: tokio::task::JoinHandle<()>;
    let waits = Arc::new(RetryWaits::default());
    // Each line's number by its bytes (the same bytes on several lines: in order), until
    // its outcome comes back; what is left at Ctrl-C is undelivered.
    let mut lines_of: HashMap<Bytes, VecDeque<usize>> = HashMap::new();
    let mut skipped = 0u64;
    if let Some(n) = args.generate {
        let dups = ((n as f64) * args.duplicates / 100.0).round() as u64;
        total = Some(n + dups);
        let plan = Plan {
            events: n,
            duplicates: dups,
            size: args.size,
            orgs: args.orgs.max(1),
            rate: args.rate,
            concurrency: args.concurrency,
        };
        producer = None;
        sending = tokio::spawn(generate(sender.clone(), plan, dtx));
    } else {
        total = None;
        // Every line is read and checked before anything is sent: a line that is not a JSON
        // object is reported with its number, skipped and counted as failed.
        let file = args.file.clone();
        let input = match tokio::task::spawn_blocking(move || read_lines(file.as_deref())).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                eprintln!("error: {e}");
                return EXIT_USAGE;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILED;
            }
        };
        let mut valid = Vec::new();
        let scheme = &sender.settings().scheme;
        for (n, line) in input {
            let why = not_an_object(&line).or_else(|| {
                let (id, ty, org) = crate::sender::event_fields(&line);
                scheme.unsendable(&id, &ty, org.as_deref().unwrap_or_default())
            });
            match why {
                None => {
                    lines_of.entry(line.clone()).or_default().push_back(n);
                    valid.push(line);
                }
                Some(why) => {
                    eprintln!("line {n}: {why}: skipped, not sent");
                    skipped += 1;
                }
            }
        }
        let (etx, erx) = mpsc::channel::<Bytes>(1024);
        producer = Some(tokio::spawn(async move {
            for line in valid {
                if etx.send(line).await.is_err() {
                    break;
                }
            }
        }));
        sending = tokio::spawn(send_ordered(
            sender.clone(),
            erx,
            args.concurrency,
            true,
            waits.clone(),
            dtx,
        ));
    }
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
    let mut failed_lines: Vec<Option<usize>> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let mut give_up = tokio::time::Instant::now();
    loop {
        let (body, outcome) = tokio::select! {
            done = drx.recv() => match done {
                Some(d) => d,
                None => break,
            },
            _ = tick.tick() => {
                progress.update(&summary, &waits);
                continue;
            }
            _ = &mut ctrl_c, if !interrupted => {
                // Stop sending and retrying, then take in every outcome reported before the
                // tasks ended (the channel closes once the last of them is gone), so that an
                // event delivered or stored meanwhile is not stored again as interrupted.
                interrupted = true;
                if let Some(p) = &producer {
                    p.abort();
                }
                sending.abort();
                give_up = tokio::time::Instant::now() + Duration::from_secs(5);
                continue;
            }
            _ = tokio::time::sleep_until(give_up), if interrupted => break,
        };
        // (Generated events have no lines: no hashing of each body then.)
        let line = if lines_of.is_empty() {
            None
        } else {
            lines_of.get_mut(&body).and_then(VecDeque::pop_front)
        };
        summary.record(&body, &outcome);
        if matches!(outcome, Outcome::Failed { .. }) {
            failed_lines.push(line);
        }
        progress.update(&summary, &waits);
        if let Some(w) = results.as_mut() {
            use std::io::Write;
            let last = match &outcome {
                Outcome::Delivered { last, .. } | Outcome::Failed { last, .. } => last,
            };
            let status = last
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "error".into());
            let id = crate::sender::event_fields(&body).0;
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
    if interrupted {
        return stop(
            &args,
            &sender,
            &summary,
            &failed_lines,
            lines_of,
            skipped,
            t0,
        );
    }
    if let Err(e) = sending.await {
        eprintln!("error: the sending stopped early: {e}");
        print_summary(&args, &summary, &failed_lines, skipped, t0);
        return EXIT_FAILED;
    }
    if let Some(p) = producer {
        if let Err(e) = p.await {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    }
    print_summary(&args, &summary, &failed_lines, skipped, t0);
    if let Some(t) = total.filter(|t| summary.sent < *t) {
        eprintln!("error: {} of {t} events have no outcome", t - summary.sent);
        return EXIT_FAILED;
    }
    if summary.failed.is_empty() && skipped == 0 {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// Exit code after Ctrl-C (128 + SIGINT), as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

/// Ctrl-C: every event without an outcome yet (not sent, in flight, or waiting for a retry)
/// goes to the failed store, then the summary; exit 130. An event in flight at this moment
/// may still have reached the target: its replay is then answered as a duplicate.
fn stop(
    args: &SendArgs,
    sender: &WebhookSender,
    summary: &Summary,
    failed_lines: &[Option<usize>],
    lines_of: HashMap<Bytes, VecDeque<usize>>,
    skipped: u64,
    t0: Instant,
) -> u8 {
    let mut left: Vec<(usize, Bytes)> = lines_of
        .into_iter()
        .flat_map(|(body, lines)| lines.into_iter().map(move |n| (n, body.clone())))
        .collect();
    left.sort_by_key(|(n, _)| *n);
    eprintln!("interrupted: {} event(s) not delivered", left.len());
    print_summary(args, summary, failed_lines, skipped, t0);
    for (n, body) in &left {
        let entry = sender.store_interrupted(body);
        println!(
            "failed: line {n} event_id {} (interrupted){}",
            printable(&crate::sender::event_fields(body).0),
            stored(args, entry.as_ref())
        );
    }
    EXIT_INTERRUPTED
}

fn stored(args: &SendArgs, entry: Option<&String>) -> String {
    entry
        .map(|e| format!(", stored as {e} in {}", args.failed_dir.display()))
        .unwrap_or_default()
}

fn print_summary(
    args: &SendArgs,
    summary: &Summary,
    failed_lines: &[Option<usize>],
    skipped: u64,
    t0: Instant,
) {
    let out = summary.render(t0.elapsed());
    if !args.quiet || !summary.failed.is_empty() || skipped > 0 {
        println!("{out}");
    }
    if skipped > 0 {
        println!(
            "skipped {skipped} line(s) that are not JSON objects or cannot be signed for the scheme (not sent, counted as failed)"
        );
    }
    for (i, (id, entry, last)) in summary.failed.iter().enumerate() {
        let line = failed_lines
            .get(i)
            .copied()
            .flatten()
            .map(|n| format!("line {n} "))
            .unwrap_or_default();
        println!(
            "failed: {line}event_id {} (last: {last}){}",
            printable(id),
            stored(args, entry.as_ref())
        );
    }
}

/// The non-blank lines of FILE (stdin when absent or `-`), numbered from 1, without their
/// line ending.
fn read_lines(file: Option<&std::path::Path>) -> Result<Vec<(usize, Bytes)>, String> {
    let reader: Box<dyn BufRead + Send> = match file {
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::BufReader::new(std::io::stdin())),
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )),
    };
    let mut out = Vec::new();
    for (n, line) in reader.split(b'\n').enumerate() {
        let mut line = line.map_err(|e| format!("line {}: {e}", n + 1))?;
        if line.ends_with(b"\r") {
            line.pop();
        }
        if !line.iter().all(|c| c.is_ascii_whitespace()) {
            out.push((n + 1, Bytes::from(line)));
        }
    }
    Ok(out)
}

/// Why `line` is not a JSON object, or `None` when it is one (the line itself is never
/// quoted: it is the file's, not ours to echo).
fn not_an_object(line: &[u8]) -> Option<String> {
    match serde_json::from_slice::<serde_json::Value>(line) {
        Err(e) => Some(format!("not JSON ({e})")),
        Ok(serde_json::Value::Object(_)) => None,
        Ok(v) => Some(format!(
            "not a JSON object (a {})",
            match v {
                serde_json::Value::Array(_) => "JSON array",
                serde_json::Value::String(_) => "JSON string",
                serde_json::Value::Number(_) => "number",
                serde_json::Value::Bool(_) => "boolean",
                _ => "null",
            }
        )),
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
