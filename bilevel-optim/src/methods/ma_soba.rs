//! MA-SOBA (Chen, Xu, Zhang 2023): SOBA with a moving average of the hypergradient estimate and
//! z projected onto a ball, for relaxed smoothness. Not normalized (that is BO-REP's and SLIP's
//! difference).
//!
//! ```text
//! y ← y − β_t ∇_y G(ζ)
//! z ← Π_{‖z‖≤ρ}(z − γ_t (H(ζ) z − ∇_y F(ξ)))
//! m ← (1 − θ) m + θ (∇_x F(ξ) − J(ζ) z)        (z before its update: all at (x_t, y_t, z_t))
//! x ← x − α_t m
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
    momentum_update, plain_step, project_and_check_x, single_loop_lower_and_z, Outcome,
};

/// The knobs of MA-SOBA (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaSobaConfig {
    /// α_t: the x step.
    pub alpha: PowerSchedule,
    /// β_t: the y step.
    pub beta: PowerSchedule,
    /// γ_t: the z step.
    pub gamma: PowerSchedule,
    /// θ: weight of the new estimate in the moving average (the lab's β = 0.9 is θ = 0.1).
    pub theta: f64,
    /// ρ: radius of z's ball; `None` = no projection.
    pub z_radius: Option<f64>,
}

impl Default for MaSobaConfig {
    /// The BO-REP paper's tuned pair (lower 0.05, upper 0.1), ν = 1e-2, θ = 0.1.
    fn default() -> Self {
        Self {
            alpha: PowerSchedule::constant(0.1),
            beta: PowerSchedule::constant(0.05),
            gamma: PowerSchedule::constant(0.01),
            theta: 0.1,
            z_radius: None,
        }
    }
}

impl Method for MaSobaConfig {
    const NAME: &'static str = "ma-soba";
    const HINT: &'static str = "alpha for x, beta for y, gamma for z";

    crate::checks!(
        alpha: valid,
        beta: valid,
        gamma: valid,
        theta: weight,
        z_radius: optional positive,
    );

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.beta, &mut self.alpha).and(&mut self.gamma)
    }

    crate::rule_optimizer!(|_, at| MaSoba {
        z: at.y.zeros_like(),
        m: at.x.zeros_like(),
    });
}

/// MA-SOBA's memory: the linear-system variable z and the moving average m of the estimate.
pub struct MaSoba<X, Y> {
    /// z_t ≈ [∇²_yy G]⁻¹ ∇_y F.
    pub z: Y,
    /// m_t, the moving average of the hypergradient estimate.
    pub m: X,
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for MaSoba<P::X, P::Y>
where
    Cpu: Device<E>,
{
    type Config = MaSobaConfig;
    crate::saved_memory!(vector z, vector m);

    fn iterate(&mut self, it: Iteration<'_, E, P, MaSobaConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let (y_step, z_step) = (E::of(c.beta.at(t)), E::of(c.gamma.at(t)));
        let z_radius = c.z_radius.map(E::of);
        let lower =
            single_loop_lower_and_z(oracles, x, y, &mut self.z, y_step, z_step, z_radius, site)?;
        momentum_update(&mut self.m, &lower.h, E::one() - E::of(c.theta));
        let (step_size, x_step_norm) = plain_step(x, &self.m, E::of(c.alpha.at(t)));
        project_and_check_x(oracles, x, site)?;
        Ok(lower.outcome(step_size, x_step_norm))
    }
}
