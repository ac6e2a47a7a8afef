//! SPABA (Chu, Xu, Yao, Zhang, ICML 2024): SRBA's SARAH recursion on SOBA's directions with the
//! PAGE restart: at each iteration, with probability p the directions are recomputed on the whole
//! data, else corrected on one fresh ζ, ξ; three constant steps.
//!
//! ```text
//! D(x, y, z; ζ, ξ) = (∇_y G,  H z − ∇_y F,  ∇_x F − J z)
//! t = 0, or with probability p:  (d_y, d_z, d_x) = D(x_t, y_t, z_t; all data)
//! otherwise:  (d_y, d_z, d_x) += D(x_t, y_t, z_t; ζ, ξ) − D(x_{t−1}, y_{t−1}, z_{t−1}; ζ, ξ)
//! y ← y − β d_y;   z ← Π_{‖z‖≤r}(z − ρ d_z);   x ← x − α d_x
//! ```
//! It runs SRBA's rule ([`Srba`]) with a random restart drawn from the oracles' generator (so a
//! resumed run draws the same coins). benchopt's `spaba.py` draws its coin with NumPy inside a
//! jitted step (the draw is frozen at tracing), clips z elementwise to [−1, 1], and corrects d_y
//! by `g − g` (never moving it); the paper's rule is implemented here.

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use super::method::{Built, Method, Start, Steps};
use super::rule::RuleOptimizer;
use super::srba::{FullPassRestarts, Srba};
use crate::oracles::Oracles;
use crate::problem::BilevelProblem;
use crate::real::Real;

/// The knobs of SPABA (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpabaConfig {
    /// β: the y step.
    pub beta: f64,
    /// ρ: the z step.
    pub rho: f64,
    /// α: the x step.
    pub alpha: f64,
    /// p: the probability of a full pass; none: one over the number of fixed lower and upper
    /// batches (on average SRBA's default period).
    pub probability: Option<f64>,
    /// r: the radius of the ball z is projected on (none: no projection).
    pub z_radius: Option<f64>,
}

impl Default for SpabaConfig {
    /// The BO-REP paper's step scale (0.05) for the three steps, as SABA and SRBA.
    fn default() -> Self {
        Self {
            beta: 0.05,
            rho: 0.05,
            alpha: 0.05,
            probability: None,
            z_radius: None,
        }
    }
}

impl FullPassRestarts for SpabaConfig {
    fn step_sizes(&self) -> (f64, f64, f64) {
        (self.beta, self.rho, self.alpha)
    }

    fn z_radius(&self) -> Option<f64> {
        self.z_radius
    }

    fn restarts<E: Real, P: BilevelProblem<E>>(
        &self,
        _: u64,
        batches: usize,
        oracles: &mut Oracles<E, P>,
    ) -> bool
    where
        Cpu: Device<E>,
    {
        oracles.draw_coin(self.probability.unwrap_or(1.0 / batches as f64))
    }
}

impl Method for SpabaConfig {
    const NAME: &'static str = "spaba";
    const HINT: &'static str = "alpha for x, beta for y, rho for z";

    crate::checks!(
        beta: positive,
        rho: positive,
        alpha: positive,
        probability: optional weight,
        z_radius: optional positive,
    );

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.beta, &mut self.alpha).with_lower(&mut self.rho)
    }

    fn optimizer<E: Real, P: BilevelProblem<E> + 'static>(&self, at: Start<'_, E, P>) -> Built<E, P>
    where
        Cpu: Device<E>,
    {
        RuleOptimizer::boxed(self, Srba::<_, _, SpabaConfig>::start(at, "SPABA")?)
    }
}
