//! Sending a stream of events like the reference sender: per-org ordering over a number of
//! workers, retries in the background, and the statistics of a run ([`Summary`]). Library
//! only: `vfgate send` (in `cmd`) drives it and prints; nothing here prints or exits. Uses
//! `time` and the sender beside it; knows nothing of the gateway (`server`, `ingest`,
//! `pipeline`, `spool`, `sinks`).

use super::conn::KeptConn;
use super::{org_of, Outcome, WebhookSender};
use bytes::Bytes;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Statistics of a run.
#[derive(Debug, Clone)]
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
    /// Round-trip time of every final attempt, in microseconds (HdrHistogram, 3 significant
    /// digits: a fixed size whatever the number of events).
    pub latencies: Histogram<u64>,
    /// Failed events: (event_id, failed-store entry, last status or error).
    pub failed: Vec<(String, Option<String>, String)>,
}

impl Default for Summary {
    fn default() -> Summary {
        Summary {
            sent: 0,
            accepted: 0,
            duplicate: 0,
            filtered: 0,
            client_errors: 0,
            server_errors: 0,
            errors: 0,
            // Fixed bounds, 1 µs to a day: an auto-resizing histogram's saturating record
            // clamps to its current (tiny) bound instead of growing.
            latencies: Histogram::new_with_bounds(1, 86_400_000_000, 3)
                .expect("valid histogram bounds"),
            failed: Vec::new(),
        }
    }
}

/// The `status` of a gateway's 2xx answer, read without building a JSON tree.
/// (Borrowed from the body unless the JSON escapes it: no allocation per event.)
fn answer_status(body: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct A<'a> {
        #[serde(borrow)]
        status: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<A<'_>>(body).ok()?.status
}

impl Summary {
    /// Counts one finished event.
    pub fn record(&mut self, body: &[u8], outcome: &Outcome) {
        self.sent += 1;
        let last = match outcome {
            Outcome::Delivered { last, .. } => last,
            Outcome::Failed { last, .. } => last,
        };
        self.latencies
            .saturating_record(u64::try_from(last.rtt.as_micros()).unwrap_or(u64::MAX));
        match last.status {
            Some(200..=299) => match answer_status(&last.body).as_deref() {
                Some("duplicate") => self.duplicate += 1,
                Some("filtered") => self.filtered += 1,
                _ => self.accepted += 1,
            },
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

    /// Latency percentile `p` (0..=100), to the histogram's precision (3 digits).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.latencies.value_at_quantile(p / 100.0))
    }

    /// The printed summary.
    pub fn render(&self, elapsed: Duration) -> String {
        let ms = |d: Duration| format!("{:.2}ms", d.as_secs_f64() * 1000.0);
        let pct = |p| self.percentile(p);
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

/// What `vfgate send --generate` sends.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Unique events.
    pub events: u64,
    /// Events sent a second time (spread evenly; each after its original, to its worker).
    pub duplicates: u64,
    /// About how large each event is.
    pub size: usize,
    /// Organisations the events belong to, in turn.
    pub orgs: usize,
    /// Events per second, open loop; `None`: each slot sends its next event as soon as its
    /// answer is in (closed loop).
    pub rate: Option<f64>,
    /// Slots: connections, each with one request in flight.
    pub concurrency: usize,
}

/// The event types generated events take in turn.
const TYPES: &[&str] = &[
    "user.login.succeeded",
    "user.login.failed",
    "user.logout",
    "vault.item.read",
    "vault.item.updated",
    "admin.settings.changed",
];

/// Generates and sends the events of `plan`, reporting each outcome to `done`: no retries
/// (a failed event goes to the failed store at once).
///
/// Each slot keeps one connection ([`KeptConn`]) and sends one event at a time; an org's
/// events all go to the same slot, in order. With a `rate`, event `i` is due at
/// `start + i / rate` whether or not the slots keep up, and its latency counts from then
/// (the wait for a free slot included): an open-loop measurement without coordinated
/// omission. Without one, the latency counts from the moment the request is written.
pub async fn generate(
    sender: Arc<WebhookSender>,
    plan: Plan,
    done: mpsc::UnboundedSender<(Bytes, Outcome)>,
) {
    let n = plan.concurrency.max(1);
    let mut workers = tokio::task::JoinSet::new();
    let mut txs = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, mut rx) = mpsc::channel::<(Bytes, Option<Instant>)>(256);
        txs.push(tx);
        let (sender, done) = (sender.clone(), done.clone());
        workers.spawn(async move {
            let mut slot = KeptConn::new();
            let mut head = Vec::with_capacity(512);
            while let Some((body, due)) = rx.recv().await {
                let since = due.map(Instant::into_std);
                let (at, last) = sender
                    .attempt_kept(&mut slot, &mut head, &body, since)
                    .await;
                let outcome = if last.ok() {
                    Outcome::Delivered { attempts: 1, last }
                } else {
                    let log = last.log(crate::time::rfc3339_ms(at));
                    let entry = sender.store_failed(&body, std::slice::from_ref(&log), None);
                    Outcome::Failed {
                        entry,
                        attempts: vec![log],
                        last,
                    }
                };
                if done.send((body, outcome)).is_err() {
                    break;
                }
            }
        });
    }
    let all = plan.events + plan.duplicates;
    let orgs = plan.orgs.max(1);
    let start = Instant::now();
    // Originals kept for repeats only when there are repeats to make.
    let mut sent: Vec<(Bytes, usize)> = Vec::new();
    let mut made_dups = 0u64;
    for i in 0..all {
        let due = plan
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| start + Duration::from_secs_f64(i as f64 / r));
        // The timer has millisecond steps: wake up to one early rather than late (an early
        // event's latency counts from its send, a late one's from when it was due).
        if let Some(d) = due {
            let wake = d - Duration::from_millis(1);
            if wake > Instant::now() {
                tokio::time::sleep_until(wake).await;
            }
        }
        let want = (i + 1) * plan.duplicates / all.max(1);
        let (body, org) = if want > made_dups && !sent.is_empty() {
            made_dups += 1;
            sent[rand::random_range(0..sent.len())].clone()
        } else {
            let org = (i as usize) % orgs;
            let b = generated_event(TYPES[(i as usize) % TYPES.len()], org, plan.size);
            if plan.duplicates > 0 {
                sent.push((b.clone(), org));
            }
            (b, org)
        };
        if txs[org % n].send((body, due)).await.is_err() {
            break;
        }
    }
    drop(txs);
    while let Some(r) = workers.join_next().await {
        // A slot that panicked: the run is incomplete, and the caller must hear of it.
        if let Err(e) = r {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// A generated event of about `size` bytes.
pub fn generated_event(event_type: &str, org: usize, size: usize) -> Bytes {
    let r: [u8; 14] = rand::random();
    let ts = crate::time::now_rfc3339();
    let head = format!(
        r#"{{"event_id":"evt_{}","event_type":"{event_type}","timestamp":"{ts}","actor":{{"user_id":"usr_{}","email":"user{}@example.com"}},"target":{{"type":"session","id":"sess_{}"}},"context":{{"ip_address":"203.0.113.{}","org_id":"org_{org:06}","user_agent":"vfgate-send"#,
        hex::encode(&r[..8]),
        hex::encode(&r[8..12]),
        u16::from_le_bytes([r[12], r[13]]),
        hex::encode(&r[8..14]),
        1 + r[12] % 254,
    );
    let tail = b"\"}}";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut s = Vec::with_capacity(head.len() + pad + tail.len());
    s.extend_from_slice(head.as_bytes());
    if pad > 0 {
        s.push(b' ');
        s.resize(s.len() + pad - 1, b'x');
    }
    s.extend_from_slice(tail);
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
        let mut s = Summary::default();
        assert_eq!(s.percentile(99.0), Duration::ZERO);
        for ms in 1..=100u64 {
            s.latencies.saturating_record(ms * 1000);
        }
        // Three significant digits: within 0.1 %, never below the true value.
        let near = |p: f64, ms: f64| {
            let got = s.percentile(p).as_secs_f64() * 1000.0;
            assert!(got >= ms && got <= ms * 1.001, "p{p}: {got} ms, want {ms}");
        };
        near(50.0, 50.0);
        near(99.0, 99.0);
        near(100.0, 100.0);
        s.latencies.saturating_record(90_000_000);
        let max = s.percentile(100.0).as_secs_f64();
        assert!((89.9..90.1).contains(&max), "{max}");
    }

    #[test]
    fn answer_status_reads_the_status_field_only() {
        assert_eq!(
            answer_status(br#"{"status":"duplicate","event_id":"e"}"#).as_deref(),
            Some("duplicate")
        );
        assert_eq!(
            answer_status(br#"{"status":"dup\u006cicate"}"#).as_deref(),
            Some("duplicate")
        );
        assert_eq!(answer_status(b"{}"), None);
        assert_eq!(answer_status(b"not json"), None);
    }
}
