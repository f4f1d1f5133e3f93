//! `vfgate failed list|show|replay|purge`: the failed-deliveries store from the command line.
//! Sender-mode entries replay to their recorded target, dead letters of a spooled sink to
//! that sink (built from `--config`); one replay at a time per entry (claims). Owns: the
//! output and exit codes; the store and its claims are `deadletter`'s, the sending
//! `sender::replay`'s and `spool::drain::replay_to_sink`'s. As part of `cmd` it may use any
//! layer; nothing outside `cmd` imports it.

use super::args::parse_header;
use super::args::FailedCmd;
use super::send::parse_tls;
use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::deadletter::{Claim, FailedStore, StoreError};
use crate::escape::{printable, printable_json, Printable};
use crate::sender::replay::replay_entry;
use std::io::Write;

fn report_skipped(skipped: &[crate::deadletter::Skipped]) {
    for s in skipped {
        eprintln!("skipped {}: {}", printable(&s.file), printable(&s.reason));
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
pub async fn run(cmd: FailedCmd) -> u8 {
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
                        printable(&e.id),
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
            let config = match config
                .as_deref()
                .map(|p| (p, crate::config::Config::load(p, crate::sinks::TYPES)))
            {
                None => None,
                Some((_, Ok(c))) => Some(c),
                Some((p, Err(e))) => {
                    super::print_config_error(p, &e);
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
                                    .or(a.error.map(|e| e.to_string()))
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
            // A duration past the clock's range purges nothing (rather than wrapping into
            // a cutoff in the future, which would purge everything).
            let age = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
            match FailedStore::new(&dir).purge_before(now.saturating_sub(age)) {
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
