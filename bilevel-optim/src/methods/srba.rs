//! SRBA (Dagréou, Moreau, Vaiter, Ablin, "A lower bound and a near-optimal algorithm for
//! bilevel empirical risk minimization", AISTATS 2024): SOBA's three directions estimated by
//! SARAH recursions, restarted from a pass over the whole data every q iterations; constant steps.
//!
//! ```text
//! D(x, y, z; ζ, ξ) = (∇_y G,  H z − ∇_y F,  ∇_x F − J z)
//! t mod q = 0:  (d_y, d_z, d_x) = D(x_t, y_t, z_t; all data)
//! otherwise:    (d_y, d_z, d_x) += D(x_t, y_t, z_t; ζ, ξ) − D(x_{t−1}, y_{t−1}, z_{t−1}; ζ, ξ)
//! y ← y − ρ d_y;   z ← Π_{‖z‖≤r}(z − ρ d_z);   x ← x − γ d_x
//! ```
//! The whole data is the problem's fixed batches, each weighted by its share
//! (`BilevelProblem::lower_part_share`), so the problem must split its data like SABA's.

use std::marker::PhantomData;

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use super::method::{Built, Method, Start, Steps};
use super::rule::{Iteration, Rule, RuleOptimizer};
use crate::error::BilevelError;
use crate::oracles::Oracles;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::steps::{
    hypergradient_estimate, lower_grad_in_y_checked, plain_step, second_order_checked,
    upper_grad_checked, Outcome, Site,
};
use crate::variance::{finite_split, normalized, spider_update};

/// The knobs of SRBA (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SrbaConfig {
    /// ρ: the step of y and z.
    pub rho: f64,
    /// γ: the x step.
    pub gamma: f64,
    /// q: a full pass every q iterations; none: as many as the problem has fixed lower and upper
    /// batches, so that the full passes cost about as much as the iterations between them.
    pub period: Option<usize>,
    /// r: the radius of the ball z is projected on (none: no projection).
    pub z_radius: Option<f64>,
}

impl Default for SrbaConfig {
    /// The BO-REP paper's step scale (0.05) for both steps, as SABA.
    fn default() -> Self {
        Self {
            rho: 0.05,
            gamma: 0.05,
            period: None,
            z_radius: None,
        }
    }
}

/// What SRBA's rule reads from a configuration, so that SPABA (the same recursion, restarted
/// at random) runs it too.
pub trait FullPassRestarts: Method {
    /// The (y, z, x) steps.
    fn step_sizes(&self) -> (f64, f64, f64);
    /// The radius of the ball z is projected on.
    fn z_radius(&self) -> Option<f64>;
    /// Whether iteration t ≥ 1 restarts from the whole data, which has `batches` fixed batches
    /// (lower and upper); iteration 0 always does.
    fn restarts<E: Real, P: BilevelProblem<E>>(
        &self,
        t: u64,
        batches: usize,
        oracles: &mut Oracles<E, P>,
    ) -> bool
    where
        Cpu: Device<E>;
}

impl FullPassRestarts for SrbaConfig {
    fn step_sizes(&self) -> (f64, f64, f64) {
        (self.rho, self.rho, self.gamma)
    }

    fn z_radius(&self) -> Option<f64> {
        self.z_radius
    }

    fn restarts<E: Real, P: BilevelProblem<E>>(
        &self,
        t: u64,
        batches: usize,
        _: &mut Oracles<E, P>,
    ) -> bool
    where
        Cpu: Device<E>,
    {
        t.is_multiple_of(self.period.unwrap_or(batches) as u64)
    }
}

impl Method for SrbaConfig {
    const NAME: &'static str = "srba";
    const HINT: &'static str = "gamma for x, rho for y and z";

    crate::checks!(
        rho: positive,
        gamma: positive,
        period: optional at_least_one,
        z_radius: optional positive,
    );

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.rho, &mut self.gamma)
    }

    fn optimizer<E: Real, P: BilevelProblem<E> + 'static>(&self, at: Start<'_, E, P>) -> Built<E, P>
    where
        Cpu: Device<E>,
    {
        RuleOptimizer::boxed(self, Srba::start(at, "SRBA")?)
    }
}

/// SOBA's directions for y, z and x.
struct Directions<X, Y> {
    y: Y,
    z: Y,
    x: X,
}

/// [`directions`]' result: the directions, and the losses on the way for the report.
struct Measured<X, Y> {
    d: Directions<X, Y>,
    upper_loss: f64,
    lower_loss: f64,
}

/// The batches [`directions`] averages: the iteration's drawn pair, each of weight 1, or every
/// fixed batch of the split with its share, fetched one at a time so that a pass over all the
/// data holds one batch at once.
enum Batches<'a, E: Real, P: BilevelProblem<E>>
where
    Cpu: Device<E>,
{
    Drawn(&'a P::LowerBatch, &'a P::UpperBatch),
    Split(&'a [f64], &'a [f64]),
}

/// `D(x, y, z)` on `batches`, each batch's value weighted by its share.
fn directions<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    (x, y, z): (&P::X, &P::Y, &P::Y),
    batches: &Batches<'_, E, P>,
    site: Site,
) -> Result<Measured<P::X, P::Y>, BilevelError>
where
    Cpu: Device<E>,
{
    let (mut d_y, mut hz, mut jz) = (y.zeros_like(), y.zeros_like(), x.zeros_like());
    let (mut fy, mut fx) = (y.zeros_like(), x.zeros_like());
    let (mut upper_loss, mut lower_loss) = (0.0, 0.0);
    let (lower_count, upper_count) = match batches {
        Batches::Drawn(..) => (1, 1),
        Batches::Split(lower, upper) => (lower.len(), upper.len()),
    };
    for k in 0..lower_count {
        let part;
        let (zeta, share) = match batches {
            Batches::Drawn(zeta, _) => (*zeta, 1.0),
            Batches::Split(shares, _) => {
                part = oracles.lower_part(k)?;
                (&part, shares[k])
            }
        };
        let (value, dy) = lower_grad_in_y_checked(oracles, x, y, zeta, site)?;
        let pass = second_order_checked(oracles, x, y, z, zeta, site)?;
        d_y.add_scaled(E::of(share), &dy);
        hz.add_scaled(E::of(share), &pass.hvp);
        jz.add_scaled(E::of(share), &pass.jvp);
        lower_loss += share * value;
    }
    for k in 0..upper_count {
        let part;
        let (xi, share) = match batches {
            Batches::Drawn(_, xi) => (*xi, 1.0),
            Batches::Split(_, shares) => {
                part = oracles.upper_part(k)?;
                (&part, shares[k])
            }
        };
        let f = upper_grad_checked(oracles, x, y, xi, site)?;
        fy.add_scaled(E::of(share), &f.dy);
        fx.add_scaled(E::of(share), &f.dx);
        upper_loss += share * f.value.f64();
    }
    let mut d_z = hz;
    d_z.add_scaled(-E::one(), &fy);
    let d_x = hypergradient_estimate(&fx, &jz);
    Ok(Measured {
        d: Directions {
            y: d_y,
            z: d_z,
            x: d_x,
        },
        upper_loss,
        lower_loss,
    })
}

/// SRBA's memory (and SPABA's, `C`).
pub struct Srba<X, Y, C = SrbaConfig> {
    /// z_t ≈ [∇²_yy G]⁻¹ ∇_y F.
    z: Y,
    /// The SARAH estimates (d_y, d_z, d_x).
    d: Directions<X, Y>,
    /// (x_{t−1}, y_{t−1}, z_{t−1}).
    previous: (X, Y, Y),
    /// The fixed batches' shares of the (lower, upper) data.
    shares: (Vec<f64>, Vec<f64>),
    config: PhantomData<fn() -> C>,
}

impl<X, Y, C> Srba<X, Y, C> {
    /// The memory at iteration 0, for `method` (named in the error when the problem's data has
    /// no split).
    pub fn start<E: Real, P: BilevelProblem<E, X = X, Y = Y>>(
        at: Start<'_, E, P>,
        method: &str,
    ) -> Result<Self, BilevelError>
    where
        Cpu: Device<E>,
        X: Params<E>,
        Y: Params<E>,
    {
        let Start { x, y, problem } = at;
        Ok(Self {
            z: y.zeros_like(),
            d: Directions {
                y: y.zeros_like(),
                z: y.zeros_like(),
                x: x.zeros_like(),
            },
            previous: (x.duplicate(), y.duplicate(), y.zeros_like()),
            shares: finite_split(problem, method)
                .map(|(lower, upper)| (normalized(&lower), normalized(&upper)))?,
            config: PhantomData,
        })
    }
}

impl<E: Real, P: BilevelProblem<E>, C: FullPassRestarts> Rule<E, P> for Srba<P::X, P::Y, C>
where
    Cpu: Device<E>,
{
    type Config = C;
    crate::saved_memory!(
        vector z,
        vector d.y as "d_y",
        vector d.z as "d_z",
        vector d.x as "d_x",
        vector previous.0 as "x_prev",
        vector previous.1 as "y_prev",
        vector previous.2 as "z_prev"
    );

    fn iterate(&mut self, it: Iteration<'_, E, P, C>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let (lower_shares, upper_shares) = &self.shares;
        let batches = lower_shares.len() + upper_shares.len();
        let now = (&*x, &*y, &self.z);
        let (upper_loss, lower_loss) = if t == 0 || c.restarts(t, batches, oracles) {
            let split = Batches::Split(lower_shares, upper_shares);
            let full = directions(oracles, now, &split, site)?;
            self.d = full.d;
            (full.upper_loss, full.lower_loss)
        } else {
            let (zeta, xi) = (oracles.lower_batch(), oracles.upper_batch());
            let drawn = Batches::Drawn(&zeta, &xi);
            let new = directions(oracles, now, &drawn, site)?;
            let (xp, yp, zp) = &self.previous;
            let old = directions(oracles, (xp, yp, zp), &drawn, site)?.d;
            spider_update(&mut self.d.y, &new.d.y, &old.y);
            spider_update(&mut self.d.z, &new.d.z, &old.z);
            spider_update(&mut self.d.x, &new.d.x, &old.x);
            (new.upper_loss, new.lower_loss)
        };
        self.previous = (x.duplicate(), y.duplicate(), self.z.duplicate());

        let (y_step, z_step, x_step) = c.step_sizes();
        y.add_scaled(-E::of(y_step), &self.d.y);
        self.z.add_scaled(-E::of(z_step), &self.d.z);
        if let Some(r) = c.z_radius() {
            self.z.project_ball(E::of(r));
        }
        let (step_size, x_step_norm) = plain_step(x, &self.d.x, E::of(x_step));
        oracles.project_x(x);
        site.check("lower variable y", y)?;
        site.check("linear-system variable z", &self.z)?;
        site.check("upper variable x", x)?;
        Ok(Outcome {
            upper_loss: Some(upper_loss),
            lower_loss: Some(lower_loss),
            hypergrad_norm: self.d.x.norm().f64(),
            lower_grad_norm: Some(self.d.y.norm().f64()),
            linear_system_residual: Some(self.d.z.norm().f64()),
            step_size,
            x_step_norm,
        })
    }
}
