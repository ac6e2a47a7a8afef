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

use super::method::{Built, Method, Start, Steps};
use crate::error::BilevelError;
use crate::optimizer::{BilevelOptimizer, StepReport};
use crate::oracles::Oracles;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;
use crate::steps::{
    momentum_update, normalized_step, sgd_on_lower, single_loop_lower_and_z, IterationScope,
};
use crate::validate;

const NAME: &str = "slip";
const HINT: &str = "eta for x, gamma for y, nu for z";

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
    const NAME: &'static str = NAME;

    fn validate(&self) -> Result<(), BilevelError> {
        self.eta.validate("eta")?;
        validate::momentum("beta", self.beta)?;
        validate::positive("gamma", self.gamma)?;
        validate::positive("nu", self.nu)?;
        if let Some(r) = self.z_radius {
            validate::positive("z_radius", r)?;
        }
        Ok(())
    }

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma, &mut self.eta).and(&mut self.nu)
    }

    fn optimizer<E: Real, P: BilevelProblem<E> + 'static>(&self, at: Start<'_, E, P>) -> Built<E, P>
    where
        Cpu: Device<E>,
    {
        Ok(Box::new(Slip {
            config: self.clone(),
            z: at.y.zeros_like(),
            m: at.x.zeros_like(),
            t: 0,
        }))
    }
}

/// SLIP: single-loop updates of y and z with a normalized momentum step on x.
pub struct Slip<X, Y> {
    config: SlipConfig,
    z: Y,
    m: X,
    t: u64,
}

impl<E: Real, P: BilevelProblem<E>> BilevelOptimizer<E, P> for Slip<P::X, P::Y>
where
    Cpu: Device<E>,
{
    crate::saved_state!(NAME; counter t, vector z, vector m);

    fn step(
        &mut self,
        oracles: &mut Oracles<E, P>,
        x: &mut P::X,
        y: &mut P::Y,
    ) -> Result<StepReport, BilevelError> {
        let scope = IterationScope::begin(NAME, HINT, self.t, oracles);
        let c = &self.config;
        let gamma = E::of(c.gamma);
        if self.t == 0 {
            sgd_on_lower(oracles, x, y, gamma, c.warm_start, scope.site)?;
        }
        let it = single_loop_lower_and_z(
            oracles,
            x,
            y,
            &mut self.z,
            gamma,
            E::of(c.nu),
            c.z_radius.map(E::of),
            scope.site,
        )?;
        momentum_update(&mut self.m, &it.h, E::of(c.beta));
        let step_size = normalized_step(x, &self.m, E::of(c.eta.at(self.t)));
        oracles.project_x(x);
        scope.site.check("upper variable x", x)?;
        self.t += 1;
        let x_step_norm = (step_size * self.m.norm()).f64();
        Ok(scope.report(oracles, it.outcome(step_size.f64(), x_step_norm)))
    }
}
