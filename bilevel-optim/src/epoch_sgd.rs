//! Epoch-SGD (BO-REP's Algorithm 3; Hazan & Kale): the initialization refinement of y.
//!
//! Epoch k runs `T_k` projected SGD steps from its start `w_k`, each on a fresh batch and
//! projected onto the ball of radius `D_k` around `w_k`; the next start is the average of the
//! post-update iterates. Between epochs the step halves, the length doubles and the radius
//! shrinks by √2 — the schedule for a strongly convex lower level (p = 2 in the general form
//! `T_k = T_1·2^{τ(k−1)}`, `D_k = D_1/2^{(k−1)/p}`, `γ_k = γ_1/2^{k−1}`, τ = 2(p−1)/p).

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use crate::error::BilevelError;
use crate::oracles::Oracles;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::steps::Site;

/// The first epoch's step, length and radius, and the number of epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochSgdConfig {
    /// γ₁: step of the first epoch.
    pub step: f64,
    /// T₁: number of SGD steps in the first epoch.
    pub length: usize,
    /// D₁: projection radius of the first epoch, around the epoch's start.
    pub radius: f64,
    /// K: number of epochs; the total number of steps is T₁(2^K − 1).
    pub epochs: usize,
}

impl EpochSgdConfig {
    /// The (step, length, radius) of epoch `k` (1-based).
    pub fn epoch(&self, k: usize) -> EpochSchedule {
        let halvings = (k - 1) as i32;
        EpochSchedule {
            epoch: k,
            step: self.step / 2f64.powi(halvings),
            length: self.length << (k - 1),
            radius: self.radius / 2f64.sqrt().powi(halvings),
        }
    }

    /// Total number of lower gradient calls.
    pub fn total_steps(&self) -> usize {
        (1..=self.epochs).map(|k| self.epoch(k).length).sum()
    }

    /// Checks every value, naming the first one out of range.
    pub fn validate(&self) -> Result<(), BilevelError> {
        let bad = |field, reason: &str| {
            Err(BilevelError::InvalidConfig {
                field,
                reason: reason.into(),
            })
        };
        if !(self.step > 0.0 && self.step.is_finite()) {
            return bad("epoch_sgd.step", "must be a positive number");
        }
        if self.length == 0 {
            return bad("epoch_sgd.length", "must be at least 1");
        }
        if self.radius.is_nan() || self.radius <= 0.0 {
            return bad("epoch_sgd.radius", "must be positive");
        }
        if self.epochs == 0 || self.epochs > 40 {
            return bad("epoch_sgd.epochs", "must be between 1 and 40");
        }
        Ok(())
    }
}

/// One epoch's parameters, as run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochSchedule {
    /// The epoch's index k, from 1.
    pub epoch: usize,
    /// The SGD step of the epoch.
    pub step: f64,
    /// The number of SGD steps in the epoch.
    pub length: usize,
    /// The radius of the ball around the epoch's start that the iterates stay in.
    pub radius: f64,
}

/// Runs Epoch-SGD on `y ↦ g(x, y)` from `y`, returning the refined y and the schedule it followed.
pub fn epoch_sgd<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    x: &P::X,
    y: &P::Y,
    config: &EpochSgdConfig,
    site: Site,
) -> Result<(P::Y, Vec<EpochSchedule>), BilevelError>
where
    Cpu: Device<E>,
{
    let mut start = y.clone();
    let mut schedule = Vec::with_capacity(config.epochs);
    for k in 1..=config.epochs {
        let epoch = config.epoch(k);
        let mut u = start.clone();
        let mut average = start.zeros_like();
        let weight = E::of(1.0 / epoch.length as f64);
        for _ in 0..epoch.length {
            let batch = oracles.lower_batch();
            let (_, dy) = oracles.lower_grad_in_y(x, &u, &batch)?;
            site.check("lower gradient ∇_y g (Epoch-SGD)", &dy)?;
            u.add_scaled(-E::of(epoch.step), &dy);
            u.project_ball_around(&start, E::of(epoch.radius));
            average.add_scaled(weight, &u);
        }
        start = average;
        schedule.push(epoch);
    }
    Ok((start, schedule))
}
