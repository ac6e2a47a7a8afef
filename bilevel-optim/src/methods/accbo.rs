//! AccBO (Gong, Hao, Liu, NeurIPS 2024): stochastic Nesterov acceleration with averaging on y,
//! and normalized recursive momentum on x with a randomized Neumann hypergradient.
//!
//! ```text
//! y ← T₀ SGD steps at x_0                                        (warm start, t = 0)
//! w = y_t + δ (y_t − y_{t−1});  y_{t+1} = w − γ ∇_y G(x_t, w; π);  ŷ_{t+1} = (1 − τ) ŷ_t + τ y_{t+1}
//! h_t = h(x_t, ŷ_{t+1}; ξ̄),  the randomized Neumann estimate on samples ξ̄ drawn once
//! m_t = h_t + β (m_{t−1} − h(x_{t−1}, ŷ_t; ξ̄))                  (recursive momentum; m_0 = h_0)
//! x_{t+1} = x_t − η m_t/‖m_t‖
//! ```
//! The caller's y is the averaged ŷ, the point the hypergradient is taken at.

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::rule::{Iteration, Rule};
use crate::error::BilevelError;
use crate::neumann::NeumannConfig;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;
use crate::steps::{
    lower_grad_checked, normalized_step, project_and_check_x, sgd_on_lower, Outcome,
};
use crate::variance::storm_update;

/// The knobs of AccBO (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccBoConfig {
    /// η_t: the length of every x step.
    pub eta: PowerSchedule,
    /// β: recursive-momentum weight.
    pub beta: f64,
    /// γ: the y step.
    pub gamma: f64,
    /// δ: Nesterov momentum of y.
    pub nesterov: f64,
    /// τ: averaging weight of ŷ.
    pub averaging: f64,
    /// T₀: warm-start SGD steps on y.
    pub warm_start: usize,
    /// The Neumann series of the hypergradient estimate.
    pub neumann: NeumannConfig,
}

impl Default for AccBoConfig {
    fn default() -> Self {
        Self {
            eta: PowerSchedule::constant(0.05),
            beta: 0.9,
            gamma: 0.05,
            nesterov: 0.5,
            averaging: 0.5,
            warm_start: 3,
            neumann: NeumannConfig::randomized(5, 0.1),
        }
    }
}

impl Method for AccBoConfig {
    const NAME: &'static str = "accbo";
    const HINT: &'static str = "eta for x, gamma for y";

    crate::checks!(
        eta: valid,
        beta: momentum,
        gamma: positive,
        nesterov: momentum,
        averaging: weight,
        neumann: valid,
    );

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma, &mut self.eta)
    }

    crate::rule_optimizer!(|_, at| AccBo {
        y_now: at.y.duplicate(),
        y_before: at.y.duplicate(),
        m: at.x.zeros_like(),
        x_prev: at.x.duplicate(),
        y_avg_prev: at.y.duplicate(),
    });
}

/// AccBO: Nesterov-accelerated y, normalized recursive momentum on x.
pub struct AccBo<X, Y> {
    /// The Nesterov iterates y_t and y_{t−1}.
    y_now: Y,
    y_before: Y,
    m: X,
    /// (x_{t−1}, ŷ_t): where the previous estimate was taken.
    x_prev: X,
    y_avg_prev: Y,
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for AccBo<P::X, P::Y>
where
    Cpu: Device<E>,
{
    type Config = AccBoConfig;
    crate::saved_memory!(vector y_now, vector y_before, vector m, vector x_prev, vector y_avg_prev);

    fn iterate(&mut self, it: Iteration<'_, E, P, AccBoConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        if t == 0 {
            sgd_on_lower(oracles, x, y, E::of(c.gamma), c.warm_start, site)?;
            (self.y_now, self.y_before) = (y.duplicate(), y.duplicate());
        }
        // Lower level: one stochastic Nesterov step, then averaging into ŷ (the caller's y).
        let mut w = self.y_now.duplicate();
        w.lerp_with(
            E::one() + E::of(c.nesterov),
            -E::of(c.nesterov),
            &self.y_before,
        );
        let batch = oracles.lower_batch();
        let g = lower_grad_checked(oracles, x, &w, &batch, site)?;
        w.add_scaled(-E::of(c.gamma), &g.dy);
        self.y_before = std::mem::replace(&mut self.y_now, w);
        y.lerp_with(
            E::one() - E::of(c.averaging),
            E::of(c.averaging),
            &self.y_now,
        );
        site.check("lower variable y", y)?;

        // Upper level: recursive momentum on the same samples at the new and the old point.
        let samples = c.neumann.draw(oracles);
        let est = c.neumann.hypergradient(oracles, x, y, &samples, site)?;
        if t == 0 {
            self.m = est.h.clone();
        } else {
            let old =
                c.neumann
                    .hypergradient(oracles, &self.x_prev, &self.y_avg_prev, &samples, site)?;
            storm_update(&mut self.m, &est.h, &old.h, E::one() - E::of(c.beta));
        }
        (self.x_prev, self.y_avg_prev) = (x.duplicate(), y.duplicate());
        let (step_size, x_step_norm) = normalized_step(x, &self.m, E::of(c.eta.at(t)));
        project_and_check_x(oracles, x, site)?;
        Ok(est.outcome(&g, step_size, x_step_norm))
    }
}
