//! Groups queued events into batches and hands each to a delivery task.
//!
//! A batch starts with the first queued event and takes more until `max_events`, until the
//! next one would pass `max_bytes` (it starts the next batch), or until `linger` has passed
//! since the first (with `linger = 0`, only what is already queued). At most `concurrency`
//! batches are in flight (1 for sinks that need order); while a batch waits for a free slot
//! it takes in what queued meanwhile, so under load batches grow without any linger, and an
//! idle sink sends at once. Time is tokio's, so tests pause it.
//!
//! Owns: batch boundaries and the delivery slots; sending and retries are `deliver.rs`'s.
//! Uses `config`, `metrics` and the `sinks::Sink` trait; knows nothing of requests, dedupe
//! or the spool.

use super::{deliver, Job};
use crate::config::SinkCommon;
use crate::metrics::Metrics;
use crate::sinks::Sink;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

/// Runs until the channel closes; waits for in-flight deliveries before returning.
pub async fn run(
    common: SinkCommon,
    sink: Arc<dyn Sink>,
    mut rx: mpsc::Receiver<Job>,
    metrics: Arc<Metrics>,
) {
    let limits = common.batch;
    let concurrency = if sink.ordered() {
        1
    } else {
        common.concurrency
    };
    let sem = Arc::new(Semaphore::new(concurrency));
    let common = Arc::new(common);
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => break,
            },
        };
        let mut bytes = first.event.body.len() as u64;
        let mut batch = vec![first];
        let deadline = Instant::now() + limits.linger;
        while batch.len() < limits.max_events {
            let next = if limits.linger.is_zero() {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            } else {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(j)) => j,
                    _ => break,
                }
            };
            if let Some(over) = add(&mut batch, &mut bytes, limits.max_bytes, next) {
                carry = Some(over);
                break;
            }
        }
        if limits.linger.is_zero() && batch.len() < limits.max_events {
            // Let the request handlers that are ready to run submit theirs first: on a busy
            // runtime this turns a stream of one-event batches into a few larger ones.
            tokio::task::yield_now().await;
        }
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        // Events that queued while every delivery slot was busy join this batch: under load
        // batches grow by themselves, without a linger.
        while carry.is_none() && batch.len() < limits.max_events {
            let Ok(next) = rx.try_recv() else { break };
            carry = add(&mut batch, &mut bytes, limits.max_bytes, next);
        }
        let (sink, common, metrics) = (sink.clone(), common.clone(), metrics.clone());
        tokio::spawn(async move {
            deliver::deliver(&*sink, &common, &metrics, batch).await;
            drop(permit);
        });
    }
    // Wait for every in-flight delivery.
    let _ = sem.acquire_many(concurrency as u32).await;
}

/// Adds `job` to the batch unless it would pass `max_bytes`; then hands it back (it starts
/// the next batch).
fn add(batch: &mut Vec<Job>, bytes: &mut u64, max_bytes: u64, job: Job) -> Option<Job> {
    let len = job.event.body.len() as u64;
    if *bytes + len > max_bytes {
        return Some(job);
    }
    *bytes += len;
    batch.push(job);
    None
}
