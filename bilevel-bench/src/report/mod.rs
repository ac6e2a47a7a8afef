//! Many runs and what they show: comparisons of methods over seeds ([`compare`]), grid searches
//! of step sizes ([`tune`], choosing [`tuned`] configurations), their statistics ([`stats`]),
//! plots ([`plot`]) and the threads they run on ([`parallel`]).

pub mod compare;
pub mod parallel;
pub mod plot;
pub mod stats;
pub mod tune;
pub mod tuned;
