//! Max-pooling over time against dfdx's own `max` over each sequence's steps: same values, same
//! autodiff gradient (ties aside, which random data does not produce), on a packed batch whose
//! rows come back in the caller's order.

use std::sync::Arc;

use bilevel_models::layer::WrittenLayer;
use bilevel_models::pool::MaxPoolTime;
use bilevel_models::sequence::{Sequence, SequenceMask};
use bilevel_optim::problem::Tp;
use dfdx::prelude::*;

/// Backward of `loss` with gradient buffers for every tensor registered in `grads`.
fn backward_with(
    loss: Tensor<Rank0, f64, Cpu, Tp<f64>>,
    grads: Gradients<f64, Cpu>,
) -> Gradients<f64, Cpu> {
    let zero: Tensor<Rank0, f64, Cpu> = Cpu::default().zeros();
    let (_, anchor) = zero.traced(grads).split_tape();
    let (loss, own) = loss.split_tape();
    loss.put_tape(own.merge(anchor)).backward()
}

#[test]
fn pooled_values_and_gradients_match_dfdx_max_over_valid_steps() {
    let dev = Cpu::seed_from_u64(1);
    let lengths = vec![3, 1, 5, 2];
    let mask = Arc::new(SequenceMask::from_lengths(lengths.clone()));
    assert_eq!(mask.order(), &[2, 0, 3, 1], "longest first");
    // Step t holds the packed rows still running: 4, 3, 2, 1, 1 of them.
    let steps: Vec<Tensor<(usize, Const<6>), f64, Cpu>> = (0..5)
        .map(|t| dev.sample_uniform_like(&(mask.active(t), Const::<6>)) * 2.0 - 1.0)
        .collect();
    assert_eq!(
        steps.iter().map(|s| s.shape().0).collect::<Vec<_>>(),
        vec![4, 3, 2, 1, 1]
    );
    let weights: Tensor<(usize, Const<6>), f64, Cpu> = dev.sample_normal_like(&(4, Const::<6>));

    // Ours: ⟨pool(h), w⟩ differentiated by dfdx.
    let grads = steps.iter().fold(Gradients::leaky(), |g, s| {
        let mut g = g;
        g.get_or_alloc_mut(s).unwrap();
        g
    });
    let seq = Sequence {
        steps: steps.iter().map(|s| s.retaped::<Tp<f64>>()).collect(),
        mask: Arc::clone(&mask),
    };
    let (pooled, _) = MaxPoolTime.forward(seq);
    let pooled_values = pooled.as_vec();
    let ours = backward_with((pooled * weights.clone()).sum::<Rank0, _>(), grads);

    // Reference: per caller's row, dfdx's max over that row's steps.
    for (packed, &row) in mask.order().iter().enumerate() {
        let len = lengths[row];
        let slice = |s: &Tensor<(usize, Const<6>), f64, Cpu>| {
            s.as_vec()[packed * 6..(packed + 1) * 6].to_vec()
        };
        let rows: Vec<Tensor<Rank1<6>, f64, Cpu>> = steps[..len]
            .iter()
            .map(|s| dev.tensor_from_vec(slice(s), Rank1::<6>::default()))
            .collect();
        let grads = rows.iter().fold(Gradients::leaky(), |mut g, r| {
            g.get_or_alloc_mut(r).unwrap();
            g
        });
        let stacked = rows
            .iter()
            .map(|r| r.retaped::<Tp<f64>>())
            .collect::<Vec<_>>()
            .stack()
            .max::<Rank1<6>, Axis<0>>();
        let w: Tensor<Rank1<6>, f64, Cpu> = dev.tensor_from_vec(
            weights.as_vec()[row * 6..(row + 1) * 6].to_vec(),
            Rank1::<6>::default(),
        );
        assert_eq!(
            stacked.as_vec(),
            pooled_values[row * 6..(row + 1) * 6].to_vec(),
            "row {row} in the caller's order"
        );
        let reference = backward_with((stacked * w).sum::<Rank0, _>(), grads);
        for (t, r) in rows.iter().enumerate() {
            let expected = reference.get(r).as_vec();
            let got = slice(&ours.get(&steps[t]));
            assert_eq!(got, expected, "row {row}, step {t}");
        }
    }
}
