//! File-system helpers: a small tmpfs for disk-full tests.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

/// A small tmpfs mounted at a fresh directory for a disk-full test, unmounted on drop. Needs
/// root (CI runs as root); elsewhere the test says so and fails.
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small");
        std::fs::create_dir(&path).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs for a disk-full test needs root"
        );
        Tmpfs { path, _dir: dir }
    }

    /// Fills what is left with a file `fill` (until ENOSPC).
    pub fn fill(&self) {
        let mut f = std::fs::File::create(self.path.join("fill")).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let one = [0u8; 1];
        while f.write_all(&one).is_ok() {}
    }

    /// Frees what [`Tmpfs::fill`] took.
    pub fn free(&self) {
        std::fs::remove_file(self.path.join("fill")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
