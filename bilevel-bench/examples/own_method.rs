//! A method written outside the library, run by the bench like a built-in one.
//!
//! AID-FP (approximate implicit differentiation with fixed-point iterations, Grazzi, Franceschi,
//! Pontil, Salzo, ICML 2020): a few SGD steps on y, then K Richardson steps
//! `v ← v − α (∇²_yy G·v − ∇_y F)` with exact Hessian-vector products on one lower batch
//! (warm-started from the last v), and a plain step `x ← x − η (∇_x F − ∇²_xy G·v)`. The whole
//! method is this file's first half: a configuration implementing `Method` and its memory (v)
//! implementing `Rule`, the iteration.
//!
//! The second half registers it with `bilevel_bench::run::methods::register` and runs it with
//! `compare` and `tune` on the data hyper-cleaning task at small sizes:
//!
//! ```text
//! cargo run --release -p bilevel-bench --example own_method -- /tmp/own-method
//! ```

use std::path::Path;

use bilevel_bench::report::compare::{compare, CompareOptions};
use bilevel_bench::report::tune::{tune, TuneOptions};
use bilevel_bench::run::config::RunConfig;
use bilevel_optim::error::BilevelError;
use bilevel_optim::methods::method::Steps;
use bilevel_optim::methods::rule::{Iteration, Rule};
use bilevel_optim::methods::Method;
use bilevel_optim::params::Params;
use bilevel_optim::problem::BilevelProblem;
use bilevel_optim::real::Real;
use bilevel_optim::steps::{
    plain_step, project_and_check_x, sgd_on_lower, upper_grad_checked, Outcome,
};
use bilevel_optim::validate;
use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

/// The knobs of AID-FP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AidFpConfig {
    /// η: the x step.
    pub eta: f64,
    /// γ: the y step.
    pub gamma: f64,
    /// SGD steps on y per iteration.
    pub inner_steps: usize,
    /// K: fixed-point steps on the linear system per iteration.
    pub fp_steps: usize,
    /// α: the fixed-point step, at most 1/L for the steps to contract.
    pub alpha: f64,
}

impl Default for AidFpConfig {
    fn default() -> Self {
        Self {
            eta: 0.05,
            gamma: 0.05,
            inner_steps: 2,
            fp_steps: 3,
            alpha: 0.1,
        }
    }
}

impl Method for AidFpConfig {
    const NAME: &'static str = "aid-fp";
    const HINT: &'static str = "eta for x, gamma for y, alpha for v";

    fn validate(&self) -> Result<(), BilevelError> {
        validate::positive("eta", self.eta)?;
        validate::positive("gamma", self.gamma)?;
        validate::positive("alpha", self.alpha)?;
        validate::at_least_one("fp_steps", self.fp_steps)
    }

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma, &mut self.eta).and(&mut self.alpha)
    }

    bilevel_optim::rule_optimizer!(|_, at| AidFp {
        v: at.y.zeros_like(),
    });
}

/// AID-FP's memory: the last linear-system solution, the warm start of the next.
pub struct AidFp<Y> {
    v: Y,
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for AidFp<P::Y>
where
    Cpu: Device<E>,
{
    type Config = AidFpConfig;
    bilevel_optim::saved_memory!(vector v);

    fn iterate(&mut self, it: Iteration<'_, E, P, AidFpConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, site) = (it.config, it.site);
        let lower_loss = sgd_on_lower(oracles, x, y, E::of(c.gamma), c.inner_steps, site)?;
        let xi = oracles.upper_batch();
        let upper = upper_grad_checked(oracles, x, y, &xi, site)?;
        // K Richardson steps on H v = ∇_y F, H on one batch, from the last v.
        let zeta = oracles.lower_batch();
        let mut residual_norm = 0.0;
        for _ in 0..c.fp_steps {
            let mut residual = oracles.hvp(x, y, &self.v, &zeta)?;
            residual.add_scaled(-E::one(), &upper.dy);
            residual_norm = residual.norm().f64();
            self.v.add_scaled(-E::of(c.alpha), &residual);
        }
        site.check("linear-system solution v", &self.v)?;
        let mut h = upper.dx.clone();
        h.add_scaled(-E::one(), &oracles.jvp(x, y, &self.v, &zeta)?);
        let (step_size, x_step_norm) = plain_step(x, &h, E::of(c.eta));
        project_and_check_x(oracles, x, site)?;
        Ok(Outcome {
            upper_loss: Some(upper.value.f64()),
            lower_loss,
            hypergrad_norm: h.norm().f64(),
            linear_system_residual: Some(residual_norm),
            step_size,
            x_step_norm,
            ..Default::default()
        })
    }
}

/// The hyper-cleaning task at small sizes (2,000 training tweets, batches of 16 tweets of at
/// most 8 tokens), `iters` iterations.
pub fn small_hyper_clean(iters: usize) -> RunConfig {
    let mut config: RunConfig = toml::from_str(
        r#"
        task = "hyper-clean"
        [hyper_clean]
        train_size = 2000
        batch = 16
        max_len = 8
        "#,
    )
    .expect("a valid configuration");
    (config.iters, config.eval_every) = (iters, iters);
    config
}

/// Registers AID-FP, tunes its step sizes on a 2 × 2 grid, then compares it with SOBA over two
/// seeds, everything under `out`. Returns the comparison's table.
pub fn demo(out: &Path, iters: usize) -> anyhow::Result<String> {
    bilevel_bench::run::methods::register::<AidFpConfig>()?;
    let data_dir = bilevel_bench::tasks::resolve_data_dir(None)?;
    let base = small_hyper_clean(iters);
    let tuned = tune(
        &TuneOptions {
            base: base.clone(),
            methods: vec!["aid-fp".into()],
            lower_grid: vec![0.05, 0.5],
            upper_grid: vec![0.05, 0.5],
            seeds: vec![0],
            out: out.join("tune"),
            jobs: 1,
            verbose: false,
            halving: None,
            refit: None,
        },
        &data_dir,
    )?;
    println!("{}", tuned.markdown);
    let report = compare(
        &CompareOptions {
            base,
            methods: vec!["aid-fp".into(), "soba".into()],
            seeds: vec![0, 1],
            out: out.join("compare"),
            progress: false,
            tuned: Some(tuned.tuned),
            jobs: 1,
            steps: Vec::new(),
            refit: None,
        },
        &data_dir,
    )?;
    Ok(report.markdown)
}

#[allow(dead_code)] // The tests include this file for `demo` and run it themselves.
fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "own-method".into());
    println!("{}", demo(Path::new(&out), 30)?);
    Ok(())
}
