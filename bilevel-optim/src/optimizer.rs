//! The contract every bilevel method implements, and what it reports.

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use crate::error::BilevelError;
use crate::oracles::{OracleCounts, Oracles};
use crate::problem::BilevelProblem;
use crate::real::Real;
pub use crate::state::MethodState;

/// A stochastic bilevel method: advances (x, y, and its own state) by one iteration.
///
/// The method owns its auxiliary state (z, momenta, counters); the caller owns x and y and the
/// [`Oracles`], through which every batch is drawn and every oracle call is counted.
pub trait BilevelOptimizer<E: Real, P: BilevelProblem<E>>
where
    Cpu: Device<E>,
{
    /// The method's name as users select it (`"bo-rep"`, `"stocbio"`, ...).
    fn name(&self) -> &'static str;

    /// Runs one iteration, starting with [`Oracles::begin_iteration`]. Fails, leaving x and y at
    /// their last finite values where the method can, when a loss, gradient or parameter
    /// becomes non-finite.
    fn step(
        &mut self,
        oracles: &mut Oracles<E, P>,
        x: &mut P::X,
        y: &mut P::Y,
    ) -> Result<StepReport, BilevelError>;

    /// Everything that must survive a restart, besides x, y and the oracles' state.
    fn state(&self) -> MethodState;

    /// Restores what [`BilevelOptimizer::state`] saved.
    fn load_state(&mut self, state: &MethodState) -> Result<(), BilevelError>;
}

/// What one iteration saw and did. Values are `None` where the method did not compute them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Index of the iteration just run (0-based).
    pub iteration: u64,
    /// `F(x_t, y_t; ξ_t)` on the iteration's upper batch.
    pub upper_loss: Option<f64>,
    /// `G(·, ·; ζ)` on the last lower batch the iteration evaluated.
    pub lower_loss: Option<f64>,
    /// Norm of the hypergradient estimate `h_t` (before any momentum or normalization).
    pub hypergrad_norm: f64,
    /// Norm of the lower gradient `∇_y G` on the iteration's lower batch.
    pub lower_grad_norm: Option<f64>,
    /// Norm of the linear-system residual `∇²_yy G·z − ∇_y F`, for methods that keep a z.
    pub linear_system_residual: Option<f64>,
    /// Multiplier applied to the update direction of x (for a normalized method, `η/‖m‖`).
    pub step_size: f64,
    /// Euclidean length of the step the rule takes on x (before the problem's projection, if
    /// any).
    pub x_step_norm: f64,
    /// Oracle calls made during this iteration.
    pub oracle_calls: OracleCounts,
    /// Cumulative oracle calls after this iteration.
    pub oracle_totals: OracleCounts,
}

impl StepReport {
    /// The report's per-iteration scalars under their TensorBoard tags (the bench's `steps.csv`
    /// columns), `None` where the method did not compute the value. Oracle counts are the
    /// cumulative totals.
    pub fn scalars(&self) -> [(&'static str, Option<f64>); 11] {
        let t = &self.oracle_totals;
        [
            ("train/upper_loss", self.upper_loss),
            ("train/lower_loss", self.lower_loss),
            ("train/hypergradient_norm", Some(self.hypergrad_norm)),
            ("train/lower_grad_norm", self.lower_grad_norm),
            ("train/linear_system_residual", self.linear_system_residual),
            ("train/step_size", Some(self.step_size)),
            ("oracle/upper_grad", Some(t.upper_grad as f64)),
            ("oracle/lower_grad", Some(t.lower_grad as f64)),
            ("oracle/hvp", Some(t.hvp as f64)),
            ("oracle/jvp", Some(t.jvp as f64)),
            (
                "oracle/total",
                Some((t.upper_grad + t.lower_grad + t.hvp + t.jvp) as f64),
            ),
        ]
    }
}
