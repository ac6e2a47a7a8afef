//! Fault injection at the run's writes, for the tests that prove a kill or a full disk at any
//! instant loses nothing (docs/reliability.md).
//!
//! Every write a run makes to its directory goes through a numbered *write point*: each write
//! of bytes to a file ([`Watched`]), each sync, rename and removal ([`point`]). The environment
//! variable `BILEVEL_FAULT_AT` picks one:
//! - `N` (or `N:kill`): at the N-th point the process exits at once with status 137, as a
//!   SIGKILL would leave it: buffered data is lost, and a write of bytes is torn (its first
//!   half reaches the file, the rest does not).
//! - `N:full`: from the N-th point on, every write fails with "no space left on device".
//!
//! Unset (always, outside the tests), a point costs one atomic increment.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The variable that selects the fault.
pub const ENV: &str = "BILEVEL_FAULT_AT";

/// The exit status of an injected kill (128 + SIGKILL), so a test tells it from an error exit.
pub const KILLED_STATUS: i32 = 137;

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Kill(u64),
    Full(u64),
}

fn fault() -> Option<Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    *FAULT.get_or_init(|| {
        let text = std::env::var(ENV).ok()?;
        let (n, kind) = text.split_once(':').unwrap_or((&text, "kill"));
        let n: u64 = n.trim().parse().ok()?;
        match kind.trim() {
            "kill" => Some(Fault::Kill(n)),
            "full" => Some(Fault::Full(n)),
            _ => None,
        }
    })
}

static POINTS: AtomicU64 = AtomicU64::new(0);

/// What happens at this point.
enum Action {
    Go,
    Kill,
    Full,
}

fn next_point() -> Action {
    let n = POINTS.fetch_add(1, Ordering::SeqCst) + 1;
    match fault() {
        Some(Fault::Kill(k)) if n == k => Action::Kill,
        Some(Fault::Full(k)) if n >= k => Action::Full,
        _ => Action::Go,
    }
}

fn die(what: &str, path: &Path) -> ! {
    eprintln!("fault injected: killed at {what} {}", path.display());
    std::process::exit(KILLED_STATUS)
}

fn full(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        format!(
            "{}: no space left on device (injected by {ENV})",
            path.display()
        ),
    )
}

/// A write point before an operation on `path` that is not a write of bytes (sync, rename,
/// removal): an injected kill happens before the operation, an injected full disk fails it.
pub fn point(what: &str, path: &Path) -> io::Result<()> {
    match next_point() {
        Action::Go => Ok(()),
        Action::Kill => die(what, path),
        Action::Full => Err(full(path)),
    }
}

/// A file (or any sink) whose every write of bytes is a write point. Put it under the
/// `BufWriter`, so a point is a real write to the file and an injected kill loses what a real
/// one would: the buffer.
pub struct Watched<W> {
    inner: W,
    path: std::path::PathBuf,
}

impl<W: Write> Watched<W> {
    /// `inner`, written to `path`.
    pub fn new(inner: W, path: &Path) -> Self {
        Self {
            inner,
            path: path.to_path_buf(),
        }
    }

    /// The sink.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match next_point() {
            Action::Go => self.inner.write(buf),
            Action::Full => Err(full(&self.path)),
            Action::Kill => {
                // A torn write: the first half reaches the file.
                let _ = self.inner.write_all(&buf[..buf.len() / 2]);
                let _ = self.inner.flush();
                die("a write to", &self.path)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
