//! MRBO (Yang, Ji, Liang, NeurIPS 2021): STORM momentum on both levels, each evaluated on the
//! same samples at the new and the previous point, with step sizes shrinking like k^{-1/3}.
//!
//! ```text
//! u_k = ∇_y G(x_k, y_k; B) + (1 − β_k)(u_{k−1} − ∇_y G(x_{k−1}, y_{k−1}; B))
//! v_k = ĥ(x_k, y_k; B') + (1 − α_k)(v_{k−1} − ĥ(x_{k−1}, y_{k−1}; B'))    ĥ: deterministic Neumann
//! y_{k+1} = y_k − γ η_k u_k,   x_{k+1} = x_k − λ η_k v_k
//! η_k = s/(m + k)^{1/3},   α_{k+1} = c₁ η_k²,   β_{k+1} = c₂ η_k²   (capped at 1)
//! ```
//! At k = 0, u and v are the plain estimates. (The official code resets its constants every
//! iteration and moves y twice; this is the paper's rule.)

use std::marker::PhantomData;

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::rule::{Iteration, Rule};
use crate::error::BilevelError;
use crate::neumann::NeumannConfig;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::steps::{lower_grad_checked, plain_step, Outcome};
use crate::variance::storm_update;

/// The knobs of MRBO (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MrboConfig {
    /// s in η_k = s/(m + k)^{1/3}.
    pub step_scale: f64,
    /// m in η_k = s/(m + k)^{1/3}.
    pub offset: f64,
    /// λ: x moves by λ η_k v_k.
    pub x_scale: f64,
    /// γ: y moves by γ η_k u_k.
    pub y_scale: f64,
    /// c₁: the x momentum weight is c₁ η².
    pub x_momentum: f64,
    /// c₂: the y momentum weight is c₂ η².
    pub y_momentum: f64,
    /// The Neumann series of the hypergradient estimate.
    pub neumann: NeumannConfig,
}

impl Default for MrboConfig {
    fn default() -> Self {
        Self {
            step_scale: 1.0,
            offset: 1.0,
            x_scale: 0.05,
            y_scale: 0.05,
            x_momentum: 1.0,
            y_momentum: 1.0,
            neumann: NeumannConfig::deterministic(5, 0.1),
        }
    }
}

impl MrboConfig {
    /// η_k.
    pub fn eta(&self, k: u64) -> f64 {
        self.step_scale / (self.offset + k as f64).cbrt()
    }
}

/// What the double-momentum rule reads from a configuration, so that MRBO and SUSTAIN, which
/// share the rule and differ in its constants, each keep their own knobs and name.
pub trait DoubleMomentum: Method {
    /// The (x, y) steps of iteration k.
    fn steps_at(&self, k: u64) -> (f64, f64);
    /// The (x, y) momentum weights of iteration k ≥ 1, each at most 1.
    fn weights_at(&self, k: u64) -> (f64, f64);
    /// The Neumann series of the hypergradient estimate.
    fn neumann(&self) -> &NeumannConfig;
}

impl DoubleMomentum for MrboConfig {
    fn steps_at(&self, k: u64) -> (f64, f64) {
        (self.x_scale * self.eta(k), self.y_scale * self.eta(k))
    }

    fn weights_at(&self, k: u64) -> (f64, f64) {
        let eta = self.eta(k - 1);
        (
            (self.x_momentum * eta * eta).min(1.0),
            (self.y_momentum * eta * eta).min(1.0),
        )
    }

    fn neumann(&self) -> &NeumannConfig {
        &self.neumann
    }
}

impl Method for MrboConfig {
    const NAME: &'static str = "mrbo";
    const HINT: &'static str = "step_scale (η_k), x_scale (λ), y_scale (γ)";

    crate::checks!(
        step_scale: positive,
        offset: positive,
        x_scale: positive,
        y_scale: positive,
        x_momentum: positive,
        y_momentum: positive,
        neumann: valid,
    );

    fn steps(&mut self) -> Steps<'_> {
        // Not `step_scale`: η_k also sets the momentum weights c·η_k².
        Steps::new(&mut self.y_scale, &mut self.x_scale)
    }

    crate::rule_optimizer!(|_, at| Mrbo::start(at.x, at.y));
}

/// MRBO's rule, STORM-style recursive momentum on both levels; also SUSTAIN's (`C`).
pub struct Mrbo<X, Y, C = MrboConfig> {
    u: Y,
    v: X,
    x_prev: X,
    y_prev: Y,
    config: PhantomData<fn() -> C>,
}

impl<X, Y, C> Mrbo<X, Y, C> {
    /// The memory at iteration 0: zeros (the first iteration takes the plain estimates).
    pub fn start<E: Real>(x: &X, y: &Y) -> Self
    where
        Cpu: Device<E>,
        X: Params<E>,
        Y: Params<E>,
    {
        Self {
            u: y.zeros_like(),
            v: x.zeros_like(),
            x_prev: x.zeros_like(),
            y_prev: y.zeros_like(),
            config: PhantomData,
        }
    }
}

impl<E: Real, P: BilevelProblem<E>, C: DoubleMomentum> Rule<E, P> for Mrbo<P::X, P::Y, C>
where
    Cpu: Device<E>,
{
    type Config = C;
    crate::saved_memory!(vector u, vector v, vector x_prev, vector y_prev);

    fn iterate(&mut self, it: Iteration<'_, E, P, C>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let neumann = c.neumann();
        let batch = oracles.lower_batch();
        let samples = neumann.draw(oracles);
        let g = lower_grad_checked(oracles, x, y, &batch, site)?;
        let est = neumann.hypergradient(oracles, x, y, &samples, site)?;
        if t == 0 {
            self.u = g.dy.clone();
            self.v = est.h.clone();
        } else {
            let (a, b) = c.weights_at(t);
            let (x_prev, y_prev) = (&self.x_prev, &self.y_prev);
            let g_old = lower_grad_checked(oracles, x_prev, y_prev, &batch, site)?;
            let est_old = neumann.hypergradient(oracles, x_prev, y_prev, &samples, site)?;
            storm_update(&mut self.u, &g.dy, &g_old.dy, E::of(b));
            storm_update(&mut self.v, &est.h, &est_old.h, E::of(a));
        }
        self.x_prev = x.duplicate();
        self.y_prev = y.duplicate();
        let (x_step, y_step) = c.steps_at(t);
        y.add_scaled(-E::of(y_step), &self.u);
        let (step_size, x_step_norm) = plain_step(x, &self.v, E::of(x_step));
        oracles.project_x(x);
        site.check("lower variable y", y)?;
        site.check("upper variable x", x)?;
        Ok(est.outcome(&g, step_size, x_step_norm))
    }
}
