//! Logistic-regression data reweighting: the data hyper-cleaning form.
//!
//! ```text
//! g(λ, y) = (1/|B|) Σ_{i∈B} σ(λ_i) ℓ_i(y) + (μ/2)‖y‖²,   ℓ_i(y) = softplus(a_iᵀy) − t_i a_iᵀy
//! f(y)    = (1/|B'|) Σ_{j∈B'} ℓ_j(y)                     (on clean validation rows)
//! ∇_y g   = A_Bᵀ(σ(λ_B) ⊙ (s(A_B y) − t_B))/|B| + μ y,    s = sigmoid
//! ∇²_xy g·v: entry i gets σ'(λ_i)(s_i − t_i)(a_iᵀv)/|B| for each occurrence of i in B, 0 elsewhere
//! ```
//! y* has no closed form; [`ClosedForm::y_star`] solves for it by Newton's method to machine
//! precision, then z* and ∇Φ follow by linear solves.

use dfdx::prelude::*;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::rows::{row_batches, Rows};
use super::ClosedForm;
use crate::linalg::{add_scaled, dot, norm, sigmoid, softplus, Matrix};
use crate::problem::{BilevelProblem, SampleRng, ShardedProblem, Taped, Tp};
use crate::real::Real;
use crate::written_grad::WrittenGrad;

/// Construction parameters of a synthetic [`LogisticReweighting`] problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReweightingConfig {
    /// Rows of the (clean) validation set.
    pub val_rows: usize,
    /// Fraction of training labels flipped (the corrupted samples).
    pub corruption: f64,
    /// μ: the L2 coefficient that makes g strongly convex.
    pub mu: f64,
    /// Rows per lower batch; `None` = all training rows (deterministic).
    pub lower_batch: Option<usize>,
    /// Rows per upper batch; `None` = all validation rows (deterministic).
    pub upper_batch: Option<usize>,
    /// Seed of the data.
    pub seed: u64,
}

impl Default for ReweightingConfig {
    fn default() -> Self {
        Self {
            val_rows: 40,
            corruption: 0.3,
            mu: 0.1,
            lower_batch: None,
            upper_batch: None,
            seed: 0,
        }
    }
}

/// Logistic regression on `N` training rows with `D` features; x = λ ∈ R^N.
pub struct LogisticReweighting<E: Real, const N: usize, const D: usize>
where
    Cpu: Device<E>,
{
    /// Training features, one row per sample.
    pub train_a: Matrix,
    /// Training labels in {0, 1}.
    pub train_t: Vec<f64>,
    /// Which training labels were flipped.
    pub corrupted: Vec<bool>,
    /// Validation features.
    pub val_a: Matrix,
    /// Validation labels in {0, 1}.
    pub val_t: Vec<f64>,
    /// μ: the L2 weight that makes g strongly convex.
    pub mu: f64,
    lower_batch: Option<usize>,
    upper_batch: Option<usize>,
    dev: Cpu,
    _e: std::marker::PhantomData<E>,
}

impl<E: Real, const N: usize, const D: usize> LogisticReweighting<E, N, D>
where
    Cpu: Device<E>,
{
    /// Synthetic data: Gaussian features, labels from a logistic model, a fraction flipped.
    pub fn synthetic(config: ReweightingConfig) -> Self {
        let mut rng = SampleRng::seed_from_u64(config.seed);
        let w = Matrix::gaussian(D, 1, 2.0, &mut rng).data;
        let mut make = |rows: usize| {
            let a = Matrix::gaussian(rows, D, 1.0 / (D as f64).sqrt(), &mut rng);
            let t = a
                .mul_vec(&w)
                .iter()
                .map(|&u| if u > 0.0 { 1.0 } else { 0.0 })
                .collect::<Vec<_>>();
            (a, t)
        };
        let (train_a, mut train_t) = make(N);
        let (val_a, val_t) = make(config.val_rows);
        let flips = (config.corruption * N as f64).round() as usize;
        let corrupted: Vec<bool> = (0..N).map(|i| i < flips).collect();
        for t in train_t.iter_mut().take(flips) {
            *t = 1.0 - *t;
        }
        Self {
            train_a,
            train_t,
            corrupted,
            val_a,
            val_t,
            mu: config.mu,
            lower_batch: config.lower_batch,
            upper_batch: config.upper_batch,
            dev: crate::real::device(),
            _e: std::marker::PhantomData,
        }
    }

    /// Every training row: the exact lower objective.
    pub fn full_lower_batch(&self) -> Rows<E, D> {
        Rows::all(&self.dev, &self.train_a, &self.train_t)
    }

    /// Taped per-row logistic losses `softplus(u) − t u`, u = A_B y.
    fn row_losses(y: &Tensor<Rank1<D>, E, Cpu>, rows: &Rows<E, D>) -> Taped<(usize,), E> {
        let u = y.retaped::<Tp<E>>().matmul(rows.at_t.clone());
        let tu = u.retaped::<Tp<E>>() * rows.targets_t.clone();
        // softplus(u) = max(u, 0) + ln(1 + e^{−|u|}), stable for large |u|.
        let softplus = u.retaped::<Tp<E>>().relu() + (u.abs().negate().exp() + E::one()).ln();
        softplus - tu
    }

    /// Taped sample weights σ(λ_i) of the batch's rows.
    fn weights(x: &Tensor<Rank1<N>, E, Cpu>, rows: &Rows<E, D>) -> Taped<(usize,), E> {
        x.retaped::<Tp<E>>()
            .gather(rows.indices_t.clone())
            .sigmoid()
    }

    /// (weighted loss, ∇_y, ∇_λ) of the lower objective in f64.
    fn lower_f64(&self, x: &[f64], y: &[f64], b: &Rows<E, D>) -> (f64, Vec<f64>, Vec<f64>) {
        let n = b.len() as f64;
        let u = b.a.mul_vec(y);
        let mut value = 0.5 * self.mu * dot(y, y);
        let mut gx = vec![0.0; N];
        let mut r = vec![0.0; b.len()];
        for (k, &i) in b.indices.iter().enumerate() {
            let loss = softplus(u[k]) - b.targets[k] * u[k];
            let w = sigmoid(x[i]);
            value += w * loss / n;
            gx[i] += w * (1.0 - w) * loss / n;
            r[k] = w * (sigmoid(u[k]) - b.targets[k]) / n;
        }
        let gy = add_scaled(&b.a.t_mul_vec(&r), self.mu, y);
        (value, gx, gy)
    }

    /// ∇²_yy g on the rows of `b`.
    fn hessian_on(&self, x: &[f64], y: &[f64], b: &Rows<E, D>) -> Matrix {
        let u = b.a.mul_vec(y);
        let n = b.len() as f64;
        let w: Vec<f64> = b
            .indices
            .iter()
            .enumerate()
            .map(|(k, &i)| sigmoid(x[i]) * sigmoid(u[k]) * (1.0 - sigmoid(u[k])) / n)
            .collect();
        b.a.weighted_gram(&w).plus_diag(&vec![self.mu; D])
    }

    fn val_loss_grad(&self, y: &[f64]) -> (f64, Vec<f64>) {
        let m = self.val_t.len() as f64;
        let u = self.val_a.mul_vec(y);
        let value = u
            .iter()
            .zip(&self.val_t)
            .map(|(&u, &t)| softplus(u) - t * u)
            .sum::<f64>()
            / m;
        let r: Vec<f64> = u
            .iter()
            .zip(&self.val_t)
            .map(|(&u, &t)| (sigmoid(u) - t) / m)
            .collect();
        (value, self.val_a.t_mul_vec(&r))
    }
}

impl<E: Real, const N: usize, const D: usize> BilevelProblem<E> for LogisticReweighting<E, N, D>
where
    Cpu: Device<E>,
{
    type X = Tensor<Rank1<N>, E, Cpu>;
    type Y = Tensor<Rank1<D>, E, Cpu>;
    type UpperBatch = Rows<E, D>;
    type LowerBatch = Rows<E, D>;

    row_batches!(
        device: dev,
        lower: (train_a, train_t, lower_batch),
        upper: (val_a, val_t, upper_batch),
    );

    fn upper_loss(&self, _x: &Self::X, y: &Self::Y, batch: &Self::UpperBatch) -> Taped<Rank0, E> {
        Self::row_losses(y, batch).sum() / E::of(batch.len() as f64)
    }

    fn lower_loss(&self, x: &Self::X, y: &Self::Y, batch: &Self::LowerBatch) -> Taped<Rank0, E> {
        let weighted = (Self::row_losses(y, batch) * Self::weights(x, batch)).sum()
            / E::of(batch.len() as f64);
        weighted + y.retaped::<Tp<E>>().square().sum() * E::of(0.5 * self.mu)
    }

    fn write_lower_grad_y(
        &self,
        x: &Self::X,
        y: &Self::Y,
        batch: &Self::LowerBatch,
        grad: &mut WrittenGrad<E>,
    ) {
        // ∇_y G = A_Bᵀ(σ(λ_B) ⊙ (s(A_B y) − t_B))/|B| + μ y
        let s = y.retaped::<Tp<E>>().matmul(batch.at_t.clone()).sigmoid();
        let r = (s - batch.targets_t.clone()) * Self::weights(x, batch) / E::of(batch.len() as f64);
        grad.set(
            y,
            r.matmul(batch.a_t.clone()) + y.retaped::<Tp<E>>() * E::of(self.mu),
        );
    }
}

impl<E: Real, const N: usize, const D: usize> ClosedForm<E> for LogisticReweighting<E, N, D>
where
    Cpu: Device<E>,
{
    fn exact_upper(&self, _x: &[f64], y: &[f64], b: &Rows<E, D>) -> (f64, Vec<f64>, Vec<f64>) {
        let n = b.len() as f64;
        let u = b.a.mul_vec(y);
        let value = u
            .iter()
            .zip(&b.targets)
            .map(|(&u, &t)| softplus(u) - t * u)
            .sum::<f64>()
            / n;
        let r: Vec<f64> = u
            .iter()
            .zip(&b.targets)
            .map(|(&u, &t)| (sigmoid(u) - t) / n)
            .collect();
        (value, vec![0.0; N], b.a.t_mul_vec(&r))
    }

    fn exact_lower(&self, x: &[f64], y: &[f64], b: &Rows<E, D>) -> (f64, Vec<f64>, Vec<f64>) {
        self.lower_f64(x, y, b)
    }

    fn exact_hvp(&self, x: &[f64], y: &[f64], v: &[f64], b: &Rows<E, D>) -> Vec<f64> {
        self.hessian_on(x, y, b).mul_vec(v)
    }

    fn exact_jvp(&self, x: &[f64], y: &[f64], v: &[f64], b: &Rows<E, D>) -> Vec<f64> {
        let (u, av) = (b.a.mul_vec(y), b.a.mul_vec(v));
        let n = b.len() as f64;
        let mut out = vec![0.0; N];
        for (k, &i) in b.indices.iter().enumerate() {
            let w = sigmoid(x[i]);
            out[i] += w * (1.0 - w) * (sigmoid(u[k]) - b.targets[k]) * av[k] / n;
        }
        out
    }

    fn y_star(&self, x: &[f64]) -> Vec<f64> {
        let full: Rows<E, D> = self.full_lower_batch();
        let mut y = vec![0.0; D];
        for _ in 0..100 {
            let (_, _, g) = self.lower_f64(x, &y, &full);
            if norm(&g) < 1e-15 {
                break;
            }
            let step = self.hessian_on(x, &y, &full).solve_spd(&g);
            y = add_scaled(&y, -1.0, &step);
        }
        y
    }

    fn z_star(&self, x: &[f64]) -> Vec<f64> {
        let y = self.y_star(x);
        let full: Rows<E, D> = self.full_lower_batch();
        self.hessian_on(x, &y, &full)
            .solve_spd(&self.val_loss_grad(&y).1)
    }

    fn hypergradient(&self, x: &[f64]) -> Vec<f64> {
        let (y, z) = (self.y_star(x), self.z_star(x));
        let full: Rows<E, D> = self.full_lower_batch();
        self.exact_jvp(x, &y, &z, &full)
            .into_iter()
            .map(|v| -v)
            .collect()
    }

    fn phi(&self, x: &[f64]) -> f64 {
        self.val_loss_grad(&self.y_star(x)).0
    }
}

/// Both losses are means over rows (plus a penalty in y), so shards are shares of the rows.
impl<E: Real, const N: usize, const D: usize> ShardedProblem<E> for LogisticReweighting<E, N, D>
where
    Cpu: Device<E>,
{
    fn upper_shard(&self, batch: &Rows<E, D>, k: usize, parts: usize) -> Option<(f64, Rows<E, D>)> {
        Rows::shard(&self.val_a, &self.val_t, batch, k, parts)
    }

    fn lower_shard(&self, batch: &Rows<E, D>, k: usize, parts: usize) -> Option<(f64, Rows<E, D>)> {
        Rows::shard(&self.train_a, &self.train_t, batch, k, parts)
    }
}
