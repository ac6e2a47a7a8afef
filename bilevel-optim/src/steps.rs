//! Update rules shared by several methods, written once so each method reads like its pseudocode.

use dfdx::prelude::{Cpu, Device};

use crate::error::BilevelError;
use crate::optimizer::StepReport;
use crate::oracles::{LossGrad, OracleCounts, Oracles, SecondOrder};
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;

/// Where a check happens, so a non-finite value is reported with the method and iteration.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    /// The method's name.
    pub method: &'static str,
    /// The iteration being run.
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

    /// [`Site::check`] after `value` took a step along `step`: only the tensors the step changed
    /// (those where `step` is not a shared zero) are read, the others were checked before.
    pub fn check_stepped<E: Real, T: Params<E>>(
        &self,
        quantity: &str,
        value: &T,
        step: &T,
    ) -> Result<(), BilevelError>
    where
        Cpu: Device<E>,
    {
        let changed: Vec<bool> = step.shared_zero_mask().iter().map(|zero| !zero).collect();
        match value.first_non_finite_among(Some(&changed)) {
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
        let (value, dy) = lower_grad_in_y_checked(oracles, x, y, &batch, site)?;
        y.add_scaled(-gamma, &dy);
        site.check_stepped("lower variable y", y, &dy)?;
        last = Some(value);
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
/// `η/‖d‖` (0 when d = 0, in which case x stays put) and the step's length, for the report.
pub fn normalized_step<E: Real, X: Params<E>>(x: &mut X, d: &X, eta: E) -> (f64, f64)
where
    Cpu: Device<E>,
{
    let n = d.norm();
    let s = if n > E::zero() {
        let s = eta / n;
        x.add_scaled(-s, d);
        s
    } else {
        E::zero()
    };
    (s.f64(), (s * n).f64())
}

/// The end of every x step: x projected onto the problem's domain, then checked.
pub fn project_and_check_x<E: Real, P: BilevelProblem<E>>(
    oracles: &Oracles<E, P>,
    x: &mut P::X,
    site: Site,
) -> Result<(), BilevelError>
where
    Cpu: Device<E>,
{
    oracles.project_x(x);
    site.check("upper variable x", x)
}

/// The bookkeeping every iteration shares: the site for non-finite checks and the oracle counts
/// before the iteration, turned into a [`StepReport`] at the end.
pub struct IterationScope {
    /// Where non-finite values are reported.
    pub site: Site,
    before: OracleCounts,
}

/// What an iteration measured: the fields of [`StepReport`] a method fills in.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// See [`StepReport::upper_loss`].
    pub upper_loss: Option<f64>,
    /// See [`StepReport::lower_loss`].
    pub lower_loss: Option<f64>,
    /// See [`StepReport::hypergrad_norm`].
    pub hypergrad_norm: f64,
    /// See [`StepReport::lower_grad_norm`].
    pub lower_grad_norm: Option<f64>,
    /// See [`StepReport::linear_system_residual`].
    pub linear_system_residual: Option<f64>,
    /// See [`StepReport::step_size`].
    pub step_size: f64,
    /// See [`StepReport::x_step_norm`].
    pub x_step_norm: f64,
}

impl IterationScope {
    /// Starts iteration `iteration` of `method`, remembering the counts so far.
    pub fn begin<E: Real, P: BilevelProblem<E>>(
        method: &'static str,
        hint: &'static str,
        iteration: u64,
        oracles: &Oracles<E, P>,
    ) -> Self
    where
        Cpu: Device<E>,
    {
        Self {
            site: Site {
                method,
                iteration,
                hint,
            },
            before: oracles.counts(),
        }
    }

    /// The iteration's report: `outcome` with the oracle calls made since [`IterationScope::begin`].
    pub fn report<E: Real, P: BilevelProblem<E>>(
        &self,
        oracles: &Oracles<E, P>,
        outcome: Outcome,
    ) -> StepReport
    where
        Cpu: Device<E>,
    {
        let after = oracles.counts();
        StepReport {
            iteration: self.site.iteration,
            upper_loss: outcome.upper_loss,
            lower_loss: outcome.lower_loss,
            hypergrad_norm: outcome.hypergrad_norm,
            lower_grad_norm: outcome.lower_grad_norm,
            linear_system_residual: outcome.linear_system_residual,
            step_size: outcome.step_size,
            x_step_norm: outcome.x_step_norm,
            oracle_calls: after.since(&self.before),
            oracle_totals: after,
        }
    }
}

/// `∇F` on `batch`, with the value and both gradients checked.
pub fn upper_grad_checked<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    x: &P::X,
    y: &P::Y,
    batch: &P::UpperBatch,
    site: Site,
) -> Result<LossGrad<E, P::X, P::Y>, BilevelError>
where
    Cpu: Device<E>,
{
    let g = oracles.upper_grad(x, y, batch)?;
    site.check_scalar("upper loss f", g.value.f64())?;
    site.check("upper gradient ∇_x f", &g.dx)?;
    site.check("upper gradient ∇_y f", &g.dy)?;
    Ok(g)
}

/// `∇G` on `batch`, with the value and both gradients checked.
pub fn lower_grad_checked<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    x: &P::X,
    y: &P::Y,
    batch: &P::LowerBatch,
    site: Site,
) -> Result<LossGrad<E, P::X, P::Y>, BilevelError>
where
    Cpu: Device<E>,
{
    let g = oracles.lower_grad(x, y, batch)?;
    site.check_scalar("lower loss g", g.value.f64())?;
    site.check("lower gradient ∇_y g", &g.dy)?;
    site.check("lower gradient ∇_x g", &g.dx)?;
    Ok(g)
}

/// `G` and `∇_y G` on `batch` by dfdx's autodiff ([`Oracles::lower_grad_in_y`]), both checked:
/// the gradient every y step uses.
pub fn lower_grad_in_y_checked<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    x: &P::X,
    y: &P::Y,
    batch: &P::LowerBatch,
    site: Site,
) -> Result<(f64, P::Y), BilevelError>
where
    Cpu: Device<E>,
{
    let (value, dy) = oracles.lower_grad_in_y(x, y, batch)?;
    site.check_scalar("lower loss g", value.f64())?;
    site.check("lower gradient ∇_y g", &dy)?;
    Ok((value.f64(), dy))
}

/// One second-order pass (∇_y G, H·v, J·v) on `batch`, every part checked.
pub fn second_order_checked<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    x: &P::X,
    y: &P::Y,
    v: &P::Y,
    batch: &P::LowerBatch,
    site: Site,
) -> Result<SecondOrder<P::X, P::Y>, BilevelError>
where
    Cpu: Device<E>,
{
    let so = oracles.hvp_jvp(x, y, v, batch)?;
    site.check("Hessian-vector product ∇²_yy g·v", &so.hvp)?;
    site.check("cross product ∇²_xy g·v", &so.jvp)?;
    Ok(so)
}

/// A plain step `x ← x − a·d`; returns (a, ‖a·d‖) for the report.
pub fn plain_step<E: Real, X: Params<E>>(x: &mut X, d: &X, a: E) -> (f64, f64)
where
    Cpu: Device<E>,
{
    x.add_scaled(-a, d);
    (a.f64(), (a * d.norm()).f64())
}

/// The fully first-order methods' (F2SA, F2BA) hypergradient estimate from the penalty
/// `f + λ (g(·, y) − g(·, z))`: `∇_x F(x, y; ξ) + λ (∇_x G(x, y; ζ) − ∇_x G(x, z; ζ))`, one ζ for
/// both lower gradients so that their difference carries less noise.
pub fn penalty_hypergradient<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    (x, y, z): (&P::X, &P::Y, &P::Y),
    lambda: E,
    (xi, zeta): (&P::UpperBatch, &P::LowerBatch),
    site: Site,
) -> Result<PenaltyEstimate<E, P::X, P::Y>, BilevelError>
where
    Cpu: Device<E>,
{
    let upper = upper_grad_checked(oracles, x, y, xi, site)?;
    let at_y = lower_grad_checked(oracles, x, y, zeta, site)?;
    let at_z = lower_grad_checked(oracles, x, z, zeta, site)?;
    let d = penalty_direction(&upper.dx, &at_y.dx, &at_z.dx, lambda);
    Ok(PenaltyEstimate {
        d,
        upper,
        at_y,
        at_z,
    })
}

/// [`penalty_hypergradient`]'s estimate and the gradients it measured on the way.
pub struct PenaltyEstimate<E, X, Y> {
    /// The estimate `∇_x F + λ (∇_x G(y) − ∇_x G(z))`.
    pub d: X,
    /// F and ∇F at (x, y) on ξ.
    pub upper: LossGrad<E, X, Y>,
    /// G and ∇G at (x, y) on ζ.
    pub at_y: LossGrad<E, X, Y>,
    /// G and ∇G at (x, z) on ζ.
    pub at_z: LossGrad<E, X, Y>,
}

/// `∇_x F + λ (∇_x G(y) − ∇_x G(z))` from gradients already taken.
pub fn penalty_direction<E: Real, X: Params<E>>(
    upper_dx: &X,
    at_y_dx: &X,
    at_z_dx: &X,
    lambda: E,
) -> X
where
    Cpu: Device<E>,
{
    let mut d = upper_dx.clone();
    d.add_scaled(lambda, at_y_dx);
    d.add_scaled(-lambda, at_z_dx);
    d
}

/// The y and z half of a single-loop iteration of the linear-system family (SOBA, MA-SOBA,
/// SLIP), everything evaluated at (x_t, y_t, z_t) on a fresh ξ and, on a fresh ζ, dfdx's
/// `∇_y G` and one second-order pass: `y ← y − a ∇_y G`, `z ← Π_{‖z‖≤ρ}(z − b (H z − ∇_y F))`,
/// and the estimate `h = ∇_x F − J z_t` the method then uses for its x step.
pub struct SingleLoop<X> {
    /// The hypergradient estimate `∇_x F − J z_t`.
    pub h: X,
    /// F on ξ.
    pub upper_loss: f64,
    /// G on ζ.
    pub lower_loss: f64,
    /// ‖∇_y G‖ on ζ.
    pub lower_grad_norm: f64,
    /// The linear system's residual `‖H z − ∇_y F‖` before the z step.
    pub residual: f64,
}

/// Runs the y and z half of the iteration; see [`SingleLoop`].
#[allow(clippy::too_many_arguments)]
pub fn single_loop_lower_and_z<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    x: &P::X,
    y: &mut P::Y,
    z: &mut P::Y,
    y_step: E,
    z_step: E,
    z_radius: Option<E>,
    site: Site,
) -> Result<SingleLoop<P::X>, BilevelError>
where
    Cpu: Device<E>,
{
    let xi = oracles.upper_batch();
    let zeta = oracles.lower_batch();
    let upper = upper_grad_checked(oracles, x, y, &xi, site)?;
    let (lower_loss, grad_y) = lower_grad_in_y_checked(oracles, x, y, &zeta, site)?;
    let lower = second_order_checked(oracles, x, y, z, &zeta, site)?;
    y.add_scaled(-y_step, &grad_y);
    let residual = linear_system_step(z, &lower.hvp, &upper.dy, z_step, z_radius);
    site.check("lower variable y", y)?;
    site.check("linear-system variable z", z)?;
    Ok(SingleLoop {
        h: hypergradient_estimate(&upper.dx, &lower.jvp),
        upper_loss: upper.value.f64(),
        lower_loss,
        lower_grad_norm: grad_y.norm().f64(),
        residual: residual.f64(),
    })
}

impl<X> SingleLoop<X> {
    /// The report of the iteration, given the x step the method took.
    pub fn outcome<E: Real>(&self, step_size: f64, x_step_norm: f64) -> Outcome
    where
        Cpu: Device<E>,
        X: Params<E>,
    {
        Outcome {
            upper_loss: Some(self.upper_loss),
            lower_loss: Some(self.lower_loss),
            hypergrad_norm: self.h.norm().f64(),
            lower_grad_norm: Some(self.lower_grad_norm),
            linear_system_residual: Some(self.residual),
            step_size,
            x_step_norm,
        }
    }
}
