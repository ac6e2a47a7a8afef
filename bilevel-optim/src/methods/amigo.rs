//! AmIGO (Arbel & Mairal, ICLR 2022): warm-started inner SGD on y and on z, then a plain step
//! on x with the linear-system hypergradient.
//!
//! ```text
//! y ← T SGD steps (warm start)
//! z ← M steps z ← z − ρ (H(ζ_k) z − ∇_y F(ξ)), a fresh ζ_k each (warm start)
//! x ← x − α_t (∇_x F(ξ) − J(ζ') z)
//! ```

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::rule::{Iteration, Rule};
use crate::error::BilevelError;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;
use crate::steps::{
    hypergradient_estimate, linear_system_step, plain_step, project_and_check_x, sgd_on_lower,
    upper_grad_checked, Outcome,
};

/// The knobs of AmIGO (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmigoConfig {
    /// α_t: the x step.
    pub alpha: PowerSchedule,
    /// γ: the y step.
    pub gamma: f64,
    /// ρ: the z step.
    pub rho: f64,
    /// T: y steps per iteration.
    pub inner_steps: usize,
    /// M: z steps per iteration.
    pub linear_steps: usize,
}

impl Default for AmigoConfig {
    fn default() -> Self {
        Self {
            alpha: PowerSchedule::constant(0.05),
            gamma: 0.05,
            rho: 0.05,
            inner_steps: 5,
            linear_steps: 5,
        }
    }
}

impl Method for AmigoConfig {
    const NAME: &'static str = "amigo";
    const HINT: &'static str = "alpha for x, gamma for y, rho for z";

    crate::checks!(alpha: valid, gamma: positive, rho: positive, linear_steps: at_least_one);

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma, &mut self.alpha).and(&mut self.rho)
    }

    crate::rule_optimizer!(|_, at| Amigo {
        z: at.y.zeros_like(),
    });
}

/// AmIGO: warm-started SGD on y and on the linear system for z, then a plain x step.
pub struct Amigo<Y> {
    z: Y,
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for Amigo<P::Y>
where
    Cpu: Device<E>,
{
    type Config = AmigoConfig;
    crate::saved_memory!(vector z);

    fn iterate(&mut self, it: Iteration<'_, E, P, AmigoConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let lower_loss = sgd_on_lower(oracles, x, y, E::of(c.gamma), c.inner_steps, site)?;
        let xi = oracles.upper_batch();
        let upper = upper_grad_checked(oracles, x, y, &xi, site)?;
        let mut residual = E::zero();
        for _ in 0..c.linear_steps {
            let zeta = oracles.lower_batch();
            let hz = oracles.hvp(x, y, &self.z, &zeta)?;
            site.check("Hessian-vector product ∇²_yy g·z", &hz)?;
            residual = linear_system_step(&mut self.z, &hz, &upper.dy, E::of(c.rho), None);
        }
        site.check("linear-system variable z", &self.z)?;
        let zeta = oracles.lower_batch();
        let jz = oracles.jvp(x, y, &self.z, &zeta)?;
        site.check("cross product ∇²_xy g·z", &jz)?;
        let h = hypergradient_estimate(&upper.dx, &jz);
        let (step_size, x_step_norm) = plain_step(x, &h, E::of(c.alpha.at(t)));
        project_and_check_x(oracles, x, site)?;
        Ok(Outcome {
            upper_loss: Some(upper.value.f64()),
            lower_loss,
            hypergrad_norm: h.norm().f64(),
            lower_grad_norm: None,
            linear_system_residual: Some(residual.f64()),
            step_size,
            x_step_norm,
        })
    }
}
