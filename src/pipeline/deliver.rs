//! Delivers one batch: send, classify per event, retry the retryable ones within the budget,
//! bisect batches the target refuses whole, and answer every event's waiting request. Owns:
//! one batch's attempts and each event's verdict; the waits are `crate::retry`'s, the
//! sending the sink's. Knows nothing of requests, dedupe or the spool (the spool's drainer
//! calls it).

use super::Job;
use crate::config::SinkCommon;
use crate::escape::Printable;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::retry::{Next, Policy};
use crate::sinks::{RetryKind, SendResult, Sink, Verdict};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Delivers `jobs` to `sink`, answering each job's reply exactly once.
pub async fn deliver(sink: &dyn Sink, common: &SinkCommon, metrics: &Metrics, jobs: Vec<Job>) {
    let name = common.name.as_str();
    let policy = Policy::Budget {
        deadline: Instant::now() + common.retry_budget,
    };
    let mut pending = jobs;
    let mut round = 0u32;
    loop {
        let events: Vec<Arc<Event>> = pending.iter().map(|j| j.event.clone()).collect();
        let (verdicts, status) = attempt(sink, name, metrics, &events).await;
        let mut retry = Vec::new();
        let mut wait_hint: Option<Duration> = None;
        let mut last: Option<(RetryKind, String)> = None;
        for (job, v) in pending.into_iter().zip(verdicts) {
            match v {
                Verdict::Ok => {
                    let _ = job.reply.send(Verdict::Ok);
                }
                Verdict::Permanent { reason, .. } => {
                    // The full detail (the target's answer) is logged by `attempt`; the
                    // sender, an outside party, learns the sink, reason and status only.
                    let _ = job.reply.send(Verdict::permanent(
                        reason,
                        format!(
                            "sink {name}: the event cannot be delivered ({reason}, {})",
                            status_words(&status)
                        ),
                    ));
                }
                Verdict::Retry {
                    kind,
                    detail,
                    retry_after,
                } => {
                    wait_hint = wait_hint.max(retry_after);
                    last = Some((kind, detail));
                    retry.push(job);
                }
            }
        }
        if retry.is_empty() {
            return;
        }
        let wait = match policy.next(round, wait_hint) {
            Next::Wait(d) => Some(d),
            Next::Stop { .. } => None,
        };
        let Some(wait) = wait else {
            let (kind, detail) = last.expect("a retry has a reason");
            metrics
                .sink_events_failed
                .with_label_values(&[name, kind.as_str()])
                .inc_by(retry.len() as u64);
            tracing::warn!(sink = name, events = retry.len(), status = %status, detail = ?Printable(&detail), "retry budget spent; the sender is answered 5xx and will retry");
            for job in retry {
                let _ = job.reply.send(Verdict::retry(
                    kind,
                    format!(
                        "sink {name}: {} (retry budget spent)",
                        status_words(&status)
                    ),
                    wait_hint,
                ));
            }
            return;
        };
        tokio::time::sleep(wait).await;
        round += 1;
        metrics
            .sink_retries
            .with_label_values(&[name])
            .inc_by(retry.len() as u64);
        pending = retry;
    }
}

/// A status label as the sender may read it: `upstream answered 503`, or the error kind
/// (`timeout`, `connect_error`...): never the target's body, address or TLS text.
pub fn status_words(status: &str) -> String {
    if status.bytes().all(|b| b.is_ascii_digit()) && !status.is_empty() {
        format!("upstream answered {status}")
    } else {
        status.to_string()
    }
}

/// Sends `events` once (bisecting batches refused whole) and accounts for every verdict:
/// delivered events counted, permanent refusals counted and logged, credential errors logged
/// at most once a minute. Returns one verdict per event, in order, and the status label of
/// the last upstream request (`"500"`, `"timeout"`...), for dead letters.
pub async fn attempt(
    sink: &dyn Sink,
    name: &str,
    metrics: &Metrics,
    events: &[Arc<Event>],
) -> (Vec<Verdict>, String) {
    let (verdicts, status) = send_split(sink, name, metrics, events).await;
    let mut delivered = 0u64;
    for (ev, v) in events.iter().zip(&verdicts) {
        match v {
            Verdict::Ok => delivered += 1,
            Verdict::Permanent { reason, detail } => {
                metrics
                    .sink_events_failed
                    .with_label_values(&[name, reason.as_str()])
                    .inc();
                tracing::warn!(sink = name, event_id = ?Printable(&ev.event_id), reason = reason.as_str(), detail = ?Printable(detail), "event refused permanently");
            }
            Verdict::Retry {
                kind: RetryKind::Config,
                detail,
                ..
            } => log_config_error(name, detail),
            Verdict::Retry { .. } => {}
        }
    }
    // One label lookup per batch, not per event.
    if delivered > 0 {
        metrics
            .events_forwarded
            .with_label_values(&[name])
            .inc_by(delivered);
    }
    (verdicts, status)
}

/// Sends `events` once, halving on `Split` until single events are refused alone.
fn send_split<'a>(
    sink: &'a dyn Sink,
    name: &'a str,
    metrics: &'a Metrics,
    events: &'a [Arc<Event>],
) -> Pin<Box<dyn Future<Output = (Vec<Verdict>, String)> + Send + 'a>> {
    Box::pin(async move {
        let started = std::time::Instant::now();
        let (attempt, sent) = crate::client::counting_sent(sink.send(events)).await;
        metrics
            .sink_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        if sent > 0 {
            metrics
                .sink_sent_bytes
                .with_label_values(&[name])
                .inc_by(sent);
        }
        record_health(metrics, name, &attempt);
        metrics
            .sink_requests
            .with_label_values(&[name, &attempt.status])
            .inc();
        metrics
            .sink_batch_events
            .with_label_values(&[name])
            .observe(events.len() as f64);
        let status = attempt.status;
        match attempt.result {
            SendResult::All(v) => (vec![v; events.len()], status),
            SendResult::PerEvent(vs) if vs.len() == events.len() => (vs, status),
            SendResult::PerEvent(vs) => {
                let detail = format!(
                    "sink answered {} outcomes for {} events",
                    vs.len(),
                    events.len()
                );
                tracing::error!(sink = name, detail = ?detail, "sink bug");
                (
                    vec![Verdict::retry(RetryKind::Unavailable, detail, None); events.len()],
                    status,
                )
            }
            SendResult::Split { reason, detail } if events.len() == 1 => {
                (vec![Verdict::Permanent { reason, detail }], status)
            }
            SendResult::Split { .. } => {
                let (a, b) = events.split_at(events.len() / 2);
                let (mut out, _) = send_split(sink, name, metrics, a).await;
                let (rest, status) = send_split(sink, name, metrics, b).await;
                out.extend(rest);
                (out, status)
            }
        }
    })
}

/// Records one upstream attempt in the sink's health ([`crate::health`]): a failure when the
/// target took none of the events and every one is to be retried; a batch stopped before
/// sending (`not_sent`) is neither.
fn record_health(metrics: &Metrics, name: &str, attempt: &crate::sinks::Attempt) {
    if attempt.status == "not_sent" {
        return;
    }
    let failed = match &attempt.result {
        SendResult::All(v) => matches!(v, Verdict::Retry { .. }),
        SendResult::PerEvent(vs) => {
            !vs.is_empty() && vs.iter().all(|v| matches!(v, Verdict::Retry { .. }))
        }
        SendResult::Split { .. } => false,
    };
    let result = if failed {
        Err(attempt.status.as_str())
    } else {
        Ok(())
    };
    metrics
        .health
        .sink(name)
        .record(std::time::Instant::now(), result);
}

/// Logs a configuration error (bad credentials) at most once a minute per sink.
fn log_config_error(sink: &str, detail: &str) {
    use parking_lot::Mutex;
    use std::collections::HashMap;
    static LAST: Mutex<Option<HashMap<String, std::time::Instant>>> = Mutex::new(None);
    let mut g = LAST.lock();
    let map = g.get_or_insert_with(HashMap::new);
    let now = std::time::Instant::now();
    if map
        .get(sink)
        .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(60))
    {
        map.insert(sink.to_string(), now);
        tracing::error!(sink, detail = ?Printable(detail), "sink refuses our credentials (configuration error); events are kept for retry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BatchLimits;
    use crate::sinks::Attempt;
    use async_trait::async_trait;
    use bytes::Bytes;
    use parking_lot::Mutex;

    type Script = Box<dyn Fn(&[String], usize) -> SendResult + Send + Sync>;

    /// A sink scripted by a closure over the batch's event ids and the attempt number.
    struct Scripted {
        calls: Mutex<Vec<Vec<String>>>,
        f: Script,
    }

    #[async_trait]
    impl Sink for Scripted {
        fn encode(&self, _batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult> {
            Ok(Vec::new())
        }

        async fn send(&self, batch: &[Arc<Event>]) -> Attempt {
            let ids: Vec<String> = batch.iter().map(|e| e.event_id.clone()).collect();
            let n = {
                let mut c = self.calls.lock();
                c.push(ids.clone());
                c.len() - 1
            };
            Attempt {
                status: "x".into(),
                result: (self.f)(&ids, n),
            }
        }

        fn destination(&self) -> String {
            "test scripted".into()
        }
    }

    fn common(budget: Duration) -> SinkCommon {
        SinkCommon {
            name: "t".into(),
            kind: "test".into(),
            batch: BatchLimits {
                max_events: 100,
                max_bytes: 1 << 20,
                linger: Duration::ZERO,
            },
            timeout: Duration::from_secs(1),
            retry_budget: budget,
            concurrency: 1,
        }
    }

    fn jobs(n: usize) -> (Vec<Job>, Vec<tokio::sync::oneshot::Receiver<Verdict>>) {
        (0..n)
            .map(|i| {
                let body = format!(r#"{{"event_id":"e{i}","timestamp":"2024-05-14T09:21:33Z"}}"#);
                let ev = Arc::new(Event::parse(Bytes::from(body)).unwrap());
                let (tx, rx) = tokio::sync::oneshot::channel();
                (
                    Job {
                        event: ev,
                        reply: tx,
                    },
                    rx,
                )
            })
            .unzip()
    }

    async fn outcomes(rxs: Vec<tokio::sync::oneshot::Receiver<Verdict>>) -> Vec<Verdict> {
        let mut v = Vec::new();
        for r in rxs {
            v.push(r.await.unwrap());
        }
        v
    }

    #[tokio::test(start_paused = true)]
    async fn bisects_to_the_one_bad_event() {
        let sink = Scripted {
            calls: Mutex::new(vec![]),
            f: Box::new(|ids, _| {
                if ids.iter().any(|i| i == "e5") {
                    SendResult::Split {
                        reason: crate::sinks::Refusal::Rejected,
                        detail: "bad".into(),
                    }
                } else {
                    SendResult::All(Verdict::Ok)
                }
            }),
        };
        let m = Metrics::new();
        let (j, rx) = jobs(8);
        deliver(&sink, &common(Duration::from_secs(1)), &m, j).await;
        let out = outcomes(rx).await;
        for (i, o) in out.iter().enumerate() {
            if i == 5 {
                assert!(matches!(o, Verdict::Permanent { .. }), "{o:?}");
            } else {
                assert_eq!(o, &Verdict::Ok, "event {i}");
            }
        }
        // Every good event was sent exactly once successfully.
        let calls = sink.calls.lock();
        let mut delivered: Vec<&String> = calls
            .iter()
            .filter(|c| !c.iter().any(|i| i == "e5"))
            .flatten()
            .collect();
        delivered.sort();
        assert_eq!(delivered.len(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_the_retryable_events_until_success() {
        let sink = Scripted {
            calls: Mutex::new(vec![]),
            f: Box::new(|ids, n| {
                SendResult::PerEvent(
                    ids.iter()
                        .map(|i| {
                            if i == "e1" && n < 2 {
                                Verdict::retry(RetryKind::Unavailable, "busy", None)
                            } else {
                                Verdict::Ok
                            }
                        })
                        .collect(),
                )
            }),
        };
        let m = Metrics::new();
        let (j, rx) = jobs(3);
        deliver(&sink, &common(Duration::from_secs(10)), &m, j).await;
        assert!(outcomes(rx).await.iter().all(|o| *o == Verdict::Ok));
        let calls = sink.calls.lock();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[1], vec!["e1".to_string()]);
        assert_eq!(calls[2], vec!["e1".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_spent_gives_unavailable_or_timeout() {
        let sink = Scripted {
            calls: Mutex::new(vec![]),
            f: Box::new(|_, _| SendResult::All(Verdict::retry(RetryKind::Timeout, "slow", None))),
        };
        let m = Metrics::new();
        let (j, rx) = jobs(2);
        let t0 = Instant::now();
        deliver(&sink, &common(Duration::from_secs(3)), &m, j).await;
        assert!(Instant::now() - t0 <= Duration::from_secs(3));
        for o in outcomes(rx).await {
            assert!(
                matches!(
                    o,
                    Verdict::Retry {
                        kind: RetryKind::Timeout,
                        ..
                    }
                ),
                "{o:?}"
            );
        }
        assert!(sink.calls.lock().len() >= 3, "retried within the budget");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_beyond_budget_fails_at_once_with_the_hint() {
        let sink = Scripted {
            calls: Mutex::new(vec![]),
            f: Box::new(|_, _| {
                SendResult::All(Verdict::retry(
                    RetryKind::Unavailable,
                    "429",
                    Some(Duration::from_secs(30)),
                ))
            }),
        };
        let m = Metrics::new();
        let (j, rx) = jobs(1);
        deliver(&sink, &common(Duration::from_secs(10)), &m, j).await;
        assert_eq!(sink.calls.lock().len(), 1);
        let o = outcomes(rx).await.pop().unwrap();
        assert!(
            matches!(o, Verdict::Retry { kind: RetryKind::Unavailable, retry_after: Some(d), .. } if d == Duration::from_secs(30))
        );
    }

    /// A sink that reports `bytes` written and answers with `verdict`.
    struct Counting {
        bytes: u64,
        verdict: Verdict,
    }

    #[async_trait]
    impl Sink for Counting {
        fn encode(&self, _batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult> {
            Ok(Vec::new())
        }

        async fn send(&self, _batch: &[Arc<Event>]) -> Attempt {
            crate::client::count_sent(self.bytes);
            Attempt {
                status: "503".into(),
                result: SendResult::All(self.verdict.clone()),
            }
        }

        fn destination(&self) -> String {
            "test counting".into()
        }
    }

    #[tokio::test]
    async fn attempts_count_sent_bytes_and_feed_the_sink_health() {
        let metrics = Metrics::new();
        let events: Vec<Arc<Event>> = jobs(3).0.into_iter().map(|j| j.event).collect();
        let failing = Counting {
            bytes: 100,
            verdict: Verdict::retry(RetryKind::Unavailable, "down", None),
        };
        attempt(&failing, "t", &metrics, &events).await;
        attempt(&failing, "t", &metrics, &events).await;
        assert_eq!(metrics.sink_sent_bytes.with_label_values(&["t"]).get(), 200);
        assert_eq!(metrics.health.sink("t").failures(), 2);
        // A permanent refusal is an answer: the target is up.
        let refusing = Counting {
            bytes: 7,
            verdict: Verdict::permanent(crate::sinks::Refusal::Rejected, "no"),
        };
        attempt(&refusing, "t", &metrics, &events).await;
        assert_eq!(metrics.sink_sent_bytes.with_label_values(&["t"]).get(), 207);
        assert_eq!(metrics.health.sink("t").failures(), 0);
    }
}
