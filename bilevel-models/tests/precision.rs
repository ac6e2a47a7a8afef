//! f32 and f64 builds of the same model on the same data agree to f32 precision.

mod common;

use bilevel_models::classifier::{ElmanEncoder, MlpHead, TextClassifier};
use bilevel_models::forms::{BatchConfig, HyperOpt};
use bilevel_optim::oracles::Oracles;
use bilevel_optim::params::Params;
use common::*;
use dfdx::nn::ToDtype;
use dfdx::prelude::*;

type Classifier<E> = TextClassifier<ElmanEncoder<3, 4, E>, MlpHead<4, 5, 2, E>>;

#[test]
fn f32_agrees_with_f64() {
    let dev = Cpu::seed_from_u64(2);
    let y64 = Classifier::<f64>::build(&dev);
    let x64: Tensor<Rank1<14>, f64, Cpu> = dev.sample_normal::<Rank1<14>>() * 0.3 - 1.0;
    let v64 = random_like(&y64, 9);
    let (y32, x32, v32) = (
        y64.clone().to_dtype::<f32>(),
        x64.clone().to_dtype::<f32>(),
        v64.clone().to_dtype::<f32>(),
    );
    let config = BatchConfig {
        lower_batch: 8,
        upper_batch: 8,
        max_len: 7,
    };
    let texts = || {
        (
            synthetic_texts(20, 3, 7, 2, 1),
            synthetic_texts(8, 3, 7, 2, 2),
        )
    };
    let (train, val) = texts();
    let mut o64 = Oracles::new(
        HyperOpt::<f64, Classifier<f64>, _, 3, 2>::new(train, val, config, &y64, &x64).unwrap(),
        4,
    );
    let (train, val) = texts();
    let mut o32 = Oracles::new(
        HyperOpt::<f32, Classifier<f32>, _, 3, 2>::new(train, val, config, &y32, &x32).unwrap(),
        4,
    );
    let (b64, b32) = (o64.lower_batch(), o32.lower_batch());
    assert_eq!(b64.ids, b32.ids, "same data order");

    let s64 = o64.hvp_jvp(&x64, &y64, &v64, &b64).unwrap();
    let s32 = o32.hvp_jvp(&x32, &y32, &v32, &b32).unwrap();
    let errors = [
        rel_err(&flat(&s32.written_grad_y), &flat(&s64.written_grad_y)),
        rel_err(&flat(&s32.hvp), &flat(&s64.hvp)),
        rel_err(&flat(&s32.jvp), &flat(&s64.jvp)),
    ];
    let g64 = o64.lower_grad(&x64, &y64, &b64).unwrap();
    let g32 = o32.lower_grad(&x32, &y32, &b32).unwrap();
    println!(
        "f32 vs f64: ∇g, Hv, Jv {errors:?}; loss {} vs {}",
        g32.value, g64.value
    );
    assert!(errors.iter().all(|&e| e < 1e-4), "{errors:?}");
    assert!(((g32.value as f64) - g64.value).abs() < 1e-5 * g64.value.abs());
    assert!(rel_err(&flat(&g32.dy), &flat(&g64.dy)) < 1e-4);
    assert!(s64.hvp.norm() > 1e-3);
}
