//! BSA (Ghadimi & Wang 2018): a growing number of warm-started SGD steps on y, then a
//! randomized Neumann hypergradient and a plain step on x.
//!
//! ```text
//! y ← t_k SGD steps (warm start),  t_k = ⌈T (k+1)^s⌉   (the analysis grows t_k; s = 1/2)
//! q ~ U{0..Q−1};  v = Qα Π_{i=1}^{q} (I − αH(ζ_i)) ∇_y F(ξ);  h = ∇_x F(ξ) − J(ζ_0) v
//! x ← x − α_k h
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

const NAME: &str = "bsa";
const HINT: &str = "eta for x, gamma for y, neumann.scale";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BsaConfig {
    /// α_k: the x step.
    pub eta: PowerSchedule,
    /// γ: the y step.
    pub gamma: f64,
    /// T: inner steps at k = 0.
    pub inner_steps: usize,
    /// s: inner steps grow as ⌈T (k+1)^s⌉.
    pub inner_growth: f64,
    /// Upper bound on the inner steps of one iteration.
    pub max_inner_steps: usize,
    /// Q and α of the randomized series.
    pub neumann: NeumannConfig,
}

impl Default for BsaConfig {
    fn default() -> Self {
        Self {
            eta: PowerSchedule::constant(0.05),
            gamma: 0.05,
            inner_steps: 1,
            inner_growth: 0.5,
            max_inner_steps: 20,
            neumann: NeumannConfig::randomized(5, 0.1),
        }
    }
}

impl BsaConfig {
    pub fn validate(&self) -> Result<(), BilevelError> {
        self.eta.validate("eta")?;
        validate::positive("gamma", self.gamma)?;
        validate::at_least_one("inner_steps", self.inner_steps)?;
        validate::non_negative("inner_growth", self.inner_growth)?;
        self.neumann.validate("neumann")
    }
}

pub struct Bsa {
    config: BsaConfig,
    t: u64,
}

impl Bsa {
    pub fn new(config: BsaConfig) -> Result<Self, BilevelError> {
        config.validate()?;
        Ok(Self { config, t: 0 })
    }
}

impl<E: Real, P: BilevelProblem<E>> BilevelOptimizer<E, P> for Bsa
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
        let steps =
            ((c.inner_steps as f64) * ((self.t + 1) as f64).powf(c.inner_growth)).ceil() as usize;
        let steps = steps.min(c.max_inner_steps.max(c.inner_steps));
        let outcome = sgd_then_neumann_step(
            oracles,
            x,
            y,
            steps,
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
