//! Builds the bilevel problem of a configured task and hands it, with its starting x and y and
//! its evaluation, to a [`TaskVisitor`]. The task types differ (heads compiled in, weight vector
//! lengths), so whoever needs "the problem of this config" (a run, a performance measurement, a
//! check) implements the visitor once instead of repeating the dispatch. The precision `F` is
//! the visitor's: runs use f32 ([`crate::tasks::common::E`]), `check` uses f64.

use std::path::Path;

use bilevel_optim::real::Real;
use dfdx::prelude::{Cpu, Device};

use crate::run::config::{RunConfig, TaskName};
use crate::tasks::task::Task;
pub use crate::tasks::task::{TaskProblem, TaskVisitor};

/// Declares [`with_task`] from the task list ([`crate::with_task_list`]).
macro_rules! declare_with_task {
    ($($variant:ident, $key:ident, $task:ty, $doc:literal;)+) => {
        /// Loads `config`'s task from `data_dir`, builds its problem and initial variables on
        /// `dev` and passes them to `visitor`.
        pub fn with_task<F: Real, V: TaskVisitor<F>>(
            config: &RunConfig,
            data_dir: &Path,
            dev: &Cpu,
            visitor: V,
        ) -> anyhow::Result<V::Output>
        where
            Cpu: Device<F>,
        {
            match config.task {
                $(TaskName::$variant => {
                    <$task as Task>::with_problem(&config.$key, config.model, config.seed, data_dir, dev, visitor)
                })+
            }
        }
    };
}

crate::with_task_list!(declare_with_task);
