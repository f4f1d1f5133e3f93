//! The spool: accepted events of `ack = "spool"` sources on disk until every sink took them.
//!
//! Storage ([`log`]): per source, a segmented append-only log in `<spool.dir>/<source>/`,
//! records `[len u32][crc32 u32][seq u64][payload]` (little endian; the CRC covers seq and
//! payload; the payload, laid out by [`record`], is the receive time and the event's exact
//! bytes, with the mapped fields between them for an event of another scheme than VF).
//! Recovery cuts a write torn by a crash off the last segment; damage anywhere else (a whole
//! record that fails its checksum, even the last one) is skipped, quarantined and counted, and
//! sequence numbers are never reused (see [`log`]). Why a hand-written log and
//! not redb: the README's design section has the measurements.
//!
//! Writing: one writer thread per source takes every append queued while it was busy as one
//! group, writes it and fsyncs once (`fsync = "batch"`: group commit), or once per event
//! (`"always"`), or never (`"never"`); each request is answered after its group is durable.
//!
//! Reading ([`drain`]): one drainer per (source, sink) reads batches from its cursor
//! (`<source>/cursors/<sink>`), delivers them with retries until `max_age`, dead-letters what
//! cannot be delivered, then moves the cursor; segments every cursor has passed are deleted.
//!
//! Owns: `spool.dir` (its `dedupe/` is the dedupe journal's), the writer threads and the
//! directory lock. Uses `config`, `deadletter`, `event` (a record holds one), `fsutil`,
//! `metrics` and `time` (`drain` adds `pipeline`, `sinks`, `retry` and `escape`); knows nothing of requests or
//! HTTP and must not import `ingest` or `server`.

pub mod drain;
pub mod log;
#[cfg(test)]
mod model;
pub mod record;

use crate::config::{FsyncPolicy, SpoolConfig};
use crate::deadletter::FailedStore;
use crate::event::Event;
use crate::metrics::Metrics;
use bytes::Bytes;
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
    /// The write failed (disk full, I/O error); the text (path, OS error) is for the log.
    #[error("cannot write the spool: {0}")]
    Io(String),
    /// The source's spool directory was removed or replaced under the running process.
    #[error("the spool directory of source {0} was removed or replaced while running")]
    Gone(String),
    /// The writer is gone (shutting down).
    #[error("the spool is shutting down")]
    Closed,
    /// The event's record would exceed [`log::MAX_RECORD`] (a body near the 64 MiB limit with
    /// large mapped fields): refused before it is acknowledged, never written.
    #[error("the event's spool record would be {bytes} bytes, over {max}")]
    TooLarge {
        /// The record's size.
        bytes: usize,
        /// [`log::MAX_RECORD`].
        max: usize,
    },
}

impl SpoolError {
    /// What the sender is told: a fixed sentence per kind, never a path or an OS error.
    pub fn public_detail(&self) -> &'static str {
        match self {
            SpoolError::Full { .. } => "the spool is full; retry later",
            SpoolError::Io(_) => "the spool cannot be written right now; retry later",
            SpoolError::Gone(_) => "the spool is not writable (its directory is gone); retry later",
            SpoolError::Closed => "the spool is shutting down; retry later",
            SpoolError::TooLarge { .. } => "the event is too large to spool",
        }
    }
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
    /// Whether cursors are fsynced before the segments they pass are deleted.
    durable: bool,
    /// Set while the source's directory is removed or replaced (appends refused).
    gone: Arc<std::sync::atomic::AtomicBool>,
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
    /// `<spool.dir>/lock`, held while this process owns the spool.
    _lock: std::fs::File,
}

/// Puts the calling (writer) thread under `SCHED_BATCH`: woken by an append or by its fsync's
/// completion, it does not preempt the thread serving requests, but runs when that thread
/// waits for more input. The group it then takes is everything the event loop queued in its
/// burst, and there is one switch per group instead of one per append. Measured with
/// `scripts/loadtest.sh spool` on one core (`fsync = "never"`: 47.7 k → 64.2 k req/s; `batch`:
/// 29.2 k → 31.9 k, groups of 11 → 17 events per fsync). The thread's nice value is kept.
/// Only a hint: a refusal is logged at debug level.
fn batch_scheduling(source: &str) {
    use rustix::process::{getpriority_process, setpriority_process};
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
        NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityOsValue, ThreadSchedulePolicy,
    };
    let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    // (Linux keeps a nice value per thread: `None` is this thread.)
    let nice = getpriority_process(None).ok();
    // Sets the policy, then nice 0 (which an unprivileged thread at a higher nice is refused:
    // its nice stays as it was).
    let _ = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Os(ThreadPriorityOsValue::default()),
        batch,
    );
    if let Some(n) = nice {
        if getpriority_process(None).ok() != Some(n) {
            let _ = setpriority_process(None, n);
        }
    }
    if thread_schedule_policy().ok() != Some(batch) {
        tracing::debug!(source = %source, "spool: the writer thread keeps the default scheduling policy");
    }
}

fn writer(
    mut log: log::Log,
    rx: std::sync::mpsc::Receiver<Append>,
    policy: FsyncPolicy,
    committed: watch::Sender<u64>,
    source: String,
    gone: Arc<std::sync::atomic::AtomicBool>,
) {
    const GROUP: usize = 4096;
    batch_scheduling(&source);
    let mut group: Vec<Append> = Vec::with_capacity(64);
    let mut payloads: Vec<Bytes> = Vec::with_capacity(64);
    // Whether the active segment is still the file at its path; an error of the check
    // itself counts as gone (nothing is acknowledged into a file we cannot vouch for).
    let linked = |log: &log::Log| {
        log.still_linked().unwrap_or_else(|e| {
            tracing::error!(source = %source, error = %e, "spool: cannot check the segment file");
            false
        })
    };
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
        let result = if gone.load(Ordering::Acquire) && !linked(&log) {
            Err(SpoolError::Gone(source.clone()))
        } else {
            if gone.swap(false, Ordering::AcqRel) {
                tracing::info!(source = %source, "spool: the segment file is back at its path; accepting again");
            }
            payloads.extend(group.iter().map(|a| a.payload.clone()));
            let written = log.append(&payloads).map(drop).map_err(|e| {
                tracing::error!(source = %source, error = %e, "spool append failed");
                if let Err(e) = log.recover() {
                    tracing::error!(source = %source, error = %e, "spool recovery after a failed append failed");
                }
                SpoolError::Io(e.to_string())
            });
            // Written and synced: acknowledged only if the file is still the spool's (a
            // removed directory would take these events with it).
            match written {
                Ok(()) if !linked(&log) => {
                    gone.store(true, Ordering::Release);
                    tracing::error!(source = %source, dir = %log.shared().dir().display(), "spool: the source's directory was removed or replaced while running; appends are refused (503) and /readyz is 503 until its segment file is back; restart vfgate to start a new spool there");
                    Err(SpoolError::Gone(source.clone()))
                }
                other => other,
            }
        };
        committed.send_replace(log.next_seq());
        for a in group.drain(..) {
            let _ = a.reply.send(result.clone());
        }
        payloads.clear();
    }
}

/// Why the spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// File system.
    #[error(transparent)]
    Log(#[from] log::LogError),
    /// Another process holds the spool dir.
    #[error("{dir}: another vfgate process is using this spool dir (each process needs its own)")]
    Locked {
        /// The spool dir.
        dir: String,
    },
    /// A cursor of a sink this source no longer names still has events to deliver: the
    /// sink was renamed or removed while it had a backlog.
    #[error("source {source_name}: the spool holds {backlog} undelivered events for sink {sink:?}, which the config no longer lists for this source (renamed or removed?). Put {sink:?} back in the source's sinks until its backlog is 0 (vfgate_spool_events), or delete {path} to drop those events for it")]
    Orphaned {
        /// Source.
        source_name: String,
        /// The sink the cursor belongs to.
        sink: String,
        /// Events it has not taken.
        backlog: u64,
        /// The cursor file.
        path: String,
    },
}

/// Attaches `sinks` to the log behind `shared` (before the source answers its first 202),
/// returning each sink's next sequence number, in order:
/// - a sink with a cursor goes on from it;
/// - a sink without one (new to this log) gets a cursor at the oldest retained record,
///   written and fsynced (file and directory) before this returns, so that no event
///   acknowledged from now on can ever be behind a missing cursor;
/// - an unreadable cursor (emptied by a power loss) restarts at the oldest retained record
///   (at least once, never a skip);
/// - a cursor of a sink not in `sinks` with nothing left to take is removed; one with a
///   backlog is an [`OpenError::Orphaned`]: a renamed sink never silently drops the old
///   name's events.
pub fn attach(
    source: &str,
    shared: &log::Shared,
    sinks: &[String],
    durable: bool,
) -> Result<Vec<u64>, OpenError> {
    let dir = shared.dir();
    let first = shared.first_seq();
    let committed = shared.committed();
    for name in log::cursor_names(dir)? {
        if sinks.contains(&name) {
            continue;
        }
        let path = log::cursor_dir(dir).join(&name);
        let backlog = match log::Cursor::load(dir, &name)? {
            log::Stored::At(n) => committed.saturating_sub(n.max(first)),
            _ => committed.saturating_sub(first),
        };
        if backlog > 0 {
            return Err(OpenError::Orphaned {
                source_name: source.to_string(),
                sink: name,
                backlog,
                path: path.display().to_string(),
            });
        }
        tracing::info!(source, cursor = %name, "spool: removing the cursor of a sink this source no longer uses (it had nothing left to deliver)");
        std::fs::remove_file(&path).map_err(|e| log::LogError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
    }
    let mut out = Vec::with_capacity(sinks.len());
    for sink in sinks {
        let next = match log::Cursor::load(dir, sink)? {
            log::Stored::At(n) => n,
            log::Stored::Missing => {
                if committed > first {
                    tracing::info!(source, sink = %sink, from = first, events = committed - first, "spool: new sink starts at the oldest retained event");
                }
                log::Cursor::create(dir, sink, first, durable)?.next
            }
            log::Stored::Unreadable => {
                tracing::warn!(source, sink = %sink, "spool cursor unreadable; the sink restarts from the oldest retained event (it may get events again, it misses none)");
                log::Cursor::create(dir, sink, first, durable)?.next
            }
        };
        out.push(next);
    }
    Ok(out)
}

/// Deletes the segments of `shared` that every cursor in `cursors` (sink name, next
/// sequence number) has passed, after making those cursor files durable when `durable`:
/// a segment goes only once no power loss can set a cursor back into it.
pub fn reclaim_passed(
    source: &str,
    shared: &log::Shared,
    cursors: &[(&str, u64)],
    durable: bool,
) -> usize {
    let min = cursors.iter().map(|c| c.1).min().unwrap_or(0);
    if !shared.reclaimable(min) {
        return 0;
    }
    if durable {
        for (sink, _) in cursors {
            if let Err(e) = log::sync_cursor(shared.dir(), sink) {
                tracing::warn!(source, error = %e, "spool: cannot make a cursor durable; its segments are kept for now");
                return 0;
            }
        }
    }
    shared.reclaim(min).unwrap_or_else(|e| {
        tracing::warn!(source, error = %e, "spool: cannot delete a drained segment");
        0
    })
}

impl SourceLog {
    /// Deletes the segments every sink of this source has passed (see [`reclaim_passed`]).
    pub fn reclaim(&self) {
        // After every drained batch: decide before collecting anything.
        let min = self
            .drains
            .iter()
            .map(|d| d.next.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        if !self.shared.reclaimable(min) {
            return;
        }
        let cursors: Vec<(&str, u64)> = self
            .drains
            .iter()
            .map(|d| (d.sink.as_str(), d.next.load(Ordering::Acquire)))
            .collect();
        reclaim_passed(&self.name, &self.shared, &cursors, self.durable);
    }

    /// The reader side of the log.
    pub fn shared(&self) -> &log::Shared {
        &self.shared
    }
}

impl Spool {
    /// Opens (recovering) the log of every `(source, sinks)`, attaches the sinks (see
    /// [`attach`]) and starts the writers.
    pub fn open(
        cfg: &SpoolConfig,
        sources: &[(String, Vec<String>)],
        max_event: u64,
    ) -> Result<Arc<Spool>, OpenError> {
        let fsync = match cfg.fsync {
            FsyncPolicy::Never => log::Fsync::Never,
            FsyncPolicy::Batch | FsyncPolicy::Always => log::Fsync::Always,
        };
        let durable = fsync == log::Fsync::Always;
        crate::fsutil::create_dir_all(&cfg.dir).map_err(|e| log::LogError::Io {
            path: cfg.dir.display().to_string(),
            source: e,
        })?;
        let lock = crate::fsutil::lock_dir(&cfg.dir)
            .map_err(|e| log::LogError::Io {
                path: cfg.dir.join("lock").display().to_string(),
                source: e,
            })?
            .ok_or_else(|| OpenError::Locked {
                dir: cfg.dir.display().to_string(),
            })?;
        let mut logs = Vec::new();
        for (name, sinks) in sources {
            let dir = cfg.dir.join(name);
            let log = log::Log::open(&dir, cfg.segment_bytes, fsync)?;
            if log.truncated_bytes > 0 {
                tracing::warn!(source = %name, bytes = log.truncated_bytes, "spool: cut a torn record at the end of the log (a crash mid-write; that request was never acknowledged)");
            }
            let shared = log.shared();
            let starts = attach(name, &shared, sinks, durable)?;
            // Segments every cursor has passed go now, not only after the next delivered
            // batch (a log that skipped past damage at open starts a new segment).
            let cursors: Vec<(&str, u64)> = sinks
                .iter()
                .map(String::as_str)
                .zip(starts.iter().copied())
                .collect();
            reclaim_passed(name, &shared, &cursors, durable);
            let drains = sinks
                .iter()
                .zip(starts)
                .map(|(sink, next)| {
                    Arc::new(DrainState {
                        sink: sink.clone(),
                        next: AtomicU64::new(next),
                        oldest_ms: AtomicI64::new(0),
                    })
                })
                .collect();
            let backlog = shared.committed();
            let (ctx, crx) = watch::channel(log.next_seq());
            let (tx, rx) = std::sync::mpsc::channel();
            let (policy, source) = (cfg.fsync, name.clone());
            let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let g = gone.clone();
            std::thread::Builder::new()
                .name(format!("vfgate-spool-{name}"))
                .spawn(move || writer(log, rx, policy, ctx, source, g))
                .expect("spawn thread");
            tracing::info!(source = %name, dir = %dir.display(), next_seq = backlog, "spool open");
            logs.push(Arc::new(SourceLog {
                name: name.clone(),
                shared,
                tx,
                committed: crx,
                drains,
                durable,
                gone,
            }));
        }
        Ok(Arc::new(Spool {
            max_bytes: cfg.max_bytes,
            max_event,
            sources: logs,
            dead: FailedStore::new(cfg.dir.join("dead-letter")),
            _lock: lock,
        }))
    }

    /// Bytes of every source's log.
    pub fn bytes(&self) -> u64 {
        self.sources.iter().map(|s| s.shared.bytes()).sum()
    }

    /// Sources whose spool directory was removed or replaced (for `/readyz`).
    pub fn unwritable(&self) -> Vec<&str> {
        self.sources
            .iter()
            .filter(|s| s.gone.load(Ordering::Acquire))
            .map(|s| s.name.as_str())
            .collect()
    }

    /// Whether an event of the largest accepted size would not fit (for `/readyz`).
    pub fn is_full(&self) -> bool {
        self.bytes() + self.max_event > self.max_bytes
    }

    /// Appends one event of `src` and waits until it is durable per the fsync policy.
    pub async fn append(
        &self,
        src: &SourceLog,
        event: &Event,
        received_ms: i64,
    ) -> Result<(), SpoolError> {
        // Both checks before the record is built: a refused event costs no copy.
        let len = record::encoded_len(event);
        if len > log::MAX_RECORD {
            return Err(SpoolError::TooLarge {
                bytes: len,
                max: log::MAX_RECORD,
            });
        }
        if self.bytes() + len as u64 + 16 > self.max_bytes {
            return Err(SpoolError::Full {
                max_bytes: self.max_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        src.tx
            .send(Append {
                payload: record::encode(received_ms, event),
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
        let now = crate::time::now_ms();
        let mut per_sink: std::collections::BTreeMap<&str, (u64, f64)> = Default::default();
        for src in &self.sources {
            let corrupt = metrics
                .spool_corrupt
                .with_label_values(&[src.name.as_str()]);
            let seen = corrupt.get();
            let now_corrupt = src.shared.corrupt_records();
            if now_corrupt > seen {
                corrupt.inc_by(now_corrupt - seen);
            }
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

#[cfg(test)]
mod scheduling {
    /// The writer's thread ends up under SCHED_BATCH with the nice value it had: a lower
    /// priority than the process asked for would starve the fsync, a higher one preempt
    /// the event loop.
    #[test]
    fn the_writer_thread_is_batch_scheduled_and_keeps_its_nice_value() {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let (policy, nice_before, nice_after) = std::thread::spawn(|| {
            // Raising the nice value is always allowed, so the test needs no privilege.
            let before = rustix::process::getpriority_process(None).unwrap() + 3;
            rustix::process::setpriority_process(None, before).unwrap();
            super::batch_scheduling("test");
            (
                thread_priority::thread_schedule_policy().unwrap(),
                before,
                rustix::process::getpriority_process(None).unwrap(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(
            policy,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch)
        );
        assert_eq!(nice_after, nice_before);
    }
}
