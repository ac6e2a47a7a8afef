//! bilevel-bench: runs bilevel methods and reports what they do.
//!
//! The text tasks (hyper-representation, hyperparameter optimization, data hyper-cleaning) come
//! with their own issue. Until then the bench runs BO-REP on the library's closed-form problems,
//! where the exact hypergradient is known, and prints its decay.

use anyhow::{bail, Context, Result};
use bilevel_optim::borep::{BoRep, BoRepConfig, InitRefinement, ZInit};
use bilevel_optim::optimizer::BilevelOptimizer;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::problems::*;
use dfdx::prelude::*;

const USAGE: &str = "usage: bilevel-bench synthetic [--iters N]

Runs BO-REP on the closed-form problems of bilevel-optim (stochastic quadratic, ridge
hyperparameter optimization, logistic data reweighting) and prints ‖∇Φ(x)‖ against the exact
hypergradient as the iterations go.";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("synthetic") => synthetic(parse_iters(&args[1..])?),
        Some("--help") | Some("-h") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command '{other}'\n\n{USAGE}"),
    }
}

fn parse_iters(args: &[String]) -> Result<usize> {
    match args {
        [] => Ok(4000),
        [flag, n] if flag == "--iters" => {
            let n: usize = n
                .parse()
                .with_context(|| format!("--iters: '{n}' is not a whole number"))?;
            if n == 0 {
                bail!("--iters must be at least 1");
            }
            Ok(n)
        }
        _ => bail!("unexpected arguments {args:?}\n\n{USAGE}"),
    }
}

fn config() -> BoRepConfig {
    BoRepConfig {
        eta: 0.05,
        eta_decay: 0.5,
        gamma: 0.1,
        nu: 0.1,
        period: 2,
        lower_steps: 3,
        z_init: ZInit::Zeros,
        init_refinement: InitRefinement::Sgd { steps: 50 },
        ..Default::default()
    }
}

/// Runs BO-REP from x = 0, y = 0 and prints the relative exact hypergradient norm.
fn run<P: ClosedForm<f64>>(name: &str, problem: P, x: P::X, y: P::Y, iters: usize) -> Result<()> {
    let mut oracles = Oracles::new(problem, 0);
    let (mut x, mut y) = (x, y);
    let mut method = BoRep::new(config(), &x, &y)?;
    let grad_norm = |o: &Oracles<f64, P>, x: &P::X| {
        o.problem()
            .hypergradient(&as_f64(x))
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt()
    };
    let g0 = grad_norm(&oracles, &x);
    println!(
        "{name}: ‖∇Φ(x_0)‖ = {g0:.4e}, Φ(x_0) = {:.6}",
        oracles.problem().phi(&as_f64(&x))
    );
    for t in 1..=iters {
        method.step(&mut oracles, &mut x, &mut y)?;
        if t % (iters / 4).max(1) == 0 {
            println!(
                "  iter {t:6}: ‖∇Φ‖/‖∇Φ(x_0)‖ = {:.3e}, Φ = {:.6}",
                grad_norm(&oracles, &x) / g0,
                oracles.problem().phi(&as_f64(&x))
            );
        }
    }
    println!("  oracle calls: {:?}\n", oracles.counts());
    Ok(())
}

fn synthetic(iters: usize) -> Result<()> {
    let dev = Cpu::default();
    let quad = Quadratic::<f64, 5, 8>::new(QuadraticConfig {
        grad_noise: 0.1,
        hessian_noise: 0.1,
        upper_noise: 0.1,
        batch_size: 8,
        ..Default::default()
    });
    run(
        "stochastic quadratic (dim x 5, dim y 8)",
        quad,
        dev.zeros(),
        dev.zeros(),
        iters,
    )?;
    let ridge = Ridge::<f64, Tensor<Rank1<6>, f64, Cpu>, 6>::synthetic(RidgeConfig {
        train_rows: 200,
        val_rows: 100,
        lower_batch: Some(32),
        upper_batch: Some(32),
        ..Default::default()
    });
    run(
        "ridge, per-feature log λ (6 features)",
        ridge,
        dev.zeros(),
        dev.zeros(),
        iters,
    )?;
    let reweight = LogisticReweighting::<f64, 60, 4>::synthetic(ReweightingConfig {
        lower_batch: Some(16),
        upper_batch: Some(16),
        ..Default::default()
    });
    run(
        "logistic reweighting, 60 samples, 30% labels flipped",
        reweight,
        dev.ones(),
        dev.zeros(),
        iters,
    )?;
    Ok(())
}
