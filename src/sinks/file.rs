//! `file` sink: NDJSON, one event per line, the received bytes as they came.
//!
//! A body with raw newlines (pretty-printed JSON) is re-serialised compactly so a line is
//! always one event. `fsync = "batch"` (default) makes every batch durable before the events
//! are acknowledged (written and fsynced on a blocking thread); `"never"` leaves it to the OS
//! (written from the event loop, a copy into the page cache; a power loss can lose the tail).
//!
//! The file only ever holds whole lines: a write or fsync that fails (disk full, I/O error)
//! is cut back to the end of the last complete line before the batch is retried, and a half
//! line left by a crash is cut at start-up, so the next event never lands glued to a
//! fragment. The sender hears a fixed sentence; the path and the OS error go to the log.
//!
//! ```toml
//! [sink.archive]
//! type = "file"
//! path = "data/events.ndjson"
//! fsync = "batch"
//! ```
//!
//! Owns: the output file, its encoding and its cut-back to whole lines; writes through
//! `crate::fsutil`; retries and batching are the pipeline's.

use super::{Attempt, SendResult, Sink, SinkType, Verdict};
use crate::config::{sink_keys, ConfigError, SinkCommon, SinkKind};
use crate::event::Event;
use async_trait::async_trait;
use serde::Deserialize;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The `file` sink type.
pub const TYPE: SinkType = SinkType {
    kind: SinkKind {
        name: "file",
        max_events: usize::MAX,
        configure: |common, keys| Ok(Arc::new(configure(common, keys)?)),
    },
    build: |c| build(&c.common, c.settings()?),
};

/// When to fsync.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every batch, before acknowledging it.
    Batch,
    /// Never explicitly.
    Never,
}

/// `[sink.NAME]` keys of a file sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Output file (created if missing, appended to).
    pub path: PathBuf,
    /// fsync policy.
    #[serde(default = "default_fsync")]
    pub fsync: Fsync,
}

fn default_fsync() -> Fsync {
    Fsync::Batch
}

/// The validated settings are the keys themselves.
fn configure(common: &SinkCommon, keys: toml::Table) -> Result<FileConfig, ConfigError> {
    let c: FileConfig = sink_keys(common, keys)?;
    if c.path.as_os_str().is_empty() {
        return Err(ConfigError::invalid(
            format!("{}.path", common.key()),
            "must not be empty",
        ));
    }
    Ok(c)
}

fn build(common: &SinkCommon, c: &FileConfig) -> Result<Arc<dyn Sink>, ConfigError> {
    let key = common.key();
    if let Some(dir) = c.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::create_dir_all(dir).map_err(|e| {
            ConfigError::invalid(
                format!("{key}.path"),
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
    }
    // 0600 when created: the file holds whole audit events.
    let file = crate::fsutil::append(&c.path).map_err(|e| {
        ConfigError::invalid(
            format!("{key}.path"),
            format!("cannot open {}: {e}", c.path.display()),
        )
    })?;
    FileSink::open(file, c.path.clone(), c.fsync == Fsync::Batch)
        .map_err(|e| ConfigError::invalid(format!("{key}.path"), e.to_string()))
}

/// The output file and the length of its complete lines.
struct Out {
    file: File,
    /// End of the last complete line: what a failed write is cut back to.
    len: u64,
    /// Whether the file can be cut (a regular file, not /dev/null).
    regular: bool,
}

impl Out {
    /// Appends `buf` (whole lines), synced when `sync`; on failure cuts the file back to its
    /// last complete line, so the retry starts on a fresh line.
    fn append(&mut self, path: &Path, buf: &[u8], sync: bool) -> std::io::Result<()> {
        let r = crate::fsutil::write_all(&self.file, path, buf).and_then(|()| {
            if sync {
                crate::fsutil::sync_data(&self.file, path)
            } else {
                Ok(())
            }
        });
        match r {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                if self.regular {
                    if let Err(cut) = self.file.set_len(self.len) {
                        tracing::error!(path = %path.display(), error = %cut, "file sink: cannot cut a failed write back to the last whole line");
                    }
                }
                Err(e)
            }
        }
    }
}

/// The end of the last complete line of the file at `path` (`len` bytes long): 0 when it
/// has no newline.
fn last_line_end(path: &Path, len: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path)?;
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.read_exact_at(chunk, start)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// An open NDJSON file.
pub struct FileSink {
    out: Arc<parking_lot::Mutex<Out>>,
    fsync: bool,
    /// Shared with the blocking writes (a reference count, not a path copy, per batch).
    path: Arc<Path>,
}

impl FileSink {
    /// The sink on `file` (opened for appending at `path`); a half line at its end, left by a
    /// crash, is cut first.
    pub fn open(file: File, path: PathBuf, fsync: bool) -> std::io::Result<Arc<dyn Sink>> {
        let meta = file.metadata()?;
        // fsync of a character device (/dev/null) is meaningless and may fail.
        let regular = meta.is_file();
        let mut len = meta.len();
        if regular && len > 0 {
            let whole = last_line_end(&path, len)?;
            if whole < len {
                tracing::warn!(path = %path.display(), bytes = len - whole, "file sink: a half line at the end of the file (an earlier crash or disk-full) is cut");
                file.set_len(whole)?;
                len = whole;
            }
        }
        Ok(Arc::new(FileSink {
            out: Arc::new(parking_lot::Mutex::new(Out { file, len, regular })),
            fsync: fsync && regular,
            path: path.into(),
        }))
    }
}

#[async_trait]
impl Sink for FileSink {
    fn encode(&self, batch: &[Arc<Event>]) -> Result<Vec<u8>, SendResult> {
        let mut buf = Vec::with_capacity(batch.iter().map(|e| e.body.len() + 1).sum());
        for e in batch {
            buf.extend_from_slice(&e.one_line());
            buf.push(b'\n');
        }
        Ok(buf)
    }

    async fn send(&self, batch: &[Arc<Event>]) -> Attempt {
        let buf = match self.encode(batch) {
            Ok(b) => b,
            Err(r) => return Attempt::not_sent(r),
        };
        let written = buf.len() as u64;
        let res = if self.fsync {
            let (out, path) = (self.out.clone(), self.path.clone());
            tokio::task::spawn_blocking(move || out.lock().append(&path, &buf, true)).await
        } else {
            // Without fsync the write only copies into the page cache: do it here rather
            // than pay a hand-off to a blocking thread per batch.
            Ok(self.out.lock().append(&self.path, &buf, false))
        };
        match res.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
            Ok(()) => {
                crate::client::count_sent(written);
                Attempt {
                    status: "ok".into(),
                    result: SendResult::All(Verdict::Ok),
                }
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "file sink write failed; cut back to the last whole line, the batch is retried");
                Attempt {
                    status: "io_error".into(),
                    result: SendResult::All(Verdict::retry(
                        super::RetryKind::Unavailable,
                        "cannot write the output file",
                        None,
                    )),
                }
            }
        }
    }

    fn ordered(&self) -> bool {
        true
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn destination(&self) -> String {
        format!("{} {}", TYPE.name(), self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::fault::{Kind, Op, Rule};

    fn ev(id: &str) -> Arc<Event> {
        let body = bytes::Bytes::from(format!(
            r#"{{"event_id":"{id}","event_type":"t","timestamp":"2026-01-01T00:00:00Z"}}"#
        ));
        Arc::new(Event::parse(body).unwrap())
    }

    fn ok(a: &Attempt) -> bool {
        matches!(a.result, SendResult::All(Verdict::Ok))
    }

    #[tokio::test]
    async fn a_failed_write_or_fsync_leaves_only_whole_lines() {
        for (op, short) in [(Op::Write, 9), (Op::Sync, 0)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("out.ndjson");
            let sink =
                FileSink::open(crate::fsutil::append(&path).unwrap(), path.clone(), true).unwrap();
            assert!(ok(&sink.send(&[ev("a")]).await));
            Rule {
                short,
                times: 1,
                ..Rule::new(dir.path(), op, Kind::NoSpace)
            }
            .install();
            let failed = sink.send(&[ev("b"), ev("c")]).await;
            assert!(!ok(&failed), "{op:?}");
            match &failed.result {
                SendResult::All(Verdict::Retry { detail, .. }) => {
                    assert!(
                        !detail.contains(path.to_str().unwrap()),
                        "no path to the sender: {detail}"
                    );
                }
                other => panic!("{other:?}"),
            }
            assert!(ok(&sink.send(&[ev("b"), ev("c")]).await), "the retry");
            let text = std::fs::read_to_string(&path).unwrap();
            let ids: Vec<String> = text
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            assert_eq!(ids, ["a", "b", "c"], "{op:?}: {text:?}");
        }
    }

    #[test]
    fn a_half_line_left_by_a_crash_is_cut_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let _sink =
            FileSink::open(crate::fsutil::append(&path).unwrap(), path.clone(), true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n");
    }
}
