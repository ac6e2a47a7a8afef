//! The single-threaded, uncounted passes behind every oracle: autodiff of a loss, and the
//! written gradient with its second-order products. [`crate::oracles`] counts and shards them;
//! [`crate::check`] calls them directly, so a check never changes counts or batches.

use dfdx::nn::tensor_collection::ViewTensorRef;
use dfdx::nn::ZeroGrads;
use dfdx::prelude::{
    AsArray, Backward, Cpu, Device, Gradients, Merge, PutTape, Rank0, Shape, SplitTape, Tensor,
    Trace, ZerosTensor,
};

use crate::error::BilevelError;
use crate::params::{EachTensor, Marks, Params};
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
    let touched = problem.upper_touches(y, batch);
    loss_and_grads(problem.upper_loss(x, y, batch), x, y, touched.as_deref())
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
    let touched = problem.lower_touches(y, batch);
    loss_and_grads(problem.lower_loss(x, y, batch), x, y, touched.as_deref())
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
    // A tensor whose gradient is declared zero for this batch is one G does not depend on here,
    // so its rows and columns of ∇²_yy G vanish: its part of H·v is zero, and the backward pass
    // needs no buffer for it.
    let touched: Vec<bool> = grad.declared_zero().iter().map(|zero| !zero).collect();
    let (written_grad_y, inner) = grad.finish(y)?;
    let inner = inner.expect("a direction was given");
    let grads = anchored_on(inner, x, y, Some(&touched)).backward();
    Ok(SecondOrder {
        written_grad_y,
        hvp: y.gradient_on(&grads, Some(&touched)),
        jvp: x.gradient_from(&grads),
    })
}

/// The value of `loss` and its gradients in x and y from one backward pass, y's only on the
/// tensors `touched` marks (shared zeros elsewhere; `None`: all).
pub(crate) fn loss_and_grads<E: Real, X: Params<E>, Y: Params<E>>(
    loss: Taped<Rank0, E>,
    x: &X,
    y: &Y,
    touched: Option<&[bool]>,
) -> LossGrad<E, X, Y>
where
    Cpu: Device<E>,
{
    let value = loss.array();
    let grads = anchored_on(loss, x, y, touched).backward();
    LossGrad {
        value,
        dx: x.gradient_from(&grads),
        dy: y.gradient_on(&grads, touched),
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
    put_anchor(scalar, grads)
}

/// [`anchored`] with gradient buffers for x and for the tensors of y that `touched` marks (in
/// visiting order; `None`: all). The others get none, so a y of many parts of which a batch
/// touches a few costs a backward pass the size of those few. The buffers of the pass's
/// intermediate values are freed with the returned gradients.
pub(crate) fn anchored_on<E: Real, X: Params<E>, Y: Params<E>>(
    scalar: Taped<Rank0, E>,
    x: &X,
    y: &Y,
    touched: Option<&[bool]>,
) -> Taped<Rank0, E>
where
    Cpu: Device<E>,
{
    let Some(touched) = touched else {
        return anchored(scalar, x, y);
    };
    let mut grads = Gradients::leaky();
    x.walk(&mut AllocateWhere {
        grads: &mut grads,
        touched: Marks::new(None),
    });
    y.walk(&mut AllocateWhere {
        grads: &mut grads,
        touched: Marks::new(Some(touched)),
    });
    put_anchor(scalar, grads)
}

/// `scalar` with `grads` riding on its tape, so the backward pass fills them.
fn put_anchor<E: Real>(scalar: Taped<Rank0, E>, grads: Gradients<E, Cpu>) -> Taped<Rank0, E>
where
    Cpu: Device<E>,
{
    let anchor: Tensor<Rank0, E, Cpu, _> = crate::real::device().zeros().traced(grads);
    let (_, anchor_tape) = anchor.split_tape();
    let (s, tape) = scalar.split_tape();
    s.put_tape(tape.merge(anchor_tape))
}

/// Allocates a zero gradient for each trainable tensor that `touched` marks (all when `None`).
struct AllocateWhere<'a, E: Real>
where
    Cpu: Device<E>,
{
    grads: &'a mut Gradients<E, Cpu>,
    touched: Marks<'a>,
}
impl<E: Real> EachTensor<E> for AllocateWhere<'_, E>
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorRef;
    fn each<S: Shape>(&mut self, t: &Tensor<S, E, Cpu>) {
        if self.touched.next_marked() {
            self.grads.try_alloc_for(t).expect("cpu allocation");
        }
    }
}
