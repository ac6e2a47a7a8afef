//! A quadratic bilevel problem with random SPD matrices.
//!
//! ```text
//! g(x, y) = ½ yᵀH y + yᵀC x + bᵀy                       H SPD (eigenvalues in [μ, L])
//! f(x, y) = ½ yᵀP y + xᵀR y + ½ xᵀQ x + pᵀy + qᵀx       P, Q SPD
//! y*(x) = −H⁻¹(Cx + b),  z* = H⁻¹∇_y f(x, y*),  ∇Φ(x) = ∇_x f(x, y*) − Cᵀz*
//! ```
//! Stochastic version: a lower batch of size B perturbs H, C and b by the mean of B independent
//! zero-mean Gaussian perturbations (entry standard deviation σ_H, σ_C, σ_b per sample, so σ/√B for
//! the batch; H's perturbation is symmetrized as (W + Wᵀ)/2), and an upper batch adds zero-mean
//! Gaussian noise of standard deviation σ_f/√B to ∇_x F and ∇_y F through linear terms. Every
//! stochastic oracle is unbiased, with known variance.

use dfdx::prelude::*;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{matrix, vector, ClosedForm};
use crate::constraint::Constraint;
use crate::linalg::{add_scaled, dot, Matrix};
use crate::problem::{Batch, BilevelProblem, SampleRng, Taped, Tp};
use crate::real::Real;
use crate::written_grad::WrittenGrad;

/// Construction parameters of [`Quadratic`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuadraticConfig {
    /// Smallest eigenvalue μ of H (strong convexity of g).
    pub mu: f64,
    /// Largest eigenvalue L of H.
    pub lipschitz: f64,
    /// Per-sample standard deviation of the lower gradient's noise (entries of b).
    pub grad_noise: f64,
    /// Per-sample standard deviation of the second-order noise (entries of H and C).
    pub hessian_noise: f64,
    /// Per-sample standard deviation of the upper gradients' noise.
    pub upper_noise: f64,
    /// Samples per batch (divides the noise variance).
    pub batch_size: usize,
    /// Seed of the matrices.
    pub seed: u64,
    /// A constraint on x, applied after every x step (none by default), to test the projected
    /// rules on an optimum on the boundary.
    #[serde(default)]
    pub x_constraint: Option<Constraint>,
}

impl Default for QuadraticConfig {
    fn default() -> Self {
        Self {
            mu: 0.5,
            lipschitz: 2.0,
            grad_noise: 0.0,
            hessian_noise: 0.0,
            upper_noise: 0.0,
            batch_size: 1,
            seed: 0,
            x_constraint: None,
        }
    }
}

/// The quadratic problem with `DX` upper and `DY` lower dimensions.
pub struct Quadratic<E: Real, const DX: usize, const DY: usize>
where
    Cpu: Device<E>,
{
    /// What the problem was built from.
    pub config: QuadraticConfig,
    /// H: the lower Hessian (SPD).
    pub h: Matrix,
    /// C: the coupling of y and x in g.
    pub c: Matrix,
    /// b: the linear term of g.
    pub b: Vec<f64>,
    /// P: the quadratic term of f in y.
    pub p: Matrix,
    /// R: the coupling of x and y in f.
    pub r: Matrix,
    /// Q: the quadratic term of f in x.
    pub q: Matrix,
    /// p: the linear term of f in y.
    pub pv: Vec<f64>,
    /// q: the linear term of f in x.
    pub qv: Vec<f64>,
    dev: Cpu,
    p_t: Tensor<Rank2<DY, DY>, E, Cpu>,
    r_t: Tensor<Rank2<DX, DY>, E, Cpu>,
    q_t: Tensor<Rank2<DX, DX>, E, Cpu>,
    pv_t: Tensor<Rank1<DY>, E, Cpu>,
    qv_t: Tensor<Rank1<DX>, E, Cpu>,
}

/// A lower batch: the perturbed H, C and b it defines (f64 for the closed forms, E for dfdx).
pub struct QuadLowerBatch<E: Real, const DX: usize, const DY: usize> {
    /// The number of samples the batch averages.
    pub size: usize,
    /// H of this batch (perturbed).
    pub h: Matrix,
    /// C of this batch (perturbed).
    pub c: Matrix,
    /// b of this batch (perturbed).
    pub b: Vec<f64>,
    h_t: Tensor<Rank2<DY, DY>, E, Cpu>,
    /// Cᵀ, so that `x·Cᵀ = (Cx)ᵀ` keeps the taped x on the left.
    ct_t: Tensor<Rank2<DX, DY>, E, Cpu>,
    b_t: Tensor<Rank1<DY>, E, Cpu>,
}

/// An upper batch: the noise added to ∇_x F and ∇_y F.
pub struct QuadUpperBatch<E: Real, const DX: usize, const DY: usize> {
    /// The number of samples the batch averages.
    pub size: usize,
    /// The noise added to ∇_x F.
    pub noise_x: Vec<f64>,
    /// The noise added to ∇_y F.
    pub noise_y: Vec<f64>,
    nx_t: Tensor<Rank1<DX>, E, Cpu>,
    ny_t: Tensor<Rank1<DY>, E, Cpu>,
}

impl<E: Real, const DX: usize, const DY: usize> Batch for QuadLowerBatch<E, DX, DY> {
    fn size(&self) -> usize {
        self.size
    }
}
impl<E: Real, const DX: usize, const DY: usize> Batch for QuadUpperBatch<E, DX, DY> {
    fn size(&self) -> usize {
        self.size
    }
}

impl<E: Real, const DX: usize, const DY: usize> Quadratic<E, DX, DY>
where
    Cpu: Device<E>,
{
    /// Draws the matrices from `config.seed`.
    pub fn new(config: QuadraticConfig) -> Self {
        assert!(config.batch_size >= 1, "batch_size must be at least 1");
        let mut rng = SampleRng::seed_from_u64(config.seed);
        let h = Matrix::random_spd(DY, config.mu, config.lipschitz, &mut rng);
        let c = Matrix::gaussian(DY, DX, 1.0 / (DX as f64).sqrt(), &mut rng);
        let b = Matrix::gaussian(DY, 1, 1.0, &mut rng).data;
        let p = Matrix::random_spd(DY, 0.5, 1.5, &mut rng);
        // A small coupling keeps Φ strongly convex: ∇²Φ = Q + RY' + Y'ᵀRᵀ + Y'ᵀPY', Y' = −H⁻¹C.
        let r = Matrix::gaussian(DX, DY, 0.1 / (DY as f64).sqrt(), &mut rng);
        let q = Matrix::random_spd(DX, 0.5, 1.5, &mut rng);
        let pv = Matrix::gaussian(DY, 1, 1.0, &mut rng).data;
        let qv = Matrix::gaussian(DX, 1, 1.0, &mut rng).data;
        let dev = crate::real::device();
        Self {
            p_t: matrix(&dev, &p),
            r_t: matrix(&dev, &r),
            q_t: matrix(&dev, &q),
            pv_t: vector(&dev, &pv),
            qv_t: vector(&dev, &qv),
            config,
            h,
            c,
            b,
            p,
            r,
            q,
            pv,
            qv,
            dev,
        }
    }

    /// Whether every oracle is exact (no noise at either level).
    pub fn is_deterministic(&self) -> bool {
        let c = &self.config;
        c.grad_noise == 0.0 && c.hessian_noise == 0.0 && c.upper_noise == 0.0
    }

    /// The batch with no noise: the exact lower objective.
    pub fn full_lower_batch(&self) -> QuadLowerBatch<E, DX, DY> {
        self.lower_batch_from(self.h.clone(), self.c.clone(), self.b.clone())
    }

    fn lower_batch_from(&self, h: Matrix, c: Matrix, b: Vec<f64>) -> QuadLowerBatch<E, DX, DY> {
        QuadLowerBatch {
            size: self.config.batch_size,
            h_t: matrix(&self.dev, &h),
            ct_t: matrix(&self.dev, &c.transpose()),
            b_t: vector(&self.dev, &b),
            h,
            c,
            b,
        }
    }

    fn batch_std(&self, per_sample: f64) -> f64 {
        per_sample / (self.config.batch_size as f64).sqrt()
    }

    /// `∇_y f(x, y)` without noise.
    fn grad_y_f(&self, x: &[f64], y: &[f64]) -> Vec<f64> {
        let py = self.p.mul_vec(y);
        let rtx = self.r.t_mul_vec(x);
        (0..DY).map(|i| py[i] + rtx[i] + self.pv[i]).collect()
    }

    /// `∇_x f(x, y)` without noise.
    fn grad_x_f(&self, x: &[f64], y: &[f64]) -> Vec<f64> {
        let qx = self.q.mul_vec(x);
        let ry = self.r.mul_vec(y);
        (0..DX).map(|i| qx[i] + ry[i] + self.qv[i]).collect()
    }

    fn f(&self, x: &[f64], y: &[f64]) -> f64 {
        0.5 * dot(y, &self.p.mul_vec(y))
            + dot(x, &self.r.mul_vec(y))
            + 0.5 * dot(x, &self.q.mul_vec(x))
            + dot(&self.pv, y)
            + dot(&self.qv, x)
    }
}

impl<E: Real, const DX: usize, const DY: usize> BilevelProblem<E> for Quadratic<E, DX, DY>
where
    Cpu: Device<E>,
{
    type X = Tensor<Rank1<DX>, E, Cpu>;
    type Y = Tensor<Rank1<DY>, E, Cpu>;
    type UpperBatch = QuadUpperBatch<E, DX, DY>;
    type LowerBatch = QuadLowerBatch<E, DX, DY>;

    fn sample_upper(&mut self, rng: &mut SampleRng) -> Self::UpperBatch {
        let s = self.batch_std(self.config.upper_noise);
        let noise_x = Matrix::gaussian(DX, 1, s, rng).data;
        let noise_y = Matrix::gaussian(DY, 1, s, rng).data;
        QuadUpperBatch {
            size: self.config.batch_size,
            nx_t: vector(&self.dev, &noise_x),
            ny_t: vector(&self.dev, &noise_y),
            noise_x,
            noise_y,
        }
    }

    fn sample_lower(&mut self, rng: &mut SampleRng) -> Self::LowerBatch {
        let sh = self.batch_std(self.config.hessian_noise);
        let sb = self.batch_std(self.config.grad_noise);
        let w = Matrix::gaussian(DY, DY, sh, rng);
        let h = self.h.plus(&Matrix::from_fn(DY, DY, |i, j| {
            0.5 * (w.at(i, j) + w.at(j, i))
        }));
        let c = self.c.plus(&Matrix::gaussian(DY, DX, sh, rng));
        let b = add_scaled(&self.b, 1.0, &Matrix::gaussian(DY, 1, sb, rng).data);
        self.lower_batch_from(h, c, b)
    }

    /// Without noise the problem is one fixed batch (the exact oracles); with noise it has no
    /// finite split.
    fn lower_parts(&self) -> Option<usize> {
        self.is_deterministic().then_some(1)
    }

    fn lower_part(&mut self, _k: usize) -> Option<Self::LowerBatch> {
        self.is_deterministic().then(|| self.full_lower_batch())
    }

    fn upper_parts(&self) -> Option<usize> {
        self.is_deterministic().then_some(1)
    }

    fn upper_part(&mut self, _k: usize) -> Option<Self::UpperBatch> {
        // Zero noise: the generator's draws are multiplied by 0.
        self.is_deterministic()
            .then(|| self.sample_upper(&mut SampleRng::seed_from_u64(0)))
    }

    fn upper_loss(&self, x: &Self::X, y: &Self::Y, batch: &Self::UpperBatch) -> Taped<Rank0, E> {
        let yt = || y.retaped::<Tp<E>>();
        let xt = || x.retaped::<Tp<E>>();
        let half = E::of(0.5);
        (yt().matmul(self.p_t.clone()) * yt()).sum() * half
            + (xt().matmul(self.r_t.clone()) * yt()).sum()
            + (xt().matmul(self.q_t.clone()) * xt()).sum() * half
            + (yt() * (self.pv_t.clone() + batch.ny_t.clone())).sum()
            + (xt() * (self.qv_t.clone() + batch.nx_t.clone())).sum()
    }

    fn lower_loss(&self, x: &Self::X, y: &Self::Y, batch: &Self::LowerBatch) -> Taped<Rank0, E> {
        let yt = || y.retaped::<Tp<E>>();
        (yt().matmul(batch.h_t.clone()) * yt()).sum() * E::of(0.5)
            + (x.retaped::<Tp<E>>().matmul(batch.ct_t.clone()) * yt()).sum()
            + (yt() * batch.b_t.clone()).sum()
    }

    fn project_x(&self, x: &mut Self::X) {
        if let Some(c) = &self.config.x_constraint {
            c.project(x);
        }
    }

    fn write_lower_grad_y(
        &self,
        x: &Self::X,
        y: &Self::Y,
        batch: &Self::LowerBatch,
        grad: &mut WrittenGrad<E>,
    ) {
        // ∇_y G = H y + C x + b (H symmetric, so y·H = (Hy)ᵀ).
        let g = y.retaped::<Tp<E>>().matmul(batch.h_t.clone())
            + x.retaped::<Tp<E>>().matmul(batch.ct_t.clone())
            + batch.b_t.clone();
        grad.set(y, g);
    }
}

impl<E: Real, const DX: usize, const DY: usize> ClosedForm<E> for Quadratic<E, DX, DY>
where
    Cpu: Device<E>,
{
    fn exact_upper(
        &self,
        x: &[f64],
        y: &[f64],
        batch: &Self::UpperBatch,
    ) -> (f64, Vec<f64>, Vec<f64>) {
        let value = self.f(x, y) + dot(&batch.noise_x, x) + dot(&batch.noise_y, y);
        let gx = add_scaled(&self.grad_x_f(x, y), 1.0, &batch.noise_x);
        let gy = add_scaled(&self.grad_y_f(x, y), 1.0, &batch.noise_y);
        (value, gx, gy)
    }

    fn exact_lower(
        &self,
        x: &[f64],
        y: &[f64],
        batch: &Self::LowerBatch,
    ) -> (f64, Vec<f64>, Vec<f64>) {
        let hy = batch.h.mul_vec(y);
        let cx = batch.c.mul_vec(x);
        let value = 0.5 * dot(y, &hy) + dot(y, &cx) + dot(&batch.b, y);
        let gx = batch.c.t_mul_vec(y);
        let gy = (0..DY).map(|i| hy[i] + cx[i] + batch.b[i]).collect();
        (value, gx, gy)
    }

    fn exact_hvp(&self, _x: &[f64], _y: &[f64], v: &[f64], batch: &Self::LowerBatch) -> Vec<f64> {
        batch.h.mul_vec(v)
    }

    fn exact_jvp(&self, _x: &[f64], _y: &[f64], v: &[f64], batch: &Self::LowerBatch) -> Vec<f64> {
        batch.c.t_mul_vec(v)
    }

    fn y_star(&self, x: &[f64]) -> Vec<f64> {
        let rhs = add_scaled(&self.c.mul_vec(x), 1.0, &self.b);
        self.h.solve_spd(&rhs).into_iter().map(|v| -v).collect()
    }

    fn z_star(&self, x: &[f64]) -> Vec<f64> {
        self.h.solve_spd(&self.grad_y_f(x, &self.y_star(x)))
    }

    fn hypergradient(&self, x: &[f64]) -> Vec<f64> {
        let y = self.y_star(x);
        add_scaled(
            &self.grad_x_f(x, &y),
            -1.0,
            &self.c.t_mul_vec(&self.z_star(x)),
        )
    }

    fn phi(&self, x: &[f64]) -> f64 {
        self.f(x, &self.y_star(x))
    }
}
