//! Persistence of the memory backend's delivered ids, so that a restart does not forget them.
//!
//! Lives in `dedupe.dir` (default `<spool.dir>/dedupe` with a spool, else `data/dedupe`):
//! `lock` (held while a process uses the dir), `keys` (the key function), `seed` (the key hash seed, so keys computed
//! after a restart match the stored ones) and journal files `delivered-<unix secs>.log` of
//! fixed 20-byte records `[key 16][expires u32]` (little endian; `expires = 0` forgets a key).
//!
//! A mark is written (one `write` of 20 bytes) before [`Journal::record`] returns, so an id
//! acknowledged as delivered survives `kill -9`. When it reaches the disk follows the
//! [`Durability`] policy: `Always` fsyncs before returning, `Batch` has a thread fsync what
//! was written every 20 ms (a power loss forgets at most that much), `Never` leaves it to
//! the page cache. A new file is started every quarter of the TTL; a file last written more
//! than a TTL ago holds only expired marks and is deleted, so the journal stays near one TTL
//! of commits. At start-up every file is read and the live marks are loaded; a torn last
//! record is ignored.
//!
//! Owns: the files of the dedupe dir. Knows nothing of the table, sources or HTTP.

use crate::fsutil;
use parking_lot::Mutex;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// When journal writes reach the disk (the spool's `fsync` policy, `batch` without a spool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before `record` returns.
    Always,
    /// fsync what was written every [`SYNC_EVERY`].
    Batch,
    /// No fsync.
    Never,
}

/// How often the `Batch` policy fsyncs what was written.
pub const SYNC_EVERY: Duration = Duration::from_millis(20);

const RECORD: usize = 20;

/// The key function the marks were computed with ([`super::hash_key`]), kept in `keys`.
const KEY_FORMAT: &str = "sha256-128-v1";

/// One journal record.
pub type Record = ([u64; 2], u32);

/// Journal errors (file system).
#[derive(Debug, thiserror::Error)]
#[error("dedupe journal {path}: {source}")]
pub struct JournalError {
    path: String,
    source: std::io::Error,
}

fn locked(path: &Path) -> JournalError {
    JournalError {
        path: path.display().to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "another vfgate process is using this dedupe dir (give each process its own dedupe.dir, or use backend = \"redis\" to share ids)",
        ),
    }
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError {
        path: path.display().to_string(),
        source,
    }
}

fn now_secs() -> u64 {
    crate::time::now_s()
}

/// An open journal: marks are written as they are recorded.
pub struct Journal {
    inner: Arc<Mutex<Writer>>,
    durability: Durability,
    dirty: Arc<AtomicBool>,
    _lock: File,
    _stop: mpsc::Sender<()>,
}

/// What [`open`] found on disk.
pub struct Loaded {
    /// The persisted key seed.
    pub seed: u64,
    /// Live marks: key and expiry (unix seconds).
    pub marks: Vec<Record>,
}

fn journal_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(err(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let t = name
                .strip_prefix("delivered-")?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((t, e.path()))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Opens the journal in `dir`: takes its lock, loads the seed (or makes one) and the live
/// marks, and (for `Batch`) starts the fsync thread.
pub fn open(
    dir: &Path,
    ttl: Duration,
    durability: Durability,
) -> Result<(Journal, Loaded), JournalError> {
    fsutil::create_dir_all(dir).map_err(err(dir))?;
    let lock = fsutil::lock_dir(dir)
        .map_err(err(&dir.join("lock")))?
        .ok_or_else(|| locked(dir))?;
    let seed_path = dir.join("seed");
    let seed = match std::fs::read_to_string(&seed_path) {
        Ok(s) => u64::from_str_radix(s.trim(), 16).map_err(|_| JournalError {
            path: seed_path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a hex seed"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).expect("OS random source");
            let seed = u64::from_le_bytes(b);
            fsutil::write_atomic(&seed_path, format!("{seed:016x}").as_bytes(), true)
                .map_err(err(&seed_path))?;
            seed
        }
        Err(e) => return Err(err(&seed_path)(e)),
    };
    // Marks written with another key function would never match again: drop them once,
    // saying so, and record the current one.
    let keys_path = dir.join("keys");
    let current = std::fs::read_to_string(&keys_path).ok();
    if current.as_deref().map(str::trim) != Some(KEY_FORMAT) {
        let old = journal_files(dir)?;
        if !old.is_empty() {
            tracing::warn!(dir = %dir.display(), files = old.len(), "dedupe journal written by an older vfgate (other key function): its marks are dropped; replays of events delivered before the upgrade are accepted again until their max_event_age passes");
            for (_, p) in old {
                std::fs::remove_file(&p).map_err(err(&p))?;
            }
        }
        fsutil::write_atomic(&keys_path, KEY_FORMAT.as_bytes(), true).map_err(err(&keys_path))?;
    }
    let now = now_secs();
    let mut latest: std::collections::HashMap<[u64; 2], u32> = std::collections::HashMap::new();
    for (_, path) in journal_files(dir)? {
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(err(&path))?;
        for r in bytes.chunks_exact(RECORD) {
            let (k, exp) = decode(r);
            latest.insert(k, exp);
        }
    }
    let marks = latest
        .into_iter()
        .filter(|(_, exp)| u64::from(*exp) > now)
        .collect();
    let ttl_secs = ttl.as_secs().max(1);
    let writer = Writer::new(dir, ttl_secs)?;
    let dirty = Arc::new(AtomicBool::new(false));
    let (stop, rx) = mpsc::channel::<()>();
    let journal = Journal {
        inner: Arc::new(Mutex::new(writer)),
        durability,
        dirty: dirty.clone(),
        _lock: lock,
        _stop: stop,
    };
    if durability == Durability::Batch {
        let writer = journal.inner.clone();
        std::thread::Builder::new()
            .name("vfgate-dedupe-sync".into())
            .spawn(move || sync_loop(&writer, &dirty, &rx))
            .expect("spawn thread");
    }
    Ok((journal, Loaded { seed, marks }))
}

/// `Batch`: fsyncs the current file whenever something was written since the last round.
fn sync_loop(writer: &Mutex<Writer>, dirty: &AtomicBool, stop: &mpsc::Receiver<()>) {
    loop {
        let last = matches!(
            stop.recv_timeout(SYNC_EVERY),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
        if dirty.swap(false, Ordering::AcqRel) {
            // The current file, synced outside the lock (writers are not held up).
            let f = writer.lock().out.clone();
            if let Err(e) = f.sync_data() {
                tracing::error!(error = %e, "cannot fsync the dedupe journal; a power loss may forget recent ids");
            }
        }
        if last {
            return;
        }
    }
}

fn encode(k: [u64; 2], expires: u32) -> [u8; RECORD] {
    let mut b = [0u8; RECORD];
    b[0..8].copy_from_slice(&k[0].to_le_bytes());
    b[8..16].copy_from_slice(&k[1].to_le_bytes());
    b[16..20].copy_from_slice(&expires.to_le_bytes());
    b
}

fn decode(r: &[u8]) -> Record {
    let w = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"));
    (
        [w(0), w(8)],
        u32::from_le_bytes(r[16..20].try_into().expect("4 bytes")),
    )
}

impl Journal {
    /// Writes a mark (`expires = 0` forgets the key) before returning, and makes it durable
    /// per the policy. A failed write is logged (at most every 10 s): the id is still
    /// remembered in memory, only a restart would forget it.
    pub fn record(&self, key: [u64; 2], expires: u32) {
        let mut w = self.inner.lock();
        w.rotate_if_due();
        let mut result = (&*w.out).write_all(&encode(key, expires));
        match self.durability {
            Durability::Always => result = result.and_then(|()| w.out.sync_data()),
            Durability::Batch => self.dirty.store(true, Ordering::Release),
            Durability::Never => {}
        }
        if let Err(e) = result {
            let now = now_secs();
            if now >= w.last_error + 10 {
                w.last_error = now;
                tracing::error!(dir = %w.dir.display(), error = %e, "cannot write the dedupe journal; a restart may forget recent ids");
            }
        }
    }
}

struct Writer {
    dir: PathBuf,
    ttl: u64,
    started: u64,
    out: Arc<File>,
    last_error: u64,
}

impl Writer {
    fn new(dir: &Path, ttl: u64) -> Result<Writer, JournalError> {
        let started = now_secs();
        let path = dir.join(format!("delivered-{started}.log"));
        let f = fsutil::append(&path).map_err(err(&path))?;
        // A torn record (from a power loss within the same second) would misalign what
        // follows.
        let len = f.metadata().map_err(err(&path))?.len();
        if len % RECORD as u64 != 0 {
            f.set_len(len - len % RECORD as u64).map_err(err(&path))?;
        }
        let mut w = Writer {
            dir: dir.to_path_buf(),
            ttl,
            started,
            out: Arc::new(f),
            last_error: 0,
        };
        w.prune();
        Ok(w)
    }

    /// Deletes files last written more than a TTL ago (every mark in them has expired).
    fn prune(&mut self) {
        let now = crate::time::now();
        for (t, path) in journal_files(&self.dir).unwrap_or_default() {
            if t == self.started {
                continue;
            }
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age.as_secs() > self.ttl);
            if old {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    fn rotate_if_due(&mut self) {
        let now = now_secs();
        if now.saturating_sub(self.started) < (self.ttl / 4).max(1) {
            return;
        }
        if let Ok(w) = Writer::new(&self.dir, self.ttl) {
            // What the old file holds must be durable before marks go to the new one.
            let _ = self.out.sync_data();
            *self = w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn marks_survive_a_reopen_and_forgotten_or_expired_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (j, loaded) = open(dir.path(), Duration::from_secs(3600), Durability::Batch).unwrap();
        assert!(loaded.marks.is_empty());
        let far = (now_secs() + 3600) as u32;
        j.record([1, 2], far);
        j.record([3, 4], far);
        j.record([3, 4], 0);
        j.record([5, 6], 1);
        drop(j);
        // A torn record at the end is ignored.
        let (_, path) = journal_files(dir.path()).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9u8; 7]).unwrap();
        let (_j, loaded2) = open(dir.path(), Duration::from_secs(3600), Durability::Never).unwrap();
        assert_eq!(loaded2.seed, loaded.seed, "seed persisted");
        assert_eq!(loaded2.marks, vec![([1, 2], far)]);
    }

    #[test]
    fn a_mark_is_on_disk_when_record_returns_and_the_dir_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = open(dir.path(), Duration::from_secs(3600), Durability::Batch).unwrap();
        j.record([7, 8], (now_secs() + 60) as u32);
        // No flush, no drop: what a kill -9 right now would leave.
        let (_, path) = journal_files(dir.path()).unwrap().pop().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), RECORD as u64);
        let second = open(dir.path(), Duration::from_secs(3600), Durability::Batch);
        assert!(
            second
                .as_ref()
                .err()
                .is_some_and(|e| e.to_string().contains("another vfgate process")),
            "a second process is refused"
        );
        drop(j);
        assert!(open(dir.path(), Duration::from_secs(3600), Durability::Batch).is_ok());
    }

    #[test]
    fn marks_of_another_key_function_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("delivered-1.log"), encode([1, 2], u32::MAX)).unwrap();
        let (_j, loaded) = open(dir.path(), Duration::from_secs(3600), Durability::Never).unwrap();
        assert!(
            loaded.marks.is_empty(),
            "an old journal (no keys file) is not trusted"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keys")).unwrap(),
            KEY_FORMAT
        );
    }
}
