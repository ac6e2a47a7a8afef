//! BOME (Ye, Liu, Wright, Stone, Liu, NeurIPS 2022, "BOME! Bilevel Optimization Made Easy"): a
//! first-order method on the value-function reformulation `min f(x, y) s.t. q(x, y) ≤ 0`,
//! `q(x, y) = g(x, y) − min_θ g(x, θ)`. Each iteration estimates the inner minimum by T SGD steps
//! from the current y and moves x and y together along `∇f + λ ∇q̂`, with the smallest λ ≥ 0
//! that makes the step decrease q̂ at rate φ = η_φ ‖∇q̂‖² (the paper's "grad_norm" choice of φ).
//!
//! ```text
//! θ ← T SGD steps of size α on fresh batches from θ = y     (y itself does not move here)
//! ∇q̂ = (∇_x G(x, y; ζ) − ∇_x G(x, θ; ζ),  ∇_y G(x, y; ζ))   one ζ for both points
//! λ = max(η_φ ‖∇q̂‖² − ⟨∇F(x, y; ξ), ∇q̂⟩, 0) / ‖∇q̂‖²       (λ∇q̂ = 0 when ∇q̂ = 0)
//! y ← y − γ_t (∇_y F + λ ∇_y q̂),   x ← x − η_t (∇_x F + λ ∇_x q̂)
//! ```
//! No second-order product: the cost is T + 2 lower gradients and one upper gradient. The
//! paper's joint step ξ is γ_t for y and η_t for x (benchopt's `outer_ratio`), and its inner
//! step α is separate from them (benchopt uses one step for both; a small joint step then leaves
//! θ at y, so q̂ ≈ 0 and the method ignores the lower level). λ∇q̂ is formed as
//! `max(η_φ‖∇q̂‖² − ⟨∇F, ∇q̂⟩, 0)/‖∇q̂‖ · ∇q̂/‖∇q̂‖`, whose length is at most ‖∇F‖ + η_φ‖∇q̂‖:
//! λ alone overflows as ∇q̂ → 0 (below ‖∇q̂‖ = 1e-30 the term is dropped). With constant steps the iterates settle into a cycle whose size
//! scales with the steps (on the test quadratic ‖∇Φ‖ stalls at 2e-2 to 0.2 of its start);
//! decaying steps shrink it (docs/algorithms.md).

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
    lower_grad_checked, plain_step, project_and_check_x, sgd_on_lower, upper_grad_checked,
    Outcome,
};

/// The knobs of BOME (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BomeConfig {
    /// η_t: the x step.
    pub eta: PowerSchedule,
    /// γ_t: the y step.
    pub gamma: PowerSchedule,
    /// α: the step of the inner SGD that estimates θ ≈ argmin g(x, ·).
    pub inner_step: f64,
    /// T: SGD steps of the inner estimate θ.
    pub inner_steps: usize,
    /// η_φ: the rate φ = η_φ ‖∇q̂‖² at which each step must decrease q̂.
    pub phi_scale: f64,
}

impl Default for BomeConfig {
    /// benchopt's BOME values: steps 0.1 for x, y and the inner SGD, T = 10, η_φ = 0.5.
    fn default() -> Self {
        Self {
            eta: PowerSchedule::constant(0.1),
            gamma: PowerSchedule::constant(0.1),
            inner_step: 0.1,
            inner_steps: 10,
            phi_scale: 0.5,
        }
    }
}

impl Method for BomeConfig {
    const NAME: &'static str = "bome";
    const HINT: &'static str = "eta for x, gamma for y";

    crate::checks!(
        eta: valid,
        gamma: valid,
        inner_step: positive,
        inner_steps: at_least_one,
        phi_scale: positive,
    );

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma, &mut self.eta)
    }

    crate::rule_optimizer!(|_, _| Bome);
}

/// Below this ‖∇q̂‖ the constraint's gradient is taken as zero (λ∇q̂ = 0): 1/‖∇q̂‖ must stay
/// finite in f32.
const NEGLIGIBLE: f64 = 1e-30;

/// BOME keeps nothing between iterations: θ starts from y each time.
pub struct Bome;

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for Bome
where
    Cpu: Device<E>,
{
    type Config = BomeConfig;
    crate::saved_memory!();

    fn iterate(&mut self, it: Iteration<'_, E, P, BomeConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let mut theta = y.duplicate();
        sgd_on_lower(oracles, x, &mut theta, E::of(c.inner_step), c.inner_steps, site)?;
        let (xi, zeta) = (oracles.upper_batch(), oracles.lower_batch());
        let upper = upper_grad_checked(oracles, x, y, &xi, site)?;
        let at_y = lower_grad_checked(oracles, x, y, &zeta, site)?;
        let at_theta = lower_grad_checked(oracles, x, &theta, &zeta, site)?;
        let lower_grad_norm = at_y.dy.norm().f64();
        let (mut q_x, q_y) = (at_y.dx, at_y.dy);
        q_x.add_scaled(-E::one(), &at_theta.dx);
        let q_norm = (q_x.norm_sq().f64() + q_y.norm_sq().f64()).sqrt();
        let along = upper.dx.dot(&q_x).f64() + upper.dy.dot(&q_y).f64();
        let (mut d_x, mut d_y) = (upper.dx, upper.dy);
        if q_norm > NEGLIGIBLE {
            // λ∇q̂ = (length along the unit vector) · ∇q̂/‖∇q̂‖.
            let length = (c.phi_scale * q_norm * q_norm - along).max(0.0) / q_norm;
            let (mut unit_x, mut unit_y) = (q_x, q_y);
            unit_x.scale(E::of(1.0 / q_norm));
            unit_y.scale(E::of(1.0 / q_norm));
            d_x.add_scaled(E::of(length), &unit_x);
            d_y.add_scaled(E::of(length), &unit_y);
        }
        y.add_scaled(-E::of(c.gamma.at(t)), &d_y);
        site.check("lower variable y", y)?;
        let (step_size, x_step_norm) = plain_step(x, &d_x, E::of(c.eta.at(t)));
        project_and_check_x(oracles, x, site)?;
        Ok(Outcome {
            upper_loss: Some(upper.value.f64()),
            lower_loss: Some(at_y.value.f64()),
            hypergrad_norm: d_x.norm().f64(),
            lower_grad_norm: Some(lower_grad_norm),
            linear_system_residual: None,
            step_size,
            x_step_norm,
        })
    }
}
