//! The methods the bench runs by name: the library's built-in ones and any method its user
//! registers with [`register`], which `run`, `compare` and `tune` then accept like the others
//! (`examples/own_method.rs`).
//!
//! A configuration names its method without its type; the bench needs the type to build the
//! optimizer for each task's problem. So every method has an entry here holding the run
//! ([`crate::run::iterate::execute`]) instantiated for its type.

use std::path::Path;

use anyhow::{anyhow, Result};
use bilevel_optim::methods::registry::{MethodEntry, MethodTable};
use bilevel_optim::methods::Method;

use crate::run::checkpoint::Checkpoint;
use crate::run::config::RunConfig;
use crate::run::processes::Processes;
use crate::run::summary::RunSummary;

/// Runs a configuration into a directory (see [`crate::run::run_shared`]), continuing from a
/// checkpoint when one is given.
pub type Execute =
    fn(&RunConfig, &Path, &Path, bool, Option<Checkpoint>, &Processes) -> Result<RunSummary>;

/// What the bench does with one method, instantiated for its type.
#[derive(Clone, Copy)]
pub struct Entry {
    /// The run of one (task, method, seed).
    pub execute: Execute,
}

impl MethodEntry for Entry {
    fn of<M: Method>() -> Self {
        Self {
            execute: crate::run::iterate::execute::<M>,
        }
    }
}

/// The methods the bench runs.
static BENCH: MethodTable<Entry> = MethodTable::new();

/// Makes method `M`, written outside the library, runnable by name: its configuration is then
/// read from TOML (`method = "<M::NAME>"`), and `run`, `compare` and `tune` run it like any
/// built-in method. Registering the same method twice is harmless; a name already taken by
/// another method is refused.
pub fn register<M: Method>() -> Result<()> {
    bilevel_optim::methods::register::<M>()?;
    BENCH.register::<M>()?;
    Ok(())
}

/// What the bench does with the method called `name`.
pub fn entry(name: &str) -> Result<Entry> {
    BENCH.find(name).ok_or_else(|| {
        anyhow!(
            "method '{name}' is not known to the bench: register it with \
             bilevel_bench::run::methods::register"
        )
    })
}
