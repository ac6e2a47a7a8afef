//! Losses with optional per-sample weights: each one's value (for dfdx autodiff and for
//! reporting) and its gradient with respect to the model's outputs, written in taped ops, so
//! H·v through them is exact ([`Loss`]).
//!
//! - Softmax cross-entropy: `L = (1/B) Σ_i w_i CE_i`, `CE_i = −log softmax(z_i)_{t_i}`,
//!   `∂L/∂z_i = w_i (softmax(z_i) − e_{t_i}) / B`.
//! - Element-wise losses over (B, C) outputs, as dfdx's `mse_loss`, `huber_loss` and
//!   `binary_cross_entropy_with_logits_loss` (the mean over every element, weighted by row):
//!   `L = (1/(BC)) Σ_i w_i Σ_c ℓ(p_ic, t_ic)`, `∂L/∂p_ic = w_i ℓ'(p_ic, t_ic) / (BC)` with
//!   `ℓ' = 2(p − t)` (squared error), `clamp(p − t, −δ, δ)` (Huber) and `σ(p) − t` (binary
//!   cross-entropy on logits).

use bilevel_optim::problem::Taped;
use bilevel_optim::real::Real;
use dfdx::prelude::*;

use crate::sequence::Activations;

/// One-hot rows for class labels, shape (batch, C).
pub fn one_hot<E: Real, const C: usize>(labels: &[usize]) -> Tensor<(usize, Const<C>), E, Cpu>
where
    Cpu: Device<E>,
{
    let mut data = vec![E::zero(); labels.len() * C];
    for (row, &label) in labels.iter().enumerate() {
        assert!(label < C, "label {label} is not one of the {C} classes");
        data[row * C + label] = E::one();
    }
    bilevel_optim::real::device().tensor_from_vec(data, (labels.len(), Const::<C>))
}

/// Per-sample weights of the loss (taped, so their cross products come out of the same backward
/// pass), or `None` for the plain mean.
pub type SampleWeights<E> = Option<Taped<(usize,), E>>;

/// `(1/B) Σ_i w_i CE_i` as a taped scalar.
pub fn cross_entropy<E: Real, const C: usize>(
    logits: Activations<E, C>,
    targets: &Tensor<(usize, Const<C>), E, Cpu>,
    weights: SampleWeights<E>,
) -> Taped<Rank0, E>
where
    Cpu: Device<E>,
{
    let rows = logits.shape().0;
    let per_sample = (logits.log_softmax::<Axis<1>>() * targets.clone())
        .sum::<(usize,), _>()
        .negate();
    let total = match weights {
        None => per_sample.sum(),
        Some(w) => (per_sample * w).sum(),
    };
    total / E::of(rows as f64)
}

/// `∂/∂logits` of [`cross_entropy`], taped.
pub fn cross_entropy_grad<E: Real, const C: usize>(
    logits: Activations<E, C>,
    targets: &Tensor<(usize, Const<C>), E, Cpu>,
    weights: SampleWeights<E>,
) -> Activations<E, C>
where
    Cpu: Device<E>,
{
    let rows = logits.shape().0;
    let residual = logits.softmax::<Axis<1>>() - targets.clone();
    let scale = E::of(1.0 / rows as f64);
    match weights {
        None => residual * scale,
        Some(w) => residual * (w * scale).broadcast_like(&(rows, Const::<C>)),
    }
}

/// A loss of a model's (B, C) outputs against targets, with per-sample weights.
pub trait Loss<E: Real, const C: usize>
where
    Cpu: Device<E>,
{
    /// The loss as a taped scalar.
    fn value(
        &self,
        outputs: Activations<E, C>,
        targets: &Tensor<(usize, Const<C>), E, Cpu>,
        weights: SampleWeights<E>,
    ) -> Taped<Rank0, E>;

    /// `∂/∂outputs` of [`Loss::value`], taped.
    fn gradient(
        &self,
        outputs: Activations<E, C>,
        targets: &Tensor<(usize, Const<C>), E, Cpu>,
        weights: SampleWeights<E>,
    ) -> Activations<E, C>;
}

/// Softmax cross-entropy over C classes ([`cross_entropy`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossEntropy;

/// The mean squared error, as dfdx's `mse_loss`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanSquaredError;

/// Binary cross-entropy on logits against target probabilities, as dfdx's
/// `binary_cross_entropy_with_logits_loss`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BinaryCrossEntropyWithLogits;

/// The Huber loss with threshold `delta`, as dfdx's `huber_loss`.
#[derive(Debug, Clone, Copy)]
pub struct Huber {
    /// Where the squared error turns into the absolute error.
    pub delta: f64,
}

impl<E: Real, const C: usize> Loss<E, C> for CrossEntropy
where
    Cpu: Device<E>,
{
    fn value(
        &self,
        outputs: Activations<E, C>,
        targets: &Tensor<(usize, Const<C>), E, Cpu>,
        weights: SampleWeights<E>,
    ) -> Taped<Rank0, E> {
        cross_entropy(outputs, targets, weights)
    }

    fn gradient(
        &self,
        outputs: Activations<E, C>,
        targets: &Tensor<(usize, Const<C>), E, Cpu>,
        weights: SampleWeights<E>,
    ) -> Activations<E, C> {
        cross_entropy_grad(outputs, targets, weights)
    }
}

/// Implements [`Loss`] for an element-wise loss from its per-element value and its derivative
/// in the output, both taped functions of `(outputs, targets)`.
macro_rules! element_wise_loss {
    ($loss:ty, |$self:ident, $p:ident, $t:ident| value: $value:expr, slope: $slope:expr) => {
        impl<E: Real, const C: usize> Loss<E, C> for $loss
        where
            Cpu: Device<E>,
        {
            fn value(
                &$self,
                $p: Activations<E, C>,
                $t: &Tensor<(usize, Const<C>), E, Cpu>,
                weights: SampleWeights<E>,
            ) -> Taped<Rank0, E> {
                let rows = $p.shape().0;
                let per_sample = ($value).sum::<(usize,), Axis<1>>();
                let total = match weights {
                    None => per_sample.sum(),
                    Some(w) => (per_sample * w).sum(),
                };
                total / E::of((rows * C) as f64)
            }

            fn gradient(
                &$self,
                $p: Activations<E, C>,
                $t: &Tensor<(usize, Const<C>), E, Cpu>,
                weights: SampleWeights<E>,
            ) -> Activations<E, C> {
                let rows = $p.shape().0;
                let scale = E::of(1.0 / (rows * C) as f64);
                let slope = $slope;
                match weights {
                    None => slope * scale,
                    Some(w) => slope * (w * scale).broadcast_like(&(rows, Const::<C>)),
                }
            }
        }
    };
}

element_wise_loss!(MeanSquaredError, |self, p, t|
    value: (p - t.clone()).square(),
    slope: (p - t.clone()) * E::of(2.0));
element_wise_loss!(BinaryCrossEntropyWithLogits, |self, p, t|
    value: p.bce_with_logits(t.clone()),
    slope: p.sigmoid() - t.clone());
element_wise_loss!(Huber, |self, p, t|
    value: p.huber_error(t.clone(), self.delta),
    slope: (p - t.clone()).clamp(-self.delta, self.delta));

/// Fraction of rows whose largest logit is the target class.
pub fn accuracy<E: Real, const C: usize>(
    logits: &Tensor<(usize, Const<C>), E, Cpu>,
    labels: &[usize],
) -> f64
where
    Cpu: Device<E>,
{
    let values = logits.as_vec();
    let correct = labels
        .iter()
        .enumerate()
        .filter(|(row, &label)| {
            let scores = &values[row * C..(row + 1) * C];
            let best = (0..C)
                .max_by(|&a, &b| {
                    scores[a]
                        .partial_cmp(&scores[b])
                        .unwrap_or(std::cmp::Ordering::Equal)
                })
                .unwrap_or(0);
            best == label
        })
        .count();
    correct as f64 / labels.len().max(1) as f64
}
