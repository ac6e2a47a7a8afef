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

use crate::error::BilevelError;
use crate::optimizer::{BilevelOptimizer, MethodState, StepReport};
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

impl SlipConfig {
    /// Checks every value, naming the first one out of range.
    pub fn validate(&self) -> Result<(), BilevelError> {
        self.eta.validate("eta")?;
        validate::momentum("beta", self.beta)?;
        validate::positive("gamma", self.gamma)?;
        validate::positive("nu", self.nu)?;
        if let Some(r) = self.z_radius {
            validate::positive("z_radius", r)?;
        }
        Ok(())
    }
}

/// SLIP: single-loop updates of y and z with a normalized momentum step on x.
pub struct Slip<X, Y> {
    config: SlipConfig,
    z: Y,
    m: X,
    t: u64,
}

impl<X, Y> Slip<X, Y> {
    /// A fresh method at (x, y), after validating `config`.
    pub fn new<E: Real>(config: SlipConfig, x: &X, y: &Y) -> Result<Self, BilevelError>
    where
        Cpu: Device<E>,
        X: Params<E>,
        Y: Params<E>,
    {
        config.validate()?;
        Ok(Self {
            config,
            z: y.zeros_like(),
            m: x.zeros_like(),
            t: 0,
        })
    }
}

impl<E: Real, P: BilevelProblem<E>> BilevelOptimizer<E, P> for Slip<P::X, P::Y>
where
    Cpu: Device<E>,
{
    fn name(&self) -> &'static str {
        NAME
    }

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

    fn state(&self) -> MethodState {
        let mut s = MethodState::with_counter(NAME, self.t);
        s.put("z", &self.z);
        s.put("m", &self.m);
        s
    }

    fn load_state(&mut self, state: &MethodState) -> Result<(), BilevelError> {
        let t = state.counter(NAME)?;
        state.restore("z", &mut self.z)?;
        state.restore("m", &mut self.m)?;
        self.t = t;
        Ok(())
    }
}
