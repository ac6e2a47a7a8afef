//! TTSA (Hong, Wai, Wang, Yang, SIAM J. Optim. 2023): a single loop on two time scales.
//!
//! ```text
//! y ← y − β_t ∇_y G(ζ_t)                         β_t = β/(t+1)^{2/5}
//! h = randomized Neumann estimate at (x, y)       (BSA-style, q ~ U{0..Q−1})
//! x ← x − α_t h                                   α_t = α/(t+1)^{3/5}
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

const NAME: &str = "ttsa";
const HINT: &str = "alpha for x, beta for y, neumann.scale";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtsaConfig {
    /// α_t: the x step, decaying as (t+1)^{-3/5} in the paper.
    pub alpha: PowerSchedule,
    /// β_t: the y step, decaying as (t+1)^{-2/5} in the paper.
    pub beta: PowerSchedule,
    /// Q and the scale of the randomized series.
    pub neumann: NeumannConfig,
}

impl Default for TtsaConfig {
    /// The BO-REP paper's tuned pair (lower 0.1, upper 0.01) with the paper's exponents.
    fn default() -> Self {
        Self {
            alpha: PowerSchedule {
                initial: 0.01,
                exponent: 0.6,
            },
            beta: PowerSchedule {
                initial: 0.1,
                exponent: 0.4,
            },
            neumann: NeumannConfig::randomized(5, 0.1),
        }
    }
}

impl TtsaConfig {
    pub fn validate(&self) -> Result<(), BilevelError> {
        self.alpha.validate("alpha")?;
        self.beta.validate("beta")?;
        self.neumann.validate("neumann")
    }
}

pub struct Ttsa {
    config: TtsaConfig,
    t: u64,
}

impl Ttsa {
    pub fn new(config: TtsaConfig) -> Result<Self, BilevelError> {
        config.validate()?;
        Ok(Self { config, t: 0 })
    }
}

impl<E: Real, P: BilevelProblem<E>> BilevelOptimizer<E, P> for Ttsa
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
        let (alpha, beta) = (c.alpha.at(self.t), c.beta.at(self.t));
        let outcome = sgd_then_neumann_step(oracles, x, y, 1, beta, &c.neumann, alpha, scope.site)?;
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
