//! Variance-reduction pieces shared by MRBO, VRBO, SUSTAIN, FSLA, AccBO, SABA and SRBA.
//!
//! - STORM / recursive momentum: `d ← g(w_t; ξ) + (1 − a)(d − g(w_{t−1}; ξ))`, the same sample ξ
//!   evaluated at the new and the old point.
//! - SPIDER / SARAH: `v ← v + g(w_t; ξ) − g(w_{t−1}; ξ)`, restarted from a large batch.
//! - SAGA: one memory per fixed batch k of a finite data set, batch k carrying the share s_k of
//!   the whole objective (its rows over all rows for a mean loss; 1/K for equal batches);
//!   `estimate = K s_k (g_k(w) − memory_k) + Σ_j s_j memory_j`, then `memory_k ← g_k(w)`. With
//!   k drawn uniformly the estimate is unbiased for `Σ_j s_j g_j`, a shorter last batch
//!   included; with equal shares it is the usual `g_k − memory_k + mean(memory)`.

use dfdx::prelude::{Cpu, Device};

use crate::error::BilevelError;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;

/// The shares of the problem's fixed (lower, upper) batches as the problem gives them (see
/// [`normalized`]), for the finite-sum methods (SABA, SRBA); an error naming `method` when the problem's data has no split.
pub fn finite_split<E: Real, P: BilevelProblem<E>>(
    problem: &P,
    method: &str,
) -> Result<(Vec<f64>, Vec<f64>), BilevelError>
where
    Cpu: Device<E>,
{
    let parts = |n: Option<usize>, level: &str| {
        n.filter(|&n| n > 0).ok_or_else(|| BilevelError::InvalidConfig {
            field: "method",
            reason: format!(
                "{method} needs the {level} data split into fixed batches; this problem has no split"
            ),
        })
    };
    let (n_lower, n_upper) = (
        parts(problem.lower_parts(), "lower")?,
        parts(problem.upper_parts(), "upper")?,
    );
    Ok((
        (0..n_lower).map(|k| problem.lower_part_share(k)).collect(),
        (0..n_upper).map(|k| problem.upper_part_share(k)).collect(),
    ))
}

/// `shares` divided by their sum.
pub fn normalized(shares: &[f64]) -> Vec<f64> {
    let total: f64 = shares.iter().sum();
    shares.iter().map(|s| s / total).collect()
}

/// `d ← new + (1 − a)(d − old)`; with `a = 1` it is plain SGD's `d ← new`.
pub fn storm_update<E: Real, T: Params<E>>(d: &mut T, new: &T, old: &T, a: E)
where
    Cpu: Device<E>,
{
    d.add_scaled(-E::one(), old);
    d.scale(E::one() - a);
    d.add_scaled(E::one(), new);
}

/// `v ← v + new − old`.
pub fn spider_update<E: Real, T: Params<E>>(v: &mut T, new: &T, old: &T)
where
    Cpu: Device<E>,
{
    v.add_scaled(E::one(), new);
    v.add_scaled(-E::one(), old);
}

/// SAGA memories for one estimated quantity over fixed batches with given shares. Memories
/// start at zero.
#[derive(Clone)]
pub struct SagaMemory<T> {
    table: Vec<T>,
    /// s_k, summing to one.
    shares: Vec<f64>,
    /// Σ_k s_k memory_k, kept up to date so the mean costs nothing.
    weighted_sum: T,
}

impl<T> SagaMemory<T> {
    /// Memories for batches of the given shares of the objective (normalized to sum to one),
    /// shaped like `like`.
    pub fn new<E: Real>(like: &T, shares: &[f64]) -> Self
    where
        Cpu: Device<E>,
        T: Params<E>,
    {
        Self {
            table: shares.iter().map(|_| like.zeros_like()).collect(),
            shares: normalized(shares),
            weighted_sum: like.zeros_like(),
        }
    }

    /// Memories for `n` batches of equal shares.
    pub fn equal<E: Real>(like: &T, n: usize) -> Self
    where
        Cpu: Device<E>,
        T: Params<E>,
    {
        Self::new(like, &vec![1.0; n])
    }

    /// The number of memories (one per fixed batch).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there is no memory.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The memories' mean, weighted by the batches' shares.
    pub fn mean<E: Real>(&self) -> T
    where
        Cpu: Device<E>,
        T: Params<E>,
    {
        self.weighted_sum.clone()
    }

    /// The SAGA estimate for batch `k` given its fresh value, which then replaces its memory.
    pub fn estimate<E: Real>(&mut self, k: usize, fresh: &T) -> T
    where
        Cpu: Device<E>,
        T: Params<E>,
    {
        let mut difference = fresh.clone();
        difference.add_scaled(-E::one(), &self.table[k]);
        let mut est = self.mean();
        est.add_scaled(E::of(self.table.len() as f64 * self.shares[k]), &difference);
        self.weighted_sum
            .add_scaled(E::of(self.shares[k]), &difference);
        self.table[k] = fresh.clone();
        est
    }

    /// The memories, one per fixed batch.
    pub fn memories(&self) -> &[T] {
        &self.table
    }

    /// Σ_k s_k memory_k.
    pub fn weighted_sum(&self) -> &T {
        &self.weighted_sum
    }

    /// The same batches and shares with other memories and their weighted sum (restored from a
    /// saved state, which keeps the sum rather than re-adding it: a resumed run stays
    /// bit-identical).
    pub fn with_memories(&self, table: Vec<T>, weighted_sum: T) -> Self {
        assert_eq!(table.len(), self.table.len(), "one memory per batch");
        Self {
            table,
            shares: self.shares.clone(),
            weighted_sum,
        }
    }
}
