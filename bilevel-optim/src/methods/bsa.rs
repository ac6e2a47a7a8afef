//! BSA (Ghadimi & Wang 2018): a growing number of warm-started SGD steps on y, then a
//! randomized Neumann hypergradient and a plain step on x.
//!
//! ```text
//! y ← t_k SGD steps (warm start),  t_k = ⌈T (k+1)^s⌉   (the analysis grows t_k; s = 1/2)
//! q ~ U{0..Q−1};  v = Qα Π_{i=1}^{q} (I − αH(ζ_i)) ∇_y F(ξ);  h = ∇_x F(ξ) − J(ζ_0) v
//! x ← x − α_k h
//! ```

use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::neumann_family::{NeumannFamily, NeumannIteration, NeumannRule};
use super::rule::RuleOptimizer;
use crate::neumann::NeumannConfig;
use crate::schedule::PowerSchedule;

/// The knobs of BSA (docs/algorithms.md).
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

impl Method for BsaConfig {
    const NAME: &'static str = "bsa";
    const HINT: &'static str = "eta for x, gamma for y, neumann.scale";

    crate::checks!(
        eta: valid,
        gamma: positive,
        inner_steps: at_least_one,
        inner_growth: non_negative,
        neumann: valid,
    );

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma, &mut self.eta)
    }

    crate::rule_optimizer!(|_, _| NeumannFamily::default());
}

impl NeumannRule for BsaConfig {
    fn plan(&self, t: u64) -> NeumannIteration<'_> {
        let grown =
            (self.inner_steps as f64 * ((t + 1) as f64).powf(self.inner_growth)).ceil() as usize;
        NeumannIteration {
            inner_steps: grown.min(self.max_inner_steps.max(self.inner_steps)),
            gamma: self.gamma,
            neumann: &self.neumann,
            eta: self.eta.at(t),
        }
    }
}

/// Bsa: the Neumann-family iteration with this module's rule.
pub type Bsa = RuleOptimizer<BsaConfig, NeumannFamily<BsaConfig>>;
