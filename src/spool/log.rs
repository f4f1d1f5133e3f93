//! The segmented log and its cursors. Synchronous; callers run it on a blocking thread and
//! batch appends so that one fsync covers a group of requests (group commit).
//!
//! Damage is survived, not just detected: a record whose length or checksum does not hold in
//! the middle of the log (a flipped bit in a sealed segment, a bad sector) is skipped by
//! scanning forward for the next record whose header and checksum hold (or to the next
//! segment); the damaged byte range is copied to `<spool.dir>/quarantine/` once and counted,
//! and delivery of everything else goes on. At the very end of the last segment a torn write
//! (a record shorter than its own length field, or zero-filled blocks) is cut at open and its
//! number given out again: it was never acknowledged. A whole record whose checksum fails
//! there was written completely and damaged at rest: it is quarantined and counted like any
//! other damage, and its number is never given out again. Nor is any number below the highest
//! cursor (a sink took it, whatever is left of the file): a log found shorter than a cursor
//! goes on at that cursor, the gap counted for the sinks behind it.
//!
//! Owns: the segment files, the cursor files, the quarantine copies. Knows nothing of sinks,
//! events or HTTP.

use crate::fsutil;
use bytes::Bytes;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const HEADER: usize = 16;
/// Largest record payload: the largest body `server.max_body_bytes` allows (64 MiB) and 1 MiB
/// for a record's time and mapped fields (`record.rs`; ids and types come from headers, which
/// are far smaller). `Spool::append` refuses anything larger before acknowledging it, since
/// a reader would take a longer record for damage.
pub const MAX_RECORD: usize = 65 * 1024 * 1024;

/// Log errors (file system).
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

/// The writer's committed position: records below `seq` are complete and durable per the
/// fsync policy; in the active segment (first sequence number `segment`) they end at byte
/// `len`. Readers never look past it, so a group being written is invisible until it is
/// committed.
#[derive(Debug, Clone, Copy)]
struct Tip {
    seq: u64,
    segment: u64,
    len: u64,
}

/// A damaged byte range skipped by readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// Segment file name.
    pub segment: String,
    /// First sequence number of that segment.
    pub segment_first: u64,
    /// First damaged byte.
    pub start: u64,
    /// First byte after the damage (where the next valid record starts, or the end).
    pub end: u64,
    /// Sequence numbers lost (`lost_from..resume_seq`).
    pub lost_from: u64,
    /// The sequence number reading resumes at.
    pub resume_seq: u64,
    /// Where the range was copied, if it could be.
    pub quarantined: Option<PathBuf>,
}

impl Corruption {
    /// Records this range counts as lost: the sequence numbers it swallowed, at least one.
    pub fn lost(&self) -> u64 {
        self.resume_seq.saturating_sub(self.lost_from).max(1)
    }
}

/// The part of a log that readers and the reclaimer share with the writer: the segment list,
/// the committed position, the byte count, and the damaged ranges found so far.
pub struct Shared {
    dir: PathBuf,
    quarantine: PathBuf,
    segments: parking_lot::Mutex<Vec<Segment>>,
    tip: parking_lot::Mutex<Tip>,
    bytes: AtomicU64,
    /// Where recent reads ended: next seq -> (segment first seq, byte offset), so that a
    /// sink draining in order seeks straight to its position instead of scanning.
    positions: parking_lot::Mutex<std::collections::HashMap<u64, (u64, u64)>>,
    /// Damaged ranges found so far. Held while a range is examined, so that two readers
    /// quarantine and count it once.
    damage: parking_lot::Mutex<Vec<Corruption>>,
}

/// What one read returned.
#[derive(Debug, Default)]
pub struct Batch {
    /// Records in order: sequence number and payload.
    pub records: Vec<(u64, Bytes)>,
    /// Where the next read should start: after the last record, or past a damaged range
    /// that followed it.
    pub next: u64,
}

/// An open spool log: the writer, plus [`Shared`] for readers.
pub struct Log {
    shared: Arc<Shared>,
    writer: BufWriter<fsutil::SeamFile>,
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

/// Parses the record at the start of `b`: its sequence number and total length, if its
/// length and checksum hold.
fn parse_record(b: &[u8]) -> Option<(u64, usize)> {
    if b.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_RECORD || b.len() < HEADER + len {
        return None;
    }
    let crc = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
    let mut c = crc32fast::Hasher::new();
    c.update(&b[8..HEADER + len]);
    (c.finalize() == crc).then(|| {
        (
            u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            HEADER + len,
        )
    })
}

/// The first offset after `at` in `b` where a valid record with a sequence number in
/// `seqs` starts.
fn resync(b: &[u8], seqs: std::ops::Range<u64>) -> Option<(usize, u64)> {
    (1..b.len()).find_map(|i| {
        let h = &b[i..];
        if h.len() < HEADER {
            return None;
        }
        let seq = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        if !seqs.contains(&seq) {
            return None;
        }
        parse_record(h).map(|(s, _)| (i, s))
    })
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

/// What [`scan_tail`] found at the end of the last segment.
struct Tail {
    /// The sequence number after the last valid record.
    next: u64,
    /// Where the last valid record ends (the file is cut there).
    valid_end: u64,
    /// The bytes after it, cut from the file.
    cut: Vec<u8>,
}

impl Tail {
    /// Whether the cut bytes are a whole record by their own length field, and not zeros: a
    /// record that was written completely and damaged afterwards (at rest), not a write
    /// torn by a crash (which ends short of its length, or as zero-filled blocks after a
    /// power loss). Its sequence number was used, so it is never given out again.
    fn damaged_whole_record(&self) -> bool {
        let c = &self.cut;
        if c.len() < HEADER || c.iter().all(|b| *b == 0) {
            return false;
        }
        let len = u32::from_le_bytes(c[0..4].try_into().expect("4 bytes")) as usize;
        len <= MAX_RECORD && HEADER + len <= c.len()
    }
}

/// Scans the last segment and cuts it after its last valid record. Damage with a valid
/// record after it is not at the tail: it is kept for readers to skip.
fn scan_tail(seg: &Segment) -> Result<Tail, LogError> {
    let path = &seg.path;
    let mut bytes = std::fs::read(path).map_err(io(path))?;
    let mut offset = 0usize;
    let mut valid_end = 0usize;
    let mut next = seg.first;
    while offset < bytes.len() {
        match parse_record(&bytes[offset..]) {
            Some((seq, n)) if seq >= next => {
                offset += n;
                valid_end = offset;
                next = seq + 1;
            }
            _ => match resync(&bytes[offset..], next..u64::MAX) {
                Some((i, _)) => offset += i,
                None => break,
            },
        }
    }
    let cut = bytes.split_off(valid_end);
    if !cut.is_empty() {
        let f = fsutil::options().write(true).open(path).map_err(io(path))?;
        f.set_len(valid_end as u64).map_err(io(path))?;
        f.sync_all().map_err(io(path))?;
    }
    Ok(Tail {
        next,
        valid_end: valid_end as u64,
        cut,
    })
}

/// The highest cursor of the log in `dir`: every sequence number below it was handed out
/// (a sink took it), whatever is left of the segments.
fn cursor_floor(dir: &Path) -> Result<u64, LogError> {
    let mut floor = 0;
    for name in cursor_names(dir)? {
        if let Stored::At(n) = Cursor::load(dir, &name)? {
            floor = floor.max(n);
        }
    }
    Ok(floor)
}

/// Copies a damaged byte range to `quarantine/<source>-<segment>-<start>-<end>.bin`
/// (private, fsynced); `None`, logged, when it cannot.
fn quarantine_copy(
    quarantine: &Path,
    log_dir: &Path,
    segment: &str,
    (start, end): (u64, u64),
    bytes: &[u8],
) -> Option<PathBuf> {
    let source = log_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let qpath = quarantine.join(format!("{source}-{segment}-{start}-{end}.bin"));
    fsutil::create_dir_all(quarantine)
        .and_then(|()| fsutil::create(&qpath))
        .and_then(|mut q| q.write_all(bytes).and_then(|()| q.sync_all()))
        .map(|()| qpath.clone())
        .map_err(|e| {
            tracing::error!(path = %qpath.display(), error = %e, "spool: cannot copy a damaged range to the quarantine");
        })
        .ok()
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering from a torn tail. Damaged ranges are
    /// quarantined in `dir/../quarantine` (the spool dir's).
    pub fn open(dir: &Path, segment_bytes: u64, fsync: Fsync) -> Result<Log, LogError> {
        fsutil::create_dir_all(dir).map_err(io(dir))?;
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
        let quarantine = dir
            .parent()
            .map(|p| p.join("quarantine"))
            .unwrap_or_else(|| dir.join("quarantine"));
        let tail = match segments.last() {
            None => Tail {
                next: 0,
                valid_end: 0,
                cut: Vec::new(),
            },
            Some(last) => scan_tail(last)?,
        };
        // Sequence numbers are never given out twice: not those a cursor has passed (even
        // if their records are gone), not that of a whole record damaged at rest.
        let floor = cursor_floor(dir)?;
        let damaged = tail.damaged_whole_record();
        let resume = (tail.next + u64::from(damaged)).max(floor);
        let mut damage = Vec::new();
        let mut truncated_bytes = tail.cut.len() as u64;
        if resume > tail.next {
            let last = segments.last().expect("a cursor implies a segment");
            let name = seg_name(last.first);
            let end = tail.valid_end + tail.cut.len() as u64;
            let quarantined = (!tail.cut.is_empty()).then(|| {
                quarantine_copy(&quarantine, dir, &name, (tail.valid_end, end), &tail.cut)
            });
            tracing::error!(
                segment = %dir.join(&name).display(),
                start = tail.valid_end,
                end,
                lost_seqs = %format!("{}..{resume}", tail.next),
                highest_cursor = floor,
                "spool: acknowledged records at the end of the log are damaged or gone; sinks that had not taken them skip them, new records start at {resume}"
            );
            damage.push(Corruption {
                segment: name,
                segment_first: last.first,
                start: tail.valid_end,
                end,
                lost_from: tail.next,
                resume_seq: resume,
                quarantined: quarantined.flatten(),
            });
            truncated_bytes = 0;
        }
        let (next_seq, written) = (tail.next, tail.valid_end);
        let created = segments.is_empty();
        if created {
            segments.push(Segment {
                first: 0,
                path: dir.join(seg_name(0)),
            });
        }
        let active = segments.last().expect("one segment").clone();
        let mut file = fsutil::append(&active.path).map_err(io(&active.path))?;
        file.seek(SeekFrom::End(0)).map_err(io(&active.path))?;
        let file = fsutil::SeamFile::new(file, &active.path);
        if created && fsync == Fsync::Always {
            fsutil::sync_dir(dir).map_err(io(dir))?;
        }
        let bytes = segments
            .iter()
            .filter_map(|s| std::fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        let mut log = Log {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                quarantine,
                segments: parking_lot::Mutex::new(segments),
                tip: parking_lot::Mutex::new(Tip {
                    seq: next_seq,
                    segment: active.first,
                    len: written,
                }),
                bytes: AtomicU64::new(bytes),
                positions: Default::default(),
                damage: parking_lot::Mutex::new(damage),
            }),
            writer: BufWriter::with_capacity(256 * 1024, file),
            written,
            next_seq,
            segment_bytes,
            fsync,
            truncated_bytes,
        };
        if resume > next_seq {
            // The numbers skipped end the current segment; a new one starts at `resume`, so
            // readers see the gap as the end of a sealed segment.
            log.next_seq = resume;
            log.rotate()?;
            log.publish(resume);
        }
        Ok(log)
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
        let placeholder = BufWriter::new(fsutil::SeamFile::new(
            File::open(&seg.path).map_err(io(&seg.path))?,
            &seg.path,
        ));
        let old = std::mem::replace(&mut self.writer, placeholder);
        let _ = old.into_parts(); // discard the buffer without writing it
        let Tail {
            next,
            valid_end: written,
            ..
        } = scan_tail(&seg)?;
        let file = fsutil::append(&seg.path).map_err(io(&seg.path))?;
        self.writer = BufWriter::with_capacity(256 * 1024, fsutil::SeamFile::new(file, &seg.path));
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
        self.publish(seg.first);
        Ok(())
    }

    fn publish(&self, segment: u64) {
        *self.shared.tip.lock() = Tip {
            seq: self.next_seq,
            segment,
            len: self.written,
        };
    }

    /// The reader side, for drainers and the reclaimer.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn active(&self) -> Segment {
        self.shared
            .segments
            .lock()
            .last()
            .expect("one segment")
            .clone()
    }

    /// Appends a group of payloads and makes them durable per the fsync policy; returns the
    /// first sequence number of the group. Readers see them once this returns.
    pub fn append(&mut self, payloads: &[Bytes]) -> Result<u64, LogError> {
        let first = self.next_seq;
        let mut seg = self.active();
        let mut added = 0u64;
        for p in payloads {
            if self.written >= self.segment_bytes {
                self.rotate()?;
                seg = self.active();
            }
            let seq = self.next_seq.to_le_bytes();
            let mut c = crc32fast::Hasher::new();
            c.update(&seq);
            c.update(p);
            let w = &mut self.writer;
            let path = &seg.path;
            w.write_all(&(p.len() as u32).to_le_bytes())
                .map_err(io(path))?;
            w.write_all(&c.finalize().to_le_bytes()).map_err(io(path))?;
            w.write_all(&seq).map_err(io(path))?;
            w.write_all(p).map_err(io(path))?;
            self.written += (HEADER + p.len()) as u64;
            added += (HEADER + p.len()) as u64;
            self.next_seq += 1;
        }
        self.flush(&seg.path)?;
        self.shared.bytes.fetch_add(added, Ordering::AcqRel);
        self.publish(seg.first);
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
        let path = self.active().path;
        self.flush(&path)?;
        if self.fsync == Fsync::Always {
            self.writer.get_ref().file().sync_all().map_err(io(&path))?;
        }
        let dir = &self.shared.dir;
        let seg = Segment {
            first: self.next_seq,
            path: dir.join(seg_name(self.next_seq)),
        };
        let f = fsutil::append(&seg.path).map_err(io(&seg.path))?;
        if self.fsync == Fsync::Always {
            fsutil::sync_dir(dir).map_err(io(dir))?;
        }
        self.writer = BufWriter::with_capacity(256 * 1024, fsutil::SeamFile::new(f, &seg.path));
        self.shared.segments.lock().push(seg);
        self.written = 0;
        Ok(())
    }

    /// Whether the active segment is still the file at its path: false once the source
    /// directory was removed (the file unlinked) or replaced (another file there), when
    /// appends would reach a file nobody will ever read again.
    pub fn still_linked(&self) -> Result<bool, LogError> {
        use std::os::unix::fs::MetadataExt;
        // The writer's own file and path: no segment-list lock, no path copy per group.
        let active = self.writer.get_ref();
        let path = active.path();
        let open = active.file().metadata().map_err(io(path))?;
        if open.nlink() == 0 {
            return Ok(false);
        }
        Ok(match std::fs::metadata(path) {
            Ok(m) => m.ino() == open.ino() && m.dev() == open.dev(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io(path)(e)),
        })
    }

    /// See [`Shared::read`].
    pub fn read(&self, from: u64, max: usize) -> Result<Batch, LogError> {
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
        self.tip.lock().seq
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

    /// Segment files on disk.
    pub fn segment_count(&self) -> usize {
        self.segments.lock().len()
    }

    /// Records lost to damage so far (each damaged range counts the sequence numbers it
    /// swallowed, at least one).
    pub fn corrupt_records(&self) -> u64 {
        self.damage.lock().iter().map(Corruption::lost).sum()
    }

    /// Damaged ranges found so far, oldest first.
    pub fn corruptions(&self) -> Vec<Corruption> {
        self.damage.lock().clone()
    }

    /// Reads up to `max` committed records from sequence `from` on, in order, skipping (and
    /// quarantining, once) damaged ranges.
    pub fn read(&self, from: u64, max: usize) -> Result<Batch, LogError> {
        let tip = *self.tip.lock();
        let mut out = Batch {
            records: Vec::new(),
            next: from,
        };
        let segments: Vec<Segment> = {
            let all = self.segments.lock();
            let start = all.partition_point(|s| s.first <= from).saturating_sub(1);
            all[start..].to_vec()
        };
        let known = self.positions.lock().get(&from).copied();
        for (i, seg) in segments.iter().enumerate() {
            if seg.first >= tip.seq {
                break;
            }
            let limit_seq = segments
                .get(i + 1)
                .map(|s| s.first)
                .unwrap_or(tip.seq)
                .min(tip.seq);
            let limit_len = if seg.first == tip.segment {
                tip.len
            } else {
                seg_len(&seg.path)?
            };
            let f = File::open(&seg.path).map_err(io(&seg.path))?;
            let mut r = std::io::BufReader::with_capacity(256 * 1024, f);
            let (mut offset, mut expect) = (0u64, seg.first);
            if let Some((_, at)) = known.filter(|(first, _)| *first == seg.first) {
                r.seek(SeekFrom::Start(at)).map_err(io(&seg.path))?;
                (offset, expect) = (at, from);
            }
            let mut buf = Vec::new();
            while offset < limit_len {
                match read_record(&mut r, &mut buf).map_err(io(&seg.path))? {
                    Some((seq, n))
                        if seq >= expect && seq < limit_seq && offset + n as u64 <= limit_len =>
                    {
                        offset += n as u64;
                        expect = seq + 1;
                        if seq >= from {
                            out.records.push((seq, Bytes::copy_from_slice(&buf)));
                            out.next = seq + 1;
                            if out.records.len() >= max {
                                self.remember(out.next, seg.first, offset);
                                return Ok(out);
                            }
                        }
                    }
                    _ => {
                        let (at, seq) = self.skip(seg, offset, expect, limit_seq, limit_len)?;
                        (offset, expect) = (at, seq);
                        out.next = out.next.max(seq);
                        r.seek(SeekFrom::Start(at)).map_err(io(&seg.path))?;
                    }
                }
            }
            // Sequence numbers missing at the end of a sealed segment (cut by hand): the
            // next segment says where the log goes on.
            if seg.first != tip.segment && expect < limit_seq && limit_seq > from {
                out.next = out.next.max(limit_seq);
            }
            if seg.first == tip.segment && expect == tip.seq {
                self.remember(tip.seq, seg.first, offset);
            }
        }
        Ok(out)
    }

    /// Examines the damaged range at `offset` of `seg` (once per range): finds the next
    /// valid record with a sequence number in `expect..limit_seq` before `limit_len`, copies
    /// the range to the quarantine directory, counts and logs it. Returns where reading
    /// resumes: byte offset and sequence number.
    fn skip(
        &self,
        seg: &Segment,
        offset: u64,
        expect: u64,
        limit_seq: u64,
        limit_len: u64,
    ) -> Result<(u64, u64), LogError> {
        let mut damage = self.damage.lock();
        if let Some(c) = damage
            .iter()
            .find(|c| c.segment_first == seg.first && c.start == offset)
        {
            return Ok((c.end, c.resume_seq));
        }
        let mut f = File::open(&seg.path).map_err(io(&seg.path))?;
        f.seek(SeekFrom::Start(offset)).map_err(io(&seg.path))?;
        let mut bytes = Vec::new();
        f.take(limit_len - offset)
            .read_to_end(&mut bytes)
            .map_err(io(&seg.path))?;
        let (end, resume_seq) = match resync(&bytes, expect..limit_seq) {
            Some((i, seq)) => (offset + i as u64, seq),
            None => (limit_len, limit_seq),
        };
        let name = seg_name(seg.first);
        // The file may be shorter than the committed length (cut by hand while running).
        let damaged = &bytes[..((end - offset) as usize).min(bytes.len())];
        let quarantined =
            quarantine_copy(&self.quarantine, &self.dir, &name, (offset, end), damaged);
        tracing::error!(
            segment = %self.dir.join(&name).display(),
            start = offset,
            end,
            lost_seqs = %format!("{expect}..{resume_seq}"),
            quarantine = %quarantined.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "spool: damaged records skipped (checksum or length does not hold); delivery goes on after them"
        );
        damage.push(Corruption {
            segment: name,
            segment_first: seg.first,
            start: offset,
            end,
            lost_from: expect,
            resume_seq,
            quarantined,
        });
        Ok((end, resume_seq))
    }

    fn remember(&self, next: u64, segment: u64, offset: u64) {
        let mut p = self.positions.lock();
        if p.len() >= 64 {
            p.clear();
        }
        p.insert(next, (segment, offset));
    }

    /// Whether [`Shared::reclaim`] with `min_cursor` would delete a segment.
    pub fn reclaimable(&self, min_cursor: u64) -> bool {
        let segs = self.segments.lock();
        segs.len() > 1 && segs[1].first <= min_cursor
    }

    /// Deletes sealed segments whose records are all below `min_cursor`; returns how many.
    /// The caller makes sure every cursor at or past `min_cursor` is durable first.
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

/// What a sink's cursor file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// No file: the sink was never attached to this log.
    Missing,
    /// A file that does not hold a number (emptied by a power loss, say).
    Unreadable,
    /// The next sequence number the sink needs.
    At(u64),
}

/// A sink's position in the log, stored in `<dir>/cursors/<name>`.
pub struct Cursor {
    path: PathBuf,
    /// The next sequence number this sink needs.
    pub next: u64,
}

/// The directory of a log's cursors.
pub fn cursor_dir(dir: &Path) -> PathBuf {
    dir.join("cursors")
}

/// The names of the cursor files of the log in `dir`.
pub fn cursor_names(dir: &Path) -> Result<Vec<String>, LogError> {
    let d = cursor_dir(dir);
    let rd = match std::fs::read_dir(&d) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io(&d)(e)),
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.ends_with(".tmp"))
        .collect();
    names.sort();
    Ok(names)
}

impl Cursor {
    /// What the cursor file `name` of the log in `dir` holds.
    pub fn load(dir: &Path, name: &str) -> Result<Stored, LogError> {
        let path = cursor_dir(dir).join(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(s
                .trim()
                .parse()
                .map(Stored::At)
                .unwrap_or(Stored::Unreadable)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stored::Missing),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Writes the cursor `name` at `next` (and, when `durable`, fsyncs it and its directory
    /// before returning).
    pub fn create(dir: &Path, name: &str, next: u64, durable: bool) -> Result<Cursor, LogError> {
        let d = cursor_dir(dir);
        fsutil::create_dir_all(&d).map_err(io(&d))?;
        if durable {
            fsutil::sync_dir(dir).map_err(io(dir))?;
        }
        let mut c = Cursor {
            path: d.join(name),
            next,
        };
        c.write(next, durable)?;
        Ok(c)
    }

    /// A handle on the cursor `name` of the log in `dir`, known to be at `next` (as
    /// [`crate::spool::attach`] left it); no I/O.
    pub fn handle(dir: &Path, name: &str, next: u64) -> Cursor {
        Cursor {
            path: cursor_dir(dir).join(name),
            next,
        }
    }

    /// Loads (or creates at 0) the cursor `name` of the log in `dir`.
    pub fn open(dir: &Path, name: &str) -> Result<Cursor, LogError> {
        match Self::load(dir, name)? {
            Stored::At(n) => Ok(Cursor {
                path: cursor_dir(dir).join(name),
                next: n,
            }),
            Stored::Missing | Stored::Unreadable => Self::create(dir, name, 0, false),
        }
    }

    fn write(&mut self, next: u64, durable: bool) -> Result<(), LogError> {
        fsutil::write_atomic(&self.path, next.to_string().as_bytes(), durable)
            .map_err(io(&self.path))?;
        self.next = next;
        Ok(())
    }

    /// Moves the cursor to `next` (write a temp file, rename over). Not fsynced: a cursor
    /// that a power loss sets back only repeats deliveries (at least once); a killed process
    /// loses nothing. Before a segment is deleted, [`sync_cursor`] makes it durable.
    pub fn advance(&mut self, next: u64) -> Result<(), LogError> {
        self.write(next, false)
    }
}

/// Makes the cursor file `name` of the log in `dir` durable as it is now (file and
/// directory entry).
pub fn sync_cursor(dir: &Path, name: &str) -> Result<(), LogError> {
    let d = cursor_dir(dir);
    let path = d.join(name);
    File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(io(&path))?;
    fsutil::sync_dir(&d).map_err(io(&d))
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
        let all = log.read(0, 100).unwrap().records;
        assert_eq!(all.len(), 25);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, (seq, p))| *seq == i as u64 && p == &payloads(i as u32..i as u32 + 1)[0]));
        assert_eq!(
            log.read(17, 3)
                .unwrap()
                .records
                .iter()
                .map(|r| r.0)
                .collect::<Vec<_>>(),
            vec![17, 18, 19]
        );
        let before = log.shared.segments.lock().len();
        log.reclaim(12).unwrap();
        assert!(log.shared.segments.lock().len() < before);
        assert_eq!(
            log.read(12, 100).unwrap().records.len(),
            13,
            "nothing at or after the cursor reclaimed"
        );
        drop(log);
        let mut log = Log::open(dir.path(), 200, Fsync::Always).unwrap();
        assert_eq!(log.next_seq(), 25);
        assert_eq!(log.append(&payloads(25..26)).unwrap(), 25);
        assert_eq!(log.read(24, 10).unwrap().records.len(), 2);
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
        let mut f = fsutil::options().append(true).open(&path).unwrap();
        f.write_all(&full[..HEADER + 3]).unwrap();
        drop(f);
        let log = Log::open(dir.path(), 1 << 20, Fsync::Always).unwrap();
        assert_eq!(log.truncated_bytes, (HEADER + 3) as u64);
        assert_eq!(log.next_seq(), 5);
        assert_eq!(log.read(0, 10).unwrap().records.len(), 5);
        // A flipped byte in the last record: that record is damage, not a torn write (its
        // number is not given out again), the others kept.
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let log = Log::open(dir.path(), 1 << 20, Fsync::Always).unwrap();
        assert_eq!(log.next_seq(), 5);
        assert_eq!(log.read(0, 10).unwrap().records.len(), 4);
        assert_eq!(log.shared.corrupt_records(), 1);
    }

    #[test]
    fn cursors_persist() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Cursor::load(dir.path(), "splunk").unwrap(), Stored::Missing);
        let mut c = Cursor::create(dir.path(), "splunk", 0, true).unwrap();
        assert_eq!(Cursor::load(dir.path(), "splunk").unwrap(), Stored::At(0));
        c.advance(42).unwrap();
        assert_eq!(Cursor::open(dir.path(), "splunk").unwrap().next, 42);
        sync_cursor(dir.path(), "splunk").unwrap();
        std::fs::write(dir.path().join("cursors/splunk"), b"").unwrap();
        assert_eq!(
            Cursor::load(dir.path(), "splunk").unwrap(),
            Stored::Unreadable
        );
        assert_eq!(
            cursor_names(dir.path()).unwrap(),
            vec!["splunk".to_string()]
        );
    }

    fn seg_paths(log: &Log) -> Vec<PathBuf> {
        log.shared
            .segments
            .lock()
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }

    fn flip(path: &Path, at: usize) {
        let mut b = std::fs::read(path).unwrap();
        b[at] ^= 0x5a;
        std::fs::write(path, &b).unwrap();
    }

    fn seqs(b: &Batch) -> Vec<u64> {
        b.records.iter().map(|r| r.0).collect()
    }

    #[test]
    fn a_flipped_byte_in_a_sealed_segment_is_skipped_quarantined_and_counted_once() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("src");
        let mut log = Log::open(&dir, 150, Fsync::Never).unwrap();
        log.append(&payloads(0..12)).unwrap();
        let segs = seg_paths(&log);
        assert!(segs.len() >= 3, "{}", segs.len());
        // The second record of the first segment: its payload.
        let first_len = HEADER + payloads(0..1)[0].len();
        flip(&segs[0], first_len + HEADER + 2);
        let all = log.read(0, 100).unwrap();
        let got = seqs(&all);
        assert!(!got.contains(&1), "{got:?}");
        assert_eq!(got.len(), 11, "everything else delivered: {got:?}");
        assert_eq!(all.next, 12);
        assert_eq!(log.shared.corrupt_records(), 1);
        // A second reader (another sink) skips the same range without counting it again.
        assert_eq!(seqs(&log.read(0, 100).unwrap()).len(), 11);
        assert_eq!(log.shared.corrupt_records(), 1);
        let c = &log.shared.corruptions()[0];
        assert_eq!((c.lost_from, c.resume_seq), (1, 2));
        let q = c.quarantined.clone().unwrap();
        assert!(q.starts_with(t.path().join("quarantine")), "{q:?}");
        assert_eq!(std::fs::read(&q).unwrap().len(), first_len);
        // Reading from the damaged record itself jumps past it.
        let b = log.read(1, 1).unwrap();
        assert_eq!(seqs(&b), vec![2]);
    }

    #[test]
    fn damage_in_the_middle_of_the_last_segment_is_not_taken_for_a_torn_tail() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("src");
        let mut log = Log::open(&dir, 1 << 20, Fsync::Never).unwrap();
        log.append(&payloads(0..6)).unwrap();
        let path = seg_paths(&log)[0].clone();
        drop(log);
        flip(&path, 3); // the first record's length
        let mut log = Log::open(&dir, 1 << 20, Fsync::Never).unwrap();
        assert_eq!(log.truncated_bytes, 0);
        assert_eq!(log.next_seq(), 6, "records after the damage are kept");
        log.append(&payloads(6..8)).unwrap();
        let b = log.read(0, 100).unwrap();
        assert_eq!(seqs(&b), vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(log.shared.corrupt_records(), 1);
    }

    #[test]
    fn an_active_segment_cut_short_under_a_running_reader_is_skipped_not_a_panic() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("src");
        let mut log = Log::open(&dir, 1 << 20, Fsync::Never).unwrap();
        log.append(&payloads(0..6)).unwrap();
        let path = seg_paths(&log)[0].clone();
        let len = std::fs::metadata(&path).unwrap().len();
        fsutil::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let b = log.read(0, 100).unwrap();
        assert!(!b.records.is_empty() && b.records.len() < 6);
        assert_eq!(b.next, 6, "the reader moves past what is gone");
        assert!(log.shared.corrupt_records() >= 1);
    }

    #[test]
    fn damage_of_the_last_committed_record_skips_to_what_is_appended_next() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("src");
        let mut log = Log::open(&dir, 1 << 20, Fsync::Never).unwrap();
        log.append(&payloads(0..3)).unwrap();
        let path = seg_paths(&log)[0].clone();
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        flip(&path, len - 1);
        let b = log.read(0, 100).unwrap();
        assert_eq!(seqs(&b), vec![0, 1]);
        assert_eq!(b.next, 3);
        log.append(&payloads(3..5)).unwrap();
        let b = log.read(3, 100).unwrap();
        assert_eq!(seqs(&b), vec![3, 4]);
        assert_eq!(seqs(&log.read(0, 100).unwrap()), vec![0, 1, 3, 4]);
        assert_eq!(log.shared.corrupt_records(), 1);
    }

    #[test]
    fn a_damaged_last_record_a_cursor_passed_never_gives_its_sequence_number_again() {
        // The probe: three records delivered (cursor 3), the last one damaged at rest, a
        // restart, three more appended: the sink must get all three new ones.
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("src");
        let mut log = Log::open(&dir, 1 << 20, Fsync::Never).unwrap();
        log.append(&payloads(0..3)).unwrap();
        Cursor::create(&dir, "file", 3, true).unwrap();
        let path = seg_paths(&log)[0].clone();
        drop(log);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        flip(&path, len - 2); // the payload of the last record
        let mut log = Log::open(&dir, 1 << 20, Fsync::Never).unwrap();
        assert_eq!(log.next_seq(), 3, "sequence numbers are never reused");
        assert_eq!(log.append(&payloads(3..6)).unwrap(), 3);
        assert_eq!(seqs(&log.read(3, 100).unwrap()), vec![3, 4, 5]);
        // A sink that had not taken it skips it, counted once, its bytes quarantined.
        assert_eq!(seqs(&log.read(0, 100).unwrap()), vec![0, 1, 3, 4, 5]);
        assert_eq!(log.shared.corrupt_records(), 1);
        let c = &log.shared.corruptions()[0];
        assert_eq!((c.lost_from, c.resume_seq), (2, 3));
        assert!(c.quarantined.as_ref().is_some_and(|q| q.exists()));
        // And across another restart nothing moves back.
        drop(log);
        let log = Log::open(&dir, 1 << 20, Fsync::Never).unwrap();
        assert_eq!(log.next_seq(), 6);
        assert_eq!(seqs(&log.read(3, 100).unwrap()), vec![3, 4, 5]);
    }

    #[test]
    fn a_damaged_complete_last_record_is_not_a_torn_write_even_with_no_cursor_past_it() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("src");
        let mut log = Log::open(&dir, 1 << 20, Fsync::Never).unwrap();
        log.append(&payloads(0..3)).unwrap();
        let path = seg_paths(&log)[0].clone();
        drop(log);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        flip(&path, len - 2);
        let mut log = Log::open(&dir, 1 << 20, Fsync::Never).unwrap();
        assert_eq!(
            log.next_seq(),
            3,
            "an acknowledged record's number is not reused"
        );
        assert_eq!(log.truncated_bytes, 0, "not counted as a torn write");
        log.append(&payloads(3..4)).unwrap();
        assert_eq!(seqs(&log.read(0, 100).unwrap()), vec![0, 1, 3]);
        assert_eq!(log.shared.corrupt_records(), 1);
    }

    #[test]
    fn a_torn_or_zero_filled_tail_is_cut_and_its_number_reused() {
        for tail in [&b"\x07\x00\x00"[..], &[0u8; 40][..]] {
            let t = tempfile::tempdir().unwrap();
            let dir = t.path().join("src");
            let mut log = Log::open(&dir, 1 << 20, Fsync::Never).unwrap();
            log.append(&payloads(0..2)).unwrap();
            let path = seg_paths(&log)[0].clone();
            drop(log);
            let mut f = fsutil::options().append(true).open(&path).unwrap();
            f.write_all(tail).unwrap();
            let log = Log::open(&dir, 1 << 20, Fsync::Never).unwrap();
            assert_eq!(log.next_seq(), 2);
            assert_eq!(log.truncated_bytes, tail.len() as u64);
            assert_eq!(log.shared.corrupt_records(), 0);
        }
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
            fsutil::options().write(true).open(&path).unwrap().set_len(keep).unwrap();
            let log = Log::open(dir.path(), 1 << 20, Fsync::Never).unwrap();
            let got = log.read(0, 10_000).unwrap().records;
            prop_assert_eq!(got.len() as u64, log.next_seq());
            for (i, (seq, p)) in got.iter().enumerate() {
                prop_assert_eq!(*seq, i as u64);
                prop_assert_eq!(p, &payloads(i as u32..i as u32 + 1)[0]);
            }
        }
    }
}
