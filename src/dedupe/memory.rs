//! In-memory dedupe: a sharded hash table of 128-bit keys.
//!
//! Each entry is a fixed 24 bytes (16-byte key hash, expiry in unix seconds, state), not the
//! id string. Keys are [`super::hash_key`] (seeded SHA-256 of `source \0 event_id`, 128 bits):
//! with 10 M ids the chance of any false duplicate is about 1e-25, and none can be crafted. An expired entry counts as absent in the same locked
//! call that would insert it. When a shard is full, expired entries are purged first, then the
//! oldest eighth of delivered entries is evicted (counted).
//!
//! Owns: the table, its bound and its eviction; persistence is `journal.rs`'s. Uses nothing
//! of the crate outside `dedupe`.

use super::{Begin, DedupeKey};
use parking_lot::Mutex;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SHARDS: usize = 64;

#[derive(Clone, Copy)]
struct Entry {
    expires: u32,
    delivered: bool,
}

/// The key is already a uniform hash: use its first word as the table hash.
#[derive(Clone, Copy, Default)]
struct PassThrough;
struct PassThroughHasher(u64);
impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;
    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}
impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for the [u64; 2] key's length prefix and words; keep the first word.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(5) ^ n;
    }
    fn write_usize(&mut self, _n: usize) {}
}

type Table = std::collections::HashMap<[u64; 2], Entry, PassThrough>;

/// The in-memory backend.
pub struct MemoryDedupe {
    shards: Box<[Mutex<Table>]>,
    seed: u64,
    ttl: u32,
    in_flight_ttl: u32,
    /// `dedupe.max_entries`: `count` never passes it (reserved before every insert).
    max_entries: u64,
    count: AtomicU64,
    /// `dedupe.on_full = "reject"`: at the bound, a new id is refused instead of evicting
    /// one inside its TTL.
    reject_when_full: bool,
    evictions: AtomicU64,
    journal: Option<super::journal::Journal>,
    /// Damaged journal records found when it was loaded.
    journal_corrupt: u64,
}

fn secs(d: Duration) -> u32 {
    d.as_secs().clamp(1, u32::MAX as u64) as u32
}

/// The delivered-mark lifetime in whole seconds, a fraction counting as one more: the config
/// compares `max_event_age <= ttl` to the millisecond, so a mark cut to fewer seconds would
/// expire while its event is still inside the accept window.
fn ttl_secs(d: Duration) -> u32 {
    let up = u64::from(d.subsec_nanos() > 0);
    d.as_secs().saturating_add(up).clamp(1, u32::MAX as u64) as u32
}

impl MemoryDedupe {
    /// A table remembering delivered ids for `ttl`, in-flight ones for `in_flight_ttl`, at
    /// most `max_entries` in all (exactly: the count is reserved before each insert). At the
    /// bound, expired ids go first, then the oldest delivered ones (counted as evictions).
    pub fn new(ttl: Duration, in_flight_ttl: Duration, max_entries: u64) -> MemoryDedupe {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("OS random source");
        MemoryDedupe {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Table::with_hasher(PassThrough)))
                .collect(),
            seed: u64::from_le_bytes(seed),
            ttl: ttl_secs(ttl),
            in_flight_ttl: secs(in_flight_ttl),
            max_entries: max_entries.max(1),
            count: AtomicU64::new(0),
            reject_when_full: false,
            evictions: AtomicU64::new(0),
            journal: None,
            journal_corrupt: 0,
        }
    }

    /// At the bound, refuse new ids ([`Begin::Full`]) instead of evicting delivered ones.
    pub fn reject_when_full(mut self, reject: bool) -> MemoryDedupe {
        self.reject_when_full = reject;
        self
    }

    /// Takes one place under `max_entries`, if there is one.
    fn reserve(&self) -> bool {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.max_entries {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn forget_n(&self, n: usize) {
        if n > 0 {
            self.count.fetch_sub(n as u64, Ordering::AcqRel);
        }
    }

    /// Like [`MemoryDedupe::new`], persisting delivered ids in `dir` (see
    /// [`super::journal`]) and loading the live ones found there.
    pub fn with_journal(
        ttl: Duration,
        in_flight_ttl: Duration,
        max_entries: u64,
        dir: &std::path::Path,
        durability: super::journal::Durability,
    ) -> Result<MemoryDedupe, super::journal::JournalError> {
        let (journal, loaded) = super::journal::open(dir, ttl, durability)?;
        let mut m = MemoryDedupe::new(ttl, in_flight_ttl, max_entries);
        m.seed = loaded.seed;
        m.journal_corrupt = loaded.corrupt;
        let mut marks = loaded.marks;
        // The newest marks first, should the bound be smaller than what was saved.
        marks.sort_by_key(|m| std::cmp::Reverse(m.1));
        for (k, expires) in marks {
            self::insert_loaded(&m, k, expires);
        }
        m.journal = Some(journal);
        Ok(m)
    }

    /// Marks the journal holds in memory because the disk refused them (for the model).
    #[cfg(test)]
    pub(crate) fn journal_pending(&self) -> usize {
        self.journal.as_ref().map_or(0, |j| j.pending())
    }

    /// Damaged journal records found at start-up.
    pub fn journal_corrupt(&self) -> u64 {
        self.journal_corrupt
    }

    /// The key of `(source, event_id)`.
    pub fn key(&self, source: &str, event_id: &str) -> DedupeKey {
        super::hash_key(Some(self.seed), source, event_id)
    }

    fn shard(&self, key: &DedupeKey) -> &Mutex<Table> {
        &self.shards[(key.0[1] as usize) % SHARDS]
    }

    /// Marks `key` in flight unless it is live; see [`Begin`].
    pub fn begin(&self, key: DedupeKey, now: u64) -> Begin {
        let now32 = now.min(u32::MAX as u64) as u32;
        let mut t = self.shard(&key).lock();
        let fresh = Entry {
            expires: now32.saturating_add(self.in_flight_ttl),
            delivered: false,
        };
        // One probe in the common case: look up and insert in the same step.
        match t.entry(key.0) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if let Some(live) = live(o.get(), now32) {
                    return live;
                }
                *o.get_mut() = fresh;
                return Begin::New;
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                if self.reserve() {
                    v.insert(fresh);
                    return Begin::New;
                }
            }
        }
        // At the bound.
        if !self.make_room(&mut t, now32, self.reject_when_full) {
            return Begin::Full;
        }
        t.insert(key.0, fresh);
        Begin::New
    }

    /// Marks `key` delivered until `from + ttl` (unix seconds; see
    /// [`super::mark_from_s`]).
    pub fn commit(&self, key: DedupeKey, from: u64) {
        let from32 = from.min(u32::MAX as u64) as u32;
        let mut t = self.shard(&key).lock();
        let e = Entry {
            expires: from32.saturating_add(self.ttl),
            delivered: true,
        };
        if let Some(old) = t.get_mut(&key.0) {
            *old = e;
        } else if self.reserve() || self.make_room(&mut t, from32.saturating_sub(self.ttl), false) {
            t.insert(key.0, e);
        } else {
            // Delivered, and nothing could be evicted (every id in flight): remember it
            // anyway, one over the bound for as long as the in-flight ones last.
            self.count.fetch_add(1, Ordering::AcqRel);
            t.insert(key.0, e);
        }
        drop(t);
        if let Some(j) = &self.journal {
            j.record(key.0, e.expires);
        }
    }

    /// Extends an in-flight `key` to `now` + the in-flight lifetime (a delivered mark
    /// stays as it is).
    pub fn renew(&self, key: DedupeKey, now: u64) {
        let now32 = now.min(u32::MAX as u64) as u32;
        let mut t = self.shard(&key).lock();
        if let Some(e) = t.get_mut(&key.0).filter(|e| !e.delivered) {
            e.expires = e.expires.max(now32.saturating_add(self.in_flight_ttl));
        }
    }

    /// The in-flight lifetime.
    pub fn in_flight_ttl(&self) -> Duration {
        Duration::from_secs(self.in_flight_ttl.into())
    }

    /// Forgets `key` if it is in flight (a delivered mark stays).
    pub fn release(&self, key: DedupeKey) {
        let mut t = self.shard(&key).lock();
        if t.get(&key.0).is_some_and(|e| !e.delivered) {
            t.remove(&key.0);
            self.forget_n(1);
        }
    }

    /// Finds one place under the bound for an insert into `t` (the caller's locked shard):
    /// expired ids of `t` are purged; then, unless `reject`, the oldest eighth of `t`'s
    /// delivered ids is evicted, or, if `t` has none, of the first other shard that has
    /// some. `false`: no place (reject, or nothing evictable).
    fn make_room(&self, t: &mut Table, now: u32, reject: bool) -> bool {
        let before = t.len();
        t.retain(|_, e| e.expires > now);
        self.forget_n(before - t.len());
        if self.reserve() {
            return true;
        }
        // Expired ids elsewhere (other shards, without waiting on their locks) make room
        // before anything live is evicted or refused.
        for sh in self.shards.iter() {
            if let Some(mut other) = sh.try_lock() {
                let before = other.len();
                other.retain(|_, e| e.expires > now);
                self.forget_n(before - other.len());
            }
        }
        if self.reserve() {
            return true;
        }
        if reject {
            return false;
        }
        if self.evict_oldest(t) == 0 {
            // Other shards, without waiting on one another's locks (no lock order to break).
            for s in self.shards.iter() {
                if let Some(mut other) = s.try_lock() {
                    if self.evict_oldest(&mut other) > 0 {
                        break;
                    }
                }
            }
        }
        self.reserve()
    }

    /// Evicts the oldest eighth (at least one) of `t`'s delivered ids; returns how many.
    fn evict_oldest(&self, t: &mut Table) -> usize {
        let mut exp: Vec<u32> = t
            .values()
            .filter(|e| e.delivered)
            .map(|e| e.expires)
            .collect();
        if exp.is_empty() {
            return 0;
        }
        let n = (exp.len() / 8).max(1);
        let (_, cut, _) = exp.select_nth_unstable(n - 1);
        let cut = *cut;
        // Exactly n go: everything expiring before the cut, then as many expiring at it as
        // are needed (many ids share one expiry second).
        let mut at_cut = n - exp.iter().filter(|&&x| x < cut).count();
        let before = t.len();
        t.retain(|_, e| {
            if !e.delivered || e.expires > cut {
                true
            } else if e.expires < cut {
                false
            } else if at_cut > 0 {
                at_cut -= 1;
                false
            } else {
                true
            }
        });
        let gone = before - t.len();
        self.forget_n(gone);
        self.evictions.fetch_add(gone as u64, Ordering::Relaxed);
        gone
    }

    /// Ids currently remembered (live or not yet purged).
    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Evictions so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

/// What `begin` answers for an entry that has not expired.
fn live(e: &Entry, now: u32) -> Option<Begin> {
    (e.expires > now).then_some(if e.delivered {
        Begin::Duplicate
    } else {
        Begin::InFlight
    })
}

fn insert_loaded(m: &MemoryDedupe, key: [u64; 2], expires: u32) {
    let mut t = m.shard(&DedupeKey(key)).lock();
    if !t.contains_key(&key) && m.reserve() {
        t.insert(
            key,
            Entry {
                expires,
                delivered: true,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: u64) -> MemoryDedupe {
        MemoryDedupe::new(Duration::from_secs(100), Duration::from_secs(10), max)
    }

    #[test]
    fn lifecycle() {
        let d = table(1000);
        let k = d.key("src", "evt_1");
        assert_eq!(d.begin(k, 0), Begin::New);
        assert_eq!(d.begin(k, 1), Begin::InFlight);
        d.release(k);
        assert_eq!(d.begin(k, 2), Begin::New, "released id goes through again");
        d.commit(k, 2);
        assert_eq!(d.begin(k, 50), Begin::Duplicate);
        d.release(k);
        assert_eq!(
            d.begin(k, 101),
            Begin::Duplicate,
            "release keeps a delivered mark"
        );
        assert_eq!(
            d.begin(k, 102),
            Begin::New,
            "expired delivered mark counts as absent"
        );
    }

    #[test]
    fn a_ttl_with_a_fraction_of_a_second_covers_the_whole_accept_window() {
        // ttl = max_event_age = 1.5 s (a valid config); an event dated now, at .900 s.
        let d = MemoryDedupe::new(Duration::from_millis(1500), Duration::from_secs(10), 100);
        let k = d.key("s", "e1");
        let ts: i64 = 1_700_000_000_900;
        assert_eq!(d.begin(k, (ts / 1000) as u64), Begin::New);
        d.commit(k, super::super::mark_from_s(ts, ts));
        // A resend 1.5 s later is still inside max_event_age.
        let resend = ts + 1500;
        assert_eq!(
            d.begin(k, (resend / 1000) as u64),
            Begin::Duplicate,
            "the mark must outlive the window"
        );
    }

    #[test]
    fn in_flight_mark_expires() {
        let d = table(1000);
        let k = d.key("src", "evt_1");
        assert_eq!(d.begin(k, 0), Begin::New);
        assert_eq!(d.begin(k, 9), Begin::InFlight);
        assert_eq!(d.begin(k, 10), Begin::New);
    }

    #[test]
    fn key_depends_on_source_and_id() {
        let d = table(10);
        assert_ne!(d.key("a", "bc"), d.key("ab", "c"));
        assert_ne!(d.key("a", "x"), d.key("b", "x"));
        assert_eq!(d.key("a", "x"), d.key("a", "x"));
    }

    #[test]
    fn eviction_takes_an_eighth_even_when_every_id_expires_in_the_same_second() {
        let d = table(64 * 100);
        for i in 0..=64 * 100u64 {
            let k = d.key("s", &format!("same-{i}"));
            assert_eq!(d.begin(k, 5), Begin::New);
            d.commit(k, 5);
        }
        let left = d.len();
        assert!(left <= 64 * 100, "{left}");
        assert!(
            left >= 64 * 100 - 100,
            "{left}: an eviction drops an eighth of one shard, not the whole shard"
        );
        assert_eq!(d.evictions(), 64 * 100 + 1 - left);
    }

    #[test]
    fn bounded_exactly_by_max_entries_and_evictions_counted() {
        let d = table(100);
        for i in 0..10_000u64 {
            let k = d.key("s", &format!("e{i}"));
            assert_eq!(d.begin(k, i / 100), Begin::New);
            d.commit(k, i / 100);
            assert!(d.len() <= 100, "{} ids held at {i}", d.len());
        }
        let held: usize = d.shards.iter().map(|s| s.lock().len()).sum();
        assert_eq!(held as u64, d.len(), "the count is the tables' size");
        assert_eq!(d.len() + d.evictions(), 10_000);
        // The newest ids are still known.
        let k = d.key("s", "e9999");
        assert_eq!(d.begin(k, 99), Begin::Duplicate);
    }

    #[test]
    fn on_full_reject_refuses_new_ids_instead_of_forgetting_live_ones() {
        let d = table(100).reject_when_full(true);
        for i in 0..100u64 {
            let k = d.key("s", &format!("e{i}"));
            assert_eq!(d.begin(k, 1), Begin::New);
            d.commit(k, 1);
        }
        let k = d.key("s", "one-more");
        assert_eq!(d.begin(k, 2), Begin::Full);
        assert_eq!(d.evictions(), 0);
        for i in 0..100u64 {
            assert_eq!(d.begin(d.key("s", &format!("e{i}")), 2), Begin::Duplicate);
        }
        // Once the marks expire there is room again.
        assert_eq!(d.begin(k, 1 + 100 + 1), Begin::New);
    }
}
