//! Hyper-representation (meta-learning) on Amazon reviews (ARSC): a shared encoder x and one head
//! per training task y_i, on 2-way 10-shot tasks drawn from product domains.

use super::model::ModelName;
use super::task::{self, Settings, TaskProblem, TaskVisitor};
use bilevel_optim::methods::MethodConfig;
use std::path::Path;

use anyhow::{bail, Context};
use bilevel_models::classifier::{add_loss_gradient, cpu, logits};
use bilevel_models::forms::{HyperRep, Task, TaskDraws};
use bilevel_models::loss::{accuracy, cross_entropy};
use bilevel_models::penalty::{add_l2_gradient, FixedL2};
use bilevel_models::text::EmbeddedTexts;
use bilevel_optim::methods::borep::BoRepConfig;
use bilevel_optim::params::Params;
use bilevel_optim::problem::Tp;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::common::{embed, TaskEncoder, Vocabulary, C, EMB};
use super::{load_word_vectors, Metrics};
use crate::data::reviews::load_arsc;
use crate::data::LabelledText;

/// Numbers of training tasks the bench is compiled for (one head each, part of y's type): the
/// default of `tasks.md`, and a small one for quick runs.
pub const TASK_COUNTS: [usize; 2] = [400, 40];

/// The test domains of the BO-REP setup; every other listed domain is a training domain.
pub const TEST_DOMAINS: [&str; 3] = ["office_products", "automotive", "computer_video_games"];

/// Hyper-representation's settings (the `[hyper_rep]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HyperRepConfig {
    /// Training tasks, one head each (one of [`TASK_COUNTS`]).
    pub train_tasks: usize,
    /// Test tasks, from the test domains.
    pub test_tasks: usize,
    /// Validation tasks: new tasks from the training domains, scored like the test tasks (a
    /// fresh head fitted per task), so that `tune` can choose steps without seeing the test
    /// domains. `tasks.md` defines none; they are drawn after the test tasks, so a seed's
    /// training and test tasks do not depend on their number. 0 turns them off.
    pub validation_tasks: usize,
    /// Support (and query) reviews per class and task.
    pub shots: usize,
    /// Tasks per outer iteration.
    pub tasks_per_batch: usize,
    /// When the task batch is drawn: `per-iteration` (one batch per iteration, its supports
    /// every lower batch and its queries every upper batch: the meta-learning convention and
    /// the peer's) or `per-lower-draw` (new tasks at every lower batch, the runs before
    /// 2026-12-07).
    pub task_draws: TaskDraws,
    /// T: tokens kept per review.
    pub max_len: usize,
    /// μ of the heads' L2 term.
    pub mu: f64,
    /// Test-time adaptation: full-batch gradient steps on a fresh head, and their step.
    pub test_steps: usize,
    /// The step of the gradient descent that fits a test task's head.
    pub test_step: f64,
}

impl Default for HyperRepConfig {
    fn default() -> Self {
        Self {
            train_tasks: 400,
            test_tasks: 50,
            validation_tasks: 50,
            shots: 10,
            tasks_per_batch: 20,
            task_draws: TaskDraws::PerIteration,
            max_len: 64,
            mu: 1e-3,
            test_steps: 100,
            test_step: 0.1,
        }
    }
}

impl Settings for HyperRepConfig {
    /// Checks every value, naming the first one out of range.
    fn validate(&self) -> anyhow::Result<()> {
        if !TASK_COUNTS.contains(&self.train_tasks) {
            bail!("hyper_rep.train_tasks must be one of {TASK_COUNTS:?} (the heads are compiled in), got {}", self.train_tasks);
        }
        for (field, v) in [
            ("test_tasks", self.test_tasks),
            ("shots", self.shots),
            ("tasks_per_batch", self.tasks_per_batch),
            ("max_len", self.max_len),
        ] {
            if v == 0 {
                bail!("hyper_rep.{field} must be at least 1");
            }
        }
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if !positive(self.mu) || !positive(self.test_step) {
            bail!("hyper_rep.mu and hyper_rep.test_step must be positive numbers");
        }
        Ok(())
    }
}

/// The texts and tasks of one seed.
pub struct HyperRepData {
    /// Every review any task uses.
    pub texts: EmbeddedTexts,
    /// The training tasks (one head of y each).
    pub train_tasks: Vec<Task>,
    /// The test tasks.
    pub test_tasks: Vec<Task>,
    /// The validation tasks (training domains, unseen tasks).
    pub validation_tasks: Vec<Task>,
    /// Tokens kept per review.
    pub max_len: usize,
}

/// A domain's pool: all its t4 reviews (train, dev and test files together).
fn domain_pool(
    dir: &Path,
    domain: &str,
    missing: &mut Vec<String>,
) -> anyhow::Result<Vec<LabelledText>> {
    let mut pool = Vec::new();
    for part in ["train", "dev", "test"] {
        let name = format!("{domain}.t4.{part}");
        let path = dir.join(&name);
        if path.exists() {
            pool.extend(load_arsc(&path, domain)?);
        } else {
            missing.push(name);
        }
    }
    if pool.is_empty() {
        bail!("domain '{domain}' has no t4 file in {}", dir.display());
    }
    Ok(pool)
}

/// Draws `count` tasks from `domains` (a domain with probability proportional to its size), each
/// with `shots` support and `shots` query reviews per class, and appends their reviews to `texts`.
fn draw_tasks(
    domains: &[(String, Vec<LabelledText>)],
    count: usize,
    shots: usize,
    rng: &mut impl Rng,
    texts: &mut Vec<LabelledText>,
) -> anyhow::Result<Vec<Task>> {
    let total: usize = domains.iter().map(|(_, p)| p.len()).sum();
    (0..count)
        .map(|_| {
            let mut pick = rng.gen_range(0..total);
            let (name, pool) = domains
                .iter()
                .find(|(_, p)| {
                    let hit = pick < p.len();
                    pick = pick.saturating_sub(p.len());
                    hit
                })
                .expect("pick < total");
            let mut task = Task {
                support: Vec::new(),
                query: Vec::new(),
            };
            for class in 0..C {
                let mut members: Vec<&LabelledText> =
                    pool.iter().filter(|t| t.label == class).collect();
                if members.len() < 2 * shots {
                    bail!(
                        "domain '{name}' has {} reviews of class {class}, a task needs {}",
                        members.len(),
                        2 * shots
                    );
                }
                members.shuffle(rng);
                for (k, review) in members[..2 * shots].iter().enumerate() {
                    let set = if k < shots {
                        &mut task.support
                    } else {
                        &mut task.query
                    };
                    set.push(texts.len());
                    texts.push((*review).clone());
                }
            }
            Ok(task)
        })
        .collect()
}

/// Loads the ARSC reviews and GloVe from `data_dir` and draws the tasks with `seed`.
pub fn load(data_dir: &Path, config: &HyperRepConfig, seed: u64) -> anyhow::Result<HyperRepData> {
    config.validate()?;
    let dir = data_dir.join("amazon_arsc_yu2018");
    let list_path = dir.join("workspace.filtered.list");
    let list = crate::data::read_text(&list_path)
        .with_context(|| format!("{}: cannot read the domain list", list_path.display()))?;
    let (mut train_domains, mut test_domains) = (Vec::new(), Vec::new());
    let mut missing = Vec::new();
    for domain in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let entry = (domain.to_string(), domain_pool(&dir, domain, &mut missing)?);
        if TEST_DOMAINS.contains(&domain) {
            test_domains.push(entry);
        } else {
            train_domains.push(entry);
        }
    }
    if !missing.is_empty() {
        crate::data::say_once(
            &dir,
            &format!(
                "note: {}: {} listed split(s) missing ({}); those domains' pools are their other \
                 splits",
                dir.display(),
                missing.len(),
                missing.join(", ")
            ),
        );
    }
    if test_domains.len() != TEST_DOMAINS.len() {
        bail!(
            "{}: the test domains {TEST_DOMAINS:?} must all be listed",
            list_path.display()
        );
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut texts = Vec::new();
    let train_tasks = draw_tasks(
        &train_domains,
        config.train_tasks,
        config.shots,
        &mut rng,
        &mut texts,
    )?;
    let test_tasks = draw_tasks(
        &test_domains,
        config.test_tasks,
        config.shots,
        &mut rng,
        &mut texts,
    )?;
    let validation_tasks = draw_tasks(
        &train_domains,
        config.validation_tasks,
        config.shots,
        &mut rng,
        &mut texts,
    )?;
    let glove = load_word_vectors(data_dir)?;
    let mut vocab = Vocabulary::default();
    let (ids, labels) = embed(&texts, &mut vocab, &glove, false, config.max_len);
    Ok(HyperRepData {
        texts: vocab.collection(EMB, ids, labels)?,
        train_tasks,
        test_tasks,
        validation_tasks,
        max_len: config.max_len,
    })
}

/// The bilevel problem with `NT` training tasks and encoder `X` (by default the recurrent one),
/// in precision `F`.
pub type Problem<F, const NT: usize, X = cpu::Encoder<F>> =
    HyperRep<F, X, cpu::Head<F>, NT, EMB, C>;

/// The bilevel problem over `data`'s texts and training tasks.
pub fn problem<F: Real, X, const NT: usize>(
    data: &HyperRepData,
    config: &HyperRepConfig,
) -> anyhow::Result<Problem<F, NT, X>>
where
    Cpu: Device<F>,
{
    Ok(HyperRep::new(
        data.texts.clone(),
        data.train_tasks.clone(),
        config.tasks_per_batch,
        config.max_len,
        config.mu,
    )
    .map_err(anyhow::Error::msg)?
    .with_task_draws(config.task_draws))
}

type Features<F> = Tensor<(usize, Const<{ cpu::HIDDEN }>), F, Cpu>;

/// The encoder's features of `ids` (no tape).
fn features<F: Real, X: TaskEncoder<F>>(
    x: &X,
    texts: &EmbeddedTexts,
    ids: &[usize],
    max_len: usize,
) -> (Features<F>, Vec<usize>)
where
    Cpu: Device<F>,
{
    let batch = texts.batch::<F, EMB>(ids, max_len);
    (
        x.forward(batch.sequence()).0.retaped::<NoneTape>(),
        batch.labels,
    )
}

/// Fits a head from `init` on the support features by full-batch gradient descent on
/// `CE + (μ/2)‖θ‖²`, with the head's written gradient.
fn fit_head<F: Real>(
    init: &cpu::Head<F>,
    support: &Features<F>,
    labels: &[usize],
    config: &HyperRepConfig,
) -> cpu::Head<F>
where
    Cpu: Device<F>,
{
    let mut head = init.duplicate();
    let targets = bilevel_models::loss::one_hot::<F, C>(labels);
    for _ in 0..config.test_steps {
        let mut grads = WrittenGrad::new(&head, None);
        add_loss_gradient(
            &head,
            support.retaped::<Tp<F>>(),
            &targets,
            None,
            &mut grads,
        );
        add_l2_gradient(&FixedL2(config.mu), &head, &mut grads);
        let g = grads
            .into_value(&head)
            .expect("every head tensor has a component");
        head.add_scaled(-F::of(config.test_step), &g);
    }
    head
}

/// Mean query loss and accuracy over `tasks` after fitting a fresh head per task, the heads
/// drawn from a device seeded with `head_seed` (the same heads at every evaluation).
fn adapt_and_score<F: Real, X: TaskEncoder<F>>(
    data: &HyperRepData,
    config: &HyperRepConfig,
    x: &X,
    tasks: &[Task],
    head_seed: u64,
) -> (f64, f64)
where
    Cpu: Device<F>,
{
    let dev = Cpu::seed_from_u64(head_seed);
    let (mut loss, mut acc) = (0.0, 0.0);
    for task in tasks {
        let init = cpu::Head::<F>::build(&dev);
        let (support, support_labels) = features(x, &data.texts, &task.support, data.max_len);
        let head = fit_head(&init, &support, &support_labels, config);
        let (query, query_labels) = features(x, &data.texts, &task.query, data.max_len);
        let out = logits(&head, query.retaped::<Tp<F>>());
        let held = out.retaped::<NoneTape>();
        loss += cross_entropy(
            out,
            &bilevel_models::loss::one_hot::<F, C>(&query_labels),
            None,
        )
        .array()
        .f64();
        acc += accuracy::<F, C>(&held, &query_labels);
    }
    let n = tasks.len().max(1) as f64;
    (loss / n, acc / n)
}

/// Mean query loss and accuracy over the test tasks and, if there are any, the validation tasks.
pub fn evaluate<F: Real, X: TaskEncoder<F>>(
    data: &HyperRepData,
    config: &HyperRepConfig,
    x: &X,
    seed: u64,
) -> Metrics
where
    Cpu: Device<F>,
{
    let mut metrics = Metrics::new();
    let splits = [
        ("test", &data.test_tasks, seed ^ 0x7e57),
        ("validation", &data.validation_tasks, seed ^ 0x7a1d),
    ];
    for (split, tasks, head_seed) in splits {
        if tasks.is_empty() {
            continue;
        }
        let (loss, acc) = adapt_and_score(data, config, x, tasks, head_seed);
        metrics.insert(format!("{split}/loss"), loss);
        metrics.insert(format!("{split}/accuracy"), acc);
    }
    metrics
}

/// Hyper-representation (meta-learning) on Amazon reviews (`[hyper_rep]`).
pub struct HyperRepTask;

impl task::Task for HyperRepTask {
    const NAME: &'static str = "hyper-rep";
    /// Every evaluation fits fresh heads on the encoder x ([`evaluate`]).
    const EVALUATES_X_ALONE: bool = true;
    type Config = HyperRepConfig;

    /// BO-REP with the official hyper-representation run's values: the library's default, whose
    /// values are marked with their sources on [`BoRepConfig::default`].
    fn official_borep() -> BoRepConfig {
        BoRepConfig::default()
    }

    /// Tuning needs the validation tasks drawn from the training domains.
    fn selection_metric(config: &HyperRepConfig) -> anyhow::Result<(&'static str, &'static str)> {
        if config.validation_tasks == 0 {
            bail!(
                "hyper_rep.validation_tasks is 0: hyper-rep needs validation tasks to tune on \
                 (tuning on its test tasks would report a tuned test score)"
            );
        }
        Ok(("validation/accuracy", "validation/loss"))
    }

    /// MAML is refused: it meta-learns y's initialization and never steps x (the encoder),
    /// while this task's metric fits fresh heads on x alone.
    fn validate(config: &HyperRepConfig, method: &MethodConfig) -> anyhow::Result<()> {
        if method.name() == "maml" {
            bail!(
                "method maml on hyper-rep: MAML meta-learns y's initialization and never steps x \
                 (the encoder), while hyper-rep's metric fits fresh heads on x alone, so every \
                 evaluation would score the random encoder; use anil, which learns the encoder \
                 and the heads' initialization through the adaptation, or maml-encoder, the lab's \
                 MAML, which learns the encoder from a fixed head initialization"
            );
        }
        config.validate()
    }

    fn with_problem<F: Real, V: TaskVisitor<F>>(
        c: &HyperRepConfig,
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
            || cpu::Encoder::<F>::build(dev),
            || cpu::Transformer::<F>::build(dev),
        );
        match (model, c.train_tasks) {
            (ModelName::Rnn, 400) => {
                visit::<F, _, _, 400>(model, data, c, seed, rnn(), dev, visitor)
            }
            (ModelName::Rnn, _) => visit::<F, _, _, 40>(model, data, c, seed, rnn(), dev, visitor),
            (ModelName::Transformer, 400) => {
                visit::<F, _, _, 400>(model, data, c, seed, transformer(), dev, visitor)
            }
            (ModelName::Transformer, _) => {
                visit::<F, _, _, 40>(model, data, c, seed, transformer(), dev, visitor)
            }
        }
    }
}

/// Hands the problem with `NT` training tasks and encoder `x` to `visitor`, with one fresh head
/// per task.
fn visit<F: Real, X, V: TaskVisitor<F>, const NT: usize>(
    model: ModelName,
    data: &HyperRepData,
    c: &HyperRepConfig,
    seed: u64,
    x: X,
    dev: &Cpu,
    visitor: V,
) -> anyhow::Result<V::Output>
where
    Cpu: Device<F>,
    X: TaskEncoder<F>,
    Problem<F, NT, X>: TaskProblem<
        F,
        UpperVariable = X,
        LowerVariable = dfdx::nn::modules::Repeated<cpu::Head<F>, NT>,
    >,
{
    visitor.visit(
        &model.describe(&format!("{NT} training tasks")),
        problem::<F, X, NT>(data, c)?,
        x,
        dfdx::nn::modules::Repeated::<cpu::Head<F>, NT>::build(dev),
        |x, _| evaluate(data, c, x, seed),
    )
}
