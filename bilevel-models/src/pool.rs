//! Pooling over time: max-pooling over the steps of a packed sequence batch ([`MaxPoolTime`]),
//! and the mean over the steps of a (batch, steps, features) tensor ([`MeanPoolSteps`], written
//! backward `∂h_t = δ / steps`).
//!
//! The maximum is found on the values, then written as `pooled = Σ_t h_t ⊙ e_t`, where `e_t` is
//! the indicator of "step t holds the maximum" (the first such step on a tie), and the rows are
//! put back in the caller's order. The value is the maximum exactly, its derivative is the usual
//! max-pool derivative, and the taped computation is cheap row moves and element-wise products:
//! dfdx's own `max` over a stacked tensor costs a strided reduction in its backward pass that
//! took a tenth of a whole second-order pass. The written backward is `∂h_t = δ ⊙ e_t` (on the
//! packed rows of step t).

use std::sync::Arc;

use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::ZeroSizedModule;
use dfdx::prelude::*;

use crate::by_rows::Steps;
use crate::layer::{when_wanted, WrittenLayer};
use crate::padded::Padded;
use crate::recurrent::{extend_rows, first_rows};
use crate::rows::gather_rows;
use crate::sequence::{Activations, Sequence, SequenceMask};
use crate::tape::{hold, Held};
use bilevel_optim::real::values;

/// Element-wise maximum over the valid steps of a sequence.
#[derive(Debug, Default, Clone, Copy)]
pub struct MaxPoolTime;

impl ZeroSizedModule for MaxPoolTime {}

/// Which step holds each maximum, as one 0/1 tensor per step (packed rows).
pub struct MaxPoolSaved<const N: usize, E: Real>
where
    Cpu: Device<E>,
{
    winners: Vec<Tensor<(usize, Const<N>), E, Cpu>>,
    mask: Arc<SequenceMask>,
}

/// For every (packed row, feature), the first step with the largest value.
fn argmax_over_steps<const N: usize, E: Real>(
    steps: &[Activations<E, N>],
    rows: usize,
) -> Vec<usize>
where
    Cpu: Device<E>,
{
    let mut best_step = vec![0usize; rows * N];
    let mut best_value = values(&steps[0]);
    for (t, step) in steps.iter().enumerate().skip(1) {
        for (k, v) in values(step).into_iter().enumerate() {
            if v > best_value[k] {
                best_value[k] = v;
                best_step[k] = t;
            }
        }
    }
    best_step
}

/// The packed row of each of the caller's rows.
fn packed_row_of(mask: &SequenceMask) -> Vec<usize> {
    let mut packed = vec![0; mask.batch_size()];
    for (r, &row) in mask.order().iter().enumerate() {
        packed[row] = r;
    }
    packed
}

impl<const N: usize, E: Real> WrittenLayer<E, Sequence<E, N>> for MaxPoolTime
where
    Cpu: Device<E>,
{
    type Output = Activations<E, N>;
    type Saved = MaxPoolSaved<N, E>;

    fn forward(&self, input: Sequence<E, N>) -> (Activations<E, N>, Self::Saved) {
        assert!(
            !input.steps.is_empty(),
            "max-pooling needs at least one step"
        );
        let rows = input.mask.batch_size();
        let best_step = argmax_over_steps(&input.steps, rows);
        let dev = bilevel_optim::real::device();
        let winners: Vec<Tensor<(usize, Const<N>), E, Cpu>> = (0..input.steps.len())
            .map(|t| {
                let active = input.mask.active(t);
                let hit = best_step[..active * N]
                    .iter()
                    .map(|&b| if b == t { E::one() } else { E::zero() })
                    .collect();
                dev.tensor_from_vec(hit, (active, Const::<N>))
            })
            .collect();
        let packed = input
            .steps
            .into_iter()
            .zip(&winners)
            .map(|(h, e)| extend_rows(h * e.clone(), rows))
            .reduce(|a, b| a + b)
            .expect("at least one step");
        let pooled = gather_rows(packed, &packed_row_of(&input.mask));
        let saved = MaxPoolSaved {
            winners,
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
        let grad_output = when_wanted(grad_output, grads, want_input)?;
        let packed = gather_rows(grad_output, saved.mask.order());
        let delta = hold(&packed);
        let steps = saved
            .winners
            .into_iter()
            .map(|e| {
                let active = e.shape().0;
                first_rows(&delta, active) * e
            })
            .collect();
        grads.keep_tape(packed);
        Some(Sequence {
            steps,
            mask: saved.mask,
        })
    }
}

/// The mean over the steps of a (batch, steps, N) tensor: a transformer's pooling.
#[derive(Debug, Default, Clone, Copy)]
pub struct MeanPoolSteps;

impl ZeroSizedModule for MeanPoolSteps {}

impl<const N: usize, E: Real> WrittenLayer<E, Steps<E, N>> for MeanPoolSteps
where
    Cpu: Device<E>,
{
    type Output = Activations<E, N>;
    type Saved = usize;

    fn forward(&self, input: Steps<E, N>) -> (Activations<E, N>, usize) {
        let steps = input.shape().1;
        (input.mean::<(usize, Const<N>), Axis<1>>(), steps)
    }

    fn backward(
        &self,
        steps: usize,
        grad_output: Activations<E, N>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Steps<E, N>> {
        let grad_output = when_wanted(grad_output, grads, want_input)?;
        let (rows, _) = *grad_output.shape();
        let spread = grad_output.broadcast_like::<_, Axis<1>>(&(rows, steps, Const::<N>));
        Some(spread / E::of(steps as f64))
    }
}

/// The mean over each sequence's real steps of a padded batch: `Σ_t w_t h_t` with
/// `w_t = 1/length` at a real step and 0 at padding; written backward `∂h_t = w_t δ`.
impl<const N: usize, E: Real> WrittenLayer<E, Padded<E, N>> for MeanPoolSteps
where
    Cpu: Device<E>,
{
    type Output = Activations<E, N>;
    type Saved = (Held<(usize, usize), E>, Arc<SequenceMask>);

    fn forward(&self, input: Padded<E, N>) -> (Activations<E, N>, Self::Saved) {
        let weights = input.mean_weights();
        let shape = *input.steps.shape();
        let spread = weights.clone().broadcast_like::<_, Axis<2>>(&shape);
        let pooled = (input.steps * spread).sum::<(usize, Const<N>), Axis<1>>();
        (pooled, (weights, input.mask))
    }

    fn backward(
        &self,
        (weights, mask): Self::Saved,
        grad_output: Activations<E, N>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Padded<E, N>> {
        let grad_output = when_wanted(grad_output, grads, want_input)?;
        let (rows, steps) = *weights.shape();
        let shape = (rows, steps, Const::<N>);
        let spread = grad_output.broadcast_like::<_, Axis<1>>(&shape);
        let steps = spread * weights.broadcast_like::<_, Axis<2>>(&shape);
        Some(Padded { steps, mask })
    }
}
