//! Many runs and what they show: comparisons of methods over seeds ([`compare`]), grid searches
//! of step sizes ([`tune`], choosing [`tuned`] configurations), their statistics ([`stats`]),
//! plots ([`plot`]) and the threads they run on ([`parallel`]).

pub mod compare;
pub mod parallel;
pub mod plot;
pub mod stats;
pub mod tune;
pub mod tuned;

use bilevel_optim::error::BilevelError;

/// Whether `e` is a divergence (a non-finite value) rather than a failure of the bench itself:
/// `tune` and `compare` record a diverged run as a result and go on.
pub(crate) fn is_divergence(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<BilevelError>(),
            Some(BilevelError::NonFinite { .. })
        )
    })
}

/// The file in which a run that diverged records why, so that a later `tune` or `compare` over
/// the same `--out` reuses the outcome instead of running it again.
pub(crate) const DIVERGED_FILE: &str = "diverged.txt";
