//! Errors the library reports instead of panicking or writing NaN.

/// What went wrong, named precisely enough to act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BilevelError {
    /// A configuration value is out of its valid range.
    #[error("invalid configuration: `{field}` {reason}")]
    InvalidConfig {
        /// The configuration key.
        field: &'static str,
        /// What the value must be.
        reason: String,
    },

    /// A loss, gradient or parameter became NaN or infinite.
    #[error(
        "{method}: {quantity} is not finite at iteration {iteration}; lower the step sizes ({hint})"
    )]
    NonFinite {
        /// The method's name.
        method: &'static str,
        /// What became non-finite, with the tensor's name.
        quantity: String,
        /// The iteration at which it happened.
        iteration: u64,
        /// The step sizes to lower, named as in the method's configuration.
        hint: &'static str,
    },

    /// The user's written lower gradient does not cover `y` exactly once.
    #[error("written lower gradient ∇_y g is malformed: {0}")]
    WrittenGradient(String),

    /// The problem's written gradient or its products failed [`crate::check`]; every fault is
    /// listed with its tensor and what it suggests.
    #[error("the problem failed its check:\n{0}")]
    ProblemCheck(String),

    /// A saved optimizer state does not fit the optimizer or model it is loaded into.
    #[error("cannot load state: {0}")]
    StateMismatch(String),

    /// The processes sharing the oracle passes ([`crate::distributed`]) could not combine their
    /// results or no longer agree on the run's state.
    #[error("distributed run: {0}")]
    Distributed(String),
}
