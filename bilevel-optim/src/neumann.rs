//! Truncated Neumann series for `[∇²_yy g]⁻¹ b`, deterministic or randomized, and the
//! hypergradient estimate built on it (StocBio, TTSA, BSA, ALSET, MRBO, VRBO, AccBO, AdamBO).
//!
//! With `0 < α ≤ 1/L`, `H⁻¹ = α Σ_{i≥0} (I − αH)^i`, and truncating after Q terms leaves an error
//! that shrinks like `(1 − αμ)^Q`:
//! - deterministic: `v = α Σ_{i=0}^{Q} (I − αH)^i b`, every product on one Hessian batch (Q HVPs);
//! - randomized: draw `q` uniform in `{0, …, Q−1}` and take `v = Qα Π_{i=1}^{q} (I − αH_i) b`, one
//!   batch per factor (q HVPs, (Q−1)/2 on average); unbiased for `α Σ_{i=0}^{Q−1} (I − αH)^i b`.
//!
//! The estimate is `h = ∇_x F(ξ) − ∇²_xy G(ζ')·v` with `b = ∇_y F(ξ)`. Its samples are drawn
//! once into [`NeumannSamples`], so methods with recursive momentum can evaluate the same
//! estimate at two points.

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use crate::error::BilevelError;
use crate::linear_solvers::{conjugate_gradient, CgConfig, HessianOperator};
use crate::oracles::Oracles;
use crate::params::Params;
use crate::passes::LossGrad;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::steps::{
    plain_step, project_and_check_x, sgd_on_lower, upper_grad_checked, Outcome, Site,
};

/// Deterministic truncation (sum of every term) or randomized truncation (one random term).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Truncation {
    /// Every term of the series: Q H·v per estimate.
    Deterministic,
    /// One term, at a uniformly drawn depth q < Q, scaled by Q: an unbiased estimate.
    Randomized,
}

/// How a method approximates `[∇²_yy g]⁻¹ ∇_y f`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeumannConfig {
    /// Deterministic or randomized truncation.
    pub truncation: Truncation,
    /// Q: the number of terms (deterministic: Q HVPs; randomized: q < Q HVPs).
    pub terms: usize,
    /// α: the scale, at most 1/L for convergence of the series.
    pub scale: f64,
    /// Solve the Hessian batch's system by conjugate gradients instead of summing the series
    /// (deterministic truncation only: CG needs the one fixed batch; `terms` and `scale` are
    /// then unused). Absent from a configuration file, the series is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cg: Option<CgConfig>,
}

impl NeumannConfig {
    /// The deterministic series of `terms` terms at scale α.
    pub fn deterministic(terms: usize, scale: f64) -> Self {
        Self {
            truncation: Truncation::Deterministic,
            terms,
            scale,
            cg: None,
        }
    }

    /// The randomized series of at most `terms` terms at scale α.
    pub fn randomized(terms: usize, scale: f64) -> Self {
        Self {
            truncation: Truncation::Randomized,
            terms,
            scale,
            cg: None,
        }
    }

    /// Checks every value; errors name `field`, the series' key in its method's configuration.
    pub fn validate(&self, field: &'static str) -> Result<(), BilevelError> {
        if !(self.scale > 0.0 && self.scale.is_finite()) {
            return Err(BilevelError::InvalidConfig {
                field,
                reason: "scale α must be a positive number".into(),
            });
        }
        if let Some(cg) = &self.cg {
            if self.truncation == Truncation::Randomized {
                return Err(BilevelError::InvalidConfig {
                    field,
                    reason: "cg needs the deterministic truncation (one fixed Hessian batch); \
                             the randomized series draws a batch per factor"
                        .into(),
                });
            }
            cg.validate(field)?;
        }
        if self.truncation == Truncation::Randomized && self.terms == 0 {
            return Err(BilevelError::InvalidConfig {
                field,
                reason: "a randomized series needs terms Q ≥ 1".into(),
            });
        }
        Ok(())
    }

    /// Draws the batches of one estimate: an upper batch, the Hessian batches (one for the
    /// deterministic series, q random ones for the randomized), and the cross-product batch.
    pub fn draw<E: Real, P: BilevelProblem<E>>(
        &self,
        oracles: &mut Oracles<E, P>,
    ) -> NeumannSamples<E, P>
    where
        Cpu: Device<E>,
    {
        let upper = oracles.upper_batch();
        let factors = match self.truncation {
            Truncation::Deterministic => 1,
            Truncation::Randomized => oracles.draw_index(self.terms),
        };
        let hessian = (0..factors).map(|_| oracles.lower_batch()).collect();
        let cross = oracles.lower_batch();
        NeumannSamples {
            upper,
            hessian,
            cross,
        }
    }

    /// `v ≈ [∇²_yy g]⁻¹ b` on the given Hessian batches (by CG from 0 when `cg` is set).
    pub fn inverse_hvp<E: Real, P: BilevelProblem<E>>(
        &self,
        oracles: &mut Oracles<E, P>,
        x: &P::X,
        y: &P::Y,
        b: &P::Y,
        hessian: &[P::LowerBatch],
        site: Site,
    ) -> Result<P::Y, BilevelError>
    where
        Cpu: Device<E>,
    {
        if let Some(cg) = &self.cg {
            let batch = hessian.first().expect("one Hessian batch");
            let mut system = HessianOperator::new(oracles, (x, y), batch, cg.damping, site);
            return Ok(conjugate_gradient(&mut system, b, None, cg)?.v);
        }
        let alpha = E::of(self.scale);
        // p ← (I − αH) p, the factor every term is built from.
        let mut apply = |p: &P::Y, batch: &P::LowerBatch| -> Result<P::Y, BilevelError> {
            let hp = oracles.hvp(x, y, p, batch)?;
            site.check("Hessian-vector product ∇²_yy g·v", &hp)?;
            let mut next = p.clone();
            next.add_scaled(-alpha, &hp);
            Ok(next)
        };
        let v = match self.truncation {
            Truncation::Deterministic => {
                let batch = hessian.first().expect("one Hessian batch");
                let mut term = b.clone();
                let mut sum = b.clone();
                for _ in 0..self.terms {
                    term = apply(&term, batch)?;
                    sum.add_scaled(E::one(), &term);
                }
                sum.scale(alpha);
                sum
            }
            Truncation::Randomized => {
                let mut product = b.clone();
                for batch in hessian {
                    product = apply(&product, batch)?;
                }
                product.scale(E::of(self.terms as f64 * self.scale));
                product
            }
        };
        site.check("Neumann estimate of [∇²_yy g]⁻¹∇_y f", &v)?;
        Ok(v)
    }

    /// `h = ∇_x F − ∇²_xy G·v`, `v` the series applied to `∇_y F`, on the given samples.
    pub fn hypergradient<E: Real, P: BilevelProblem<E>>(
        &self,
        oracles: &mut Oracles<E, P>,
        x: &P::X,
        y: &P::Y,
        samples: &NeumannSamples<E, P>,
        site: Site,
    ) -> Result<NeumannEstimate<P::X>, BilevelError>
    where
        Cpu: Device<E>,
    {
        let upper = upper_grad_checked(oracles, x, y, &samples.upper, site)?;
        let v = self.inverse_hvp(oracles, x, y, &upper.dy, &samples.hessian, site)?;
        let jv = oracles.jvp(x, y, &v, &samples.cross)?;
        site.check("cross product ∇²_xy g·v", &jv)?;
        let mut h = upper.dx;
        h.add_scaled(-E::one(), &jv);
        Ok(NeumannEstimate {
            h,
            upper_loss: upper.value.f64(),
        })
    }
}

/// The batches one Neumann hypergradient estimate uses.
pub struct NeumannSamples<E: Real, P: BilevelProblem<E>>
where
    Cpu: Device<E>,
{
    /// ξ, for ∇F.
    pub upper: P::UpperBatch,
    /// One lower batch per H·v of the series.
    pub hessian: Vec<P::LowerBatch>,
    /// The lower batch of the cross product J·v.
    pub cross: P::LowerBatch,
}

/// A hypergradient estimate and the upper loss seen on its batch.
pub struct NeumannEstimate<X> {
    /// The estimate `∇_x F − J v` of the hypergradient.
    pub h: X,
    /// F on the estimate's upper batch.
    pub upper_loss: f64,
}

impl<X> NeumannEstimate<X> {
    /// The report of an iteration that took this estimate, the lower gradient `lower` and an
    /// x step of multiplier `step_size` and length `x_step_norm` (the momentum methods' report).
    pub fn outcome<E: Real, Y: Params<E>>(
        &self,
        lower: &LossGrad<E, X, Y>,
        step_size: f64,
        x_step_norm: f64,
    ) -> Outcome
    where
        Cpu: Device<E>,
        X: Params<E>,
    {
        Outcome {
            upper_loss: Some(self.upper_loss),
            lower_loss: Some(lower.value.f64()),
            hypergrad_norm: self.h.norm().f64(),
            lower_grad_norm: Some(lower.dy.norm().f64()),
            linear_system_residual: None,
            step_size,
            x_step_norm,
        }
    }
}

/// `inner_steps` SGD steps on y with step γ, then the Neumann hypergradient estimate at the new y.
/// Returns the last lower loss and the estimate.
#[allow(clippy::too_many_arguments)]
pub fn sgd_then_estimate<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    x: &P::X,
    y: &mut P::Y,
    inner_steps: usize,
    gamma: f64,
    neumann: &NeumannConfig,
    site: Site,
) -> Result<(Option<f64>, NeumannEstimate<P::X>), BilevelError>
where
    Cpu: Device<E>,
{
    let lower_loss = sgd_on_lower(oracles, x, y, E::of(gamma), inner_steps, site)?;
    let samples = neumann.draw(oracles);
    let est = neumann.hypergradient(oracles, x, y, &samples, site)?;
    Ok((lower_loss, est))
}

/// The plain step `x ← Π(x − η d)` along a direction built from an estimate, as a report.
pub fn plain_step_outcome<E: Real, P: BilevelProblem<E>>(
    oracles: &Oracles<E, P>,
    x: &mut P::X,
    direction: &P::X,
    eta: f64,
    estimate: &NeumannEstimate<P::X>,
    lower_loss: Option<f64>,
    site: Site,
) -> Result<Outcome, BilevelError>
where
    Cpu: Device<E>,
{
    let (step_size, x_step_norm) = plain_step(x, direction, E::of(eta));
    project_and_check_x(oracles, x, site)?;
    Ok(Outcome {
        upper_loss: Some(estimate.upper_loss),
        lower_loss,
        hypergrad_norm: estimate.h.norm().f64(),
        step_size,
        x_step_norm,
        ..Default::default()
    })
}

/// One iteration of the Neumann family (StocBio, TTSA, BSA, ALSET): `inner_steps` SGD steps on y
/// with step γ, then the Neumann hypergradient at the new y and a plain step `x ← x − η h`.
#[allow(clippy::too_many_arguments)]
pub fn sgd_then_neumann_step<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    x: &mut P::X,
    y: &mut P::Y,
    inner_steps: usize,
    gamma: f64,
    neumann: &NeumannConfig,
    eta: f64,
    site: Site,
) -> Result<Outcome, BilevelError>
where
    Cpu: Device<E>,
{
    let (lower_loss, est) = sgd_then_estimate(oracles, x, y, inner_steps, gamma, neumann, site)?;
    plain_step_outcome(oracles, x, &est.h, eta, &est, lower_loss, site)
}
