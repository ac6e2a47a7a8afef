//! Padded batches of sequences: the (batch, steps, features) tensor a transformer reads, with
//! the lengths that say which steps are real ([`Padded`]), and [`PadSequence`], the layer that
//! turns a packed [`Sequence`] (the text pipeline's batches) into one.
//!
//! Padding is linear and so is its transpose: the forward scatters the packed rows into place
//! (zeros past each length), the written backward gathers them back out, and each one's tape
//! derivative is the other, exact to any order. Layers that act on each step alike (dense
//! layers, layer norm, the activations that are finite at every value) run on a `Padded` as on
//! its tensor and compute something on the padding too; attention masks the padded keys and
//! [`crate::pool::MeanPoolSteps`] averages only the real steps, so no value of the padding
//! reaches the output and its gradient there is zero.

use std::sync::Arc;

use bilevel_optim::problem::Tp;
use bilevel_optim::real::{device, Real};
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::{LayerNorm1D, Linear, UnbiasedLinear};
use dfdx::nn::ZeroSizedModule;
use dfdx::prelude::*;

use crate::by_rows::Steps;
use crate::layer::{when_wanted, WrittenLayer};
use crate::rows::{concat_rows, gather_rows, scatter_rows};
use crate::sequence::{Sequence, SequenceMask};
use crate::tape::{hold, taped, Held};

/// A taped batch of padded sequences: `steps` is (batch, steps, N) in the caller's row order,
/// with at least as many steps as the longest sequence (zero, or anything finite, past each
/// sequence's length); `mask` holds the lengths.
pub struct Padded<E: Real, const N: usize>
where
    Cpu: Device<E>,
{
    /// (batch, steps, N).
    pub steps: Steps<E, N>,
    /// The lengths (and the packed layout the batch came from).
    pub mask: Arc<SequenceMask>,
}

/// What attention adds to the scores of a padded key: its softmax weight underflows to exactly
/// zero next to any real key, in f32 and f64, and the value stays finite (no `0 · ∞`).
const MASKED_SCORE: f64 = -1e9;

impl<E: Real, const N: usize> Padded<E, N>
where
    Cpu: Device<E>,
{
    /// Runs `forward` (a layer's, on (batch, steps, N) tensors) on the tensor; the lengths pass
    /// through.
    pub fn forward_on_steps<const M: usize, S>(
        self,
        forward: impl FnOnce(Steps<E, N>) -> (Steps<E, M>, S),
    ) -> (Padded<E, M>, S) {
        let (steps, saved) = forward(self.steps);
        let output = Padded {
            steps,
            mask: self.mask,
        };
        (output, saved)
    }

    /// Runs `backward` (a layer's, on (batch, steps, ·) gradients) on the tensor of this
    /// gradient; the lengths pass through.
    pub fn backward_on_steps<const M: usize>(
        self,
        backward: impl FnOnce(Steps<E, N>) -> Option<Steps<E, M>>,
    ) -> Option<Padded<E, M>> {
        let mask = self.mask;
        backward(self.steps).map(|steps| Padded { steps, mask })
    }

    /// (batch, steps): 0 at a real step, −10⁹ at padding; attention adds it to
    /// every query's scores.
    pub fn key_bias(&self) -> Held<(usize, usize), E> {
        per_step(
            &self.mask,
            self.steps.shape().1,
            |_| E::zero(),
            E::of(MASKED_SCORE),
        )
    }

    /// (batch, steps): `1/length` at a real step, 0 at padding; the weights of the mean over a
    /// sequence's steps.
    pub fn mean_weights(&self) -> Held<(usize, usize), E> {
        per_step(
            &self.mask,
            self.steps.shape().1,
            |len| E::of(1.0 / len as f64),
            E::zero(),
        )
    }
}

/// A (batch, steps) table: `real(length)` at the steps of each sequence, `pad` after them.
fn per_step<E: Real>(
    mask: &SequenceMask,
    steps: usize,
    real: impl Fn(usize) -> E,
    pad: E,
) -> Held<(usize, usize), E>
where
    Cpu: Device<E>,
{
    let values = mask
        .lengths()
        .iter()
        .flat_map(|&len| (0..steps).map(move |t| (t, len)))
        .map(|(t, len)| if t < len { real(len) } else { pad })
        .collect();
    device().tensor_from_vec(values, (mask.batch_size(), steps))
}

/// Packed sequence → [`Padded`] batch, in the caller's row order.
#[derive(Debug, Default, Clone, Copy)]
pub struct PadSequence;

impl ZeroSizedModule for PadSequence {}

/// For each step t, the padded row (`caller row · steps + t`) of each of its packed rows.
fn padded_rows(mask: &SequenceMask) -> Vec<Vec<usize>> {
    let steps = mask.steps();
    (0..steps)
        .map(|t| {
            mask.order()[..mask.active(t)]
                .iter()
                .map(|&row| row * steps + t)
                .collect()
        })
        .collect()
}

impl<E: Real, const N: usize> WrittenLayer<E, Sequence<E, N>> for PadSequence
where
    Cpu: Device<E>,
{
    type Output = Padded<E, N>;
    type Saved = ();

    fn forward(&self, input: Sequence<E, N>) -> (Padded<E, N>, ()) {
        let mask = input.mask;
        let (batch, steps) = (mask.batch_size(), mask.steps());
        // The packed steps one after the other, each row then moved to its padded place.
        let mut history = Tp::<E>::default();
        let mut parts: Vec<Held<(usize, Const<N>), E>> = Vec::with_capacity(steps);
        for step in input.steps {
            let (step, tape) = step.split_tape();
            history = history.merge(tape);
            parts.push(step);
        }
        let take: Vec<usize> = parts.iter().map(|p| p.shape().0).collect();
        let (flat, tape) = concat_rows(&parts, &take).split_tape();
        let places = padded_rows(&mask).concat();
        let padded = scatter_rows(flat.put_tape(tape.merge(history)), &places, batch * steps);
        let steps = padded.reshape_like(&(batch, steps, Const::<N>));
        (Padded { steps, mask }, ())
    }

    fn backward(
        &self,
        _: (),
        grad_output: Padded<E, N>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Sequence<E, N>> {
        let mask = grad_output.mask;
        let (batch, steps) = (mask.batch_size(), mask.steps());
        let rows = when_wanted(
            grad_output.steps.reshape_like(&(batch * steps, Const::<N>)),
            grads,
            want_input,
        )?;
        let delta = hold(&rows);
        grads.keep_tape(rows);
        let steps = padded_rows(&mask)
            .iter()
            .map(|index| gather_rows(taped(&delta), index))
            .collect();
        Some(Sequence { steps, mask })
    }
}

/// Implements [`WrittenLayer`] on [`Padded`] batches for layers that have it on
/// (batch, steps, ·) tensors and act on each step alike: the lengths pass through.
macro_rules! on_padded {
    ($([$($generics:tt)*] $module:ty: $i:ident -> $o:ident),+ $(,)?) => {$(
        #[allow(deprecated)]
        impl<E: Real, $($generics)*> WrittenLayer<E, $crate::padded::Padded<E, $i>> for $module
        where
            Cpu: Device<E>,
        {
            type Output = $crate::padded::Padded<E, $o>;
            type Saved = <Self as WrittenLayer<E, $crate::by_rows::Steps<E, $i>>>::Saved;

            fn forward(
                &self,
                input: $crate::padded::Padded<E, $i>,
            ) -> (Self::Output, Self::Saved) {
                input.forward_on_steps(|steps| WrittenLayer::forward(self, steps))
            }

            fn backward(
                &self,
                saved: Self::Saved,
                grad_output: Self::Output,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<$crate::padded::Padded<E, $i>> {
                grad_output.backward_on_steps(|steps| {
                    WrittenLayer::<E, $crate::by_rows::Steps<E, $i>>::backward(
                        self, saved, steps, grads, want_input,
                    )
                })
            }
        }
    )+};
}
pub(crate) use on_padded;

on_padded!(
    [const I: usize, const O: usize] Linear<I, O, E, Cpu>: I -> O,
    [const I: usize, const O: usize] UnbiasedLinear<I, O, E, Cpu>: I -> O,
    [const M: usize] LayerNorm1D<M, E, Cpu>: M -> M,
);
