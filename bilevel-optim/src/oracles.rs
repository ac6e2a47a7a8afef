//! Exact first- and second-order oracles of a [`BilevelProblem`], with call counters.
//!
//! - `∇_x F, ∇_y F` (one backward of the upper loss), `∇_x G, ∇_y G` (one backward of the lower
//!   loss): ordinary dfdx autodiff.
//! - `∇²_yy G·v` and `∇²_xy G·v`: one backward over `⟨∇_y G, v⟩`, where `∇_y G` is the problem's
//!   written gradient. Exact up to rounding; no finite differences.
//!
//! All batches are drawn here, from one seeded generator, so every method sees data in the same
//! order and a run can be resumed from [`OracleState`].

use dfdx::nn::ZeroGrads;
use dfdx::prelude::{
    AsArray, Backward, Cpu, Device, Merge, PutTape, Rank0, SplitTape, Tensor, Trace, ZerosTensor,
};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::BilevelError;
use crate::params::Params;
use crate::problem::{Batch, BilevelProblem, SampleRng, Taped};
use crate::real::Real;
use crate::written_grad::WrittenGrad;

fn no_split() -> BilevelError {
    BilevelError::InvalidConfig {
        field: "method",
        reason: "needs a problem whose data splits into a finite set of batches (lower_parts / upper_parts)"
            .into(),
    }
}

/// How many times each oracle was called, and how many samples those calls touched.
///
/// A second-order call computes `∇²_yy G·v` and `∇²_xy G·v` in one pass and counts one of each
/// (an HVP-only call counts one HVP); the value of `∇_y G` it yields as a by-product is not
/// counted as a separate gradient call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OracleCounts {
    /// Calls of `(∇_x F, ∇_y F)` (one backward of the upper loss).
    pub upper_grad: u64,
    /// Calls of `(∇_x G, ∇_y G)` (one backward of the lower loss).
    pub lower_grad: u64,
    /// Hessian-vector products `∇²_yy G·v`.
    pub hvp: u64,
    /// Cross products `∇²_xy G·v`.
    pub jvp: u64,
    /// Upper-level samples touched, summed over calls.
    pub upper_samples: u64,
    /// Lower-level samples touched, summed over calls.
    pub lower_samples: u64,
}

impl OracleCounts {
    /// The calls made since `earlier`.
    pub fn since(&self, earlier: &OracleCounts) -> OracleCounts {
        OracleCounts {
            upper_grad: self.upper_grad - earlier.upper_grad,
            lower_grad: self.lower_grad - earlier.lower_grad,
            hvp: self.hvp - earlier.hvp,
            jvp: self.jvp - earlier.jvp,
            upper_samples: self.upper_samples - earlier.upper_samples,
            lower_samples: self.lower_samples - earlier.lower_samples,
        }
    }
}

/// The value of a loss and its two partial gradients from one backward pass.
#[derive(Debug, Clone)]
pub struct LossGrad<E, X, Y> {
    pub value: E,
    pub dx: X,
    pub dy: Y,
}

/// The result of one second-order pass at (x, y) in direction v.
#[derive(Debug, Clone)]
pub struct SecondOrder<X, Y> {
    /// `∇_y G(x, y; ζ)`, the written gradient's value (a by-product of the pass).
    pub grad_y: Y,
    /// `∇²_yy G(x, y; ζ)·v`.
    pub hvp: Y,
    /// `∇²_xy G(x, y; ζ)·v`.
    pub jvp: X,
}

/// What must be saved to continue drawing the same batches after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleState {
    pub counts: OracleCounts,
    pub seed: [u8; 32],
    pub stream: u64,
    pub word_pos: u128,
}

/// A problem together with its batch generator and call counters.
pub struct Oracles<E: Real, P: BilevelProblem<E>>
where
    Cpu: Device<E>,
{
    problem: P,
    rng: SampleRng,
    counts: OracleCounts,
    dev: Cpu,
    _e: std::marker::PhantomData<E>,
}

impl<E: Real, P: BilevelProblem<E>> Oracles<E, P>
where
    Cpu: Device<E>,
{
    /// Wraps `problem`; batches are drawn from a generator seeded with `seed`.
    pub fn new(problem: P, seed: u64) -> Self {
        Self {
            problem,
            rng: SampleRng::seed_from_u64(seed),
            counts: OracleCounts::default(),
            dev: crate::real::device(),
            _e: std::marker::PhantomData,
        }
    }

    pub fn problem(&self) -> &P {
        &self.problem
    }

    pub fn problem_mut(&mut self) -> &mut P {
        &mut self.problem
    }

    /// Cumulative oracle counts.
    pub fn counts(&self) -> OracleCounts {
        self.counts
    }

    /// Draws a fresh upper batch ξ.
    pub fn upper_batch(&mut self) -> P::UpperBatch {
        self.problem.sample_upper(&mut self.rng)
    }

    /// Draws a fresh lower batch ζ.
    pub fn lower_batch(&mut self) -> P::LowerBatch {
        self.problem.sample_lower(&mut self.rng)
    }

    /// A fixed lower batch drawn uniformly from the problem's finite split, with its index
    /// (for per-batch memories). Fails when the problem has no finite split.
    pub fn indexed_lower_batch(&mut self) -> Result<(usize, P::LowerBatch), BilevelError> {
        let n = self
            .problem
            .lower_parts()
            .filter(|&n| n > 0)
            .ok_or_else(no_split)?;
        let k = self.rng.gen_range(0..n);
        Ok((k, self.problem.lower_part(k).ok_or_else(no_split)?))
    }

    /// Like [`Oracles::indexed_lower_batch`], for the upper data.
    pub fn indexed_upper_batch(&mut self) -> Result<(usize, P::UpperBatch), BilevelError> {
        let n = self
            .problem
            .upper_parts()
            .filter(|&n| n > 0)
            .ok_or_else(no_split)?;
        let k = self.rng.gen_range(0..n);
        Ok((k, self.problem.upper_part(k).ok_or_else(no_split)?))
    }

    /// A draw from the batch generator, for methods whose randomness is part of the data order
    /// (the truncation of a randomized Neumann series): uniform in `0..n`.
    pub fn draw_index(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n)
    }

    /// `F(x, y; ξ)`, `∇_x F`, `∇_y F` from one backward pass.
    pub fn upper_grad(
        &mut self,
        x: &P::X,
        y: &P::Y,
        batch: &P::UpperBatch,
    ) -> LossGrad<E, P::X, P::Y> {
        self.counts.upper_grad += 1;
        self.counts.upper_samples += batch.size() as u64;
        let loss = self.problem.upper_loss(x, y, batch);
        self.loss_and_grads(loss, x, y)
    }

    /// `G(x, y; ζ)`, `∇_x G`, `∇_y G` from one backward pass (dfdx autodiff of the lower loss).
    pub fn lower_grad(
        &mut self,
        x: &P::X,
        y: &P::Y,
        batch: &P::LowerBatch,
    ) -> LossGrad<E, P::X, P::Y> {
        self.counts.lower_grad += 1;
        self.counts.lower_samples += batch.size() as u64;
        let loss = self.problem.lower_loss(x, y, batch);
        self.loss_and_grads(loss, x, y)
    }

    /// `G(x, y; ζ)` and `∇_y G` only (counted as a lower gradient call), from
    /// [`BilevelProblem::lower_loss_in_y`]: for SGD on y, where `∇_x G` would be thrown away.
    pub fn lower_grad_y(&mut self, x: &P::X, y: &P::Y, batch: &P::LowerBatch) -> (E, P::Y) {
        self.counts.lower_grad += 1;
        self.counts.lower_samples += batch.size() as u64;
        let loss = self.problem.lower_loss_in_y(x, y, batch);
        let value = loss.array();
        let grads = self.anchored(loss, x, y).backward();
        (value, y.gradient_from(&grads))
    }

    /// `∇²_yy G·v`, `∇²_xy G·v` (and the value of `∇_y G`) from one backward pass over
    /// `⟨∇_y G(x, y; ζ), v⟩`.
    pub fn hvp_jvp(
        &mut self,
        x: &P::X,
        y: &P::Y,
        v: &P::Y,
        batch: &P::LowerBatch,
    ) -> Result<SecondOrder<P::X, P::Y>, BilevelError> {
        self.count_pass(1, 1, batch);
        self.second_order_pass(x, y, v, batch)
    }

    /// `∇²_yy G·v` only (counted as one HVP). The pass is the same as [`Oracles::hvp_jvp`]'s.
    pub fn hvp(
        &mut self,
        x: &P::X,
        y: &P::Y,
        v: &P::Y,
        batch: &P::LowerBatch,
    ) -> Result<P::Y, BilevelError> {
        self.count_pass(1, 0, batch);
        Ok(self.second_order_pass(x, y, v, batch)?.hvp)
    }

    /// `∇²_xy G·v` only (counted as one cross product).
    pub fn jvp(
        &mut self,
        x: &P::X,
        y: &P::Y,
        v: &P::Y,
        batch: &P::LowerBatch,
    ) -> Result<P::X, BilevelError> {
        self.count_pass(0, 1, batch);
        Ok(self.second_order_pass(x, y, v, batch)?.jvp)
    }

    /// The value of the problem's written gradient `∇_y G(x, y; ζ)`, without any backward pass.
    /// Counted as a lower gradient call. Useful to check a written gradient against
    /// [`Oracles::lower_grad`], which differentiates the lower loss with dfdx.
    pub fn written_grad_y(
        &mut self,
        x: &P::X,
        y: &P::Y,
        batch: &P::LowerBatch,
    ) -> Result<P::Y, BilevelError> {
        self.counts.lower_grad += 1;
        self.counts.lower_samples += batch.size() as u64;
        let mut grad = WrittenGrad::new(y, None);
        self.problem.lower_grad_y(x, y, batch, &mut grad);
        Ok(grad.finish(y)?.0)
    }

    /// Saves the counters and the batch generator's position.
    pub fn state(&self) -> OracleState {
        OracleState {
            counts: self.counts,
            seed: self.rng.get_seed(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos(),
        }
    }

    /// Restores what [`Oracles::state`] saved.
    pub fn load_state(&mut self, state: &OracleState) {
        self.counts = state.counts;
        self.rng = SampleRng::from_seed(state.seed);
        self.rng.set_stream(state.stream);
        self.rng.set_word_pos(state.word_pos);
    }

    /// Counts one second-order pass over `batch` that the caller uses for `hvp` HVPs and `jvp`
    /// cross products.
    fn count_pass(&mut self, hvp: u64, jvp: u64, batch: &P::LowerBatch) {
        self.counts.hvp += hvp;
        self.counts.jvp += jvp;
        self.counts.lower_samples += batch.size() as u64;
    }

    fn second_order_pass(
        &mut self,
        x: &P::X,
        y: &P::Y,
        v: &P::Y,
        batch: &P::LowerBatch,
    ) -> Result<SecondOrder<P::X, P::Y>, BilevelError> {
        let mut grad = WrittenGrad::new(y, Some(v));
        self.problem.lower_grad_y(x, y, batch, &mut grad);
        let (grad_y, inner) = grad.finish(y)?;
        let inner = inner.expect("a direction was given");
        let grads = self.anchored(inner, x, y).backward();
        Ok(SecondOrder {
            grad_y,
            hvp: y.gradient_from(&grads),
            jvp: x.gradient_from(&grads),
        })
    }

    fn loss_and_grads(&self, loss: Taped<Rank0, E>, x: &P::X, y: &P::Y) -> LossGrad<E, P::X, P::Y> {
        let value = loss.array();
        let grads = self.anchored(loss, x, y).backward();
        LossGrad {
            value,
            dx: x.gradient_from(&grads),
            dy: y.gradient_from(&grads),
        }
    }

    /// Merges a tape holding gradient buffers for every tensor of x and y into `scalar`, so each of
    /// them gets a gradient (zero if the computation does not touch it) and every other buffer is
    /// freed after the backward pass.
    fn anchored(&self, scalar: Taped<Rank0, E>, x: &P::X, y: &P::Y) -> Taped<Rank0, E> {
        let grads = (x.clone(), y.clone()).alloc_grads();
        let anchor: Tensor<Rank0, E, Cpu, _> = self.dev.zeros().traced(grads);
        let (_, anchor_tape) = anchor.split_tape();
        let (s, tape) = scalar.split_tape();
        s.put_tape(tape.merge(anchor_tape))
    }
}
