//! The subcommands besides run, compare and tune: [`check`] a task's problem, time it
//! ([`perf`]), and run a method on the closed-form problems ([`synthetic`]).

pub mod check;
pub mod perf;
pub mod synthetic;
