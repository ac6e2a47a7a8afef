//! An Elman RNN layer, `h_t = tanh(x_t W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh)`, h_0 = 0, with its
//! backward pass through time written in taped ops, over packed sequences (step t continues the
//! first rows of step t − 1). Stack two with a tuple for the 2-layer RNN.
//!
//! Backward, from `δ_t = ∂g/∂h_t` given by the layer above:
//! `dh_t = δ_t + da_{t+1} W_hh`, `da_t = dh_t ⊙ (1 − h_t²)`, `∂W_ih = Σ da_tᵀ x_t`,
//! `∂W_hh = Σ da_tᵀ h_{t−1}`, `∂b = Σ da_t`, `∂x_t = da_t W_ih`.

use std::sync::Arc;

use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::tensor_collection::{ModuleVisitor, TensorCollection};
use dfdx::prelude::*;

use crate::elementwise::{tanh, tanh_slope};
use crate::layer::WrittenLayer;
use crate::recurrent::{extend_rows, first_rows, AffineGrads, RecurrentAffine};
use crate::sequence::Sequence;
use crate::tape::{hold, taped, Held};

/// One Elman RNN layer from `I` to `H` features.
#[derive(Debug, Clone)]
pub struct ElmanLayer<const I: usize, const H: usize, E: Dtype, D: Storage<E>> {
    /// The pre-activation `x W_ihᵀ + b_ih + h W_hhᵀ + b_hh`.
    pub affine: RecurrentAffine<I, H, E, D>,
}

impl<const I: usize, const H: usize, E, D: Device<E>> TensorCollection<E, D>
    for ElmanLayer<I, H, E, D>
where
    E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
{
    type To<E2: Dtype, D2: Device<E2>> = ElmanLayer<I, H, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            Self::module("affine", |s| &s.affine, |s| &mut s.affine),
            |affine| ElmanLayer { affine },
        )
    }
}

/// The forward values the backward pass through time reads.
pub struct ElmanSaved<const I: usize, const H: usize, E: Real>
where
    Cpu: Device<E>,
{
    inputs: Vec<Held<(usize, Const<I>), E>>,
    states: Vec<Held<(usize, Const<H>), E>>,
}

impl<const I: usize, const H: usize, E: Real> WrittenLayer<E, Sequence<E, I>>
    for ElmanLayer<I, H, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Sequence<E, H>;
    type Saved = ElmanSaved<I, H, E>;

    fn forward(&self, input: Sequence<E, I>) -> (Sequence<E, H>, Self::Saved) {
        let n = input.steps.len();
        let mut saved = ElmanSaved {
            inputs: Vec::with_capacity(n),
            states: Vec::with_capacity(n),
        };
        let mut steps = Vec::with_capacity(n);
        for x in input.steps {
            saved.inputs.push(hold(&x));
            let rows = x.shape().0;
            let previous = saved.states.last().map(|h| first_rows(h, rows));
            let h = tanh(self.affine.forward(x, previous));
            saved.states.push(hold(&h));
            steps.push(h);
        }
        (
            Sequence {
                steps,
                mask: input.mask,
            },
            saved,
        )
    }

    fn backward(
        &self,
        saved: Self::Saved,
        grad_output: Sequence<E, H>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Sequence<E, I>> {
        assert_eq!(
            grad_output.steps.len(),
            saved.states.len(),
            "one gradient per step"
        );
        let mask = Arc::clone(&grad_output.mask);
        let mut sums = AffineGrads::<I, H, E>::default();
        let mut input_grads = Vec::with_capacity(if want_input { saved.states.len() } else { 0 });
        let mut from_next = None;
        for (t, delta) in grad_output.steps.into_iter().enumerate().rev() {
            let dh = match from_next.take() {
                None => delta,
                Some(next) => delta + extend_rows(next, mask.active(t)),
            };
            let da = dh * tanh_slope(taped(&saved.states[t]));
            let da_held = hold(&da);
            let previous = t.checked_sub(1).map(|p| &saved.states[p]);
            sums.push(&da_held, &saved.inputs[t], previous);
            if want_input {
                input_grads.push(self.affine.input_grad(&da_held));
            }
            if t > 0 {
                from_next = Some(self.affine.hidden_grad(&da_held));
            }
            grads.keep_tape(da);
        }
        sums.write(&self.affine, grads);
        want_input.then(|| {
            input_grads.reverse();
            Sequence {
                steps: input_grads,
                mask,
            }
        })
    }
}
