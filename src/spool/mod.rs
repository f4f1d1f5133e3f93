//! The spool: accepted events of `ack = "spool"` sources on disk until every sink took them.
//!
//! Storage ([`log`]): per source, a segmented append-only log in `<spool.dir>/<source>/`,
//! records `[len u32][crc32 u32][seq u64][payload]` (little endian; the CRC covers seq and
//! payload; the payload is the receive time in unix ms, 8 bytes, then the event's exact bytes).
//! Recovery truncates the last segment at the first record whose length or checksum does not
//! hold (a write torn by a crash); everything before it is kept. Why a hand-written log and
//! not redb: the README's design section has the measurements.
//!
//! Writing: one writer thread per source takes every append queued while it was busy as one
//! group, writes it and fsyncs once (`fsync = "batch"`: group commit), or once per event
//! (`"always"`), or never (`"never"`); each request is answered after its group is durable.
//!
//! Reading ([`drain`]): one drainer per (source, sink) reads batches from its cursor
//! (`<source>/cursors/<sink>`), delivers them with retries until `max_age`, dead-letters what
//! cannot be delivered, then moves the cursor; segments every cursor has passed are deleted.

pub mod drain;
pub mod log;

use crate::config::{FsyncPolicy, SpoolConfig};
use crate::metrics::Metrics;
use crate::sender::failed::FailedStore;
use bytes::{BufMut, Bytes, BytesMut};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

/// Why an event could not be spooled.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// `spool.max_bytes` reached.
    #[error("the spool is full ({max_bytes} bytes); retry later")]
    Full {
        /// The configured budget.
        max_bytes: u64,
    },
    /// The write failed (disk full, I/O error).
    #[error("cannot write the spool: {0}")]
    Io(String),
    /// The writer is gone (shutting down).
    #[error("the spool is shutting down")]
    Closed,
}

struct Append {
    payload: Bytes,
    reply: oneshot::Sender<Result<(), SpoolError>>,
}

/// Where a sink's drainer is, for the backlog metrics.
pub struct DrainState {
    /// Sink name.
    pub sink: String,
    /// The cursor: next sequence number the sink needs.
    pub next: AtomicU64,
    /// Receive time (unix ms) of the oldest event the sink has not taken; 0 when none.
    pub oldest_ms: AtomicI64,
}

/// The spool of one source.
pub struct SourceLog {
    /// Source name.
    pub name: String,
    shared: Arc<log::Shared>,
    tx: std::sync::mpsc::Sender<Append>,
    committed: watch::Receiver<u64>,
    drains: Vec<Arc<DrainState>>,
}

/// The whole `[spool]`: every spooled source's log, the dead-letter store, the budget.
pub struct Spool {
    max_bytes: u64,
    /// Largest event (the server's body limit): the spool is "full" for readiness when one
    /// more could not fit.
    max_event: u64,
    sources: Vec<Arc<SourceLog>>,
    /// `<spool.dir>/dead-letter`.
    pub dead: FailedStore,
}

/// Builds the payload of a record: receive time, then the event's bytes.
pub fn encode_record(received_ms: i64, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + body.len());
    b.put_i64_le(received_ms);
    b.put_slice(body);
    b.freeze()
}

/// Splits a record payload into receive time and event bytes.
pub fn decode_record(payload: Bytes) -> Option<(i64, Bytes)> {
    if payload.len() < 8 {
        return None;
    }
    let t = i64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    Some((t, payload.slice(8..)))
}

fn writer(
    mut log: log::Log,
    rx: std::sync::mpsc::Receiver<Append>,
    policy: FsyncPolicy,
    committed: watch::Sender<u64>,
    source: String,
) {
    const GROUP: usize = 4096;
    let mut group: Vec<Append> = Vec::with_capacity(64);
    let mut payloads: Vec<Bytes> = Vec::with_capacity(64);
    while let Ok(first) = rx.recv() {
        group.push(first);
        if policy != FsyncPolicy::Always {
            while group.len() < GROUP {
                match rx.try_recv() {
                    Ok(a) => group.push(a),
                    Err(_) => break,
                }
            }
        }
        payloads.extend(group.iter().map(|a| a.payload.clone()));
        let result = log.append(&payloads).map(drop).map_err(|e| {
            tracing::error!(source = %source, error = %e, "spool append failed");
            if let Err(e) = log.recover() {
                tracing::error!(source = %source, error = %e, "spool recovery after a failed append failed");
            }
            SpoolError::Io(e.to_string())
        });
        committed.send_replace(log.next_seq());
        for a in group.drain(..) {
            let _ = a.reply.send(result.clone());
        }
        payloads.clear();
    }
}

impl Spool {
    /// Opens (recovering) the log of every `(source, sinks)` and starts the writers.
    pub fn open(
        cfg: &SpoolConfig,
        sources: &[(String, Vec<String>)],
        max_event: u64,
    ) -> Result<Arc<Spool>, log::LogError> {
        let fsync = match cfg.fsync {
            FsyncPolicy::Never => log::Fsync::Never,
            FsyncPolicy::Batch | FsyncPolicy::Always => log::Fsync::Always,
        };
        let mut logs = Vec::new();
        for (name, sinks) in sources {
            let dir = cfg.dir.join(name);
            let log = log::Log::open(&dir, cfg.segment_bytes, fsync)?;
            if log.truncated_bytes > 0 {
                tracing::warn!(source = %name, bytes = log.truncated_bytes, "spool: cut a torn record at the end of the log (a crash mid-write; that request was never acknowledged)");
            }
            remove_stale_cursors(&dir, sinks);
            let start = log.next_seq();
            let mut drains = Vec::new();
            for sink in sinks {
                let c = log::Cursor::open_or(&dir, sink, start)?;
                drains.push(Arc::new(DrainState {
                    sink: sink.clone(),
                    next: AtomicU64::new(c.next),
                    oldest_ms: AtomicI64::new(0),
                }));
            }
            let shared = log.shared();
            let backlog = shared.committed();
            let (ctx, crx) = watch::channel(log.next_seq());
            let (tx, rx) = std::sync::mpsc::channel();
            let (policy, source) = (cfg.fsync, name.clone());
            std::thread::Builder::new()
                .name(format!("vfgate-spool-{name}"))
                .spawn(move || writer(log, rx, policy, ctx, source))
                .expect("spawn thread");
            tracing::info!(source = %name, dir = %dir.display(), next_seq = backlog, "spool open");
            logs.push(Arc::new(SourceLog {
                name: name.clone(),
                shared,
                tx,
                committed: crx,
                drains,
            }));
        }
        Ok(Arc::new(Spool {
            max_bytes: cfg.max_bytes,
            max_event,
            sources: logs,
            dead: FailedStore::new(cfg.dir.join("dead-letter")),
        }))
    }

    /// Bytes of every source's log.
    pub fn bytes(&self) -> u64 {
        self.sources.iter().map(|s| s.shared.bytes()).sum()
    }

    /// Whether an event of the largest accepted size would not fit (for `/readyz`).
    pub fn is_full(&self) -> bool {
        self.bytes() + self.max_event > self.max_bytes
    }

    /// Appends one event of `src` and waits until it is durable per the fsync policy.
    pub async fn append(
        &self,
        src: &SourceLog,
        body: &[u8],
        received_ms: i64,
    ) -> Result<(), SpoolError> {
        if self.bytes() + body.len() as u64 + 24 > self.max_bytes {
            return Err(SpoolError::Full {
                max_bytes: self.max_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        src.tx
            .send(Append {
                payload: encode_record(received_ms, body),
                reply,
            })
            .map_err(|_| SpoolError::Closed)?;
        rx.await.unwrap_or(Err(SpoolError::Closed))
    }

    /// The log of source `name`.
    pub fn source(&self, name: &str) -> Option<Arc<SourceLog>> {
        self.sources.iter().find(|s| s.name == name).cloned()
    }

    /// Updates the spool gauges (called at scrape time).
    pub fn observe(&self, metrics: &Metrics) {
        metrics.spool_bytes.set(self.bytes() as i64);
        let now = crate::event::now_ms();
        let mut per_sink: std::collections::BTreeMap<&str, (u64, f64)> = Default::default();
        for src in &self.sources {
            let committed = src.shared.committed();
            for d in &src.drains {
                let backlog = committed.saturating_sub(d.next.load(Ordering::Acquire));
                let oldest = d.oldest_ms.load(Ordering::Acquire);
                let age = if backlog > 0 && oldest > 0 {
                    (now - oldest).max(0) as f64 / 1000.0
                } else {
                    0.0
                };
                let e = per_sink.entry(d.sink.as_str()).or_default();
                e.0 += backlog;
                e.1 = e.1.max(age);
            }
        }
        for (sink, (backlog, age)) in per_sink {
            metrics
                .spool_events
                .with_label_values(&[sink])
                .set(backlog as i64);
            metrics.spool_oldest_age.with_label_values(&[sink]).set(age);
        }
    }
}

/// A cursor of a sink no longer configured for this source would hold segments forever, and
/// would replay the whole retained log if the sink came back: drop it.
fn remove_stale_cursors(dir: &Path, sinks: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir.join("cursors")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !sinks.contains(&name) {
            tracing::warn!(cursor = %name, dir = %dir.display(), "spool: removing the cursor of a sink this source no longer uses");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_payload_roundtrip() {
        let p = encode_record(1_700_000_000_123, b"{\"a\":1}");
        let (t, b) = decode_record(p).unwrap();
        assert_eq!(t, 1_700_000_000_123);
        assert_eq!(&b[..], b"{\"a\":1}");
        assert!(decode_record(Bytes::from_static(b"short")).is_none());
    }
}
