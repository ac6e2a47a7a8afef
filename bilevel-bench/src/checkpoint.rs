//! Checkpoints of a whole run: x, y, the method's state, the batch generator, the problem's
//! sampler, the evaluations so far and the iteration count, written atomically.
//!
//! Format (version 1): the magic bytes `BLVLCKPT`, the version (u32 LE), the length (u64 LE) and
//! bytes of a JSON header with everything small, then the vectors: a count (u32 LE) and for each
//! a name (u32 length + UTF-8), a length (u64) and its values as f64 LE. f64 holds f32 values
//! exactly, so a resumed run continues bit-identically.
//!
//! Writing goes to `checkpoint.bin.tmp`, is flushed and synced, then renamed over
//! `checkpoint.bin`: a crash during a write leaves the previous checkpoint intact.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bilevel_optim::optimizer::MethodState;
use bilevel_optim::oracles::OracleState;
use serde::{Deserialize, Serialize};

use crate::runner::Evaluation;

pub const VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"BLVLCKPT";
pub const FILE: &str = "checkpoint.bin";

/// Everything but the large vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub task: String,
    pub method: String,
    /// The compiled sizes the vectors belong to (e.g. "hyper-clean, 2000 training tweets").
    pub model: String,
    /// Iterations done.
    pub iteration: usize,
    pub train_seconds: f64,
    pub method_scalars: BTreeMap<String, f64>,
    pub oracles: OracleState,
    pub sampler: Vec<u64>,
    pub evaluations: Vec<Evaluation>,
}

/// A checkpoint: the header and the named vectors (`x`, `y`, `method.<name>`).
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub header: Header,
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

    /// Writes into `dir` atomically (temporary file, flush, sync, rename).
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let header = serde_json::to_vec(&self.header)?;
        let mut bytes = Vec::with_capacity(
            64 + header.len()
                + self
                    .vectors
                    .values()
                    .map(|v| 8 * v.len() + 64)
                    .sum::<usize>(),
        );
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&(self.vectors.len() as u32).to_le_bytes());
        for (name, values) in &self.vectors {
            bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(&(values.len() as u64).to_le_bytes());
            for v in values {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        let mut file = std::fs::File::create(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        file.write_all(&bytes)
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("{}: cannot sync", tmp.display()))?;
        drop(file);
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("{}: cannot rename into place", path.display()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(path)
    }

    /// Reads `dir/checkpoint.bin` (a leftover `.tmp` from an interrupted write is ignored).
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(FILE);
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| format!("{}: cannot read the checkpoint", path.display()))?;
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
            path: &path,
        };
        if r.take(8)? != MAGIC {
            bail!("{}: not a bilevel-bench checkpoint", path.display());
        }
        let version = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
        if version != VERSION {
            bail!(
                "{}: checkpoint format version {version}, this build reads version {VERSION}",
                path.display()
            );
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
            let raw = r.take(len.checked_mul(8).context("corrupt vector length")?)?;
            let values = raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            vectors.insert(name, values);
        }
        if r.at != bytes.len() {
            bail!(
                "{}: {} trailing bytes after the last vector",
                path.display(),
                bytes.len() - r.at
            );
        }
        Ok(Self { header, vectors })
    }

    /// Fails unless the checkpoint belongs to this task, method and model size.
    pub fn check_identity(&self, task: &str, method: &str, model: &str) -> anyhow::Result<()> {
        let h = &self.header;
        for (what, saved, wanted) in [
            ("task", &h.task, task),
            ("method", &h.method, method),
            ("model size", &h.model, model),
        ] {
            if saved != wanted {
                bail!("the checkpoint is from {what} '{saved}', this run is '{wanted}'");
            }
        }
        Ok(())
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
}
