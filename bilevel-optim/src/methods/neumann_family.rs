//! The one optimizer behind StocBio, TTSA, BSA and ALSET. They differ only in how many SGD steps
//! y takes, with which step, which Neumann series, and the x step at iteration t; each module
//! states that as a [`NeumannRule`] and the iteration itself is written once here:
//!
//! ```text
//! y ← inner_steps SGD steps with step γ_t;  h = ∇_x F − J v (the rule's Neumann series);  x ← x − η_t h
//! ```

use std::marker::PhantomData;

use dfdx::prelude::{Cpu, Device};

use super::method::Method;
use super::rule::{Iteration, Rule};
use crate::error::BilevelError;
use crate::neumann::{sgd_then_neumann_step, NeumannConfig};
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::steps::Outcome;

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
    /// What iteration t does.
    fn plan(&self, t: u64) -> NeumannIteration<'_>;
}

/// The Neumann family's rule for the configuration `C`. It has no memory: the iteration
/// counter, its only state, is the [`super::rule::RuleOptimizer`]'s.
pub struct NeumannFamily<C>(PhantomData<C>);

impl<C> Default for NeumannFamily<C> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<E: Real, P: BilevelProblem<E>, C: NeumannRule> Rule<E, P> for NeumannFamily<C>
where
    Cpu: Device<E>,
{
    type Config = C;
    crate::saved_memory!();

    fn iterate(&mut self, it: Iteration<'_, E, P, C>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let p = c.plan(t);
        sgd_then_neumann_step(
            oracles,
            x,
            y,
            p.inner_steps,
            p.gamma,
            p.neumann,
            p.eta,
            site,
        )
    }
}
