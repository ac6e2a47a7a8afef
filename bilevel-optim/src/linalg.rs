//! Small dense f64 linear algebra for the closed-form problems (exact y*, z*, ∇Φ by solves).

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// A row-major dense matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// The entries, row after row.
    pub data: Vec<f64>,
}

impl Matrix {
    /// A `rows × cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// The matrix whose entry (i, j) is `f(i, j)`.
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f64) -> Self {
        let mut m = Self::zeros(rows, cols);
        for i in 0..rows {
            for j in 0..cols {
                m.data[i * cols + j] = f(i, j);
            }
        }
        m
    }

    /// Entries drawn from N(0, std²).
    pub fn gaussian(rows: usize, cols: usize, std: f64, rng: &mut impl Rng) -> Self {
        Self::from_fn(rows, cols, |_, _| {
            let s: f64 = StandardNormal.sample(rng);
            std * s
        })
    }

    /// A random symmetric positive definite matrix with eigenvalues spread over `[min_eig, max_eig]`:
    /// `Q diag(λ) Qᵀ` with Q from Gram–Schmidt of a Gaussian matrix.
    pub fn random_spd(n: usize, min_eig: f64, max_eig: f64, rng: &mut impl Rng) -> Self {
        let q = orthonormal_columns(&Matrix::gaussian(n, n, 1.0, rng));
        let eig = |k: usize| {
            if n == 1 {
                max_eig
            } else {
                min_eig + (max_eig - min_eig) * k as f64 / (n - 1) as f64
            }
        };
        Matrix::from_fn(n, n, |i, j| {
            (0..n).map(|k| q.at(i, k) * eig(k) * q.at(j, k)).sum()
        })
    }

    /// The entry (i, j).
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    /// Row i.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The transpose.
    pub fn transpose(&self) -> Matrix {
        Matrix::from_fn(self.cols, self.rows, |i, j| self.at(j, i))
    }

    /// `A v`.
    pub fn mul_vec(&self, v: &[f64]) -> Vec<f64> {
        assert_eq!(v.len(), self.cols);
        (0..self.rows).map(|i| dot(self.row(i), v)).collect()
    }

    /// `Aᵀ v`.
    pub fn t_mul_vec(&self, v: &[f64]) -> Vec<f64> {
        assert_eq!(v.len(), self.rows);
        let mut out = vec![0.0; self.cols];
        for (i, &vi) in v.iter().enumerate() {
            for (o, a) in out.iter_mut().zip(self.row(i)) {
                *o += a * vi;
            }
        }
        out
    }

    /// `Aᵀ diag(w) A`, the Gram matrix weighted by `w`.
    pub fn weighted_gram(&self, w: &[f64]) -> Matrix {
        let mut g = Matrix::zeros(self.cols, self.cols);
        for (i, &wi) in w.iter().enumerate() {
            let r = self.row(i);
            for (a, &ra) in r.iter().enumerate() {
                let row = &mut g.data[a * self.cols..(a + 1) * self.cols];
                for (gab, &rb) in row.iter_mut().zip(r) {
                    *gab += ra * wi * rb;
                }
            }
        }
        g
    }

    /// `self + other`.
    pub fn plus(&self, other: &Matrix) -> Matrix {
        assert_eq!((self.rows, self.cols), (other.rows, other.cols));
        Matrix {
            rows: self.rows,
            cols: self.cols,
            data: self
                .data
                .iter()
                .zip(&other.data)
                .map(|(a, b)| a + b)
                .collect(),
        }
    }

    /// `self + diag(d)`.
    pub fn plus_diag(&self, d: &[f64]) -> Matrix {
        let mut m = self.clone();
        for (i, di) in d.iter().enumerate() {
            m.data[i * self.cols + i] += di;
        }
        m
    }

    /// Solves `A x = b` for symmetric positive definite A by Cholesky. Panics if A is not SPD,
    /// which for the problems of this crate would be a construction bug.
    pub fn solve_spd(&self, b: &[f64]) -> Vec<f64> {
        let n = self.rows;
        assert_eq!(n, self.cols);
        let mut l = Matrix::zeros(n, n);
        for i in 0..n {
            for j in 0..=i {
                let s: f64 = self.at(i, j) - (0..j).map(|k| l.at(i, k) * l.at(j, k)).sum::<f64>();
                l.data[i * n + j] = if i == j {
                    assert!(s > 0.0, "matrix is not positive definite");
                    s.sqrt()
                } else {
                    s / l.at(j, j)
                };
            }
        }
        let mut y = vec![0.0; n];
        for i in 0..n {
            y[i] = (b[i] - (0..i).map(|k| l.at(i, k) * y[k]).sum::<f64>()) / l.at(i, i);
        }
        let mut x = vec![0.0; n];
        for i in (0..n).rev() {
            x[i] = (y[i] - (i + 1..n).map(|k| l.at(k, i) * x[k]).sum::<f64>()) / l.at(i, i);
        }
        x
    }
}

fn orthonormal_columns(a: &Matrix) -> Matrix {
    let n = a.rows;
    let mut cols: Vec<Vec<f64>> = Vec::with_capacity(a.cols);
    for j in 0..a.cols {
        let mut c: Vec<f64> = (0..n).map(|i| a.at(i, j)).collect();
        for q in &cols {
            let p = dot(&c, q);
            c.iter_mut().zip(q).for_each(|(ci, qi)| *ci -= p * qi);
        }
        let norm = dot(&c, &c).sqrt();
        c.iter_mut().for_each(|ci| *ci /= norm);
        cols.push(c);
    }
    Matrix::from_fn(n, a.cols, |i, j| cols[j][i])
}

/// The inner product of two vectors of the same length.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The Euclidean norm.
pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// `a + s·b`.
pub fn add_scaled(a: &[f64], s: f64, b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + s * y).collect()
}

/// The logistic function `1/(1 + e^{-u})`.
pub fn sigmoid(u: f64) -> f64 {
    1.0 / (1.0 + (-u).exp())
}

/// `ln(1 + e^u)`, stable for large |u|.
pub fn softplus(u: f64) -> f64 {
    u.max(0.0) + (-u.abs()).exp().ln_1p()
}
