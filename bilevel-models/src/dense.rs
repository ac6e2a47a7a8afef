//! Dense layers: dfdx's own `Linear` and `UnbiasedLinear` modules, given written backward passes
//! (activations are in [`crate::activations`]; on (batch, steps, features) tensors and packed
//! sequences in [`crate::by_rows`]).
//!
//! `o = a Wᵀ + b`: `∂W = δᵀa`, `∂b = Σ_rows δ`, `∂a = δ W`.

use bilevel_optim::problem::Tp;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::{Linear, UnbiasedLinear};
use dfdx::prelude::*;

use crate::layer::{when_wanted, WrittenLayer};
use crate::matmul::{matmul, matmul_plus_row};
use crate::sequence::Activations;
use crate::tape::{hold, taped, Held};

impl<const I: usize, const O: usize, E: Real> WrittenLayer<E, Activations<E, I>>
    for Linear<I, O, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Activations<E, O>;
    type Saved = Held<(usize, Const<I>), E>;

    fn forward(&self, input: Activations<E, I>) -> (Self::Output, Self::Saved) {
        dense_forward(&self.weight, Some(&self.bias), input)
    }

    fn backward(
        &self,
        input: Self::Saved,
        grad_output: Self::Output,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Activations<E, I>> {
        dense_backward(
            &self.weight,
            Some(&self.bias),
            input,
            grad_output,
            grads,
            want_input,
        )
    }
}

impl<const I: usize, const O: usize, E: Real> WrittenLayer<E, Activations<E, I>>
    for UnbiasedLinear<I, O, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Activations<E, O>;
    type Saved = Held<(usize, Const<I>), E>;

    fn forward(&self, input: Activations<E, I>) -> (Self::Output, Self::Saved) {
        dense_forward(&self.weight, None, input)
    }

    fn backward(
        &self,
        input: Self::Saved,
        grad_output: Self::Output,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Activations<E, I>> {
        dense_backward(&self.weight, None, input, grad_output, grads, want_input)
    }
}

/// `a Wᵀ (+ b)`, as dfdx's `Linear` computes it, and the input for the backward.
fn dense_forward<const I: usize, const O: usize, E: Real>(
    weight: &Tensor<Rank2<O, I>, E, Cpu>,
    bias: Option<&Tensor<Rank1<O>, E, Cpu>>,
    input: Activations<E, I>,
) -> (Activations<E, O>, Held<(usize, Const<I>), E>)
where
    Cpu: Device<E>,
{
    let saved = hold(&input);
    let transposed = weight.retaped::<Tp<E>>().permute::<Rank2<I, O>, _>();
    let out = match bias {
        Some(b) => matmul_plus_row(input, transposed, b.retaped::<Tp<E>>()),
        None => matmul(input, transposed),
    };
    (out, saved)
}

/// `∂W = δᵀa`, `∂b = Σ_rows δ` into `grads`; `∂a = δ W` when wanted.
fn dense_backward<const I: usize, const O: usize, E: Real>(
    weight: &Tensor<Rank2<O, I>, E, Cpu>,
    bias: Option<&Tensor<Rank1<O>, E, Cpu>>,
    input: Held<(usize, Const<I>), E>,
    grad_output: Activations<E, O>,
    grads: &mut WrittenGrad<E>,
    want_input: bool,
) -> Option<Activations<E, I>>
where
    Cpu: Device<E>,
{
    let delta = hold(&grad_output);
    grads.add(
        weight,
        matmul(
            taped(&delta).permute::<(Const<O>, usize), _>(),
            taped(&input),
        ),
    );
    if let Some(b) = bias {
        grads.add(b, taped(&delta).sum::<Rank1<O>, _>());
    }
    let grad_output = when_wanted(grad_output, grads, want_input)?;
    Some(matmul(grad_output, weight.retaped::<Tp<E>>()))
}
