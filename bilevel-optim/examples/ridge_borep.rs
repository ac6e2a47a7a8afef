//! Solves ridge-regression hyperparameter optimization (one log-regularization per feature) with
//! BO-REP on stochastic batches, then prints the hypergradient error against the closed form.
//!
//! cargo run --release -p bilevel-optim --example ridge_borep

use bilevel_optim::methods::borep::{BoRep, BoRepConfig, InitRefinement, ZInit};
use bilevel_optim::optimizer::BilevelOptimizer;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::params::Params;
use bilevel_optim::problems::{as_f64, ClosedForm, Ridge, RidgeConfig};
use dfdx::prelude::*;

const D: usize = 8;
type X = Tensor<Rank1<D>, f64, Cpu>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let problem = Ridge::<f64, X, D>::synthetic(RidgeConfig {
        train_rows: 200,
        val_rows: 100,
        noise: 1.0,
        lower_batch: Some(32),
        upper_batch: Some(32),
        seed: 7,
    });
    let mut oracles = Oracles::new(problem, 0);
    let dev = Cpu::default();
    let mut x: X = dev.zeros(); // log λ = 0: λ = 1 for every feature
    let mut y: Tensor<Rank1<D>, f64, Cpu> = dev.zeros();
    let config = BoRepConfig {
        eta: 0.05,
        eta_decay: 0.5,
        gamma: 0.05,
        nu: 0.05,
        period: 2,
        lower_steps: 5,
        z_init: ZInit::Zeros,
        init_refinement: InitRefinement::Sgd { steps: 200 },
        ..Default::default()
    };
    let mut method = BoRep::new(config, &x, &y)?;

    let phi0 = oracles.problem().phi(&as_f64(&x));
    let g0 = oracles.problem().hypergradient(&as_f64(&x));
    println!("iter  Φ(x)        ‖∇Φ(x)‖      F on batch");
    for t in 0..3000 {
        let report = method.step(&mut oracles, &mut x, &mut y)?;
        if t % 500 == 0 || t == 2999 {
            let g = oracles.problem().hypergradient(&as_f64(&x));
            println!(
                "{t:4}  {:.6}  {:.4e}  {:.4}",
                oracles.problem().phi(&as_f64(&x)),
                norm(&g),
                report.upper_loss.unwrap_or(f64::NAN)
            );
        }
    }

    // The last hypergradient estimate BO-REP used is ∇_x F − J z; compare it at the final point
    // with the exact ∇Φ(x), on the full data, with z and y as BO-REP left them.
    let full = oracles.problem().full_lower_batch();
    let jz = oracles.jvp(&x, &y, method.z(), &full)?;
    let mut estimate = x.zeros_like();
    estimate.add_scaled(-1.0, &jz);
    let exact = oracles.problem().hypergradient(&as_f64(&x));
    let err: Vec<f64> = as_f64(&estimate)
        .iter()
        .zip(&exact)
        .map(|(a, b)| a - b)
        .collect();
    println!();
    println!(
        "Φ: {phi0:.6} → {:.6}  (‖∇Φ‖ {:.3e} → {:.3e})",
        oracles.problem().phi(&as_f64(&x)),
        norm(&g0),
        norm(&exact)
    );
    println!(
        "learned log λ: {:?}",
        as_f64(&x)
            .iter()
            .map(|v| (v * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    println!(
        "hypergradient estimate vs closed form: absolute error {:.3e}, relative to ‖∇Φ(x_0)‖ {:.3e}",
        norm(&err),
        norm(&err) / norm(&g0)
    );
    println!("oracle calls: {:?}", oracles.counts());
    Ok(())
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}
