//! What a run leaves behind for comparisons: its evaluations and its summary.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::tasks::Metrics;

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
