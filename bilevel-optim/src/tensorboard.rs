//! TensorBoard logging: scalar events in the file format `tensorboard --logdir DIR` reads, with
//! every write error returned to the caller (a full disk or a read-only directory stops a run
//! cleanly instead of aborting it).
//!
//! [`EventWriter`] writes scalars; [`TensorBoardLog`] writes every [`StepReport`] as scalars under
//! the tags the `bilevel-bench` command also uses.
//!
//! ```no_run
//! # fn demo(report: &bilevel_optim::optimizer::StepReport) -> std::io::Result<()> {
//! let mut log = bilevel_optim::tensorboard::TensorBoardLog::create("runs/my-problem")?;
//! log.step(report)?;                              // train/upper_loss, oracle/hvp, ...
//! log.scalar("eval/validation_accuracy", 0.91, report.iteration as usize + 1)?;
//! log.flush()?;
//! # Ok(()) }
//! ```
//!
//! The format: a file `events.out.tfevents.*` of TFRecords (length, masked CRC-32C of the
//! length, data, masked CRC-32C of the data), each holding one `Event` protocol buffer. The
//! first event names the file version; each later one holds a wall time, a step, and a
//! `Summary` with one simple value. Only the few protobuf fields a scalar needs are encoded.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::crc32c::crc32c;
use crate::optimizer::StepReport;

/// A writer of scalar events into one event file.
pub struct EventWriter {
    path: PathBuf,
    out: Box<dyn Write + Send>,
}

impl EventWriter {
    /// Creates `dir` (and its parents) and a new event file in it, named by
    /// [`EventWriter::new_file_path`].
    pub fn create(dir: impl AsRef<Path>) -> std::io::Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| with_path(dir, "cannot create", e))?;
        let path = Self::new_file_path(dir);
        let file = File::create(&path).map_err(|e| with_path(&path, "cannot create", e))?;
        Self::from_writer(path, Box::new(BufWriter::new(file)))
    }

    /// A name for a new event file in `dir`, after the time and the process as TensorBoard's
    /// own writers do, and not yet taken, so two writers never share a file.
    pub fn new_file_path(dir: &Path) -> PathBuf {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!(
            "events.out.tfevents.{now:010}.bilevel.{}",
            std::process::id()
        );
        (0..)
            .map(|n| {
                dir.join(if n == 0 {
                    name.clone()
                } else {
                    format!("{name}.{n}")
                })
            })
            .find(|p| !p.exists())
            .expect("a free name")
    }

    /// An event writer over any byte sink (`path` names it in errors), starting with the
    /// file-version event.
    pub fn from_writer(path: PathBuf, out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let mut writer = Self { path, out };
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_bytes(&mut event, 3, b"brain.Event:2");
        writer.record(&event)?;
        Ok(writer)
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The scalar `value` under `tag` at `step` (stored as f32, as TensorBoard does).
    pub fn scalar(&mut self, tag: &str, value: f64, step: usize) -> std::io::Result<()> {
        let mut simple = Vec::new();
        put_bytes(&mut simple, 1, tag.as_bytes());
        simple.push(0x15); // field 2, 32-bit: simple_value
        simple.extend_from_slice(&(value as f32).to_le_bytes());
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, &simple);
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_varint_field(&mut event, 2, step as u64);
        put_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    /// Writes the buffered events to the file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out
            .flush()
            .map_err(|e| with_path(&self.path, "cannot write", e))
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let length = (data.len() as u64).to_le_bytes();
        let mut framed = Vec::with_capacity(data.len() + 16);
        framed.extend_from_slice(&length);
        framed.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
        framed.extend_from_slice(data);
        framed.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.out
            .write_all(&framed)
            .map_err(|e| with_path(&self.path, "cannot write", e))
    }
}

/// A run's TensorBoard log: every [`StepReport`] as scalars, plus any scalar of the user's own.
pub struct TensorBoardLog {
    writer: EventWriter,
}

impl TensorBoardLog {
    /// Creates `dir` (and its parents) and a new event file in it.
    pub fn create(dir: impl AsRef<Path>) -> std::io::Result<Self> {
        Ok(Self {
            writer: EventWriter::create(dir)?,
        })
    }

    /// The report's scalars ([`StepReport::scalars`]) at step `iteration + 1`, the number of
    /// iterations done; values the method did not compute are skipped.
    pub fn step(&mut self, report: &StepReport) -> std::io::Result<()> {
        let step = report.iteration as usize + 1;
        for (tag, value) in report.scalars() {
            if let Some(v) = value {
                self.writer.scalar(tag, v, step)?;
            }
        }
        Ok(())
    }

    /// Any scalar of the user's own (an evaluation metric, a timing) at `step`.
    pub fn scalar(&mut self, tag: &str, value: f64, step: usize) -> std::io::Result<()> {
        self.writer.scalar(tag, value, step)
    }

    /// Writes the buffered events to the file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

fn with_path(path: &Path, what: &str, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint field (wire type 0).
fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, v);
}

/// A 64-bit field (wire type 1).
fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_varint(out, (u64::from(field) << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

/// A length-delimited field (wire type 2): a string, bytes or a nested message.
fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The masking TFRecords apply to their checksums.
fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that fails as a full disk does.
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device",
            ))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_is_an_error_naming_the_file_not_a_panic() {
        let err = EventWriter::from_writer(PathBuf::from("runs/x/events"), Box::new(Full))
            .err()
            .expect("the first record fails");
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
        assert!(
            err.to_string().contains("runs/x/events: cannot write"),
            "{err}"
        );
    }
}
