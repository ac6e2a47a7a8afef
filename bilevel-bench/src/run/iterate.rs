//! Runs one (task, method, seed): loads the data, builds the problem and the optimizer, iterates
//! with a progress bar, evaluates periodically, and logs everything into the run directory.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use bilevel_optim::methods::method::Start;
use bilevel_optim::methods::{Method, MethodConfig};
use bilevel_optim::oracles::Oracles;
use bilevel_optim::problem::BilevelProblem;
use dfdx::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};

use std::collections::BTreeMap;

use bilevel_optim::error::BilevelError;
use bilevel_optim::optimizer::BilevelOptimizer;

use crate::data::fingerprint;
use crate::run::checkpoint::{Checkpoint, Header};
use crate::run::config::{OnDivergence, RunConfig};
use crate::run::durable;
use crate::run::logging::RunLogger;
use crate::run::processes::Processes;
use crate::run::summary::{Evaluation, RunSummary};
use crate::tasks::common::E;
use crate::tasks::dispatch::{with_task, TaskProblem, TaskVisitor};
use crate::tasks::Metrics;
use bilevel_optim::params::Params;

/// [`super::run`] or [`super::resume`] of method `M`, once the directory is locked.
pub fn execute<M: Method>(
    config: &RunConfig,
    data_dir: &Path,
    dir: &Path,
    progress: bool,
    checkpoint: Option<Checkpoint>,
    processes: &Processes,
) -> anyhow::Result<RunSummary> {
    let dev = Cpu::seed_from_u64(config.seed);
    // Reuse freed buffers between iterations (docs/performance.md).
    let caches = AllocationCaches::enable(&dev);
    let ctx = Loop::<M> {
        method: PhantomData,
        config,
        progress,
        caches: &caches,
        checkpoint,
        dir,
        processes,
    };
    fingerprint::begin();
    let evaluations = with_task(config, data_dir, &dev, ctx)?;
    let summary = RunSummary {
        task: config.task.as_str().into(),
        method: config.method().name().into(),
        seed: config.seed,
        dir: dir.to_path_buf(),
        evaluations,
    };
    if processes.writes() {
        durable::write_atomic(
            &dir.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
    }
    Ok(summary)
}

/// How many passes the caches may fill between two emptyings within an iteration. An ordinary
/// iteration (2–40 passes) keeps nearly all its reuse; a pass over every fixed batch of
/// hyper-opt's data (SRBA's restart, about 630 passes) raised a run's peak memory to 23 GB
/// without it, about 37 MB a pass; with it 5.3 GB (5.0 once the restart also fetched one batch
/// at a time), against BO-REP's 4.0.
const PASSES_PER_EMPTYING: usize = 32;

/// dfdx's allocation caches of the model device and of the library's device. Reusing freed
/// buffers makes an iteration 20–25% faster (docs/performance.md), but the cache keeps every
/// buffer it is handed: packed batches change shape from one step and one iteration to
/// the next, and a kept-forever cache grew to 24 GB and was killed by the kernel. So the caches
/// are emptied after every iteration (reuse happens within the iteration's passes), every
/// [`PASSES_PER_EMPTYING`] passes within one, and disabled when the run ends.
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

    /// The oracles of `problem` with `threads` batch shards in this process, shared by
    /// `processes`, whose worker devices' caches are managed with the others.
    pub(crate) fn oracles<P: TaskProblem<E>>(
        &self,
        problem: P,
        seed: u64,
        threads: usize,
        processes: &Processes,
    ) -> anyhow::Result<Oracles<E, P>> {
        let mut oracles = match processes.group() {
            Some(group) => Oracles::distributed(problem, seed, threads, group)?,
            None => Oracles::sharded(problem, seed, threads)?,
        };
        self.include(oracles.worker_devices());
        let devices = self.devices.borrow().clone();
        let mut passes = 0_usize;
        oracles.between_passes(Box::new(move || {
            passes += 1;
            if passes.is_multiple_of(PASSES_PER_EMPTYING) {
                devices.iter().for_each(|d| d.empty_cache());
            }
        }));
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

struct Loop<'a, M> {
    method: PhantomData<M>,
    config: &'a RunConfig,
    progress: bool,
    caches: &'a AllocationCaches,
    /// Where to continue from (a resumed run).
    checkpoint: Option<Checkpoint>,
    dir: &'a Path,
    /// Who shares the run; process 0 alone evaluates and writes.
    processes: &'a Processes,
}

impl<M: Method> TaskVisitor<E> for Loop<'_, M> {
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
        let data = fingerprint::current();
        let mut method_config: MethodConfig = c.method();
        let rollbacks_before = self.checkpoint.as_ref().map_or(0, |cp| cp.header.rollbacks);
        for _ in 0..rollbacks_before {
            method_config.halve_step_sizes();
        }
        if let Some(cp) = &self.checkpoint {
            cp.check_run(c, method_config.name(), model, &data)
                .with_context(|| format!("{}: cannot resume", self.dir.display()))?;
        }
        let writes = self.processes.writes();
        let mut logger = match &self.checkpoint {
            _ if !writes => None,
            Some(cp) => Some(RunLogger::resume(self.dir, cp.header.iteration)?),
            None => Some(self.start_logs()?),
        };
        let mut run = RunState {
            method: method_config.build_as::<M, _, _>(Start::at(&x, &y, &problem))?,
            oracles: self
                .caches
                .oracles(problem, c.seed, c.threads, self.processes)?,
            x,
            y,
            evaluations: Vec::new(),
            train_seconds: 0.0,
            done: 0,
            rollbacks: rollbacks_before,
            identity: Identity {
                config: toml::to_string(c).context("serializing the config")?,
                data,
                model: model.to_string(),
            },
        };
        let bar = if self.progress && writes {
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
            Some(cp) => {
                run.restore(cp)?;
                run.check_agreement(self.processes, "after resuming")?;
            }
            None => {
                if let Some(logger) = &mut logger {
                    let metrics = evaluate(&run.x, &run.y);
                    run.record(logger, 0, metrics)?;
                    logger.sync()?;
                    run.save(c, self.dir)?;
                }
            }
        }
        bar.set_position(run.done as u64);
        while run.done < c.iters {
            let start = Instant::now();
            let report = match run.method.step(&mut run.oracles, &mut run.x, &mut run.y) {
                Ok(report) => report,
                Err(e @ BilevelError::NonFinite { .. })
                    if c.on_divergence == OnDivergence::Rollback
                        && run.rollbacks < c.max_rollbacks =>
                {
                    run.rollbacks += 1;
                    method_config.halve_step_sizes();
                    let cp = self.processes.read_checkpoint(self.dir)?;
                    if writes {
                        bar.suspend(|| {
                            eprintln!(
                                "{e}\nrolling back to iteration {} with halved step sizes (rollback {} of {})",
                                cp.header.iteration, run.rollbacks, c.max_rollbacks
                            )
                        });
                    }
                    let start = Start::at(&run.x, &run.y, run.oracles.problem());
                    run.method = method_config.build_as::<M, _, _>(start)?;
                    run.restore(&cp)?;
                    run.check_agreement(self.processes, "after rolling back")?;
                    if let Some(mut old) = logger.take() {
                        old.flush()?;
                        logger = Some(RunLogger::resume(self.dir, run.done)?);
                        // Saved at once: a resume from here on continues with the halved steps.
                        run.save(c, self.dir)?;
                    }
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
            if let Some(logger) = &mut logger {
                logger.step(&report, run.train_seconds)?;
            }
            if let Some(f) = report.upper_loss {
                bar.set_message(format!("f {f:.4}"));
            }
            bar.inc(1);
            run.done += 1;
            self.caches.empty();
            if run.done % c.eval_every == 0 || run.done == c.iters {
                run.check_agreement(self.processes, "")?;
                if let Some(logger) = &mut logger {
                    let metrics = evaluate(&run.x, &run.y);
                    run.record(logger, run.done, metrics)?;
                }
            }
            if run.done % c.checkpoint_every == 0 || run.done == c.iters {
                if let Some(logger) = &mut logger {
                    logger.sync()?;
                    run.save(c, self.dir)?;
                }
            }
        }
        if let Some(logger) = &mut logger {
            logger.sync()?;
        }
        bar.finish();
        Ok(run.evaluations)
    }
}

impl<M> Loop<'_, M> {
    /// A fresh run's logs and configuration, once its data is loaded and its problem built: an
    /// earlier run's summary, checkpoints and event files in the directory are removed (the
    /// command line moves a run it must keep aside before), the CSV files started anew.
    fn start_logs(&self) -> anyhow::Result<RunLogger> {
        durable::remove(&self.dir.join("summary.json"))?;
        Checkpoint::remove_all(self.dir)?;
        let logger = RunLogger::create(self.dir)?;
        durable::write_atomic(
            &self.dir.join("config.toml"),
            toml::to_string(self.config)
                .context("serializing the config")?
                .as_bytes(),
        )?;
        Ok(logger)
    }
}

/// What a checkpoint records to be recognised by its run.
struct Identity {
    /// The configuration as given (TOML).
    config: String,
    /// The data files read ([`fingerprint::current`]).
    data: BTreeMap<String, String>,
    /// The compiled sizes.
    model: String,
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
    /// Rollbacks with halved step sizes so far.
    rollbacks: usize,
    identity: Identity,
}

impl<P: BilevelProblem<E>> RunState<P> {
    /// Fails unless every process sharing the run holds the same x, y, method state and
    /// oracle state (counts and the batch generator's position), naming the iteration.
    fn check_agreement(&self, processes: &Processes, when: &str) -> anyhow::Result<()> {
        if processes.size() == 1 {
            return Ok(());
        }
        let mut bytes = Vec::new();
        let mut floats = |values: &mut dyn Iterator<Item = f64>| {
            values.for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()))
        };
        floats(&mut self.x.to_flat().into_iter().map(f64::from));
        floats(&mut self.y.to_flat().into_iter().map(f64::from));
        let state = self.method.state();
        for values in state.vectors.values() {
            floats(&mut values.iter().copied());
        }
        floats(&mut state.scalars.values().copied());
        bytes.extend_from_slice(&serde_json::to_vec(&self.oracles.state())?);
        let what = format!(
            "x, y, the method's state and the batch generator at iteration {}{}{when}",
            self.done,
            if when.is_empty() { "" } else { " " }
        );
        processes.check_agreement(&what, &bytes)
    }

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

    fn save(&self, c: &RunConfig, dir: &Path) -> anyhow::Result<()> {
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
            model: self.identity.model.clone(),
            iteration: self.done,
            train_seconds: self.train_seconds,
            method_scalars: state.scalars,
            oracles: self.oracles.state(),
            sampler: self.oracles.problem().sampler_state(),
            evaluations: self.evaluations.clone(),
            config: Some(self.identity.config.clone()),
            data: self.identity.data.clone(),
            rollbacks: self.rollbacks,
        };
        Checkpoint { header, vectors }.write(dir)?;
        Ok(())
    }

    /// Restores the state of `cp` (whose identity [`Checkpoint::check_run`] has checked); the
    /// rollback count is the caller's (taken from the checkpoint when the run resumes).
    fn restore(&mut self, cp: &Checkpoint) -> anyhow::Result<()> {
        self.x
            .set_flat(&cp.vector("x")?)
            .map_err(|e| anyhow::anyhow!("checkpoint x: {e}"))?;
        self.y
            .set_flat(&cp.vector("y")?)
            .map_err(|e| anyhow::anyhow!("checkpoint y: {e}"))?;
        self.method.load_state(&cp.method_state())?;
        let h = &cp.header;
        self.oracles.load_state(&h.oracles);
        self.oracles
            .problem_mut()
            .restore_sampler(&h.sampler)
            .map_err(|e| anyhow::anyhow!("checkpoint sampler state: {e}"))?;
        self.evaluations = h.evaluations.clone();
        self.train_seconds = h.train_seconds;
        self.done = h.iteration;
        Ok(())
    }
}
