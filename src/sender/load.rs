//! Sending a stream of events like the reference sender: per-org ordering over a number of
//! workers, retries in the background, and the statistics of a run ([`Summary`]). Library
//! only: `vfgate send` (in `cmd`) drives it and prints; nothing here prints or exits. Uses
//! `time` and the sender beside it; knows nothing of the gateway (`server`, `ingest`,
//! `pipeline`, `spool`, `sinks`).

use super::{org_of, Outcome, WebhookSender};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

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
    /// Counts one finished event.
    pub fn record(&mut self, body: &[u8], outcome: &Outcome) {
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
                .or_else(|| last.error.as_ref().map(|e| e.to_string()))
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

/// The events waiting for a retry and when each is due, shared between the retry tasks of
/// [`send_ordered`] and a progress display.
#[derive(Debug, Default)]
pub struct RetryWaits {
    inner: parking_lot::Mutex<(u64, std::collections::HashMap<u64, tokio::time::Instant>)>,
}

impl RetryWaits {
    fn register(&self) -> u64 {
        let mut g = self.inner.lock();
        g.0 += 1;
        g.0
    }

    fn set(&self, id: u64, at: Option<tokio::time::Instant>) {
        let mut g = self.inner.lock();
        match at {
            Some(at) => g.1.insert(id, at),
            None => g.1.remove(&id),
        };
    }

    /// How many events wait for a retry, and when the soonest attempt is due.
    pub fn snapshot(&self) -> (usize, Option<tokio::time::Instant>) {
        let g = self.inner.lock();
        (g.1.len(), g.1.values().min().copied())
    }
}

/// Sends events in order per org through `concurrency` workers; `retries` runs the schedule
/// for failed first attempts in the background (they do not hold back later events), each
/// registered in `waits` while it waits.
pub async fn send_ordered(
    sender: Arc<WebhookSender>,
    mut events: mpsc::Receiver<Bytes>,
    concurrency: usize,
    retries: bool,
    waits: Arc<RetryWaits>,
    done: mpsc::UnboundedSender<(Bytes, Outcome)>,
) {
    // A JoinSet, so that dropping this future (`vfgate send` aborts it on Ctrl-C) aborts
    // every worker and, with each worker's own set, every retry in flight.
    let mut workers = tokio::task::JoinSet::new();
    let mut txs = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (tx, mut rx) = mpsc::channel::<Bytes>(256);
        txs.push(tx);
        let (sender, done, waits) = (sender.clone(), done.clone(), waits.clone());
        workers.spawn(async move {
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
                    let (sender, done, waits) = (sender.clone(), done.clone(), waits.clone());
                    retrying.spawn(async move {
                        let id = waits.register();
                        let o = sender
                            .retry_watched(body.clone(), first, |at| waits.set(id, at))
                            .await;
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
        });
    }
    while let Some(body) = events.recv().await {
        let org = org_of(&body).unwrap_or_default();
        let i = (xxhash_rust::xxh3::xxh3_64(org.as_bytes()) as usize) % txs.len();
        if txs[i].send(body).await.is_err() {
            break;
        }
    }
    drop(txs);
    while workers.join_next().await.is_some() {}
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
