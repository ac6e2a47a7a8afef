//! AID-CG: approximate implicit differentiation with conjugate gradients (Pedregosa, ICML 2016;
//! Grazzi, Franceschi, Pontil, Salzo, ICML 2020; the stochastic form as in hypertorch, TorchOpt
//! and JAXopt): a warm-started inner SGD, K steps of CG on the implicit-function system on one
//! lower batch, and a plain step on x.
//!
//! ```text
//! y ← T SGD steps on fresh batches (warm start from the last y)
//! v ≈ (H(ζ) + λI)⁻¹ ∇_y F(ξ)       K CG steps from the last v (or from 0), stopped early
//!                                   once ‖b − (H + λI) v‖ ≤ tol·‖b‖
//! h = ∇_x F(ξ) − J(ζ) v            (the same ζ as the system, as in the deterministic AID)
//! x ← x − η_t h
//! ```
//! With K at least the dimension of y, λ = 0 and a positive definite H(ζ), v is H(ζ)⁻¹∇_y F
//! exactly (up to rounding), so h is the implicit hypergradient of the batch at the current y.

use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::rule::{Iteration, Rule};
use crate::error::BilevelError;
use crate::linear_solvers::{conjugate_gradient, CgConfig, HessianOperator};
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;
use crate::steps::{
    hypergradient_estimate, plain_step, project_and_check_x, sgd_on_lower, upper_grad_checked,
    Outcome,
};
use dfdx::prelude::{Cpu, Device};

/// The knobs of AID-CG (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AidCgConfig {
    /// η_t: the x step.
    pub eta: PowerSchedule,
    /// γ: the y step.
    pub gamma: f64,
    /// T: SGD steps on y per iteration.
    pub inner_steps: usize,
    /// K, the stopping tolerance and the damping λ of the CG solve.
    pub cg: CgConfig,
    /// Start each solve from the last v (one more H·v for its residual) instead of from 0.
    pub warm_start: bool,
}

impl Default for AidCgConfig {
    /// StocBio's steps and inner loop (the same family, with CG in place of the series), 10
    /// CG steps warm-started as in hypertorch's and TorchOpt's examples.
    fn default() -> Self {
        Self {
            eta: PowerSchedule::constant(0.05),
            gamma: 0.05,
            inner_steps: 5,
            cg: CgConfig::default(),
            warm_start: true,
        }
    }
}

impl Method for AidCgConfig {
    const NAME: &'static str = "aid-cg";
    const HINT: &'static str = "eta for x, gamma for y; or raise cg.damping";

    crate::checks!(eta: valid, gamma: positive, inner_steps: at_least_one, cg: valid);

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma, &mut self.eta)
    }

    crate::rule_optimizer!(|_, at| AidCg {
        v: at.y.zeros_like(),
    });
}

/// AID-CG's memory: the last solution v, where the next solve starts.
pub struct AidCg<Y> {
    /// v ≈ [∇²_yy G]⁻¹ ∇_y F of the last iteration.
    pub v: Y,
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for AidCg<P::Y>
where
    Cpu: Device<E>,
{
    type Config = AidCgConfig;
    crate::saved_memory!(vector v);

    fn iterate(&mut self, it: Iteration<'_, E, P, AidCgConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let lower_loss = sgd_on_lower(oracles, x, y, E::of(c.gamma), c.inner_steps, site)?;
        let xi = oracles.upper_batch();
        let zeta = oracles.lower_batch();
        let upper = upper_grad_checked(oracles, x, y, &xi, site)?;
        // v is 0 at t = 0: starting from it would spend an H·v on the residual b − A·0 = b.
        let start = (c.warm_start && t > 0).then_some(&self.v);
        let mut system = HessianOperator::new(oracles, (x, y), &zeta, c.cg.damping, site);
        let solution = conjugate_gradient(&mut system, &upper.dy, start, &c.cg)?;
        self.v = solution.v;
        let jv = oracles.jvp(x, y, &self.v, &zeta)?;
        site.check("cross product ∇²_xy g·v", &jv)?;
        let h = hypergradient_estimate(&upper.dx, &jv);
        let (step_size, x_step_norm) = plain_step(x, &h, E::of(c.eta.at(t)));
        project_and_check_x(oracles, x, site)?;
        Ok(Outcome {
            upper_loss: Some(upper.value.f64()),
            lower_loss,
            hypergrad_norm: h.norm().f64(),
            lower_grad_norm: None,
            linear_system_residual: Some(solution.residual),
            step_size,
            x_step_norm,
        })
    }
}
