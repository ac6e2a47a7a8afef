//! ITD: iterative differentiation (Maclaurin, Duvenaud, Adams 2015; Franceschi et al., ICML
//! 2017 and 2018; Grazzi et al., ICML 2020; truncated back-propagation: Shaban et al., AISTATS
//! 2019): differentiate the upper loss through the K SGD steps that produce y, in reverse mode,
//! exactly, with the second-order oracles at the stored iterates; y starts each iteration where
//! the last one left it (warm start, held fixed in the derivative).
//!
//! ```text
//! y_0 = y,  y_{k+1} = y_k − γ ∇_y G(x, y_k; ζ)        k < K, one lower batch ζ
//! a = ∇_y F(x, y_K; ξ),  h = ∇_x F(x, y_K; ξ)
//! for k = K−1, …, K−T:  h ← h − γ J(x, y_k; ζ) a;  a ← a − γ H(x, y_k; ζ) a    (one pass each)
//! x ← x − η_t h,  y ← y_K
//! ```
//! h is the exact derivative of x ↦ F(x, y_K(x); ξ) for T = K (the test compares it with the
//! closed form on the quadratic); T < K truncates the backward pass to the last T steps.

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use super::meta::{unrolled_gradient, Unroll};
use super::method::{Method, Steps};
use super::rule::{Iteration, Rule};
use crate::error::BilevelError;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;
use crate::steps::{plain_step, project_and_check_x, Outcome};

/// The knobs of ITD (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ItdConfig {
    /// η_t: the x step.
    pub eta: PowerSchedule,
    /// γ: the y step of the unrolled SGD.
    pub gamma: f64,
    /// K: SGD steps per iteration, all differentiated through unless `truncation` is set.
    pub inner_steps: usize,
    /// T: back-propagate through only the last T steps (None: all K).
    pub truncation: Option<usize>,
}

impl Default for ItdConfig {
    /// StocBio's steps and five unrolled steps, differentiated through in full.
    fn default() -> Self {
        Self {
            eta: PowerSchedule::constant(0.05),
            gamma: 0.05,
            inner_steps: 5,
            truncation: None,
        }
    }
}

impl Method for ItdConfig {
    const NAME: &'static str = "itd";
    const HINT: &'static str = "eta for x, gamma for y";

    crate::checks!(
        eta: valid,
        gamma: positive,
        inner_steps: at_least_one,
        truncation: optional at_least_one,
    );

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma, &mut self.eta)
    }

    crate::rule_optimizer!(|_, _| Itd);
}

/// ITD keeps nothing between iterations but y itself.
pub struct Itd;

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for Itd
where
    Cpu: Device<E>,
{
    type Config = ItdConfig;
    crate::saved_memory!();

    fn iterate(&mut self, it: Iteration<'_, E, P, ItdConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let unroll = Unroll {
            steps: c.inner_steps,
            step: c.gamma,
            backward_steps: c.truncation.unwrap_or(c.inner_steps).min(c.inner_steps),
        };
        let unrolled = unrolled_gradient(oracles, x, y, unroll, site)?;
        *y = unrolled.adapted;
        let (step_size, x_step_norm) = plain_step(x, &unrolled.upper, E::of(c.eta.at(t)));
        project_and_check_x(oracles, x, site)?;
        Ok(Outcome {
            upper_loss: Some(unrolled.query_loss),
            lower_loss: unrolled.support_loss,
            hypergrad_norm: unrolled.upper.norm().f64(),
            lower_grad_norm: None,
            linear_system_residual: None,
            step_size,
            x_step_norm,
        })
    }
}
