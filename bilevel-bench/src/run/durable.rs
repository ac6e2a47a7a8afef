//! The file operations a run's directory is written with, so that a kill or a full disk at any
//! instant leaves every file either as it was or as it should become (docs/reliability.md).
//!
//! A file that is replaced (summary, configuration, a log rewritten on resume, tables) is written
//! whole to `<name>.tmp` beside it, synced, and renamed over it: a reader sees the old version or
//! the new one, never a mix. Every operation is a write point of [`crate::run::faults`], and every
//! error names the file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::run::faults::{self, Watched};

/// A log file opened for writing (created, or truncated), buffered.
pub type LogFile = BufWriter<Watched<File>>;

/// Creates (or truncates) `path` for writing through a buffer.
pub fn create(path: &Path) -> anyhow::Result<LogFile> {
    create_with_capacity(path, 8 * 1024)
}

/// [`create`] with a buffer of `capacity` bytes (a large file written in few writes).
pub fn create_with_capacity(path: &Path, capacity: usize) -> anyhow::Result<LogFile> {
    faults::point("creating", path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    let file = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    Ok(BufWriter::with_capacity(capacity, Watched::new(file, path)))
}

/// Opens `path` to append to what it holds, through a buffer.
pub fn append(path: &Path) -> anyhow::Result<LogFile> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    Ok(BufWriter::new(Watched::new(file, path)))
}

/// Flushes `log` and syncs its file to the disk (`path` names it in errors).
pub fn sync(log: &mut LogFile, path: &Path) -> anyhow::Result<()> {
    log.flush()
        .with_context(|| format!("{}: cannot write", path.display()))?;
    sync_file(log.get_ref().get_ref(), path)
}

/// Syncs `file` (written elsewhere, named `path` in errors) to the disk.
pub fn sync_file(file: &File, path: &Path) -> anyhow::Result<()> {
    faults::point("syncing", path).with_context(|| format!("{}: cannot sync", path.display()))?;
    file.sync_all()
        .with_context(|| format!("{}: cannot sync", path.display()))
}

/// The temporary file `path` is written to before it replaces `path`.
pub fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` by `bytes` atomically: temporary file, sync, rename, sync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = temporary(path);
    let mut out = create(&tmp)?;
    out.write_all(bytes)
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    sync(&mut out, &tmp)?;
    drop(out);
    rename(&tmp, path)
}

/// Renames `from` to `to` (replacing `to`), then syncs the directory so the rename survives a
/// power cut.
pub fn rename(from: &Path, to: &Path) -> anyhow::Result<()> {
    let fail = || format!("{}: cannot rename to {}", from.display(), to.display());
    faults::point("renaming", from).with_context(fail)?;
    std::fs::rename(from, to).with_context(fail)?;
    sync_dir(to);
    Ok(())
}

/// Removes the file `path` if it exists.
pub fn remove(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let fail = || format!("{}: cannot remove", path.display());
    faults::point("removing", path).with_context(fail)?;
    std::fs::remove_file(path).with_context(fail)
}

/// Syncs the directory holding `path` (best effort: not every file system can).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}
