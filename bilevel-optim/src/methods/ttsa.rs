//! TTSA (Hong, Wai, Wang, Yang, SIAM J. Optim. 2023): a single loop on two time scales.
//!
//! ```text
//! y ← y − β_t ∇_y G(ζ_t)                         β_t = β/(t+1)^{2/5}
//! h = randomized Neumann estimate at (x, y)       (BSA-style, q ~ U{0..Q−1})
//! x ← x − α_t h                                   α_t = α/(t+1)^{3/5}
//! ```

use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::neumann_family::{NeumannFamily, NeumannIteration, NeumannRule};
use super::rule::RuleOptimizer;
use crate::neumann::NeumannConfig;
use crate::schedule::PowerSchedule;

/// The knobs of TTSA (docs/algorithms.md).
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

impl Method for TtsaConfig {
    const NAME: &'static str = "ttsa";
    const HINT: &'static str = "alpha for x, beta for y, neumann.scale";

    crate::checks!(alpha: valid, beta: valid, neumann: valid);

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.beta, &mut self.alpha)
    }

    crate::rule_optimizer!(|_, _| NeumannFamily::default());
}

impl NeumannRule for TtsaConfig {
    fn plan(&self, t: u64) -> NeumannIteration<'_> {
        NeumannIteration {
            inner_steps: 1,
            gamma: self.beta.at(t),
            neumann: &self.neumann,
            eta: self.alpha.at(t),
        }
    }
}

/// Ttsa: the Neumann-family iteration with this module's rule.
pub type Ttsa = RuleOptimizer<TtsaConfig, NeumannFamily<TtsaConfig>>;
