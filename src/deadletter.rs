//! The failed-deliveries store: one JSON file per event in a directory, written atomically
//! (temp file, fsync, rename, fsync of the directory), so a crash never leaves half an entry.
//!
//! An entry keeps the exact event bytes, the target URL, the webhook version, the names (not
//! the values) of the custom headers, the secret's reference (`env NAME` or `file PATH`, never
//! the secret), every attempt's time and status or error, and, for dead letters of a sink, the
//! sink and reason. The same format serves `vfgate send`, `vfgate failed ...` and the admin API.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

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
    /// Target URL.
    pub target: String,
    /// `X-VF-Webhook-Version` sent.
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

    /// Writes `e` durably.
    pub fn put(&self, e: &FailedEntry) -> Result<(), StoreError> {
        crate::fsutil::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.path(&e.id)?;
        let tmp = self.dir.join(format!(".{}.tmp", e.id));
        let mut f = crate::fsutil::create(&tmp).map_err(io(&tmp))?;
        serde_json::to_writer_pretty(&mut f, e).map_err(|e| io(&tmp)(e.into()))?;
        f.write_all(b"\n").map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(())
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
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .filter(|id| valid_id(id) && after.is_none_or(|a| id.as_str() > a))
            .collect();
        ids.sort();
        let mut out = Listing::default();
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
                self.remove(&e.id)?;
                n += 1;
            }
        }
        Ok((n, listing.skipped))
    }
}

/// `text` with control characters escaped, for a terminal or a log line (outside text
/// must not move the cursor or forge a line).
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        std::borrow::Cow::Owned(text.chars().flat_map(char::escape_debug).collect())
    } else {
        std::borrow::Cow::Borrowed(text)
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
}
