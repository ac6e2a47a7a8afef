//! Builds the bilevel problem of a configured task and hands it, with its starting x and y and
//! its evaluation, to a [`TaskVisitor`]. The task types differ (heads compiled in, weight vector
//! lengths), so whoever needs "the problem of this config" (a run, a performance measurement, a
//! check) implements the visitor once instead of repeating the dispatch. The precision `F` is
//! the visitor's: runs use f32 ([`crate::tasks::common::E`]), `check` uses f64.

use std::path::Path;

use bilevel_models::classifier::cpu;
use bilevel_optim::params::Params;
use bilevel_optim::problem::{Batch, ShardedProblem};
use bilevel_optim::real::Real;
use dfdx::prelude::*;

use crate::run::config::{RunConfig, TaskName};
use crate::tasks::{hyper_clean, hyper_opt, hyper_rep, Metrics};

/// Receives the problem of a task in precision `F`. `model` names the compiled-in variant (for
/// checkpoints).
pub trait TaskVisitor<F: Real>
where
    Cpu: Device<F>,
{
    /// What the visitor returns.
    type Output;

    /// Receives the task's problem, its starting point and its evaluation.
    fn visit<P: TaskProblem<F>>(
        self,
        model: &str,
        problem: P,
        x: P::X,
        y: P::Y,
        evaluate: impl FnMut(&P::X, &P::Y) -> Metrics,
    ) -> anyhow::Result<Self::Output>;
}

/// What every task's problem is: shardable over threads ([`Oracles::sharded`]), with variables
/// and batches that shard threads can read.
///
/// [`Oracles::sharded`]: bilevel_optim::oracles::Oracles::sharded
pub trait TaskProblem<F: Real>:
    ShardedProblem<
        F,
        X = Self::UpperVariable,
        Y = Self::LowerVariable,
        UpperBatch = Self::UpperSamples,
        LowerBatch = Self::LowerSamples,
    > + Sync
    + 'static
where
    Cpu: Device<F>,
{
    /// x.
    type UpperVariable: Params<F> + Send + Sync + 'static;
    /// y.
    type LowerVariable: Params<F> + Send + Sync + 'static;
    /// ξ.
    type UpperSamples: Batch + Sync;
    /// ζ.
    type LowerSamples: Batch + Sync;
}

impl<F: Real, P> TaskProblem<F> for P
where
    Cpu: Device<F>,
    P: ShardedProblem<F> + Sync + 'static,
    P::X: Send + Sync + 'static,
    P::Y: Send + Sync + 'static,
    P::UpperBatch: Sync,
    P::LowerBatch: Sync,
{
    type UpperVariable = P::X;
    type LowerVariable = P::Y;
    type UpperSamples = P::UpperBatch;
    type LowerSamples = P::LowerBatch;
}

/// Loads `config`'s task from `data_dir`, builds its problem and initial variables on `dev` and
/// passes them to `visitor`.
pub fn with_task<F: Real, V: TaskVisitor<F>>(
    config: &RunConfig,
    data_dir: &Path,
    dev: &Cpu,
    visitor: V,
) -> anyhow::Result<V::Output>
where
    Cpu: Device<F>,
{
    match config.task {
        TaskName::HyperClean => {
            let c = &config.hyper_clean;
            let data = hyper_clean::load(data_dir, c, config.seed)?;
            let y = cpu::Classifier::<F>::build(dev);
            match c.train_size {
                20_000 => visitor.visit(
                    "20000 training tweets",
                    hyper_clean::problem::<F, 20_000>(&data, c)?,
                    hyper_clean::initial_weights(c),
                    y,
                    |x: &_, y: &_| hyper_clean::evaluate(&data, c, x, y),
                ),
                _ => visitor.visit(
                    "2000 training tweets",
                    hyper_clean::problem::<F, 2_000>(&data, c)?,
                    hyper_clean::initial_weights(c),
                    y,
                    |x: &_, y: &_| hyper_clean::evaluate(&data, c, x, y),
                ),
            }
        }
        TaskName::HyperOpt => {
            let c = &config.hyper_opt;
            let data = hyper_opt::load(data_dir, c, config.seed)?;
            let y = cpu::Classifier::<F>::build(dev);
            if c.scalar_coefficient {
                let x: hyper_opt::Shared<F> = hyper_opt::initial_coefficients(&dev.zeros(), c);
                let problem = hyper_opt::problem(&data, c, &y, &x)?;
                visitor.visit("one shared coefficient", problem, x, y, |x, y| {
                    hyper_opt::evaluate(&data, c, x, y)
                })
            } else {
                let x: hyper_opt::PerTensor<F> = hyper_opt::initial_coefficients(&dev.zeros(), c);
                let problem = hyper_opt::problem(&data, c, &y, &x)?;
                visitor.visit("one coefficient per tensor", problem, x, y, |x, y| {
                    hyper_opt::evaluate(&data, c, x, y)
                })
            }
        }
        TaskName::HyperRep => {
            let c = &config.hyper_rep;
            let data = hyper_rep::load(data_dir, c, config.seed)?;
            let x = cpu::Encoder::<F>::build(dev);
            let seed = config.seed;
            match c.train_tasks {
                400 => visitor.visit(
                    "400 training tasks",
                    hyper_rep::problem::<F, 400>(&data, c)?,
                    x,
                    dfdx::nn::modules::Repeated::<cpu::Head<F>, 400>::build(dev),
                    |x, _| hyper_rep::evaluate(&data, c, x, seed),
                ),
                _ => visitor.visit(
                    "40 training tasks",
                    hyper_rep::problem::<F, 40>(&data, c)?,
                    x,
                    dfdx::nn::modules::Repeated::<cpu::Head<F>, 40>::build(dev),
                    |x, _| hyper_rep::evaluate(&data, c, x, seed),
                ),
            }
        }
    }
}
