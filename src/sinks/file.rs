//! `file` sink: NDJSON, one event per line, the received bytes as they came.
//!
//! A body with raw newlines (pretty-printed JSON) is re-serialised compactly so a line is
//! always one event. `fsync = "batch"` (default) makes every batch durable before the events
//! are acknowledged (written and fsynced on a blocking thread); `"never"` leaves it to the OS
//! (written from the event loop, a copy into the page cache; a power loss can lose the tail).
//!
//! ```toml
//! [sink.archive]
//! type = "file"
//! path = "data/events.ndjson"
//! fsync = "batch"
//! ```

use super::{Attempt, SendResult, Sink, SinkType, Verdict};
use crate::config::{ConfigError, SinkSpec};
use crate::event::Event;
use async_trait::async_trait;
use serde::Deserialize;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// The `file` sink type.
pub const TYPE: SinkType = SinkType {
    name: "file",
    check: |spec| parse(spec).map(drop),
    build,
    max_events: usize::MAX,
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

fn parse(spec: &SinkSpec) -> Result<FileConfig, ConfigError> {
    let c: FileConfig = super::parse_keys(spec)?;
    if c.path.as_os_str().is_empty() {
        return Err(ConfigError::invalid(
            format!("{}.path", spec.key()),
            "must not be empty",
        ));
    }
    Ok(c)
}

fn build(spec: &SinkSpec) -> Result<Arc<dyn Sink>, ConfigError> {
    let c = parse(spec)?;
    if let Some(dir) = c.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::create_dir_all(dir).map_err(|e| {
            ConfigError::invalid(
                format!("{}.path", spec.key()),
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
    }
    // 0600 when created: the file holds whole audit events.
    let file = crate::fsutil::append(&c.path).map_err(|e| {
        ConfigError::invalid(
            format!("{}.path", spec.key()),
            format!("cannot open {}: {e}", c.path.display()),
        )
    })?;
    // fsync of a character device (/dev/null) is meaningless and may fail.
    let is_regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    Ok(Arc::new(FileSink {
        file: Arc::new(parking_lot::Mutex::new(file)),
        fsync: c.fsync == Fsync::Batch && is_regular,
        path: c.path,
    }))
}

/// An open NDJSON file.
pub struct FileSink {
    file: Arc<parking_lot::Mutex<File>>,
    fsync: bool,
    path: PathBuf,
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
        let res = if self.fsync {
            let file = self.file.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let mut f = file.lock();
                f.write_all(&buf)?;
                f.sync_data()
            })
            .await
        } else {
            // Without fsync the write only copies into the page cache: do it here rather
            // than pay a hand-off to a blocking thread per batch.
            Ok(self.file.lock().write_all(&buf))
        };
        match res {
            Ok(Ok(())) => Attempt {
                status: "ok".into(),
                result: SendResult::All(Verdict::Ok),
            },
            Ok(Err(e)) => {
                tracing::error!(path = %self.path.display(), error = %e, "file sink write failed");
                Attempt {
                    status: "io_error".into(),
                    result: SendResult::All(Verdict::retry(
                        super::RetryKind::Unavailable,
                        format!("cannot write {}: {e}", self.path.display()),
                        None,
                    )),
                }
            }
            Err(e) => Attempt {
                status: "io_error".into(),
                result: SendResult::All(Verdict::retry(
                    super::RetryKind::Unavailable,
                    format!("file writer failed: {e}"),
                    None,
                )),
            },
        }
    }

    fn ordered(&self) -> bool {
        true
    }
}
