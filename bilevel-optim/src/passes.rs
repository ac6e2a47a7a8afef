//! The single-threaded, uncounted passes behind every oracle: autodiff of a loss, and the
//! written gradient with its second-order products. [`crate::oracles`] counts and shards them;
//! [`crate::check`] calls them directly, so a check never changes counts or batches.

use dfdx::nn::ZeroGrads;
use dfdx::prelude::{
    AsArray, Backward, Cpu, Device, Merge, PutTape, Rank0, SplitTape, Tensor, Trace, ZerosTensor,
};

use crate::error::BilevelError;
use crate::params::Params;
use crate::problem::{BilevelProblem, Taped};
use crate::real::Real;
use crate::written_grad::WrittenGrad;

/// The value of a loss and its two partial gradients from one backward pass.
#[derive(Debug, Clone)]
pub struct LossGrad<E, X, Y> {
    /// The loss.
    pub value: E,
    /// Its gradient in x.
    pub dx: X,
    /// Its gradient in y.
    pub dy: Y,
}

/// The result of one second-order pass at (x, y) in direction v.
#[derive(Debug, Clone)]
pub struct SecondOrder<X, Y> {
    /// `∇_y G(x, y; ζ)` as the problem writes it, a by-product of the pass: for checks and
    /// reports only. No method steps y with it; every y step uses dfdx's autodiff of the lower
    /// loss ([`crate::oracles::Oracles::lower_grad_in_y`]), see the rule in [`crate::problem`].
    pub written_grad_y: Y,
    /// `∇²_yy G(x, y; ζ)·v`.
    pub hvp: Y,
    /// `∇²_xy G(x, y; ζ)·v`.
    pub jvp: X,
}

/// `F`, `∇_x F`, `∇_y F` by autodiff on one thread, uncounted (the passes of the
/// [`crate::check`] diagnostics use these directly, so checking never changes counts or batches).
pub(crate) fn upper_pass<E: Real, P: BilevelProblem<E>>(
    problem: &P,
    x: &P::X,
    y: &P::Y,
    batch: &P::UpperBatch,
) -> LossGrad<E, P::X, P::Y>
where
    Cpu: Device<E>,
{
    loss_and_grads(problem.upper_loss(x, y, batch), x, y)
}

/// `G`, `∇_x G`, `∇_y G` by autodiff on one thread, uncounted.
pub(crate) fn lower_grad_pass<E: Real, P: BilevelProblem<E>>(
    problem: &P,
    x: &P::X,
    y: &P::Y,
    batch: &P::LowerBatch,
) -> LossGrad<E, P::X, P::Y>
where
    Cpu: Device<E>,
{
    loss_and_grads(problem.lower_loss(x, y, batch), x, y)
}

/// The written `∇_y G`, then `H·v` and `J·v` by one backward over `⟨∇_y G, v⟩`, on one thread,
/// uncounted.
pub(crate) fn written_second_order_pass<E: Real, P: BilevelProblem<E>>(
    problem: &P,
    x: &P::X,
    y: &P::Y,
    v: &P::Y,
    batch: &P::LowerBatch,
) -> Result<SecondOrder<P::X, P::Y>, BilevelError>
where
    Cpu: Device<E>,
{
    let mut grad = WrittenGrad::new(y, Some(v));
    problem.write_lower_grad_y(x, y, batch, &mut grad);
    let (written_grad_y, inner) = grad.finish(y)?;
    let inner = inner.expect("a direction was given");
    let grads = anchored(inner, x, y).backward();
    Ok(SecondOrder {
        written_grad_y,
        hvp: y.gradient_from(&grads),
        jvp: x.gradient_from(&grads),
    })
}

/// The value of `loss` and its gradients in x and y from one backward pass.
pub(crate) fn loss_and_grads<E: Real, X: Params<E>, Y: Params<E>>(
    loss: Taped<Rank0, E>,
    x: &X,
    y: &Y,
) -> LossGrad<E, X, Y>
where
    Cpu: Device<E>,
{
    let value = loss.array();
    let grads = anchored(loss, x, y).backward();
    LossGrad {
        value,
        dx: x.gradient_from(&grads),
        dy: y.gradient_from(&grads),
    }
}

/// Merges a tape holding gradient buffers for every tensor of x and y into `scalar`, so each of
/// them gets a gradient (zero if the computation does not touch it) and every other buffer is
/// freed after the backward pass.
pub(crate) fn anchored<E: Real, X: Params<E>, Y: Params<E>>(
    scalar: Taped<Rank0, E>,
    x: &X,
    y: &Y,
) -> Taped<Rank0, E>
where
    Cpu: Device<E>,
{
    let grads = (x.clone(), y.clone()).alloc_grads();
    let anchor: Tensor<Rank0, E, Cpu, _> = crate::real::device().zeros().traced(grads);
    let (_, anchor_tape) = anchor.split_tape();
    let (s, tape) = scalar.split_tape();
    s.put_tape(tape.merge(anchor_tape))
}
