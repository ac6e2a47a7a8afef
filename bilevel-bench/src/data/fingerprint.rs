//! Which data a run was built from: every loader records the files it reads (name, length,
//! CRC-32C of the bytes), so a checkpoint can refuse to resume on data that changed since.
//!
//! Recording is per thread (runs in parallel each load on their own thread): [`begin`] starts a
//! fresh record, the loaders add to it, [`current`] reads it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use bilevel_optim::crc32c::Crc32c;

thread_local! {
    static FILES: RefCell<Option<BTreeMap<String, String>>> = const { RefCell::new(None) };
}

/// Starts recording the files this thread's loaders read.
pub fn begin() {
    FILES.with(|f| *f.borrow_mut() = Some(BTreeMap::new()));
}

/// The files read since [`begin`]: a file's last two path components (as `glove/vectors.txt`,
/// so a moved data directory still matches) to its length and checksum.
pub fn current() -> BTreeMap<String, String> {
    FILES.with(|f| f.borrow().clone().unwrap_or_default())
}

fn record(path: &Path, length: u64, crc: u32) {
    FILES.with(|f| {
        if let Some(files) = f.borrow_mut().as_mut() {
            files.insert(
                short_name(path),
                format!("{length} bytes, crc32c {crc:08x}"),
            );
        }
    });
}

fn short_name(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .rev()
        .take(2)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// Reads the whole file `path`, recording it.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    let mut crc = Crc32c::default();
    crc.update(&bytes);
    record(path, bytes.len() as u64, crc.value());
    Ok(bytes)
}

/// A reader that records the bytes read from it when dropped (for streamed files; a gzip
/// decoder stops at the end of its stream without asking for the end of the file).
pub struct Recorded<R> {
    inner: R,
    path: std::path::PathBuf,
    crc: Crc32c,
    length: u64,
}

impl<R: Read> Recorded<R> {
    /// `inner`, the contents of `path`.
    pub fn new(inner: R, path: &Path) -> Self {
        Self {
            inner,
            path: path.to_path_buf(),
            crc: Crc32c::default(),
            length: 0,
        }
    }
}

impl<R: Read> Read for Recorded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        self.length += n as u64;
        Ok(n)
    }
}

impl<R> Drop for Recorded<R> {
    fn drop(&mut self) {
        record(&self.path, self.length, self.crc.value());
    }
}
