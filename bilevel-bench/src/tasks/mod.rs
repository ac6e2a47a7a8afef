//! The three text tasks of `tasks.md`, each: its configuration (with the defaults of
//! `tasks.md`), loading and splitting its data per seed, building the bilevel problem, and its
//! evaluation metrics.

pub mod common;
pub mod dispatch;
pub mod hyper_clean;
pub mod hyper_opt;
pub mod hyper_rep;
pub mod list;
pub mod model;
pub mod task;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::data::glove::{load_glove, WordVectors};

/// Metric name → value, in a stable order.
pub type Metrics = BTreeMap<String, f64>;

/// Where the data is when no flag or environment variable says otherwise: `../shared/data`
/// relative to the checkout.
pub fn default_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

/// The data directory: the flag, else `BILEVEL_DATA_DIR`, else [`default_data_dir`]; it must exist.
pub fn resolve_data_dir(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match flag {
        Some(d) => d.to_path_buf(),
        None => std::env::var_os("BILEVEL_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(default_data_dir),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "data directory {} does not exist (set --data-dir or BILEVEL_DATA_DIR)",
            dir.display()
        );
    }
    Ok(dir)
}

/// The 50-d GloVe vectors every task reads.
pub fn load_word_vectors(data_dir: &Path) -> anyhow::Result<WordVectors> {
    let path = data_dir.join("glove/glove.6B.50d.vocab_min5.txt.gz");
    let vectors = load_glove(&path)?;
    if vectors.dim != common::EMB {
        anyhow::bail!(
            "{}: {}-d vectors, the CPU models read {}-d",
            path.display(),
            vectors.dim,
            common::EMB
        );
    }
    Ok(vectors)
}
