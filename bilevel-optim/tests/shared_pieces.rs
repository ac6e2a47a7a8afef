//! The shared pieces of the methods against their definitions: the Neumann series (geometric
//! error, unbiased randomization), SAGA memories, STORM and SPIDER updates, MAML's
//! meta-gradient against its closed form, and conjugate gradients against the exact solve.

mod common;

use bilevel_optim::linalg::{add_scaled, Matrix};
use bilevel_optim::linear_solvers::{
    conjugate_gradient, CgConfig, HessianOperator, Solution, Stop,
};
use bilevel_optim::methods::meta::{task_meta_gradient, MetaConfig};
use bilevel_optim::neumann::NeumannConfig;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::problem::BilevelProblem;
use bilevel_optim::problems::*;
use bilevel_optim::schedule::PowerSchedule;
use bilevel_optim::steps::{IterationScope, Site};
use bilevel_optim::variance::{spider_update, storm_update, SagaMemory};
use common::*;
use dfdx::prelude::*;

type Quad = Quadratic<f64, 3, 4>;
type Vx = Tensor<Rank1<3>, f64, Cpu>;
type Vy = Tensor<Rank1<4>, f64, Cpu>;

const SITE: Site = Site {
    method: "test",
    iteration: 0,
    hint: "",
};

fn setup() -> (Oracles<f64, Quad>, Vx, Vy, Vy) {
    let dev = Cpu::seed_from_u64(3);
    let o = Oracles::new(Quad::new(QuadraticConfig::default()), 0);
    (
        o,
        dev.sample_normal(),
        dev.sample_normal(),
        dev.sample_normal(),
    )
}

/// The eigenvalues of H are 0.5, 1, 1.5, 2; with α = 0.4 the error of the Q-term series is
/// ‖(I − αH)^{Q+1} H⁻¹ b‖, which shrinks by 1 − α·0.5 = 0.8 per term once the other directions
/// (factors 0.6, 0.4, 0.2) have died out.
#[test]
fn neumann_error_shrinks_geometrically_at_the_predicted_rate() {
    let (mut o, x, y, b) = setup();
    let exact = o.problem().h.solve_spd(&as_f64(&b));
    let batch = o.problem().full_lower_batch();
    let error = |o: &mut Oracles<f64, Quad>, q: usize| {
        let v = NeumannConfig::deterministic(q, 0.4)
            .inverse_hvp(o, &x, &y, &b, std::slice::from_ref(&batch), SITE)
            .unwrap();
        norm(&add_scaled(&as_f64(&v), -1.0, &exact))
    };
    let errors: Vec<f64> = (0..=40).map(|q| error(&mut o, q)).collect();
    let late_rate = (errors[40] / errors[30]).powf(0.1);
    println!(
        "error Q=0 {:.2e}, Q=20 {:.2e}, Q=40 {:.2e}; rate over Q=30..40 {late_rate:.5}",
        errors[0], errors[20], errors[40]
    );
    assert!((late_rate - 0.8).abs() < 1e-3, "rate {late_rate}");
    assert!(errors.windows(2).all(|w| w[1] < w[0]), "monotone decrease");
}

/// E[Qα Π_{i=1}^{q}(I − αH) b] over q ~ U{0..Q−1} is the (Q−1)-term deterministic series; on a
/// fixed Hessian the randomized estimate takes only Q values, so the mean over many draws
/// converges to it at the Monte Carlo rate.
#[test]
fn randomized_neumann_is_unbiased_for_the_truncated_series() {
    let (mut o, x, y, b) = setup();
    let q_max = 6;
    let batch = o.problem().full_lower_batch();
    let target = NeumannConfig::deterministic(q_max - 1, 0.4)
        .inverse_hvp(&mut o, &x, &y, &b, std::slice::from_ref(&batch), SITE)
        .unwrap();
    let randomized = NeumannConfig::randomized(q_max, 0.4);
    let draws = 6_000;
    let (mut sum, mut sum_sq) = (vec![0.0; 4], vec![0.0; 4]);
    for _ in 0..draws {
        let q = o.draw_index(q_max);
        let batches: Vec<_> = (0..q).map(|_| o.problem().full_lower_batch()).collect();
        let v = as_f64(
            &randomized
                .inverse_hvp(&mut o, &x, &y, &b, &batches, SITE)
                .unwrap(),
        );
        for i in 0..4 {
            sum[i] += v[i];
            sum_sq[i] += v[i] * v[i];
        }
    }
    for (i, t) in as_f64(&target).iter().enumerate() {
        let mean = sum[i] / draws as f64;
        let std_err = ((sum_sq[i] / draws as f64 - mean * mean) / draws as f64).sqrt();
        println!("coordinate {i}: mean {mean:.5}, target {t:.5}, standard error {std_err:.1e}");
        assert!(
            (mean - t).abs() < 4.0 * std_err,
            "coordinate {i}: {mean} vs {t} (se {std_err})"
        );
    }
}

#[test]
fn saga_memory_mean_is_the_full_batch_gradient_once_every_batch_is_seen() {
    type X = Tensor<Rank1<3>, f64, Cpu>;
    let mut problem = Ridge::<f64, X, 3>::synthetic(RidgeConfig {
        train_rows: 40,
        val_rows: 8,
        noise: 0.5,
        lower_batch: Some(10),
        upper_batch: None,
        seed: 1,
    });
    let parts: Vec<_> = (0..4).map(|k| problem.lower_part(k).unwrap()).collect();
    let full = problem.full_lower_batch();
    let mut o = Oracles::new(problem, 0);
    let dev = Cpu::seed_from_u64(2);
    let (x, y): (X, Tensor<Rank1<3>, f64, Cpu>) = (dev.sample_normal(), dev.sample_normal());
    let mut memory = SagaMemory::equal(&y, 4);
    for (k, part) in parts.iter().enumerate() {
        let g = o.lower_grad(&x, &y, part).unwrap().dy;
        let estimate = memory.estimate(k, &g);
        if k == 0 {
            // Empty memories: the first estimate is the fresh gradient.
            assert!(rel_err(&as_f64(&estimate), &as_f64(&g)) < 1e-15);
        }
    }
    let exact = o.lower_grad(&x, &y, &full).unwrap().dy;
    let mean: Tensor<Rank1<3>, f64, Cpu> = memory.mean();
    assert!(rel_err(&as_f64(&mean), &as_f64(&exact)) < 1e-13);
    // A revisit: estimate = fresh − memory_k + mean.
    let (k, g) = (2, dev.sample_normal::<Rank1<3>>());
    let old_k = o.lower_grad(&x, &y, &parts[2]).unwrap().dy;
    let expected: Vec<f64> = (0..3)
        .map(|i| as_f64(&g)[i] - as_f64(&old_k)[i] + as_f64(&mean)[i])
        .collect();
    assert!(rel_err(&as_f64(&memory.estimate(k, &g)), &expected) < 1e-14);
}

#[test]
fn storm_and_spider_follow_their_definitions_on_a_fixed_sequence() {
    let dev = Cpu::default();
    let t = |v: [f64; 3]| -> Vx { dev.tensor(v) };
    let news = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [4.0, 0.0, -2.0]];
    let olds = [[0.0, 0.0, 0.0], [1.5, 2.5, 2.0], [0.0, -1.5, 1.0]];
    let (mut d, mut v) = (t([0.0; 3]), t([0.0; 3]));
    let (mut d_ref, mut v_ref) = ([0.0f64; 3], [0.0f64; 3]);
    let a = 0.3;
    for (new, old) in news.iter().zip(&olds) {
        storm_update(&mut d, &t(*new), &t(*old), a);
        spider_update(&mut v, &t(*new), &t(*old));
        for i in 0..3 {
            d_ref[i] = new[i] + (1.0 - a) * (d_ref[i] - old[i]);
            v_ref[i] += new[i] - old[i];
        }
    }
    assert!(
        rel_err(&as_f64(&d), &d_ref) < 1e-15,
        "{:?} vs {d_ref:?}",
        as_f64(&d)
    );
    assert!(rel_err(&as_f64(&v), &v_ref) < 1e-15);
}

/// For the quadratic task, y_K = M^K θ₀ − α Σ_{j<K} M^j (Cx + b) with M = I − αH, so
/// dF/dθ₀ = M^K ∇_y F(x, y_K) and dF/dx = ∇_x F(x, y_K) − α Σ_{j<K} Cᵀ M^j ∇_y F(x, y_K).
#[test]
fn maml_meta_gradient_equals_the_closed_form_for_one_and_several_steps() {
    for steps in [1, 3] {
        let (mut o, x, theta, _) = setup();
        let alpha = 0.3;
        let config = MetaConfig {
            inner_steps: steps,
            inner_step: alpha,
            outer_step: PowerSchedule::constant(0.1),
            tasks_per_batch: 1,
        };
        let query = o
            .problem_mut()
            .upper_part(0)
            .expect("noise-free: one fixed batch");
        let scope = IterationScope::begin("maml", "", 0, &o);
        let got = task_meta_gradient(&mut o, &x, &theta, &config, scope.site).unwrap();

        let p = o.problem();
        let m = Matrix::from_fn(
            4,
            4,
            |i, j| if i == j { 1.0 } else { 0.0 } - alpha * p.h.at(i, j),
        );
        let (xf, mut y) = (as_f64(&x), as_f64(&theta));
        let shift = add_scaled(&p.c.mul_vec(&xf), 1.0, &p.b);
        for _ in 0..steps {
            y = add_scaled(&m.mul_vec(&y), -alpha, &shift);
        }
        let (_, fx, fy) = p.exact_upper(&xf, &y, &query);
        let mut d_init = fy.clone();
        let mut d_x = fx.clone();
        let mut power = fy.clone(); // M^j ∇_y F
        for _ in 0..steps {
            d_x = add_scaled(&d_x, -alpha, &p.c.t_mul_vec(&power));
            power = m.mul_vec(&power);
            d_init = m.mul_vec(&d_init);
        }
        let (e_init, e_x) = (
            rel_err(&as_f64(&got.init), &d_init),
            rel_err(&as_f64(&got.upper), &d_x),
        );
        println!("K = {steps}: dF/dθ₀ error {e_init:.1e}, dF/dx error {e_x:.1e}");
        assert!(
            e_init < 1e-12 && e_x < 1e-12,
            "K = {steps}: {e_init:e}, {e_x:e}"
        );
        assert!(rel_err(&as_f64(&got.adapted), &y) < 1e-12);
    }
}

/// With a shorter last batch (35 rows in batches of 10), the memories are weighted by each
/// batch's share of the rows: once every batch has been seen their mean is the full gradient,
/// and from any memory state the estimate averaged over a uniformly drawn batch is the full
/// gradient (unbiased). Equal weights over-weight the 5-row batch and miss both.
#[test]
fn saga_weights_a_short_last_batch_by_its_share_of_the_rows() {
    type X = Tensor<Rank1<3>, f64, Cpu>;
    let mut problem = Ridge::<f64, X, 3>::synthetic(RidgeConfig {
        train_rows: 35,
        val_rows: 8,
        noise: 0.5,
        lower_batch: Some(10),
        upper_batch: None,
        seed: 3,
    });
    assert_eq!(problem.lower_parts(), Some(4));
    let shares: Vec<f64> = (0..4).map(|k| problem.lower_part_share(k)).collect();
    assert_eq!(shares, [10.0 / 35.0, 10.0 / 35.0, 10.0 / 35.0, 5.0 / 35.0]);
    let parts: Vec<_> = (0..4).map(|k| problem.lower_part(k).unwrap()).collect();
    let full = problem.full_lower_batch();
    let mut o = Oracles::new(problem, 0);
    let dev = Cpu::seed_from_u64(4);
    let (x, y): (X, Tensor<Rank1<3>, f64, Cpu>) = (dev.sample_normal(), dev.sample_normal());
    let exact = as_f64(&o.lower_grad(&x, &y, &full).unwrap().dy);
    let grads: Vec<_> = parts
        .iter()
        .map(|p| o.lower_grad(&x, &y, p).unwrap().dy)
        .collect();

    let mut weighted = SagaMemory::new(&y, &shares);
    let mut equal = SagaMemory::equal(&y, 4);
    // Memories of another point, so that the estimate's correction terms are not zero.
    let y_old: Tensor<Rank1<3>, f64, Cpu> = dev.sample_normal();
    for (k, p) in parts.iter().enumerate().take(3) {
        let g_old = o.lower_grad(&x, &y_old, p).unwrap().dy;
        weighted.estimate(k, &g_old);
        equal.estimate(k, &g_old);
    }
    let average_estimate = |memory: &SagaMemory<Tensor<Rank1<3>, f64, Cpu>>| -> Vec<f64> {
        let mut sum = vec![0.0; 3];
        for (k, g) in grads.iter().enumerate() {
            let e = as_f64(&memory.clone().estimate(k, g));
            for i in 0..3 {
                sum[i] += e[i] / 4.0;
            }
        }
        sum
    };
    assert!(rel_err(&average_estimate(&weighted), &exact) < 1e-13);
    assert!(rel_err(&average_estimate(&equal), &exact) > 1e-3);

    for (k, g) in grads.iter().enumerate() {
        weighted.estimate(k, g);
        equal.estimate(k, g);
    }
    let mean_of = |m: &SagaMemory<Tensor<Rank1<3>, f64, Cpu>>| as_f64(&m.mean());
    assert!(rel_err(&mean_of(&weighted), &exact) < 1e-13);
    assert!(rel_err(&mean_of(&equal), &exact) > 1e-3);
}

/// The quadratic's operator at a random point, `b` and the exact `(H + λI)⁻¹ b`.
fn cg_setup(damping: f64) -> (Oracles<f64, Quad>, Vx, Vy, Vy, Vec<f64>) {
    let (o, x, y, b) = setup();
    let h = o.problem().h.plus_diag(&[damping; 4]);
    let exact = h.solve_spd(&as_f64(&b));
    (o, x, y, b, exact)
}

fn cg(
    o: &mut Oracles<f64, Quad>,
    (x, y, b): (&Vx, &Vy, &Vy),
    start: Option<&Vy>,
    config: CgConfig,
) -> Solution<Vy> {
    let batch = o.problem().full_lower_batch();
    let mut a = HessianOperator::new(o, (x, y), &batch, config.damping, SITE);
    conjugate_gradient(&mut a, b, start, &config).unwrap()
}

/// In exact arithmetic CG solves an n-dimensional positive definite system in n steps; here
/// (n = 4, eigenvalues 0.5–2) it does so to rounding, with one H·v per step and none for the
/// cold start, and with damping λ it solves `(H + λI) v = b`.
#[test]
fn conjugate_gradients_solve_the_system_in_as_many_steps_as_dimensions() {
    for damping in [0.0, 0.7] {
        let (mut o, x, y, b, exact) = cg_setup(damping);
        let config = CgConfig {
            max_steps: 4,
            tolerance: 0.0,
            damping,
        };
        let s = cg(&mut o, (&x, &y, &b), None, config);
        let e = rel_err(&as_f64(&s.v), &exact);
        println!(
            "λ = {damping}: relative error {e:.1e}, residual {:.1e}",
            s.residual
        );
        assert!(e < 1e-12, "λ = {damping}: relative error {e:e}");
        assert_eq!((s.steps, s.stop), (4, Stop::StepsDone));
        assert_eq!(o.counts().hvp, 4);
        // Three steps leave an error: the test above is not met trivially.
        let (mut o, ..) = cg_setup(damping);
        let short = cg(
            &mut o,
            (&x, &y, &b),
            None,
            CgConfig {
                max_steps: 3,
                ..config
            },
        );
        assert!(rel_err(&as_f64(&short.v), &exact) > 1e-6);
    }
}

/// The stopping rule: the solve stops at the first step whose residual is within the tolerance
/// of ‖b‖ (the true residual agrees), and a warm start at the solution stops at once after the
/// one H·v of its residual.
#[test]
fn conjugate_gradients_stop_at_their_tolerance_and_warm_start_at_the_solution() {
    let (mut o, x, y, b, exact) = cg_setup(0.0);
    let config = CgConfig {
        max_steps: 100,
        tolerance: 0.05,
        damping: 0.0,
    };
    let s = cg(&mut o, (&x, &y, &b), None, config);
    let true_residual = norm(&add_scaled(
        &as_f64(&b),
        -1.0,
        &o.problem().h.mul_vec(&as_f64(&s.v)),
    ));
    let bound = 0.05 * norm(&as_f64(&b));
    println!(
        "stopped after {} steps, residual {true_residual:.3e} ≤ {bound:.3e}",
        s.steps
    );
    assert_eq!(s.stop, Stop::Converged);
    assert!(s.steps < 4, "{} steps", s.steps);
    assert!(true_residual <= bound * (1.0 + 1e-9));
    assert!((true_residual - s.residual).abs() < 1e-12 * norm(&as_f64(&b)));
    assert_eq!(o.counts().hvp as usize, s.steps);

    let (mut o, ..) = cg_setup(0.0);
    let dev = Cpu::default();
    let at_solution: Vy = dev.tensor([exact[0], exact[1], exact[2], exact[3]]);
    let tight = CgConfig {
        tolerance: 1e-9,
        ..config
    };
    let s = cg(&mut o, (&x, &y, &b), Some(&at_solution), tight);
    assert_eq!((s.steps, s.stop), (0, Stop::Converged));
    assert_eq!(o.counts().hvp, 1);
}
