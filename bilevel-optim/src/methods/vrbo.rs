//! VRBO (Yang, Ji, Liang, NeurIPS 2021): SPIDER/SARAH estimates of the hypergradient and of
//! ∇_y g, restarted from a large batch every q iterations, with m inner corrections per iteration.
//!
//! ```text
//! if k mod q = 0:  v = ĥ(x_k, y_k; S₁),  u = ∇_y G(x_k, y_k; S₁)      (S₁: `anchor_batches` batches)
//! x_{k+1} = x_k − α v
//! y_0 = y_k, previous point (x_k, y_k)
//! for s = 0..m−1 (small batches S₂):
//!     v ← v + ĥ(x_{k+1}, y_s; S₂) − ĥ(previous; S₂)
//!     u ← u + ∇_y G(x_{k+1}, y_s; S₂) − ∇_y G(previous; S₂)
//!     previous ← (x_{k+1}, y_s);   y_{s+1} = y_s − β u
//! y_{k+1} = y_m
//! ```
//! ĥ is the deterministic Neumann estimate, each evaluated on one set of samples at both points.

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::rule::{Iteration, Rule};
use crate::error::BilevelError;
use crate::neumann::NeumannConfig;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::steps::{lower_grad_checked, plain_step, project_and_check_x, Outcome};
use crate::variance::spider_update;

/// The knobs of VRBO (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VrboConfig {
    /// α: the x step.
    pub alpha: f64,
    /// β: the y step.
    pub beta: f64,
    /// q: iterations between large-batch restarts.
    pub period: usize,
    /// m: SPIDER corrections (and y steps) per iteration.
    pub inner_steps: usize,
    /// Batches averaged into the large batch S₁.
    pub anchor_batches: usize,
    /// The Neumann series of the hypergradient estimate.
    pub neumann: NeumannConfig,
}

impl Default for VrboConfig {
    /// The AccBO lab's settings: 2 SPIDER loops, restart every 2 iterations, 1e-1 / 5e-2.
    fn default() -> Self {
        Self {
            alpha: 0.1,
            beta: 0.05,
            period: 2,
            inner_steps: 2,
            anchor_batches: 4,
            neumann: NeumannConfig::deterministic(5, 0.1),
        }
    }
}

impl Method for VrboConfig {
    const NAME: &'static str = "vrbo";
    const HINT: &'static str = "alpha for x, beta for y";

    // With no inner step y never moves.
    crate::checks!(
        alpha: positive,
        beta: positive,
        period: at_least_one,
        inner_steps: at_least_one,
        anchor_batches: at_least_one,
        neumann: valid,
    );

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.beta, &mut self.alpha)
    }

    crate::rule_optimizer!(|_, at| Vrbo {
        v: at.x.zeros_like(),
        u: at.y.zeros_like(),
    });
}

/// VRBO: SPIDER estimates of both levels, refreshed on anchor batches.
pub struct Vrbo<X, Y> {
    v: X,
    u: Y,
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for Vrbo<P::X, P::Y>
where
    Cpu: Device<E>,
{
    type Config = VrboConfig;
    crate::saved_memory!(vector v, vector u);

    fn iterate(&mut self, it: Iteration<'_, E, P, VrboConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let mut upper_loss = None;
        if t.is_multiple_of(c.period as u64) {
            let share = E::of(1.0 / c.anchor_batches as f64);
            let (mut v, mut u) = (x.zeros_like(), y.zeros_like());
            for _ in 0..c.anchor_batches {
                let samples = c.neumann.draw(oracles);
                let est = c.neumann.hypergradient(oracles, x, y, &samples, site)?;
                let batch = oracles.lower_batch();
                let g = lower_grad_checked(oracles, x, y, &batch, site)?;
                v.add_scaled(share, &est.h);
                u.add_scaled(share, &g.dy);
                upper_loss = Some(est.upper_loss);
            }
            (self.v, self.u) = (v, u);
        }
        let hypergrad_norm = self.v.norm().f64();
        let (mut x_prev, mut y_prev) = (x.duplicate(), y.duplicate());
        let (step_size, x_step_norm) = plain_step(x, &self.v, E::of(c.alpha));
        project_and_check_x(oracles, x, site)?;
        let mut lower_loss = None;
        for _ in 0..c.inner_steps {
            let samples = c.neumann.draw(oracles);
            let batch = oracles.lower_batch();
            let new = c.neumann.hypergradient(oracles, x, y, &samples, site)?;
            let old = c
                .neumann
                .hypergradient(oracles, &x_prev, &y_prev, &samples, site)?;
            spider_update(&mut self.v, &new.h, &old.h);
            let g_new = lower_grad_checked(oracles, x, y, &batch, site)?;
            let g_old = lower_grad_checked(oracles, &x_prev, &y_prev, &batch, site)?;
            spider_update(&mut self.u, &g_new.dy, &g_old.dy);
            (x_prev, y_prev) = (x.duplicate(), y.duplicate());
            y.add_scaled(-E::of(c.beta), &self.u);
            site.check("lower variable y", y)?;
            upper_loss = Some(new.upper_loss);
            lower_loss = Some(g_new.value.f64());
        }
        Ok(Outcome {
            upper_loss,
            lower_loss,
            hypergrad_norm,
            lower_grad_norm: Some(self.u.norm().f64()),
            linear_system_residual: None,
            step_size,
            x_step_norm,
        })
    }
}
