//! The one optimizer behind StocBio, TTSA, BSA and ALSET. They differ only in how many SGD steps
//! y takes, with which step, which Neumann series, and the x step at iteration t; each module
//! states that as a [`NeumannRule`] and the iteration itself is written once here:
//!
//! ```text
//! y ← inner_steps SGD steps with step γ_t;  h = ∇_x F − J v (the rule's Neumann series);  x ← x − η_t h
//! ```

use dfdx::prelude::{Cpu, Device};

use super::method::Method;
use crate::error::BilevelError;
use crate::neumann::{sgd_then_neumann_step, NeumannConfig};
use crate::optimizer::{BilevelOptimizer, StepReport};
use crate::oracles::Oracles;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::steps::IterationScope;

/// What one iteration does.
pub struct NeumannIteration<'a> {
    /// SGD steps on y before the estimate.
    pub inner_steps: usize,
    /// γ_t, the y step.
    pub gamma: f64,
    /// The series of the estimate.
    pub neumann: &'a NeumannConfig,
    /// η_t, the x step.
    pub eta: f64,
}

/// A Neumann-family method's configuration, which says what iteration t does.
pub trait NeumannRule: Method {
    /// The step sizes to lower after a divergence, named as in the configuration.
    const HINT: &'static str;
    /// What iteration t does.
    fn plan(&self, t: u64) -> NeumannIteration<'_>;
}

/// A Neumann-family method: its rule and its iteration counter (its only state).
pub struct NeumannMethod<C> {
    config: C,
    t: u64,
}

impl<C: NeumannRule> NeumannMethod<C> {
    /// A fresh method with the (valid) `config`.
    pub fn new(config: C) -> Self {
        Self { config, t: 0 }
    }
}

impl<E: Real, P: BilevelProblem<E>, C: NeumannRule> BilevelOptimizer<E, P> for NeumannMethod<C>
where
    Cpu: Device<E>,
{
    crate::saved_state!(C::NAME; counter t);

    fn step(
        &mut self,
        oracles: &mut Oracles<E, P>,
        x: &mut P::X,
        y: &mut P::Y,
    ) -> Result<StepReport, BilevelError> {
        let scope = IterationScope::begin(C::NAME, C::HINT, self.t, oracles);
        let p = self.config.plan(self.t);
        let outcome = sgd_then_neumann_step(
            oracles,
            x,
            y,
            p.inner_steps,
            p.gamma,
            p.neumann,
            p.eta,
            scope.site,
        )?;
        self.t += 1;
        Ok(scope.report(oracles, outcome))
    }
}
