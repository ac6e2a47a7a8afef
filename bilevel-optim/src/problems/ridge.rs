//! Ridge-regression hyperparameter optimization.
//!
//! ```text
//! g(x, y) = (1/2n) ‖A y − b‖² + ½ Σ_j e^{x_j} y_j²      x = log regularization (per feature or scalar)
//! f(y)    = (1/2m) ‖A_val y − b_val‖²
//! ∇²_yy g = AᵀA/n + diag(e^x),   ∇²_xy g·v = e^x ⊙ y ⊙ v   (scalar x: e^x ⟨y, v⟩)
//! ∇Φ(x)   = −∇²_xy g(x, y*)·z*,  z* = [∇²_yy g]⁻¹ ∇_y f(y*)
//! ```
//! Batches draw rows uniformly with replacement, or take every row when the batch size is `None`.

use dfdx::prelude::*;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::rows::{row_batches, Rows};
use super::ClosedForm;
use crate::linalg::Matrix;
use crate::params::Params;
use crate::problem::{BilevelProblem, SampleRng, ShardedProblem, Taped, Tp};
use crate::real::Real;
use crate::written_grad::WrittenGrad;

/// The upper variable of [`Ridge`]: log regularization coefficients, one per feature
/// (`Tensor<Rank1<D>>`) or one for all (`Tensor<Rank0>`).
pub trait LogRegularization<E: Real, const D: usize>: Params<E>
where
    Cpu: Device<E>,
{
    /// `e^x` broadcast to one coefficient per feature, taped.
    fn coefficients(&self) -> Taped<Rank1<D>, E>;
    /// `e^x` per feature, in f64.
    fn coefficients_f64(x: &[f64]) -> Vec<f64>;
    /// `∇_x` of `⟨w, e^x ⊙ y⟩`-type sums: reduces a per-feature vector to the shape of x.
    fn reduce(per_feature: Vec<f64>) -> Vec<f64>;
}

impl<E: Real, const D: usize> LogRegularization<E, D> for Tensor<Rank1<D>, E, Cpu>
where
    Cpu: Device<E>,
{
    fn coefficients(&self) -> Taped<Rank1<D>, E> {
        self.retaped::<Tp<E>>().exp()
    }
    fn coefficients_f64(x: &[f64]) -> Vec<f64> {
        x.iter().map(|v| v.exp()).collect()
    }
    fn reduce(per_feature: Vec<f64>) -> Vec<f64> {
        per_feature
    }
}

impl<E: Real, const D: usize> LogRegularization<E, D> for Tensor<Rank0, E, Cpu>
where
    Cpu: Device<E>,
{
    fn coefficients(&self) -> Taped<Rank1<D>, E> {
        self.retaped::<Tp<E>>().exp().broadcast()
    }
    fn coefficients_f64(x: &[f64]) -> Vec<f64> {
        vec![x[0].exp(); D]
    }
    fn reduce(per_feature: Vec<f64>) -> Vec<f64> {
        vec![per_feature.iter().sum()]
    }
}

/// Construction parameters of a synthetic [`Ridge`] problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RidgeConfig {
    /// Rows of the training set (the lower level).
    pub train_rows: usize,
    /// Rows of the validation set (the upper level).
    pub val_rows: usize,
    /// Standard deviation of the target noise.
    pub noise: f64,
    /// Rows per lower batch; `None` = all training rows (deterministic).
    pub lower_batch: Option<usize>,
    /// Rows per upper batch; `None` = all validation rows (deterministic).
    pub upper_batch: Option<usize>,
    /// Seed of the data.
    pub seed: u64,
}

impl Default for RidgeConfig {
    fn default() -> Self {
        Self {
            train_rows: 40,
            val_rows: 30,
            noise: 0.5,
            lower_batch: None,
            upper_batch: None,
            seed: 0,
        }
    }
}

/// Ridge regression with `D` features and upper variable `X` (per-feature or scalar).
pub struct Ridge<E: Real, X: LogRegularization<E, D>, const D: usize>
where
    Cpu: Device<E>,
{
    /// Training features, one row per sample.
    pub train_a: Matrix,
    /// Training targets.
    pub train_b: Vec<f64>,
    /// Validation features.
    pub val_a: Matrix,
    /// Validation targets.
    pub val_b: Vec<f64>,
    lower_batch: Option<usize>,
    upper_batch: Option<usize>,
    dev: Cpu,
    _x: std::marker::PhantomData<(E, X)>,
}

impl<E: Real, X: LogRegularization<E, D>, const D: usize> Ridge<E, X, D>
where
    Cpu: Device<E>,
{
    /// A synthetic problem: Gaussian features, targets from a Gaussian weight vector plus noise.
    pub fn synthetic(config: RidgeConfig) -> Self {
        let mut rng = SampleRng::seed_from_u64(config.seed);
        let w = Matrix::gaussian(D, 1, 1.0, &mut rng).data;
        let mut make = |rows: usize| {
            let a = Matrix::gaussian(rows, D, 1.0, &mut rng);
            let noise = Matrix::gaussian(rows, 1, config.noise, &mut rng).data;
            let b = a
                .mul_vec(&w)
                .iter()
                .zip(noise)
                .map(|(s, e)| s + e)
                .collect();
            (a, b)
        };
        let (train_a, train_b) = make(config.train_rows);
        let (val_a, val_b) = make(config.val_rows);
        Self::from_data(
            train_a,
            train_b,
            val_a,
            val_b,
            config.lower_batch,
            config.upper_batch,
        )
    }

    /// A problem on the user's data.
    pub fn from_data(
        train_a: Matrix,
        train_b: Vec<f64>,
        val_a: Matrix,
        val_b: Vec<f64>,
        lower_batch: Option<usize>,
        upper_batch: Option<usize>,
    ) -> Self {
        assert_eq!(train_a.cols, D, "training features must have D columns");
        assert_eq!(val_a.cols, D, "validation features must have D columns");
        assert_eq!(train_a.rows, train_b.len());
        assert_eq!(val_a.rows, val_b.len());
        Self {
            train_a,
            train_b,
            val_a,
            val_b,
            lower_batch,
            upper_batch,
            dev: crate::real::device(),
            _x: std::marker::PhantomData,
        }
    }

    /// Every training row: the exact lower objective.
    pub fn full_lower_batch(&self) -> Rows<E, D> {
        Rows::all(&self.dev, &self.train_a, &self.train_b)
    }

    /// `A_Bᵀ(A_B y − b_B)/|B|`.
    fn data_grad(rows: &Matrix, targets: &[f64], y: &[f64]) -> Vec<f64> {
        let r: Vec<f64> = rows
            .mul_vec(y)
            .iter()
            .zip(targets)
            .map(|(p, t)| (p - t) / targets.len() as f64)
            .collect();
        rows.t_mul_vec(&r)
    }

    fn data_loss(rows: &Matrix, targets: &[f64], y: &[f64]) -> f64 {
        let p = rows.mul_vec(y);
        p.iter()
            .zip(targets)
            .map(|(p, t)| (p - t) * (p - t))
            .sum::<f64>()
            / (2.0 * targets.len() as f64)
    }

    fn hessian(&self, x: &[f64]) -> Matrix {
        let n = self.train_b.len() as f64;
        let gram = self
            .train_a
            .weighted_gram(&vec![1.0 / n; self.train_b.len()]);
        gram.plus_diag(&X::coefficients_f64(x))
    }

    /// Taped `(1/|B|)·(y·A_Bᵀ − b_B)`, the scaled residual.
    fn residual(y: &Tensor<Rank1<D>, E, Cpu>, rows: &Rows<E, D>) -> Taped<(usize,), E> {
        (y.retaped::<Tp<E>>().matmul(rows.at_t.clone()) - rows.targets_t.clone())
            / E::of(rows.len() as f64)
    }

    fn squared_loss(y: &Tensor<Rank1<D>, E, Cpu>, rows: &Rows<E, D>) -> Taped<Rank0, E> {
        let r = y.retaped::<Tp<E>>().matmul(rows.at_t.clone()) - rows.targets_t.clone();
        r.square().sum() / E::of(2.0 * rows.len() as f64)
    }
}

impl<E: Real, X: LogRegularization<E, D>, const D: usize> BilevelProblem<E> for Ridge<E, X, D>
where
    Cpu: Device<E>,
{
    type X = X;
    type Y = Tensor<Rank1<D>, E, Cpu>;
    type UpperBatch = Rows<E, D>;
    type LowerBatch = Rows<E, D>;

    row_batches!(
        device: dev,
        lower: (train_a, train_b, lower_batch),
        upper: (val_a, val_b, upper_batch),
    );

    fn upper_loss(&self, x: &X, y: &Self::Y, batch: &Self::UpperBatch) -> Taped<Rank0, E> {
        // f does not depend on x; touching x keeps the signature uniform at no cost.
        let _ = x;
        Self::squared_loss(y, batch)
    }

    fn lower_loss(&self, x: &X, y: &Self::Y, batch: &Self::LowerBatch) -> Taped<Rank0, E> {
        let reg = (x.coefficients() * y.retaped::<Tp<E>>().square()).sum() * E::of(0.5);
        Self::squared_loss(y, batch) + reg
    }

    fn write_lower_grad_y(
        &self,
        x: &X,
        y: &Self::Y,
        batch: &Self::LowerBatch,
        grad: &mut WrittenGrad<E>,
    ) {
        // ∇_y G = A_Bᵀ(A_B y − b_B)/|B| + e^x ⊙ y
        let data = Self::residual(y, batch).matmul(batch.a_t.clone());
        grad.set(y, data + x.coefficients() * y.retaped::<Tp<E>>());
    }
}

impl<E: Real, X: LogRegularization<E, D>, const D: usize> ClosedForm<E> for Ridge<E, X, D>
where
    Cpu: Device<E>,
{
    fn exact_upper(&self, _x: &[f64], y: &[f64], b: &Rows<E, D>) -> (f64, Vec<f64>, Vec<f64>) {
        let nx = X::reduce(vec![0.0; D]).len();
        (
            Self::data_loss(&b.a, &b.targets, y),
            vec![0.0; nx],
            Self::data_grad(&b.a, &b.targets, y),
        )
    }

    fn exact_lower(&self, x: &[f64], y: &[f64], b: &Rows<E, D>) -> (f64, Vec<f64>, Vec<f64>) {
        let c = X::coefficients_f64(x);
        let value = Self::data_loss(&b.a, &b.targets, y)
            + 0.5 * (0..D).map(|j| c[j] * y[j] * y[j]).sum::<f64>();
        let gx = X::reduce((0..D).map(|j| 0.5 * c[j] * y[j] * y[j]).collect());
        let gy = Self::data_grad(&b.a, &b.targets, y)
            .iter()
            .enumerate()
            .map(|(j, g)| g + c[j] * y[j])
            .collect();
        (value, gx, gy)
    }

    fn exact_hvp(&self, x: &[f64], _y: &[f64], v: &[f64], b: &Rows<E, D>) -> Vec<f64> {
        let c = X::coefficients_f64(x);
        let gram = b.a.weighted_gram(&vec![1.0 / b.len() as f64; b.len()]);
        gram.mul_vec(v)
            .iter()
            .enumerate()
            .map(|(j, h)| h + c[j] * v[j])
            .collect()
    }

    fn exact_jvp(&self, x: &[f64], y: &[f64], v: &[f64], _b: &Rows<E, D>) -> Vec<f64> {
        let c = X::coefficients_f64(x);
        X::reduce((0..D).map(|j| c[j] * y[j] * v[j]).collect())
    }

    fn y_star(&self, x: &[f64]) -> Vec<f64> {
        let n = self.train_b.len() as f64;
        let rhs: Vec<f64> = self
            .train_a
            .t_mul_vec(&self.train_b)
            .iter()
            .map(|v| v / n)
            .collect();
        self.hessian(x).solve_spd(&rhs)
    }

    fn z_star(&self, x: &[f64]) -> Vec<f64> {
        let y = self.y_star(x);
        self.hessian(x)
            .solve_spd(&Self::data_grad(&self.val_a, &self.val_b, &y))
    }

    fn hypergradient(&self, x: &[f64]) -> Vec<f64> {
        let (y, z) = (self.y_star(x), self.z_star(x));
        let c = X::coefficients_f64(x);
        X::reduce((0..D).map(|j| -c[j] * y[j] * z[j]).collect())
    }

    fn phi(&self, x: &[f64]) -> f64 {
        Self::data_loss(&self.val_a, &self.val_b, &self.y_star(x))
    }
}

/// Both losses are means over rows (plus a penalty in y), so shards are shares of the rows.
impl<E: Real, X: LogRegularization<E, D>, const D: usize> ShardedProblem<E> for Ridge<E, X, D>
where
    Cpu: Device<E>,
{
    fn upper_shard(&self, batch: &Rows<E, D>, k: usize, parts: usize) -> Option<(f64, Rows<E, D>)> {
        Rows::shard(&self.val_a, &self.val_b, batch, k, parts)
    }

    fn lower_shard(&self, batch: &Rows<E, D>, k: usize, parts: usize) -> Option<(f64, Rows<E, D>)> {
        Rows::shard(&self.train_a, &self.train_b, batch, k, parts)
    }
}
