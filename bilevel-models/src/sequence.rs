//! Batches of activations and packed sequences, with compile-time feature sizes and runtime
//! batch sizes and lengths.
//!
//! A batch of sequences is *packed*: its rows are sorted by length, longest first, and step t
//! holds only the rows of the sequences still running at t (the first `active(t)` rows). No work
//! is spent on padding, and a row's state at step t − 1 is the same row of the larger batch
//! before it. Pooling returns the rows in the caller's order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bilevel_optim::problem::Taped;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::prelude::{Const, Cpu, Device};

/// A taped batch of `N`-dimensional activations: shape (batch, N).
pub type Activations<E, const N: usize> = Taped<(usize, Const<N>), E>;

/// Every sequence laid out so far by [`SequenceMask::from_lengths`], in this process.
static LAID_OUT: LaidOut = LaidOut {
    sequences: AtomicU64::new(0),
    steps: AtomicU64::new(0),
    longest: AtomicU64::new(0),
};

/// Counts of the sequences laid out so far ([`laid_out`]).
struct LaidOut {
    sequences: AtomicU64,
    /// Their steps, summed: the rows a packed RNN runs over them.
    steps: AtomicU64,
    longest: AtomicU64,
}

/// The sequences laid out so far in this process, their summed steps and the longest: a padded
/// RNN runs `sequences × T` row-steps where a packed one runs `steps`, so `steps / (sequences ×
/// T)` is the share of the padded work packing leaves (`bilevel-bench perf` prints it).
pub fn laid_out() -> (u64, u64, u64) {
    (
        LAID_OUT.sequences.load(Ordering::Relaxed),
        LAID_OUT.steps.load(Ordering::Relaxed),
        LAID_OUT.longest.load(Ordering::Relaxed),
    )
}

/// The layout of a packed batch of sequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceMask {
    /// In the caller's order.
    lengths: Vec<usize>,
    /// `order[r]` is the caller's row of packed row r (longest first; ties keep the caller's
    /// order).
    order: Vec<usize>,
    /// `active[t]`: how many sequences are longer than t.
    active: Vec<usize>,
}

impl SequenceMask {
    /// The layout of sequences of the given lengths. Every length must be at least 1 (the text
    /// pipeline turns an empty text into one zero vector).
    pub fn from_lengths(lengths: Vec<usize>) -> Self {
        assert!(
            lengths.iter().all(|&l| l >= 1),
            "every sequence needs at least one step"
        );
        LAID_OUT
            .sequences
            .fetch_add(lengths.len() as u64, Ordering::Relaxed);
        let total: usize = lengths.iter().sum();
        LAID_OUT.steps.fetch_add(total as u64, Ordering::Relaxed);
        LAID_OUT.longest.fetch_max(
            lengths.iter().copied().max().unwrap_or(0) as u64,
            Ordering::Relaxed,
        );
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let steps = lengths.iter().copied().max().unwrap_or(0);
        let active = (0..steps)
            .map(|t| lengths.iter().filter(|&&l| l > t).count())
            .collect();
        Self {
            lengths,
            order,
            active,
        }
    }

    /// The lengths, in the caller's order.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Number of time steps (the longest sequence).
    pub fn steps(&self) -> usize {
        self.active.len()
    }

    /// The number of sequences.
    pub fn batch_size(&self) -> usize {
        self.lengths.len()
    }

    /// The rows of step `t`: the first `active(t)` packed rows.
    pub fn active(&self, t: usize) -> usize {
        self.active[t]
    }

    /// The caller's row of each packed row.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The length of packed row `r`.
    pub fn packed_length(&self, r: usize) -> usize {
        self.lengths[self.order[r]]
    }
}

/// A taped packed batch of sequences of `N`-dimensional vectors: step t is an
/// (`mask.active(t)`, N) matrix whose rows are the packed rows of [`SequenceMask`].
pub struct Sequence<E: Real, const N: usize>
where
    Cpu: Device<E>,
{
    /// Step t holds the rows of the sequences still running at t.
    pub steps: Vec<Activations<E, N>>,
    /// The layout: lengths and order.
    pub mask: Arc<SequenceMask>,
}

/// Runs `forward` on every step of a sequence, keeping what each step saves.
pub fn each_step<E: Real, const N: usize, const M: usize, T>(
    input: Sequence<E, N>,
    mut forward: impl FnMut(Activations<E, N>) -> (Activations<E, M>, T),
) -> (Sequence<E, M>, Vec<T>)
where
    Cpu: Device<E>,
{
    let (steps, saved) = input.steps.into_iter().map(&mut forward).unzip();
    let output = Sequence {
        steps,
        mask: input.mask,
    };
    (output, saved)
}

/// Runs `backward` on every step of a sequence's gradient (see
/// [`crate::layer::WrittenLayer::backward`]): a layer applied to each step alike. Without
/// `want_input`, each step's backward still adds the layer's own gradients and keeps its tape.
pub fn backward_each_step<E: Real, const N: usize, const M: usize, T>(
    saved: Vec<T>,
    grad_output: Sequence<E, M>,
    grads: &mut WrittenGrad<E>,
    want_input: bool,
    mut backward: impl FnMut(
        T,
        Activations<E, M>,
        &mut WrittenGrad<E>,
        bool,
    ) -> Option<Activations<E, N>>,
) -> Option<Sequence<E, N>>
where
    Cpu: Device<E>,
{
    let steps: Vec<_> = saved
        .into_iter()
        .zip(grad_output.steps)
        .map(|(s, d)| backward(s, d, grads, want_input))
        .collect();
    want_input.then(|| Sequence {
        steps: steps
            .into_iter()
            .map(|s| s.expect("a step's backward returns its input gradient when asked"))
            .collect(),
        mask: grad_output.mask,
    })
}
