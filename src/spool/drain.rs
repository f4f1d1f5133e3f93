//! A drainer: one per (spooled source, sink). Reads batches from the sink's cursor, delivers
//! them, retries what may be retried (capped exponential backoff with jitter, or the sink's
//! fixed `retry_schedule`) for as long as `spool.max_age` allows, dead-letters the rest, and
//! only then moves the cursor. One batch at a time, so a sink sees each org's events in
//! order; a sink that is down holds back only its own cursor. Owns: each drainer's cursor
//! moves, retry waits and dead letters. Delivers through `crate::pipeline::deliver` (the
//! layer below; the pipeline never imports the spool); knows nothing of requests or HTTP.

use super::{record, DrainState, SourceLog};
use crate::deadletter::{
    new_id, AttemptLog, Claim, FailedEntry, FailedStore, MappedFields, StoreError,
};
use crate::escape::Printable;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::pipeline::{deliver, LiveSink};
use crate::retry::{Next, Policy};
use crate::sinks::{Sink, Verdict};
use crate::time::{now_ms, now_rfc3339};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long a drainer waits for a partial batch to fill (at least; `batch.linger` if longer).
pub const DRAIN_GATHER: Duration = Duration::from_millis(5);
/// Attempts kept in a dead letter's log.
const MAX_ATTEMPT_LOGS: usize = 20;

/// Shared by every drainer.
pub struct Context {
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// `<spool.dir>/dead-letter`.
    pub dead: FailedStore,
    /// `spool.max_age`.
    pub max_age: Duration,
}

/// One drainer, ready to run.
pub struct Drainer {
    /// The source's log.
    pub source: Arc<SourceLog>,
    /// The sink's name (its cursor's).
    pub name: String,
    /// The sink as built now, and its settings: read afresh for every batch and every retry,
    /// so a config reload reaches a drainer that is retrying (the cursor stays its own).
    pub live: LiveSink,
    /// Shared context.
    pub ctx: Arc<Context>,
}

struct Pending {
    seq: u64,
    received_ms: i64,
    event: Arc<Event>,
}

impl Drainer {
    fn state(&self) -> Arc<DrainState> {
        self.source
            .drains
            .iter()
            .find(|d| d.sink == self.name)
            .expect("a drainer exists only for a sink of its source")
            .clone()
    }

    /// Runs until the process exits.
    pub async fn run(self) {
        let state = self.state();
        let mut cursor = super::log::Cursor::handle(
            self.source.shared.dir(),
            &self.name,
            state.next.load(Ordering::Acquire),
        );
        let mut committed = self.source.committed.clone();
        loop {
            let next = state.next.load(Ordering::Acquire);
            if *committed.borrow_and_update() <= next {
                state.oldest_ms.store(0, Ordering::Release);
                if committed.wait_for(|c| *c > next).await.is_err() {
                    return;
                }
                continue;
            }
            // The sender is already answered: a few milliseconds spent gathering a fuller
            // batch cost no one any latency and save per-request work upstream.
            let limits = self.live.load().common.batch;
            if committed.borrow().saturating_sub(next) < limits.max_events as u64 {
                tokio::time::sleep(limits.linger.max(DRAIN_GATHER)).await;
            }
            let batch = match self.read(next, limits) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(sink = %self.name, source = %self.source.name, error = %e, "spool read failed; retrying in 5s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            let mut after = batch.next;
            if batch.records.is_empty() && after <= next {
                // Below the oldest segment (cannot happen unless files were removed by
                // hand): skip to what exists.
                let first = self.source.shared.first_seq();
                if first > next {
                    tracing::warn!(sink = %self.name, from = next, to = first, "spool: records before the oldest segment are gone; skipping");
                    after = first;
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
            let mut pending = Vec::with_capacity(batch.records.len());
            let mut broken = Vec::new();
            for (seq, payload) in batch.records {
                match record::decode(payload.clone()).map_err(|e| e.to_string()) {
                    Ok((received_ms, event)) => pending.push(Pending {
                        seq,
                        received_ms,
                        event: Arc::new(event),
                    }),
                    Err(why) => broken.push((payload, why)),
                }
            }
            if let Some(p) = pending.first() {
                state.oldest_ms.store(p.received_ms, Ordering::Release);
            }
            for (payload, why) in broken {
                self.dead_letter_raw(payload, &why).await;
            }
            if !pending.is_empty() {
                self.deliver(pending).await;
            }
            if let Err(e) = cursor.advance(after) {
                // Delivered but not recorded: after a restart these are sent again (at
                // least once); keep going.
                tracing::error!(sink = %self.name, error = %e, "spool: cannot save the cursor");
            }
            state.next.store(after, Ordering::Release);
            self.source.reclaim();
        }
    }

    /// Reads the next batch from `from`, within the sink's `max_events` and `max_bytes`.
    /// Inline: the drainers have their own runtime, and a read just behind the writer comes
    /// from the page cache (a hand-off to a blocking thread per batch cost more than it).
    fn read(
        &self,
        from: u64,
        limits: crate::config::BatchLimits,
    ) -> Result<super::log::Batch, super::log::LogError> {
        let mut batch = self.source.shared.read(from, limits.max_events)?;
        let recs = &mut batch.records;
        let mut bytes = 0u64;
        let keep = recs
            .iter()
            .position(|(_, p)| {
                bytes += p.len().saturating_sub(8) as u64;
                bytes > limits.max_bytes
            })
            .unwrap_or(recs.len())
            .max(1);
        if keep < recs.len() {
            batch.next = recs[keep].0;
            recs.truncate(keep);
        }
        Ok(batch)
    }

    /// Delivers `pending` until each event is delivered or dead-lettered.
    /// Delivers one batch; its dead letters, if any, are logged in one line at the end
    /// (a target refusing everything must not write a line per event).
    async fn deliver(&self, pending: Vec<Pending>) {
        let mut dead = DeadLetters::default();
        self.deliver_batch(pending, &mut dead).await;
        if let Some(line) = dead.summary() {
            tracing::warn!(sink = %self.name, source = %self.source.name, events = dead.events, "spool: dead-lettered {line}");
        }
    }

    async fn deliver_batch(&self, mut pending: Vec<Pending>, dead: &mut DeadLetters) {
        let name = self.name.as_str();
        let metrics = &self.ctx.metrics;
        let max_age_ms = self.ctx.max_age.as_millis() as i64;
        let mut logs: Vec<AttemptLog> = Vec::new();
        let mut round = 0u32;
        loop {
            let at = now_rfc3339();
            let events: Vec<Arc<Event>> = pending.iter().map(|p| p.event.clone()).collect();
            let built = self.live.load_full();
            let (verdicts, status) = deliver::attempt(&*built.sink, name, metrics, &events).await;
            let mut retry = Vec::new();
            let mut hint: Option<Duration> = None;
            let mut last_detail = String::new();
            for (p, v) in pending.into_iter().zip(verdicts) {
                match v {
                    Verdict::Ok => {}
                    Verdict::Permanent { reason, detail } => {
                        let mut l = logs.clone();
                        l.push(attempt_log(&at, &status, &detail));
                        self.dead_letter(&p, reason.as_str(), l, dead).await;
                    }
                    Verdict::Retry {
                        detail,
                        retry_after,
                        ..
                    } => {
                        hint = hint.max(retry_after);
                        last_detail = detail;
                        retry.push(p);
                    }
                }
            }
            if retry.is_empty() {
                return;
            }
            if logs.len() < MAX_ATTEMPT_LOGS {
                logs.push(attempt_log(&at, &status, &last_detail));
            }
            let policy = match built.sink.retry_schedule() {
                Some(steps) => Policy::Schedule(steps),
                None => Policy::Backoff,
            };
            let wait = match policy.next(round, hint) {
                Next::Wait(d) => d,
                Next::Stop { .. } => {
                    for p in &retry {
                        self.dead_letter(p, "retries_exhausted", logs.clone(), dead)
                            .await;
                    }
                    return;
                }
            };
            let at_next = now_ms() + wait.as_millis() as i64;
            let (expired, keep): (Vec<Pending>, Vec<Pending>) = retry
                .into_iter()
                .partition(|p| p.received_ms + max_age_ms <= at_next);
            for p in &expired {
                self.dead_letter(p, "expired", logs.clone(), dead).await;
            }
            if keep.is_empty() {
                return;
            }
            if round == 0 {
                tracing::warn!(sink = name, source = %self.source.name, events = keep.len(), detail = ?Printable(&last_detail), "spooled events not delivered yet; retrying");
            }
            tokio::time::sleep(wait).await;
            round += 1;
            metrics
                .sink_retries
                .with_label_values(&[name])
                .inc_by(keep.len() as u64);
            pending = keep;
        }
    }

    /// A dead letter of this sink: `vfgate failed replay` (or the admin API) delivers it
    /// to this sink again, straight through the sink (found by its name). Like a sender-mode
    /// entry it records where the event was going (the sink's type and destination) and the
    /// webhook version it was sent with (empty for a sink that sends none).
    fn entry(
        &self,
        event: Option<&Event>,
        reason: &'static str,
        attempts: Vec<AttemptLog>,
        body: &[u8],
    ) -> FailedEntry {
        let built = self.live.load();
        let (event_id, event_type) = event.map_or(("", ""), |e| (&e.event_id, &e.event_type));
        FailedEntry {
            id: new_id(),
            target: built.sink.destination(),
            version: built.sink.webhook_version().unwrap_or_default().to_string(),
            header_names: vec![],
            secret_ref: String::new(),
            event_id: event_id.to_string(),
            event_type: event_type.to_string(),
            sink: Some(self.name.clone()),
            source: Some(self.source.name.clone()),
            reason: reason.to_string(),
            created_at: now_rfc3339(),
            attempts,
            event: String::from_utf8_lossy(body).into_owned(),
            mapped: event.filter(|e| e.is_mapped()).map(|e| MappedFields {
                timestamp_ms: e.timestamp_ms,
                org_id: e.org_id.clone(),
            }),
            scheme: String::new(),
        }
    }

    async fn dead_letter(
        &self,
        p: &Pending,
        reason: &'static str,
        attempts: Vec<AttemptLog>,
        dead: &mut DeadLetters,
    ) {
        let entry = self.entry(Some(&p.event), reason, attempts, &p.event.body);
        tracing::debug!(sink = %self.name, event_id = ?Printable(&p.event.event_id), seq = p.seq, reason, id = %entry.id, "spool: dead-lettered");
        dead.add(reason, &p.event.event_id, &entry.id);
        self.store(entry, reason).await;
    }

    /// A record whose checksum holds but that is not an event (cannot happen unless the
    /// file was edited): kept as a `corrupt` dead letter.
    async fn dead_letter_raw(&self, payload: Bytes, why: &str) {
        let body = record::split(&payload).map(|(_, b)| b).unwrap_or(payload);
        let entry = self.entry(
            None,
            "corrupt",
            vec![attempt_log(&now_rfc3339(), "not_sent", why)],
            &body,
        );
        tracing::error!(sink = %self.name, why = ?Printable(why), id = %entry.id, "spool: unreadable record dead-lettered");
        self.store(entry, "corrupt").await;
    }

    /// Writes a dead letter, retrying until the store takes it: the cursor must not pass an
    /// event that is neither delivered nor stored.
    async fn store(&self, entry: FailedEntry, reason: &'static str) {
        let entry = Arc::new(entry);
        loop {
            let (store, e) = (self.ctx.dead.clone(), entry.clone());
            // A writer thread that failed (a panic) is a failed write too: returning here would
            // let the cursor pass an event that is neither delivered nor stored.
            match tokio::task::spawn_blocking(move || store.put(&e)).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot write a dead letter; retrying in 5s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the dead-letter writer failed; retrying in 5s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
        self.ctx
            .metrics
            .dead_letters
            .with_label_values(&[self.name.as_str(), reason])
            .inc();
    }
}

/// Why a dead letter could not be replayed to its sink.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The store failed to finish the claim.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored bytes are not an event any more (edited by hand).
    #[error("entry {id}: the stored event cannot be parsed: {reason}")]
    NotAnEvent {
        /// Entry id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// A replay's result: whether the sink took the event, and the last attempt's status
/// label (`"200"`, `"503"`, `"timeout"`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The sink accepted it (the entry is removed).
    pub delivered: bool,
    /// Status label of the attempt.
    pub status: String,
    /// Detail of a failure.
    pub detail: Option<String>,
}

/// The dead letters of one batch, for its one summary line.
#[derive(Debug, Default)]
struct DeadLetters {
    events: usize,
    by_reason: std::collections::BTreeMap<&'static str, usize>,
    /// The first event id (as received: escaped when logged) and its entry id.
    first: Option<(String, String)>,
}

impl DeadLetters {
    fn add(&mut self, reason: &'static str, event_id: &str, entry_id: &str) {
        self.events += 1;
        *self.by_reason.entry(reason).or_default() += 1;
        self.first
            .get_or_insert_with(|| (event_id.to_string(), entry_id.to_string()));
    }

    /// `3 events (rejected 2, expired 1); first event_id "evt_1" as entry ID`, or `None`.
    fn summary(&self) -> Option<String> {
        let (event_id, entry) = self.first.as_ref()?;
        let reasons: Vec<String> = self
            .by_reason
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        Some(format!(
            "{} event{} ({}); first event_id {:?} as entry {entry} (vfgate failed list)",
            self.events,
            if self.events == 1 { "" } else { "s" },
            reasons.join(", "),
            Printable(event_id),
        ))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Io {
            path: String::new(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

/// The event a dead letter holds: its bytes parsed again, or for an event of another scheme
/// than VF, its bytes with the mapped fields it kept.
fn entry_event(entry: &FailedEntry) -> Result<Event, crate::event::InvalidEvent> {
    let body = Bytes::from(entry.event.clone().into_bytes());
    match &entry.mapped {
        None => Event::parse(body),
        Some(m) => Event::mapped(
            body,
            entry.event_id.clone(),
            entry.event_type.clone(),
            m.timestamp_ms,
            m.org_id.clone(),
        ),
    }
}

/// Delivers the claimed dead letter to `sink` (the one it names) again, straight through it
/// (not back through the receive path, so no other sink gets it twice and no age window
/// applies): one attempt. Delivered: the entry is removed; otherwise the attempt is added to
/// it and it goes back to the store. Either way the claim is finished here.
pub async fn replay_to_sink(
    claim: Claim,
    sink: &dyn Sink,
    metrics: &Metrics,
) -> Result<Replayed, ReplayError> {
    let entry = claim.entry();
    let name = entry.sink.clone().unwrap_or_default();
    let event = match entry_event(entry) {
        Ok(e) => e,
        Err(e) => {
            let id = entry.id.clone();
            blocking(move || claim.release()).await?;
            return Err(ReplayError::NotAnEvent {
                id,
                reason: e.to_string(),
            });
        }
    };
    let at = now_rfc3339();
    let (verdicts, status) = deliver::attempt(sink, &name, metrics, &[Arc::new(event)]).await;
    let (delivered, detail) = match verdicts.into_iter().next() {
        Some(Verdict::Ok) => (true, None),
        Some(Verdict::Permanent { detail, .. }) | Some(Verdict::Retry { detail, .. }) => {
            (false, Some(detail))
        }
        None => (false, Some("no verdict".into())),
    };
    if delivered {
        blocking(move || claim.delivered()).await?;
    } else {
        let attempt = attempt_log(&at, &status, detail.as_deref().unwrap_or_default());
        blocking(move || claim.keep(attempt)).await?;
    }
    Ok(Replayed {
        delivered,
        status,
        detail,
    })
}

/// One attempt of a dead letter: the upstream status when there was an answer, else the
/// error kind, with the detail.
fn attempt_log(at: &str, status: &str, detail: &str) -> AttemptLog {
    let code = status.parse::<u16>().ok();
    AttemptLog {
        at: at.to_string(),
        status: code,
        error: Some(match code {
            Some(_) => detail.to_string(),
            None => format!("{status}: {detail}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that answers after `delay`, taking the event or not.
    struct Slow {
        ok: bool,
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl Sink for Slow {
        async fn send(&self, _batch: &[Arc<Event>]) -> crate::sinks::Attempt {
            tokio::time::sleep(self.delay).await;
            let (status, verdict) = if self.ok {
                ("200", Verdict::Ok)
            } else {
                (
                    "503",
                    Verdict::retry(crate::sinks::RetryKind::Unavailable, "down", None),
                )
            };
            crate::sinks::Attempt {
                status: status.into(),
                result: crate::sinks::SendResult::All(verdict),
            }
        }

        fn encode(&self, _batch: &[Arc<Event>]) -> Result<Vec<u8>, crate::sinks::SendResult> {
            Ok(vec![])
        }

        fn destination(&self) -> String {
            "test slow".into()
        }
    }

    fn dead_letter(id: &str) -> FailedEntry {
        FailedEntry {
            id: id.into(),
            target: "test slow".into(),
            version: String::new(),
            header_names: vec![],
            secret_ref: String::new(),
            event_id: "evt_race".into(),
            event_type: "user.login".into(),
            sink: Some("up".into()),
            source: Some("syvault".into()),
            reason: "rejected".into(),
            created_at: now_rfc3339(),
            attempts: vec![],
            mapped: None,
            scheme: String::new(),
            event: format!(
                r#"{{"event_id":"evt_race","event_type":"user.login","timestamp":"{}"}}"#,
                now_rfc3339()
            ),
        }
    }

    /// Waits `after` ms, claims `id` and replays it to `sink`; `None` when refused because
    /// another replay holds it.
    async fn claim_and_replay(
        store: &FailedStore,
        id: &str,
        sink: &Slow,
        metrics: &Metrics,
        after: u64,
    ) -> Option<Replayed> {
        tokio::time::sleep(Duration::from_millis(after)).await;
        match store.claim(id) {
            Ok(c) => Some(replay_to_sink(c, sink, metrics).await.unwrap()),
            Err(StoreError::InProgress(_)) => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// One replay at a time per entry: a failing replay racing a successful one is refused
    /// while the other holds the entry, so it can never write back an entry that the
    /// successful one delivered (a later replay would deliver it again).
    #[tokio::test]
    async fn a_failing_replay_racing_a_successful_one_does_not_bring_the_entry_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = FailedStore::new(dir.path());
        let id = "20260101T000000000Z-0000race";
        store.put(&dead_letter(id)).unwrap();
        let metrics = Metrics::new();
        let slow = Duration::from_millis(300);
        let failing = Slow {
            ok: false,
            delay: slow,
        };
        let succeeding = Slow {
            ok: true,
            delay: slow,
        };
        // The failing replay first: the successful one is refused meanwhile, and the entry
        // goes back with the failed attempt.
        let (fail, ok) = tokio::join!(
            claim_and_replay(&store, id, &failing, &metrics, 0),
            claim_and_replay(&store, id, &succeeding, &metrics, 50)
        );
        assert!(!fail.expect("claimed").delivered);
        assert_eq!(ok, None, "refused while the other replay holds the entry");
        assert_eq!(store.get(id).unwrap().attempts.len(), 1);

        // The successful one first: the failing one is refused, and the delivered entry is
        // gone for good.
        let (ok, fail) = tokio::join!(
            claim_and_replay(&store, id, &succeeding, &metrics, 0),
            claim_and_replay(&store, id, &failing, &metrics, 50)
        );
        assert!(ok.expect("claimed").delivered);
        assert_eq!(fail, None, "refused while the other replay holds the entry");
        assert!(matches!(store.get(id), Err(StoreError::NotFound(_))));
        assert!(matches!(store.claim(id), Err(StoreError::NotFound(_))));
        assert!(store.list().unwrap().entries.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no claim left"
        );
    }
}
