//! The segmented log and its cursors. Synchronous; callers run it on a blocking thread and
//! batch appends so that one fsync covers a group of requests (group commit).

use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const HEADER: usize = 16;
/// Largest record payload (a record is one event; events are capped far below this).
pub const MAX_RECORD: usize = 64 * 1024 * 1024;

/// Log errors (file system and corruption in a sealed segment).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// File system.
    #[error("spool {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A record in a sealed (not last) segment does not check out.
    #[error("spool {path}: corrupt record at offset {offset}")]
    Corrupt {
        /// Segment.
        path: String,
        /// Byte offset.
        offset: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// When appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every append call (one call = one group of events).
    Always,
    /// Never explicitly (the OS decides; a power loss may lose the tail).
    Never,
}

#[derive(Debug, Clone)]
struct Segment {
    first: u64,
    path: PathBuf,
}

/// The part of a log that readers and the reclaimer share with the writer: the segment list,
/// the committed sequence number (records below it are complete and durable per the fsync
/// policy), and the byte count.
pub struct Shared {
    dir: PathBuf,
    segments: parking_lot::Mutex<Vec<Segment>>,
    committed: AtomicU64,
    bytes: AtomicU64,
    /// Where recent reads ended: next seq -> (segment first seq, byte offset), so that a
    /// sink draining in order seeks straight to its position instead of scanning.
    positions: parking_lot::Mutex<std::collections::HashMap<u64, (u64, u64)>>,
}

/// An open spool log: the writer, plus [`Shared`] for readers.
pub struct Log {
    shared: Arc<Shared>,
    writer: BufWriter<File>,
    written: u64,
    next_seq: u64,
    segment_bytes: u64,
    fsync: Fsync,
    /// Bytes recovered away from a torn tail at open.
    pub truncated_bytes: u64,
}

fn seg_name(first: u64) -> String {
    format!("seg-{first:020}.log")
}

fn read_record(f: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<Option<(u64, usize)>> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        let n = f.read(&mut h[got..])?;
        if n == 0 {
            return Ok(None);
        }
        got += n;
    }
    let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    if len > MAX_RECORD {
        return Ok(None);
    }
    buf.resize(len, 0);
    if f.read_exact(buf).is_err() {
        return Ok(None);
    }
    let mut c = crc32fast::Hasher::new();
    c.update(&h[8..16]);
    c.update(buf);
    if c.finalize() != crc {
        return Ok(None);
    }
    Ok(Some((seq, HEADER + len)))
}

/// Scans a segment, truncating it after its last valid record; returns the next sequence
/// number, the valid length, and how many bytes were cut.
fn scan_tail(seg: &Segment) -> Result<(u64, u64, u64), LogError> {
    let path = &seg.path;
    let mut f = File::open(path).map_err(io(path))?;
    let total = f.metadata().map_err(io(path))?.len();
    let mut r = std::io::BufReader::new(&mut f);
    let mut buf = Vec::new();
    let mut offset = 0u64;
    let mut next = seg.first;
    while let Some((seq, n)) = read_record(&mut r, &mut buf).map_err(io(path))? {
        if seq != next {
            break;
        }
        offset += n as u64;
        next = seq + 1;
    }
    if offset < total {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(offset).map_err(io(path))?;
        f.sync_all().map_err(io(path))?;
    }
    Ok((next, offset, total - offset))
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering from a torn tail.
    pub fn open(dir: &Path, segment_bytes: u64, fsync: Fsync) -> Result<Log, LogError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut segments: Vec<Segment> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let first = name
                    .strip_prefix("seg-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()?;
                Some(Segment {
                    first,
                    path: e.path(),
                })
            })
            .collect();
        segments.sort_by_key(|s| s.first);
        let (next_seq, written, truncated_bytes) = match segments.last() {
            None => (0, 0, 0),
            Some(last) => scan_tail(last)?,
        };
        if segments.is_empty() {
            segments.push(Segment {
                first: 0,
                path: dir.join(seg_name(0)),
            });
        }
        let path = segments.last().expect("one segment").path.clone();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        file.seek(SeekFrom::End(0)).map_err(io(&path))?;
        let bytes = segments
            .iter()
            .filter_map(|s| std::fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        Ok(Log {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                segments: parking_lot::Mutex::new(segments),
                committed: AtomicU64::new(next_seq),
                bytes: AtomicU64::new(bytes),
                positions: parking_lot::Mutex::new(std::collections::HashMap::new()),
            }),
            writer: BufWriter::with_capacity(256 * 1024, file),
            written,
            next_seq,
            segment_bytes,
            fsync,
            truncated_bytes,
        })
    }

    /// After a failed append (disk full, I/O error): drops what was buffered, cuts the active
    /// segment back to its last complete record and reopens it, so that later appends never
    /// follow a torn record. Records of the failed group that did reach the disk whole are
    /// kept (the caller answered an error, so the sender retries: at least once).
    pub fn recover(&mut self) -> Result<(), LogError> {
        let seg = self
            .shared
            .segments
            .lock()
            .last()
            .expect("one segment")
            .clone();
        let placeholder = BufWriter::new(File::open(&seg.path).map_err(io(&seg.path))?);
        let old = std::mem::replace(&mut self.writer, placeholder);
        let _ = old.into_parts(); // discard the buffer without writing it
        let (next, written, _) = scan_tail(&seg)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&seg.path)
            .map_err(io(&seg.path))?;
        self.writer = BufWriter::with_capacity(256 * 1024, file);
        self.written = written;
        self.next_seq = next;
        let bytes = self
            .shared
            .segments
            .lock()
            .iter()
            .filter_map(|s| std::fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        self.shared.bytes.store(bytes, Ordering::Release);
        self.shared.committed.store(next, Ordering::Release);
        Ok(())
    }

    /// The reader side, for drainers and the reclaimer.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn active_path(&self) -> PathBuf {
        self.shared
            .segments
            .lock()
            .last()
            .expect("one segment")
            .path
            .clone()
    }

    /// Appends a group of payloads and makes them durable per the fsync policy; returns the
    /// first sequence number of the group. Readers see them once this returns.
    pub fn append(&mut self, payloads: &[Bytes]) -> Result<u64, LogError> {
        let first = self.next_seq;
        let mut path = self.active_path();
        let mut added = 0u64;
        for p in payloads {
            if self.written >= self.segment_bytes {
                self.rotate()?;
                path = self.active_path();
            }
            let seq = self.next_seq.to_le_bytes();
            let mut c = crc32fast::Hasher::new();
            c.update(&seq);
            c.update(p);
            let w = &mut self.writer;
            w.write_all(&(p.len() as u32).to_le_bytes())
                .map_err(io(&path))?;
            w.write_all(&c.finalize().to_le_bytes())
                .map_err(io(&path))?;
            w.write_all(&seq).map_err(io(&path))?;
            w.write_all(p).map_err(io(&path))?;
            self.written += (HEADER + p.len()) as u64;
            added += (HEADER + p.len()) as u64;
            self.next_seq += 1;
        }
        self.flush(&path)?;
        self.shared.bytes.fetch_add(added, Ordering::AcqRel);
        self.shared
            .committed
            .store(self.next_seq, Ordering::Release);
        Ok(first)
    }

    fn flush(&mut self, path: &Path) -> Result<(), LogError> {
        self.writer.flush().map_err(io(path))?;
        if self.fsync == Fsync::Always {
            self.writer.get_ref().sync_data().map_err(io(path))?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        let path = self.active_path();
        self.flush(&path)?;
        if self.fsync == Fsync::Always {
            self.writer.get_ref().sync_all().map_err(io(&path))?;
        }
        let dir = &self.shared.dir;
        let seg = Segment {
            first: self.next_seq,
            path: dir.join(seg_name(self.next_seq)),
        };
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&seg.path)
            .map_err(io(&seg.path))?;
        if self.fsync == Fsync::Always {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        self.writer = BufWriter::with_capacity(256 * 1024, f);
        self.shared.segments.lock().push(seg);
        self.written = 0;
        Ok(())
    }

    /// See [`Shared::read`].
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Bytes)>, LogError> {
        self.shared.read(from, max)
    }

    /// See [`Shared::reclaim`].
    pub fn reclaim(&mut self, min_cursor: u64) -> Result<usize, LogError> {
        self.shared.reclaim(min_cursor)
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes()
    }
}

impl Shared {
    /// The sequence number after the last complete, committed record.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Bytes of the segment files.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first sequence number still stored.
    pub fn first_seq(&self) -> u64 {
        self.segments.lock().first().map(|s| s.first).unwrap_or(0)
    }

    /// Reads up to `max` committed records from sequence `from` on, in order.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Bytes)>, LogError> {
        let committed = self.committed();
        let mut out = Vec::new();
        let segments: Vec<Segment> = {
            let all = self.segments.lock();
            let start = all.partition_point(|s| s.first <= from).saturating_sub(1);
            all[start..].to_vec()
        };
        let known = self.positions.lock().get(&from).copied();
        for (i, seg) in segments.iter().enumerate() {
            if seg.first >= committed {
                break;
            }
            let sealed = i + 1 < segments.len();
            let mut f = File::open(&seg.path).map_err(io(&seg.path))?;
            let mut offset = 0u64;
            if let Some((_, at)) = known.filter(|(first, _)| *first == seg.first) {
                f.seek(SeekFrom::Start(at)).map_err(io(&seg.path))?;
                offset = at;
            }
            let mut r = std::io::BufReader::with_capacity(256 * 1024, f);
            let mut buf = Vec::new();
            loop {
                match read_record(&mut r, &mut buf).map_err(io(&seg.path))? {
                    Some((seq, n)) => {
                        if seq >= committed {
                            self.remember(seq, seg.first, offset);
                            return Ok(out);
                        }
                        offset += n as u64;
                        if seq >= from {
                            out.push((seq, Bytes::copy_from_slice(&buf)));
                            if out.len() >= max {
                                self.remember(seq + 1, seg.first, offset);
                                return Ok(out);
                            }
                        }
                    }
                    None if sealed && offset < seg_len(&seg.path)? => {
                        return Err(LogError::Corrupt {
                            path: seg.path.display().to_string(),
                            offset,
                        });
                    }
                    None => break,
                }
            }
            if !sealed {
                self.remember(committed, seg.first, offset);
            }
        }
        Ok(out)
    }

    fn remember(&self, next: u64, segment: u64, offset: u64) {
        let mut p = self.positions.lock();
        if p.len() >= 64 {
            p.clear();
        }
        p.insert(next, (segment, offset));
    }

    /// Deletes sealed segments whose records are all below `min_cursor`; returns how many.
    pub fn reclaim(&self, min_cursor: u64) -> Result<usize, LogError> {
        let mut n = 0;
        loop {
            let seg = {
                let mut segs = self.segments.lock();
                if segs.len() > 1 && segs[1].first <= min_cursor {
                    segs.remove(0)
                } else {
                    break;
                }
            };
            let len = std::fs::metadata(&seg.path).map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&seg.path).map_err(io(&seg.path))?;
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            n += 1;
        }
        Ok(n)
    }
}

fn seg_len(p: &Path) -> Result<u64, LogError> {
    Ok(std::fs::metadata(p).map_err(io(p))?.len())
}

/// A sink's position in the log, stored in `<dir>/cursors/<name>`.
pub struct Cursor {
    path: PathBuf,
    /// The next sequence number this sink needs.
    pub next: u64,
}

impl Cursor {
    /// Loads (or starts at 0) the cursor `name` of the log in `dir`.
    pub fn open(dir: &Path, name: &str) -> Result<Cursor, LogError> {
        Self::open_or(dir, name, 0)
    }

    /// Loads the cursor `name` of the log in `dir`; a new one starts at `start`.
    pub fn open_or(dir: &Path, name: &str, start: u64) -> Result<Cursor, LogError> {
        let d = dir.join("cursors");
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        let path = d.join(name);
        let next = match std::fs::read_to_string(&path) {
            Ok(s) => match s.trim().parse() {
                Ok(n) => n,
                Err(_) => {
                    // Unreadable (say, emptied by a power loss): start from the oldest
                    // record kept. The sink may get events again; it misses none.
                    tracing::warn!(cursor = %path.display(), "spool cursor unreadable; the sink restarts from the oldest spooled event");
                    0
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => start,
            Err(e) => return Err(io(&path)(e)),
        };
        Ok(Cursor { path, next })
    }

    /// Moves the cursor to `next` (write a temp file, rename over). Not fsynced: the log is
    /// durable, and a cursor that a power loss sets back only repeats deliveries (at least
    /// once); a killed process loses nothing.
    pub fn advance(&mut self, next: u64) -> Result<(), LogError> {
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(next.to_string().as_bytes()).map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        self.next = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn payloads(range: std::ops::Range<u32>) -> Vec<Bytes> {
        range
            .map(|i| Bytes::from(format!("{{\"event_id\":\"e{i}\"}}")))
            .collect()
    }

    #[test]
    fn append_read_rotate_reclaim_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), 200, Fsync::Always).unwrap();
        assert_eq!(log.append(&payloads(0..10)).unwrap(), 0);
        assert_eq!(log.append(&payloads(10..25)).unwrap(), 10);
        assert!(
            log.shared.segments.lock().len() > 3,
            "rotated: {}",
            log.shared.segments.lock().len()
        );
        let all = log.read(0, 100).unwrap();
        assert_eq!(all.len(), 25);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, (seq, p))| *seq == i as u64 && p == &payloads(i as u32..i as u32 + 1)[0]));
        assert_eq!(
            log.read(17, 3)
                .unwrap()
                .iter()
                .map(|r| r.0)
                .collect::<Vec<_>>(),
            vec![17, 18, 19]
        );
        let before = log.shared.segments.lock().len();
        log.reclaim(12).unwrap();
        assert!(log.shared.segments.lock().len() < before);
        assert_eq!(
            log.read(12, 100).unwrap().len(),
            13,
            "nothing at or after the cursor reclaimed"
        );
        drop(log);
        let mut log = Log::open(dir.path(), 200, Fsync::Always).unwrap();
        assert_eq!(log.next_seq(), 25);
        assert_eq!(log.append(&payloads(25..26)).unwrap(), 25);
        assert_eq!(log.read(24, 10).unwrap().len(), 2);
    }

    #[test]
    fn torn_tail_is_truncated_and_everything_before_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), 1 << 20, Fsync::Always).unwrap();
        log.append(&payloads(0..5)).unwrap();
        let path = log.shared.segments.lock().last().unwrap().path.clone();
        drop(log);
        // A crash mid-write: half a record at the end.
        let full = std::fs::read(&path).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&full[..HEADER + 3]).unwrap();
        drop(f);
        let log = Log::open(dir.path(), 1 << 20, Fsync::Always).unwrap();
        assert_eq!(log.truncated_bytes, (HEADER + 3) as u64);
        assert_eq!(log.next_seq(), 5);
        assert_eq!(log.read(0, 10).unwrap().len(), 5);
        // A flipped byte in the last record: that record is dropped, the others kept.
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let log = Log::open(dir.path(), 1 << 20, Fsync::Always).unwrap();
        assert_eq!(log.next_seq(), 4);
    }

    #[test]
    fn cursors_persist() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cursor::open(dir.path(), "splunk").unwrap();
        assert_eq!(c.next, 0);
        c.advance(42).unwrap();
        assert_eq!(Cursor::open(dir.path(), "splunk").unwrap().next, 42);
        assert_eq!(Cursor::open_or(dir.path(), "new", 7).unwrap().next, 7);
        std::fs::write(dir.path().join("cursors/splunk"), b"").unwrap();
        assert_eq!(
            Cursor::open_or(dir.path(), "splunk", 99).unwrap().next,
            0,
            "an unreadable cursor replays from the oldest record, never skips"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn any_truncation_keeps_a_valid_prefix(groups in proptest::collection::vec(1usize..6, 1..6), cut in 0usize..4000) {
            let dir = tempfile::tempdir().unwrap();
            let mut log = Log::open(dir.path(), 1 << 20, Fsync::Never).unwrap();
            let mut n = 0u32;
            for g in groups {
                log.append(&payloads(n..n + g as u32)).unwrap();
                n += g as u32;
            }
            let path = log.shared.segments.lock().last().unwrap().path.clone();
            drop(log);
            let len = std::fs::metadata(&path).unwrap().len();
            let keep = (cut as u64).min(len);
            OpenOptions::new().write(true).open(&path).unwrap().set_len(keep).unwrap();
            let log = Log::open(dir.path(), 1 << 20, Fsync::Never).unwrap();
            let got = log.read(0, 10_000).unwrap();
            prop_assert_eq!(got.len() as u64, log.next_seq());
            for (i, (seq, p)) in got.iter().enumerate() {
                prop_assert_eq!(*seq, i as u64);
                prop_assert_eq!(p, &payloads(i as u32..i as u32 + 1)[0]);
            }
        }
    }
}
