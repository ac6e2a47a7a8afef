//! One process at a time in a run directory: the owner holds an exclusive lock on
//! `<dir>/run.lock` (an advisory lock of the operating system, `flock` on Unix) and writes its
//! process id into it. The system drops the lock when the owner ends in any way, a SIGKILL or a
//! crash included, so a lock is never stale: a leftover `run.lock` of a dead process is simply
//! taken over. The file itself is never removed: removing it while another process waits on it
//! would let two processes each lock a different file of the same name.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The lock file's name in a run directory.
pub const FILE: &str = "run.lock";

/// An exclusive hold on a run directory, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Locks the run directory `dir` (which must exist) for this process, or explains which
    /// process holds it.
    pub fn acquire(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("{}: cannot open the run's lock file", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut owner = String::new();
                let _ = file.read_to_string(&mut owner);
                let owner = owner.trim();
                let owner = if owner.is_empty() {
                    "another process".to_string()
                } else {
                    format!("another process ({owner})")
                };
                anyhow::bail!(
                    "{}: this run directory is in use by {owner}; two runs writing one directory \
                     would corrupt each other's logs. Wait for it to end, or choose another --out",
                    dir.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("{}: cannot lock", path.display()))
            }
        }
        let owner = format!(
            "pid {} on {}",
            std::process::id(),
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "this host".into())
        );
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{owner}"))
            .with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(Self { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::RunLock;

    /// A second holder (another open file description, as another process would have) is
    /// refused with the owner named; once the first lets go the directory is free again.
    #[test]
    fn a_directory_is_held_by_one_owner_at_a_time() {
        let dir = std::env::temp_dir().join(format!("bilevel-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = RunLock::acquire(&dir).unwrap();
        let err = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            err.contains("in use by another process (pid ")
                && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(first);
        let again = RunLock::acquire(&dir).unwrap();
        assert!(again.path().exists());
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
