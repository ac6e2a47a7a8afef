//! What a grid search chose: each method's configuration with its chosen steps, read by
//! `compare --tuned`, from one `tuned.toml` or from several (methods tuned by separate runs).

use std::path::{Path, PathBuf};

use anyhow::Context;
use bilevel_optim::methods::MethodConfig;
use serde::{Deserialize, Serialize};

use crate::run::config::TaskName;

/// The chosen configuration of each method, as `tuned.toml` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuned {
    /// The task the values were chosen on.
    pub task: TaskName,
    /// Each method's configuration with its chosen steps.
    pub method: Vec<MethodConfig>,
}

impl Tuned {
    /// Reads a `tuned.toml`, naming the file in errors.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the tuned configurations", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Reads several `tuned.toml` files as one: every method of each, in order. They must be
    /// tuned on the same task, and no method may appear in two of them (which one would run is
    /// then not clear); either is an error naming both files.
    pub fn from_files(paths: &[PathBuf]) -> anyhow::Result<Self> {
        let (first, rest) = paths
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("no tuned.toml given"))?;
        let mut merged = Self::from_file(first)?;
        let mut source: Vec<&Path> = vec![first; merged.method.len()];
        for path in rest {
            let next = Self::from_file(path)?;
            if next.task != merged.task {
                anyhow::bail!(
                    "{}: tuned on {}, but {} on {}; give files of one task",
                    path.display(),
                    next.task.as_str(),
                    first.display(),
                    merged.task.as_str()
                );
            }
            for method in next.method {
                if let Some(i) = merged.method.iter().position(|m| m.name() == method.name()) {
                    anyhow::bail!(
                        "{}: {} is tuned in both this file and {}; give each method once",
                        path.display(),
                        method.name(),
                        source[i].display()
                    );
                }
                merged.method.push(method);
                source.push(path);
            }
        }
        Ok(merged)
    }

    /// The tuned configuration of the method called `name`, if it was tuned.
    pub fn get(&self, name: &str) -> Option<&MethodConfig> {
        self.method.iter().find(|m| m.name() == name)
    }
}
