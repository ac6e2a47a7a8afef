//! A method written outside the library (`examples/own_method.rs`, AID with fixed-point
//! iterations) is registered and then run by the bench's `tune` and `compare` like a built-in
//! one; on a closed-form problem it converges and resumes from its saved state exactly.

mod common;
#[path = "../examples/own_method.rs"]
mod own_method;

use bilevel_optim::methods::method::Start;
use bilevel_optim::methods::Method;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::params::Params;
use bilevel_optim::problems::{exact_hypergradient, Quadratic, QuadraticConfig};
use dfdx::prelude::*;
use own_method::AidFpConfig;

#[test]
fn a_method_written_outside_the_library_is_tuned_and_compared_by_the_bench() {
    let out = common::scratch("own-method", "demo");
    let table = own_method::demo(&out, 6).unwrap();
    let tuned = std::fs::read_to_string(out.join("tune/hyper-clean/tune/tuned.toml")).unwrap();
    assert!(tuned.contains("method = \"aid-fp\""), "{tuned}");
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
    assert!(rows.iter().any(|l| l.contains("aid-fp")), "{table}");
    assert!(rows.iter().any(|l| l.contains("soba")), "{table}");
    for seed in [0, 1] {
        let summary = out.join(format!(
            "compare/hyper-clean/aid-fp/seed-{seed}/summary.json"
        ));
        assert!(summary.is_file(), "{}", summary.display());
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_outside_method_converges_and_resumes_from_its_saved_state() {
    let problem = Quadratic::<f64, 3, 4>::new(QuadraticConfig::default());
    let dev = Cpu::default();
    let (mut x, mut y): (Tensor<Rank1<3>, f64, Cpu>, Tensor<Rank1<4>, f64, Cpu>) =
        (dev.zeros(), dev.zeros());
    let start_norm = exact_hypergradient(&problem, &x).norm();
    let config = AidFpConfig {
        eta: 0.05,
        gamma: 0.3,
        inner_steps: 3,
        fp_steps: 4,
        alpha: 0.5,
    };
    let mut method = config.build(Start::at(&x, &y, &problem)).unwrap();
    let mut oracles = Oracles::new(problem, 0);
    for _ in 0..10 {
        method.step(&mut oracles, &mut x, &mut y).unwrap();
    }
    // A second copy continues from the first one's saved state.
    let mut resumed = config.build(Start::at(&x, &y, oracles.problem())).unwrap();
    resumed.load_state(&method.state()).unwrap();
    let (mut x2, mut y2) = (x.clone(), y.clone());
    let mut oracles2 = Oracles::new(Quadratic::<f64, 3, 4>::new(QuadraticConfig::default()), 0);
    oracles2.load_state(&oracles.state());
    for _ in 0..990 {
        method.step(&mut oracles, &mut x, &mut y).unwrap();
        resumed.step(&mut oracles2, &mut x2, &mut y2).unwrap();
    }
    assert_eq!(x.to_flat(), x2.to_flat());
    assert_eq!(y.to_flat(), y2.to_flat());
    let end_norm = exact_hypergradient(oracles.problem(), &x).norm();
    assert!(end_norm < 1e-6 * start_norm, "{start_norm} → {end_norm}");
}
