//! Persistence of the memory backend's delivered ids, so that a restart does not forget them.
//!
//! Lives in `<spool.dir>/dedupe/`: `seed` (the key hash seed, so keys computed after a restart
//! match the stored ones) and journal files `delivered-<unix secs>.log` of fixed 20-byte
//! records `[key 16][expires u32]` (little endian; `expires = 0` forgets a key). `commit` and
//! `forget` add to a buffer; a writer thread writes it out every 20 ms (a killed process loses
//! at most those 20 ms; the page cache reaches the disk on its own, no fsync). A new
//! file is started every quarter of the TTL; a file last written more than a TTL ago holds
//! only expired marks and is deleted, so the journal stays near one TTL of commits. At
//! start-up every file is read and the live marks are loaded; a torn last record is ignored.

use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RECORD: usize = 20;

/// One journal record.
pub type Record = ([u64; 2], u32);

/// Journal errors (file system).
#[derive(Debug, thiserror::Error)]
#[error("dedupe journal {path}: {source}")]
pub struct JournalError {
    path: String,
    source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError {
        path: path.display().to_string(),
        source,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The sending side of an open journal: marks collect in a buffer that the writer thread
/// takes and writes out every few milliseconds (no wake-up per mark).
pub struct Journal {
    pending: Arc<Mutex<Vec<Record>>>,
    _stop: mpsc::Sender<()>,
}

/// How often the writer thread writes out collected marks.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

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

/// Opens the journal in `dir`: loads the seed (or makes one) and the live marks, and starts
/// the writer thread.
pub fn open(dir: &Path, ttl: Duration) -> Result<(Journal, Loaded), JournalError> {
    std::fs::create_dir_all(dir).map_err(err(dir))?;
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
            let tmp = seed_path.with_extension("tmp");
            let mut f = File::create(&tmp).map_err(err(&tmp))?;
            f.write_all(format!("{seed:016x}").as_bytes())
                .map_err(err(&tmp))?;
            f.sync_all().map_err(err(&tmp))?;
            std::fs::rename(&tmp, &seed_path).map_err(err(&seed_path))?;
            seed
        }
        Err(e) => return Err(err(&seed_path)(e)),
    };
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
    let (stop, rx) = mpsc::channel();
    let dir = dir.to_path_buf();
    let ttl_secs = ttl.as_secs().max(1);
    let mut writer = Writer::new(&dir, ttl_secs)?;
    let pending: Arc<Mutex<Vec<Record>>> = Arc::default();
    let taken = pending.clone();
    std::thread::Builder::new()
        .name("vfgate-dedupe-journal".into())
        .spawn(move || writer.run(taken, rx))
        .expect("spawn thread");
    Ok((
        Journal {
            pending,
            _stop: stop,
        },
        Loaded { seed, marks },
    ))
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
    /// Records a mark (`expires = 0` forgets the key). Never waits for I/O.
    pub fn record(&self, key: [u64; 2], expires: u32) {
        self.pending.lock().push((key, expires));
    }
}

struct Writer {
    dir: PathBuf,
    ttl: u64,
    started: u64,
    out: BufWriter<File>,
}

impl Writer {
    fn new(dir: &Path, ttl: u64) -> Result<Writer, JournalError> {
        let started = now_secs();
        let path = dir.join(format!("delivered-{started}.log"));
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err(&path))?;
        // A torn record (from a kill within the same second) would misalign what follows.
        let len = f.metadata().map_err(err(&path))?.len();
        if len % RECORD as u64 != 0 {
            f.set_len(len - len % RECORD as u64).map_err(err(&path))?;
        }
        let mut w = Writer {
            dir: dir.to_path_buf(),
            ttl,
            started,
            out: BufWriter::with_capacity(64 * 1024, f),
        };
        w.prune();
        Ok(w)
    }

    /// Deletes files last written more than a TTL ago (every mark in them has expired).
    fn prune(&mut self) {
        let now = SystemTime::now();
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
            let _ = self.out.flush();
            *self = w;
        }
    }

    /// Writes out what collected every [`FLUSH_EVERY`], until the journal is dropped.
    fn run(&mut self, pending: Arc<Mutex<Vec<Record>>>, stop: mpsc::Receiver<()>) {
        let mut batch = Vec::new();
        loop {
            let last = matches!(
                stop.recv_timeout(FLUSH_EVERY),
                Err(mpsc::RecvTimeoutError::Disconnected)
            );
            std::mem::swap(&mut batch, &mut *pending.lock());
            if !batch.is_empty() {
                let mut ok = true;
                for (k, exp) in batch.drain(..) {
                    ok &= self.out.write_all(&encode(k, exp)).is_ok();
                }
                ok &= self.out.flush().is_ok();
                if !ok {
                    tracing::error!(dir = %self.dir.display(), "cannot write the dedupe journal; a restart may forget recent ids");
                }
                self.rotate_if_due();
            }
            if last {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_a_reopen_and_forgotten_or_expired_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (j, loaded) = open(dir.path(), Duration::from_secs(3600)).unwrap();
        assert!(loaded.marks.is_empty());
        let far = (now_secs() + 3600) as u32;
        j.record([1, 2], far);
        j.record([3, 4], far);
        j.record([3, 4], 0);
        j.record([5, 6], 1);
        drop(j);
        std::thread::sleep(Duration::from_millis(200));
        // A torn record at the end is ignored.
        let (_, path) = journal_files(dir.path()).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9u8; 7]).unwrap();
        let (_j, loaded2) = open(dir.path(), Duration::from_secs(3600)).unwrap();
        assert_eq!(loaded2.seed, loaded.seed, "seed persisted");
        assert_eq!(loaded2.marks, vec![([1, 2], far)]);
    }
}
