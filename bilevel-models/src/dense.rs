//! Dense layers: dfdx's own `Linear` module, given a written backward pass (activations are in
//! [`crate::activations`]).
//!
//! - Linear `o = a Wᵀ + b`: `∂W = δᵀa`, `∂b = Σ_rows δ`, `∂a = δ W`.

use bilevel_optim::problem::Tp;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::Linear;
use dfdx::prelude::*;

use crate::layer::WrittenLayer;
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
        let saved = hold(&input);
        let rows = input.shape().0;
        let out = input.matmul(self.weight.retaped::<Tp<E>>().permute::<Rank2<I, O>, _>())
            + self
                .bias
                .retaped::<Tp<E>>()
                .broadcast_like(&(rows, Const::<O>));
        (out, saved)
    }

    fn backward(
        &self,
        input: Self::Saved,
        grad_output: Self::Output,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Activations<E, I>> {
        let delta = hold(&grad_output);
        grads.add(
            &self.weight,
            taped(&delta)
                .permute::<(Const<O>, usize), _>()
                .matmul(taped(&input)),
        );
        grads.add(&self.bias, taped(&delta).sum::<Rank1<O>, _>());
        if want_input {
            Some(grad_output.matmul(self.weight.retaped::<Tp<E>>()))
        } else {
            grads.keep_tape(grad_output);
            None
        }
    }
}
