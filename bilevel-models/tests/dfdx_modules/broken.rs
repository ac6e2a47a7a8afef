//! Deliberately broken variants of any written layer, which the checks must catch: the gradient
//! stays right while H·v loses a dependence on y.
//! - [`Detached`]: the backward reads copies of (some of) its saved forward values ([`Detach`]
//!   says which), values with no history;
//! - [`DroppedTape`]: the backward takes the output's gradient from a tape-free handle and drops
//!   the tape that carried it.

use bilevel_models::layer::WrittenLayer;
use bilevel_optim::problem::Taped;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::tensor_collection::{ModuleVisitor, TensorCollection};
use dfdx::prelude::*;

/// The saved values a [`Detached`] layer's backward reads through copies.
pub trait Detach {
    fn detach(self) -> Self;
}

/// The same values under a new tensor id: no gradient reaches the original.
pub fn copy_of<S: Shape>(t: &Tensor<S, f64, Cpu>) -> Tensor<S, f64, Cpu> {
    Cpu::default().tensor_from_vec(t.as_vec(), *t.shape())
}

/// A layer that saves one tensor reads a copy of it.
impl<S: Shape> Detach for Tensor<S, f64, Cpu> {
    fn detach(self) -> Self {
        copy_of(&self)
    }
}

/// `L` whose backward reads its saved values detached.
#[derive(Debug, Default, Clone, Copy)]
pub struct Detached<L>(pub L);

/// `L` whose backward drops the tape of the gradient it is given.
#[derive(Debug, Default, Clone, Copy)]
pub struct DroppedTape<L>(pub L);

/// Implements `TensorCollection` for a wrapper of one layer: the layer's tensors are its own.
macro_rules! wraps {
    ($wrapper:ident) => {
        impl<E: Dtype, D: Device<E>, L: TensorCollection<E, D>> TensorCollection<E, D>
            for $wrapper<L>
        {
            type To<E2: Dtype, D2: Device<E2>> = $wrapper<L::To<E2, D2>>;
            fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
                visitor: &mut V,
            ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
                visitor.visit_fields(Self::module("0", |s| &s.0, |s| &mut s.0), $wrapper)
            }
        }
    };
}

wraps!(Detached);
wraps!(DroppedTape);

impl<I, L> WrittenLayer<f64, I> for Detached<L>
where
    L: WrittenLayer<f64, I>,
    L::Saved: Detach,
{
    type Output = L::Output;
    type Saved = L::Saved;
    fn forward(&self, input: I) -> (L::Output, L::Saved) {
        self.0.forward(input)
    }
    fn backward(
        &self,
        saved: L::Saved,
        grad_output: L::Output,
        grads: &mut WrittenGrad<f64>,
        want_input: bool,
    ) -> Option<I> {
        self.0
            .backward(saved.detach(), grad_output, grads, want_input)
    }
}

impl<I, S: Shape, L> WrittenLayer<f64, I> for DroppedTape<L>
where
    L: WrittenLayer<f64, I, Output = Taped<S, f64>>,
{
    type Output = Taped<S, f64>;
    type Saved = L::Saved;
    fn forward(&self, input: I) -> (Taped<S, f64>, L::Saved) {
        self.0.forward(input)
    }
    fn backward(
        &self,
        saved: L::Saved,
        grad_output: Taped<S, f64>,
        grads: &mut WrittenGrad<f64>,
        want_input: bool,
    ) -> Option<I> {
        let delta = grad_output.retaped::<NoneTape>();
        drop(grad_output); // the bug
        self.0.backward(saved, delta.retaped(), grads, want_input)
    }
}
