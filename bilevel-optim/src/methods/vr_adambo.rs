//! VR-AdamBO (Gong, Hao, Liu; the variance-reduced method of the ICLR-submission version of
//! the AdamBO paper): AdamBO with its first moment replaced by a recursive-momentum (STORM)
//! estimate, corrected by the estimate at the previous point on the same samples.
//!
//! ```text
//! y ← T₀ SGD steps at x_0                              (warm start, t = 0)
//! y ← y − γ ∇_y G(x_t, y; π_t)
//! h_t = ∇_x F − J v,  v the Neumann series on ∇_y F, all on the samples ξ̄_t
//! m_t = h_t + β₁ (m_{t−1} − h(x_{t−1}, y_{t−1}; ξ̄_t))          (m_0 = h_0)
//! v_t = β₂ v_{t−1} + (1 − β₂) h_t ⊙ h_t
//! x ← x − η_t m_t / (√(v_t/(1 − β₂^{t+1})) + ε)
//! ```
//! A reconstruction (docs/algorithms.md): the paper's algorithm box was not available, only its
//! abstract (a variance-reduced version of AdamBO with Õ(ε⁻³) complexity). The recursive momentum
//! is the one the same authors use in AccBO, the rest is AdamBO's rule; m starts at h_0 rather
//! than at zero, so only v is bias-corrected.

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use super::adambo::{AdamBoConfig, AdamMoments};
use super::method::{Method, Steps};
use super::rule::{Iteration, Rule};
use crate::error::BilevelError;
use crate::neumann::plain_step_outcome;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::steps::{sgd_on_lower, Outcome};

/// The knobs of VR-AdamBO: AdamBO's, the same names and defaults (docs/algorithms.md); β₁ weighs
/// the corrected history of the recursive momentum, and the weight decay, when set, is added to
/// the estimate at both points of the correction.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VrAdamBoConfig(pub AdamBoConfig);

impl Method for VrAdamBoConfig {
    const NAME: &'static str = "vr-adambo";
    const HINT: &'static str = AdamBoConfig::HINT;

    fn validate(&self) -> Result<(), BilevelError> {
        self.0.validate()
    }

    fn steps(&mut self) -> Steps<'_> {
        self.0.steps()
    }

    crate::rule_optimizer!(|_, at| VrAdamBo {
        moments: AdamMoments::new(at.x),
        x_prev: at.x.duplicate(),
        y_prev: at.y.duplicate(),
    });
}

/// VR-AdamBO: Adam's second moment over a recursive-momentum first moment, y by SGD.
pub struct VrAdamBo<X, Y> {
    moments: AdamMoments<X>,
    /// (x_{t−1}, y_{t−1}): where the previous estimate was taken.
    x_prev: X,
    y_prev: Y,
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for VrAdamBo<P::X, P::Y>
where
    Cpu: Device<E>,
{
    type Config = VrAdamBoConfig;
    crate::saved_memory!(
        vector moments.first as "m",
        vector moments.second as "v",
        vector x_prev,
        vector y_prev
    );

    fn iterate(&mut self, it: Iteration<'_, E, P, VrAdamBoConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (&it.config.0, it.t, it.site);
        if t == 0 {
            sgd_on_lower(oracles, x, y, E::of(c.gamma), c.warm_start, site)?;
        }
        let lower_loss = sgd_on_lower(oracles, x, y, E::of(c.gamma), 1, site)?;
        let samples = c.neumann.draw(oracles);
        let est = c.neumann.hypergradient(oracles, x, y, &samples, site)?;
        let h = c.with_weight_decay(&est.h, x);
        let old = match t {
            0 => None,
            _ => {
                let (x_prev, y_prev) = (&self.x_prev, &self.y_prev);
                let old = c.neumann.hypergradient(oracles, x_prev, y_prev, &samples, site)?;
                Some(c.with_weight_decay(&old.h, x_prev))
            }
        };
        let knobs = (c.beta1, c.beta2, c.epsilon);
        let direction = self.moments.update_recursive(&h, old.as_ref(), t, knobs);
        (self.x_prev, self.y_prev) = (x.duplicate(), y.duplicate());
        plain_step_outcome(oracles, x, &direction, c.eta.at(t), &est, lower_loss, site)
    }
}
