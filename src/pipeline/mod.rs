//! The pipeline between the request handlers and the sinks: per sink, a batcher that groups
//! concurrent events by `max_events` / `max_bytes` / `linger`, and a delivery loop that sends
//! each batch, retries what may be retried with exponential backoff and full jitter within
//! the retry budget (honouring `Retry-After`), halves batches the target refuses whole, and
//! answers each waiting request with its own event's final [`Verdict`].
//!
//! Owns: the per-sink queues and the answer to each waiting request. Uses `sinks`, `retry`,
//! `config`, `event`, `metrics` and `escape`; must not import `ingest`, `spool`, `server`
//! or `sender` (the spool's drainer uses `deliver`, not the other way round).

pub mod batcher;
pub mod deliver;

use crate::config::SinkCommon;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::sinks::{RetryKind, Sink, Verdict};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A built sink with its settings.
pub struct Built {
    /// Settings.
    pub common: SinkCommon,
    /// The sink.
    pub sink: Arc<dyn Sink>,
}

/// A sink as it is built now: the spool drainers and the admin API read it at each use, and
/// a config reload swaps it whole (the name, and so a spooled sink's cursor, stays).
pub type LiveSink = Arc<arc_swap::ArcSwap<Built>>;

/// A new [`LiveSink`] holding `sink`.
pub fn live(common: SinkCommon, sink: Arc<dyn Sink>) -> LiveSink {
    Arc::new(arc_swap::ArcSwap::from_pointee(Built { common, sink }))
}

/// One event waiting for a sink.
pub struct Job {
    /// The event.
    pub event: Arc<Event>,
    /// Where its final verdict goes.
    pub reply: oneshot::Sender<Verdict>,
}

/// The handle request handlers use to give a sink an event.
#[derive(Clone)]
pub struct SinkHandle {
    /// Sink name.
    pub name: Arc<str>,
    tx: mpsc::Sender<Job>,
}

impl SinkHandle {
    /// Queues `event`; the receiver yields its final verdict.
    pub async fn submit(&self, event: Arc<Event>) -> oneshot::Receiver<Verdict> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.tx.send(Job { event, reply }).await {
            let _ = job.reply.send(Verdict::retry(
                RetryKind::Unavailable,
                format!("sink {} is shutting down", self.name),
                None,
            ));
        }
        rx
    }
}

/// A sink's batcher, not yet started.
pub struct SinkWorker {
    /// Settings.
    pub common: SinkCommon,
    /// The sink.
    pub sink: Arc<dyn Sink>,
    rx: mpsc::Receiver<Job>,
}

/// Creates the handle and the worker of one sink.
pub fn channel(common: SinkCommon, sink: Arc<dyn Sink>) -> (SinkHandle, SinkWorker) {
    let cap = (common.batch.max_events * common.concurrency * 2).clamp(1024, 65_536);
    let (tx, rx) = mpsc::channel(cap);
    (
        SinkHandle {
            name: Arc::from(common.name.as_str()),
            tx,
        },
        SinkWorker { common, sink, rx },
    )
}

impl SinkWorker {
    /// Runs the batcher until every handle is dropped and the queue is empty.
    pub async fn run(self, metrics: Arc<Metrics>) {
        batcher::run(self.common, self.sink, self.rx, metrics).await
    }
}
