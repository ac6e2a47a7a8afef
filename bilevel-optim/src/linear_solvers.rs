//! Solvers of the lower level's linear system `(∇²_yy G(x, y; ζ) + λI) v = b` on one fixed
//! batch ζ, the system whose solution turns `∇_y F` into the hypergradient's correction
//! `∇²_xy G·v`. The operator ([`HessianOperator`]) is one exact H·v oracle call per application;
//! a solver over it is a loop of such calls. (The truncated Neumann series, which draws a batch
//! per factor, is [`crate::neumann`]; a single z step per iteration is
//! [`crate::steps::linear_system_step`].)

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use crate::error::BilevelError;
use crate::oracles::Oracles;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::steps::Site;

/// `v ↦ (∇²_yy G(x, y; ζ) + λI) v` at fixed (x, y) on one fixed lower batch ζ. Each
/// application is one H·v oracle call, checked for non-finite values.
pub struct HessianOperator<'a, E: Real, P: BilevelProblem<E>>
where
    Cpu: Device<E>,
{
    oracles: &'a mut Oracles<E, P>,
    x: &'a P::X,
    y: &'a P::Y,
    batch: &'a P::LowerBatch,
    damping: E,
    site: Site,
}

impl<'a, E: Real, P: BilevelProblem<E>> HessianOperator<'a, E, P>
where
    Cpu: Device<E>,
{
    /// The operator at (x, y) on `batch`, with damping λ ≥ 0; `site` names non-finite products.
    pub fn new(
        oracles: &'a mut Oracles<E, P>,
        (x, y): (&'a P::X, &'a P::Y),
        batch: &'a P::LowerBatch,
        damping: f64,
        site: Site,
    ) -> Self {
        Self {
            oracles,
            x,
            y,
            batch,
            damping: E::of(damping),
            site,
        }
    }

    /// `(H + λI) v`.
    pub fn apply(&mut self, v: &P::Y) -> Result<P::Y, BilevelError> {
        let mut hv = self.oracles.hvp(self.x, self.y, v, self.batch)?;
        self.site.check("Hessian-vector product ∇²_yy g·v", &hv)?;
        if self.damping != E::zero() {
            hv.add_scaled(self.damping, v);
        }
        Ok(hv)
    }
}

/// The knobs of conjugate gradients.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgConfig {
    /// K: at most this many CG steps, one H·v each.
    pub max_steps: usize,
    /// Stop once `‖b − (H + λI) v‖ ≤ tolerance · ‖b‖`; 0 runs all K steps.
    pub tolerance: f64,
    /// λ ≥ 0: solve `(H + λI) v = b`, which bounds the solution where H is nearly singular.
    pub damping: f64,
}

impl Default for CgConfig {
    /// Ten steps and no damping, run to the end (hypertorch's and TorchOpt's fixed-K CG).
    fn default() -> Self {
        Self {
            max_steps: 10,
            tolerance: 0.0,
            damping: 0.0,
        }
    }
}

impl CgConfig {
    /// Checks every value; errors name `field`, the solver's key in its method's configuration.
    pub fn validate(&self, field: &'static str) -> Result<(), BilevelError> {
        let bad = |reason: &str| {
            Err(BilevelError::InvalidConfig {
                field,
                reason: reason.into(),
            })
        };
        if self.max_steps == 0 {
            return bad("max_steps must be at least 1");
        }
        if !(self.tolerance >= 0.0 && self.tolerance.is_finite()) {
            return bad("tolerance must be a number ≥ 0");
        }
        if !(self.damping >= 0.0 && self.damping.is_finite()) {
            return bad("damping must be a number ≥ 0");
        }
        Ok(())
    }
}

/// Why a solver stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It ran every step it was given.
    StepsDone,
    /// The residual reached the tolerance (or zero).
    Converged,
    /// The operator was not positive definite along a search direction (`⟨d, Ad⟩ ≤ 0`); the
    /// solution is the last iterate before that direction.
    NotPositiveDefinite,
}

/// A solver's answer.
#[derive(Debug, Clone)]
pub struct Solution<Y> {
    /// v ≈ (H + λI)⁻¹ b.
    pub v: Y,
    /// The steps taken (one H·v each, besides the warm start's residual).
    pub steps: usize,
    /// `‖b − (H + λI) v‖`, as the solver's recursion carries it.
    pub residual: f64,
    /// Why it stopped.
    pub stop: Stop,
}

/// Conjugate gradients on `A v = b` from `start` (`None`: from v = 0, which saves the H·v of
/// the starting residual). A must be symmetric; CG then needs no step size and, in exact
/// arithmetic, solves an n-dimensional positive definite system in n steps.
pub fn conjugate_gradient<E: Real, P: BilevelProblem<E>>(
    a: &mut HessianOperator<'_, E, P>,
    b: &P::Y,
    start: Option<&P::Y>,
    config: &CgConfig,
) -> Result<Solution<P::Y>, BilevelError>
where
    Cpu: Device<E>,
{
    let (mut v, mut r) = match start {
        Some(v0) => {
            let mut r = b.clone();
            r.add_scaled(-E::one(), &a.apply(v0)?);
            (v0.clone(), r)
        }
        None => (b.zeros_like(), b.clone()),
    };
    let goal = config.tolerance * b.norm().f64();
    let mut d = r.clone();
    let mut rr = r.norm_sq().f64();
    let mut steps = 0;
    let stop = loop {
        if rr.sqrt() <= goal || rr == 0.0 {
            break Stop::Converged;
        }
        if steps == config.max_steps {
            break Stop::StepsDone;
        }
        let ad = a.apply(&d)?;
        steps += 1;
        let curvature = d.dot(&ad).f64();
        if curvature <= 0.0 {
            break Stop::NotPositiveDefinite;
        }
        let alpha = rr / curvature;
        v.add_scaled(E::of(alpha), &d);
        r.add_scaled(E::of(-alpha), &ad);
        let rr_next = r.norm_sq().f64();
        d.scale(E::of(rr_next / rr));
        d.add_scaled(E::one(), &r);
        rr = rr_next;
    };
    a.site.check("conjugate-gradient solution v", &v)?;
    Ok(Solution {
        v,
        steps,
        residual: rr.sqrt(),
        stop,
    })
}
