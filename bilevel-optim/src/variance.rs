//! Variance-reduction pieces shared by MRBO, VRBO, AccBO and SABA.
//!
//! - STORM / recursive momentum: `d ← g(w_t; ξ) + (1 − a)(d − g(w_{t−1}; ξ))`, the same sample ξ
//!   evaluated at the new and the old point.
//! - SPIDER / SARAH: `v ← v + g(w_t; ξ) − g(w_{t−1}; ξ)`, restarted from a large batch.
//! - SAGA: one memory per fixed batch k of a finite data set;
//!   `estimate = g_k(w) − memory_k + mean(memory)`, then `memory_k ← g_k(w)`.

use dfdx::prelude::{Cpu, Device};

use crate::error::BilevelError;
use crate::optimizer::MethodState;
use crate::params::Params;
use crate::real::Real;

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

/// SAGA memories for one estimated quantity over `n` fixed batches. Memories start at zero.
#[derive(Clone)]
pub struct SagaMemory<T> {
    table: Vec<T>,
    /// Σ_k memory_k, kept up to date so the mean costs nothing.
    sum: T,
}

impl<T> SagaMemory<T> {
    /// Memories for `n` batches, shaped like `like`.
    pub fn new<E: Real>(like: &T, n: usize) -> Self
    where
        Cpu: Device<E>,
        T: Params<E>,
    {
        Self {
            table: (0..n).map(|_| like.zeros_like()).collect(),
            sum: like.zeros_like(),
        }
    }

    /// The number of memories (one per fixed batch).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there is no memory.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The mean of the memories.
    pub fn mean<E: Real>(&self) -> T
    where
        Cpu: Device<E>,
        T: Params<E>,
    {
        let mut m = self.sum.clone();
        m.scale(E::of(1.0 / self.table.len() as f64));
        m
    }

    /// The SAGA estimate for batch `k` given its fresh value, which then replaces its memory.
    pub fn estimate<E: Real>(&mut self, k: usize, fresh: &T) -> T
    where
        Cpu: Device<E>,
        T: Params<E>,
    {
        let mut est = self.mean();
        est.add_scaled(E::one(), fresh);
        est.add_scaled(-E::one(), &self.table[k]);
        self.sum.add_scaled(-E::one(), &self.table[k]);
        self.sum.add_scaled(E::one(), fresh);
        self.table[k] = fresh.clone();
        est
    }

    /// Saves every memory as `{name}.{k}` and the running sum as `{name}.sum` (restoring the sum
    /// rather than re-adding keeps a resumed run bit-identical).
    pub fn save<E: Real>(&self, name: &str, state: &mut MethodState)
    where
        Cpu: Device<E>,
        T: Params<E>,
    {
        for (k, m) in self.table.iter().enumerate() {
            state.put(&format!("{name}.{k}"), m);
        }
        state.put(&format!("{name}.sum"), &self.sum);
    }

    /// Restores what [`SagaMemory::save`] wrote.
    pub fn load<E: Real>(&mut self, name: &str, state: &MethodState) -> Result<(), BilevelError>
    where
        Cpu: Device<E>,
        T: Params<E>,
    {
        let mut table = self.table.clone();
        for (k, m) in table.iter_mut().enumerate() {
            state.get(&format!("{name}.{k}"), m)?;
        }
        let mut sum = self.sum.clone();
        state.get(&format!("{name}.sum"), &mut sum)?;
        self.table = table;
        self.sum = sum;
        Ok(())
    }
}
