//! Hyperparameter optimization on Amazon reviews (FDU-MTL): learn one L2 log-coefficient per
//! parameter tensor of the classifier (or one shared) on a validation split.

use super::model::ModelName;
use super::task::{Settings, Task, TaskProblem, TaskVisitor};
use std::path::Path;

use anyhow::bail;
use bilevel_models::classifier::cpu;
use bilevel_models::forms::{BatchConfig, HyperOpt};
use bilevel_models::text::EmbeddedTexts;
use bilevel_optim::methods::borep::BoRepConfig;
use bilevel_optim::params::Params;
use bilevel_optim::real::Real;
use dfdx::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::common::{embed, measure, TaskClassifier, Vocabulary, C, EMB};
use super::{load_word_vectors, Metrics};
use crate::data::reviews::load_fdu_mtl;

/// The 14 Amazon domains of FDU-MTL (imdb and MR are not product reviews).
pub const DOMAINS: [&str; 14] = [
    "apparel",
    "baby",
    "books",
    "camera_photo",
    "dvd",
    "electronics",
    "health_personal_care",
    "kitchen_housewares",
    "magazines",
    "music",
    "software",
    "sports_outdoors",
    "toys_games",
    "video",
];

/// Hyperparameter optimization's settings (the `[hyper_opt]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HyperOptConfig {
    /// Fraction of the training pool used for training (the rest is validation).
    pub train_fraction: f64,
    /// Reviews per batch at both levels.
    pub batch: usize,
    /// T: tokens kept per review.
    pub max_len: usize,
    /// Initial log-coefficient (log 1e-3).
    pub log_coefficient_init: f64,
    /// One coefficient shared by all tensors (the official code) instead of one per tensor.
    pub scalar_coefficient: bool,
    /// Training reviews whose loss and accuracy are reported at each evaluation (a seeded
    /// sample: the training split is shuffled).
    pub train_eval_size: usize,
    /// Reviews of validation and of test measured at each evaluation. Absent (the default):
    /// every one, as `tasks.md` reports. A number n: the first n of each split, which are a
    /// seeded sample across the 14 domains (both splits are shuffled), for quick runs and tests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_size: Option<usize>,
}

impl Default for HyperOptConfig {
    fn default() -> Self {
        Self {
            train_fraction: 0.8,
            batch: 64,
            max_len: 64,
            log_coefficient_init: (1e-3f64).ln(),
            scalar_coefficient: false,
            train_eval_size: 2_000,
            eval_size: None,
        }
    }
}

impl Settings for HyperOptConfig {
    /// Checks every value, naming the first one out of range.
    fn validate(&self) -> anyhow::Result<()> {
        if !(self.train_fraction > 0.0 && self.train_fraction < 1.0) {
            bail!(
                "hyper_opt.train_fraction must be in (0, 1), got {}",
                self.train_fraction
            );
        }
        if self.batch == 0
            || self.max_len == 0
            || self.train_eval_size == 0
            || self.eval_size == Some(0)
        {
            bail!("hyper_opt.batch, max_len, train_eval_size and eval_size must be at least 1");
        }
        if !self.log_coefficient_init.is_finite() {
            bail!("hyper_opt.log_coefficient_init must be a finite number");
        }
        Ok(())
    }
}

/// The splits of one seed.
pub struct HyperOptData {
    /// The training reviews (the lower level).
    pub train: EmbeddedTexts,
    /// The validation reviews (the upper level).
    pub validation: EmbeddedTexts,
    /// The test reviews.
    pub test: EmbeddedTexts,
    /// Tokens kept per review.
    pub max_len: usize,
}

/// Loads the reviews and GloVe from `data_dir` and splits them with `seed`.
pub fn load(data_dir: &Path, config: &HyperOptConfig, seed: u64) -> anyhow::Result<HyperOptData> {
    config.validate()?;
    let dir = data_dir.join("amazon_fdu_mtl");
    let (mut pool, mut test) = (Vec::new(), Vec::new());
    for domain in DOMAINS {
        pool.extend(load_fdu_mtl(
            &dir.join(format!("{domain}.task.train")),
            domain,
        )?);
        test.extend(load_fdu_mtl(
            &dir.join(format!("{domain}.task.test")),
            domain,
        )?);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    pool.shuffle(&mut rng);
    // The test files come domain by domain; shuffled, any prefix samples every domain.
    test.shuffle(&mut rng);
    let cut = (pool.len() as f64 * config.train_fraction).round() as usize;
    let validation = pool.split_off(cut);
    for (name, set) in [
        ("training", &pool),
        ("validation", &validation),
        ("test", &test),
    ] {
        for class in 0..C {
            if !set.iter().any(|t| t.label == class) {
                bail!("the {name} split has no review of class {class}");
            }
        }
    }
    let glove = load_word_vectors(data_dir)?;
    let mut vocab = Vocabulary::default();
    let encoded: Vec<_> = [&pool, &validation, &test]
        .into_iter()
        .map(|s| embed(s, &mut vocab, &glove, false, config.max_len))
        .collect();
    let mut sets = encoded
        .into_iter()
        .map(|(t, l)| vocab.collection(EMB, t, l))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let test = sets.pop().expect("three");
    let validation = sets.pop().expect("three");
    let train = sets.pop().expect("three");
    Ok(HyperOptData {
        train,
        validation,
        test,
        max_len: config.max_len,
    })
}

/// x: one log-coefficient per tensor of the recurrent classifier.
pub type PerTensor<F> = Tensor<Rank1<{ cpu::CLASSIFIER_TENSORS }>, F, Cpu>;
/// x: one log-coefficient per tensor of the transformer classifier.
pub type TransformerPerTensor<F> = Tensor<Rank1<{ cpu::TRANSFORMER_CLASSIFIER_TENSORS }>, F, Cpu>;
/// x: one shared log-coefficient.
pub type Shared<F> = Tensor<Rank0, F, Cpu>;

/// The bilevel problem with coefficients `X` and classifier `Y` (by default the recurrent one),
/// in precision `F`.
pub type Problem<F, X, Y = cpu::Classifier<F>> = HyperOpt<F, Y, X, EMB, C>;

/// The bilevel problem over `data`'s training and validation splits.
pub fn problem<F: Real, X, Y>(
    data: &HyperOptData,
    config: &HyperOptConfig,
    y: &Y,
    x: &X,
) -> anyhow::Result<Problem<F, X, Y>>
where
    Cpu: Device<F>,
    X: Params<F> + bilevel_models::penalty::L2Coefficients<F>,
    Y: Params<F>,
{
    let batches = BatchConfig {
        lower_batch: config.batch,
        upper_batch: config.batch,
        max_len: config.max_len,
    };
    HyperOpt::new(data.train.clone(), data.validation.clone(), batches, y, x)
        .map_err(anyhow::Error::msg)
}

/// x filled with `log_coefficient_init`.
pub fn initial_coefficients<F: Real, X: Params<F>>(like: &X, config: &HyperOptConfig) -> X
where
    Cpu: Device<F>,
{
    let mut x = like.zeros_like();
    x.map_in_place(|s| {
        s.iter_mut()
            .for_each(|v| *v = F::of(config.log_coefficient_init))
    });
    x
}

/// Loss and accuracy on every split, and the mean log-coefficient.
pub fn evaluate<F: Real, X: Params<F>, Y: TaskClassifier<F>>(
    data: &HyperOptData,
    config: &HyperOptConfig,
    x: &X,
    y: &Y,
) -> Metrics
where
    Cpu: Device<F>,
{
    let mut m = Metrics::new();
    for (name, set) in [
        ("train", &data.train),
        ("validation", &data.validation),
        ("test", &data.test),
    ] {
        let cap = match name {
            "train" => config.train_eval_size,
            _ => config.eval_size.unwrap_or(usize::MAX),
        };
        let n = cap.min(set.len());
        let subset = set.subset(&(0..n).collect::<Vec<_>>());
        if let Some((loss, acc)) = measure::<F, _, EMB>(y, &subset, data.max_len) {
            m.insert(format!("{name}/loss"), loss);
            m.insert(format!("{name}/accuracy"), acc);
        }
    }
    let coefficients = x.to_flat();
    let mean =
        coefficients.iter().map(|&c| c.f64()).sum::<f64>() / coefficients.len().max(1) as f64;
    m.insert("coefficients/mean_log".into(), mean);
    m
}

/// Hyperparameter optimization (L2 coefficients) on Amazon reviews (`[hyper_opt]`).
pub struct HyperOptTask;

impl Task for HyperOptTask {
    const NAME: &'static str = "hyper-opt";
    type Config = HyperOptConfig;

    /// BO-REP with the official code's values for this task (`hyperparam_opt/main.py`, README):
    /// γ = 2e-3, η = 1e-4, I = 3; the rest as the library's default (the official
    /// hyper-representation run, its sources marked on [`BoRepConfig::default`]).
    fn official_borep() -> BoRepConfig {
        BoRepConfig {
            // Official code: outer_update_lr.
            eta: 1e-4,
            // Official code: inner_update_lr.
            gamma: 2e-3,
            // Official code: interval.
            period: 3,
            ..BoRepConfig::default()
        }
    }

    fn with_problem<F: Real, V: TaskVisitor<F>>(
        c: &HyperOptConfig,
        model: ModelName,
        seed: u64,
        data_dir: &Path,
        dev: &Cpu,
        visitor: V,
    ) -> anyhow::Result<V::Output>
    where
        Cpu: Device<F>,
    {
        let data = load(data_dir, c, seed)?;
        let data = &data;
        let (rnn, transformer) = (
            || cpu::Classifier::<F>::build(dev),
            || cpu::TransformerClassifier::<F>::build(dev),
        );
        let shared = || initial_coefficients::<F, Shared<F>>(&dev.zeros(), c);
        match (model, c.scalar_coefficient) {
            (ModelName::Rnn, true) => visit(model, data, c, shared(), rnn(), visitor),
            (ModelName::Rnn, false) => {
                let x: PerTensor<F> = initial_coefficients(&dev.zeros(), c);
                visit(model, data, c, x, rnn(), visitor)
            }
            (ModelName::Transformer, true) => {
                visit(model, data, c, shared(), transformer(), visitor)
            }
            (ModelName::Transformer, false) => {
                let x: TransformerPerTensor<F> = initial_coefficients(&dev.zeros(), c);
                visit(model, data, c, x, transformer(), visitor)
            }
        }
    }
}

/// Hands the problem with coefficients `x` and classifier `y` to `visitor`.
fn visit<F: Real, X, Y, V: TaskVisitor<F>>(
    model: ModelName,
    data: &HyperOptData,
    c: &HyperOptConfig,
    x: X,
    y: Y,
    visitor: V,
) -> anyhow::Result<V::Output>
where
    Cpu: Device<F>,
    X: Params<F> + bilevel_models::penalty::L2Coefficients<F>,
    Y: TaskClassifier<F> + Params<F>,
    Problem<F, X, Y>: TaskProblem<F, UpperVariable = X, LowerVariable = Y>,
{
    let variant = match x.tensors() {
        None => "one shared coefficient",
        Some(_) => "one coefficient per tensor",
    };
    visitor.visit(
        &model.describe(variant),
        problem(data, c, &y, &x)?,
        x,
        y,
        |x, y| evaluate(data, c, x, y),
    )
}
