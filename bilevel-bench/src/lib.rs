//! bilevel-bench as a library: data loaders, the three text tasks, runs, comparisons and tuning,
//! used by the `bilevel-bench` command and by its tests. Laid out by purpose:
//!
//! - [`run`]: one run into its own directory. [`run::config::RunConfig`] is its settings
//!   (TOML); [`run::run`] runs it with [`run::logging::RunLogger`] (TensorBoard and CSV) and
//!   [`run::checkpoint`]s, [`run::resume`] continues it; [`run::methods::register`] adds a
//!   method of your own.
//! - [`report`]: methods × seeds ([`report::compare::compare`]) and step-size grids
//!   ([`report::tune::tune`]), with tables and plots.
//! - [`tasks`]: the three text tasks on real data; [`tasks::dispatch::with_task`] hands a
//!   configured task's problem to a [`tasks::dispatch::TaskVisitor`].
//! - [`commands`]: the other subcommands: `check` (`bilevel_optim::check` on a task, in f64),
//!   `perf` (iteration and oracle timings), `synthetic` (the closed-form problems).
//! - [`data`]: loaders for the review and tweet formats and GloVe, with errors naming file and
//!   line.
#![warn(missing_docs)]

pub mod commands;
pub mod data;
pub mod report;
pub mod run;
pub mod tasks;
