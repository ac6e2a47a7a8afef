//! `bilevel-bench check`: the problem check of `bilevel_optim::check` on a task as configured,
//! at its starting point, on one lower and one upper batch of its real data, in f64 (the same
//! code as the f32 runs, instantiated in double precision, so the differences are tight).

use std::path::Path;

use bilevel_optim::check::{check_problem, CheckConfig, CheckReport};
use dfdx::prelude::Cpu;

use crate::run::config::RunConfig;
use crate::tasks::dispatch::{with_task, TaskProblem, TaskVisitor};
use crate::tasks::Metrics;

/// Checks `config`'s task (its written gradient against dfdx's autodiff, its products against
/// differences, its losses' taping) and returns the report, with the model variant it checked.
pub fn check_task(config: &RunConfig, data_dir: &Path) -> anyhow::Result<(String, CheckReport)> {
    config.validate()?;
    let dev = Cpu::default();
    with_task(config, data_dir, &dev, Check { seed: config.seed })
}

struct Check {
    seed: u64,
}

impl TaskVisitor<f64> for Check {
    type Output = (String, CheckReport);

    fn visit<P: TaskProblem<f64>>(
        self,
        model: &str,
        mut problem: P,
        x: P::X,
        y: P::Y,
        _evaluate: impl FnMut(&P::X, &P::Y) -> Metrics,
    ) -> anyhow::Result<Self::Output> {
        let config = CheckConfig {
            seed: self.seed,
            ..CheckConfig::for_precision::<f64>()
        };
        Ok((
            model.to_string(),
            check_problem(&mut problem, &x, &y, &config),
        ))
    }
}
