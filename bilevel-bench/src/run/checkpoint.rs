//! Checkpoints of a whole run: x, y, the method's state, the batch generator, the problem's
//! sampler, the evaluations so far and the iteration count, written atomically.
//!
//! Format (version 3): the magic bytes `BLVLCKPT`, the version (u32 LE), the length (u64 LE) and
//! bytes of a JSON header with everything small, then the vectors: a count (u32 LE) and for each
//! a name (u32 length + UTF-8), a length (u64) and its values as f64 LE in runs: a run is a count
//! of zeros (u64), a count of values (u64) and those values, until the length is covered. f64
//! holds f32 values exactly, so a resumed run continues bit-identically. The zero runs are there
//! because some states are mostly zeros: SABA's tables on hyper-rep hold one gradient per fixed
//! batch, each nonzero only on the heads of that batch's tasks (2.6 GB written plainly, 0.23 GB
//! in runs). Last, the CRC-32C (u32 LE) of every byte before it: a damaged file (a flipped bit, a
//! torn write that still parses) is refused instead of resuming a different run. Versions 2
//! (the same without the checksum) and 1 (the values one after another, no runs) are still read.
//!
//! Writing goes to `checkpoint.bin.tmp`, is flushed and synced, then renamed over
//! `checkpoint.bin`: a crash during a write leaves the previous checkpoint intact.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bilevel_optim::crc32c::{crc32c, Crc32c};
use bilevel_optim::optimizer::MethodState;
use bilevel_optim::oracles::OracleState;
use serde::{Deserialize, Serialize};

use crate::run::config::RunConfig;
use crate::run::durable;
use crate::run::summary::Evaluation;

/// The format written: vectors as runs of (zeros, values), then a checksum of the whole file.
pub const VERSION: u32 = 3;
/// Runs of zeros, no checksum: still read.
const UNCHECKED_VERSION: u32 = 2;
/// The format without zero runs, still read.
const PLAIN_VERSION: u32 = 1;
/// Zeros in a row below this are written as values: a run costs two counts (16 bytes).
const MIN_ZERO_RUN: usize = 4;
const MAGIC: &[u8; 8] = b"BLVLCKPT";
/// The checkpoint's file name in a run directory.
pub const FILE: &str = "checkpoint.bin";
/// The checkpoint before the latest, kept until the next one is complete.
pub const PREVIOUS_FILE: &str = "checkpoint.prev.bin";
/// Where a checkpoint is written before it is renamed into place.
const TMP_FILE: &str = "checkpoint.bin.tmp";

/// Everything but the large vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The task's name; a checkpoint of another task is refused.
    pub task: String,
    /// The method's name; a checkpoint of another method is refused.
    pub method: String,
    /// The compiled sizes the vectors belong to (e.g. "hyper-clean, 2000 training tweets").
    pub model: String,
    /// Iterations done.
    pub iteration: usize,
    /// Training time so far, without evaluations.
    pub train_seconds: f64,
    /// The method's scalar state (counters, λ, ...).
    pub method_scalars: BTreeMap<String, f64>,
    /// The oracles' counters and batch generator position.
    pub oracles: OracleState,
    /// The problem's own sampler state.
    pub sampler: Vec<u64>,
    /// Every evaluation so far.
    pub evaluations: Vec<Evaluation>,
    /// The run's configuration (TOML) as given, without the halvings of rollbacks; absent in
    /// checkpoints written before it was recorded.
    #[serde(default)]
    pub config: Option<String>,
    /// The data files the run was built from: short name to length and CRC-32C
    /// ([`crate::data::fingerprint`]); empty in checkpoints written before it was recorded.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// How many times the run rolled back with halved step sizes (`on_divergence = "rollback"`):
    /// a resumed run halves its configured steps as often.
    #[serde(default)]
    pub rollbacks: usize,
}

/// A checkpoint: the header and the named vectors (`x`, `y`, `method.<name>`).
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Everything but the large vectors.
    pub header: Header,
    /// x, y and the method's vector state, flattened.
    pub vectors: BTreeMap<String, Vec<f64>>,
}

impl Checkpoint {
    /// The method's state as saved.
    pub fn method_state(&self) -> MethodState {
        MethodState {
            method: self.header.method.clone(),
            vectors: self
                .vectors
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("method.")
                        .map(|n| (n.to_string(), v.clone()))
                })
                .collect(),
            scalars: self.header.method_scalars.clone(),
        }
    }

    /// The vector `name` (`x`, `y`, `method.<name>`) in the runs' precision, or an error
    /// naming it when the checkpoint lacks it.
    pub fn vector(&self, name: &str) -> anyhow::Result<Vec<crate::tasks::common::E>> {
        let v = self
            .vectors
            .get(name)
            .with_context(|| format!("the checkpoint has no '{name}'"))?;
        Ok(v.iter().map(|&v| v as crate::tasks::common::E).collect())
    }

    /// Writes into `dir` atomically (temporary file, flush, sync, rename), keeping the checkpoint
    /// it replaces as `checkpoint.prev.bin` until the next one is complete.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(FILE);
        let tmp = dir.join(TMP_FILE);
        let mut file = durable::create_with_capacity(&tmp, 1 << 20)?;
        self.encode(&mut file)
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        durable::sync(&mut file, &tmp)?;
        drop(file);
        if path.exists() {
            durable::rename(&path, &dir.join(PREVIOUS_FILE))?;
        }
        durable::rename(&tmp, &path)?;
        Ok(path)
    }

    /// The checkpoint as the bytes of its file, for sending to other processes
    /// ([`Checkpoint::from_bytes`] reads them back).
    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.encode(&mut bytes)?;
        Ok(bytes)
    }

    /// The checkpoint in `bytes` (from [`Checkpoint::to_bytes`]); `origin` names where they came
    /// from in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> anyhow::Result<Self> {
        Self::parse(bytes, origin, true)
    }

    /// The file's format: magic, version, header, vectors, and the CRC-32C of all of it.
    fn encode(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let header = serde_json::to_vec(&self.header)?;
        let mut out = Checksummed {
            inner: out,
            crc: Crc32c::default(),
        };
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        out.write_all(&(self.vectors.len() as u32).to_le_bytes())?;
        for (name, values) in &self.vectors {
            out.write_all(&(name.len() as u32).to_le_bytes())?;
            out.write_all(name.as_bytes())?;
            out.write_all(&(values.len() as u64).to_le_bytes())?;
            write_runs(&mut out, values)?;
        }
        let checksum = out.crc.value();
        out.inner.write_all(&checksum.to_le_bytes())?;
        Ok(())
    }

    /// Removes every checkpoint file of `dir` (latest, previous, partial).
    pub fn remove_all(dir: &Path) -> anyhow::Result<()> {
        for name in [FILE, PREVIOUS_FILE, TMP_FILE] {
            durable::remove(&dir.join(name))?;
        }
        Ok(())
    }

    /// Reads the latest good checkpoint of `dir`: `checkpoint.bin`, or when it is missing or
    /// damaged, a complete `checkpoint.bin.tmp` (a kill between the two renames of
    /// [`Checkpoint::write`]) or `checkpoint.prev.bin`, with a warning on stderr. A damaged
    /// `checkpoint.bin` is kept aside as `checkpoint.bin.damaged`, so the next write does not
    /// push the good previous checkpoint out.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(FILE);
        let tmp = dir.join(TMP_FILE);
        let previous = dir.join(PREVIOUS_FILE);
        if !path.exists() && !previous.exists() {
            if !tmp.exists() {
                bail!(
                    "{}: no checkpoint to resume from: the run stopped before its first one; \
                     nothing was lost, start the run again",
                    dir.display()
                );
            }
            if Self::read_file(&tmp, true).is_err() {
                bail!(
                    "{}: no checkpoint to resume from: the run stopped while writing its first \
                     one ({} is incomplete and is never loaded); nothing was lost, start the run \
                     again",
                    dir.display(),
                    tmp.display()
                );
            }
        }
        let latest = match Self::read_file(&path, false) {
            Ok(cp) => return Ok(cp),
            Err(e) => e,
        };
        let fallback = [(&tmp, true), (&previous, false)]
            .into_iter()
            .find_map(|(p, checked)| Self::read_file(p, checked).ok().map(|cp| (p, cp)));
        let Some((used, cp)) = fallback else {
            bail!("{latest:#} (and no good earlier checkpoint to fall back to)");
        };
        if path.exists() {
            let aside = dir.join(format!("{FILE}.damaged"));
            durable::rename(&path, &aside)?;
            eprintln!(
                "warning: {latest:#}\nwarning: moved it aside to {} and resumed from {} \
                 (iteration {})",
                aside.display(),
                used.display(),
                cp.header.iteration
            );
        } else {
            eprintln!(
                "warning: {} is missing; resumed from {} (iteration {})",
                path.display(),
                used.display(),
                cp.header.iteration
            );
        }
        Ok(cp)
    }

    /// Reads one checkpoint file; with `checked`, only a format with a checksum is accepted
    /// (for a file whose completeness nothing else vouches for).
    fn read_file(path: &Path, checked: bool) -> anyhow::Result<Self> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| format!("{}: cannot read the checkpoint", path.display()))?;
        Self::parse(&bytes, path, checked)
    }

    /// What [`Checkpoint::encode`] wrote (or an older format, unless `checked`), from `path`.
    fn parse(bytes: &[u8], path: &Path, checked: bool) -> anyhow::Result<Self> {
        let mut r = Reader { bytes, at: 0, path };
        if r.take(8)? != MAGIC {
            bail!("{}: not a bilevel-bench checkpoint", path.display());
        }
        let version = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
        if checked && version != VERSION {
            bail!("{}: a partial write, not loaded", path.display());
        }
        if ![PLAIN_VERSION, UNCHECKED_VERSION, VERSION].contains(&version) {
            bail!(
                "{}: checkpoint format version {version}, this build reads versions \
                 {PLAIN_VERSION} to {VERSION}",
                path.display()
            );
        }
        if version == VERSION {
            let Some(body) = bytes.len().checked_sub(4) else {
                bail!("{}: truncated checkpoint (no checksum)", path.display());
            };
            let saved = u32::from_le_bytes(bytes[body..].try_into().expect("4 bytes"));
            if crc32c(&bytes[..body]) != saved {
                bail!(
                    "{}: corrupt checkpoint: its checksum does not match its contents (the file \
                     is damaged; it is not loaded)",
                    path.display()
                );
            }
            r.bytes = &bytes[..body];
        }
        let header_len = r.u64()? as usize;
        let header: Header = serde_json::from_slice(r.take(header_len)?)
            .with_context(|| format!("{}: corrupt checkpoint header", path.display()))?;
        let count = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
        let mut vectors = BTreeMap::new();
        for _ in 0..count {
            let name_len = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes")) as usize;
            let name = String::from_utf8(r.take(name_len)?.to_vec())
                .with_context(|| format!("{}: corrupt vector name", path.display()))?;
            let len = r.u64()? as usize;
            let values = if version == PLAIN_VERSION {
                r.values(len)?
            } else {
                r.runs(len)?
            };
            vectors.insert(name, values);
        }
        if r.at != r.bytes.len() {
            bail!(
                "{}: {} trailing bytes after the last vector",
                path.display(),
                r.bytes.len() - r.at
            );
        }
        Ok(Self { header, vectors })
    }

    /// Fails unless the checkpoint belongs to this run: its task, method and model size, its
    /// configuration (every key but `iters`, which may be raised but not set below the
    /// checkpoint's iteration) and its data files. The error names what differs.
    pub fn check_run(
        &self,
        config: &RunConfig,
        method: &str,
        model: &str,
        data: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let h = &self.header;
        for (what, saved, wanted) in [
            ("task", h.task.as_str(), config.task.as_str()),
            ("method", &h.method, method),
            ("model size", &h.model, model),
        ] {
            if saved != wanted {
                bail!("the checkpoint is from {what} '{saved}', this run is '{wanted}'");
            }
        }
        if config.iters < h.iteration {
            bail!(
                "iters = {} is below the checkpoint's iteration {}: a run cannot be shortened \
                 after the fact (its evaluations up to iteration {} are in evaluations.csv)",
                config.iters,
                h.iteration,
                config.iters
            );
        }
        if let Some(saved) = &h.config {
            // Both through RunConfig, so keys added since (with their defaults) compare equal.
            let saved: RunConfig =
                toml::from_str(saved).context("the checkpoint's configuration")?;
            let comparable = |c: &RunConfig| {
                toml::Value::try_from(RunConfig {
                    iters: 0,
                    ..c.clone()
                })
            };
            let (saved, now) = (comparable(&saved)?, comparable(config)?);
            let mut differences = Vec::new();
            differ("", &saved, &now, &mut differences);
            if !differences.is_empty() {
                bail!(
                    "config.toml differs from the configuration the checkpoint was written with: \
                     {}; restore it, or start a new run",
                    differences.join("; ")
                );
            }
        }
        if !h.data.is_empty() && h.data != *data {
            let mut differences = Vec::new();
            for name in h
                .data
                .keys()
                .chain(data.keys())
                .collect::<std::collections::BTreeSet<_>>()
            {
                match (h.data.get(name), data.get(name)) {
                    (Some(a), Some(b)) if a != b => {
                        differences.push(format!("{name} (then {a}, now {b})"))
                    }
                    (Some(_), None) => differences.push(format!("{name} (read then, not now)")),
                    (None, Some(_)) => differences.push(format!("{name} (read now, not then)")),
                    _ => {}
                }
            }
            bail!(
                "the data differs from the data the checkpoint was built from: {}; a resumed \
                 run would not continue the same trajectory",
                differences.join(", ")
            );
        }
        Ok(())
    }
}

/// The keys (dotted paths under `at`) where `saved` and `now` differ, with both values.
fn differ(at: &str, saved: &toml::Value, now: &toml::Value, out: &mut Vec<String>) {
    let key = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match (saved, now) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            for k in a
                .keys()
                .chain(b.keys())
                .collect::<std::collections::BTreeSet<_>>()
            {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => differ(&key(k), x, y, out),
                    (Some(x), None) => out.push(format!("`{}` (was {x}, now unset)", key(k))),
                    (None, Some(y)) => out.push(format!("`{}` (was unset, now {y})", key(k))),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => out.push(format!("`{at}` (was {a}, now {b})")),
        _ => {}
    }
}

/// A writer that keeps the CRC-32C of everything written through it.
struct Checksummed<W> {
    inner: W,
    crc: Crc32c,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            bail!(
                "{}: truncated checkpoint (needs {n} more bytes at offset {})",
                self.path.display(),
                self.at
            );
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// `n` f64 values one after another.
    fn values(&mut self, n: usize) -> anyhow::Result<Vec<f64>> {
        let bytes = n.checked_mul(8).context("corrupt vector length")?;
        Ok(self
            .take(bytes)?
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    /// A vector of `len` values written by [`write_runs`].
    fn runs(&mut self, len: usize) -> anyhow::Result<Vec<f64>> {
        let mut values = Vec::new();
        while values.len() < len {
            let zeros = self.u64()? as usize;
            let literal = self.u64()? as usize;
            let end = values
                .len()
                .checked_add(zeros)
                .and_then(|n| n.checked_add(literal))
                .filter(|&n| n <= len);
            if end.is_none() || zeros + literal == 0 {
                bail!(
                    "{}: corrupt checkpoint (a run of {zeros} zeros and {literal} values at \
                     offset {} in a vector of {len})",
                    self.path.display(),
                    self.at
                );
            }
            // A damaged count can claim any number of zeros: a size that cannot be allocated is
            // an error, not an abort.
            values.try_reserve(zeros).map_err(|_| {
                anyhow::anyhow!(
                    "{}: corrupt checkpoint (a run of {zeros} zeros does not fit in memory)",
                    self.path.display()
                )
            })?;
            values.resize(values.len() + zeros, 0.0);
            values.extend(self.values(literal)?);
        }
        Ok(values)
    }
}

/// `values` as runs of (zeros, values): a run of at least [`MIN_ZERO_RUN`] positive zeros (the
/// bit pattern of 0.0, so that −0.0 comes back as it was) is written as a count.
fn write_runs(out: &mut impl Write, values: &[f64]) -> std::io::Result<()> {
    let is_zero = |v: &f64| v.to_bits() == 0;
    let mut at = 0;
    while at < values.len() {
        let zeros = values[at..].iter().take_while(|v| is_zero(v)).count();
        let zeros = if zeros >= MIN_ZERO_RUN || at + zeros == values.len() {
            zeros
        } else {
            0
        };
        let start = at + zeros;
        // Values up to the next run of zeros long enough to pay for a run.
        let mut end = start;
        while end < values.len() {
            let run = values[end..]
                .iter()
                .take(MIN_ZERO_RUN)
                .take_while(|v| is_zero(v))
                .count();
            if run == MIN_ZERO_RUN || (run > 0 && end + run == values.len()) {
                break;
            }
            end += run.max(1);
        }
        out.write_all(&(zeros as u64).to_le_bytes())?;
        out.write_all(&((end - start) as u64).to_le_bytes())?;
        for v in &values[start..end] {
            out.write_all(&v.to_le_bytes())?;
        }
        at = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(vectors: &[(&str, Vec<f64>)]) -> Checkpoint {
        Checkpoint {
            header: Header {
                task: "hyper-rep".into(),
                method: "saba".into(),
                model: "test".into(),
                iteration: 3,
                train_seconds: 1.5,
                method_scalars: BTreeMap::new(),
                oracles: OracleState {
                    counts: Default::default(),
                    seed: [3; 32],
                    stream: 0,
                    word_pos: 12,
                },
                sampler: vec![7],
                evaluations: vec![],
                config: Some("seed = 3\n".into()),
                data: [("glove/vectors.txt".to_string(), "9 bytes".to_string())].into(),
                rollbacks: 1,
            },
            vectors: vectors
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
        }
    }

    /// Every vector comes back bit for bit, whatever its zeros (none, all, short runs, runs at
    /// either end, −0.0, NaN payloads), and a sparse one takes a small part of its plain size.
    #[test]
    fn vectors_with_any_zeros_come_back_bit_for_bit() {
        let dir = std::env::temp_dir().join(format!("bilevel-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut sparse = vec![0.0; 100_000];
        for k in (0..sparse.len()).step_by(997) {
            sparse[k] = k as f64 * 0.5 - 3.0;
        }
        let vectors = [
            ("empty", vec![]),
            ("dense", vec![1.0, -2.5, 3.25, f64::MIN_POSITIVE]),
            ("zeros", vec![0.0; 9]),
            ("one zero", vec![0.0]),
            (
                "short runs",
                vec![1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0],
            ),
            (
                "long runs",
                vec![0.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0],
            ),
            (
                "signed",
                vec![-0.0, -0.0, -0.0, -0.0, -0.0, 0.0, 0.0, 0.0, 0.0],
            ),
            (
                "nan",
                vec![f64::from_bits(0x7ff8_0000_0000_1234), f64::INFINITY, 0.0],
            ),
            ("sparse", sparse),
        ];
        let written = checkpoint(&vectors);
        written.write(&dir).unwrap();
        let read = Checkpoint::read(&dir).unwrap();
        assert_eq!(read.header, written.header);
        for (name, values) in &vectors {
            let back = &read.vectors[*name];
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(back), bits(values), "{name}");
        }
        let size = std::fs::metadata(dir.join(FILE)).unwrap().len();
        assert!(size < 100_000 * 8 / 20, "{size} bytes");

        // A run that claims more values than the vector holds is refused, not read past.
        let mut bytes = std::fs::read(dir.join(FILE)).unwrap();
        let at = bytes.len() - 8 * 12;
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(dir.join(FILE), &bytes).unwrap();
        let err = Checkpoint::read(&dir).unwrap_err().to_string();
        assert!(
            err.contains("corrupt checkpoint") || err.contains("truncated"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// One flipped bit anywhere (here in a value, where the format itself would still parse) is
    /// refused by the checksum; the same file as version 2 (no checksum) is still read.
    #[test]
    fn a_damaged_checkpoint_is_refused_and_version_2_still_reads() {
        let dir = std::env::temp_dir().join(format!("bilevel-ckpt-crc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = checkpoint(&[("x", vec![1.0, 2.0, 3.0]), ("y", vec![0.5; 8])]);
        written.write(&dir).unwrap();
        let good = std::fs::read(dir.join(FILE)).unwrap();
        assert_eq!(Checkpoint::read(&dir).unwrap(), written);

        let mut flipped = good.clone();
        let at = good.len() - 4 - 8 * 3; // inside y's values
        flipped[at] ^= 0x10;
        std::fs::write(dir.join(FILE), &flipped).unwrap();
        let err = Checkpoint::read(&dir).unwrap_err().to_string();
        assert!(err.contains("checksum does not match"), "{err}");

        let mut v2 = good[..good.len() - 4].to_vec();
        v2[8..12].copy_from_slice(&UNCHECKED_VERSION.to_le_bytes());
        std::fs::write(dir.join(FILE), &v2).unwrap();
        assert_eq!(Checkpoint::read(&dir).unwrap(), written);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The checkpoint before the latest is kept: when the latest is damaged, the run resumes from
    /// the previous one, and the damaged file is kept aside (not deleted, not pushed over the
    /// good previous one by the next write). A kill between the two renames of a write (latest
    /// missing, complete temporary file) resumes from the temporary file.
    #[test]
    fn a_damaged_latest_checkpoint_falls_back_to_the_previous_one() {
        let dir = std::env::temp_dir().join(format!("bilevel-ckpt-prev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut first = checkpoint(&[("x", vec![1.0, 2.0]), ("y", vec![0.5; 3])]);
        first.header.iteration = 4;
        first.write(&dir).unwrap();
        let mut second = first.clone();
        second.header.iteration = 8;
        second.write(&dir).unwrap();
        assert!(dir.join(PREVIOUS_FILE).is_file());
        assert_eq!(Checkpoint::read(&dir).unwrap(), second);

        let mut bytes = std::fs::read(dir.join(FILE)).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 1;
        std::fs::write(dir.join(FILE), &bytes).unwrap();
        assert_eq!(Checkpoint::read(&dir).unwrap(), first);
        assert_eq!(
            std::fs::read(dir.join(format!("{FILE}.damaged"))).unwrap(),
            bytes,
            "kept aside"
        );
        let mut third = first.clone();
        third.header.iteration = 12;
        third.write(&dir).unwrap();
        assert_eq!(Checkpoint::read(&dir).unwrap(), third);
        // Killed between the renames: no latest, a complete temporary file.
        std::fs::rename(dir.join(FILE), dir.join(TMP_FILE)).unwrap();
        assert_eq!(Checkpoint::read(&dir).unwrap(), third);
        // Both damaged: an error naming the latest's damage.
        std::fs::write(dir.join(TMP_FILE), &bytes[..n / 2]).unwrap();
        std::fs::write(dir.join(PREVIOUS_FILE), &bytes).unwrap();
        let err = format!("{:#}", Checkpoint::read(&dir).unwrap_err());
        assert!(err.contains("no good earlier checkpoint"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A version-1 checkpoint (the values one after another) is still read.
    #[test]
    fn plain_checkpoints_of_version_1_are_read() {
        let dir = std::env::temp_dir().join(format!("bilevel-ckpt-v1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = checkpoint(&[("x", vec![0.0, 0.0, 0.0, 0.0, 0.0, 1.5]), ("y", vec![])]);
        let header = serde_json::to_vec(&written.header).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&PLAIN_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&2u32.to_le_bytes());
        for (name, values) in &written.vectors {
            bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(&(values.len() as u64).to_le_bytes());
            for v in values {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        std::fs::write(dir.join(FILE), &bytes).unwrap();
        assert_eq!(Checkpoint::read(&dir).unwrap(), written);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
