//! A method written outside the library, run by the bench like a built-in one.
//!
//! AID-CG (approximate implicit differentiation, Pedregosa 2016; Grazzi et al. 2020): a few SGD
//! steps on y, then K conjugate-gradient steps on `∇²_yy G·v = ∇_y F` with exact
//! Hessian-vector products on one lower batch (warm-started from the last v), and a plain step
//! `x ← x − η (∇_x F − ∇²_xy G·v)`. The whole method is this file's first half: a configuration
//! implementing `Method` and its memory (v) implementing `Rule`, the iteration.
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

/// The knobs of AID-CG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AidCgConfig {
    /// η: the x step.
    pub eta: f64,
    /// γ: the y step.
    pub gamma: f64,
    /// SGD steps on y per iteration.
    pub inner_steps: usize,
    /// Conjugate-gradient steps per iteration.
    pub cg_steps: usize,
}

impl Default for AidCgConfig {
    fn default() -> Self {
        Self {
            eta: 0.05,
            gamma: 0.05,
            inner_steps: 2,
            cg_steps: 3,
        }
    }
}

impl Method for AidCgConfig {
    const NAME: &'static str = "aid-cg";
    const HINT: &'static str = "eta for x, gamma for y";

    fn validate(&self) -> Result<(), BilevelError> {
        validate::positive("eta", self.eta)?;
        validate::positive("gamma", self.gamma)?;
        validate::at_least_one("cg_steps", self.cg_steps)
    }

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma, &mut self.eta)
    }

    bilevel_optim::rule_optimizer!(|_, at| AidCg {
        v: at.y.zeros_like(),
    });
}

/// AID-CG's memory: the last linear-system solution, the warm start of the next.
pub struct AidCg<Y> {
    v: Y,
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for AidCg<P::Y>
where
    Cpu: Device<E>,
{
    type Config = AidCgConfig;
    bilevel_optim::saved_memory!(vector v);

    fn iterate(&mut self, it: Iteration<'_, E, P, AidCgConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, site) = (it.config, it.site);
        let lower_loss = sgd_on_lower(oracles, x, y, E::of(c.gamma), c.inner_steps, site)?;
        let xi = oracles.upper_batch();
        let upper = upper_grad_checked(oracles, x, y, &xi, site)?;
        // Conjugate gradients on H v = ∇_y F, H on one batch, from the last v.
        let zeta = oracles.lower_batch();
        let mut residual = upper.dy.clone();
        residual.add_scaled(-E::one(), &oracles.hvp(x, y, &self.v, &zeta)?);
        let mut direction = residual.clone();
        let mut rr = residual.norm_sq();
        for _ in 0..c.cg_steps {
            let hd = oracles.hvp(x, y, &direction, &zeta)?;
            let curvature = direction.dot(&hd);
            if curvature <= E::zero() || rr == E::zero() {
                break; // H is not positive definite along d (or v is exact): keep v.
            }
            let alpha = rr / curvature;
            self.v.add_scaled(alpha, &direction);
            residual.add_scaled(-alpha, &hd);
            let rr_next = residual.norm_sq();
            direction.scale(rr_next / rr);
            direction.add_scaled(E::one(), &residual);
            rr = rr_next;
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
            linear_system_residual: Some(rr.f64().sqrt()),
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

/// Registers AID-CG, tunes its step sizes on a 2 × 2 grid, then compares it with SOBA over two
/// seeds, everything under `out`. Returns the comparison's table.
pub fn demo(out: &Path, iters: usize) -> anyhow::Result<String> {
    bilevel_bench::run::methods::register::<AidCgConfig>()?;
    let data_dir = bilevel_bench::tasks::resolve_data_dir(None)?;
    let base = small_hyper_clean(iters);
    let tuned = tune(
        &TuneOptions {
            base: base.clone(),
            methods: vec!["aid-cg".into()],
            lower_grid: vec![0.05, 0.5],
            upper_grid: vec![0.05, 0.5],
            seeds: vec![0],
            out: out.join("tune"),
            jobs: 1,
            verbose: false,
            halving: None,
        },
        &data_dir,
    )?;
    println!("{}", tuned.markdown);
    let report = compare(
        &CompareOptions {
            base,
            methods: vec!["aid-cg".into(), "soba".into()],
            seeds: vec![0, 1],
            out: out.join("compare"),
            progress: false,
            tuned: Some(tuned.tuned),
            jobs: 1,
            steps: Vec::new(),
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
