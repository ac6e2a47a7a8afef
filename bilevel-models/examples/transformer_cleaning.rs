//! Data hyper-cleaning with a transformer made only of dfdx modules: learn one weight logit per
//! training sequence (x ∈ R²⁰⁰) so that a small transformer classifier (y: an `Embedding`, a
//! `TransformerEncoderBlock`, a mean over the steps and a `Linear` head) trained on the weighted
//! loss does well on clean validation data. 30% of the training labels are flipped; a good x
//! gives them low weights.
//!
//! The model needs no calculus from its user: `classifier::loss` and `add_loss_gradient` are its
//! loss and written gradient, and the library forms exact H·v and J·v through the attention. The
//! problem is checked (`bilevel_optim::check`), then solved by BO-REP.
//!
//!     cargo run --release -p bilevel-models --example transformer_cleaning

use bilevel_models::classifier::{add_loss_gradient, logits, loss};
use bilevel_models::embedding::TokenSteps;
use bilevel_models::loss::{accuracy, one_hot};
use bilevel_models::penalty::{add_l2_gradient, l2_penalty, FixedL2};
use bilevel_models::pool::MeanPoolSteps;
use bilevel_optim::check::{check_problem, CheckConfig};
use bilevel_optim::methods::borep::BoRepConfig;
use bilevel_optim::methods::MethodConfig;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::problem::{Batch, BilevelProblem, SampleRng, Taped, Tp};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

const VOCAB: usize = 16;
const STEPS: usize = 6;
const TRAIN: usize = 200;

// ---- The user's problem. ----
type Arch = (
    (Embedding<VOCAB, 8>, TransformerEncoderBlock<8, 2, 16>),
    MeanPoolSteps,
    Linear<8, 2>,
);
type Model = <Arch as BuildOnDevice<Cpu, f64>>::Built;
type WeightLogits = Tensor<Rank1<TRAIN>, f64, Cpu>;

#[derive(Clone)]
struct Data {
    ids: TokenSteps,
    labels: Vec<usize>,
    /// Each row's index in the training set (the weight it reads).
    rows: Tensor<(usize,), usize, Cpu>,
}
impl Batch for Data {
    fn size(&self) -> usize {
        self.labels.len()
    }
}

struct Cleaning {
    train: Data,
    val: Data,
}

/// σ(λ_i) for the batch's training rows.
fn weights(x: &WeightLogits, b: &Data) -> Taped<(usize,), f64> {
    x.retaped::<Tp<f64>>().gather(b.rows.clone()).sigmoid()
}

impl BilevelProblem<f64> for Cleaning {
    type X = WeightLogits;
    type Y = Model;
    type UpperBatch = Data;
    type LowerBatch = Data;
    fn sample_upper(&mut self, rng: &mut SampleRng) -> Data {
        self.val.sample(rng, 32)
    }
    fn sample_lower(&mut self, rng: &mut SampleRng) -> Data {
        self.train.sample(rng, 32)
    }
    fn upper_loss(&self, _: &WeightLogits, y: &Model, b: &Data) -> Taped<Rank0, f64> {
        loss(y, b.ids.clone(), &one_hot(&b.labels), None)
    }
    /// `(1/B) Σ_i σ(λ_i) CE_i + ½ 10⁻³ ‖y‖²`.
    fn lower_loss(&self, x: &WeightLogits, y: &Model, b: &Data) -> Taped<Rank0, f64> {
        loss(y, b.ids.clone(), &one_hot(&b.labels), Some(weights(x, b)))
            + l2_penalty(&FixedL2(1e-3), y)
    }
    fn write_lower_grad_y(
        &self,
        x: &WeightLogits,
        y: &Model,
        b: &Data,
        grad: &mut bilevel_optim::written_grad::WrittenGrad<f64>,
    ) {
        let w = Some(weights(x, b));
        add_loss_gradient(y, b.ids.clone(), &one_hot(&b.labels), w, grad);
        add_l2_gradient(&FixedL2(1e-3), y, grad);
    }
}
// ---- End of the user's problem. ----

impl Data {
    /// `n` sequences whose label says whether token 1 occurs in them, the first `flipped` of
    /// every ten labels flipped.
    fn synthetic(n: usize, flipped: usize, rng: &mut SampleRng) -> (Self, Vec<bool>) {
        let ids: Vec<usize> = (0..n * STEPS).map(|_| rng.gen_range(0..VOCAB)).collect();
        let noisy: Vec<bool> = (0..n).map(|i| i % 10 < flipped).collect();
        let labels = ids
            .chunks(STEPS)
            .zip(&noisy)
            .map(|(text, &flip)| usize::from(text.contains(&1) != flip))
            .collect();
        let data = Self {
            ids: Cpu::default().tensor_from_vec(ids, (n, STEPS)),
            labels,
            rows: Cpu::default().tensor_from_vec((0..n).collect(), (n,)),
        };
        (data, noisy)
    }

    /// `n` sequences drawn with replacement.
    fn sample(&self, rng: &mut SampleRng, n: usize) -> Self {
        let picked: Vec<usize> = (0..n).map(|_| rng.gen_range(0..self.size())).collect();
        let ids = self.ids.as_vec();
        let dev = Cpu::default();
        Self {
            ids: dev.tensor_from_vec(
                picked
                    .iter()
                    .flat_map(|&r| ids[r * STEPS..(r + 1) * STEPS].to_vec())
                    .collect(),
                (n, STEPS),
            ),
            labels: picked.iter().map(|&r| self.labels[r]).collect(),
            rows: dev.tensor_from_vec(picked, (n,)),
        }
    }
}

fn validation_accuracy(y: &Model, val: &Data) -> f64 {
    let out = logits(y, val.ids.clone());
    accuracy(&out.retaped::<NoneTape>(), &val.labels)
}

/// What a run found: validation accuracy before and after, and the mean weight of the clean and
/// of the flipped training sequences.
pub struct Outcome {
    pub accuracy_before: f64,
    pub accuracy_after: f64,
    pub clean_weight: f64,
    pub flipped_weight: f64,
}

/// Checks the problem, then runs BO-REP for `iterations` iterations, printing as it goes.
pub fn run(iterations: usize) -> Result<Outcome, Box<dyn std::error::Error>> {
    let mut rng = SampleRng::seed_from_u64(3);
    let (train, noisy) = Data::synthetic(TRAIN, 3, &mut rng);
    let (val, _) = Data::synthetic(300, 0, &mut rng);
    let mut problem = Cleaning {
        train,
        val: val.clone(),
    };
    let dev = Cpu::seed_from_u64(0);
    let (x0, y0): (WeightLogits, Model) = (dev.zeros(), dev.build_module::<Arch, f64>());

    // 1. Check the written gradient and the exact products through the attention.
    let report = check_problem(&mut problem, &x0, &y0, &CheckConfig::for_precision::<f64>());
    println!("{report}\n");
    report.into_result()?;

    // 2. BO-REP with normalized steps of length 1 on the weight logits.
    let config = BoRepConfig {
        eta: 1.0,
        gamma: 0.1,
        ..BoRepConfig::default()
    };
    let mut method = MethodConfig::new(config).build(&x0, &y0, &problem)?;
    let (mut x, mut y) = (x0, y0);
    let mut oracles = Oracles::new(problem, 0);
    let accuracy_before = validation_accuracy(&y, &val);
    println!("validation accuracy at the start: {accuracy_before:.3}");
    for t in 1..=iterations {
        method.step(&mut oracles, &mut x, &mut y)?;
        if t % 100 == 0 {
            println!(
                "iteration {t}: validation accuracy {:.3}",
                validation_accuracy(&y, &val)
            );
        }
    }
    let weights: Vec<f64> = x
        .as_vec()
        .iter()
        .map(|l| 1.0 / (1.0 + (-l).exp()))
        .collect();
    let mean = |flipped: bool| {
        let picked: Vec<f64> = (0..TRAIN)
            .filter(|&i| noisy[i] == flipped)
            .map(|i| weights[i])
            .collect();
        picked.iter().sum::<f64>() / picked.len() as f64
    };
    let outcome = Outcome {
        accuracy_before,
        accuracy_after: validation_accuracy(&y, &val),
        clean_weight: mean(false),
        flipped_weight: mean(true),
    };
    println!(
        "mean weight σ(λ): clean sequences {:.3}, flipped ones {:.3}",
        outcome.clean_weight, outcome.flipped_weight
    );
    Ok(outcome)
}

#[allow(dead_code)] // A test includes this file for `run` and runs it itself.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(300).map(|_| ())
}
