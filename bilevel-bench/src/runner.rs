//! Runs one (task, method, seed): loads the data, builds the problem and the optimizer, iterates
//! with a progress bar, evaluates periodically, and logs everything into the run directory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use bilevel_models::classifier::cpu;
use bilevel_optim::methods::MethodConfig;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::problem::BilevelProblem;
use dfdx::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, Header};
use crate::config::{RunConfig, TaskName};
use crate::logging::RunLogger;
use crate::tasks::common::E;
use crate::tasks::{hyper_clean, hyper_opt, hyper_rep, Metrics};
use bilevel_optim::params::Params;

/// One evaluation point of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub iteration: usize,
    pub oracle_calls: u64,
    pub train_seconds: f64,
    pub metrics: Metrics,
}

/// What a run leaves for comparisons.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub task: String,
    pub method: String,
    pub seed: u64,
    pub dir: PathBuf,
    pub evaluations: Vec<Evaluation>,
}

impl RunSummary {
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

/// Runs `config` on the data in `data_dir`, writing into `dir`.
pub fn run(
    config: &RunConfig,
    data_dir: &Path,
    dir: &Path,
    progress: bool,
) -> anyhow::Result<RunSummary> {
    config.validate()?;
    config.method().validate()?;
    let logger = RunLogger::create(dir)?;
    std::fs::write(
        dir.join("config.toml"),
        toml::to_string(config).context("serializing the config")?,
    )
    .with_context(|| format!("{}: cannot write config.toml", dir.display()))?;
    execute(config, data_dir, dir, progress, logger, None)
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
    dev.enable_cache();
    bilevel_optim::real::device().enable_cache();
    let ctx = Loop {
        config,
        logger: &mut logger,
        progress,
        checkpoint,
        dir,
    };
    let evaluations = match config.task {
        TaskName::HyperClean => {
            let c = &config.hyper_clean;
            let data = hyper_clean::load(data_dir, c, config.seed)?;
            let y = cpu::Classifier::<E>::build(&dev);
            match c.train_size {
                20_000 => {
                    let problem = hyper_clean::problem::<20_000>(&data, c)?;
                    ctx.iterate(
                        "20000 training tweets",
                        problem,
                        hyper_clean::initial_weights(c),
                        y,
                        |x, y| hyper_clean::evaluate(&data, c, x, y),
                    )?
                }
                _ => {
                    let problem = hyper_clean::problem::<2_000>(&data, c)?;
                    ctx.iterate(
                        "2000 training tweets",
                        problem,
                        hyper_clean::initial_weights(c),
                        y,
                        |x, y| hyper_clean::evaluate(&data, c, x, y),
                    )?
                }
            }
        }
        TaskName::HyperOpt => {
            let c = &config.hyper_opt;
            let data = hyper_opt::load(data_dir, c, config.seed)?;
            let y = cpu::Classifier::<E>::build(&dev);
            if c.scalar_coefficient {
                let x = hyper_opt::initial_coefficients(&dev.zeros::<Rank0>(), c);
                let problem = hyper_opt::problem(&data, c, &y, &x)?;
                ctx.iterate("one shared coefficient", problem, x, y, |x, y| {
                    hyper_opt::evaluate(&data, c, x, y)
                })?
            } else {
                let x: hyper_opt::PerTensor = hyper_opt::initial_coefficients(&dev.zeros(), c);
                let problem = hyper_opt::problem(&data, c, &y, &x)?;
                ctx.iterate("one coefficient per tensor", problem, x, y, |x, y| {
                    hyper_opt::evaluate(&data, c, x, y)
                })?
            }
        }
        TaskName::HyperRep => {
            let c = &config.hyper_rep;
            let data = hyper_rep::load(data_dir, c, config.seed)?;
            let x = cpu::Encoder::<E>::build(&dev);
            let seed = config.seed;
            match c.train_tasks {
                400 => {
                    let y = dfdx::nn::modules::Repeated::<cpu::Head<E>, 400>::build(&dev);
                    ctx.iterate(
                        "400 training tasks",
                        hyper_rep::problem::<400>(&data, c)?,
                        x,
                        y,
                        |x, _| hyper_rep::evaluate(&data, c, x, seed),
                    )?
                }
                _ => {
                    let y = dfdx::nn::modules::Repeated::<cpu::Head<E>, 40>::build(&dev);
                    ctx.iterate(
                        "40 training tasks",
                        hyper_rep::problem::<40>(&data, c)?,
                        x,
                        y,
                        |x, _| hyper_rep::evaluate(&data, c, x, seed),
                    )?
                }
            }
        }
    };
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

struct Loop<'a> {
    config: &'a RunConfig,
    logger: &'a mut RunLogger,
    progress: bool,
    /// Where to continue from (a resumed run).
    checkpoint: Option<Checkpoint>,
    dir: &'a Path,
}

impl Loop<'_> {
    /// The loop: `iters` steps of the method, evaluations at 0, every `eval_every` and at the end.
    fn iterate<P: BilevelProblem<E> + 'static>(
        self,
        model: &str,
        problem: P,
        mut x: P::X,
        mut y: P::Y,
        mut evaluate: impl FnMut(&P::X, &P::Y) -> Metrics,
    ) -> anyhow::Result<Vec<Evaluation>>
    where
        P::X: 'static,
        P::Y: 'static,
    {
        let c = self.config;
        let method_config: MethodConfig = c.method();
        let mut method = method_config.build(&x, &y, &problem)?;
        let mut oracles = Oracles::new(problem, c.seed);
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
            method.name(),
            c.seed
        ));
        let (mut evaluations, mut train_seconds, first) = match &self.checkpoint {
            Some(cp) => {
                cp.check_identity(c.task.as_str(), method.name(), model)?;
                let h = &cp.header;
                let vector = |name: &str| -> anyhow::Result<Vec<E>> {
                    let v = cp
                        .vectors
                        .get(name)
                        .with_context(|| format!("the checkpoint has no '{name}'"))?;
                    Ok(v.iter().map(|&v| v as E).collect())
                };
                x.set_flat(&vector("x")?)
                    .map_err(|e| anyhow::anyhow!("checkpoint x: {e}"))?;
                y.set_flat(&vector("y")?)
                    .map_err(|e| anyhow::anyhow!("checkpoint y: {e}"))?;
                method.load_state(&cp.method_state())?;
                oracles.load_state(&h.oracles);
                oracles
                    .problem_mut()
                    .restore_sampler(&h.sampler)
                    .map_err(anyhow::Error::msg)?;
                bar.set_position(h.iteration as u64);
                (h.evaluations.clone(), h.train_seconds, h.iteration)
            }
            None => (Vec::new(), 0.0, 0),
        };
        let record = |logger: &mut RunLogger,
                      evaluations: &mut Vec<Evaluation>,
                      iteration: usize,
                      calls: u64,
                      seconds: f64,
                      metrics: Metrics|
         -> anyhow::Result<()> {
            logger.evaluation(iteration, calls, seconds, &metrics)?;
            evaluations.push(Evaluation {
                iteration,
                oracle_calls: calls,
                train_seconds: seconds,
                metrics,
            });
            Ok(())
        };
        if self.checkpoint.is_none() {
            record(self.logger, &mut evaluations, 0, 0, 0.0, evaluate(&x, &y))?;
        }
        for t in first..c.iters {
            let start = Instant::now();
            let report = method.step(&mut oracles, &mut x, &mut y).with_context(|| {
                format!("{} on {}, iteration {t}", method.name(), c.task.as_str())
            })?;
            train_seconds += start.elapsed().as_secs_f64();
            self.logger.step(&report, train_seconds)?;
            if let Some(f) = report.upper_loss {
                bar.set_message(format!("f {f:.4}"));
            }
            bar.inc(1);
            let done = t + 1;
            if done % c.eval_every == 0 || done == c.iters {
                let totals = report.oracle_totals;
                let calls = totals.upper_grad + totals.lower_grad + totals.hvp + totals.jvp;
                record(
                    self.logger,
                    &mut evaluations,
                    done,
                    calls,
                    train_seconds,
                    evaluate(&x, &y),
                )?;
                self.logger.flush()?;
            }
            if done % c.checkpoint_every == 0 || done == c.iters {
                self.logger.flush()?;
                let state = method.state();
                let mut vectors: std::collections::BTreeMap<String, Vec<f64>> = state
                    .vectors
                    .into_iter()
                    .map(|(k, v)| (format!("method.{k}"), v))
                    .collect();
                vectors.insert(
                    "x".into(),
                    x.to_flat().into_iter().map(|v| v as f64).collect(),
                );
                vectors.insert(
                    "y".into(),
                    y.to_flat().into_iter().map(|v| v as f64).collect(),
                );
                let header = Header {
                    task: c.task.as_str().into(),
                    method: method.name().into(),
                    model: model.into(),
                    iteration: done,
                    train_seconds,
                    method_scalars: state.scalars,
                    oracles: oracles.state(),
                    sampler: oracles.problem().sampler_state(),
                    evaluations: evaluations.clone(),
                };
                Checkpoint { header, vectors }.write(self.dir)?;
            }
        }
        bar.finish();
        Ok(evaluations)
    }
}
