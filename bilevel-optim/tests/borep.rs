//! BO-REP on closed-form problems: convergence, noise floor, exact normalized steps, Epoch-SGD's
//! schedule, oracle costs, savable state, and clear failures.

mod common;

use bilevel_optim::epoch_sgd::{epoch_sgd, EpochSgdConfig};
use bilevel_optim::error::BilevelError;
use bilevel_optim::methods::borep::*;
use bilevel_optim::optimizer::BilevelOptimizer;
use bilevel_optim::oracles::{OracleCounts, Oracles};
use bilevel_optim::params::Params;
use bilevel_optim::problems::*;
use bilevel_optim::steps::Site;
use common::*;
use dfdx::prelude::*;

type Quad = Quadratic<f64, 3, 4>;
type Vx = Tensor<Rank1<3>, f64, Cpu>;
type Vy = Tensor<Rank1<4>, f64, Cpu>;

fn start() -> (Vx, Vy) {
    let dev = Cpu::default();
    (dev.zeros(), dev.zeros())
}

fn quad(noise: f64) -> Oracles<f64, Quad> {
    let cfg = QuadraticConfig {
        grad_noise: noise,
        hessian_noise: noise,
        upper_noise: noise,
        batch_size: 4,
        ..Default::default()
    };
    Oracles::new(Quad::new(cfg), 1)
}

fn config(period: usize) -> BoRepConfig {
    BoRepConfig {
        eta: 0.2,
        eta_decay: 1.0,
        gamma: 0.4,
        nu: 0.4,
        period,
        lower_steps: 2,
        z_init: ZInit::Zeros,
        init_refinement: InitRefinement::Sgd { steps: 2 },
        ..Default::default()
    }
}

fn grad_phi(o: &Oracles<f64, Quad>, x: &Vx) -> f64 {
    norm(&o.problem().hypergradient(&as_f64(x)))
}

/// Iteration budget for the deterministic quadratic: 20,000 iterations with η_t = 0.2/(t+1).
#[test]
fn converges_on_deterministic_quadratic_with_and_without_periodic_updates() {
    for period in [1, 3] {
        let mut o = quad(0.0);
        let (mut x, mut y) = start();
        let mut opt = BoRep::new(config(period), &x, &y).unwrap();
        let g0 = grad_phi(&o, &x);
        for _ in 0..20_000 {
            opt.step(&mut o, &mut x, &mut y).unwrap();
        }
        let rel = grad_phi(&o, &x) / g0;
        assert!(rel < 1e-3, "I = {period}: ‖∇Φ(x_T)‖/‖∇Φ(x_0)‖ = {rel:e}");
        // y and z track their targets at the final x.
        let y_err = rel_err(&as_f64(&y), &o.problem().y_star(&as_f64(&x)));
        let z_err = rel_err(&as_f64(opt.z()), &o.problem().z_star(&as_f64(&x)));
        assert!(
            y_err < 1e-3 && z_err < 1e-3,
            "I = {period}: y error {y_err:e}, z error {z_err:e}"
        );
    }
}

/// With a constant step on the stochastic problem, ‖∇Φ‖ settles at a floor that shrinks with η.
#[test]
fn stochastic_quadratic_reaches_a_floor_that_scales_with_the_step() {
    let floor = |eta: f64| {
        let mut o = quad(0.2);
        let (mut x, mut y) = start();
        let cfg = BoRepConfig {
            eta,
            eta_decay: 0.0,
            gamma: 0.2,
            nu: 0.2,
            ..config(1)
        };
        let mut opt = BoRep::new(cfg, &x, &y).unwrap();
        let g0 = grad_phi(&o, &x);
        let mut tail = Vec::new();
        for t in 0..8000 {
            opt.step(&mut o, &mut x, &mut y).unwrap();
            if t >= 6000 {
                tail.push(grad_phi(&o, &x) / g0);
            }
        }
        tail.iter().sum::<f64>() / tail.len() as f64
    };
    let (coarse, fine) = (floor(0.004), floor(0.0004));
    println!("noise floor: η = 0.004 → {coarse:.3e}, η = 0.0004 → {fine:.3e}");
    assert!(coarse < 0.2, "floor at η = 0.004: {coarse:e}");
    assert!(
        fine < 0.3 * coarse,
        "a 10x smaller step must lower the floor: {fine:e} vs {coarse:e}"
    );
}

#[test]
fn every_x_step_has_length_exactly_eta() {
    let mut o = quad(0.5);
    let (mut x, mut y) = start();
    let cfg = BoRepConfig {
        eta: 0.03,
        eta_decay: 0.0,
        ..config(2)
    };
    let mut opt = BoRep::new(cfg, &x, &y).unwrap();
    for _ in 0..50 {
        let before = x.clone();
        let report = opt.step(&mut o, &mut x, &mut y).unwrap();
        let mut d = x.clone();
        d.add_scaled(-1.0, &before);
        assert!(
            (d.norm() - 0.03).abs() < 1e-12 * 0.03,
            "step length {}",
            d.norm()
        );
        assert!((report.x_step_norm - 0.03).abs() < 1e-12);
    }
}

/// The cost table of docs/algorithms.md: t = 0 costs the refinement's lower gradients; a periodic
/// iteration (t > 0, t mod I = 0) N lower gradients; every iteration one upper gradient, one HVP
/// and one cross product (one shared pass).
#[test]
fn oracle_counts_match_the_cost_table() {
    let (period, n, init) = (3u64, 2u64, 5u64);
    let cfg = BoRepConfig {
        period: period as usize,
        lower_steps: n as usize,
        init_refinement: InitRefinement::Sgd {
            steps: init as usize,
        },
        ..config(1)
    };
    let mut o = quad(0.1);
    let (mut x, mut y) = start();
    let mut opt = BoRep::new(cfg, &x, &y).unwrap();
    let batch = 4;
    for t in 0..10u64 {
        let r = opt.step(&mut o, &mut x, &mut y).unwrap();
        let lower = if t == 0 {
            init
        } else if t % period == 0 {
            n
        } else {
            0
        };
        let expected = OracleCounts {
            upper_grad: 1,
            lower_grad: lower,
            hvp: 1,
            jvp: 1,
            upper_samples: batch,
            lower_samples: batch * (lower + 1),
        };
        assert_eq!(r.oracle_calls, expected, "iteration {t}");
    }
    // The official code's variant (cross product with z_{t+1} on its own batch) costs one more pass.
    let cfg = BoRepConfig {
        jvp_with_updated_z: true,
        separate_jvp_batch: true,
        ..config(1)
    };
    let mut opt = BoRep::new(cfg, &x, &y).unwrap();
    let r = opt.step(&mut o, &mut x, &mut y).unwrap();
    assert_eq!(
        (
            r.oracle_calls.hvp,
            r.oracle_calls.jvp,
            r.oracle_calls.lower_samples
        ),
        (1, 1, 4 * (2 + 2))
    );
}

#[test]
fn epoch_sgd_follows_its_schedule_and_reaches_y_star() {
    let mut o = quad(0.2);
    let (x, y) = start();
    let cfg = EpochSgdConfig {
        step: 0.4,
        length: 8,
        radius: 4.0,
        epochs: 7,
    };
    let site = Site {
        method: "test",
        iteration: 0,
        hint: "",
    };
    let before = o.counts().lower_grad;
    let (refined, schedule) = epoch_sgd(&mut o, &x, &y, &cfg, site).unwrap();
    assert_eq!(o.counts().lower_grad - before, 8 * (2u64.pow(7) - 1));
    for (k, e) in schedule.iter().enumerate() {
        assert_eq!(e.epoch, k + 1);
        assert_eq!(e.length, 8 << k);
        assert!((e.step - 0.4 / 2f64.powi(k as i32)).abs() < 1e-15);
        assert!((e.radius - 4.0 / 2f64.sqrt().powi(k as i32)).abs() < 1e-12);
    }
    let y_star = o.problem().y_star(&as_f64(&x));
    let err = rel_err(&as_f64(&refined), &y_star);
    let start_err = rel_err(&as_f64(&y), &y_star);
    println!("Epoch-SGD: relative error {start_err:.3e} → {err:.3e}");
    assert!(err < 0.03, "Epoch-SGD error {err:e}");

    // A radius smaller than the distance to y* keeps every epoch inside its ball: after one epoch
    // the average lies within D₁ of the start.
    let tight = EpochSgdConfig {
        step: 0.4,
        length: 8,
        radius: 0.05,
        epochs: 1,
    };
    let (one, _) = epoch_sgd(&mut o, &x, &y, &tight, site).unwrap();
    assert!(
        one.norm() <= 0.05 + 1e-12,
        "average left the ball: {}",
        one.norm()
    );
}

#[test]
fn borep_with_epoch_sgd_refinement_runs_it_at_t0() {
    let mut o = quad(0.0);
    let (mut x, mut y) = start();
    let ecfg = EpochSgdConfig {
        step: 0.4,
        length: 4,
        radius: 10.0,
        epochs: 5,
    };
    let cfg = BoRepConfig {
        init_refinement: InitRefinement::EpochSgd(ecfg.clone()),
        ..config(2)
    };
    let mut opt = BoRep::new(cfg, &x, &y).unwrap();
    let r = opt.step(&mut o, &mut x, &mut y).unwrap();
    assert_eq!(r.oracle_calls.lower_grad as usize, ecfg.total_steps());
    assert_eq!(opt.refinement_schedule().len(), 5);
}

/// Saving after k steps and resuming in a fresh optimizer gives bit-identical iterates.
#[test]
fn saved_state_resumes_bit_identically() {
    let cfg = BoRepConfig {
        z_init: ZInit::Xavier,
        ..config(2)
    };
    let mut o = quad(0.5);
    let (mut x, mut y) = start();
    let mut opt = BoRep::new(cfg.clone(), &x, &y).unwrap();
    for _ in 0..7 {
        opt.step(&mut o, &mut x, &mut y).unwrap();
    }
    let saved = (opt.state(), o.state(), x.to_flat(), y.to_flat());
    let json = serde_json::to_string(&saved.0).unwrap();
    for _ in 0..9 {
        opt.step(&mut o, &mut x, &mut y).unwrap();
    }

    let mut o2 = quad(0.5);
    o2.load_state(&saved.1);
    let (mut x2, mut y2) = start();
    x2.set_flat(&saved.2).unwrap();
    y2.set_flat(&saved.3).unwrap();
    let mut opt2 = BoRep::new(BoRepConfig { seed: 99, ..cfg }, &x2, &y2).unwrap();
    opt2.load_state(&serde_json::from_str(&json).unwrap())
        .unwrap();
    for _ in 0..9 {
        opt2.step(&mut o2, &mut x2, &mut y2).unwrap();
    }
    assert_eq!(x.to_flat(), x2.to_flat());
    assert_eq!(y.to_flat(), y2.to_flat());
    assert_eq!(opt.z().to_flat(), opt2.z().to_flat());
    assert_eq!(o.counts(), o2.counts());

    let mut wrong = opt.state();
    wrong.method = "stocbio".into();
    assert!(matches!(
        opt2.load_state(&wrong),
        Err(BilevelError::StateMismatch(_))
    ));
}

#[test]
fn divergence_stops_with_the_quantity_and_iteration_named() {
    let mut o = quad(0.0);
    let (mut x, mut y) = start();
    let cfg = BoRepConfig {
        gamma: 1e3,
        ..config(1)
    };
    let mut opt = BoRep::new(cfg, &x, &y).unwrap();
    let err = (0..200)
        .find_map(|_| opt.step(&mut o, &mut x, &mut y).err())
        .expect("must diverge");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            BilevelError::NonFinite {
                method: "bo-rep",
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("not finite at iteration") && msg.contains("gamma"),
        "{msg}"
    );
}

#[test]
fn invalid_configuration_names_the_field() {
    let (x, y) = start();
    for (cfg, field) in [
        (
            BoRepConfig {
                eta: -1.0,
                ..Default::default()
            },
            "eta",
        ),
        (
            BoRepConfig {
                beta: 1.0,
                ..Default::default()
            },
            "beta",
        ),
        (
            BoRepConfig {
                period: 0,
                ..Default::default()
            },
            "period",
        ),
        (
            BoRepConfig {
                z_radius: Some(0.0),
                ..Default::default()
            },
            "z_radius",
        ),
        (
            BoRepConfig {
                init_refinement: InitRefinement::EpochSgd(EpochSgdConfig {
                    step: 0.1,
                    length: 0,
                    radius: 1.0,
                    epochs: 2,
                }),
                ..Default::default()
            },
            "epoch_sgd.length",
        ),
    ] {
        match BoRep::<f64, Quad>::new(cfg, &x, &y) {
            Err(BilevelError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("{field} accepted"),
        }
    }
}

#[test]
fn projection_keeps_z_in_its_ball_and_f32_runs() {
    let mut o: Oracles<f32, Quadratic<f32, 3, 4>> =
        Oracles::new(Quadratic::new(QuadraticConfig::default()), 0);
    let dev = Cpu::default();
    let (mut x, mut y): (Tensor<Rank1<3>, f32, Cpu>, Tensor<Rank1<4>, f32, Cpu>) =
        (dev.zeros(), dev.zeros());
    let cfg = BoRepConfig {
        z_radius: Some(0.1),
        z_init: ZInit::Xavier,
        ..config(1)
    };
    let mut opt = BoRep::new(cfg, &x, &y).unwrap();
    for _ in 0..100 {
        let r = opt.step(&mut o, &mut x, &mut y).unwrap();
        assert!(r.upper_loss.unwrap().is_finite());
        assert!(opt.z().norm() <= 0.1 + 1e-6);
    }
}
