//! A batch of data rows as runtime-sized dfdx tensors, shared by the regression problems.

use dfdx::prelude::*;
use rand::Rng;

use crate::linalg::Matrix;
use crate::problem::{fixed_batch, fixed_batch_count, Batch};
use crate::real::Real;

/// Rows `A_B` of a design matrix with targets `t_B`, and the row indices they came from.
pub struct Rows<E: Real, const D: usize> {
    /// The rows of the data set in the batch.
    pub indices: Vec<usize>,
    /// `A_B` as f64, for the closed forms.
    pub a: Matrix,
    /// Their targets.
    pub targets: Vec<f64>,
    pub(crate) a_t: Tensor<(usize, Const<D>), E, Cpu>,
    /// `A_Bᵀ`, so that `y·A_Bᵀ` keeps the taped y on the left.
    pub(crate) at_t: Tensor<(Const<D>, usize), E, Cpu>,
    pub(crate) targets_t: Tensor<(usize,), E, Cpu>,
    pub(crate) indices_t: Tensor<(usize,), usize, Cpu>,
}

impl<E: Real, const D: usize> Batch for Rows<E, D> {
    fn size(&self) -> usize {
        self.indices.len()
    }
}

impl<E: Real, const D: usize> Rows<E, D>
where
    Cpu: Device<E>,
{
    /// The rows `indices` of (`a`, `targets`).
    pub fn select(dev: &Cpu, a: &Matrix, targets: &[f64], indices: Vec<usize>) -> Self {
        assert_eq!(a.cols, D);
        let n = indices.len();
        let sub = Matrix::from_fn(n, D, |i, j| a.at(indices[i], j));
        let t: Vec<f64> = indices.iter().map(|&i| targets[i]).collect();
        let cast = |v: &[f64]| v.iter().map(|&x| E::of(x)).collect::<Vec<E>>();
        Self {
            a_t: dev.tensor_from_vec(cast(&sub.data), (n, Const::<D>)),
            at_t: dev.tensor_from_vec(cast(&sub.transpose().data), (Const::<D>, n)),
            targets_t: dev.tensor_from_vec(cast(&t), (n,)),
            indices_t: dev.tensor_from_vec(indices.clone(), (n,)),
            indices,
            a: sub,
            targets: t,
        }
    }

    /// Shard `k` of `parts` of `batch` (a contiguous share of its rows, selected again from the
    /// full data `a`, `targets` on this thread's device), weighted by its share of the rows:
    /// for losses that are a mean over rows plus a penalty ([`crate::problem::ShardedProblem`]).
    pub fn shard(
        a: &Matrix,
        targets: &[f64],
        batch: &Self,
        k: usize,
        parts: usize,
    ) -> Option<(f64, Self)> {
        let n = batch.indices.len();
        let range = crate::shards::shard_range(n, k, parts);
        if range.is_empty() {
            return None;
        }
        let share = range.len() as f64 / n as f64;
        let rows = batch.indices[range].to_vec();
        Some((
            share,
            Self::select(&crate::real::device(), a, targets, rows),
        ))
    }

    /// All rows, in order.
    pub fn all(dev: &Cpu, a: &Matrix, targets: &[f64]) -> Self {
        Self::select(dev, a, targets, (0..a.rows).collect())
    }

    /// How many fixed batches of `size` consecutive rows (the last may be shorter) `n` rows make;
    /// one batch of every row when `size` is `None`.
    pub fn part_count(n: usize, size: Option<usize>) -> usize {
        size.map_or(1, |b| fixed_batch_count(n, b))
    }

    /// The share of fixed batch `k` of [`Rows::part_count`] in the mean over `n` rows.
    pub fn part_share(n: usize, size: Option<usize>, k: usize) -> f64 {
        size.map_or(1.0, |b| crate::problem::fixed_batch_share(n, b, k))
    }

    /// The fixed batch `k` of [`Rows::part_count`]: rows `k·size .. (k+1)·size`.
    pub fn part(dev: &Cpu, a: &Matrix, targets: &[f64], size: Option<usize>, k: usize) -> Self {
        let rows = fixed_batch(a.rows, size.unwrap_or(a.rows), k)
            .unwrap_or_default()
            .collect();
        Self::select(dev, a, targets, rows)
    }

    /// `size` rows drawn uniformly with replacement, or all rows when `size` is `None`.
    pub fn sample(
        dev: &Cpu,
        a: &Matrix,
        targets: &[f64],
        size: Option<usize>,
        rng: &mut impl Rng,
    ) -> Self {
        match size {
            None => Self::all(dev, a, targets),
            Some(b) => Self::select(
                dev,
                a,
                targets,
                (0..b).map(|_| rng.gen_range(0..a.rows)).collect(),
            ),
        }
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the batch has no row.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// The batch methods of a [`crate::problem::BilevelProblem`] whose data are rows: random and
/// fixed batches of `self.$lower_rows` (matrix) and `self.$lower_targets` for the lower level,
/// of the upper fields for the upper level, `self.$lower_batch` and `self.$upper_batch` rows each
/// (`None`: all), built on `self.$dev`. Written once for the closed-form problems.
macro_rules! row_batches {
    (
        device: $dev:ident,
        lower: ($lower_rows:ident, $lower_targets:ident, $lower_batch:ident),
        upper: ($upper_rows:ident, $upper_targets:ident, $upper_batch:ident) $(,)?
    ) => {
        fn sample_upper(&mut self, rng: &mut SampleRng) -> Self::UpperBatch {
            Rows::sample(
                &self.$dev,
                &self.$upper_rows,
                &self.$upper_targets,
                self.$upper_batch,
                rng,
            )
        }

        fn sample_lower(&mut self, rng: &mut SampleRng) -> Self::LowerBatch {
            Rows::sample(
                &self.$dev,
                &self.$lower_rows,
                &self.$lower_targets,
                self.$lower_batch,
                rng,
            )
        }

        fn lower_parts(&self) -> Option<usize> {
            Some(Rows::<E, D>::part_count(
                self.$lower_rows.rows,
                self.$lower_batch,
            ))
        }

        fn lower_part(&mut self, k: usize) -> Option<Self::LowerBatch> {
            Some(Rows::part(
                &self.$dev,
                &self.$lower_rows,
                &self.$lower_targets,
                self.$lower_batch,
                k,
            ))
        }

        /// The batches average their rows: a shorter last batch has a smaller share.
        fn lower_part_share(&self, k: usize) -> f64 {
            Rows::<E, D>::part_share(self.$lower_rows.rows, self.$lower_batch, k)
        }

        fn upper_part_share(&self, k: usize) -> f64 {
            Rows::<E, D>::part_share(self.$upper_rows.rows, self.$upper_batch, k)
        }

        fn upper_parts(&self) -> Option<usize> {
            Some(Rows::<E, D>::part_count(
                self.$upper_rows.rows,
                self.$upper_batch,
            ))
        }

        fn upper_part(&mut self, k: usize) -> Option<Self::UpperBatch> {
            Some(Rows::part(
                &self.$dev,
                &self.$upper_rows,
                &self.$upper_targets,
                self.$upper_batch,
                k,
            ))
        }
    };
}
pub(crate) use row_batches;
