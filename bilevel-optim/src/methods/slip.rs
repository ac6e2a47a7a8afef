//! SLIP (Gong, Hao, Liu, ICML 2024): a few SGD steps on y first, then a single loop of
//! simultaneous updates, x by normalized SGD with momentum (unbounded smoothness).
//!
//! ```text
//! y ← T₀ SGD steps at x_0                                (warm start, before iteration 0)
//! y ← y − γ ∇_y G(ζ)
//! z ← Π_{‖z‖≤ρ}(z − ν (H(ζ) z − ∇_y F(ξ)))
//! m ← β m + (1 − β)(∇_x F(ξ) − J(ζ) z)                  (all at (x_t, y_t, z_t): one pass)
//! x ← x − η m/‖m‖
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
    momentum_update, normalized_step, project_and_check_x, sgd_on_lower, single_loop_lower_and_z,
    Outcome,
};

/// The knobs of SLIP (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlipConfig {
    /// η_t: the length of every x step.
    pub eta: PowerSchedule,
    /// β: momentum.
    pub beta: f64,
    /// γ: the y step.
    pub gamma: f64,
    /// ν: the z step.
    pub nu: f64,
    /// T₀: warm-start SGD steps on y before the first iteration.
    pub warm_start: usize,
    /// ρ: radius of z's ball; `None` = no projection.
    pub z_radius: Option<f64>,
}

impl Default for SlipConfig {
    /// The SLIP README's hyper-representation run: γ 5e-2, η 0.08, warm start 3, β 0.9, ν 1e-2.
    fn default() -> Self {
        Self {
            eta: PowerSchedule::constant(0.08),
            beta: 0.9,
            gamma: 0.05,
            nu: 0.01,
            warm_start: 3,
            z_radius: None,
        }
    }
}

impl Method for SlipConfig {
    const NAME: &'static str = "slip";
    const HINT: &'static str = "eta for x, gamma for y, nu for z";

    crate::checks!(
        eta: valid,
        beta: momentum,
        gamma: positive,
        nu: positive,
        z_radius: optional positive,
    );

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma, &mut self.eta).and(&mut self.nu)
    }

    crate::rule_optimizer!(|_, at| Slip {
        z: at.y.zeros_like(),
        m: at.x.zeros_like(),
    });
}

/// SLIP's memory: the linear-system variable z and the momentum m of x.
pub struct Slip<X, Y> {
    /// z_t ≈ [∇²_yy G]⁻¹ ∇_y F.
    pub z: Y,
    /// m_t, the momentum of the hypergradient estimate.
    pub m: X,
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for Slip<P::X, P::Y>
where
    Cpu: Device<E>,
{
    type Config = SlipConfig;
    crate::saved_memory!(vector z, vector m);

    fn iterate(&mut self, it: Iteration<'_, E, P, SlipConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let gamma = E::of(c.gamma);
        if t == 0 {
            sgd_on_lower(oracles, x, y, gamma, c.warm_start, site)?;
        }
        let z_radius = c.z_radius.map(E::of);
        let lower = single_loop_lower_and_z(
            oracles,
            x,
            y,
            &mut self.z,
            gamma,
            E::of(c.nu),
            z_radius,
            site,
        )?;
        momentum_update(&mut self.m, &lower.h, E::of(c.beta));
        let (step_size, x_step_norm) = normalized_step(x, &self.m, E::of(c.eta.at(t)));
        project_and_check_x(oracles, x, site)?;
        Ok(lower.outcome(step_size, x_step_norm))
    }
}
