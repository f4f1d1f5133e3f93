//! The spool's fault model: a state-machine property test of the log, the cursors, their
//! lifecycle ([`super::attach`], [`super::reclaim_passed`]) and the dedupe journal against a
//! plain in-memory model, under random sequences of appends, deliveries, SIEM failures,
//! restarts, crashes (a torn in-flight append, cursor files set back or cut short), bit flips
//! in sealed segments and in the last record of the log (delivered or not), missing and
//! extra cursor files, sinks added and removed, and a full disk: an append whose write
//! (after a short write) or fsync fails with ENOSPC, followed by [`Log::recover`], as the
//! spool's writer thread does; that group is not acknowledged (the sender hears 503 and
//! retries).
//!
//! Invariants checked after every step:
//! 1. every acknowledged event that was not damaged is delivered or pending (readable from
//!    the sink's cursor on) for every sink that existed when it was acknowledged;
//! 2. a sink only ever receives events that were appended;
//! 3. per sink, the first deliveries of each org's events come in append order;
//! 4. every damaged range is counted and quarantined;
//! 5. every acknowledged event's dedupe mark survives restarts and crashes;
//! 6. after everything is delivered, each source keeps at most one segment;
//! 7. a sequence number is never given to two acknowledged events, nor to an event of a
//!    failed group that reached the disk whole;
//! 8. after a failed append and its recovery, the records of that group that reached the
//!    disk whole (exactly those: a prefix of the group, as the model computes from the bytes
//!    that landed) are kept and may be delivered (at least once), in order with the rest;
//!    the next append goes on after them.
//!
//! Test code only (`cfg(test)`): beside the spool it uses `dedupe::journal` and `fsutil`'s
//! fault seam, nothing above the spool.

use super::log::{self, Fsync, Log, Stored};
use super::{attach, reclaim_passed, OpenError};
use crate::dedupe::journal::{self, Durability};
use crate::fsutil::fault::{self, Kind, Rule};
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

const SEGMENT: u64 = 300;
const SINKS: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Debug, Clone)]
enum Op {
    /// One group of `n` events of `org`, acknowledged once the append returns.
    Append { org: u8, n: u8 },
    /// Sink `sink` takes up to `max` events and its cursor moves.
    Deliver { sink: u8, max: u8 },
    /// Sink `sink`'s SIEM fails the batch: nothing moves.
    SiemDown { sink: u8 },
    /// Stop and start again.
    Restart,
    /// kill -9 mid-append (`torn` bytes of an unacknowledged record at the end), each cursor
    /// file either back at its last durable value or cut to a prefix (`cut`).
    Crash { torn: u8, cut: Vec<u8> },
    /// A group of `n` events of `org` whose append fails with ENOSPC: its first write after
    /// `short` bytes landed, or (`on_sync`) its first fsync; then recovery. Not acknowledged.
    DiskFull {
        org: u8,
        n: u8,
        short: u16,
        on_sync: bool,
    },
    /// One flipped byte in a sealed segment.
    Flip { segment: u8, at: u16 },
    /// One flipped byte in the last record of the log (past its length field), at rest, then
    /// a restart: whether a sink already took that record or not.
    DamageLast { at: u16 },
    /// A cursor file vanishes (then a restart).
    LoseCursor { sink: u8 },
    /// A cursor file of a sink the config does not name appears (then a restart).
    ExtraCursor { at: u8 },
    /// The config gains a sink (then a restart).
    AddSink { sink: u8 },
    /// The config loses a sink (then a restart).
    RemoveSink { sink: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, 1u8..5).prop_map(|(org, n)| Op::Append { org, n }),
        6 => (0u8..4, 1u8..8).prop_map(|(sink, max)| Op::Deliver { sink, max }),
        1 => (0u8..4).prop_map(|sink| Op::SiemDown { sink }),
        2 => (0u8..3, 1u8..5, 0u16..250, proptest::bool::weighted(0.3))
            .prop_map(|(org, n, short, on_sync)| Op::DiskFull { org, n, short, on_sync }),
        1 => Just(Op::Restart),
        2 => (0u8..40, proptest::collection::vec(any::<u8>(), 4))
            .prop_map(|(torn, cut)| Op::Crash { torn, cut }),
        1 => (any::<u8>(), any::<u16>()).prop_map(|(segment, at)| Op::Flip { segment, at }),
        1 => any::<u16>().prop_map(|at| Op::DamageLast { at }),
        1 => (0u8..4).prop_map(|sink| Op::LoseCursor { sink }),
        1 => any::<u8>().prop_map(|at| Op::ExtraCursor { at }),
        1 => (0u8..4).prop_map(|sink| Op::AddSink { sink }),
        1 => (0u8..4).prop_map(|sink| Op::RemoveSink { sink }),
    ]
}

struct Acked {
    seq: u64,
    id: String,
    org: u8,
    /// Sinks configured when it was acknowledged.
    sinks: Vec<String>,
    key: [u64; 2],
}

struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    dedupe_dir: PathBuf,
    log: Option<Log>,
    journal: Option<journal::Journal>,
    sinks: Vec<String>,
    /// Next sequence number per configured sink (as attach returned and deliveries moved).
    cursors: BTreeMap<String, log::Cursor>,
    /// The last value of each cursor file known to be durable.
    durable: HashMap<String, Option<String>>,
    acked: Vec<Acked>,
    /// Events of failed groups that reached the disk whole (never acknowledged).
    unacked: Vec<Acked>,
    delivered: HashMap<String, Vec<u64>>,
    damaged: HashSet<u64>,
    counter: u64,
}

fn payload(id: &str, org: u8) -> Bytes {
    Bytes::from(format!("{{\"event_id\":\"{id}\",\"org\":{org}}}"))
}

fn parse(p: &[u8]) -> (String, u8) {
    let v: serde_json::Value = serde_json::from_slice(p).expect("payloads are JSON");
    (
        v["event_id"].as_str().unwrap().to_string(),
        v["org"].as_u64().unwrap() as u8,
    )
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool").join("src");
        let dedupe_dir = tmp.path().join("dedupe");
        let mut w = World {
            _tmp: tmp,
            dir,
            dedupe_dir,
            log: None,
            journal: None,
            sinks: vec!["a".into(), "b".into()],
            cursors: BTreeMap::new(),
            durable: HashMap::new(),
            acked: Vec::new(),
            unacked: Vec::new(),
            delivered: HashMap::new(),
            damaged: HashSet::new(),
            counter: 0,
        };
        w.start().expect("a fresh spool opens");
        w
    }

    fn log(&self) -> &Log {
        self.log.as_ref().expect("running")
    }

    fn cursor_file(&self, sink: &str) -> PathBuf {
        log::cursor_dir(&self.dir).join(sink)
    }

    /// Opens the log, attaches the configured sinks, opens the journal and checks that
    /// every acknowledged mark is back.
    fn start(&mut self) -> Result<(), OpenError> {
        let log = Log::open(&self.dir, SEGMENT, Fsync::Always)?;
        let shared = log.shared();
        let before: Vec<Stored> = self
            .sinks
            .iter()
            .map(|s| log::Cursor::load(&self.dir, s).unwrap())
            .collect();
        let starts = attach("src", &shared, &self.sinks, true)?;
        self.cursors = self
            .sinks
            .iter()
            .zip(starts)
            .map(|(s, n)| (s.clone(), log::Cursor::handle(&self.dir, s, n)))
            .collect();
        for (s, b) in self.sinks.iter().zip(before) {
            // attach wrote (and fsynced) every cursor it created.
            if !matches!(b, Stored::At(_)) {
                self.durable
                    .insert(s.clone(), std::fs::read_to_string(self.cursor_file(s)).ok());
            }
        }
        // As Spool::open does: segments every cursor passed are reclaimed at start.
        self.reclaim_passed_cursors(&shared);
        self.log = Some(log);
        let (j, loaded) = journal::open(
            &self.dedupe_dir,
            Duration::from_secs(3600),
            Durability::Always,
        )
        .expect("journal opens");
        let marks: HashSet<[u64; 2]> = loaded.marks.iter().map(|m| m.0).collect();
        for a in &self.acked {
            assert!(marks.contains(&a.key), "dedupe mark of {} lost", a.id);
        }
        self.journal = Some(j);
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(l) = self.log.take() {
            self.note_corruptions(&l);
        }
        self.journal = None;
    }

    fn note_corruptions(&mut self, l: &Log) {
        let cs = l.shared().corruptions();
        let counted = l.shared().corrupt_records();
        let lost: u64 = cs
            .iter()
            .map(|c| c.resume_seq.saturating_sub(c.lost_from).max(1))
            .sum();
        assert_eq!(counted, lost, "every damaged range is counted");
        for c in &cs {
            // A range with bytes is copied; numbers a cursor passed whose bytes are gone
            // (a stray cursor past the end) have nothing to copy.
            if c.end > c.start {
                let q = c.quarantined.as_ref().expect("quarantined");
                assert_eq!(
                    std::fs::metadata(q).unwrap().len(),
                    c.end - c.start,
                    "the damaged bytes are in the quarantine"
                );
            }
            self.damaged.extend(c.lost_from..c.resume_seq);
        }
    }

    /// Restarts, rolling the config back if the spool refuses it (an orphaned backlog).
    fn restart_with(&mut self, sinks: Vec<String>) {
        self.stop();
        let old = std::mem::replace(&mut self.sinks, sinks);
        match self.start() {
            Ok(()) => {}
            Err(OpenError::Orphaned { sink, backlog, .. }) => {
                assert!(!self.sinks.contains(&sink) && backlog > 0);
                // The operator puts the sink back (what the error says to do).
                self.stop();
                let mut back = self.sinks.clone();
                if old.contains(&sink) && !back.contains(&sink) {
                    back.push(sink.clone());
                } else {
                    // An extra cursor file the config never named: the operator deletes it.
                    std::fs::remove_file(self.cursor_file(&sink)).unwrap();
                }
                self.sinks = back;
                self.start()
                    .expect("the config with the sink put back opens");
            }
            Err(e) => panic!("restart failed: {e}"),
        }
    }

    /// The next `n` events of `org`: their payloads and ids.
    fn next_events(&mut self, org: u8, n: u8) -> (Vec<Bytes>, Vec<String>) {
        (0..n)
            .map(|_| {
                self.counter += 1;
                let id = format!("e{}", self.counter);
                (payload(&id, org), id)
            })
            .unzip()
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append { org, n } => {
                let (ps, ids) = self.next_events(*org, *n);
                let first = self.log.as_mut().unwrap().append(&ps).unwrap();
                assert!(
                    self.appended().all(|a| a.seq < first),
                    "sequence number {first} given out again"
                );
                for (i, id) in ids.into_iter().enumerate() {
                    let key = [self.counter, i as u64 + first];
                    self.journal.as_ref().unwrap().record(key, u32::MAX);
                    self.acked.push(Acked {
                        seq: first + i as u64,
                        id,
                        org: *org,
                        sinks: self.sinks.clone(),
                        key,
                    });
                }
            }
            Op::Deliver { sink, max } => {
                let Some(name) = self
                    .sinks
                    .get(*sink as usize % self.sinks.len().max(1))
                    .cloned()
                else {
                    return;
                };
                let from = self.cursors[&name].next;
                let batch = self.log().read(from, *max as usize).unwrap();
                let got = self.delivered.entry(name.clone()).or_default();
                got.extend(batch.records.iter().map(|r| r.0));
                for (seq, p) in &batch.records {
                    let a = self.appended().find(|a| a.seq == *seq);
                    let a = a.unwrap_or_else(|| panic!("{name} got seq {seq}, never appended"));
                    assert_eq!(parse(p), (a.id.clone(), a.org), "the bytes appended");
                }
                if batch.next > from {
                    self.cursors
                        .get_mut(&name)
                        .unwrap()
                        .advance(batch.next)
                        .unwrap();
                }
                let shared = self.log().shared();
                self.reclaim_passed_cursors(&shared);
            }
            Op::SiemDown { sink } => {
                // The batch is read and refused: the cursor stays.
                if let Some(name) = self.sinks.get(*sink as usize % self.sinks.len().max(1)) {
                    let _ = self.log().read(self.cursors[name].next, 8).unwrap();
                }
            }
            Op::Restart => self.restart_with(self.sinks.clone()),
            Op::Crash { torn, cut } => {
                let active = self.active_segment();
                self.stop();
                if *torn > 0 {
                    // An append in flight, never acknowledged: part of a record.
                    let mut rec = vec![0u8; 16];
                    rec[0..4].copy_from_slice(&30u32.to_le_bytes());
                    rec.extend_from_slice(&[b'x'; 30]);
                    let mut f = crate::fsutil::append(&active).unwrap();
                    std::io::Write::write_all(&mut f, &rec[..(*torn as usize).min(rec.len())])
                        .unwrap();
                }
                for (i, s) in self.sinks.clone().iter().enumerate() {
                    let c = cut.get(i).copied().unwrap_or(0);
                    let path = self.cursor_file(s);
                    if c % 2 == 0 {
                        // The rename did not reach the disk: the last durable file.
                        match self.durable.get(s).cloned().flatten() {
                            Some(text) => std::fs::write(&path, text).unwrap(),
                            None => {
                                let _ = std::fs::remove_file(&path);
                            }
                        }
                    } else if let Ok(text) = std::fs::read_to_string(&path) {
                        // The rename did, its content only in part.
                        let keep = (c as usize / 2) % (text.len() + 1);
                        std::fs::write(&path, &text[..keep]).unwrap();
                    }
                }
                self.restart_with(self.sinks.clone());
            }
            Op::DiskFull {
                org,
                n,
                short,
                on_sync,
            } => {
                let (ps, ids) = self.next_events(*org, *n);
                let first = self.log().next_seq();
                let written = std::fs::metadata(self.active_segment()).unwrap().len();
                let sizes: Vec<u64> = ps.iter().map(|p| 16 + p.len() as u64).collect();
                let whole = landed(written, &sizes, *on_sync, u64::from(*short));
                let (op, short) = if *on_sync {
                    (fault::Op::Sync, 0)
                } else {
                    (fault::Op::Write, usize::from(*short))
                };
                Rule {
                    times: 1,
                    short,
                    ..Rule::new(&self.dir, op, Kind::NoSpace)
                }
                .install();
                // What the spool's writer thread does: append, and on failure recover.
                let log = self.log.as_mut().unwrap();
                assert!(log.append(&ps).is_err(), "the append fails");
                log.recover().expect("recovery after a failed append");
                fault::clear(&self.dir);
                assert_eq!(
                    log.next_seq(),
                    first + whole as u64,
                    "recovery keeps exactly the {whole} records that reached the disk whole"
                );
                let b = std::fs::read(self.active_segment()).unwrap();
                assert_eq!(
                    records_end(&b),
                    b.len(),
                    "the active segment cut back to whole records"
                );
                let kept = self.log().read(first, usize::MAX).unwrap().records;
                assert_eq!(kept.len(), whole, "readable: the records kept");
                for (i, (seq, p)) in kept.iter().enumerate() {
                    assert_eq!(*seq, first + i as u64);
                    assert_eq!(p, &ps[i], "the bytes appended");
                }
                assert!(
                    self.appended().all(|a| a.seq < first),
                    "sequence number {first} given out again"
                );
                for (i, id) in ids.into_iter().take(whole).enumerate() {
                    self.unacked.push(Acked {
                        seq: first + i as u64,
                        id,
                        org: *org,
                        sinks: self.sinks.clone(),
                        key: [0, 0],
                    });
                }
            }
            Op::Flip { segment, at } => {
                let segs = self.segments();
                if segs.len() < 2 {
                    return;
                }
                let path = &segs[*segment as usize % (segs.len() - 1)];
                let mut b = std::fs::read(path).unwrap();
                if b.is_empty() {
                    return;
                }
                let i = *at as usize % b.len();
                b[i] ^= 0x20;
                std::fs::write(path, &b).unwrap();
            }
            Op::DamageLast { at } => {
                let path = self.active_segment();
                let mut b = std::fs::read(&path).unwrap();
                // Walk the records by their length fields to the start of the last one.
                let (mut pos, mut last) = (0usize, None);
                while pos + 16 <= b.len() {
                    let len = u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
                    if pos + 16 + len > b.len() {
                        break;
                    }
                    last = Some((pos, 16 + len));
                    pos += 16 + len;
                }
                let Some((start, n)) = last else { return };
                self.stop();
                b[start + 4 + *at as usize % (n - 4)] ^= 0x20;
                std::fs::write(&path, &b).unwrap();
                self.restart_with(self.sinks.clone());
            }
            Op::LoseCursor { sink } => {
                if let Some(name) = self.sinks.get(*sink as usize % self.sinks.len().max(1)) {
                    let _ = std::fs::remove_file(self.cursor_file(name));
                    self.durable.insert(name.clone(), None);
                }
                self.restart_with(self.sinks.clone());
            }
            Op::ExtraCursor { at } => {
                let path = self.cursor_file("stray");
                let committed = self.log().shared().committed();
                let v = (*at as u64) % (committed + 2);
                std::fs::write(path, v.to_string()).unwrap();
                self.restart_with(self.sinks.clone());
            }
            Op::AddSink { sink } => {
                let name = SINKS[*sink as usize % SINKS.len()].to_string();
                if !self.sinks.contains(&name) {
                    let mut s = self.sinks.clone();
                    s.push(name);
                    self.restart_with(s);
                }
            }
            Op::RemoveSink { sink } => {
                if self.sinks.len() > 1 {
                    let mut s = self.sinks.clone();
                    s.remove(*sink as usize % s.len());
                    self.restart_with(s);
                }
            }
        }
    }

    /// Reclaims what every cursor passed, as the drainer does (the cursors it fsyncs first
    /// become the durable values a crash goes back to).
    fn reclaim_passed_cursors(&mut self, shared: &log::Shared) {
        let cursors: Vec<(String, u64)> = self
            .cursors
            .iter()
            .map(|(k, c)| (k.clone(), c.next))
            .collect();
        if shared.reclaimable(cursors.iter().map(|c| c.1).min().unwrap_or(0)) {
            for (k, _) in &cursors {
                self.durable.insert(
                    k.to_string(),
                    std::fs::read_to_string(self.cursor_file(k)).ok(),
                );
            }
        }
        let cursors: Vec<(&str, u64)> = cursors.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        reclaim_passed("src", shared, &cursors, true);
    }

    /// Every event whose record was written whole: acknowledged, or of a failed group.
    fn appended(&self) -> impl Iterator<Item = &Acked> {
        self.acked.iter().chain(&self.unacked)
    }

    fn segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        v.sort();
        v
    }

    fn active_segment(&self) -> PathBuf {
        self.segments().pop().unwrap()
    }

    /// Invariants 1-3 (4 and 5 are checked as ranges are found and at every start).
    fn check(&mut self) {
        let l = self.log.take().unwrap();
        let pending: Vec<HashSet<u64>> = self
            .sinks
            .iter()
            .map(|sink| {
                l.read(self.cursors[sink].next, usize::MAX)
                    .unwrap()
                    .records
                    .iter()
                    .map(|r| r.0)
                    .collect()
            })
            .collect();
        self.note_corruptions(&l);
        for (sink, pending) in self.sinks.iter().zip(&pending) {
            let from = self.cursors[sink].next;
            let delivered: HashSet<u64> = self
                .delivered
                .get(sink)
                .map(|d| d.iter().copied().collect())
                .unwrap_or_default();
            for a in &self.acked {
                if !a.sinks.contains(sink) || self.damaged.contains(&a.seq) {
                    continue;
                }
                assert!(
                    delivered.contains(&a.seq) || pending.contains(&a.seq),
                    "sink {sink}: acknowledged {} (seq {}) neither delivered nor pending (cursor {from})",
                    a.id,
                    a.seq
                );
            }
            // Per org, first deliveries in append order.
            let mut seen = HashSet::new();
            let mut last: HashMap<u8, u64> = HashMap::new();
            for seq in self.delivered.get(sink).into_iter().flatten() {
                if !seen.insert(*seq) {
                    continue;
                }
                let org = self.appended().find(|a| a.seq == *seq).unwrap().org;
                if let Some(prev) = last.insert(org, *seq) {
                    assert!(prev < *seq, "sink {sink}: org {org} out of order");
                }
            }
        }
        self.log = Some(l);
    }

    /// Delivers everything to every sink; then each source keeps at most one segment.
    fn drain_all(&mut self) {
        for i in 0..self.sinks.len() {
            for _ in 0..10_000 {
                let name = &self.sinks[i];
                if self.cursors[name].next >= self.log().shared().committed() {
                    break;
                }
                self.apply(&Op::Deliver {
                    sink: i as u8,
                    max: 50,
                });
            }
        }
        self.check();
        let n = self.segments().len();
        assert!(n <= 1, "{n} segments left after full delivery");
    }
}

/// Where the records of a segment end, walking their length fields.
fn records_end(b: &[u8]) -> usize {
    let mut pos = 0;
    while pos + 16 <= b.len() {
        let len = u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
        if pos + 16 + len > b.len() {
            break;
        }
        pos += 16 + len;
    }
    pos
}

/// How many records of a group (record sizes `sizes`) reach the disk whole when the first
/// write of its append fails after `short` bytes (or, `on_sync`, its first fsync), the active
/// segment holding `written` bytes. As [`Log::append`] writes: records are buffered; one that
/// would start at or past [`SEGMENT`] first rotates (the buffer written, then fsynced); the
/// rest is written and fsynced at the end.
fn landed(mut written: u64, sizes: &[u64], on_sync: bool, short: u64) -> usize {
    let mut whole = 0;
    let mut buffered: Vec<u64> = Vec::new();
    // One flush; true when it fails.
    let mut flush = |buffered: &mut Vec<u64>| {
        if !buffered.is_empty() {
            if !on_sync {
                let mut end = 0;
                whole += buffered
                    .iter()
                    .take_while(|r| {
                        end += **r;
                        end <= short
                    })
                    .count();
                return true;
            }
            whole += buffered.len();
            buffered.clear();
        }
        on_sync
    };
    for &r in sizes {
        if written >= SEGMENT {
            if flush(&mut buffered) {
                return whole;
            }
            written = 0;
        }
        buffered.push(r);
        written += r;
    }
    flush(&mut buffered);
    whole
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn spool_keeps_every_acknowledged_event(ops in proptest::collection::vec(op(), 1..40)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op);
            w.check();
        }
        w.drain_all();
        // Unused-cursor check: what attach found on disk matches what it returned.
        for s in &w.sinks {
            let stored = log::Cursor::load(&w.dir, s).unwrap();
            prop_assert!(matches!(stored, Stored::At(_)), "{s}: {stored:?}");
        }
    }
}
