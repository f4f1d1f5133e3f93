//! Private files: everything vfgate writes to disk holds whole audit events (spool segments,
//! cursors, the dedupe journal, dead letters, file-sink output), so it is created `0600` in
//! `0700` directories. Only what is created here gets those modes; an existing file or
//! directory keeps the mode it has (vfgate never loosens, and never silently tightens, what an
//! operator set).
//!
//! Every append and data sync of vfgate's own files (spool segments, the dedupe journal, the
//! file sink) goes through [`write_all`] / [`sync_data`] / [`SeamFile`]: in unit tests
//! [`fault`] makes them fail (ENOSPC or EIO, after a short write) at a chosen call, so that
//! what each writer does after a disk-full is tested without a full disk.
//!
//! Owns: creating directories and opening files for writing with private modes, syncing a
//! directory after a rename, and the storage failure seam. Touches nothing else.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Writes all of `buf` to `f` (opened for appending) at its end.
pub fn write_all(mut f: &File, path: &Path, buf: &[u8]) -> std::io::Result<()> {
    #[cfg(test)]
    if let Some(inj) = fault::take(path, fault::Op::Write) {
        f.write_all(&buf[..inj.short.min(buf.len())])?;
        return Err(inj.error());
    }
    let _ = path;
    f.write_all(buf)
}

/// `fdatasync` of `f`.
pub fn sync_data(f: &File, path: &Path) -> std::io::Result<()> {
    #[cfg(test)]
    if let Some(inj) = fault::take(path, fault::Op::Sync) {
        return Err(inj.error());
    }
    let _ = path;
    f.sync_data()
}

/// A file opened for appending whose writes go through the failure seam (for a
/// `BufWriter`).
#[derive(Debug)]
pub struct SeamFile {
    file: File,
    path: PathBuf,
}

impl SeamFile {
    /// Wraps `file`, which lives at `path`.
    pub fn new(file: File, path: &Path) -> SeamFile {
        SeamFile {
            file,
            path: path.to_path_buf(),
        }
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`sync_data`] of the file.
    pub fn sync_data(&self) -> std::io::Result<()> {
        sync_data(&self.file, &self.path)
    }
}

impl Write for SeamFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        #[cfg(test)]
        if let Some(inj) = fault::take(&self.path, fault::Op::Write) {
            (&self.file).write_all(&buf[..inj.short.min(buf.len())])?;
            return Err(inj.error());
        }
        (&self.file).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (&self.file).flush()
    }
}

/// The storage failure seam (unit tests only): rules that make the next writes or syncs of
/// files under a directory fail.
#[cfg(test)]
pub mod fault {
    use std::path::{Path, PathBuf};

    /// Which call fails.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Op {
        /// A write (after `short` bytes of it reached the file).
        Write,
        /// An fsync.
        Sync,
    }

    /// The error it fails with.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        /// ENOSPC.
        NoSpace,
        /// EIO.
        Io,
    }

    /// One injected failure.
    #[derive(Debug, Clone)]
    pub struct Rule {
        /// Files under this directory.
        pub under: PathBuf,
        /// Which call.
        pub op: Op,
        /// Calls let through before the first failure.
        pub after: u32,
        /// How many calls fail after that.
        pub times: u32,
        /// Bytes of a failing write that reach the file first.
        pub short: usize,
        /// The error.
        pub kind: Kind,
    }

    impl Rule {
        /// Fails the calls `op` under `dir` with `kind` from the first on, forever.
        pub fn new(dir: &Path, op: Op, kind: Kind) -> Rule {
            Rule {
                under: dir.to_path_buf(),
                op,
                after: 0,
                times: u32::MAX,
                short: 0,
                kind,
            }
        }

        /// Installs the rule (tests use their own temp dirs, so rules never meet).
        pub fn install(self) {
            RULES.lock().push(self);
        }

        /// The error of this rule.
        pub fn error(&self) -> std::io::Error {
            match self.kind {
                Kind::NoSpace => std::io::Error::from_raw_os_error(28),
                Kind::Io => std::io::Error::from_raw_os_error(5),
            }
        }
    }

    static RULES: parking_lot::Mutex<Vec<Rule>> = parking_lot::Mutex::new(Vec::new());

    /// Removes every rule for files under `dir` (the disk has room again).
    pub fn clear(dir: &Path) {
        RULES.lock().retain(|r| !r.under.starts_with(dir));
    }

    /// The failure for this call, if a rule says so.
    pub(super) fn take(path: &Path, op: Op) -> Option<Rule> {
        let mut rules = RULES.lock();
        let r = rules
            .iter_mut()
            .find(|r| r.op == op && path.starts_with(&r.under) && r.times > 0)?;
        if r.after > 0 {
            r.after -= 1;
            return None;
        }
        r.times -= 1;
        Some(r.clone())
    }
}

/// Mode of directories vfgate creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of files vfgate creates.
pub const FILE_MODE: u32 = 0o600;

/// `mkdir -p` with mode 0700 for every directory it creates.
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Open options that create a missing file with mode 0600.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Creates (or truncates) `path` for writing, mode 0600 if new.
pub fn create(path: &Path) -> std::io::Result<File> {
    options().write(true).create(true).truncate(true).open(path)
}

/// Opens `path` for appending, creating it with mode 0600 if missing.
pub fn append(path: &Path) -> std::io::Result<File> {
    options().create(true).append(true).open(path)
}

/// Takes the advisory lock `dir/lock` for as long as the returned file lives; `Ok(None)`
/// when another process holds it (one process per spool or dedupe directory).
pub fn lock_dir(dir: &Path) -> std::io::Result<Option<File>> {
    let f = options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("lock"))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Makes a rename or file creation in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically (temp file, optional fsync, rename, optional dir
/// fsync): a crash leaves the old content or the new, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = create(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    if durable {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_and_dirs_are_private_and_existing_modes_are_kept() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        create_dir_all(&d).unwrap();
        assert_eq!(mode(&t.path().join("a")), 0o700);
        assert_eq!(mode(&d), 0o700);
        let f = d.join("f");
        append(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        write_atomic(&d.join("g"), b"x", true).unwrap();
        assert_eq!(mode(&d.join("g")), 0o600);
        // An operator's looser (or tighter) choice stays as it was.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        create_dir_all(&d).unwrap();
        append(&f).unwrap();
        assert_eq!(mode(&d), 0o750);
        assert_eq!(mode(&f), 0o640);
    }

    #[test]
    fn a_dir_is_locked_by_one_holder_at_a_time() {
        let t = tempfile::tempdir().unwrap();
        let held = lock_dir(t.path()).unwrap().expect("free");
        assert!(lock_dir(t.path()).unwrap().is_none(), "held");
        drop(held);
        assert!(lock_dir(t.path()).unwrap().is_some(), "free again");
    }
}
