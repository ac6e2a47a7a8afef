//! The subcommands besides run, compare and tune: [`check`] a task's problem, time it
//! ([`perf`]), run a method on the closed-form problems ([`synthetic`]), and judge a finished
//! run's x by the lower problem alone ([`refit`]).

pub mod check;
pub mod perf;
pub mod refit;
pub mod synthetic;
