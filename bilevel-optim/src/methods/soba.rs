//! SOBA (Dagréou, Ablin, Vaiter, Moreau, NeurIPS 2022): one loop, joint updates of y, z and x,
//! all evaluated at (x_t, y_t, z_t) with one lower batch (one second-order pass gives ∇_y G, H z
//! and J z) and one upper batch.
//!
//! ```text
//! y ← y − ρ_t ∇_y G(ζ)
//! z ← z − ρ_t (H(ζ) z − ∇_y F(ξ))
//! x ← x − γ_t (∇_x F(ξ) − J(ζ) z)            ρ_t = ρ/(t+1)^{2/5}, γ_t = γ/(t+1)^{3/5}
//! ```
//! (The paper writes v = −z and adds J v; the library's z convention is used throughout.)

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::rule::{Iteration, Rule};
use crate::error::BilevelError;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;
use crate::steps::{plain_step, project_and_check_x, single_loop_lower_and_z, Outcome};

/// The knobs of SOBA (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SobaConfig {
    /// ρ_t: the step of y and z (the paper's theory: exponent 2/5).
    pub rho: PowerSchedule,
    /// γ_t: the x step (the paper's theory: exponent 3/5).
    pub gamma: PowerSchedule,
}

impl Default for SobaConfig {
    /// The BO-REP paper's tuned pair (0.05, 0.05) with the paper's exponents.
    fn default() -> Self {
        Self {
            rho: PowerSchedule {
                initial: 0.05,
                exponent: 0.4,
            },
            gamma: PowerSchedule {
                initial: 0.05,
                exponent: 0.6,
            },
        }
    }
}

impl Method for SobaConfig {
    const NAME: &'static str = "soba";
    const HINT: &'static str = "gamma for x, rho for y and z";

    crate::checks!(rho: valid, gamma: valid);

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.rho, &mut self.gamma)
    }

    crate::rule_optimizer!(|_, at| Soba {
        z: at.y.zeros_like(),
    });
}

/// SOBA's memory: the linear-system variable z.
pub struct Soba<Y> {
    /// z_t ≈ [∇²_yy G]⁻¹ ∇_y F.
    pub z: Y,
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for Soba<P::Y>
where
    Cpu: Device<E>,
{
    type Config = SobaConfig;
    crate::saved_memory!(vector z);

    fn iterate(&mut self, it: Iteration<'_, E, P, SobaConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let (rho, gamma) = (E::of(c.rho.at(t)), E::of(c.gamma.at(t)));
        let lower = single_loop_lower_and_z(oracles, x, y, &mut self.z, rho, rho, None, site)?;
        let (step_size, x_step_norm) = plain_step(x, &lower.h, gamma);
        project_and_check_x(oracles, x, site)?;
        Ok(lower.outcome(step_size, x_step_norm))
    }
}
