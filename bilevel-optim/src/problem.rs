//! How a user describes a bilevel problem.
//!
//! `min_x f(x, y*(x))` with `y*(x) = argmin_y g(x, y)`. The user gives:
//! - the upper variable `X` and lower variable `Y`: any dfdx modules, tensors or tuples of them;
//! - samplers for the upper batches ξ and lower batches ζ;
//! - the losses `F(x, y; ξ)` and `G(x, y; ζ)` as ordinary taped dfdx computations;
//! - the lower gradient `∇_y G(x, y; ζ)` written as a forward computation in taped ops
//!   ([`BilevelProblem::write_lower_grad_y`]). dfdx cannot differentiate its own gradient, so this
//!   written gradient is what makes exact Hessian-vector and cross products possible: one ordinary
//!   backward over `⟨∇_y G, v⟩` yields `∇²_yy G·v` and `∇²_xy G·v` at once (see [`crate::oracles`]).
//!
//! # Which gradient of G is used where
//! Every y step of every method uses dfdx's autodiff of [`BilevelProblem::lower_loss`] (or of
//! [`BilevelProblem::lower_loss_in_y`]); the written gradient is used only to form the
//! second-order products. So the lower problem every method solves is the one `lower_loss`
//! defines, and a written gradient that disagrees with it can only bias the products, the same
//! way for every method. [`crate::check::check_problem`] compares the two (and the products with
//! finite differences); the oracles run that check at their first second-order call in debug
//! builds ([`crate::oracles::Oracles::check_on_first_use`]).
//!
//! # Taping rule
//! Every tensor of `x`, `y` and every constant is brought into a computation with
//! `.retaped::<Tp<E>>()` (an empty tape with the tensor's id), or, for dfdx modules, by calling
//! `forward` on a taped input. The library merges the tapes and allocates gradients for every
//! tensor of `x` and `y`, so a tensor a loss does not touch simply gets a zero gradient.
//! A tape that is dropped instead of merged loses its backward operations silently; the
//! [`crate::written_grad::WrittenGrad`] builder merges every component it is given, and
//! [`crate::written_grad::WrittenGrad::keep_tape`] merges leftovers (such as the gradient with
//! respect to an initial hidden state that nobody needs).

use dfdx::prelude::{Cpu, Device, Rank0};

use crate::params::Params;
use crate::real::Real;
use crate::written_grad::WrittenGrad;

pub use crate::tape::{Taped, Tp};

/// The random generator that draws batches. ChaCha8 has a serialisable position, so a run can be
/// resumed exactly.
pub type SampleRng = rand_chacha::ChaCha8Rng;

/// A batch of samples; its size is what the oracle counters report as "samples touched".
pub trait Batch {
    /// The number of samples in the batch.
    fn size(&self) -> usize;
}

/// A bilevel problem over upper variable `X` and lower variable `Y`.
pub trait BilevelProblem<E: Real>
where
    Cpu: Device<E>,
{
    /// The upper-level variable (hyperparameters, encoder, sample weights...).
    type X: Params<E>;
    /// The lower-level variable (model weights, heads...).
    type Y: Params<E>;
    /// A batch ξ of the upper-level (validation / query) data.
    type UpperBatch: Batch;
    /// A batch ζ of the lower-level (training / support) data.
    type LowerBatch: Batch;

    /// Called once at the start of every iteration, before any draw (every method built on
    /// [`crate::methods::rule::RuleOptimizer`] does it through [`crate::oracles::Oracles::begin_iteration`]).
    /// For problems whose sample is one per iteration, such as a meta-learning task batch whose
    /// supports are the iteration's lower batches and whose queries its upper batches. Does
    /// nothing by default: every draw is then independent.
    fn begin_iteration(&mut self, _rng: &mut SampleRng) {}

    /// Draws a fresh upper batch. Deterministic problems return the full data set.
    fn sample_upper(&mut self, rng: &mut SampleRng) -> Self::UpperBatch;

    /// Draws a fresh lower batch. Deterministic problems return the full data set.
    fn sample_lower(&mut self, rng: &mut SampleRng) -> Self::LowerBatch;

    /// `F(x, y; ξ)` as a taped scalar (see the taping rule in the module docs).
    fn upper_loss(&self, x: &Self::X, y: &Self::Y, batch: &Self::UpperBatch) -> Taped<Rank0, E>;

    /// `G(x, y; ζ)` as a taped scalar.
    fn lower_loss(&self, x: &Self::X, y: &Self::Y, batch: &Self::LowerBatch) -> Taped<Rank0, E>;

    /// `G(x, y; ζ)` for a gradient in y only, with x a constant: what SGD on the lower level
    /// differentiates. The default is [`BilevelProblem::lower_loss`]; a problem whose x feeds y
    /// through an expensive computation (an encoder under task heads) can leave that computation
    /// off the tape, so the backward pass stops at y instead of running back through x.
    fn lower_loss_in_y(
        &self,
        x: &Self::X,
        y: &Self::Y,
        batch: &Self::LowerBatch,
    ) -> Taped<Rank0, E> {
        self.lower_loss(x, y, batch)
    }

    /// Projects x onto its feasible set. Every method calls it right after each x step, so its
    /// rule becomes the projected rule `x ← Π(x − step)`. The default leaves x unconstrained;
    /// [`crate::constraint::Constraint`] projects a tensor onto a box or a ball.
    fn project_x(&self, _x: &mut Self::X) {}

    /// For methods that keep one memory per batch (SABA): the number of fixed lower batches the
    /// lower data splits into, or `None` when the problem has no finite split (the default).
    fn lower_parts(&self) -> Option<usize> {
        None
    }

    /// The fixed lower batch `k < lower_parts()`; `None` when there is no finite split.
    fn lower_part(&mut self, _k: usize) -> Option<Self::LowerBatch> {
        None
    }

    /// The share of fixed lower batch `k` in the whole lower objective, `g = Σ_k s_k G(ζ_k)` (up
    /// to a common factor): what SABA weights its memories by, so that a shorter last batch is
    /// not over-weighted. The default is equal shares, right for equal batches and for a loss
    /// that sums over its items (hyper-representation's tasks); a loss that averages its rows
    /// gives its rows over all rows ([`fixed_batch_share`]).
    fn lower_part_share(&self, _k: usize) -> f64 {
        1.0 / self.lower_parts().unwrap_or(1).max(1) as f64
    }

    /// Like [`BilevelProblem::lower_part_share`], for the upper data.
    fn upper_part_share(&self, _k: usize) -> f64 {
        1.0 / self.upper_parts().unwrap_or(1).max(1) as f64
    }

    /// Like [`BilevelProblem::lower_parts`], for the upper data.
    fn upper_parts(&self) -> Option<usize> {
        None
    }

    /// The fixed upper batch `k < upper_parts()`.
    fn upper_part(&mut self, _k: usize) -> Option<Self::UpperBatch> {
        None
    }

    /// State of the problem's own sampler beyond the oracles' generator (e.g. the task batch a
    /// meta-learning problem reuses for its upper batch), for checkpoints. Empty by default.
    fn sampler_state(&self) -> Vec<u64> {
        Vec::new()
    }

    /// Restores what [`BilevelProblem::sampler_state`] saved.
    fn restore_sampler(&mut self, state: &[u64]) -> Result<(), String> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "this problem keeps no sampler state, the checkpoint has {} values",
                state.len()
            ))
        }
    }

    /// `∇_y G(x, y; ζ)` written in taped ops: give every trainable tensor of `y` its component with
    /// `grad.set` (whole), `grad.add` (term by term) or `grad.zero` (untouched by this batch).
    /// The components must carry the tapes of everything they depend on
    /// (x, y, and intermediate values), which is what makes the second-order products exact.
    /// It must equal dfdx's gradient of [`BilevelProblem::lower_loss`];
    /// [`crate::check::check_problem`] verifies that and the products built from it.
    fn write_lower_grad_y(
        &self,
        x: &Self::X,
        y: &Self::Y,
        batch: &Self::LowerBatch,
        grad: &mut WrittenGrad<E>,
    );

    /// Which trainable tensors of `y` (in visiting order, as [`Params::tensor_spans`] lists them)
    /// the upper loss on `batch` depends on; `None` (the default): all. A hint that saves work
    /// and changes no value: the others' gradients are exact zeros, so the passes keep no buffer
    /// for them and return shared zeros ([`crate::shared_zeros`]), and a y of many parts of
    /// which a batch touches a few (one head per task) costs what those few cost. A tensor left
    /// out that the loss does depend on would lose its gradient;
    /// [`crate::check::check_problem`] compares the hinted passes with full ones.
    fn upper_touches(&self, _y: &Self::Y, _batch: &Self::UpperBatch) -> Option<Vec<bool>> {
        None
    }

    /// [`BilevelProblem::upper_touches`] for the lower loss on `batch` (and for
    /// [`BilevelProblem::lower_loss_in_y`]). The written gradient's second-order pass needs no
    /// hint: the tensors it declares zero ([`WrittenGrad::zero`]) are the untouched ones.
    fn lower_touches(&self, _y: &Self::Y, _batch: &Self::LowerBatch) -> Option<Vec<bool>> {
        None
    }
}

/// How many fixed batches of `size` consecutive items `n` items make (the last may be shorter):
/// the split behind [`BilevelProblem::lower_parts`] for a problem with per-batch memories.
pub fn fixed_batch_count(n: usize, size: usize) -> usize {
    n.div_ceil(size.max(1))
}

/// The items `k·size .. (k+1)·size` of fixed batch `k` of [`fixed_batch_count`]; `None` past
/// the end.
pub fn fixed_batch(n: usize, size: usize, k: usize) -> Option<std::ops::Range<usize>> {
    let size = size.max(1);
    (k < fixed_batch_count(n, size)).then(|| k * size..((k + 1) * size).min(n))
}

/// The share of fixed batch `k` of [`fixed_batch_count`] in a loss that averages `n` items: its
/// items over `n` (the last batch may be shorter).
pub fn fixed_batch_share(n: usize, size: usize, k: usize) -> f64 {
    fixed_batch(n, size, k).map_or(0.0, |r| r.len() as f64 / n.max(1) as f64)
}

/// A problem whose batches split into shards, so that one oracle call can run on several
/// threads ([`crate::oracles::Oracles::sharded`]): each thread runs the pass on one shard with
/// its own tape, and the weighted results are added.
///
/// A shard is built on the calling thread (its tensors on that thread's
/// [`crate::real::device`]), and the weights must make the batch's loss the weighted sum of its
/// shards' losses: `G(x, y; ζ) = Σ_k w_k G(x, y; ζ_k)`. For a mean over samples plus a penalty,
/// `w_k` = the shard's share of the samples; for a sum over tasks, `w_k = 1` and the penalty of a
/// task's head goes with its task. A shard with no samples (a batch smaller than `parts`) is
/// `None` and is skipped.
pub trait ShardedProblem<E: Real>: BilevelProblem<E>
where
    Cpu: Device<E>,
{
    /// Shard `k` of `parts` of an upper batch, with its weight.
    fn upper_shard(
        &self,
        batch: &Self::UpperBatch,
        k: usize,
        parts: usize,
    ) -> Option<(f64, Self::UpperBatch)>;

    /// Shard `k` of `parts` of a lower batch, with its weight.
    fn lower_shard(
        &self,
        batch: &Self::LowerBatch,
        k: usize,
        parts: usize,
    ) -> Option<(f64, Self::LowerBatch)>;
}
