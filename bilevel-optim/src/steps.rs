//! Update rules shared by several methods, written once so each method reads like its pseudocode.

use dfdx::prelude::{Cpu, Device};

use crate::error::BilevelError;
use crate::oracles::Oracles;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;

/// Where a check happens, so a non-finite value is reported with the method and iteration.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    pub method: &'static str,
    pub iteration: u64,
    /// The step sizes a user should lower, named as in the method's configuration.
    pub hint: &'static str,
}

impl Site {
    /// Fails with [`BilevelError::NonFinite`] naming `quantity` and the offending tensor.
    pub fn check<E: Real, T: Params<E>>(
        &self,
        quantity: &str,
        value: &T,
    ) -> Result<(), BilevelError>
    where
        Cpu: Device<E>,
    {
        match value.first_non_finite() {
            None => Ok(()),
            Some(tensor) => Err(self.non_finite(format!("{quantity} (tensor '{tensor}')"))),
        }
    }

    /// Fails with [`BilevelError::NonFinite`] when the scalar `value` is NaN or infinite.
    pub fn check_scalar(&self, quantity: &str, value: f64) -> Result<(), BilevelError> {
        if value.is_finite() {
            Ok(())
        } else {
            Err(self.non_finite(format!("{quantity} (= {value})")))
        }
    }

    fn non_finite(&self, quantity: String) -> BilevelError {
        BilevelError::NonFinite {
            method: self.method,
            quantity,
            iteration: self.iteration,
            hint: self.hint,
        }
    }
}

/// `steps` SGD steps on y, each on a fresh lower batch: `y ← y − γ ∇_y G(x, y; ζ_k)`.
/// Returns the lower loss seen at the last step (before it), or `None` when `steps == 0`.
pub fn sgd_on_lower<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    x: &P::X,
    y: &mut P::Y,
    gamma: E,
    steps: usize,
    site: Site,
) -> Result<Option<f64>, BilevelError>
where
    Cpu: Device<E>,
{
    let mut last = None;
    for _ in 0..steps {
        let batch = oracles.lower_batch();
        let g = oracles.lower_grad(x, y, &batch);
        site.check_scalar("lower loss g", g.value.f64())?;
        site.check("lower gradient ∇_y g", &g.dy)?;
        y.add_scaled(-gamma, &g.dy);
        site.check("lower variable y", y)?;
        last = Some(g.value.f64());
    }
    Ok(last)
}

/// One (optionally projected) SGD step on the linear system `∇²_yy G·z = ∇_y F`:
/// `z ← Π_{‖z‖≤ρ}(z − ν (Hz − ∇_y F))`. Returns the residual norm `‖Hz − ∇_y F‖` before the step.
pub fn linear_system_step<E: Real, Y: Params<E>>(
    z: &mut Y,
    hz: &Y,
    grad_y_f: &Y,
    nu: E,
    radius: Option<E>,
) -> E
where
    Cpu: Device<E>,
{
    let mut residual = hz.clone();
    residual.add_scaled(-E::one(), grad_y_f);
    z.add_scaled(-nu, &residual);
    if let Some(r) = radius {
        z.project_ball(r);
    }
    residual.norm()
}

/// The hypergradient estimate `h = ∇_x F − ∇²_xy G·z`.
pub fn hypergradient_estimate<E: Real, X: Params<E>>(grad_x_f: &X, jz: &X) -> X
where
    Cpu: Device<E>,
{
    let mut h = grad_x_f.clone();
    h.add_scaled(-E::one(), jz);
    h
}

/// Exponential moving average `m ← β m + (1 − β) h`.
pub fn momentum_update<E: Real, X: Params<E>>(m: &mut X, h: &X, beta: E)
where
    Cpu: Device<E>,
{
    m.lerp_with(beta, E::one() - beta, h);
}

/// The normalized step `x ← x − η d/‖d‖` with the global norm of d. Returns the multiplier
/// `η/‖d‖` (0 when d = 0, in which case x stays put).
pub fn normalized_step<E: Real, X: Params<E>>(x: &mut X, d: &X, eta: E) -> E
where
    Cpu: Device<E>,
{
    let n = d.norm();
    if n > E::zero() {
        let s = eta / n;
        x.add_scaled(-s, d);
        s
    } else {
        E::zero()
    }
}
