//! Persistence of the memory backend's delivered ids, so that a restart does not forget them.
//!
//! Lives in `dedupe.dir` (default `<spool.dir>/dedupe` with a spool, else `data/dedupe`):
//! `lock` (held while a process uses the dir), `keys` (the key function), `seed` (the key
//! hash seed and its checksum, so keys computed after a restart match the stored ones) and
//! journal files `marks-<unix secs>.log` of fixed 24-byte records `[key 16][expires u32]
//! [crc32 u32]` (little endian; the CRC covers the first 20 bytes). Files
//! `delivered-<unix secs>.log` of 20-byte records without a checksum, from earlier versions,
//! are still read (and pruned), never written.
//!
//! A mark is written (one `write`) before [`Journal::record`] returns, so an id acknowledged
//! as delivered survives `kill -9`. When it reaches the disk follows the [`Durability`]
//! policy: `Always` fsyncs before returning, `Batch` has a thread fsync what was written
//! every 20 ms (a power loss forgets at most that much), `Never` leaves it to the page cache.
//!
//! Disk full: a failed write is cut back to the last whole record at once (a short write
//! never misaligns what follows), and the marks that could not be written are kept in memory
//! (up to [`MAX_PENDING`]) and written as soon as there is room: first by the next `record`,
//! or by the background thread, which tries every [`SYNC_EVERY`] (so they reach the disk
//! even when no new id is committed). At load a
//! record whose checksum fails is skipped by scanning for the next valid one: damage costs the
//! damaged records only, each counted ([`Loaded::corrupt`]) and logged at ERROR; a partial
//! record at the very end of a file (a torn write) is ignored.
//!
//! Pruning: a new file is started every quarter of the TTL; a file is deleted once every mark
//! in it has expired (the latest expiry of each file is known), never by its age: a mark dated
//! ahead (an event timestamp within `max_future_skew`) lives as long as it says.
//!
//! The seed and the key function are the journal's meaning: beside existing marks, a missing
//! or damaged `seed` or `keys` file refuses to start, naming it (a silently new seed would
//! make every stored id replayable).
//!
//! Owns: the files of the dedupe dir. Knows nothing of the table, sources or HTTP.

use crate::fsutil;
use parking_lot::Mutex;
use std::fs::File;
use std::io::Read;
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

/// Marks kept in memory while the disk refuses them; beyond it the oldest are dropped (and
/// logged): a restart would forget those.
pub const MAX_PENDING: usize = 100_000;

const RECORD: usize = 24;
const LEGACY_RECORD: usize = 20;

/// The key function the marks were computed with ([`super::hash_key`]), kept in `keys`.
const KEY_FORMAT: &str = "sha256-128-v1";

/// One journal record.
pub type Record = ([u64; 2], u32);

/// Journal errors.
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

fn invalid(path: &Path, why: String) -> JournalError {
    JournalError {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
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
    /// Records whose checksum failed (skipped; their ids are replayable).
    pub corrupt: u64,
}

/// A journal file: its start time, whether it is of the earlier checksum-less format.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct JFile {
    started: u64,
    legacy: bool,
    path: PathBuf,
}

fn journal_files(dir: &Path) -> Result<Vec<JFile>, JournalError> {
    let mut files: Vec<JFile> = std::fs::read_dir(dir)
        .map_err(err(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let (rest, legacy) = match name.strip_prefix("marks-") {
                Some(r) => (r, false),
                None => (name.strip_prefix("delivered-")?, true),
            };
            let started = rest.strip_suffix(".log")?.parse().ok()?;
            Some(JFile {
                started,
                legacy,
                path: e.path(),
            })
        })
        .collect();
    // By time; within one second the earlier format first.
    files.sort_by_key(|f| (f.started, !f.legacy));
    Ok(files)
}

/// What one file holds.
struct Scan {
    records: Vec<Record>,
    /// Damaged records skipped.
    corrupt: u64,
    /// End of the last whole valid record.
    valid_end: usize,
}

fn crc(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

fn valid_at(b: &[u8], i: usize) -> bool {
    b.len() >= i + RECORD
        && crc(&b[i..i + 20]) == u32::from_le_bytes(b[i + 20..i + 24].try_into().expect("4"))
}

/// Reads the records of a `marks-` file, skipping damage (scanning byte by byte for the next
/// record whose checksum holds); a partial record at the very end is a torn write.
fn scan(b: &[u8]) -> Scan {
    let mut out = Scan {
        records: Vec::new(),
        corrupt: 0,
        valid_end: 0,
    };
    let mut i = 0;
    while i + RECORD <= b.len() {
        if valid_at(b, i) {
            out.records.push(decode(&b[i..i + 20]));
            i += RECORD;
            out.valid_end = i;
            continue;
        }
        match (i + 1..=b.len().saturating_sub(RECORD)).find(|&j| valid_at(b, j)) {
            Some(j) => {
                out.corrupt += (j - i).div_ceil(RECORD) as u64;
                i = j;
            }
            None => {
                // Nothing valid follows: whole damaged records, then possibly a torn one.
                out.corrupt += ((b.len() - i) / RECORD) as u64;
                break;
            }
        }
    }
    out
}

fn read_file(path: &Path) -> Result<Vec<u8>, JournalError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(err(path))?;
    Ok(bytes)
}

/// The seed file's text: the seed and a checksum of it.
fn seed_text(seed: u64) -> String {
    format!("{seed:016x} {:08x}\n", crc(&seed.to_le_bytes()))
}

/// Parses a seed file: `<16 hex> <8 hex crc>`, or the earlier `<16 hex>` alone.
fn parse_seed(text: &str) -> Option<(u64, bool)> {
    let mut parts = text.split_whitespace();
    let hex = parts.next()?;
    if hex.len() != 16 {
        return None;
    }
    let seed = u64::from_str_radix(hex, 16).ok()?;
    match (parts.next(), parts.next()) {
        (None, _) => Some((seed, false)),
        (Some(c), None) if u32::from_str_radix(c, 16).ok()? == crc(&seed.to_le_bytes()) => {
            Some((seed, true))
        }
        _ => None,
    }
}

const START_OVER: &str = "restore it from a backup, or remove the journal files (marks-*.log, delivered-*.log) to start over: replays of events delivered before are then accepted again until their max_event_age passes";

/// Opens the journal in `dir`: takes its lock, checks the key function and the seed (or
/// makes one), loads the live marks, and (for `Batch`) starts the fsync thread.
pub fn open(
    dir: &Path,
    ttl: Duration,
    durability: Durability,
) -> Result<(Journal, Loaded), JournalError> {
    fsutil::create_dir_all(dir).map_err(err(dir))?;
    let lock = fsutil::lock_dir(dir)
        .map_err(err(&dir.join("lock")))?
        .ok_or_else(|| locked(dir))?;
    let mut files = journal_files(dir)?;
    // Only files that hold something depend on the seed and the key function.
    files.retain(|f| {
        let empty = std::fs::metadata(&f.path).is_ok_and(|m| m.len() == 0);
        if empty {
            let _ = std::fs::remove_file(&f.path);
        }
        !empty
    });
    let keys_path = dir.join("keys");
    let keys = match std::fs::read_to_string(&keys_path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(err(&keys_path)(e)),
    };
    if keys.as_deref().map(str::trim) != Some(KEY_FORMAT) {
        if files.iter().any(|f| !f.legacy) {
            let what = if keys.is_none() { "missing" } else { "damaged" };
            return Err(invalid(
                &keys_path,
                format!("the key-function file is {what} beside {} journal files, so their marks cannot be trusted; {START_OVER}", files.len()),
            ));
        }
        if keys.is_none() && !files.is_empty() {
            // A journal from before the keys file: another key function. Its marks would
            // never match again: drop them once, saying so.
            tracing::warn!(dir = %dir.display(), files = files.len(), "dedupe journal written by an older vfgate (other key function): its marks are dropped; replays of events delivered before the upgrade are accepted again until their max_event_age passes");
            for f in files.drain(..) {
                std::fs::remove_file(&f.path).map_err(err(&f.path))?;
            }
        } else if keys.is_some() {
            return Err(invalid(
                &keys_path,
                format!(
                    "the key-function file is damaged beside {} journal files; {START_OVER}",
                    files.len()
                ),
            ));
        }
        fsutil::write_atomic(&keys_path, KEY_FORMAT.as_bytes(), true).map_err(err(&keys_path))?;
    }
    let seed_path = dir.join("seed");
    let seed = match std::fs::read_to_string(&seed_path) {
        Ok(text) => match parse_seed(&text) {
            Some((seed, checked)) => {
                if !checked {
                    fsutil::write_atomic(&seed_path, seed_text(seed).as_bytes(), true)
                        .map_err(err(&seed_path))?;
                }
                seed
            }
            None if files.is_empty() => {
                tracing::warn!(path = %seed_path.display(), "dedupe seed file is damaged and no marks depend on it: a new seed is made");
                new_seed(&seed_path)?
            }
            None => {
                return Err(invalid(
                    &seed_path,
                    format!("the key seed is damaged (its checksum does not hold) beside {} journal files, so no stored id would match; {START_OVER}", files.len()),
                ))
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !files.is_empty() {
                return Err(invalid(
                    &seed_path,
                    format!("the key seed is missing beside {} journal files, so no stored id would match; {START_OVER}", files.len()),
                ));
            }
            new_seed(&seed_path)?
        }
        Err(e) => return Err(err(&seed_path)(e)),
    };
    let now = now_secs();
    let mut latest: std::collections::HashMap<[u64; 2], u32> = std::collections::HashMap::new();
    let mut corrupt = 0;
    let mut known = Vec::new();
    for f in &files {
        let bytes = read_file(&f.path)?;
        let records = if f.legacy {
            bytes.chunks_exact(LEGACY_RECORD).map(decode).collect()
        } else {
            let s = scan(&bytes);
            if s.corrupt > 0 {
                tracing::error!(path = %f.path.display(), records = s.corrupt, "dedupe journal: damaged records skipped (checksum does not hold); the ids they held can be accepted again");
                corrupt += s.corrupt;
            }
            s.records
        };
        let max = records.iter().map(|r| r.1).max().unwrap_or(0);
        for (k, exp) in records {
            latest.insert(k, exp);
        }
        known.push((f.path.clone(), max));
    }
    let marks = latest
        .into_iter()
        .filter(|(_, exp)| u64::from(*exp) > now)
        .collect();
    let ttl_secs = ttl.as_secs().max(1);
    let writer = Writer::new(dir, ttl_secs, known)?;
    let dirty = Arc::new(AtomicBool::new(false));
    let (stop, rx) = mpsc::channel::<()>();
    let journal = Journal {
        inner: Arc::new(Mutex::new(writer)),
        durability,
        dirty: dirty.clone(),
        _lock: lock,
        _stop: stop,
    };
    if background_thread() {
        let writer = journal.inner.clone();
        std::thread::Builder::new()
            .name("vfgate-dedupe-sync".into())
            .spawn(move || sync_loop(&writer, &dirty, &rx, durability))
            .expect("spawn thread");
    }
    Ok((
        journal,
        Loaded {
            seed,
            marks,
            corrupt,
        },
    ))
}

#[cfg(test)]
thread_local! {
    /// Set by the journal's fault model, which drives every write itself.
    pub(crate) static NO_BACKGROUND_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether [`open`] starts the thread that fsyncs (`Batch`) and writes held-back marks.
fn background_thread() -> bool {
    #[cfg(test)]
    if NO_BACKGROUND_THREAD.with(|c| c.get()) {
        return false;
    }
    true
}

fn new_seed(path: &Path) -> Result<u64, JournalError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("OS random source");
    let seed = u64::from_le_bytes(b);
    fsutil::write_atomic(path, seed_text(seed).as_bytes(), true).map_err(err(path))?;
    Ok(seed)
}

/// Every [`SYNC_EVERY`]: writes the marks a disk-full held back, once there is room (made
/// durable per the policy), and, for `Batch`, fsyncs the current file whenever something was
/// written since the last round.
fn sync_loop(
    writer: &Mutex<Writer>,
    dirty: &AtomicBool,
    stop: &mpsc::Receiver<()>,
    durability: Durability,
) {
    let mut last_error = 0;
    loop {
        let last = matches!(
            stop.recv_timeout(SYNC_EVERY),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
        let flushed = {
            let mut w = writer.lock();
            match w.flush_pending() {
                Ok(true) => {
                    tracing::info!(dir = %w.dir.display(), "dedupe journal: the marks held back by a failed write are on disk now");
                    if durability == Durability::Always {
                        if let Err(e) = fsutil::sync_data(&w.out, &w.path) {
                            tracing::error!(error = %e, "cannot fsync the dedupe journal; a power loss may forget recent ids");
                        }
                    }
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    let now = now_secs();
                    if now >= last_error + 10 {
                        last_error = now;
                        tracing::warn!(error = %e, pending = w.pending.len(), "dedupe journal: still no room for the held-back marks; retrying");
                    }
                    false
                }
            }
        };
        if flushed && durability == Durability::Batch {
            dirty.store(true, Ordering::Release);
        }
        if durability == Durability::Batch && dirty.swap(false, Ordering::AcqRel) {
            // The current file, synced outside the lock (writers are not held up).
            let (f, path) = {
                let w = writer.lock();
                (w.out.clone(), w.path.clone())
            };
            if let Err(e) = fsutil::sync_data(&f, &path) {
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
    let c = crc(&b[0..20]);
    b[20..24].copy_from_slice(&c.to_le_bytes());
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
    /// per the policy. A failed write is cut back to the last whole record and logged (at
    /// most every 10 s); the mark is kept and written by the next `record` that finds room,
    /// and the id is remembered in memory meanwhile (only a restart before then forgets it).
    pub fn record(&self, key: [u64; 2], expires: u32) {
        let mut w = self.inner.lock();
        w.rotate_if_due();
        let result = w
            .write(encode(key, expires))
            .and_then(|()| match self.durability {
                Durability::Always => fsutil::sync_data(&w.out, &w.path),
                Durability::Batch => {
                    self.dirty.store(true, Ordering::Release);
                    Ok(())
                }
                Durability::Never => Ok(()),
            });
        if let Err(e) = result {
            let now = now_secs();
            if now >= w.last_error + 10 {
                w.last_error = now;
                tracing::error!(dir = %w.dir.display(), error = %e, pending = w.pending.len(), "cannot write the dedupe journal; the marks are kept and written once there is room, a restart before that may forget them");
            }
        }
    }

    /// Marks waiting for room on the disk.
    pub fn pending(&self) -> usize {
        self.inner.lock().pending.len()
    }
}

struct Writer {
    dir: PathBuf,
    ttl: u64,
    started: u64,
    path: PathBuf,
    out: Arc<File>,
    /// Bytes of whole records in `out`: a failed write is cut back to it.
    len: u64,
    /// The latest expiry written to `out`.
    max: u32,
    /// Earlier files and the latest expiry each holds (for pruning).
    older: Vec<(PathBuf, u32)>,
    /// Marks a failed write could not store, oldest first.
    pending: Vec<[u8; RECORD]>,
    last_error: u64,
}

impl Writer {
    fn new(dir: &Path, ttl: u64, older: Vec<(PathBuf, u32)>) -> Result<Writer, JournalError> {
        let started = now_secs();
        let path = dir.join(format!("marks-{started}.log"));
        let f = fsutil::append(&path).map_err(err(&path))?;
        // The same second as a file already there (a quick restart): cut it after its last
        // whole record, so a torn one never precedes what is written now.
        let bytes = read_file(&path)?;
        let s = scan(&bytes);
        if s.valid_end < bytes.len() {
            f.set_len(s.valid_end as u64).map_err(err(&path))?;
        }
        let mut w = Writer {
            dir: dir.to_path_buf(),
            ttl,
            started,
            out: Arc::new(f),
            len: s.valid_end as u64,
            max: s.records.iter().map(|r| r.1).max().unwrap_or(0),
            older: older.into_iter().filter(|(p, _)| *p != path).collect(),
            path,
            pending: Vec::new(),
            last_error: 0,
        };
        w.prune();
        Ok(w)
    }

    /// Appends `rec` after any pending marks, in one write; on failure cuts the file back
    /// to its last whole record and keeps `rec` pending.
    fn write(&mut self, rec: [u8; RECORD]) -> std::io::Result<()> {
        if self.pending.is_empty() {
            // The common case: one record from the stack, no allocation.
            return match fsutil::write_all(&self.out, &self.path, &rec) {
                Ok(()) => {
                    self.len += RECORD as u64;
                    self.max = self.max.max(decode(&rec).1);
                    Ok(())
                }
                Err(e) => {
                    self.pending.push(rec);
                    self.cut_back();
                    Err(e)
                }
            };
        }
        self.pending.push(rec);
        if self.pending.len() > MAX_PENDING {
            let n = self.pending.len() - MAX_PENDING;
            self.pending.drain(..n);
            tracing::error!(dropped = n, "dedupe journal: marks dropped from memory while the disk refuses them; a restart forgets those ids");
        }
        self.flush_pending().map(drop)
    }

    /// Cuts the file back to its last whole record after a failed write.
    fn cut_back(&self) {
        if let Err(cut) = self.out.set_len(self.len) {
            tracing::error!(path = %self.path.display(), error = %cut, "dedupe journal: cannot cut a failed write back; the damaged record will be skipped at load");
        }
    }

    /// Writes the marks a failed write held back, if any, in one write (by the next
    /// `record`, or by the background thread so that they reach the disk once it has room
    /// even when no new id is committed). True when something was written.
    fn flush_pending(&mut self) -> std::io::Result<bool> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        let bytes = self.pending.concat();
        match fsutil::write_all(&self.out, &self.path, &bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                let max = self.pending.iter().map(|r| decode(r).1).max().unwrap_or(0);
                self.max = self.max.max(max);
                self.pending.clear();
                Ok(true)
            }
            Err(e) => {
                self.cut_back();
                Err(e)
            }
        }
    }

    /// Deletes earlier files whose every mark has expired.
    fn prune(&mut self) {
        let now = now_secs();
        self.older.retain(|(path, max)| {
            if u64::from(*max) > now {
                return true;
            }
            std::fs::remove_file(path).is_err() && path.exists()
        });
    }

    fn rotate_if_due(&mut self) {
        let now = now_secs();
        if now.saturating_sub(self.started) < (self.ttl / 4).max(1) {
            return;
        }
        let mut older = std::mem::take(&mut self.older);
        older.push((self.path.clone(), self.max));
        match Writer::new(&self.dir, self.ttl, older.clone()) {
            Ok(mut w) => {
                // What the old file holds must be durable before marks go to the new one.
                let _ = fsutil::sync_data(&self.out, &self.path);
                w.pending = std::mem::take(&mut self.pending);
                w.last_error = self.last_error;
                *self = w;
            }
            Err(_) => {
                older.pop();
                self.older = older;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::fault::{Kind, Op, Rule};
    use std::fs::OpenOptions;
    use std::io::Write;

    const HOUR: Duration = Duration::from_secs(3600);

    fn files(dir: &Path) -> Vec<PathBuf> {
        journal_files(dir)
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect()
    }

    fn sorted(mut v: Vec<Record>) -> Vec<Record> {
        v.sort();
        v
    }

    #[test]
    fn marks_survive_a_reopen_and_forgotten_or_expired_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (j, loaded) = open(dir.path(), HOUR, Durability::Batch).unwrap();
        assert!(loaded.marks.is_empty());
        let far = (now_secs() + 3600) as u32;
        j.record([1, 2], far);
        j.record([3, 4], far);
        j.record([3, 4], 0);
        j.record([5, 6], 1);
        drop(j);
        // A torn record at the end is ignored, not counted.
        let path = files(dir.path()).pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9u8; 7]).unwrap();
        let (_j, loaded2) = open(dir.path(), HOUR, Durability::Never).unwrap();
        assert_eq!(loaded2.seed, loaded.seed, "seed persisted");
        assert_eq!(loaded2.marks, vec![([1, 2], far)]);
        assert_eq!(loaded2.corrupt, 0);
    }

    #[test]
    fn a_mark_is_on_disk_when_record_returns_and_the_dir_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = open(dir.path(), HOUR, Durability::Batch).unwrap();
        j.record([7, 8], (now_secs() + 60) as u32);
        // No flush, no drop: what a kill -9 right now would leave.
        let path = files(dir.path()).pop().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), RECORD as u64);
        let second = open(dir.path(), HOUR, Durability::Batch);
        assert!(
            second
                .as_ref()
                .err()
                .is_some_and(|e| e.to_string().contains("another vfgate process")),
            "a second process is refused"
        );
        drop(j);
        assert!(open(dir.path(), HOUR, Durability::Batch).is_ok());
    }

    #[test]
    fn marks_of_another_key_function_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("delivered-1.log"),
            &encode([1, 2], u32::MAX)[..LEGACY_RECORD],
        )
        .unwrap();
        let (_j, loaded) = open(dir.path(), HOUR, Durability::Never).unwrap();
        assert!(
            loaded.marks.is_empty(),
            "an old journal (no keys file) is not trusted"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keys")).unwrap(),
            KEY_FORMAT
        );
    }

    #[test]
    fn marks_of_the_earlier_checksum_less_format_are_still_loaded() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), HOUR, Durability::Never).unwrap());
        // The previous version's seed file (no checksum) and record format.
        std::fs::write(dir.path().join("seed"), "00000000000000aa").unwrap();
        let far = (now_secs() + 600) as u32;
        let mut old = encode([1, 2], far)[..LEGACY_RECORD].to_vec();
        old.extend_from_slice(&encode([3, 4], far)[..LEGACY_RECORD]);
        std::fs::write(dir.path().join("delivered-1.log"), old).unwrap();
        let (_j, loaded) = open(dir.path(), HOUR, Durability::Never).unwrap();
        assert_eq!(loaded.seed, 0xaa);
        assert_eq!(sorted(loaded.marks), vec![([1, 2], far), ([3, 4], far)]);
        let text = std::fs::read_to_string(dir.path().join("seed")).unwrap();
        assert_eq!(
            parse_seed(&text),
            Some((0xaa, true)),
            "rewritten with its checksum"
        );
    }

    #[test]
    fn a_short_write_on_a_full_disk_never_misaligns_later_marks() {
        // Every write is this test's own (the background thread's is tested below).
        NO_BACKGROUND_THREAD.with(|c| c.set(true));
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = open(dir.path(), HOUR, Durability::Never).unwrap();
        let far = (now_secs() + 600) as u32;
        j.record([1, 1], far);
        // The disk fills: a write of which 7 bytes land, then two that land nothing.
        Rule {
            short: 7,
            times: 3,
            ..Rule::new(dir.path(), Op::Write, Kind::NoSpace)
        }
        .install();
        j.record([2, 2], far);
        j.record([3, 3], far);
        j.record([4, 4], far);
        assert_eq!(j.pending(), 3, "kept while the disk refuses them");
        let path = files(dir.path()).pop().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            RECORD as u64,
            "cut back to the last whole record"
        );
        // Room again: the pending marks go out with the next one.
        crate::fsutil::fault::clear(dir.path());
        j.record([5, 5], far);
        assert_eq!(j.pending(), 0);
        drop(j);
        let (_j, loaded) = open(dir.path(), HOUR, Durability::Never).unwrap();
        assert_eq!(loaded.corrupt, 0);
        assert_eq!(
            sorted(loaded.marks),
            (1..=5).map(|i| ([i, i], far)).collect::<Vec<_>>(),
            "every id accepted during and after the disk-full is remembered"
        );
    }

    #[test]
    fn held_back_marks_reach_the_disk_once_there_is_room_without_another_commit() {
        for durability in [Durability::Always, Durability::Batch, Durability::Never] {
            let dir = tempfile::tempdir().unwrap();
            let (j, _) = open(dir.path(), HOUR, durability).unwrap();
            let far = (now_secs() + 600) as u32;
            Rule {
                short: 5,
                times: 1,
                ..Rule::new(dir.path(), Op::Write, Kind::NoSpace)
            }
            .install();
            j.record([1, 1], far);
            crate::fsutil::fault::clear(dir.path());
            let t0 = std::time::Instant::now();
            while j.pending() > 0 {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "{durability:?}: still pending"
                );
                std::thread::sleep(SYNC_EVERY);
            }
            // What a kill -9 now would leave: the mark is in the file.
            let path = files(dir.path()).pop().unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), RECORD as u64);
            drop(j);
            let (_j, loaded) = open(dir.path(), HOUR, Durability::Never).unwrap();
            assert_eq!(loaded.marks, vec![([1, 1], far)], "{durability:?}");
        }
    }

    #[test]
    fn a_failed_fsync_is_reported_and_the_mark_kept_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = open(dir.path(), HOUR, Durability::Always).unwrap();
        Rule {
            times: 1,
            ..Rule::new(dir.path(), Op::Sync, Kind::Io)
        }
        .install();
        let far = (now_secs() + 600) as u32;
        j.record([1, 1], far);
        j.record([2, 2], far);
        drop(j);
        let (_j, loaded) = open(dir.path(), HOUR, Durability::Never).unwrap();
        assert_eq!(loaded.marks.len(), 2);
    }

    #[test]
    fn a_damaged_record_costs_only_itself_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = open(dir.path(), HOUR, Durability::Never).unwrap();
        let far = (now_secs() + 600) as u32;
        for i in 0..5 {
            j.record([i, i], far);
        }
        drop(j);
        let path = files(dir.path()).pop().unwrap();
        let mut b = std::fs::read(&path).unwrap();
        b[2 * RECORD + 5] ^= 0x04; // one bit of the third record's key
        std::fs::write(&path, &b).unwrap();
        let (_j, loaded) = open(dir.path(), HOUR, Durability::Never).unwrap();
        assert_eq!(loaded.corrupt, 1);
        assert_eq!(
            sorted(loaded.marks),
            vec![([0, 0], far), ([1, 1], far), ([3, 3], far), ([4, 4], far)]
        );
    }

    #[test]
    fn a_file_is_pruned_when_its_last_mark_expires_not_when_it_is_old() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), Duration::from_secs(8), Durability::Never).unwrap());
        let now = now_secs() as u32;
        // Written long ago (by its name and its mtime does not matter): one mark dated
        // ahead, still live; another file whose marks all expired.
        std::fs::write(
            dir.path().join("marks-1000.log"),
            [encode([1, 1], now - 5), encode([2, 2], now + 50)].concat(),
        )
        .unwrap();
        std::fs::write(dir.path().join("marks-1001.log"), encode([3, 3], now - 1)).unwrap();
        let (_j, loaded) = open(dir.path(), Duration::from_secs(8), Durability::Never).unwrap();
        assert_eq!(loaded.marks, vec![([2, 2], now + 50)]);
        assert!(
            dir.path().join("marks-1000.log").exists(),
            "a live mark keeps its file"
        );
        assert!(
            !dir.path().join("marks-1001.log").exists(),
            "all expired: deleted"
        );
    }

    #[test]
    fn a_missing_or_damaged_seed_or_keys_file_beside_marks_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let (j, loaded) = open(dir.path(), HOUR, Durability::Never).unwrap();
        j.record([1, 1], (now_secs() + 600) as u32);
        drop(j);
        let seed = dir.path().join("seed");
        let good = std::fs::read_to_string(&seed).unwrap();
        // One changed digit.
        let bad = format!(
            "{}{}",
            if good.starts_with('0') { '1' } else { '0' },
            &good[1..]
        );
        std::fs::write(&seed, bad).unwrap();
        let e = open(dir.path(), HOUR, Durability::Never)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("seed") && e.contains("damaged"), "{e}");
        std::fs::remove_file(&seed).unwrap();
        let e = open(dir.path(), HOUR, Durability::Never)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("seed") && e.contains("missing"), "{e}");
        std::fs::write(&seed, &good).unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "sha256-128-v9").unwrap();
        let e = open(dir.path(), HOUR, Durability::Never)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("keys") && e.contains("damaged"), "{e}");
        std::fs::remove_file(&keys).unwrap();
        let e = open(dir.path(), HOUR, Durability::Never)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("keys") && e.contains("missing"), "{e}");
        std::fs::write(&keys, KEY_FORMAT).unwrap();
        let (_j, again) = open(dir.path(), HOUR, Durability::Never).unwrap();
        assert_eq!(again.seed, loaded.seed);
        assert_eq!(again.marks.len(), 1);
    }

    #[test]
    fn a_damaged_seed_with_no_marks_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), HOUR, Durability::Never).unwrap());
        std::fs::write(dir.path().join("seed"), "zz").unwrap();
        assert!(open(dir.path(), HOUR, Durability::Never).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn a_seed_file_parses_only_with_its_checksum_or_in_the_old_form(text in ".{0,40}", seed: u64) {
            // Whatever the file holds, parsing never panics; the written form round-trips.
            let _ = parse_seed(&text);
            proptest::prop_assert_eq!(parse_seed(&seed_text(seed)), Some((seed, true)));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn any_byte_damage_costs_at_most_the_records_it_touches(
            n in 1u64..20, at in 0usize..480, flip in 1u8..=255, cut in proptest::option::of(0usize..480)
        ) {
            let far = 4_000_000_000u32;
            let mut b: Vec<u8> = (0..n).flat_map(|i| encode([i, i], far)).collect();
            let at = at % b.len();
            b[at] ^= flip;
            if let Some(c) = cut {
                b.truncate(c.min(b.len()));
            }
            let s = scan(&b);
            let damaged = at / RECORD;
            for r in &s.records {
                proptest::prop_assert_eq!(r.1, far);
                proptest::prop_assert!(r.0[0] < n && r.0[0] == r.0[1]);
            }
            let whole = b.len() / RECORD;
            let got: Vec<u64> = s.records.iter().map(|r| r.0[0]).collect();
            for i in 0..whole as u64 {
                if i as usize != damaged {
                    proptest::prop_assert!(got.contains(&i), "record {} lost: {:?}", i, got);
                }
            }
        }
    }
}
