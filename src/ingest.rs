//! The transport-free core of one webhook: verify → (a sender's handshake is answered here,
//! after the signature and time window) → filter → dedupe begin → spool or fan-out to the
//! sinks → dedupe commit or release → [`Ingested`].
//!
//! It owns the order of the checks and the dedupe lifecycle of an accepted event: an id is
//! marked in flight before the event is handed on, committed only once every sink (or the
//! spool) has it, and released when anything fails or the request is dropped halfway, so
//! that the sender's retry is never refused. It knows nothing of sockets, HTTP framing or
//! status codes: the server reads the body and maps the result to a reply
//! (`server/outcome.rs`), and the unit tests below drive it with in-memory sinks. It may not
//! import `server` or `cmd`.

use crate::config::TypeFilter;
use crate::dedupe::{Begin, Dedupe, DedupeKey};
use crate::pipeline::SinkHandle;
use crate::sinks::{RetryKind, Verdict};
use crate::spool::{SourceLog, Spool, SpoolError};
use crate::verify::{Checker, Reject, RequestParts};
use bytes::Bytes;
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;

/// A source as the ingest core runs it: its checks, filter, sinks and spool log.
pub struct Source {
    /// The source's name (dedupe keys are per source).
    pub name: String,
    /// Signature, version, shape and age checks.
    pub checker: Checker,
    /// `event_types`.
    pub filter: TypeFilter,
    /// Forward mode: the sinks every event goes to.
    pub sinks: Vec<SinkHandle>,
    /// `ack = "spool"`: the source's log.
    pub spool: Option<Arc<SourceLog>>,
    /// `vfgate_secret_matches_total{source, position}`, one per configured secret.
    pub secret_matches: Vec<IntCounter>,
}

/// How one webhook ended, before it is an HTTP answer.
#[derive(Debug)]
pub enum Ingested {
    /// Every sink delivered it (forward mode).
    Accepted,
    /// Written to the spool (`ack = "spool"`).
    Spooled,
    /// Already delivered once: not handed on again.
    Duplicate,
    /// Its `event_type` is not in the source's `event_types`.
    Filtered,
    /// A sender's handshake, answered with this JSON body; nothing is handed on.
    Handshake(crate::config::Handshake, Bytes),
    /// A check failed (signature, version, media type, shape, age).
    Rejected(Reject),
    /// The same id is being handed on by another request right now.
    InFlight,
    /// The dedupe table is at `max_entries` with `on_full = "reject"`.
    DedupeFull,
    /// The dedupe store failed (Redis down).
    DedupeUnavailable,
    /// The spool refused the write.
    SpoolFailed(SpoolError),
    /// At least one sink did not take it: the most telling sink verdict (never `Ok`), its
    /// detail naming the sink and reason in words safe for the sender.
    NotDelivered(Verdict),
}

/// The shared state every source's requests use.
pub struct Ingest {
    /// The dedupe store.
    pub dedupe: Arc<Dedupe>,
    /// The spool, when any source spools.
    pub spool: Option<Arc<Spool>>,
    /// `vfgate_dedupe_commit_failures_total`: delivered ids whose delivered mark could not
    /// be stored within the in-flight lifetime (a replay after it would be handed on again).
    pub commit_failures: IntCounter,
}

/// Marks an id in flight until disarmed; releases it if dropped first (a failed or
/// cancelled request must not block the sender's retry).
struct InFlightGuard<'a> {
    dedupe: &'a Arc<Dedupe>,
    key: DedupeKey,
    armed: bool,
    commit_failures: &'a IntCounter,
}

impl InFlightGuard<'_> {
    /// The event is handed on: commit the mark, or release it when `delivered` is false.
    /// A commit that fails (Redis lost after the in-flight mark) does not hold up the answer:
    /// it is retried in the background for as long as the in-flight mark protects the id
    /// (a replay meanwhile is answered `in_flight`); if it still cannot be made, the id is
    /// counted and logged at ERROR, since a replay after that would be handed on again.
    async fn settle(mut self, delivered: bool, now_ms: i64, event_ms: i64) {
        self.armed = false;
        if !delivered {
            let _ = self.dedupe.release(self.key).await;
            return;
        }
        let Err(e) = self.dedupe.commit(self.key, now_ms, event_ms).await else {
            return;
        };
        tracing::warn!(error = %e, "dedupe commit failed; retrying it in the background");
        let (dedupe, key, failures) = (self.dedupe.clone(), self.key, self.commit_failures.clone());
        // At most MAX_COMMIT_RETRIES retry tasks at once: a long Redis outage does not grow
        // one task per accepted event; past the bound a failed commit is counted at once.
        let Some(slot) = CommitRetries::take() else {
            failures.inc();
            tracing::error!(error = %e, "dedupe commit failed and the background retries are at their bound: a replay of this delivered event would be handed on again");
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            failures.inc();
            return;
        };
        rt.spawn(async move {
            let _slot = slot;
            let deadline = tokio::time::Instant::now() + dedupe.in_flight_ttl();
            let mut wait = Duration::from_millis(200);
            let mut tries = 1u32;
            loop {
                tokio::time::sleep(wait).await;
                tries += 1;
                match dedupe.commit(key, crate::time::now_ms(), event_ms).await {
                    Ok(()) => {
                        tracing::info!(tries, "dedupe commit made after a failure");
                        return;
                    }
                    Err(e) if tokio::time::Instant::now() + wait >= deadline => {
                        failures.inc();
                        tracing::error!(error = %e, tries, "dedupe commit could not be made within the in-flight lifetime: a replay of this delivered event would be handed on again");
                        return;
                    }
                    Err(_) => wait = (wait * 2).min(Duration::from_secs(5)),
                }
            }
        });
    }
}

/// Background commit retries running now.
static COMMIT_RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Their bound.
const MAX_COMMIT_RETRIES: usize = 1024;

/// One of the [`MAX_COMMIT_RETRIES`] places, given back when dropped.
struct CommitRetries;

impl CommitRetries {
    fn take() -> Option<CommitRetries> {
        use std::sync::atomic::Ordering;
        if COMMIT_RETRIES.fetch_add(1, Ordering::AcqRel) >= MAX_COMMIT_RETRIES {
            COMMIT_RETRIES.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(CommitRetries)
    }
}

impl Drop for CommitRetries {
    fn drop(&mut self) {
        COMMIT_RETRIES.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.dedupe.release_now(self.key);
        }
    }
}

impl Ingest {
    /// Awaits `fut` (the event's deliveries), renewing the in-flight mark of `key` every
    /// third of its lifetime: however long the request waits for a delivery slot behind a
    /// slow sink, a resend is answered `in_flight` instead of being handed on again.
    async fn renewing<T>(&self, key: DedupeKey, fut: impl std::future::Future<Output = T>) -> T {
        let every = (self.dedupe.in_flight_ttl() / 3).max(Duration::from_millis(100));
        tokio::pin!(fut);
        loop {
            tokio::select! {
                v = &mut fut => return v,
                () = tokio::time::sleep(every) => {
                    if let Err(e) = self.dedupe.renew(key, crate::time::now_s()).await {
                        tracing::warn!(error = %e, "cannot renew an in-flight dedupe mark");
                    }
                }
            }
        }
    }

    /// Runs one request of `src` received at unix milliseconds `now`. `permit` (the body's
    /// share of the in-flight byte cap) is dropped as soon as the signature is checked.
    pub async fn handle<P>(
        &self,
        src: &Source,
        parts: RequestParts<'_>,
        body: Bytes,
        now: i64,
        permit: P,
    ) -> Ingested {
        let secret = match src.checker.signature(parts, &body, now) {
            Ok(i) => i,
            Err(r) => return Ingested::Rejected(r),
        };
        src.secret_matches[secret].inc();
        drop(permit);
        match src.checker.handshake(parts, &body, now) {
            None => {}
            Some(Ok((kind, reply))) => return Ingested::Handshake(kind, reply),
            Some(Err(r)) => return Ingested::Rejected(r),
        }
        let event = match src.checker.after_signature(parts, body, now) {
            Ok(v) => v.into_inner(),
            Err(r) => return Ingested::Rejected(r),
        };
        if !src.filter.matches(&event.event_type) {
            return Ingested::Filtered;
        }
        let key = self.dedupe.key(&src.name, &event.event_id);
        let now_s = (now / 1000).max(0) as u64;
        match self.dedupe.begin(key, now_s).await {
            Ok(Begin::New) => {}
            Ok(Begin::Duplicate) => return Ingested::Duplicate,
            Ok(Begin::InFlight) => return Ingested::InFlight,
            Ok(Begin::Full) => return Ingested::DedupeFull,
            Err(e) => {
                tracing::error!(error = %e, "dedupe store failed");
                return Ingested::DedupeUnavailable;
            }
        }
        let guard = InFlightGuard {
            dedupe: &self.dedupe,
            key,
            armed: true,
            commit_failures: &self.commit_failures,
        };
        if let (Some(log), Some(spool)) = (&src.spool, &self.spool) {
            let written = spool.append(log, &event, now).await;
            guard.settle(written.is_ok(), now, event.timestamp_ms).await;
            return match written {
                Ok(()) => Ingested::Spooled,
                Err(e) => Ingested::SpoolFailed(e),
            };
        }
        let event = Arc::new(event);
        let deliveries = async {
            let mut waits = Vec::with_capacity(src.sinks.len());
            for sink in &src.sinks {
                waits.push(sink.submit(event.clone()).await);
            }
            let mut worst = Verdict::Ok;
            for w in waits {
                let v = w.await.unwrap_or_else(|_| {
                    Verdict::retry(RetryKind::Unavailable, "delivery was abandoned", None)
                });
                if v.severity() > worst.severity() {
                    worst = v;
                }
            }
            worst
        };
        let worst = self.renewing(key, deliveries).await;
        let delivered = worst == Verdict::Ok;
        guard
            .settle(delivered, crate::time::now_ms(), event.timestamp_ms)
            .await;
        if delivered {
            Ingested::Accepted
        } else {
            Ingested::NotDelivered(worst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::metrics::Metrics;
    use crate::pipeline;
    use crate::sinks::{Attempt, SendResult, Sink, Verdict};
    use async_trait::async_trait;
    use parking_lot::Mutex;

    /// A sink that records what it is sent and answers with a fixed verdict.
    struct Recording {
        got: Mutex<Vec<String>>,
        verdict: Mutex<Verdict>,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    #[async_trait]
    impl Sink for Recording {
        async fn send(&self, batch: &[Arc<Event>]) -> Attempt {
            if let Some(g) = &self.gate {
                g.acquire().await.unwrap().forget();
            }
            self.got
                .lock()
                .extend(batch.iter().map(|e| e.event_id.clone()));
            Attempt {
                status: "200".into(),
                result: SendResult::All(self.verdict.lock().clone()),
            }
        }
        fn encode(&self, _batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult> {
            Ok(Vec::new())
        }

        fn destination(&self) -> String {
            "test recording".into()
        }
    }

    const SECRET: &str = "an-ingest-test-secret-0123456789";

    /// One source `s` with secret [`SECRET`] and a one-event-per-batch sink, no retries; a
    /// memory dedupe that persists nothing.
    fn config() -> crate::config::Config {
        let text = format!(
            r#"
[dedupe]
persist = false
[[source]]
name = "s"
path = "/s"
secrets = [{{ value = "{SECRET}" }}]
sinks = ["out"]
[sink.out]
type = "file"
path = "/dev/null"
retry = {{ budget = "0s" }}
"#
        );
        crate::config::Config::parse(&text, crate::sinks::TYPES).unwrap()
    }

    struct Rig {
        ingest: Ingest,
        src: Source,
        sink: Arc<Recording>,
    }

    fn rig(verdict: Verdict, filter: TypeFilter) -> Rig {
        rig_with(verdict, filter, Duration::from_secs(60), None)
    }

    /// A rig whose in-flight marks live `in_flight`, and whose sink first waits for `gate`
    /// (a slow SIEM with one delivery slot).
    fn rig_with(
        verdict: Verdict,
        filter: TypeFilter,
        in_flight: Duration,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    ) -> Rig {
        let mut cfg = config();
        let sink = Arc::new(Recording {
            got: Mutex::new(vec![]),
            verdict: Mutex::new(verdict),
            gate,
        });
        let common = cfg.sinks.remove(0).common;
        let (handle, worker) = pipeline::channel(common, sink.clone());
        tokio::spawn(worker.run(Arc::new(Metrics::new())));
        let dedupe = Dedupe::new(
            &cfg.dedupe,
            in_flight,
            crate::dedupe::journal::Durability::Never,
        )
        .unwrap();
        let m = Metrics::new();
        Rig {
            ingest: Ingest {
                dedupe: Arc::new(dedupe),
                spool: None,
                commit_failures: m.dedupe_commit_failures.clone(),
            },
            src: Source {
                name: "s".into(),
                checker: Checker::new(&cfg.sources[0]),
                filter,
                sinks: vec![handle],
                spool: None,
                secret_matches: vec![m.secret_matches.with_label_values(&["s", "0"])],
            },
            sink,
        }
    }

    fn event(id: &str, event_type: &str) -> (Bytes, String) {
        let ts = crate::time::rfc3339_ms(crate::time::now_ms());
        let body = format!(
            r#"{{"event_id":"{id}","event_type":"{event_type}","timestamp":"{ts}","context":{{"org_id":"o"}}}}"#
        );
        let secret = crate::secret::Secret::new(SECRET.as_bytes().to_vec());
        let sig = crate::verify::sign(&secret, body.as_bytes());
        (Bytes::from(body), sig)
    }

    async fn send(r: &Rig, body: Bytes, sig: &str) -> Ingested {
        let parts = RequestParts {
            signature: Some(sig.as_bytes()),
            version: Some(b"1"),
            content_type: Some(b"application/json"),
            headers: None,
        };
        r.ingest
            .handle(&r.src, parts, body, crate::time::now_ms(), ())
            .await
    }

    #[tokio::test]
    async fn accepted_once_then_duplicate() {
        let r = rig(Verdict::Ok, TypeFilter::All);
        let (body, sig) = event("e1", "user.login");
        assert!(matches!(
            send(&r, body.clone(), &sig).await,
            Ingested::Accepted
        ));
        assert!(matches!(send(&r, body, &sig).await, Ingested::Duplicate));
        assert_eq!(*r.sink.got.lock(), vec!["e1".to_string()]);
    }

    #[tokio::test]
    async fn the_signature_is_checked_before_anything_else() {
        let r = rig(Verdict::Ok, TypeFilter::All);
        // A forged body with a malformed event and a filtered type: still a signature error.
        let (_, sig) = event("e1", "user.login");
        let out = send(&r, Bytes::from_static(b"not json"), &sig).await;
        assert!(
            matches!(out, Ingested::Rejected(Reject::InvalidSignature(_))),
            "{out:?}"
        );
        assert!(r.sink.got.lock().is_empty());
    }

    #[tokio::test]
    async fn a_filtered_event_is_not_remembered_or_sent() {
        let r = rig(
            Verdict::Ok,
            TypeFilter::Some {
                exact: vec![],
                prefixes: vec!["user.".into()],
            },
        );
        let (body, sig) = event("e2", "billing.paid");
        assert!(matches!(
            send(&r, body.clone(), &sig).await,
            Ingested::Filtered
        ));
        assert!(matches!(send(&r, body, &sig).await, Ingested::Filtered));
        assert!(r.sink.got.lock().is_empty());
    }

    #[tokio::test]
    async fn a_failed_delivery_releases_the_id_for_the_senders_retry() {
        let r = rig(
            Verdict::retry(crate::sinks::RetryKind::Unavailable, "down", None),
            TypeFilter::All,
        );
        let (body, sig) = event("e3", "user.login");
        let out = send(&r, body.clone(), &sig).await;
        assert!(
            matches!(
                out,
                Ingested::NotDelivered(Verdict::Retry {
                    kind: RetryKind::Unavailable,
                    ..
                })
            ),
            "{out:?}"
        );
        *r.sink.verdict.lock() = Verdict::Ok;
        assert!(matches!(
            send(&r, body.clone(), &sig).await,
            Ingested::Accepted
        ));
        assert!(matches!(send(&r, body, &sig).await, Ingested::Duplicate));
    }

    #[tokio::test]
    async fn a_cancelled_request_releases_the_id() {
        let r = rig(Verdict::Ok, TypeFilter::All);
        let (body, sig) = event("e4", "user.login");
        // Cancel the first request right after its dedupe mark (the sink never answers in
        // time because the future is dropped at its first await on the delivery).
        {
            let fut = send(&r, body.clone(), &sig);
            tokio::pin!(fut);
            let _ = futures::poll!(&mut fut);
        }
        assert!(matches!(send(&r, body, &sig).await, Ingested::Accepted));
    }

    #[tokio::test]
    async fn a_request_queued_past_the_in_flight_lifetime_keeps_its_claim() {
        // A slow SIEM: the first delivery waits for the gate; the in-flight mark would
        // expire after 2 s. A resend 3 s later must not be handed on a second time.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let r = Arc::new(rig_with(
            Verdict::Ok,
            TypeFilter::All,
            Duration::from_secs(2),
            Some(gate.clone()),
        ));
        let (body, sig) = event("slow", "user.login");
        let first = {
            let (r, body, sig) = (r.clone(), body.clone(), sig.clone());
            tokio::spawn(async move { send(&r, body, &sig).await })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        let resend =
            tokio::time::timeout(Duration::from_secs(1), send(&r, body.clone(), &sig)).await;
        gate.add_permits(10);
        assert!(
            matches!(resend, Ok(Ingested::InFlight)),
            "the resend while the first waits: {resend:?}"
        );
        assert!(matches!(first.await.unwrap(), Ingested::Accepted));
        assert!(matches!(send(&r, body, &sig).await, Ingested::Duplicate));
        assert_eq!(
            *r.sink.got.lock(),
            vec!["slow".to_string()],
            "handed on once"
        );
    }
}
