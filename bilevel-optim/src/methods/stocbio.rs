//! StocBio (Ji, Yang, Liang, ICML 2021): warm-started inner SGD, then a deterministic truncated
//! Neumann hypergradient and a plain step on x.
//!
//! ```text
//! y ← D SGD steps on fresh batches (warm start from the last y)
//! v = α Σ_{i=0}^{Q} (I − αH(ζ_H))^i ∇_y F(ξ)        (one Hessian batch for all Q products)
//! h = ∇_x F(ξ) − J(ζ_J) v
//! x ← x − η_t h
//! ```
//! The official code's sum (`α v_Q + Σ_{k≥1} v_k`, no `v_0`) is not reproduced: this is the paper's.

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use crate::error::BilevelError;
use crate::neumann::{sgd_then_neumann_step, NeumannConfig};
use crate::optimizer::{BilevelOptimizer, MethodState, StepReport};
use crate::oracles::Oracles;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;
use crate::steps::IterationScope;
use crate::validate;

const NAME: &str = "stocbio";
const HINT: &str = "eta for x, gamma for y, neumann.scale";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StocBioConfig {
    /// η_t: the x step.
    pub eta: PowerSchedule,
    /// γ: the y step.
    pub gamma: f64,
    /// D: SGD steps on y per iteration.
    pub inner_steps: usize,
    /// Q and α of the deterministic series.
    pub neumann: NeumannConfig,
}

impl Default for StocBioConfig {
    /// The BO-REP paper's tuned pair (0.05, 0.05) with the lab's Q = 5, α = 0.1, 5 inner steps.
    fn default() -> Self {
        Self {
            eta: PowerSchedule::constant(0.05),
            gamma: 0.05,
            inner_steps: 5,
            neumann: NeumannConfig::deterministic(5, 0.1),
        }
    }
}

impl StocBioConfig {
    pub fn validate(&self) -> Result<(), BilevelError> {
        self.eta.validate("eta")?;
        validate::positive("gamma", self.gamma)?;
        self.neumann.validate("neumann")
    }
}

pub struct StocBio {
    config: StocBioConfig,
    t: u64,
}

impl StocBio {
    pub fn new(config: StocBioConfig) -> Result<Self, BilevelError> {
        config.validate()?;
        Ok(Self { config, t: 0 })
    }
}

impl<E: Real, P: BilevelProblem<E>> BilevelOptimizer<E, P> for StocBio
where
    Cpu: Device<E>,
{
    fn name(&self) -> &'static str {
        NAME
    }

    fn step(
        &mut self,
        oracles: &mut Oracles<E, P>,
        x: &mut P::X,
        y: &mut P::Y,
    ) -> Result<StepReport, BilevelError> {
        let scope = IterationScope::begin(NAME, HINT, self.t, oracles);
        let c = &self.config;
        let outcome = sgd_then_neumann_step(
            oracles,
            x,
            y,
            c.inner_steps,
            c.gamma,
            &c.neumann,
            c.eta.at(self.t),
            scope.site,
        )?;
        self.t += 1;
        Ok(scope.report(oracles, outcome))
    }

    fn state(&self) -> MethodState {
        MethodState::with_counter(NAME, self.t)
    }

    fn load_state(&mut self, state: &MethodState) -> Result<(), BilevelError> {
        self.t = state.counter(NAME)?;
        Ok(())
    }
}
