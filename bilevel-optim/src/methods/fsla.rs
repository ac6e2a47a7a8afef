//! FSLA (Li, Gu, Huang, AAAI 2022): fully single loop. y and the linear-system variable z take
//! one step each, then x moves along a STORM (recursive momentum) estimate of the hypergradient,
//! whose correction evaluates the previous iteration's point on the same samples.
//!
//! ```text
//! y_{t+1} = y_t − ρ_t ∇_y G(x_t, y_t; ζ)
//! z_{t+1} = z_t − ρ_t (H(x_t, y_{t+1}; ζ') z_t − ∇_y F(x_t, y_{t+1}; ξ))
//! h(x, y, z) = ∇_x F(x, y; ξ') − J(x, y; ζ'') z
//! d_t = h(x_t, y_{t+1}, z_{t+1}) + (1 − η_t)(d_{t−1} − h(x_{t−1}, y_t, z_t))    (d_0 = h(x_0, y_1, z_1))
//! x_{t+1} = x_t − α_t d_t
//! ```
//! The same ξ', ζ'' serve both points of the correction. benchopt's `fsla.py` starts with d = 0
//! and x_{−1} = 0, so its first correction subtracts an estimate at the origin; here the first
//! direction is the plain estimate, as in the paper's initialization.

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::rule::{Iteration, Rule};
use crate::error::BilevelError;
use crate::oracles::Oracles;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;
use crate::steps::{
    hypergradient_estimate, linear_system_step, lower_grad_in_y_checked, plain_step, project_and_check_x,
    upper_grad_checked, Outcome, Site,
};
use crate::variance::storm_update;

/// The knobs of FSLA (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FslaConfig {
    /// ρ_t: the step of y and z.
    pub rho: PowerSchedule,
    /// α_t: the x step.
    pub alpha: PowerSchedule,
    /// η_t: the weight of the fresh estimate in the recursive momentum (capped at 1).
    pub momentum: PowerSchedule,
}

impl Default for FslaConfig {
    /// benchopt's decay, every schedule like 1/√(t+1), at the BO-REP paper's step scale 0.05
    /// (benchopt's momentum scale 0.1).
    fn default() -> Self {
        let decaying = |initial| PowerSchedule {
            initial,
            exponent: 0.5,
        };
        Self {
            rho: decaying(0.05),
            alpha: decaying(0.05),
            momentum: decaying(0.1),
        }
    }
}

impl Method for FslaConfig {
    const NAME: &'static str = "fsla";
    const HINT: &'static str = "alpha for x, rho for y and z";

    crate::checks!(rho: valid, alpha: valid, momentum: valid);

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.rho, &mut self.alpha)
    }

    crate::rule_optimizer!(|_, at| Fsla {
        z: at.y.zeros_like(),
        d: at.x.zeros_like(),
        x_prev: at.x.duplicate(),
    });
}

/// FSLA's memory.
pub struct Fsla<X, Y> {
    /// z_t ≈ [∇²_yy G]⁻¹ ∇_y F.
    z: Y,
    /// d_{t−1}: the momentum direction.
    d: X,
    /// x_{t−1}: where the correction evaluates the previous estimate.
    x_prev: X,
}

/// `h(x, y, z) = ∇_x F(x, y; ξ') − J(x, y; ζ'') z`, checked.
fn estimate<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    (x, y, z): (&P::X, &P::Y, &P::Y),
    (xi, zeta): (&P::UpperBatch, &P::LowerBatch),
    site: Site,
) -> Result<P::X, BilevelError>
where
    Cpu: Device<E>,
{
    let upper = upper_grad_checked(oracles, x, y, xi, site)?;
    let jz = oracles.jvp(x, y, z, zeta)?;
    site.check("cross product ∇²_xy g·z", &jz)?;
    Ok(hypergradient_estimate(&upper.dx, &jz))
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for Fsla<P::X, P::Y>
where
    Cpu: Device<E>,
{
    type Config = FslaConfig;
    crate::saved_memory!(vector z, vector d, vector x_prev);

    fn iterate(&mut self, it: Iteration<'_, E, P, FslaConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let rho = E::of(c.rho.at(t));
        let (y_old, z_old) = (y.duplicate(), self.z.duplicate());

        let zeta = oracles.lower_batch();
        let (lower_loss, grad_y) = lower_grad_in_y_checked(oracles, x, y, &zeta, site)?;
        y.add_scaled(-rho, &grad_y);
        site.check("lower variable y", y)?;

        let (zeta, xi) = (oracles.lower_batch(), oracles.upper_batch());
        let hz = oracles.hvp(x, y, &self.z, &zeta)?;
        site.check("Hessian-vector product ∇²_yy g·z", &hz)?;
        let upper = upper_grad_checked(oracles, x, y, &xi, site)?;
        let residual = linear_system_step(&mut self.z, &hz, &upper.dy, rho, None);
        site.check("linear-system variable z", &self.z)?;

        let (xi, zeta) = (oracles.upper_batch(), oracles.lower_batch());
        let h = estimate(oracles, (x, y, &self.z), (&xi, &zeta), site)?;
        if t == 0 {
            self.d = h;
        } else {
            let old = (&self.x_prev, &y_old, &z_old);
            let h_old = estimate(oracles, old, (&xi, &zeta), site)?;
            let eta = c.momentum.at(t).min(1.0);
            storm_update(&mut self.d, &h, &h_old, E::of(eta));
        }
        self.x_prev = x.duplicate();
        let (step_size, x_step_norm) = plain_step(x, &self.d, E::of(c.alpha.at(t)));
        project_and_check_x(oracles, x, site)?;
        Ok(Outcome {
            upper_loss: Some(upper.value.f64()),
            lower_loss: Some(lower_loss),
            hypergrad_norm: self.d.norm().f64(),
            lower_grad_norm: Some(grad_y.norm().f64()),
            linear_system_residual: Some(residual.f64()),
            step_size,
            x_step_norm,
        })
    }
}
