//! Padded batches: a text's output does not depend on the other texts of its batch (the
//! padding is masked out of attention and out of the mean), and a padding whose backward drops
//! the gradient's history is caught. Exactness of the products through padding, masked
//! attention and the masked mean is in `tests/forms.rs` and `tests/presets.rs`.

use std::sync::Arc;

use crate::common::*;
use bilevel_models::classifier::{LinearHead, TransformerEncoder};
use bilevel_models::elman::ElmanLayer;
use bilevel_models::embedding::PaddedTokens;
use bilevel_models::forms::{BatchConfig, HyperClean};
use bilevel_models::layer::WrittenLayer;
use bilevel_models::padded::{PadSequence, Padded};
use bilevel_models::pool::MeanPoolSteps;
use bilevel_models::positions::SinusoidalPositions;
use bilevel_models::sequence::Sequence;
use bilevel_optim::problem::Tp;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::{Embedding, Linear, Tanh, TransformerEncoderBlock};
use dfdx::nn::ZeroSizedModule;
use dfdx::prelude::*;

const EMB: usize = 3;
const D: usize = 4;
const T: usize = 6;

type Encoder = TransformerEncoder<EMB, D, 2, 5, 2, f64>;

/// Each text of a padded batch gets exactly what it gets alone, unpadded, to rounding.
#[test]
fn a_texts_features_do_not_depend_on_its_batch() {
    let texts = synthetic_texts(9, EMB, T, 2, 3);
    let encoder = Encoder::build(&Cpu::seed_from_u64(2));
    let ids: Vec<usize> = (0..9).collect();
    let batch = texts.batch::<f64, EMB>(&ids, T);
    let lengths = batch.mask.lengths().to_vec();
    assert!(
        lengths.iter().any(|&l| l < *lengths.iter().max().unwrap()),
        "the batch needs padding: {lengths:?}"
    );
    let together = encoder.forward(batch.sequence()).0.as_vec();
    for (i, &id) in ids.iter().enumerate() {
        let alone = encoder
            .forward(texts.batch::<f64, EMB>(&[id], T).sequence())
            .0
            .as_vec();
        let row = &together[i * D..(i + 1) * D];
        assert!(
            rel_err(row, &alone) < 1e-13,
            "text {id} (length {}): {row:?} in the batch, {alone:?} alone",
            lengths[i]
        );
    }
}

type TokenModel = (
    Embedding<10, D, f64, Cpu>,
    SinusoidalPositions,
    TransformerEncoderBlock<D, 2, 5, f64, Cpu>,
    MeanPoolSteps,
    Tanh,
    Linear<D, 3, f64, Cpu>,
);

/// A transformer on padded token ids with their lengths (a dfdx user's usual input): exact
/// products, and the padding ids change nothing.
#[test]
fn padded_token_ids_have_exact_products_and_their_padding_is_ignored() {
    // 1 embedding table, 16 block tensors, 2 of the last layer.
    let checks = token_checks::<TokenModel, PaddedTokens, 19>();
    println!("transformer on padded ids: {checks:?}");
    checks.assert_exact("transformer on padded ids");

    let dev = Cpu::seed_from_u64(4);
    let model = TokenModel::build(&dev);
    let tokens = PaddedTokens::sample(&dev);
    let mut other = tokens.ids.as_vec();
    for (row, &len) in tokens.mask.lengths().iter().enumerate() {
        for t in len..3 {
            other[row * 3 + t] = 7;
        }
    }
    let other = PaddedTokens {
        ids: dev.tensor_from_vec(other, (6, 3)),
        mask: Arc::clone(&tokens.mask),
    };
    assert_eq!(
        model.forward(tokens).0.as_vec(),
        model.forward(other).0.as_vec()
    );
    let err = PaddedTokens::new(dev.tensor_from_vec(vec![1, 2], (1, 2)), vec![3]).unwrap_err();
    assert!(err.contains("row 0 has length 3"), "{err}");
}

/// Padding whose backward reads a copy of the gradient: the values are right, but H·v misses
/// how the gradient reaching the Elman layer depends on the layers after it.
#[derive(Debug, Default, Clone, Copy)]
struct DetachedPad;

impl ZeroSizedModule for DetachedPad {}

impl WrittenLayer<f64, Sequence<f64, D>> for DetachedPad {
    type Output = Padded<f64, D>;
    type Saved = ();
    fn forward(&self, input: Sequence<f64, D>) -> (Padded<f64, D>, ()) {
        WrittenLayer::forward(&PadSequence, input)
    }
    fn backward(
        &self,
        _: (),
        grad_output: Padded<f64, D>,
        grads: &mut WrittenGrad<f64>,
        want_input: bool,
    ) -> Option<Sequence<f64, D>> {
        let shape = *grad_output.steps.shape();
        let copy = Cpu::default().tensor_from_vec(grad_output.steps.as_vec(), shape);
        grads.keep_tape(grad_output.steps);
        let grad_output = Padded {
            steps: copy.retaped::<Tp<f64>>(),
            mask: Arc::clone(&grad_output.mask),
        };
        WrittenLayer::backward(&PadSequence, (), grad_output, grads, want_input)
    }
}

#[test]
fn padding_with_a_detached_backward_is_caught() {
    type Broken = (
        ElmanLayer<EMB, D, f64, Cpu>,
        DetachedPad,
        TransformerEncoderBlock<D, 2, 5, f64, Cpu>,
        MeanPoolSteps,
        LinearHead<D, 3, f64>,
    );
    const N: usize = 12;
    let dev = Cpu::seed_from_u64(9);
    let y = Broken::build(&dev);
    let x: Tensor<Rank1<N>, f64, Cpu> = dev.sample_normal();
    let config = BatchConfig {
        lower_batch: 7,
        upper_batch: 5,
        max_len: T,
    };
    let problem = HyperClean::<f64, Broken, N, EMB, 3>::new(
        synthetic_texts(N, EMB, T, 3, 4),
        synthetic_texts(10, EMB, T, 3, 5),
        config,
        0.05,
    )
    .unwrap();
    assert_caught(problem, &x, &y, "padding with a detached backward");
}
