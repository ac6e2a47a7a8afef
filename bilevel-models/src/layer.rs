//! The one abstraction of this crate: a layer whose backward pass is itself a taped computation.
//!
//! dfdx differentiates once. To get exact Hessian-vector products, a model's gradient must be a
//! forward computation in taped ops, so that one ordinary backward over `⟨∇_y g, v⟩` yields
//! `∇²_yy g·v` and `∇²_xy g·v`. Each layer therefore provides both passes:
//! - [`WrittenLayer::forward`] computes the output with dfdx's taped ops (so dfdx's own autodiff
//!   also works through it) and returns tape-free handles to the values the backward pass reads;
//! - [`WrittenLayer::backward`] maps the (taped) gradient of the output to the gradient of the
//!   input, adding the gradients of the layer's own tensors to a [`WrittenGrad`].
//!
//! Layers compose like dfdx's tuples: `(A, B, C)` runs `A`, `B`, `C` forward and `C`, `B`, `A`
//! backward, so a composed model yields `∇_y g` with no calculus written by its user.
//!
//! # Tape discipline
//! A taped value may be consumed once. Handles kept for reuse are taken with
//! `retaped::<NoneTape>()` (same tensor id, no tape) and brought back with `retaped::<Tp<E>>()`;
//! gradients accumulate by id, so the graph stays exact. The value that carries the history (the
//! owned tape) must end up either in the returned input gradient or in
//! [`WrittenGrad::keep_tape`]: a dropped tape silently removes operations from the HVP.

use bilevel_optim::problem::Taped;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::prelude::{Cpu, Device, Shape};

/// A layer with a forward pass and a backward pass both written in taped dfdx ops, for inputs of
/// type `Input` (a taped batch or a taped sequence; like dfdx's `Module<Input>`).
pub trait WrittenLayer<E: Real, Input>
where
    Cpu: Device<E>,
{
    /// What the layer produces. Its gradient has the same type.
    type Output;
    /// Tape-free handles to the forward values the backward pass needs.
    type Saved;

    /// Runs the layer on a taped input.
    fn forward(&self, input: Input) -> (Self::Output, Self::Saved);

    /// Given `∂g/∂output` (taped), adds `∂g/∂θ` for the layer's tensors θ to `grads` and returns
    /// `∂g/∂input`. With `want_input = false` (the first layer of a model, whose input is data)
    /// the input gradient is not computed: the layer keeps its tape in `grads` and returns `None`.
    fn backward(
        &self,
        saved: Self::Saved,
        grad_output: Self::Output,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Input>;
}

/// `Some(grad)` when the caller wants the input gradient; otherwise `grad`'s tape is kept in
/// `grads` (no operation is lost from H·v) and the answer is `None`. A backward ends with it, or
/// starts with `let grad_output = when_wanted(grad_output, grads, want_input)?;` when the input
/// gradient is all that is left to compute.
pub fn when_wanted<S: Shape, E: Real>(
    grad: Taped<S, E>,
    grads: &mut WrittenGrad<E>,
    want_input: bool,
) -> Option<Taped<S, E>>
where
    Cpu: Device<E>,
{
    if want_input {
        Some(grad)
    } else {
        grads.keep_tape(grad);
        None
    }
}

/// Implements [`WrittenLayer`] for a tuple: forward left to right, backward right to left.
/// Arguments: the first layer; every later layer with its predecessor (whose output it takes)
/// and tuple index; the last layer; the later layers again in reverse order for the backward.
macro_rules! tuple_layer {
    (first $A0:ident $s0:ident;
     then $([$A:ident after $P:ident, $s:ident, $i:tt])+;
     last $L:ident;
     back $([$bi:tt $bs:ident])+) => {
        impl<E: Real, Input, $A0: WrittenLayer<E, Input>, $($A: WrittenLayer<E, $P::Output>),+>
            WrittenLayer<E, Input> for ($A0, $($A,)+)
        where
            Cpu: Device<E>,
        {
            type Output = $L::Output;
            type Saved = ($A0::Saved, $($A::Saved,)+);

            fn forward(&self, input: Input) -> (Self::Output, Self::Saved) {
                let (out, $s0) = self.0.forward(input);
                $(let (out, $s) = self.$i.forward(out);)+
                (out, ($s0, $($s,)+))
            }

            fn backward(
                &self,
                saved: Self::Saved,
                grad_output: Self::Output,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<Input> {
                let ($s0, $($s,)+) = saved;
                let grad = grad_output;
                $(let grad = self.$bi
                    .backward($bs, grad, grads, true)
                    .expect("an inner layer returns its input gradient when asked");)+
                self.0.backward($s0, grad, grads, want_input)
            }
        }
    };
}

tuple_layer!(first A s0; then [B after A, s1, 1]; last B; back [1 s1]);
tuple_layer!(first A s0; then [B after A, s1, 1] [C after B, s2, 2]; last C; back [2 s2] [1 s1]);
tuple_layer!(
    first A s0;
    then [B after A, s1, 1] [C after B, s2, 2] [D after C, s3, 3];
    last D;
    back [3 s3] [2 s2] [1 s1]
);
tuple_layer!(
    first A s0;
    then [B after A, s1, 1] [C after B, s2, 2] [D after C, s3, 3] [F after D, s4, 4];
    last F;
    back [4 s4] [3 s3] [2 s2] [1 s1]
);
tuple_layer!(
    first A s0;
    then [B after A, s1, 1] [C after B, s2, 2] [D after C, s3, 3] [F after D, s4, 4]
        [G after F, s5, 5];
    last G;
    back [5 s5] [4 s4] [3 s3] [2 s2] [1 s1]
);
