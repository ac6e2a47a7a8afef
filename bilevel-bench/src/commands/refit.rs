//! `bilevel-bench refit`: judges a run's x by the lower problem alone. At the x of the run's last
//! checkpoint, y is trained by SGD on G(x, ·) (from the task's starting y, or from the run's own
//! y) on batches of the refit's own seed, then evaluated. A method's own y may have seen the
//! upper loss (BOME's does, docs/algorithms.md); the refit's y has not, so the figures of every
//! method judge the same thing: what its x makes of the lower problem, as when data weights
//! or regularization learned by a bilevel method are used to train a model afresh.

use std::path::Path;

use anyhow::Context;
use bilevel_optim::params::Params;
use bilevel_optim::real::Real;
use bilevel_optim::steps::{sgd_on_lower, Site};
use dfdx::prelude::Cpu;
use serde::{Deserialize, Serialize};

use crate::run::checkpoint::Checkpoint;
use crate::run::config::{RunConfig, TaskName};
use crate::run::durable;
use crate::run::iterate::AllocationCaches;
use crate::run::lock::RunLock;
use crate::run::processes::Processes;
use crate::tasks::common::E;
use crate::tasks::dispatch::{with_task, TaskProblem, TaskVisitor};
use crate::tasks::Metrics;

/// The file a refit writes into the run directory.
pub const FILE: &str = crate::run::REFIT_FILE;

/// Where the refit's y starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RefitStart {
    /// The task's starting y (the run's seed): a model trained afresh with the learned x.
    Initial,
    /// The run's own y at its last checkpoint, trained on.
    Final,
}

/// How to refit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefitOptions {
    /// SGD steps on the lower loss (0: evaluate the starting y as it is).
    pub steps: usize,
    /// Their step size.
    pub step: f64,
    /// Where y starts.
    pub from: RefitStart,
    /// The seed of the refit's lower batches.
    pub seed: u64,
}

impl RefitOptions {
    /// The options in words, for tables and logs: "1000 steps of 0.1 from the initial y, seed 0".
    pub fn describe(&self) -> String {
        let start = match self.from {
            RefitStart::Initial => "initial",
            RefitStart::Final => "run's",
        };
        format!(
            "{} steps of {} from the {start} y, seed {}",
            self.steps, self.step, self.seed
        )
    }

    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if !(self.step.is_finite() && self.step > 0.0) {
            anyhow::bail!("--step must be a positive number, not {}", self.step);
        }
        Ok(())
    }
}

impl std::str::FromStr for RefitOptions {
    type Err = String;

    /// Parses `STEPS:STEP` (for example `300:0.1`): from the initial y, seed 0.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("'{text}' is not STEPS:STEP (for example 300:0.1)");
        let (steps, step) = text.split_once(':').ok_or_else(bad)?;
        let options = RefitOptions {
            steps: steps.trim().parse().map_err(|_| bad())?,
            step: step.trim().parse().map_err(|_| bad())?,
            from: RefitStart::Initial,
            seed: 0,
        };
        options.validate().map_err(|e| format!("'{text}': {e}"))?;
        Ok(options)
    }
}

/// The run in `dir` refitted with `options`: its `refit.json` if that was made with them, else
/// a new refit.
pub fn refitted_with(data_dir: &Path, dir: &Path, options: &RefitOptions) -> anyhow::Result<Refit> {
    match Refit::read(dir) {
        Ok(Some(done)) if &done.options == options => Ok(done),
        _ => refit(data_dir, dir, options),
    }
}

/// Fails when `task`'s metrics cannot be changed by a refit of y (hyper-rep's fit fresh heads
/// on x alone at every evaluation).
pub fn check_task(task: TaskName) -> anyhow::Result<()> {
    if task.evaluates_x_alone() {
        anyhow::bail!(
            "{}'s metrics already fit fresh heads on x alone at every evaluation, so a refit of \
             y cannot change them; its results judge x as they are",
            task.as_str()
        );
    }
    Ok(())
}

/// What a refit measured, as `refit.json` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refit {
    /// The run's task.
    pub task: String,
    /// The run's method.
    pub method: String,
    /// The run's seed.
    pub run_seed: u64,
    /// The iteration of the checkpoint whose x was refitted (the run's last, or its last good
    /// one if it diverged).
    pub iteration: usize,
    /// How the refit ran.
    pub options: RefitOptions,
    /// The lower loss on the last SGD step's batch, if a step ran.
    pub last_lower_loss: Option<f64>,
    /// The task's metrics at the run's x and the refitted y.
    pub metrics: Metrics,
}

impl Refit {
    /// The `refit.json` of the run in `dir`, `None` if it has none, or an error naming the file
    /// when it cannot be read as one.
    pub fn read(dir: &Path) -> anyhow::Result<Option<Self>> {
        Self::read_file(&dir.join(FILE))
    }

    /// A refit record kept at `path` (by `refit`, or by `tune` for a rung), as [`Refit::read`].
    pub fn read_file(path: &Path) -> anyhow::Result<Option<Self>> {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{}: not a refit record", path.display()))
    }

    /// Writes the record to `path` atomically.
    pub fn write_file(&self, path: &Path) -> anyhow::Result<()> {
        durable::write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
            .with_context(|| format!("{}: cannot write", path.display()))
    }
}

/// Refits the run in `dir` (see the module's documentation) and writes `refit.json` there,
/// holding the run directory's lock meanwhile.
pub fn refit(data_dir: &Path, dir: &Path, options: &RefitOptions) -> anyhow::Result<Refit> {
    options.validate()?;
    if !dir.is_dir() {
        anyhow::bail!("{}: no such run directory", dir.display());
    }
    let lock = RunLock::acquire(dir)?;
    let checkpoint = Checkpoint::read(dir)
        .with_context(|| format!("{}: refit reads the run's last checkpoint", dir.display()))?;
    let path = dir.join("config.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read the run's config", path.display()))?;
    let config = RunConfig::from_text(&text, &path)?;
    config.validate()?;
    check_task(config.task).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let dev = Cpu::seed_from_u64(config.seed);
    let caches = AllocationCaches::enable(&dev);
    let visitor = Refitting {
        config: &config,
        checkpoint: &checkpoint,
        options,
        caches: &caches,
    };
    let metrics_and_loss = with_task(&config, data_dir, &dev, visitor)
        .with_context(|| format!("{}: refit", dir.display()))?;
    let (metrics, last_lower_loss) = metrics_and_loss;
    let refit = Refit {
        task: config.task.as_str().into(),
        method: config.method().name().into(),
        run_seed: config.seed,
        iteration: checkpoint.header.iteration,
        options: options.clone(),
        last_lower_loss,
        metrics,
    };
    refit.write_file(&dir.join(FILE))?;
    drop(lock);
    Ok(refit)
}

struct Refitting<'a> {
    config: &'a RunConfig,
    checkpoint: &'a Checkpoint,
    options: &'a RefitOptions,
    caches: &'a AllocationCaches,
}

impl TaskVisitor<E> for Refitting<'_> {
    type Output = (Metrics, Option<f64>);

    fn visit<P: TaskProblem<E>>(
        self,
        _model: &str,
        problem: P,
        mut x: P::X,
        mut y: P::Y,
        mut evaluate: impl FnMut(&P::X, &P::Y) -> Metrics,
    ) -> anyhow::Result<Self::Output> {
        x.set_flat(&self.checkpoint.vector("x")?)
            .map_err(|e| anyhow::anyhow!("checkpoint x: {e}"))?;
        if self.options.from == RefitStart::Final {
            y.set_flat(&self.checkpoint.vector("y")?)
                .map_err(|e| anyhow::anyhow!("checkpoint y: {e}"))?;
        }
        let threads = self.config.threads;
        let processes = Processes::single();
        let mut oracles = self
            .caches
            .oracles(problem, self.options.seed, threads, &processes)?;
        let gamma = E::of(self.options.step);
        let mut last = None;
        for k in 0..self.options.steps {
            let site = Site {
                method: "refit",
                iteration: k as u64,
                hint: "--step",
            };
            last = sgd_on_lower(&mut oracles, &x, &mut y, gamma, 1, site)?.or(last);
            self.caches.empty();
        }
        Ok((evaluate(&x, &y), last))
    }
}
