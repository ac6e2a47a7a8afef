//! Data hyper-cleaning on Sentiment140: learn one weight σ(λ_i) per training tweet, a fixed
//! fraction of whose labels are flipped, so that a classifier trained on the weighted loss does
//! well on a clean validation set.

use super::model::ModelName;
use super::task::{Settings, Task, TaskProblem, TaskVisitor};
use std::path::Path;

use anyhow::{bail, Context};
use bilevel_models::classifier::cpu;
use bilevel_models::forms::{BatchConfig, HyperClean};
use bilevel_models::text::EmbeddedTexts;
use bilevel_optim::methods::borep::{BoRepConfig, InitRefinement};
use bilevel_optim::real::Real;
use dfdx::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::common::{embed, measure, TaskClassifier, Vocabulary, C, EMB};
use super::{load_word_vectors, Metrics};
use crate::data::tweets::{load_lines, load_sentiment140_csv};
use crate::data::LabelledText;

/// Training-set sizes the bench is compiled for (x has one entry per training tweet, and its
/// length is part of its type): the default of `tasks.md`, and a small one for quick runs.
pub const SIZES: [usize; 2] = [20_000, 2_000];

/// Data hyper-cleaning's settings (the `[hyper_clean]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HyperCleanConfig {
    /// Training tweets, balanced (one of [`SIZES`]).
    pub train_size: usize,
    /// Clean validation tweets, balanced.
    pub validation_size: usize,
    /// Test tweets, balanced, disjoint from the others.
    pub test_size: usize,
    /// p: the fraction of training labels flipped once per seed.
    pub corruption: f64,
    /// Tweets per batch at both levels.
    pub batch: usize,
    /// T: tokens kept per tweet.
    pub max_len: usize,
    /// μ of the L2 term.
    pub mu: f64,
    /// Initial λ_i.
    pub weight_logit_init: f64,
    /// Training tweets whose loss and accuracy are reported at each evaluation.
    pub train_eval_size: usize,
}

impl Default for HyperCleanConfig {
    fn default() -> Self {
        Self {
            train_size: 20_000,
            validation_size: 2_000,
            test_size: 10_000,
            corruption: 0.3,
            batch: 256,
            max_len: 32,
            mu: 1e-3,
            weight_logit_init: 1.0,
            train_eval_size: 2_000,
        }
    }
}

impl Settings for HyperCleanConfig {
    /// Checks every value, naming the first one out of range.
    fn validate(&self) -> anyhow::Result<()> {
        if !SIZES.contains(&self.train_size) {
            bail!("hyper_clean.train_size must be one of {SIZES:?} (the weights' length is compiled in), got {}", self.train_size);
        }
        if !(0.0..=1.0).contains(&self.corruption) {
            bail!(
                "hyper_clean.corruption must be in [0, 1], got {}",
                self.corruption
            );
        }
        for (field, v) in [
            ("batch", self.batch),
            ("max_len", self.max_len),
            ("validation_size", self.validation_size),
            ("test_size", self.test_size),
            // Zero would report the training accuracy and loss as 0.
            ("train_eval_size", self.train_eval_size),
        ] {
            if v == 0 {
                bail!("hyper_clean.{field} must be at least 1");
            }
        }
        if !(self.mu > 0.0 && self.mu.is_finite()) {
            bail!("hyper_clean.mu must be a positive number, got {}", self.mu);
        }
        // NaN or infinite weights would surface only later, as a divergence.
        if !self.weight_logit_init.is_finite() {
            bail!(
                "hyper_clean.weight_logit_init must be a finite number, got {}",
                self.weight_logit_init
            );
        }
        Ok(())
    }
}

/// The splits of one seed.
pub struct HyperCleanData {
    /// The training tweets, some labels flipped.
    pub train: EmbeddedTexts,
    /// Which training labels were flipped.
    pub corrupted: Vec<bool>,
    /// The clean validation tweets.
    pub validation: EmbeddedTexts,
    /// The clean test tweets.
    pub test: EmbeddedTexts,
    /// The hand-labelled test file (positive and negative rows).
    pub manual_test: EmbeddedTexts,
    /// Tokens kept per tweet.
    pub max_len: usize,
}

/// Loads the tweets, draws balanced disjoint splits and flips a fixed fraction of the training
/// labels, all from `seed`.
pub fn load(
    data_dir: &Path,
    config: &HyperCleanConfig,
    seed: u64,
) -> anyhow::Result<HyperCleanData> {
    config.validate()?;
    let dir = data_dir.join("sentiment140");
    let negative = load_lines(&dir.join("tweets_100k_head50k_negative.txt"), 0)?;
    let positive = load_lines(&dir.join("tweets_100k_tail50k_positive.txt"), 1)?;
    let manual: Vec<LabelledText> =
        load_sentiment140_csv(&dir.join("testdata.manual.2009.06.14.csv"))?
            .into_iter()
            .filter_map(|(text, label)| {
                label.map(|label| LabelledText {
                    text,
                    label,
                    domain: String::new(),
                })
            })
            .collect();
    let halves = [
        config.train_size / 2,
        config.validation_size / 2,
        config.test_size / 2,
    ];
    let needed: usize = halves.iter().sum();
    for (name, class) in [("negative", &negative), ("positive", &positive)] {
        if class.len() < needed {
            bail!(
                "{needed} {name} tweets are needed for the splits, the data has {}",
                class.len()
            );
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut splits: [Vec<LabelledText>; 3] = Default::default();
    for class in [&negative, &positive] {
        let mut order: Vec<usize> = (0..class.len()).collect();
        order.shuffle(&mut rng);
        let mut at = 0;
        for (split, &half) in splits.iter_mut().zip(&halves) {
            split.extend(order[at..at + half].iter().map(|&i| class[i].clone()));
            at += half;
        }
    }
    let [mut train, validation, test] = splits;
    train.shuffle(&mut rng);
    let flips = (config.corruption * train.len() as f64).round() as usize;
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut rng);
    let mut corrupted = vec![false; train.len()];
    for &i in &order[..flips] {
        corrupted[i] = true;
        train[i].label = 1 - train[i].label;
    }

    let glove = load_word_vectors(data_dir)?;
    let mut vocab = Vocabulary::default();
    let encoded: Vec<_> = [&train, &validation, &test, &manual]
        .into_iter()
        .map(|s| embed(s, &mut vocab, &glove, true, config.max_len))
        .collect();
    let mut sets = encoded
        .into_iter()
        .map(|(texts, labels)| vocab.collection(EMB, texts, labels))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("building the tweet collections")?;
    let manual_test = sets.pop().expect("four sets");
    let test = sets.pop().expect("four sets");
    let validation = sets.pop().expect("four sets");
    let train = sets.pop().expect("four sets");
    Ok(HyperCleanData {
        train,
        corrupted,
        validation,
        test,
        manual_test,
        max_len: config.max_len,
    })
}

/// The bilevel problem with `N` training tweets and classifier `Y` (by default the recurrent
/// one), in precision `F`.
pub type Problem<F, const N: usize, Y = cpu::Classifier<F>> = HyperClean<F, Y, N, EMB, C>;

/// The bilevel problem over `data`'s training and validation splits.
pub fn problem<F: Real, Y, const N: usize>(
    data: &HyperCleanData,
    config: &HyperCleanConfig,
) -> anyhow::Result<Problem<F, N, Y>>
where
    Cpu: Device<F>,
{
    let batches = BatchConfig {
        lower_batch: config.batch,
        upper_batch: config.batch,
        max_len: config.max_len,
    };
    HyperClean::new(
        data.train.clone(),
        data.validation.clone(),
        batches,
        config.mu,
    )
    .map_err(anyhow::Error::msg)
}

/// λ initialised to `weight_logit_init` for every tweet.
pub fn initial_weights<F: Real, const N: usize>(
    config: &HyperCleanConfig,
) -> Tensor<Rank1<N>, F, Cpu>
where
    Cpu: Device<F>,
{
    bilevel_optim::real::device().ones::<Rank1<N>>() * F::of(config.weight_logit_init)
}

/// Loss and accuracy on every split, and how well small weights find the flipped labels.
pub fn evaluate<F: Real, Y: TaskClassifier<F>, const N: usize>(
    data: &HyperCleanData,
    config: &HyperCleanConfig,
    x: &Tensor<Rank1<N>, F, Cpu>,
    y: &Y,
) -> Metrics
where
    Cpu: Device<F>,
{
    let mut m = Metrics::new();
    let n_train = config.train_eval_size.min(data.train.len());
    let train_subset = data.train.subset(&(0..n_train).collect::<Vec<_>>());
    for (name, set) in [
        ("train", &train_subset),
        ("validation", &data.validation),
        ("test", &data.test),
        ("manual_test", &data.manual_test),
    ] {
        // An empty set (an empty hand-labelled file) is not evaluated rather than scored 0.
        if let Some((loss, acc)) = measure::<F, _, EMB>(y, set, data.max_len) {
            m.insert(format!("{name}/loss"), loss);
            m.insert(format!("{name}/accuracy"), acc);
        }
    }
    let weights: Vec<f64> = x
        .as_vec()
        .iter()
        .map(|&l| 1.0 / (1.0 + (-l.f64()).exp()))
        .collect();
    let mean = |pick: bool| {
        let (s, n) = weights
            .iter()
            .zip(&data.corrupted)
            .filter(|(_, &c)| c == pick)
            .fold((0.0, 0), |(s, n), (w, _)| (s + w, n + 1));
        s / n.max(1) as f64
    };
    m.insert("weights/mean_corrupted".into(), mean(true));
    m.insert("weights/mean_clean".into(), mean(false));
    let flagged: Vec<bool> = weights.iter().map(|&w| w < 0.5).collect();
    let true_pos = flagged
        .iter()
        .zip(&data.corrupted)
        .filter(|(&f, &c)| f && c)
        .count() as f64;
    let flagged_n = flagged.iter().filter(|&&f| f).count() as f64;
    let corrupted_n = data.corrupted.iter().filter(|&&c| c).count() as f64;
    m.insert(
        "detection/precision".into(),
        if flagged_n > 0.0 {
            true_pos / flagged_n
        } else {
            0.0
        },
    );
    m.insert(
        "detection/recall".into(),
        if corrupted_n > 0.0 {
            true_pos / corrupted_n
        } else {
            0.0
        },
    );
    m
}

/// Data hyper-cleaning on Sentiment140 (`[hyper_clean]`).
pub struct HyperCleanTask;

impl Task for HyperCleanTask {
    const NAME: &'static str = "hyper-clean";
    type Config = HyperCleanConfig;

    /// BO-REP with the official code's values for this task (`data_cleaning/main.py`, README,
    /// run.sh): γ = η = 5e-2, I = 2, N = 10; the rest as the library's default (the official
    /// hyper-representation run, its sources marked on [`BoRepConfig::default`]).
    fn official_borep() -> BoRepConfig {
        BoRepConfig {
            // Official code: outer_update_lr.
            eta: 5e-2,
            // Official code: inner_update_lr.
            gamma: 5e-2,
            // Official code: interval.
            period: 2,
            // Official code: y_warm_start = 10 (the code runs one step more; not reproduced).
            lower_steps: 10,
            init_refinement: InitRefinement::Sgd { steps: 10 },
            ..BoRepConfig::default()
        }
    }

    fn with_problem<F: Real, V: TaskVisitor<F>>(
        c: &HyperCleanConfig,
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
        match (model, c.train_size) {
            (ModelName::Rnn, 20_000) => {
                visit::<F, _, _, 20_000>(model, data, c, cpu::Classifier::build(dev), visitor)
            }
            (ModelName::Rnn, _) => {
                visit::<F, _, _, 2_000>(model, data, c, cpu::Classifier::build(dev), visitor)
            }
            (ModelName::Transformer, 20_000) => visit::<F, _, _, 20_000>(
                model,
                data,
                c,
                cpu::TransformerClassifier::build(dev),
                visitor,
            ),
            (ModelName::Transformer, _) => visit::<F, _, _, 2_000>(
                model,
                data,
                c,
                cpu::TransformerClassifier::build(dev),
                visitor,
            ),
        }
    }
}

/// Hands the problem with `N` training tweets and classifier `y` to `visitor`.
fn visit<F: Real, Y, V: TaskVisitor<F>, const N: usize>(
    model: ModelName,
    data: &HyperCleanData,
    c: &HyperCleanConfig,
    y: Y,
    visitor: V,
) -> anyhow::Result<V::Output>
where
    Cpu: Device<F>,
    Y: TaskClassifier<F>,
    Problem<F, N, Y>: TaskProblem<F, UpperVariable = Tensor<Rank1<N>, F, Cpu>, LowerVariable = Y>,
{
    visitor.visit(
        &model.describe(&format!("{N} training tweets")),
        problem::<F, Y, N>(data, c)?,
        initial_weights(c),
        y,
        |x: &_, y: &_| evaluate(data, c, x, y),
    )
}
