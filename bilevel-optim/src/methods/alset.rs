//! ALSET (Chen, Sun, Yin, NeurIPS 2021): alternating stochastic gradient descent with constant
//! steps of the same order on both levels.
//!
//! ```text
//! y ← T SGD steps (warm start)
//! h = randomized Neumann estimate at (x, y)
//! x ← x − α h
//! ```

use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::neumann_family::{NeumannFamily, NeumannIteration, NeumannRule};
use super::rule::RuleOptimizer;
use crate::neumann::NeumannConfig;
use crate::schedule::PowerSchedule;

/// The knobs of ALSET (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlsetConfig {
    /// α: the x step.
    pub alpha: PowerSchedule,
    /// β: the y step.
    pub beta: f64,
    /// T ≥ 1: y steps per iteration.
    pub inner_steps: usize,
    /// The Neumann series of the hypergradient estimate.
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

impl Method for AlsetConfig {
    const NAME: &'static str = "alset";
    const HINT: &'static str = "alpha for x, beta for y, neumann.scale";

    crate::checks!(alpha: valid, beta: positive, inner_steps: at_least_one, neumann: valid);

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.beta, &mut self.alpha)
    }

    crate::rule_optimizer!(|_, _| NeumannFamily::default());
}

impl NeumannRule for AlsetConfig {
    fn plan(&self, t: u64) -> NeumannIteration<'_> {
        NeumannIteration {
            inner_steps: self.inner_steps,
            gamma: self.beta,
            neumann: &self.neumann,
            eta: self.alpha.at(t),
        }
    }
}

/// Alset: the Neumann-family iteration with this module's rule.
pub type Alset = RuleOptimizer<AlsetConfig, NeumannFamily<AlsetConfig>>;
