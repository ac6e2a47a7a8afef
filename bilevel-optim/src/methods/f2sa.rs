//! F2SA (Kwon, Kwon, Wright, Nowak, ICML 2023): fully first order. The penalty
//! `L_λ(x, y) = f(x, y) + λ (g(x, y) − min_z g(x, z))` is minimized with λ increasing; z tracks
//! `argmin g`, y tracks `argmin L_λ`. No second-order oracle is called.
//!
//! ```text
//! z_{t+1} = z_t − γ_z ∇_y G(x_t, z_t; ζ)
//! y_{t+1} = y_t − (γ_y / max(λ, 1)) (∇_y F(x_t, y_t; ξ) + λ ∇_y G(x_t, y_t; ζ))
//! x_{t+1} = x_t − (η_t / max(λ, 1)) (∇_x F(x_t, y_{t+1}; ξ') + λ (∇_x G(x_t, y_{t+1}; ζ')
//!                                                               − ∇_x G(x_t, z_{t+1}; ζ')))
//! λ ← min(λ + δ, λ_max)
//! ```
//! The x step is the paper's (Algorithm 1, and benchopt's `f2sa.py`): its gradients are taken
//! at the updated y and z, on fresh batches ξ', ζ' (one ζ' for both ∇_x G, so their difference
//! has less noise). `x_gradients = "simultaneous"` keeps the cheaper variant that takes every
//! gradient at (x_t, y_t, z_t) on ξ, ζ (1 ∇F and 2 ∇G per iteration instead of 2 and 4); the
//! bench's F2SA results before this option existed were made with it.
//!
//! Both steps are divided by λ (once λ > 1): the penalty's curvature in y grows like λ, and the
//! x gradient amplifies an error in y − z by λ, so a step that does not shrink with λ makes the
//! coupled iteration unstable once λ is large (the analysis keeps step × λ bounded).
//!
//! The letters are the paper's. **The lower variable the caller holds is the paper's z**, the
//! iterate of `argmin g` that approximates y*(x) (benchopt's `f2sa.py` reports this one too);
//! the paper's y, which has seen f, is the method's memory (`y_lambda`), as in F2BA.

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
    lower_grad_checked, penalty_direction, penalty_hypergradient, plain_step,
    project_and_check_x, upper_grad_checked, Outcome,
};

/// The knobs of F2SA (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct F2saConfig {
    /// η_t: the x step (divided by max(λ, 1)).
    pub eta: PowerSchedule,
    /// γ_y: the y step (divided by max(λ, 1)).
    pub gamma_y: f64,
    /// γ_z: the z step.
    pub gamma_z: f64,
    /// λ₀: the initial penalty.
    pub lambda: f64,
    /// δ: the increase of λ per iteration.
    pub lambda_increment: f64,
    /// λ stops growing here.
    pub lambda_max: f64,
    /// Where the x step's gradients are taken: at the updated y and z on fresh batches (the
    /// paper), or at the current ones with the y and z steps' batches.
    pub x_gradients: XGradients,
}

/// Where F2SA takes its x step's gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum XGradients {
    /// At (x_t, y_{t+1}, z_{t+1}) on fresh ξ', ζ': the paper's Algorithm 1.
    #[default]
    Updated,
    /// At (x_t, y_t, z_t) on the y and z steps' ξ, ζ: half the gradient calls.
    Simultaneous,
}

impl Default for F2saConfig {
    /// The SLIP README's hyper-representation run: γ 5e-2, η 5e-2, λ₀ 1e-2, δλ 0.1, ν 5e-2.
    fn default() -> Self {
        Self {
            eta: PowerSchedule::constant(0.05),
            gamma_y: 0.05,
            gamma_z: 0.05,
            lambda: 0.01,
            lambda_increment: 0.1,
            lambda_max: 1e4,
            x_gradients: XGradients::Updated,
        }
    }
}

impl Method for F2saConfig {
    const NAME: &'static str = "f2sa";
    const HINT: &'static str =
        "eta for x, gamma_y for y, gamma_z for z, or a slower lambda_increment";

    crate::checks!(
        eta: valid,
        gamma_y: positive,
        gamma_z: positive,
        lambda: positive,
        lambda_increment: non_negative,
        lambda_max: positive,
    );

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma_y, &mut self.eta).with_lower(&mut self.gamma_z)
    }

    crate::rule_optimizer!(|config, at| F2sa {
        lambda: config.lambda,
        y_lambda: at.y.duplicate(),
    });
}

/// F2SA: the fully first-order penalty method with an increasing λ.
pub struct F2sa<Y> {
    /// The paper's y ≈ argmin_y L_λ(x, y) (the caller's y is the paper's z).
    y_lambda: Y,
    lambda: f64,
}

impl<Y> F2sa<Y> {
    /// The current penalty weight λ.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for F2sa<P::Y>
where
    Cpu: Device<E>,
{
    type Config = F2saConfig;
    crate::saved_memory!(vector y_lambda, scalar lambda);

    fn iterate(&mut self, it: Iteration<'_, E, P, F2saConfig>) -> Result<Outcome, BilevelError> {
        // `z` is the caller's y (the paper's z), `y` the penalty's (the paper's y).
        let Iteration { oracles, x, y: z, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let y = &mut self.y_lambda;
        let lambda = E::of(self.lambda);
        let (xi, zeta) = (oracles.upper_batch(), oracles.lower_batch());
        let upper = upper_grad_checked(oracles, x, y, &xi, site)?;
        let at_y = lower_grad_checked(oracles, x, y, &zeta, site)?;
        let at_z = lower_grad_checked(oracles, x, z, &zeta, site)?;

        z.add_scaled(-E::of(c.gamma_z), &at_z.dy);
        let mut dy = upper.dy.clone();
        dy.add_scaled(lambda, &at_y.dy);
        y.add_scaled(-E::of(c.gamma_y / self.lambda.max(1.0)), &dy);
        site.check("penalty variable y_lambda", y)?;
        site.check("lower variable y", z)?;
        let dx = match c.x_gradients {
            XGradients::Simultaneous => penalty_direction(&upper.dx, &at_y.dx, &at_z.dx, lambda),
            XGradients::Updated => {
                let fresh = (oracles.upper_batch(), oracles.lower_batch());
                let at = (&*x, &*y, &*z);
                penalty_hypergradient(oracles, at, lambda, (&fresh.0, &fresh.1), site)?.d
            }
        };
        let (step_size, x_step_norm) =
            plain_step(x, &dx, E::of(c.eta.at(t) / self.lambda.max(1.0)));
        project_and_check_x(oracles, x, site)?;
        self.lambda = (self.lambda + c.lambda_increment).min(c.lambda_max);
        Ok(Outcome {
            upper_loss: Some(upper.value.f64()),
            lower_loss: Some(at_z.value.f64()),
            hypergrad_norm: dx.norm().f64(),
            lower_grad_norm: Some(at_z.dy.norm().f64()),
            linear_system_residual: None,
            step_size,
            x_step_norm,
        })
    }
}
