//! The forms plug into the core unchanged: BO-REP runs on each (tiny sizes) through the generic
//! problem interface, every step succeeds, and x and y move.

mod common;

use bilevel_models::classifier::{ElmanEncoder, MlpHead, TextClassifier};
use bilevel_models::forms::{BatchConfig, HyperClean, HyperOpt, HyperRep, Task};
use bilevel_optim::methods::borep::{BoRep, BoRepConfig};
use bilevel_optim::optimizer::BilevelOptimizer;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::params::Params;
use bilevel_optim::problem::BilevelProblem;
use common::*;
use dfdx::nn::modules::Repeated;
use dfdx::prelude::*;

type Head = MlpHead<4, 5, 2, f64>;
type Encoder = ElmanEncoder<3, 4, f64>;
type Classifier = TextClassifier<Encoder, Head>;

fn config() -> BatchConfig {
    BatchConfig {
        lower_batch: 6,
        upper_batch: 6,
        max_len: 5,
    }
}

fn run<P: BilevelProblem<f64>>(problem: P, mut x: P::X, mut y: P::Y, what: &str) {
    let (x0, y0) = (flat(&x), flat(&y));
    let mut oracles = Oracles::new(problem, 1);
    let mut method = BoRep::new(BoRepConfig::default(), &x, &y).unwrap();
    for _ in 0..6 {
        let report = method
            .step(&mut oracles, &mut x, &mut y)
            .expect("a finite step");
        assert!(report.hypergrad_norm.is_finite(), "{what}: {report:?}");
    }
    assert!(x.first_non_finite().is_none() && y.first_non_finite().is_none());
    assert!(
        rel_err(&flat(&x), &x0) > 0.0 && rel_err(&flat(&y), &y0) > 0.0,
        "{what}: nothing moved"
    );
    assert!(oracles.counts().hvp > 0 && oracles.counts().jvp > 0);
}

#[test]
fn borep_runs_on_every_form() {
    let dev = Cpu::seed_from_u64(0);
    let y = Classifier::build(&dev);
    let x: Tensor<Rank1<14>, f64, Cpu> = dev.tensor([(1e-3f64).ln(); 14]);
    let texts = |n, seed| synthetic_texts(n, 3, 5, 2, seed);
    let opt =
        HyperOpt::<f64, Classifier, _, 3, 2>::new(texts(20, 1), texts(10, 2), config(), &y, &x)
            .unwrap();
    run(opt, x, y.clone(), "hyper-opt");

    let clean =
        HyperClean::<f64, Classifier, 20, 3, 2>::new(texts(20, 1), texts(10, 2), config(), 1e-3)
            .unwrap();
    run(clean, dev.ones(), y, "hyper-clean");

    let tasks = (0..4)
        .map(|i| Task {
            support: (i * 6..i * 6 + 3).collect(),
            query: (i * 6 + 3..i * 6 + 6).collect(),
        })
        .collect();
    let rep =
        HyperRep::<f64, Encoder, Head, 4, 3, 2>::new(texts(24, 3), tasks, 2, 5, 1e-3).unwrap();
    run(
        rep,
        Encoder::build(&dev),
        Repeated::<Head, 4>::build(&dev),
        "hyper-rep",
    );
}
