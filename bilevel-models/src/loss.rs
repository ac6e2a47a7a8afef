//! Softmax cross-entropy with optional per-sample weights: its value (for dfdx autodiff and for
//! reporting) and its gradient with respect to the logits, written in taped ops.
//!
//! `L = (1/B) Σ_i w_i CE_i`, `CE_i = −log softmax(z_i)_{t_i}`, `∂L/∂z_i = w_i (softmax(z_i) − e_{t_i}) / B`.

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
