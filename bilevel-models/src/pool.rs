//! Max-pooling over the valid time steps of a padded sequence batch.
//!
//! Every state of a tanh RNN or an LSTM lies in (−1, 1), so subtracting 3 at padded steps
//! excludes them from the maximum exactly, without a large constant that would cost precision.
//! The written backward routes `δ` to the steps that attain the maximum, with the same rule as
//! dfdx's own `max` (every position equal to the maximum receives the gradient).

use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::ZeroSizedModule;
use dfdx::prelude::*;

use crate::layer::WrittenLayer;
use std::rc::Rc;

use crate::sequence::{Activations, Sequence, SequenceMask};
use crate::tape::{hold, taped, Held};

/// Element-wise maximum over the valid steps of a sequence of values in (−1, 1).
#[derive(Debug, Default, Clone, Copy)]
pub struct MaxPoolTime;

impl ZeroSizedModule for MaxPoolTime {}

/// How far below any valid state a padded step is pushed.
const PADDING_OFFSET: f64 = 3.0;

/// The pooled value and the (offset) step values it was taken from.
pub struct MaxPoolSaved<const N: usize, E: Real>
where
    Cpu: Device<E>,
{
    steps: Vec<Held<(usize, Const<N>), E>>,
    pooled: Held<(usize, Const<N>), E>,
    mask: Rc<SequenceMask<E>>,
}

impl<const N: usize, E: Real> WrittenLayer<E, Sequence<E, N>> for MaxPoolTime
where
    Cpu: Device<E>,
{
    type Output = Activations<E, N>;
    type Saved = MaxPoolSaved<N, E>;

    fn forward(&self, input: Sequence<E, N>) -> (Activations<E, N>, Self::Saved) {
        let rows = input.mask.batch_size();
        let offset: Vec<Activations<E, N>> = input
            .steps
            .into_iter()
            .enumerate()
            .map(|(t, h)| {
                let shift = (input.mask.valid(t).clone() - E::one()) * E::of(PADDING_OFFSET);
                h + shift.broadcast_like(&(rows, Const::<N>))
            })
            .collect();
        let steps = offset.iter().map(hold).collect();
        let pooled = offset.stack().max::<(usize, Const<N>), Axis<0>>();
        let saved = MaxPoolSaved {
            steps,
            pooled: hold(&pooled),
            mask: input.mask,
        };
        (pooled, saved)
    }

    fn backward(
        &self,
        saved: Self::Saved,
        grad_output: Activations<E, N>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Sequence<E, N>> {
        if !want_input {
            grads.keep_tape(grad_output);
            return None;
        }
        let shape = *grad_output.shape();
        let pooled = saved.pooled.as_vec();
        let delta = hold(&grad_output);
        let dev = Cpu::default();
        let steps = saved
            .steps
            .iter()
            .map(|step| {
                let attains: Vec<E> = step
                    .as_vec()
                    .iter()
                    .zip(&pooled)
                    .map(|(v, m)| if v == m { E::one() } else { E::zero() })
                    .collect();
                taped(&delta) * dev.tensor_from_vec(attains, shape)
            })
            .collect();
        grads.keep_tape(grad_output);
        Some(Sequence {
            steps,
            mask: saved.mask,
        })
    }
}
