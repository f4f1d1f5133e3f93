//! The failed-deliveries store: one JSON file per event in a directory, written atomically
//! (temp file, fsync, rename, fsync of the directory), so a crash never leaves half an
//! entry. Owns: the directory's entry files and their claims. Uses only `fsutil` and
//! `time`; knows nothing of sinks, the spool or HTTP (its callers deliver and record the
//! attempts).
//!
//! An entry keeps the exact event bytes, the target URL, the webhook version, the names (not
//! the values) of the custom headers, the secret's reference (`env NAME` or `file PATH`, never
//! the secret), every attempt's time and status or error, and, for dead letters of a sink, the
//! sink and reason. The same format serves `vfgate send`, `vfgate failed ...` and the admin API.
//!
//! # Replays claim their entry
//!
//! A replay (the admin API's `POST /admin/failed/{id}/replay`, `vfgate failed replay`) first
//! [claims](FailedStore::claim) the entry: it opens `<id>.json`, takes an exclusive advisory
//! lock (`flock`) on it and, holding the lock, renames it to `<id>.json.replaying`. Only one
//! process or request can win that, so one replay at a time per entry; any other gets
//! [`StoreError::InProgress`] (the admin API's 409 `replay_in_progress`), or
//! [`StoreError::NotFound`] once the entry is gone. The winner then
//! [delivers](Claim::delivered) it (the claimed file is deleted: nothing can write it back),
//! or [keeps](Claim::keep) it with the attempt added (written to a new locked file that
//! replaces the claimed one and is renamed back to `<id>.json`), or
//! [releases](Claim::release) it untouched. A claim dropped unfinished (a cancelled request)
//! is released too.
//!
//! A claim left by a crash is not lost: the lock dies with the process, so the file sits
//! unlocked. Liveness is the lock, not a clock, so a slow replay is never taken for a dead
//! one. A later claim of that id takes the orphaned claim over (verifying the lock is free),
//! and every listing (`vfgate failed list`, `failed replay --all`, `failed purge`,
//! `GET /admin/failed`) renames orphaned claims back to `<id>.json` first, so they show
//! again. A claim whose lock is held is a replay in progress and is not listed.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// What a claimed entry's file name ends with (`<id>.json.replaying`).
const CLAIM_SUFFIX: &str = ".json.replaying";

/// One attempt of a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttemptLog {
    /// RFC 3339 time the attempt started.
    pub at: String,
    /// HTTP status, when there was an answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Error, when there was no answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One failed delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailedEntry {
    /// Entry id (sortable by creation time).
    pub id: String,
    /// Target URL; for a dead letter of a spooled sink, the sink's type and destination
    /// (`webhook https://gw.example/v1/events`, `file /var/log/vf.ndjson`; never a credential
    /// or a query string).
    pub target: String,
    /// `X-VF-Webhook-Version` sent (empty for a sink that sends none).
    pub version: String,
    /// Names of the custom headers that were sent (values are not stored: they may be secrets).
    #[serde(default)]
    pub header_names: Vec<String>,
    /// The signing secret's reference, e.g. `env VF_SECRET` (never the secret).
    pub secret_ref: String,
    /// `event_id` of the event, when it has one.
    #[serde(default)]
    pub event_id: String,
    /// `event_type` of the event, when it has one.
    #[serde(default)]
    pub event_type: String,
    /// The sink that gave up, for dead letters of `serve`: a replay delivers to that sink
    /// only, straight through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// The source the event came in through, for dead letters of `serve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Why it was given up.
    #[serde(default)]
    pub reason: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Every attempt, in order.
    pub attempts: Vec<AttemptLog>,
    /// The exact event bytes (events are JSON, so UTF-8).
    pub event: String,
    /// For an event of a source of another scheme than VF: the fields read through its field
    /// map that the bytes above do not carry (a replay rebuilds the event from them, with
    /// `event_id` and `event_type`). Absent for a VF event, whose bytes hold them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped: Option<MappedFields>,
    /// How a sender-mode entry was signed when not the VF scheme (`vfgate send --scheme`),
    /// as `sender::SendScheme` writes it, e.g. `standard-webhooks`; a replay signs the same way.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scheme: String,
}

/// The mapped fields of a dead letter besides `event_id` and `event_type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedFields {
    /// The event's time, unix milliseconds.
    pub timestamp_ms: i64,
    /// The organisation, when the field map has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A file that is not an entry.
    #[error("{path}: not a failed-delivery entry ({reason})")]
    Corrupt {
        /// Path.
        path: String,
        /// Why.
        reason: String,
    },
    /// No such id.
    #[error("no failed delivery with id {0}")]
    NotFound(String),
    /// Another replay holds the entry's claim.
    #[error("a replay of failed delivery {0} is in progress")]
    InProgress(String),
}

/// A file in the store that is not an entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Skipped {
    /// File name.
    pub file: String,
    /// Why it was skipped.
    pub reason: String,
}

/// What [`FailedStore::list_page`] found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Entries, oldest first.
    pub entries: Vec<FailedEntry>,
    /// Files skipped because they are not entries.
    pub skipped: Vec<Skipped>,
    /// Whether entries past the page's limit remain.
    pub more: bool,
}

impl FailedEntry {
    /// For a dead letter of a spooled sink: (source, sink). A replay delivers it to that
    /// sink only, straight through it. `None`: replay to the recorded target.
    pub fn sink_route(&self) -> Option<(&str, &str)> {
        Some((self.source.as_deref()?, self.sink.as_deref()?))
    }
}

/// A failed-deliveries directory.
#[derive(Debug, Clone)]
pub struct FailedStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A new entry id: creation time (sortable) and 32 random bits.
pub fn new_id() -> String {
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).expect("OS random source");
    format!(
        "{}-{}",
        crate::time::compact_ms(crate::time::now_ms()),
        hex::encode(r)
    )
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl FailedStore {
    /// The store at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> FailedStore {
        FailedStore { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> Result<PathBuf, StoreError> {
        if !valid_id(id) {
            return Err(StoreError::NotFound(id.to_string()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    fn claim_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{CLAIM_SUFFIX}"))
    }

    /// Writes `e` to a new temp file, synced; returns its path and the open file.
    fn write_tmp(&self, e: &FailedEntry) -> Result<(PathBuf, File), StoreError> {
        crate::fsutil::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = self.dir.join(format!(".{}.tmp", e.id));
        let mut f = crate::fsutil::create(&tmp).map_err(io(&tmp))?;
        serde_json::to_writer_pretty(&mut f, e).map_err(|e| io(&tmp)(e.into()))?;
        f.write_all(b"\n").map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        Ok((tmp, f))
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        crate::fsutil::sync_dir(&self.dir).map_err(io(&self.dir))
    }

    /// Writes `e` durably.
    pub fn put(&self, e: &FailedEntry) -> Result<(), StoreError> {
        let path = self.path(&e.id)?;
        let (tmp, _) = self.write_tmp(e)?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        self.sync_dir()
    }

    /// Claims entry `id` for one replay (see the module doc): the entry is read from the
    /// claimed file, and no other claim of it succeeds until this one is finished or dropped.
    /// [`StoreError::InProgress`] when another replay holds it, [`StoreError::NotFound`] when
    /// there is no such entry (any more). An entry that is not valid JSON is released again
    /// and reported as [`StoreError::Corrupt`].
    pub fn claim(&self, id: &str) -> Result<Claim, StoreError> {
        let path = self.path(id)?;
        let claimed = self.claim_path(id);
        // A lost race with a finishing replay (the file we locked was replaced meanwhile)
        // is tried again; more than a few in a row means a replay keeps winning.
        for _ in 0..8 {
            let (file, taken_over) = match locked(&path)? {
                Lock::Held(f) => {
                    // Holding the lock on the file that is at `path`: no one else can move it.
                    std::fs::rename(&path, &claimed).map_err(io(&path))?;
                    (f, false)
                }
                Lock::Busy => return Err(StoreError::InProgress(id.to_string())),
                Lock::Replaced => continue,
                // Not in the store: claimed by a replay in progress, orphaned by one that
                // died (its lock is free: take it over), or gone.
                Lock::Missing => match locked(&claimed)? {
                    Lock::Held(f) => (f, true),
                    Lock::Busy => return Err(StoreError::InProgress(id.to_string())),
                    Lock::Replaced => continue,
                    // Handed back between the two looks.
                    Lock::Missing if path.exists() => continue,
                    Lock::Missing => return Err(StoreError::NotFound(id.to_string())),
                },
            };
            let mut claim = Claim {
                store: self.clone(),
                id: id.to_string(),
                entry: None,
                lock: Some(file),
            };
            if !taken_over {
                self.sync_dir()?;
            }
            claim.entry = Some(claim.read()?);
            return Ok(claim);
        }
        Err(StoreError::InProgress(id.to_string()))
    }

    /// Renames every orphaned claim among `names` (its lock free: the replay that took it
    /// died) back to `<id>.json`; one that cannot be is reported, and stays for next time.
    fn recover_orphaned_claims(&self, names: &[String]) -> Vec<Skipped> {
        let mut failed = Vec::new();
        for name in names {
            let Some(id) = name.strip_suffix(CLAIM_SUFFIX).filter(|id| valid_id(id)) else {
                continue;
            };
            let claimed = self.claim_path(id);
            let back = locked(&claimed).and_then(|lock| match lock {
                Lock::Held(_lock) => {
                    let path = self.dir.join(format!("{id}.json"));
                    std::fs::rename(&claimed, &path).map_err(io(&claimed))?;
                    self.sync_dir()
                }
                // In progress, or finished meanwhile.
                Lock::Busy | Lock::Replaced | Lock::Missing => Ok(()),
            });
            if let Err(e) = back {
                failed.push(Skipped {
                    file: name.clone(),
                    reason: format!("an orphaned replay claim that cannot be handed back: {e}"),
                });
            }
        }
        failed
    }

    /// Reads one entry.
    pub fn get(&self, id: &str) -> Result<FailedEntry, StoreError> {
        let path = self.path(id)?;
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(id.to_string()))
            }
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Every entry, oldest first; files that are not entries are skipped and reported.
    pub fn list(&self) -> Result<Listing, StoreError> {
        self.list_page(None, usize::MAX)
    }

    /// Up to `limit` entries with ids after `after`, oldest first; files that are not
    /// entries (in that range) are skipped and reported in [`Listing::skipped`].
    pub fn list_page(&self, after: Option<&str>, limit: usize) -> Result<Listing, StoreError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Listing::default()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        let mut out = Listing::default();
        if names.iter().any(|n| n.ends_with(CLAIM_SUFFIX)) {
            out.skipped = self.recover_orphaned_claims(&names);
            names = std::fs::read_dir(&self.dir)
                .map_err(io(&self.dir))?
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect();
        }
        let mut ids: Vec<String> = names
            .into_iter()
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .filter(|id| valid_id(id) && after.is_none_or(|a| id.as_str() > a))
            .collect();
        ids.sort();
        for id in ids {
            if out.entries.len() >= limit {
                out.more = true;
                break;
            }
            match self.get(&id) {
                Ok(e) => out.entries.push(e),
                // Removed meanwhile (replayed by another client): not an error.
                Err(StoreError::NotFound(_)) => {}
                Err(e) => out.skipped.push(Skipped {
                    file: format!("{id}.json"),
                    reason: e.to_string(),
                }),
            }
        }
        Ok(out)
    }

    /// Removes an entry.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path(id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(id.to_string()))
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Removes entries created before `cutoff_ms` (unix ms); returns how many, and the
    /// files skipped because they are not entries.
    pub fn purge_before(&self, cutoff_ms: i64) -> Result<(usize, Vec<Skipped>), StoreError> {
        let mut n = 0;
        let listing = self.list()?;
        for e in listing.entries {
            let created = crate::time::parse_rfc3339_ms(&e.created_at).unwrap_or(i64::MAX);
            if created < cutoff_ms {
                match self.remove(&e.id) {
                    Ok(()) => n += 1,
                    // Claimed by a replay (or delivered) since the listing: not ours to purge.
                    Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok((n, listing.skipped))
    }
}

/// The outcome of locking an entry's file.
enum Lock {
    /// Locked, and still the file at that path.
    Held(File),
    /// Another holder has the lock.
    Busy,
    /// Moved or replaced between the open and the lock: look again.
    Replaced,
    /// No such file.
    Missing,
}

/// Opens `path` and takes its exclusive advisory lock without waiting; checks that the
/// locked file is still the one at `path` (a holder may have renamed another over it).
fn locked(path: &Path) -> Result<Lock, StoreError> {
    use std::os::unix::fs::MetadataExt;
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock::Missing),
        Err(e) => return Err(io(path)(e)),
    };
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(Lock::Busy),
        Err(std::fs::TryLockError::Error(e)) => return Err(io(path)(e)),
    }
    let held = f.metadata().map_err(io(path))?;
    match std::fs::metadata(path) {
        Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => Ok(Lock::Held(f)),
        Ok(_) => Ok(Lock::Replaced),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lock::Replaced),
        Err(e) => Err(io(path)(e)),
    }
}

/// An entry claimed for one replay by [`FailedStore::claim`]: its file is
/// `<id>.json.replaying`, locked for as long as this lives. Finish it with
/// [`Claim::delivered`], [`Claim::keep`] or [`Claim::release`]; dropped unfinished, it is
/// released (the entry goes back as it was).
#[derive(Debug)]
pub struct Claim {
    store: FailedStore,
    id: String,
    /// Set once read (always, for a claim handed out).
    entry: Option<FailedEntry>,
    /// The locked claimed file; `None` once finished.
    lock: Option<File>,
}

impl Claim {
    /// The claimed entry.
    pub fn entry(&self) -> &FailedEntry {
        self.entry
            .as_ref()
            .expect("a claim handed out has its entry")
    }

    fn read(&mut self) -> Result<FailedEntry, StoreError> {
        let claimed = self.store.claim_path(&self.id);
        let f = self
            .lock
            .as_mut()
            .expect("an unfinished claim holds its lock");
        let mut text = Vec::new();
        f.rewind()
            .and_then(|_| f.read_to_end(&mut text))
            .map_err(io(&claimed))?;
        serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
            path: self
                .store
                .path(&self.id)
                .unwrap_or(claimed)
                .display()
                .to_string(),
            reason: e.to_string(),
        })
    }

    /// The replay delivered it: the entry is removed for good.
    pub fn delivered(mut self) -> Result<(), StoreError> {
        // Taken out of the claim first: whatever happens now, the entry is not handed back
        // (it was delivered; handing it back would deliver it again). The lock is held until
        // the file is gone, so no listing can take it for an orphan meanwhile.
        let _lock = self.lock.take();
        let claimed = self.store.claim_path(&self.id);
        if let Err(e) = std::fs::remove_file(&claimed) {
            // Not deletable: at least out of every listing's sight (a name neither an entry
            // nor a claim), so a later listing never hands it back to be delivered again.
            let gone = self.store.dir.join(format!(".{}.delivered", self.id));
            std::fs::rename(&claimed, &gone).map_err(io(&claimed))?;
            tracing::warn!(id = %self.id, error = %e, path = %gone.display(), "a replayed dead letter could not be deleted; it was set aside");
        }
        self.store.sync_dir()
    }

    /// The replay failed: the entry goes back to the store with `attempt` added.
    pub fn keep(mut self, attempt: AttemptLog) -> Result<(), StoreError> {
        let mut entry = self.entry().clone();
        entry.attempts.push(attempt);
        let (tmp, f) = self.store.write_tmp(&entry)?;
        // The new file is locked before it takes the claim's name, so the claim is never
        // seen unlocked (and taken for an orphan) while it is handed back.
        f.lock().map_err(io(&tmp))?;
        let claimed = self.store.claim_path(&self.id);
        std::fs::rename(&tmp, &claimed).map_err(io(&claimed))?;
        self.lock = Some(f);
        self.release()
    }

    /// Not replayed: the entry goes back to the store as it is.
    pub fn release(mut self) -> Result<(), StoreError> {
        self.give_back()
    }

    fn give_back(&mut self) -> Result<(), StoreError> {
        if self.lock.is_none() {
            return Ok(());
        }
        let claimed = self.store.claim_path(&self.id);
        let path = self.store.path(&self.id)?;
        let renamed = std::fs::rename(&claimed, &path).map_err(io(&claimed));
        // Unlocked only once back under its own name.
        self.lock = None;
        renamed?;
        self.store.sync_dir()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Err(e) = self.give_back() {
            // The lock is gone with the file handle: the next listing brings it back.
            tracing::warn!(id = %self.id, error = %e, "cannot hand a claimed dead letter back; the next listing will");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, created: &str) -> FailedEntry {
        FailedEntry {
            id: id.into(),
            target: "http://127.0.0.1:1/x".into(),
            version: "1".into(),
            header_names: vec!["authorization".into()],
            secret_ref: "env VF_SECRET".into(),
            event_id: "evt_1".into(),
            event_type: "user.login".into(),
            sink: None,
            source: None,
            mapped: None,
            scheme: String::new(),
            reason: "gave up after 6 attempts".into(),
            created_at: created.into(),
            attempts: vec![AttemptLog {
                at: created.into(),
                status: Some(503),
                error: None,
            }],
            event: "{\"event_id\":\"evt_1\"}".into(),
        }
    }

    #[test]
    fn put_get_list_remove_purge() {
        let dir = tempfile::tempdir().unwrap();
        let s = FailedStore::new(dir.path().join("failed"));
        assert!(s.list().unwrap().entries.is_empty());
        let a = entry("20260101T000000000Z-aaaaaaaa", "2026-01-01T00:00:00.000Z");
        let b = entry(&new_id(), &crate::time::now_rfc3339());
        s.put(&b).unwrap();
        s.put(&a).unwrap();
        assert_eq!(s.get(&a.id).unwrap(), a);
        let ids: Vec<String> = s
            .list()
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, vec![a.id.clone(), b.id.clone()], "oldest first");
        assert!(matches!(
            s.get("../etc/passwd"),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            s.purge_before(crate::time::parse_rfc3339_ms("2026-06-01T00:00:00Z").unwrap())
                .unwrap()
                .0,
            1
        );
        s.remove(&b.id).unwrap();
        assert!(matches!(s.remove(&b.id), Err(StoreError::NotFound(_))));
        assert!(s.list().unwrap().entries.is_empty());
    }

    #[test]
    fn a_file_that_is_not_an_entry_is_skipped_and_reported_and_pages_follow_ids() {
        let dir = tempfile::tempdir().unwrap();
        let s = FailedStore::new(dir.path());
        let ids = [
            "20260101T000000000Z-00000001",
            "20260101T000000000Z-00000002",
            "20260101T000000000Z-00000003",
        ];
        for id in ids {
            s.put(&entry(id, "2026-01-01T00:00:00.000Z")).unwrap();
        }
        std::fs::write(
            dir.path().join("20260101T000000000Z-00000000.json"),
            b"{not json",
        )
        .unwrap();
        let all = s.list().unwrap();
        assert_eq!(all.entries.len(), 3);
        assert_eq!(all.skipped.len(), 1);
        assert!(all.skipped[0].file.ends_with("00000000.json"));
        let p1 = s.list_page(None, 2).unwrap();
        assert_eq!(p1.entries.len(), 2);
        assert!(p1.more);
        let p2 = s.list_page(Some(&p1.entries[1].id), 2).unwrap();
        assert_eq!(
            p2.entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            vec![ids[2]]
        );
        assert!(!p2.more && p2.skipped.is_empty());
    }
    #[test]
    fn one_claim_at_a_time_among_racing_threads_and_a_delivered_entry_stays_gone() {
        let dir = tempfile::tempdir().unwrap();
        let s = FailedStore::new(dir.path());
        let id = "20260101T000000000Z-0000c1a1";
        s.put(&entry(id, "2026-01-01T00:00:00.000Z")).unwrap();
        let barrier = std::sync::Barrier::new(8);
        let claims: Vec<Result<Claim, StoreError>> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    sc.spawn(|| {
                        barrier.wait();
                        s.claim(id)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (won, lost): (Vec<_>, Vec<_>) = claims.into_iter().partition(Result::is_ok);
        assert_eq!(won.len(), 1, "{lost:?}");
        assert!(lost
            .iter()
            .all(|r| matches!(r, Err(StoreError::InProgress(_)))));
        let claim = won.into_iter().next().unwrap().unwrap();
        assert_eq!(claim.entry().id, id);
        assert!(
            s.list().unwrap().entries.is_empty(),
            "a claimed entry is not listed"
        );
        assert!(matches!(s.claim(id), Err(StoreError::InProgress(_))));
        claim.delivered().unwrap();
        assert!(matches!(s.claim(id), Err(StoreError::NotFound(_))));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_kept_claim_goes_back_with_its_attempt_and_a_dropped_one_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let s = FailedStore::new(dir.path());
        let id = "20260101T000000000Z-0000c1a2";
        let e = entry(id, "2026-01-01T00:00:00.000Z");
        s.put(&e).unwrap();
        let attempt = AttemptLog {
            at: "2026-01-02T00:00:00.000Z".into(),
            status: Some(502),
            error: None,
        };
        s.claim(id).unwrap().keep(attempt.clone()).unwrap();
        let back = s.get(id).unwrap();
        assert_eq!(back.attempts.len(), 2);
        assert_eq!(back.attempts[1], attempt);
        drop(s.claim(id).unwrap());
        assert_eq!(s.get(id).unwrap(), back, "dropped: handed back untouched");
        s.claim(id).unwrap().release().unwrap();
        assert_eq!(s.get(id).unwrap(), back);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec![format!("{id}.json")],
            "no claim or temp file left"
        );
    }

    #[test]
    fn a_claim_orphaned_by_a_crash_is_listed_again_and_can_be_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let s = FailedStore::new(dir.path());
        let (a, b) = (
            "20260101T000000000Z-0000c1a3",
            "20260101T000000000Z-0000c1a4",
        );
        for id in [a, b] {
            s.put(&entry(id, "2026-01-01T00:00:00.000Z")).unwrap();
            // What a replay that died mid-way leaves: the claimed file, its lock gone.
            std::fs::rename(
                dir.path().join(format!("{id}.json")),
                dir.path().join(format!("{id}{CLAIM_SUFFIX}")),
            )
            .unwrap();
        }
        // Held by a live replay: not an orphan, not listed, not taken.
        let live = s.claim(b).unwrap();
        let ids: Vec<String> = s
            .list()
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(
            ids,
            vec![a.to_string()],
            "the orphan is back, the live claim is not"
        );
        assert!(dir.path().join(format!("{a}.json")).exists());
        assert!(matches!(s.claim(b), Err(StoreError::InProgress(_))));
        live.release().unwrap();
        // A claim of an orphaned id takes it over.
        std::fs::rename(
            dir.path().join(format!("{a}.json")),
            dir.path().join(format!("{a}{CLAIM_SUFFIX}")),
        )
        .unwrap();
        let c = s.claim(a).unwrap();
        assert_eq!(c.entry().id, a);
        assert!(matches!(s.claim(a), Err(StoreError::InProgress(_))));
        c.delivered().unwrap();
        let ids: Vec<String> = s
            .list()
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, vec![b.to_string()]);
    }

    #[test]
    fn a_claimed_file_that_is_not_an_entry_is_reported_and_handed_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = FailedStore::new(dir.path());
        let id = "20260101T000000000Z-0000c1a5";
        std::fs::write(dir.path().join(format!("{id}.json")), b"{not json").unwrap();
        assert!(matches!(s.claim(id), Err(StoreError::Corrupt { .. })));
        assert!(dir.path().join(format!("{id}.json")).exists());
        assert!(matches!(s.claim("../x"), Err(StoreError::NotFound(_))));
    }
}
