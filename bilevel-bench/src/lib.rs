//! bilevel-bench as a library: data loaders, the three text tasks, run configuration, logging
//! and comparison, used by the `bilevel-bench` command and by its tests.

pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod data;
pub mod logging;
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
