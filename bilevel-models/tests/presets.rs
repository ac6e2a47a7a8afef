//! The size presets build, have the tensor counts hyper-opt relies on, and run a forward and a
//! second-order backward on a tiny batch (the paper preset included, in f32).

mod common;

use bilevel_models::classifier::{cpu, paper};
use bilevel_models::forms::{BatchConfig, HyperOpt};
use bilevel_models::text::EmbeddedTexts;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::params::Params;
use common::*;
use dfdx::prelude::*;

fn tiny_config() -> BatchConfig {
    BatchConfig {
        lower_batch: 2,
        upper_batch: 2,
        max_len: 3,
    }
}

#[test]
fn cpu_presets_have_the_documented_tensor_counts_and_run() {
    let dev = Cpu::seed_from_u64(0);
    let y = cpu::Classifier::<f64>::build(&dev);
    let x: Tensor<Rank1<{ cpu::CLASSIFIER_TENSORS }>, f64, Cpu> =
        dev.tensor([-3.0; cpu::CLASSIFIER_TENSORS]);
    let texts = || synthetic_texts(4, cpu::EMBEDDING, 3, 2, 3);
    let problem =
        HyperOpt::<f64, cpu::Classifier<f64>, _, { cpu::EMBEDDING }, { cpu::CLASSES }>::new(
            texts(),
            texts(),
            tiny_config(),
            &y,
            &x,
        )
        .unwrap();
    let checks = check_second_order_with_step(&mut Oracles::new(problem, 0), &x, &y, 1e-5);
    println!("cpu preset: {checks:?}");
    checks.assert_exact("cpu preset");

    let lstm = cpu::LstmClassifier::<f64>::build(&dev);
    let x: Tensor<Rank1<{ cpu::LSTM_CLASSIFIER_TENSORS }>, f64, Cpu> = dev.zeros();
    assert!(bilevel_models::penalty::check_tensor_count(&x, &lstm).is_ok());
    // Every weight and bias is uniform in ±1/√fan_in: the first layer reads 50-d vectors.
    let bound = 1.0 / (cpu::EMBEDDING as f64).sqrt();
    let w = y.0 .0.affine.input.weight.as_vec();
    assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > 0.9 * bound));
}

/// The transformer preset: its tensor count (one log-coefficient each in hyper-opt) and exact
/// products on uneven texts (hyper-opt with per-tensor coefficients exercises every tensor).
#[test]
fn transformer_preset_has_its_tensor_count_and_exact_products() {
    let dev = Cpu::seed_from_u64(1);
    let y = cpu::TransformerClassifier::<f64>::build(&dev);
    let x: Tensor<Rank1<{ cpu::TRANSFORMER_CLASSIFIER_TENSORS }>, f64, Cpu> =
        dev.tensor([-3.0; cpu::TRANSFORMER_CLASSIFIER_TENSORS]);
    let texts = || synthetic_texts(4, cpu::EMBEDDING, 3, 2, 5);
    let problem = HyperOpt::<
        f64,
        cpu::TransformerClassifier<f64>,
        _,
        { cpu::EMBEDDING },
        { cpu::CLASSES },
    >::new(texts(), texts(), tiny_config(), &y, &x)
    .unwrap();
    let checks = check_second_order_with_step(&mut Oracles::new(problem, 0), &x, &y, 1e-5);
    println!("cpu transformer preset: {checks:?}");
    checks.assert_exact("cpu transformer preset");
}

#[test]
fn paper_preset_runs_a_second_order_pass_in_f32() {
    let dev = Cpu::seed_from_u64(0);
    let y = paper::Classifier::<f32>::build(&dev);
    assert!(y.num_params() > 50_000_000, "{} parameters", y.num_params());
    let x: Tensor<Rank1<14>, f32, Cpu> = dev.tensor([-3.0; 14]);
    let texts = || {
        let vectors = (0..5 * paper::EMBEDDING)
            .map(|i| ((i % 17) as f32 - 8.0) / 40.0)
            .collect();
        EmbeddedTexts::new(
            paper::EMBEDDING,
            vectors,
            vec![vec![0, 1, 2], vec![3]],
            vec![0, 1],
        )
        .unwrap()
    };
    let problem = HyperOpt::<
        f32,
        paper::Classifier<f32>,
        _,
        { paper::EMBEDDING },
        { paper::CLASSES },
    >::new(texts(), texts(), tiny_config(), &y, &x)
    .unwrap();
    let mut oracles = Oracles::new(problem, 0);
    // This test is about the size of the pass; the first-use check's ~50 extra passes over a
    // 50M-parameter model would take minutes in a debug build (the checker is tested elsewhere).
    oracles.check_on_first_use(false);
    let batch = oracles.lower_batch();
    let grad = oracles.lower_grad(&x, &y, &batch).unwrap();
    assert!(grad.value.is_finite() && grad.value > 0.0);
    let second = oracles.hvp_jvp(&x, &y, &grad.dy, &batch).unwrap();
    // ⟨∇g, H∇g⟩ > 0 near a random initialisation with the L2 term, and every value finite.
    assert!(second.hvp.first_non_finite().is_none() && second.jvp.first_non_finite().is_none());
    assert!(grad.dy.dot(&second.hvp) > 0.0);
    let written = second.written_grad_y;
    let diff = flat(&written)
        .iter()
        .zip(flat(&grad.dy))
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff < 1e-4 * grad.dy.norm() as f64,
        "written vs autodiff gradient: {diff}"
    );
}
