//! The closed-form problems of bilevel-optim, where the exact hypergradient is known: a quick
//! check that a method converges, printed as ‖∇Φ(x)‖ relative to its start.

use anyhow::Result;
use bilevel_optim::methods::borep::{BoRepConfig, InitRefinement, ZInit};
use bilevel_optim::methods::MethodConfig;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::problems::*;
use dfdx::prelude::*;

/// The method called `name`: BO-REP with steps suited to these small problems, any other with
/// its default configuration.
pub fn method(name: &str) -> Result<MethodConfig> {
    Ok(if name == "bo-rep" {
        MethodConfig::new(borep_config())
    } else {
        MethodConfig::default_for(name)?
    })
}

/// BO-REP with steps suited to the small closed-form problems.
fn borep_config() -> BoRepConfig {
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

/// Runs `method` from the given start and prints the relative exact hypergradient norm.
fn run<P: ClosedForm<f64> + 'static>(
    name: &str,
    method: &MethodConfig,
    problem: P,
    x: P::X,
    y: P::Y,
    iters: usize,
) -> Result<()>
where
    P::X: 'static,
    P::Y: 'static,
{
    let mut method = match method.build(&x, &y, &problem) {
        Ok(m) => m,
        Err(e) => {
            println!("{name}, {}: skipped ({e})\n", method.name());
            return Ok(());
        }
    };
    let mut oracles = Oracles::new(problem, 0);
    let (mut x, mut y) = (x, y);
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
        "{name}, {}: ‖∇Φ(x_0)‖ = {g0:.4e}, Φ(x_0) = {:.6}",
        method.name(),
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

/// Runs `method`, a built-in method, on the three problems.
pub fn synthetic(method: &MethodConfig, iters: usize) -> Result<()> {
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
        method,
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
        method,
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
        method,
        reweight,
        dev.ones(),
        dev.zeros(),
        iters,
    )?;
    Ok(())
}
