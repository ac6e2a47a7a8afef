//! What a grid search chose: each method's configuration with its chosen steps, read by
//! `compare --tuned`.

use std::path::Path;

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

    /// The tuned configuration of the method called `name`, if it was tuned.
    pub fn get(&self, name: &str) -> Option<&MethodConfig> {
        self.method.iter().find(|m| m.name() == name)
    }
}
