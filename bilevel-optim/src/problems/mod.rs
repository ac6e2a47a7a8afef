//! Bilevel problems whose hypergradient is known exactly, for tests, examples and users who
//! want to check a method before trusting it on a real task.
//!
//! Each problem implements [`BilevelProblem`] in f32 or f64 with dfdx tensors, and
//! [`ClosedForm`] with independent plain-Rust f64 formulas: the exact oracles on any batch, the
//! exact `y*(x)`, `z*(x)` and `∇Φ(x)`.

use dfdx::prelude::{Const, Cpu, Device, Rank1, Rank2, Tensor, TensorFromVec};

use crate::linalg::Matrix;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;

pub mod quadratic;
pub mod reweighting;
pub mod ridge;
pub mod rows;

pub use quadratic::{Quadratic, QuadraticConfig};
pub use reweighting::{LogisticReweighting, ReweightingConfig};
pub use ridge::{LogRegularization, Ridge, RidgeConfig};
pub use rows::Rows;

/// Exact quantities of a problem, in f64, as flat vectors in the visiting order of `X` and `Y`.
pub trait ClosedForm<E: Real>: BilevelProblem<E>
where
    Cpu: Device<E>,
{
    /// `(F, ∇_x F, ∇_y F)` on `batch`.
    fn exact_upper(
        &self,
        x: &[f64],
        y: &[f64],
        batch: &Self::UpperBatch,
    ) -> (f64, Vec<f64>, Vec<f64>);
    /// `(G, ∇_x G, ∇_y G)` on `batch`.
    fn exact_lower(
        &self,
        x: &[f64],
        y: &[f64],
        batch: &Self::LowerBatch,
    ) -> (f64, Vec<f64>, Vec<f64>);
    /// `∇²_yy G·v` on `batch`.
    fn exact_hvp(&self, x: &[f64], y: &[f64], v: &[f64], batch: &Self::LowerBatch) -> Vec<f64>;
    /// `∇²_xy G·v` on `batch`.
    fn exact_jvp(&self, x: &[f64], y: &[f64], v: &[f64], batch: &Self::LowerBatch) -> Vec<f64>;
    /// `y*(x) = argmin_y g(x, y)` for the full (expected) lower objective.
    fn y_star(&self, x: &[f64]) -> Vec<f64>;
    /// `z*(x) = [∇²_yy g]⁻¹ ∇_y f` at `(x, y*(x))`.
    fn z_star(&self, x: &[f64]) -> Vec<f64>;
    /// `∇Φ(x) = ∇_x f − ∇²_xy g·z*` at `(x, y*(x))`.
    fn hypergradient(&self, x: &[f64]) -> Vec<f64>;
    /// `Φ(x) = f(x, y*(x))`.
    fn phi(&self, x: &[f64]) -> f64;
}

/// The exact hypergradient at a parameter collection `x`, as a collection shaped like `x`.
pub fn exact_hypergradient<E: Real, P: ClosedForm<E>>(problem: &P, x: &P::X) -> P::X
where
    Cpu: Device<E>,
{
    let mut out = x.clone();
    let flat: Vec<E> = problem
        .hypergradient(&as_f64(x))
        .into_iter()
        .map(E::of)
        .collect();
    out.set_flat(&flat).expect("closed form has the shape of x");
    out
}

/// A parameter collection as a flat f64 vector.
pub fn as_f64<E: Real, T: Params<E>>(t: &T) -> Vec<f64>
where
    Cpu: Device<E>,
{
    t.to_flat().into_iter().map(Real::f64).collect()
}

pub(crate) fn vector<E: Real, const N: usize>(dev: &Cpu, v: &[f64]) -> Tensor<Rank1<N>, E, Cpu>
where
    Cpu: Device<E>,
{
    dev.tensor_from_vec(v.iter().map(|&a| E::of(a)).collect(), (Const::<N>,))
}

pub(crate) fn matrix<E: Real, const R: usize, const C: usize>(
    dev: &Cpu,
    m: &Matrix,
) -> Tensor<Rank2<R, C>, E, Cpu>
where
    Cpu: Device<E>,
{
    assert_eq!((m.rows, m.cols), (R, C));
    dev.tensor_from_vec(
        m.data.iter().map(|&a| E::of(a)).collect(),
        (Const::<R>, Const::<C>),
    )
}
