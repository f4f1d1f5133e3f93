//! The dedupe journal's fault model: a state-machine property test of the memory backend
//! with its journal ([`super::memory::MemoryDedupe::with_journal`], [`super::journal`])
//! against a plain model, under random sequences of signed events (new ids dated anywhere in
//! the accept window, resends of earlier ones), failed deliveries, a full disk (the next
//! writes refused after a short write), room again, failing fsyncs, the clock moving on (so
//! that files rotate and are pruned; also straight to the last milliseconds of an event's
//! window), restarts, crashes (a torn record at the end of the newest file) and flipped bits
//! in journal files at rest. Every config is a valid one
//! (`max_event_age <= ttl`, checked by [`crate::config::Config::parse`]), TTLs of whole and
//! of fractional seconds, every durability policy. The clock is this thread's, pinned
//! ([`crate::time::test_clock`]), so rotation and pruning follow the model's time.
//!
//! An event is handled as the ingest core does: the window check of
//! [`crate::verify::Checker::after_signature`], `begin` at the second of `now`, then forward
//! (counted in the model) and `commit(key, now_ms, event_ms)`, or `release` when the sinks
//! failed.
//!
//! The promise checked: a signed event is forwarded at most once. The design allows exactly
//! two exceptions, and the model grants one more forward of an id per exception, no other:
//! - a record of the id was damaged at rest (the model flipped that record's bit, and knows
//!   the id from the record's key before the flip); damage costs that record only, and the
//!   count of damaged records at every open ([`super::Dedupe::journal_corrupt`], what the
//!   metric reports) must equal the damaged records the model knows are on disk;
//! - the process stopped while the id's mark was still only in memory because the disk had
//!   refused it (pending), and no journal write had succeeded since. The first write that
//!   succeeds stores every pending mark: from then on a restart does not forget them. Note
//!   that "the disk still full" is as the journal sees it: pending marks are written with
//!   the next mark recorded, so a stop after room came back but before the next delivered id
//!   forgets them too (the model says which of the two it was). A restart is a stop either
//!   way: the journal has no flush at exit (and vfgate leaves by `process::exit`). In the
//!   running gateway a background thread also writes them within [`super::journal::SYNC_EVERY`]
//!   of the disk having room; the model keeps that thread off so that every write is one of
//!   its steps, and the journal's unit tests cover the thread.
//!
//! Checked after every step: the journal's pending marks are exactly the model's; every
//! journal file is whole records (a failed write was cut back) apart from a torn tail a crash
//! left, and every whole record not damaged has a valid checksum and the key of a forwarded
//! id; after any new file (rotation, open) no other file is left whose marks all expired
//! (pruned, never kept forever), and none was pruned early (the restart probe below). At
//! every open: the damage count; an open in the same second as the newest file cuts it after
//! its last valid record; every id forwarded and not excused whose event time is still inside
//! the accept window is a duplicate (its record was written whole), and every id never
//! forwarded is new (no event is dropped as a false duplicate). At the end, with the clock
//! past every window: one empty journal file is left.
//!
//! Test code only (`cfg(test)`): beside `dedupe` it uses `verify`'s window check,
//! `config`'s parser, `time`'s pinned clock and `fsutil`'s fault seam, nothing above.

use super::journal::Durability;
use super::{Begin, Dedupe, DedupeKey};
use crate::fsutil::fault::{self, Kind, Rule};
use crate::verify::{Checker, RequestParts};
use futures::executor::block_on;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

/// A journal record: `[key 16][expires u32][crc32 u32]` (see [`super::journal`]).
const RECORD: usize = 24;
const T0_MS: i64 = 1_700_000_000_000;
const IDS: u8 = 8;
const IN_FLIGHT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Op {
    /// Event `e<id>` arrives: a new id dated `at` per mille of the way from `max_event_age`
    /// ago to `max_future_skew` ahead, or a resend with its own timestamp. `fails`: a sink
    /// fails it (released, not forwarded).
    Accept { id: u8, at: u16, fails: bool },
    /// The next `n` journal writes fail with ENOSPC, `short` bytes of each landing first.
    DiskFull { n: u8, short: u8 },
    /// Room again.
    Room,
    /// The next `n` fsyncs of the journal fail with EIO.
    SyncFails { n: u8 },
    /// The clock moves on by `per_mille` of the TTL and `ms`.
    Advance { per_mille: u16, ms: u16 },
    /// The clock moves on to `before_ms` before the end of `e<id>`'s accept window (where
    /// a mark that expires early shows), if that is ahead.
    WindowEnd { id: u8, before_ms: u16 },
    /// Stop and start again on the same dir.
    Restart,
    /// kill -9 mid-write: `torn` bytes (less than a record) at the end of the newest file,
    /// then a start.
    Crash { torn: u8 },
    /// One flipped bit (`bit` of 192) in a whole, undamaged record of a journal file.
    Flip { record: u16, bit: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..IDS, 0u16..=1000, proptest::bool::weighted(0.15))
            .prop_map(|(id, at, fails)| Op::Accept { id, at, fails }),
        2 => (1u8..4, 0u8..60).prop_map(|(n, short)| Op::DiskFull { n, short }),
        1 => Just(Op::Room),
        1 => (1u8..3).prop_map(|n| Op::SyncFails { n }),
        4 => (0u16..700, 0u16..2000).prop_map(|(per_mille, ms)| Op::Advance { per_mille, ms }),
        2 => (0..IDS, 0u16..1500).prop_map(|(id, before_ms)| Op::WindowEnd { id, before_ms }),
        2 => Just(Op::Restart),
        2 => (0u8..RECORD as u8).prop_map(|torn| Op::Crash { torn }),
        2 => (any::<u16>(), 0u8..(RECORD * 8) as u8).prop_map(|(record, bit)| Op::Flip { record, bit }),
    ]
}

/// A valid config: TTL (whole seconds or not), `max_event_age` per mille of it (at least
/// 1 ms), `max_future_skew` up to one and a half TTLs, a durability policy.
#[derive(Debug, Clone)]
struct Setup {
    ttl_ms: u64,
    age_per_mille: u64,
    skew_per_mille: u64,
    durability: u8,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        2u64..40,
        prop_oneof![Just(0u64), 1u64..1000],
        prop_oneof![Just(1000u64), 0u64..=1000],
        0u64..=1500,
        0u8..3,
    )
        .prop_map(|(s, ms, age_per_mille, skew_per_mille, durability)| Setup {
            ttl_ms: s * 1000 + ms,
            age_per_mille,
            skew_per_mille,
            durability,
        })
}

struct World {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    cfg: crate::config::Config,
    checker: Checker,
    durability: Durability,
    age_ms: i64,
    skew_ms: i64,
    dedupe: Option<Dedupe>,
    now_ms: i64,
    /// Each id's event timestamp (fixed: one signed event per id).
    events: BTreeMap<u8, i64>,
    keys: HashMap<[u64; 2], u8>,
    forwarded: BTreeMap<u8, usize>,
    /// One more forward allowed per entry, and why.
    excused: BTreeMap<u8, Vec<String>>,
    /// Ids whose marks the journal holds in memory (the disk refused them).
    pending: Vec<u8>,
    /// Journal writes the disk will still refuse.
    refused: u32,
    /// Damaged records on disk: file name and record index.
    damaged: HashSet<(String, usize)>,
    /// Files ending in a torn record.
    torn: HashSet<String>,
    /// The newest journal file, as last seen.
    newest: Option<String>,
}

fn marks_name(secs: u64) -> String {
    format!("marks-{secs}.log")
}

fn started(name: &str) -> Option<u64> {
    name.strip_prefix("marks-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

fn crc_holds(r: &[u8]) -> bool {
    crc32fast::hash(&r[..20]) == u32::from_le_bytes(r[20..24].try_into().unwrap())
}

fn decode(r: &[u8]) -> ([u64; 2], u32) {
    let w = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap());
    (
        [w(0), w(8)],
        u32::from_le_bytes(r[16..20].try_into().unwrap()),
    )
}

impl World {
    fn new(s: &Setup) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dedupe");
        let age_ms = (s.ttl_ms * s.age_per_mille / 1000).max(1);
        let skew_ms = s.ttl_ms * s.skew_per_mille / 1000;
        let toml = format!(
            "[dedupe]\nttl = \"{}ms\"\ndir = \"{}\"\n[[source]]\nname = \"s\"\npath = \"/e\"\nsecrets = [{{ value = \"0123456789abcdef0123\" }}]\nsinks = [\"f\"]\nmax_event_age = \"{age_ms}ms\"\nmax_future_skew = \"{skew_ms}ms\"\n[sink.f]\ntype = \"file\"\npath = \"/dev/null\"\n",
            s.ttl_ms,
            dir.display()
        );
        let cfg = crate::config::Config::parse(&toml, &crate::config::AnySinkType)
            .expect("a valid config");
        assert_eq!(cfg.dedupe.journal.as_deref(), Some(dir.as_path()));
        let checker = Checker::new(&cfg.sources[0]);
        let mut w = World {
            tmp,
            dir,
            checker,
            durability: [Durability::Always, Durability::Batch, Durability::Never]
                [s.durability as usize],
            age_ms: age_ms as i64,
            skew_ms: skew_ms as i64,
            cfg,
            dedupe: None,
            now_ms: T0_MS,
            events: BTreeMap::new(),
            keys: HashMap::new(),
            forwarded: BTreeMap::new(),
            excused: BTreeMap::new(),
            pending: Vec::new(),
            refused: 0,
            damaged: HashSet::new(),
            torn: HashSet::new(),
            newest: None,
        };
        crate::time::test_clock::pin(Some(T0_MS as u64));
        w.start();
        w
    }

    fn d(&self) -> &Dedupe {
        self.dedupe.as_ref().expect("running")
    }

    fn now_s(&self) -> u64 {
        (self.now_ms / 1000) as u64
    }

    /// The journal files: name, bytes.
    fn files(&self) -> Vec<(String, Vec<u8>)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new(); // before the first start
        };
        let mut v: Vec<(u64, String)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                Some((started(&name)?, name))
            })
            .collect();
        v.sort();
        v.into_iter()
            .map(|(_, n)| {
                let b = std::fs::read(self.dir.join(&n)).unwrap();
                (n, b)
            })
            .collect()
    }

    fn key(&mut self, id: u8) -> DedupeKey {
        let k = self.d().key("s", &format!("e{id}"));
        if let Some(old) = self.keys.insert(k.0, id) {
            assert_eq!(old, id, "two ids, one key");
        }
        k
    }

    fn inside_window(&self, ts: i64) -> bool {
        self.now_ms - ts <= self.age_ms && ts - self.now_ms <= self.skew_ms
    }

    /// Opens the backend and checks what it found.
    fn start(&mut self) {
        let before = self.files();
        let expected: usize = before
            .iter()
            .map(|(n, b)| {
                (0..b.len() / RECORD)
                    .filter(|i| self.damaged.contains(&(n.clone(), *i)))
                    .count()
            })
            .sum();
        // Every journal write is the model's own step: the background thread (which writes
        // held-back marks once there is room; its own unit test) stays off here.
        super::journal::NO_BACKGROUND_THREAD.with(|c| c.set(true));
        let d = Dedupe::new(&self.cfg.dedupe, IN_FLIGHT, self.durability).expect("it opens");
        assert_eq!(
            d.journal_corrupt(),
            expected as u64,
            "every damaged record on disk is counted, nothing else"
        );
        self.dedupe = Some(d);
        // The newest file, if of this very second, is the one written on: cut after its
        // last valid record (a torn tail, damaged records at its end).
        let same = marks_name(self.now_s());
        if let Some((_, b)) = before.iter().find(|(n, _)| *n == same) {
            let keep = (0..b.len() / RECORD)
                .rev()
                .find(|i| !self.damaged.contains(&(same.clone(), *i)))
                .map_or(0, |i| i + 1);
            let now = std::fs::metadata(self.dir.join(&same)).unwrap().len();
            assert_eq!(
                now,
                (keep * RECORD) as u64,
                "{same} cut after its last valid record"
            );
            self.torn.remove(&same);
            self.damaged.retain(|(n, i)| *n != same || *i < keep);
        }
        let after: HashMap<String, usize> = self
            .files()
            .into_iter()
            .map(|(n, b)| (n, b.len()))
            .collect();
        self.damaged
            .retain(|(n, i)| after.get(n).is_some_and(|len| (i + 1) * RECORD <= *len));
        self.torn.retain(|n| after.contains_key(n));
        self.check_prune();
        self.probe();
    }

    /// After a start: every id forwarded, not excused, still inside the window is a
    /// duplicate; every id never forwarded is new.
    fn probe(&mut self) {
        let now_s = self.now_s();
        for (id, ts) in self.events.clone() {
            if !self.inside_window(ts) {
                continue;
            }
            let n = self.forwarded.get(&id).copied().unwrap_or(0);
            let allowed = 1 + self.excused.get(&id).map_or(0, Vec::len);
            let key = self.key(id);
            let got = block_on(self.d().begin(key, now_s)).unwrap();
            if n == 0 {
                assert_eq!(
                    got,
                    Begin::New,
                    "e{id} was never forwarded: answered {got:?}"
                );
            } else if n == allowed {
                assert_eq!(
                    got,
                    Begin::Duplicate,
                    "e{id} (forwarded {n}x, excused {:?}) would be accepted again after a restart although its record was written whole; event time {} ms from now",
                    self.excused.get(&id),
                    ts - self.now_ms
                );
            }
            if got == Begin::New {
                block_on(self.d().release(key)).unwrap();
            }
        }
    }

    fn stop(&mut self) {
        self.dedupe = None;
        let why = if self.refused > 0 {
            "the process stopped while its mark was pending and the disk still full"
        } else {
            "the process stopped while its mark was pending (room again, but no journal write since)"
        };
        for id in self.pending.drain(..) {
            self.excused.entry(id).or_default().push(why.into());
        }
    }

    /// After a new journal file (rotation, a start): no other file whose every mark has
    /// expired is left. Damaged records are not read (their expiry is unknown).
    fn check_prune(&mut self) {
        let files = self.files();
        let now = self.now_s();
        let newest = files.last().map(|f| f.0.clone());
        for (n, b) in &files[..files.len().saturating_sub(1)] {
            let live = b.chunks_exact(RECORD).enumerate().any(|(i, r)| {
                self.damaged.contains(&(n.clone(), i))
                    || (crc_holds(r) && u64::from(decode(r).1) > now)
            });
            assert!(live, "{n}: every mark expired, yet not pruned at {now}");
        }
        self.newest = newest;
    }

    /// Whole records everywhere (apart from a torn tail), each valid and a forwarded id's,
    /// unless damaged; the journal's pending marks are the model's.
    fn check(&mut self) {
        let files = self.files();
        for (n, b) in &files {
            assert!(
                b.len() % RECORD == 0 || self.torn.contains(n),
                "{n}: {} bytes, not whole records",
                b.len()
            );
            for (i, r) in b.chunks_exact(RECORD).enumerate() {
                if self.damaged.contains(&(n.clone(), i)) {
                    continue;
                }
                assert!(crc_holds(r), "{n} record {i}: checksum does not hold");
                let id = self.keys.get(&decode(r).0);
                assert!(
                    id.is_some_and(|id| self.forwarded.get(id).is_some_and(|n| *n > 0)),
                    "{n} record {i}: not the mark of a forwarded id"
                );
            }
        }
        if files.last().map(|f| &f.0) != self.newest.as_ref() {
            self.check_prune();
        }
        let Dedupe::Memory(m) = self.d() else {
            unreachable!()
        };
        assert_eq!(
            m.journal_pending(),
            self.pending.len(),
            "marks pending in memory"
        );
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Accept { id, at, fails } => {
                let (age, skew) = (self.age_ms, self.skew_ms);
                let now = self.now_ms;
                let ts = *self
                    .events
                    .entry(*id)
                    .or_insert(now - age + (age + skew) * i64::from(*at) / 1000);
                let body = bytes::Bytes::from(format!(
                    "{{\"event_id\":\"e{id}\",\"timestamp\":\"{}\"}}",
                    crate::time::rfc3339_ms(ts)
                ));
                let parts = RequestParts {
                    signature: None,
                    version: Some(b"1"),
                    content_type: Some(b"application/json"),
                    headers: None,
                };
                let ok = self.checker.after_signature(parts, body, now).is_ok();
                assert_eq!(ok, self.inside_window(ts), "the accept window");
                if !ok {
                    return;
                }
                let key = self.key(*id);
                let got = block_on(self.d().begin(key, self.now_s())).unwrap();
                let n = self.forwarded.get(id).copied().unwrap_or(0);
                match got {
                    Begin::New if *fails => block_on(self.d().release(key)).unwrap(),
                    Begin::New => {
                        let n = n + 1;
                        self.forwarded.insert(*id, n);
                        let excused = self.excused.get(id).cloned().unwrap_or_default();
                        assert!(
                            n <= 1 + excused.len(),
                            "e{id} forwarded {n} times; excused: {excused:?}"
                        );
                        block_on(self.d().commit(key, now, ts)).unwrap();
                        // One journal write: refused (kept pending), or all pending written.
                        if self.refused > 0 {
                            self.refused -= 1;
                            self.pending.push(*id);
                        } else {
                            self.pending.clear();
                        }
                    }
                    Begin::Duplicate => {
                        assert!(n > 0, "e{id} never forwarded, answered duplicate");
                    }
                    other => panic!("e{id}: {other:?}"),
                }
            }
            Op::DiskFull { n, short } => {
                Rule {
                    times: u32::from(*n),
                    short: usize::from(*short),
                    ..Rule::new(&self.dir, fault::Op::Write, Kind::NoSpace)
                }
                .install();
                self.refused += u32::from(*n);
            }
            Op::Room => {
                fault::clear(&self.dir);
                self.refused = 0;
            }
            Op::SyncFails { n } => Rule {
                times: u32::from(*n),
                ..Rule::new(&self.dir, fault::Op::Sync, Kind::Io)
            }
            .install(),
            Op::Advance { per_mille, ms } => {
                let ttl = self.cfg.dedupe.ttl.as_millis() as i64;
                self.now_ms += ttl * i64::from(*per_mille) / 1000 + i64::from(*ms);
                crate::time::test_clock::pin(Some(self.now_ms as u64));
            }
            Op::WindowEnd { id, before_ms } => {
                if let Some(ts) = self.events.get(id) {
                    let at = ts + self.age_ms - i64::from(*before_ms);
                    if at > self.now_ms {
                        self.now_ms = at;
                        crate::time::test_clock::pin(Some(self.now_ms as u64));
                    }
                }
            }
            Op::Restart => {
                self.stop();
                self.start();
            }
            Op::Crash { torn } => {
                self.stop();
                if *torn > 0 {
                    if let Some((n, _)) = self.files().pop() {
                        let rec = [0x5au8; RECORD];
                        let mut f = crate::fsutil::append(&self.dir.join(&n)).unwrap();
                        std::io::Write::write_all(&mut f, &rec[..usize::from(*torn)]).unwrap();
                        self.torn.insert(n);
                    }
                }
                self.start();
            }
            Op::Flip { record, bit } => {
                let whole: Vec<(String, usize)> = self
                    .files()
                    .into_iter()
                    .flat_map(|(n, b)| (0..b.len() / RECORD).map(move |i| (n.clone(), i)))
                    .filter(|r| !self.damaged.contains(r))
                    .collect();
                if whole.is_empty() {
                    return;
                }
                let (n, i) = whole[usize::from(*record) % whole.len()].clone();
                let path = self.dir.join(&n);
                let mut b = std::fs::read(&path).unwrap();
                let r = &b[i * RECORD..(i + 1) * RECORD];
                assert!(crc_holds(r), "{n} record {i} valid before the flip");
                let id = self.keys[&decode(r).0];
                b[i * RECORD + usize::from(*bit) / 8] ^= 1 << (bit % 8);
                std::fs::write(&path, &b).unwrap();
                self.damaged.insert((n.clone(), i));
                self.excused
                    .entry(id)
                    .or_default()
                    .push(format!("its record {i} in {n} was damaged at rest"));
            }
        }
    }

    /// The clock past every window and mark, room, a restart: one empty file is left.
    fn finish(&mut self) {
        let ttl = self.cfg.dedupe.ttl.as_millis() as i64;
        self.now_ms += ttl + self.skew_ms + 2000;
        crate::time::test_clock::pin(Some(self.now_ms as u64));
        fault::clear(&self.dir);
        self.refused = 0;
        self.stop();
        self.start();
        let files = self.files();
        assert!(
            files.len() == 1 && files[0].1.is_empty(),
            "left after every mark expired: {:?}",
            files.iter().map(|f| (&f.0, f.1.len())).collect::<Vec<_>>()
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.dedupe = None;
        fault::clear(self.tmp.path());
        crate::time::test_clock::pin(None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn a_signed_event_is_forwarded_at_most_once_through_disk_faults_and_restarts(
        s in setup(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let mut w = World::new(&s);
        for op in &ops {
            w.apply(op);
            w.check();
        }
        w.finish();
    }
}
