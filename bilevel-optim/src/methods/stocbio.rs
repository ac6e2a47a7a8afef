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

use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::neumann_family::{NeumannFamily, NeumannIteration, NeumannRule};
use super::rule::RuleOptimizer;
use crate::neumann::NeumannConfig;
use crate::schedule::PowerSchedule;

/// The knobs of StocBio (docs/algorithms.md).
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

impl Method for StocBioConfig {
    const NAME: &'static str = "stocbio";
    const HINT: &'static str = "eta for x, gamma for y, neumann.scale";

    crate::checks!(eta: valid, gamma: positive, neumann: valid);

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma, &mut self.eta)
    }

    crate::rule_optimizer!(|_, _| NeumannFamily::default());
}

impl NeumannRule for StocBioConfig {
    fn plan(&self, t: u64) -> NeumannIteration<'_> {
        NeumannIteration {
            inner_steps: self.inner_steps,
            gamma: self.gamma,
            neumann: &self.neumann,
            eta: self.eta.at(t),
        }
    }
}

/// StocBio: the Neumann-family iteration with this module's rule.
pub type StocBio = RuleOptimizer<StocBioConfig, NeumannFamily<StocBioConfig>>;
