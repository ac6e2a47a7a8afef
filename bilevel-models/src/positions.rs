//! The sinusoidal positional encoding of "Attention is all you need" (dfdx 0.13 has none): a
//! constant table added to every sequence, so attention can tell the steps apart.
//! `pe[t, 2i] = sin(t / 10000^(2i/N))`, `pe[t, 2i+1] = cos(t / 10000^(2i/N))`. Adding a constant
//! has the identity as its derivative: the written backward passes the gradient through.

use bilevel_optim::real::{device, Real};
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::ZeroSizedModule;
use dfdx::prelude::*;

use crate::by_rows::Steps;
use crate::layer::{when_wanted, WrittenLayer};
use crate::padded::on_padded;
use crate::tape::Held;

/// Adds the sinusoidal position table to a (batch, steps, N) tensor.
#[derive(Debug, Default, Clone, Copy)]
pub struct SinusoidalPositions;

impl ZeroSizedModule for SinusoidalPositions {}

/// The (steps, N) table, computed in f64 and rounded once.
pub fn position_table<E: Real, const N: usize>(steps: usize) -> Held<(usize, Const<N>), E>
where
    Cpu: Device<E>,
{
    let values = (0..steps)
        .flat_map(|t| {
            (0..N).map(move |k| {
                let angle = t as f64 / 10_000f64.powf((k - k % 2) as f64 / N as f64);
                E::of(if k % 2 == 0 { angle.sin() } else { angle.cos() })
            })
        })
        .collect();
    device().tensor_from_vec(values, (steps, Const::<N>))
}

impl<const N: usize, E: Real> WrittenLayer<E, Steps<E, N>> for SinusoidalPositions
where
    Cpu: Device<E>,
{
    type Output = Steps<E, N>;
    type Saved = ();

    fn forward(&self, input: Steps<E, N>) -> (Steps<E, N>, ()) {
        let shape = *input.shape();
        let table = position_table::<E, N>(shape.1).broadcast_like::<_, Axis<0>>(&shape);
        (input + table, ())
    }

    fn backward(
        &self,
        _: (),
        grad_output: Steps<E, N>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Steps<E, N>> {
        when_wanted(grad_output, grads, want_input)
    }
}

on_padded!([const N: usize] SinusoidalPositions: N -> N);
