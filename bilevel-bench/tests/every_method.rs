//! Every method of the library runs on every text task, at tiny sizes, for two iterations with
//! its oracle calls split over two threads: methods with per-batch memories (SABA) get the
//! tasks' fixed batches, and no method needs anything a task does not provide. (One data load
//! per task; `bilevel-bench run --method M` goes through the same construction.)

mod common;

use bilevel_bench::run::config::RunConfig;
use bilevel_bench::tasks::dispatch::{with_task, TaskProblem, TaskVisitor};
use bilevel_bench::tasks::{resolve_data_dir, Metrics};
use bilevel_optim::methods::METHODS;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::params::Params;
use common::tiny;
use dfdx::prelude::*;

/// Two iterations of every method from the task's starting point; the failures, by method.
struct EveryMethod {
    config: RunConfig,
}

impl TaskVisitor<f32> for EveryMethod {
    type Output = Vec<String>;

    fn visit<P: TaskProblem<f32>>(
        self,
        _model: &str,
        problem: P,
        x: P::X,
        y: P::Y,
        _evaluate: impl FnMut(&P::X, &P::Y) -> Metrics,
    ) -> anyhow::Result<Vec<String>> {
        let mut oracles = Oracles::sharded(problem, 0, 2)?;
        let mut failures = Vec::new();
        for name in METHODS {
            let method = self.config.clone().with_method(Some(name))?.method();
            let (mut x, mut y) = (x.duplicate(), y.duplicate());
            let outcome = method.build(&x, &y, oracles.problem()).and_then(|mut m| {
                m.step(&mut oracles, &mut x, &mut y)?;
                m.step(&mut oracles, &mut x, &mut y)
            });
            if let Err(e) = outcome {
                failures.push(format!("{name}: {e}"));
            }
        }
        Ok(failures)
    }
}

#[test]
fn every_method_runs_on_every_task() {
    let data = resolve_data_dir(None).unwrap();
    let mut failures = Vec::new();
    for task in ["hyper-rep", "hyper-opt", "hyper-clean"] {
        let config = tiny(task);
        let dev = Cpu::seed_from_u64(0);
        let found = with_task(
            &config,
            &data,
            &dev,
            EveryMethod {
                config: config.clone(),
            },
        )
        .unwrap();
        failures.extend(found.into_iter().map(|f| format!("{task}, {f}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
