//! AdamBO (Gong, Hao, Liu, TMLR): a single-loop Adam-type method. y is warm-started and then
//! moved by one SGD step per iteration; x takes Adam steps with bias correction on a Neumann
//! hypergradient estimate.
//!
//! ```text
//! y ← T₀ SGD steps at x_0                              (warm start, t = 0)
//! y ← y − γ ∇_y G(x_t, y; π_t)
//! h_t = ∇_x F − J v (+ λ_wd x_t with `weight_decay`),  v the deterministic Neumann series on ∇_y F
//! m ← β₁ m + (1 − β₁) h_t;   v ← β₂ v + (1 − β₂) h_t ⊙ h_t
//! x ← x − η (m/(1 − β₁^{t+1})) / (√(v/(1 − β₂^{t+1})) + ε)
//! ```

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::rule::{Iteration, Rule};
use crate::error::BilevelError;
use crate::neumann::{plain_step_outcome, sgd_then_estimate, NeumannConfig};
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;
use crate::steps::{sgd_on_lower, Outcome};
use crate::variance::storm_update;

/// The knobs of AdamBO (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamBoConfig {
    /// η_t: the Adam step.
    pub eta: PowerSchedule,
    /// β₁: the weight of the first-moment average.
    pub beta1: f64,
    /// β₂: the weight of the second-moment average.
    pub beta2: f64,
    /// ε in the denominator.
    pub epsilon: f64,
    /// γ: the y step.
    pub gamma: f64,
    /// T₀: warm-start SGD steps on y.
    pub warm_start: usize,
    /// The Neumann series of the hypergradient estimate.
    pub neumann: NeumannConfig,
    /// λ_wd: L2 weight decay on x added to the estimate before the moments, `h + λ_wd x`, as
    /// `torch.optim.Adam(weight_decay=...)` does (not AdamW's decoupled decay). The paper's rule
    /// has none (0, the default); the official BERT/TREC code uses 0.01.
    pub weight_decay: f64,
}

impl Default for AdamBoConfig {
    fn default() -> Self {
        Self {
            eta: PowerSchedule::constant(1e-3),
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            gamma: 0.05,
            warm_start: 3,
            neumann: NeumannConfig::deterministic(5, 0.1),
            weight_decay: 0.0,
        }
    }
}

impl AdamBoConfig {
    /// `h + λ_wd x` (h itself without weight decay).
    pub fn with_weight_decay<E: Real, X: Params<E>>(&self, h: &X, x: &X) -> X
    where
        Cpu: Device<E>,
    {
        let mut h = h.clone();
        if self.weight_decay > 0.0 {
            h.add_scaled(E::of(self.weight_decay), x);
        }
        h
    }
}

impl Method for AdamBoConfig {
    const NAME: &'static str = "adambo";
    const HINT: &'static str = "eta for x, gamma for y";

    crate::checks!(
        eta: valid,
        beta1: momentum,
        beta2: momentum,
        epsilon: positive,
        gamma: positive,
        weight_decay: non_negative,
        neumann: valid,
    );

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma, &mut self.eta)
    }

    crate::rule_optimizer!(|_, at| AdamBo {
        moments: AdamMoments::new(at.x),
    });
}

/// Adam's two moments of the upper estimate, with the bias-corrected direction.
pub struct AdamMoments<X> {
    /// m.
    pub(crate) first: X,
    /// v.
    pub(crate) second: X,
}

impl<X> AdamMoments<X> {
    /// Zero moments shaped like `like`.
    pub fn new<E: Real>(like: &X) -> Self
    where
        Cpu: Device<E>,
        X: Params<E>,
    {
        Self {
            first: like.zeros_like(),
            second: like.zeros_like(),
        }
    }

    /// Folds `h` into both moments and returns the direction `m̂/(√v̂ + ε)` for step `t` (0-based).
    pub fn update<E: Real>(&mut self, h: &X, t: u64, beta1: f64, beta2: f64, epsilon: f64) -> X
    where
        Cpu: Device<E>,
        X: Params<E>,
    {
        self.first.lerp_with(E::of(beta1), E::of(1.0 - beta1), h);
        self.fold_second(h, beta2);
        self.direction(t, Some(beta1), beta2, epsilon)
    }

    /// VR-AdamBO's update: the first moment is the recursive (STORM) estimate
    /// `m ← h + β₁ (m − h_old)`, `h_old` the estimate at the previous point on the same samples
    /// (`None` at t = 0: `m ← h`), which starts at h rather than at zero and so is not
    /// bias-corrected; the second moment is Adam's. Returns `m/(√v̂ + ε)`.
    pub fn update_recursive<E: Real>(
        &mut self,
        h: &X,
        h_old: Option<&X>,
        t: u64,
        (beta1, beta2, epsilon): (f64, f64, f64),
    ) -> X
    where
        Cpu: Device<E>,
        X: Params<E>,
    {
        match h_old {
            None => self.first = h.clone(),
            Some(old) => storm_update(&mut self.first, h, old, E::of(1.0 - beta1)),
        }
        self.fold_second(h, beta2);
        self.direction(t, None, beta2, epsilon)
    }

    /// `v ← β₂ v + (1 − β₂) h ⊙ h`.
    fn fold_second<E: Real>(&mut self, h: &X, beta2: f64)
    where
        Cpu: Device<E>,
        X: Params<E>,
    {
        self.second.zip_in_place(h, |v, g| {
            for (v, &g) in v.iter_mut().zip(g) {
                *v = E::of(beta2) * *v + E::of(1.0 - beta2) * g * g;
            }
        });
    }

    /// `(m/c₁)/(√(v/c₂) + ε)` at step `t`, with `c = 1 − β^{t+1}` (c₁ = 1 without `beta1`).
    fn direction<E: Real>(&self, t: u64, beta1: Option<f64>, beta2: f64, epsilon: f64) -> X
    where
        Cpu: Device<E>,
        X: Params<E>,
    {
        let power = (t + 1) as i32;
        let c1 = beta1.map_or(1.0, |b| 1.0 - b.powi(power));
        let c2 = 1.0 - beta2.powi(power);
        let mut direction = self.first.duplicate();
        direction.zip_in_place(&self.second, |d, v| {
            for (d, &v) in d.iter_mut().zip(v) {
                *d = E::of((d.f64() / c1) / ((v.f64() / c2).sqrt() + epsilon));
            }
        });
        direction
    }
}

/// AdamBO: Adam on the Neumann hypergradient, y by SGD.
pub struct AdamBo<X> {
    moments: AdamMoments<X>,
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for AdamBo<P::X>
where
    Cpu: Device<E>,
{
    type Config = AdamBoConfig;
    crate::saved_memory!(vector moments.first as "m", vector moments.second as "v");

    fn iterate(&mut self, it: Iteration<'_, E, P, AdamBoConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        if t == 0 {
            sgd_on_lower(oracles, x, y, E::of(c.gamma), c.warm_start, site)?;
        }
        let (lower_loss, est) = sgd_then_estimate(oracles, x, y, 1, c.gamma, &c.neumann, site)?;
        let h = c.with_weight_decay(&est.h, x);
        let direction = self.moments.update(&h, t, c.beta1, c.beta2, c.epsilon);
        plain_step_outcome(oracles, x, &direction, c.eta.at(t), &est, lower_loss, site)
    }
}
