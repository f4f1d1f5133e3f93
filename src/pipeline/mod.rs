//! The pipeline between the request handlers and the sinks: per sink, a batcher that groups
//! concurrent events by `max_events` / `max_bytes` / `linger`, and a delivery loop that sends
//! each batch, retries what may be retried with exponential backoff and full jitter within
//! the retry budget (honouring `Retry-After`), halves batches the target refuses whole, and
//! answers each waiting request with its own event's [`Delivery`].
//!
//! Owns: the per-sink queues and the answer to each waiting request. Uses `sinks`, `retry`,
//! `config`, `event`, `metrics` and `escape`; must not import `ingest`, `spool`, `server`
//! or `sender` (the spool's drainer uses `deliver`, not the other way round).

pub mod batcher;
pub mod deliver;

use crate::config::SinkCommon;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::sinks::Sink;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How a failed delivery is answered to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// 502 `upstream_error`: the target refused the event for good.
    Permanent,
    /// 503 `upstream_unavailable`: the target is down, throttling or refusing our credentials.
    Unavailable,
    /// 504 `upstream_timeout`: no answer in time.
    Timeout,
}

/// The final outcome of one event at one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted by the sink.
    Delivered,
    /// Not delivered.
    Failed {
        /// How to answer.
        kind: FailKind,
        /// Sink name and reason (no secrets).
        detail: String,
        /// Suggested wait for the sender.
        retry_after: Option<Duration>,
    },
}

/// One event waiting for a sink.
pub struct Job {
    /// The event.
    pub event: Arc<Event>,
    /// Where its outcome goes.
    pub reply: oneshot::Sender<Delivery>,
}

/// The handle request handlers use to give a sink an event.
#[derive(Clone)]
pub struct SinkHandle {
    /// Sink name.
    pub name: Arc<str>,
    tx: mpsc::Sender<Job>,
}

impl SinkHandle {
    /// Queues `event`; the receiver yields its delivery.
    pub async fn submit(&self, event: Arc<Event>) -> oneshot::Receiver<Delivery> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.tx.send(Job { event, reply }).await {
            let _ = job.reply.send(Delivery::Failed {
                kind: FailKind::Unavailable,
                detail: format!("sink {} is shutting down", self.name),
                retry_after: None,
            });
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
