//! Private files: everything vfgate writes to disk holds whole audit events (spool segments,
//! cursors, the dedupe journal, dead letters, file-sink output), so it is created `0600` in
//! `0700` directories. Only what is created here gets those modes; an existing file or
//! directory keeps the mode it has (vfgate never loosens, and never silently tightens, what an
//! operator set).
//!
//! Owns: creating directories and opening files for writing with private modes, and syncing a
//! directory after a rename. Touches nothing else.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

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
