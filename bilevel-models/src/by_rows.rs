//! Layers that act on each row alike (the dense layers, layer norm) on a (batch, steps,
//! features) tensor, as the (batch·steps, features) tensor of its rows, and on a packed
//! [`Sequence`], step by step: the inputs of a transformer and of a recurrent encoder.

use bilevel_optim::problem::Taped;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::{LayerNorm1D, Linear, UnbiasedLinear};
use dfdx::prelude::*;

use crate::layer::WrittenLayer;
use crate::sequence::{backward_each_step, each_step, Activations, Sequence};

/// A (batch, steps, features) tensor.
pub type Steps<E, const N: usize> = Taped<(usize, usize, Const<N>), E>;

/// What a row layer saved on the rows of a (batch, steps, ·) tensor, and that tensor's size.
pub struct ByRows<T> {
    saved: T,
    batch: usize,
    steps: usize,
}

/// Runs `layer` on the rows of `input`.
pub fn forward_by_rows<E: Real, L, const I: usize, const O: usize>(
    layer: &L,
    input: Steps<E, I>,
) -> (Steps<E, O>, ByRows<L::Saved>)
where
    Cpu: Device<E>,
    L: WrittenLayer<E, Activations<E, I>, Output = Activations<E, O>>,
{
    let (batch, steps, _) = *input.shape();
    let (out, saved) = layer.forward(input.reshape_like(&(batch * steps, Const::<I>)));
    let saved = ByRows {
        saved,
        batch,
        steps,
    };
    (out.reshape_like(&(batch, steps, Const::<O>)), saved)
}

/// The backward of [`forward_by_rows`].
pub fn backward_by_rows<E: Real, L, const I: usize, const O: usize>(
    layer: &L,
    saved: ByRows<L::Saved>,
    grad_output: Steps<E, O>,
    grads: &mut WrittenGrad<E>,
    want_input: bool,
) -> Option<Steps<E, I>>
where
    Cpu: Device<E>,
    L: WrittenLayer<E, Activations<E, I>, Output = Activations<E, O>>,
{
    let (batch, steps) = (saved.batch, saved.steps);
    let rows = grad_output.reshape_like(&(batch * steps, Const::<O>));
    layer
        .backward(saved.saved, rows, grads, want_input)
        .map(|g| g.reshape_like(&(batch, steps, Const::<I>)))
}

/// Implements [`WrittenLayer`] on (batch, steps, I) tensors and on packed sequences for modules
/// that have it on (rows, I) batches.
macro_rules! by_rows {
    ($([$($generics:tt)*] $module:ty: $i:ident -> $o:ident),+ $(,)?) => {$(
        impl<$($generics)*, E: Real> WrittenLayer<E, Steps<E, $i>> for $module
        where
            Cpu: Device<E>,
        {
            type Output = Steps<E, $o>;
            type Saved = ByRows<<Self as WrittenLayer<E, Activations<E, $i>>>::Saved>;

            fn forward(&self, input: Steps<E, $i>) -> (Steps<E, $o>, Self::Saved) {
                forward_by_rows(self, input)
            }

            fn backward(
                &self,
                saved: Self::Saved,
                grad_output: Steps<E, $o>,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<Steps<E, $i>> {
                backward_by_rows(self, saved, grad_output, grads, want_input)
            }
        }

        impl<$($generics)*, E: Real> WrittenLayer<E, Sequence<E, $i>> for $module
        where
            Cpu: Device<E>,
        {
            type Output = Sequence<E, $o>;
            type Saved = Vec<<Self as WrittenLayer<E, Activations<E, $i>>>::Saved>;

            fn forward(&self, input: Sequence<E, $i>) -> (Sequence<E, $o>, Self::Saved) {
                each_step(input, |step| {
                    WrittenLayer::<E, Activations<E, $i>>::forward(self, step)
                })
            }

            fn backward(
                &self,
                saved: Self::Saved,
                grad_output: Sequence<E, $o>,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<Sequence<E, $i>> {
                backward_each_step(saved, grad_output, grads, want_input, |s, d, g, want| {
                    WrittenLayer::<E, Activations<E, $i>>::backward(self, s, d, g, want)
                })
            }
        }
    )+};
}

by_rows!(
    [const I: usize, const O: usize] Linear<I, O, E, Cpu>: I -> O,
    [const I: usize, const O: usize] UnbiasedLinear<I, O, E, Cpu>: I -> O,
    [const M: usize] LayerNorm1D<M, E, Cpu>: M -> M,
);
