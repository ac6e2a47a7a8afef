//! What the bench knows about a task, declared once in the task's file ([`Task`]), and how a
//! task hands its problem to whoever needs it ([`TaskVisitor`]).

use std::fmt::Debug;
use std::path::Path;

use bilevel_optim::methods::borep::BoRepConfig;
use bilevel_optim::methods::MethodConfig;
use bilevel_optim::params::Params;
use bilevel_optim::problem::{Batch, ShardedProblem};
use bilevel_optim::real::Real;
use dfdx::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::tasks::model::ModelName;
use crate::tasks::Metrics;

/// A task's settings: its `[section]` of a run's configuration.
pub trait Settings: Debug + Clone + PartialEq + Default + Serialize + DeserializeOwned {
    /// Checks every setting, naming the first one out of range.
    fn validate(&self) -> anyhow::Result<()>;
}

/// A task of the bench: its name, its settings (its `[section]` of a run's configuration), the
/// official BO-REP values, which metrics lead and select, its checks, and how its problem is
/// built. A new task is its form (in `bilevel-models`), its file implementing this trait, and
/// one line of [`crate::with_task_list`].
pub trait Task {
    /// Its name in configurations, directories and `--task`.
    const NAME: &'static str;

    /// Its settings, with the defaults of `tasks.md`.
    type Config: Settings;

    /// BO-REP with the official code's values for this task, each value's source marked.
    fn official_borep() -> BoRepConfig;

    /// The metric the tables lead with and the plots show.
    fn main_metric() -> &'static str {
        "test/accuracy"
    }

    /// Whether the metrics depend on x alone (hyper-rep fits fresh heads on x at every
    /// evaluation), so that `refit`, which retrains y, cannot change them.
    const EVALUATES_X_ALONE: bool = false;

    /// The (accuracy, loss) a grid search chooses by, never the test split's; or why this
    /// configuration has nothing to choose on.
    fn selection_metric(_config: &Self::Config) -> anyhow::Result<(&'static str, &'static str)> {
        Ok(("validation/accuracy", "validation/loss"))
    }

    /// Checks the settings, and that `method` means something on this task (by default, any
    /// method does).
    fn validate(config: &Self::Config, _method: &MethodConfig) -> anyhow::Result<()> {
        config.validate()
    }

    /// Loads the task's data for `seed` from `data_dir`, builds its problem with `model`'s
    /// encoder and its initial variables on `dev` and passes them to `visitor`.
    fn with_problem<F: Real, V: TaskVisitor<F>>(
        config: &Self::Config,
        model: ModelName,
        seed: u64,
        data_dir: &Path,
        dev: &Cpu,
        visitor: V,
    ) -> anyhow::Result<V::Output>
    where
        Cpu: Device<F>;
}

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
