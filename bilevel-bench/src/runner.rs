//! Runs one (task, method, seed): loads the data, builds the problem and the optimizer, iterates
//! with a progress bar, evaluates periodically, and logs everything into the run directory.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use bilevel_optim::methods::MethodConfig;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::problem::BilevelProblem;
use dfdx::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use bilevel_optim::error::BilevelError;
use bilevel_optim::optimizer::BilevelOptimizer;

use crate::checkpoint::{Checkpoint, Header};
use crate::config::{OnDivergence, RunConfig};
use crate::logging::RunLogger;
use crate::tasks::common::E;
use crate::tasks::dispatch::{with_task, TaskProblem, TaskVisitor};
use crate::tasks::Metrics;
use bilevel_optim::params::Params;

/// One evaluation point of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Iterations done.
    pub iteration: usize,
    /// Oracle calls so far, all kinds together.
    pub oracle_calls: u64,
    /// Training time so far, without evaluations.
    pub train_seconds: f64,
    /// The task's metrics.
    pub metrics: Metrics,
}

/// What a run leaves for comparisons.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// The task's name.
    pub task: String,
    /// The method's name.
    pub method: String,
    /// The run's seed.
    pub seed: u64,
    /// The run directory.
    pub dir: PathBuf,
    /// Every evaluation, in order.
    pub evaluations: Vec<Evaluation>,
}

impl RunSummary {
    /// The metrics of the last evaluation.
    pub fn last(&self) -> &Metrics {
        &self
            .evaluations
            .last()
            .expect("a run evaluates at least once")
            .metrics
    }
}

/// Where a run writes: `<out>/<task>/<method>/seed-<seed>`.
pub fn run_dir(out: &Path, config: &RunConfig) -> PathBuf {
    out.join(config.task.as_str())
        .join(config.method().name())
        .join(format!("seed-{}", config.seed))
}

/// Runs `config` on the data in `data_dir`, writing into `dir`. A run that fails before its
/// first iteration (bad data, say) removes the directory it created, so nothing is left that
/// looks like a run; a run that fails later keeps its logs and its last good checkpoint.
pub fn run(
    config: &RunConfig,
    data_dir: &Path,
    dir: &Path,
    progress: bool,
) -> anyhow::Result<RunSummary> {
    config.validate()?;
    config.method().validate()?;
    let created = !dir.exists();
    // A previous run's summary in the directory would pass for this run's (`compare` and `tune`
    // reuse finished runs by their summaries).
    let summary = dir.join("summary.json");
    if summary.exists() {
        std::fs::remove_file(&summary)
            .with_context(|| format!("{}: cannot remove", summary.display()))?;
    }
    let logger = RunLogger::create(dir)?;
    std::fs::write(
        dir.join("config.toml"),
        toml::to_string(config).context("serializing the config")?,
    )
    .with_context(|| format!("{}: cannot write config.toml", dir.display()))?;
    let result = execute(config, data_dir, dir, progress, logger, None);
    if result.is_err() && created && !dir.join(crate::checkpoint::FILE).exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// Continues the run in `dir` from its last checkpoint, with the configuration saved there.
/// On the CPU the result is bit-identical to a run that was never interrupted.
pub fn resume(data_dir: &Path, dir: &Path, progress: bool) -> anyhow::Result<RunSummary> {
    let config = RunConfig::from_file(&dir.join("config.toml"))?;
    config.validate()?;
    let checkpoint = Checkpoint::read(dir)?;
    let logger = RunLogger::resume(dir, checkpoint.header.iteration)?;
    execute(&config, data_dir, dir, progress, logger, Some(checkpoint))
}

fn execute(
    config: &RunConfig,
    data_dir: &Path,
    dir: &Path,
    progress: bool,
    mut logger: RunLogger,
    checkpoint: Option<Checkpoint>,
) -> anyhow::Result<RunSummary> {
    let dev = Cpu::seed_from_u64(config.seed);
    // Reuse freed buffers between iterations (docs/performance.md).
    let caches = AllocationCaches::enable(&dev);
    let ctx = Loop {
        config,
        logger: &mut logger,
        progress,
        caches: &caches,
        checkpoint,
        dir,
    };
    let evaluations = with_task(config, data_dir, &dev, ctx)?;
    logger.flush()?;
    let summary = RunSummary {
        task: config.task.as_str().into(),
        method: config.method().name().into(),
        seed: config.seed,
        dir: dir.to_path_buf(),
        evaluations,
    };
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )
    .with_context(|| format!("{}: cannot write summary.json", dir.display()))?;
    Ok(summary)
}

/// dfdx's allocation caches of the model device and of the library's device. Reusing freed
/// buffers makes an iteration 20–25% faster (docs/performance.md), but the cache keeps every
/// buffer it is handed: packed batches change shape from one step and one iteration to
/// the next, and a kept-forever cache grew to 24 GB and was killed by the kernel. So the caches
/// are emptied after every iteration (reuse happens within the iteration's passes) and disabled
/// when the run ends.
/// The same holds for the devices of the shard threads, which [`AllocationCaches::sharded`]
/// adds.
pub(crate) struct AllocationCaches {
    devices: RefCell<Vec<Cpu>>,
}

impl AllocationCaches {
    pub(crate) fn enable(model_device: &Cpu) -> Self {
        let caches = Self {
            devices: RefCell::new(Vec::new()),
        };
        caches.include(vec![model_device.clone(), bilevel_optim::real::device()]);
        caches
    }

    fn include(&self, devices: Vec<Cpu>) {
        for d in &devices {
            d.enable_cache();
        }
        self.devices.borrow_mut().extend(devices);
    }

    /// The oracles of `problem` with `threads` batch shards, whose worker devices' caches are
    /// managed with the others.
    pub(crate) fn sharded<P: TaskProblem<E>>(
        &self,
        problem: P,
        seed: u64,
        threads: usize,
    ) -> anyhow::Result<Oracles<E, P>> {
        let oracles = Oracles::sharded(problem, seed, threads)?;
        self.include(oracles.worker_devices());
        Ok(oracles)
    }

    pub(crate) fn empty(&self) {
        for d in self.devices.borrow().iter() {
            d.empty_cache();
        }
    }
}

impl Drop for AllocationCaches {
    fn drop(&mut self) {
        for d in self.devices.borrow().iter() {
            d.disable_cache();
        }
    }
}

struct Loop<'a> {
    config: &'a RunConfig,
    logger: &'a mut RunLogger,
    progress: bool,
    caches: &'a AllocationCaches,
    /// Where to continue from (a resumed run).
    checkpoint: Option<Checkpoint>,
    dir: &'a Path,
}

impl TaskVisitor<E> for Loop<'_> {
    type Output = Vec<Evaluation>;

    /// The loop: `iters` steps of the method, evaluations at 0, every `eval_every` and at the
    /// end, checkpoints at 0, every `checkpoint_every` and at the end. A resumed run starts from
    /// its checkpoint. On a non-finite value the run stops, or with `on_divergence = "rollback"`
    /// goes back to the last checkpoint with halved step sizes.
    fn visit<P: TaskProblem<E>>(
        self,
        model: &str,
        problem: P,
        x: P::X,
        y: P::Y,
        mut evaluate: impl FnMut(&P::X, &P::Y) -> Metrics,
    ) -> anyhow::Result<Vec<Evaluation>> {
        let c = self.config;
        let mut method_config: MethodConfig = c.method();
        let mut run = RunState {
            method: method_config.build(&x, &y, &problem)?,
            oracles: self.caches.sharded(problem, c.seed, c.threads)?,
            x,
            y,
            evaluations: Vec::new(),
            train_seconds: 0.0,
            done: 0,
        };
        let bar = if self.progress {
            ProgressBar::new(c.iters as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} it, {elapsed} elapsed, ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!(
            "{} {} seed {}",
            c.task.as_str(),
            run.method.name(),
            c.seed
        ));
        match &self.checkpoint {
            Some(cp) => run.restore(cp, c, model)?,
            None => {
                let metrics = evaluate(&run.x, &run.y);
                run.record(self.logger, 0, metrics)?;
                run.save(c, model, self.dir)?;
            }
        }
        bar.set_position(run.done as u64);
        let mut rollbacks = 0;
        while run.done < c.iters {
            let start = Instant::now();
            let report = match run.method.step(&mut run.oracles, &mut run.x, &mut run.y) {
                Ok(report) => report,
                Err(e @ BilevelError::NonFinite { .. })
                    if c.on_divergence == OnDivergence::Rollback && rollbacks < c.max_rollbacks =>
                {
                    rollbacks += 1;
                    method_config.halve_step_sizes();
                    let cp = Checkpoint::read(self.dir)?;
                    bar.suspend(|| {
                        eprintln!(
                            "{e}\nrolling back to iteration {} with halved step sizes (rollback {rollbacks} of {})",
                            cp.header.iteration, c.max_rollbacks
                        )
                    });
                    // Later resumes continue with the halved steps.
                    let halved = RunConfig {
                        method: Some(method_config.clone()),
                        ..c.clone()
                    };
                    std::fs::write(self.dir.join("config.toml"), toml::to_string(&halved)?)?;
                    run.method = method_config.build(&run.x, &run.y, run.oracles.problem())?;
                    run.restore(&cp, c, model)?;
                    self.logger.flush()?;
                    *self.logger = RunLogger::resume(self.dir, run.done)?;
                    bar.set_position(run.done as u64);
                    continue;
                }
                Err(e) => {
                    return Err(anyhow::Error::from(e).context(format!(
                        "{} on {}, iteration {} (the last good checkpoint is kept in {})",
                        run.method.name(),
                        c.task.as_str(),
                        run.done,
                        self.dir.display()
                    )))
                }
            };
            run.train_seconds += start.elapsed().as_secs_f64();
            self.logger.step(&report, run.train_seconds)?;
            if let Some(f) = report.upper_loss {
                bar.set_message(format!("f {f:.4}"));
            }
            bar.inc(1);
            run.done += 1;
            self.caches.empty();
            if run.done % c.eval_every == 0 || run.done == c.iters {
                let metrics = evaluate(&run.x, &run.y);
                run.record(self.logger, run.done, metrics)?;
            }
            if run.done % c.checkpoint_every == 0 || run.done == c.iters {
                self.logger.flush()?;
                run.save(c, model, self.dir)?;
            }
        }
        bar.finish();
        Ok(run.evaluations)
    }
}

/// Everything a run advances, and how it is saved to and restored from a checkpoint.
struct RunState<P: BilevelProblem<E>> {
    method: Box<dyn BilevelOptimizer<E, P>>,
    oracles: Oracles<E, P>,
    x: P::X,
    y: P::Y,
    evaluations: Vec<Evaluation>,
    train_seconds: f64,
    /// Iterations done.
    done: usize,
}

impl<P: BilevelProblem<E>> RunState<P> {
    fn record(
        &mut self,
        logger: &mut RunLogger,
        iteration: usize,
        metrics: Metrics,
    ) -> anyhow::Result<()> {
        let t = self.oracles.counts();
        let calls = t.upper_grad + t.lower_grad + t.hvp + t.jvp;
        logger.evaluation(iteration, calls, self.train_seconds, &metrics)?;
        logger.flush()?;
        self.evaluations.push(Evaluation {
            iteration,
            oracle_calls: calls,
            train_seconds: self.train_seconds,
            metrics,
        });
        Ok(())
    }

    fn save(&self, c: &RunConfig, model: &str, dir: &Path) -> anyhow::Result<()> {
        let state = self.method.state();
        let mut vectors: BTreeMap<String, Vec<f64>> = state
            .vectors
            .into_iter()
            .map(|(k, v)| (format!("method.{k}"), v))
            .collect();
        vectors.insert(
            "x".into(),
            self.x.to_flat().into_iter().map(|v| v as f64).collect(),
        );
        vectors.insert(
            "y".into(),
            self.y.to_flat().into_iter().map(|v| v as f64).collect(),
        );
        let header = Header {
            task: c.task.as_str().into(),
            method: self.method.name().into(),
            model: model.into(),
            iteration: self.done,
            train_seconds: self.train_seconds,
            method_scalars: state.scalars,
            oracles: self.oracles.state(),
            sampler: self.oracles.problem().sampler_state(),
            evaluations: self.evaluations.clone(),
        };
        Checkpoint { header, vectors }.write(dir)?;
        Ok(())
    }

    fn restore(&mut self, cp: &Checkpoint, c: &RunConfig, model: &str) -> anyhow::Result<()> {
        cp.check_identity(c.task.as_str(), self.method.name(), model)?;
        let vector = |name: &str| -> anyhow::Result<Vec<E>> {
            let v = cp
                .vectors
                .get(name)
                .with_context(|| format!("the checkpoint has no '{name}'"))?;
            Ok(v.iter().map(|&v| v as E).collect())
        };
        self.x
            .set_flat(&vector("x")?)
            .map_err(|e| anyhow::anyhow!("checkpoint x: {e}"))?;
        self.y
            .set_flat(&vector("y")?)
            .map_err(|e| anyhow::anyhow!("checkpoint y: {e}"))?;
        self.method.load_state(&cp.method_state())?;
        let h = &cp.header;
        self.oracles.load_state(&h.oracles);
        self.oracles
            .problem_mut()
            .restore_sampler(&h.sampler)
            .map_err(anyhow::Error::msg)?;
        self.evaluations = h.evaluations.clone();
        self.train_seconds = h.train_seconds;
        self.done = h.iteration;
        Ok(())
    }
}
