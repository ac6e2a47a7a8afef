//! ALSET (Chen, Sun, Yin, NeurIPS 2021): alternating stochastic gradient descent with constant
//! steps of the same order on both levels.
//!
//! ```text
//! y ← T SGD steps (warm start)
//! h = randomized Neumann estimate at (x, y)
//! x ← x − α h
//! ```

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

const NAME: &str = "alset";
const HINT: &str = "alpha for x, beta for y, neumann.scale";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlsetConfig {
    /// α: the x step.
    pub alpha: PowerSchedule,
    /// β: the y step.
    pub beta: f64,
    /// T ≥ 1: y steps per iteration.
    pub inner_steps: usize,
    pub neumann: NeumannConfig,
}

impl Default for AlsetConfig {
    fn default() -> Self {
        Self {
            alpha: PowerSchedule::constant(0.05),
            beta: 0.05,
            inner_steps: 1,
            neumann: NeumannConfig::randomized(5, 0.1),
        }
    }
}

impl AlsetConfig {
    pub fn validate(&self) -> Result<(), BilevelError> {
        self.alpha.validate("alpha")?;
        validate::positive("beta", self.beta)?;
        validate::at_least_one("inner_steps", self.inner_steps)?;
        self.neumann.validate("neumann")
    }
}

pub struct Alset {
    config: AlsetConfig,
    t: u64,
}

impl Alset {
    pub fn new(config: AlsetConfig) -> Result<Self, BilevelError> {
        config.validate()?;
        Ok(Self { config, t: 0 })
    }
}

impl<E: Real, P: BilevelProblem<E>> BilevelOptimizer<E, P> for Alset
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
            c.beta,
            &c.neumann,
            c.alpha.at(self.t),
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
