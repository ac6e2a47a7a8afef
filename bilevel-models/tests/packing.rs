//! Packing is invisible: on a batch of texts of different lengths (an empty one included), the
//! packed classifiers give every text the logits and the written gradient it gets alone, with no
//! padding anywhere. This is the oracle for the packed layout itself; `forms.rs` checks the
//! second-order products through it.

mod common;

use bilevel_models::classifier::{
    add_loss_gradient, logits, ElmanEncoder, LstmEncoder, MlpHead, TextClassifier,
};
use bilevel_models::layer::WrittenLayer;
use bilevel_models::sequence::{Activations, Sequence};
use bilevel_optim::params::Params;
use bilevel_optim::written_grad::WrittenGrad;
use common::*;
use dfdx::prelude::*;

const EMB: usize = 3;
const H: usize = 4;
const C: usize = 3;
const T: usize = 6;

fn check<M>(what: &str)
where
    M: Params<f64>
        + BuildModule<Cpu, f64>
        + WrittenLayer<f64, Sequence<f64, EMB>, Output = Activations<f64, C>>,
{
    let model = M::build(&Cpu::seed_from_u64(3));
    let texts = synthetic_texts(9, EMB, T, C, 5);
    let ids: Vec<usize> = (0..9).collect();
    let batch = texts.batch::<f64, EMB>(&ids, T);
    let lengths = batch.mask.lengths().to_vec();
    assert!(
        lengths.iter().any(|&l| l < batch.mask.steps()) && batch.mask.order() != ids.as_slice(),
        "{what}: the batch must need packing: {lengths:?}"
    );
    let together = logits(&model, batch.sequence()).as_vec();
    // Σ over texts of the per-text written gradient of CE (the batch loss is the mean).
    let gradient = |ids: &[usize]| {
        let b = texts.batch::<f64, EMB>(ids, T);
        let mut grads = WrittenGrad::new(&model, None);
        add_loss_gradient(&model, b.sequence(), &b.targets::<C>(), None, &mut grads);
        let g = grads.into_value(&model).expect("a complete gradient");
        g.to_flat()
            .into_iter()
            .map(|v| v * ids.len() as f64)
            .collect::<Vec<f64>>()
    };
    let mut summed = vec![0.0; model.to_flat().len()];
    for &i in &ids {
        let alone = texts.batch::<f64, EMB>(&[i], T);
        assert_eq!(
            alone.mask.steps(),
            lengths[i],
            "a text alone has no padding"
        );
        let own = logits(&model, alone.sequence()).as_vec();
        let row = &together[i * C..(i + 1) * C];
        assert!(
            rel_err(row, &own) < 1e-13,
            "{what}: text {i} (length {}): {row:?} vs {own:?}",
            lengths[i]
        );
        for (s, g) in summed.iter_mut().zip(gradient(&[i])) {
            *s += g;
        }
    }
    let err = rel_err(&gradient(&ids), &summed);
    assert!(err < 1e-12, "{what}: gradient differs by {err:e}");
}

#[test]
fn packed_elman_classifier_matches_texts_run_alone() {
    check::<TextClassifier<ElmanEncoder<EMB, H, f64>, MlpHead<H, 5, C, f64>>>("Elman");
}

#[test]
fn packed_lstm_classifier_matches_texts_run_alone() {
    check::<TextClassifier<LstmEncoder<EMB, H, f64>, MlpHead<H, 5, C, f64>>>("LSTM");
}
