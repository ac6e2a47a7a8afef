//! bilevel-bench as a library: data loaders, the three text tasks, run configuration, logging
//! and comparison, used by the `bilevel-bench` command and by its tests.
//!
//! - [`config::RunConfig`]: one run's settings (TOML); [`runner::run`] runs it into a directory
//!   with [`logging::RunLogger`] (TensorBoard and CSV) and [`checkpoint`]s, [`runner::resume`]
//!   continues it.
//! - [`compare::compare`] and [`tune::tune`]: methods × seeds, and step-size grids.
//! - [`tasks`]: the three text tasks on real data; [`tasks::dispatch::with_task`] hands a
//!   configured task's problem to a [`tasks::dispatch::TaskVisitor`].
//! - [`problem_check::check_task`]: `bilevel_optim::check` on a task, in f64.
//! - [`data`]: loaders for the review and tweet formats and GloVe, with errors naming file and
//!   line.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod data;
pub mod durable;
pub mod faults;
pub mod lock;
pub mod logging;
pub mod methods;
pub mod parallel;
pub mod perf;
pub mod plot;
pub mod problem_check;
pub mod runner;
pub mod synthetic;
pub mod tasks;
pub mod tune;

use bilevel_optim::methods::MethodConfig;
use config::RunConfig;

/// `config` with the method called `method` (when given): the config's own `[method]` table if it
/// configures that method, else the method's defaults (for BO-REP, the task's official values).
pub fn task_config(mut config: RunConfig, method: Option<&str>) -> anyhow::Result<RunConfig> {
    if let Some(name) = method {
        let keep = config.method.as_ref().is_some_and(|m| m.name() == name);
        if !keep {
            config.method = Some(if name == "bo-rep" {
                config.task.default_method()
            } else {
                MethodConfig::default_for(name)?
            });
        }
    }
    Ok(config)
}
