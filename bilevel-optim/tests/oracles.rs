//! Every oracle against independent f64 closed forms (1e-10 relative), the second-order products
//! also against a central-difference oracle built from dfdx autodiff gradients (tests only), plus
//! symmetry of the HVP and the transpose form of the cross product.

mod common;

use bilevel_optim::oracles::Oracles;
use bilevel_optim::params::Params;
use bilevel_optim::problems::*;
use common::*;
use dfdx::prelude::*;

const TOL: f64 = 1e-10;

/// Checks all oracles of `o` at (x, y) in direction v on one fresh lower and upper batch.
fn check_oracles<P: ClosedForm<f64>>(o: &mut Oracles<f64, P>, x: &P::X, y: &P::Y, v: &P::Y) {
    let lb = o.lower_batch();
    let ub = o.upper_batch();
    let (xf, yf, vf) = (as_f64(x), as_f64(y), as_f64(v));

    let up = o.upper_grad(x, y, &ub).unwrap();
    let (f, fx, fy) = o.problem().exact_upper(&xf, &yf, &ub);
    assert!(scalar_rel_err(up.value, f) < TOL, "F value");
    assert!(
        rel_err(&as_f64(&up.dx), &fx) < TOL || norm(&fx) == 0.0 && norm(&as_f64(&up.dx)) == 0.0,
        "∇_x F"
    );
    assert!(rel_err(&as_f64(&up.dy), &fy) < TOL, "∇_y F");

    let low = o.lower_grad(x, y, &lb).unwrap();
    let (g, gx, gy) = o.problem().exact_lower(&xf, &yf, &lb);
    assert!(scalar_rel_err(low.value, g) < TOL, "G value");
    assert!(
        rel_err(&as_f64(&low.dx), &gx) < TOL,
        "∇_x G: {}",
        rel_err(&as_f64(&low.dx), &gx)
    );
    assert!(rel_err(&as_f64(&low.dy), &gy) < TOL, "∇_y G");

    let written = o.written_lower_grad_y(x, y, &lb).unwrap();
    assert!(
        rel_err(&as_f64(&written), &gy) < TOL,
        "written ∇_y G vs closed form"
    );
    assert!(
        rel_err(&as_f64(&written), &as_f64(&low.dy)) < TOL,
        "written ∇_y G vs dfdx autodiff"
    );

    let so = o.hvp_jvp(x, y, v, &lb).unwrap();
    let hv = o.problem().exact_hvp(&xf, &yf, &vf, &lb);
    let jv = o.problem().exact_jvp(&xf, &yf, &vf, &lb);
    assert!(
        rel_err(&as_f64(&so.written_grad_y), &gy) < TOL,
        "∇_y G by-product"
    );
    assert!(
        rel_err(&as_f64(&so.hvp), &hv) < TOL,
        "HVP: {}",
        rel_err(&as_f64(&so.hvp), &hv)
    );
    assert!(
        rel_err(&as_f64(&so.jvp), &jv) < TOL,
        "JVP: {}",
        rel_err(&as_f64(&so.jvp), &jv)
    );

    // Finite-difference oracle (tests only): central differences of dfdx's autodiff gradient.
    let eps = 1e-6 / norm(&vf).max(1e-12);
    let shifted = |o: &mut Oracles<f64, P>, s: f64| {
        let mut ys = y.clone();
        ys.add_scaled(s, v);
        o.lower_grad(x, &ys, &lb).unwrap()
    };
    let (plus, minus) = (shifted(o, eps), shifted(o, -eps));
    let fd = |a: &[f64], b: &[f64], eps: f64| {
        a.iter()
            .zip(b)
            .map(|(p, m)| (p - m) / (2.0 * eps))
            .collect::<Vec<_>>()
    };
    let fd_hv = fd(&as_f64(&plus.dy), &as_f64(&minus.dy), eps);
    let fd_jv = fd(&as_f64(&plus.dx), &as_f64(&minus.dx), eps);
    assert!(
        rel_err(&as_f64(&so.hvp), &fd_hv) < 1e-6,
        "HVP vs FD: {}",
        rel_err(&as_f64(&so.hvp), &fd_hv)
    );
    assert!(
        rel_err(&as_f64(&so.jvp), &fd_jv) < 1e-6,
        "JVP vs FD: {}",
        rel_err(&as_f64(&so.jvp), &fd_jv)
    );

    // Symmetry ⟨u, Hv⟩ = ⟨v, Hu⟩.
    let mut u = y.clone();
    u.map_in_place(|s| {
        s.iter_mut()
            .enumerate()
            .for_each(|(i, a)| *a = ((i * 7 + 3) % 5) as f64 - 2.0)
    });
    let hu = o.hvp(x, y, &u, &lb).unwrap();
    let (uhv, vhu) = (u.dot(&so.hvp), v.dot(&hu));
    assert!(
        scalar_rel_err(uhv, vhu) < 1e-12,
        "⟨u,Hv⟩ = {uhv}, ⟨v,Hu⟩ = {vhu}"
    );

    // Transpose form: ⟨w, ∇²_xy G·v⟩ equals ⟨v, (d/dε) ∇_y G(x + εw, y)⟩, the derivative of the
    // written gradient along w, taken by central differences.
    let mut w = x.clone();
    w.map_in_place(|s| {
        s.iter_mut()
            .enumerate()
            .for_each(|(i, a)| *a = ((i * 3 + 1) % 4) as f64 - 1.5)
    });
    let eps_x = 1e-6 / w.norm();
    let moved = |o: &mut Oracles<f64, P>, s: f64| {
        let mut xs = x.clone();
        xs.add_scaled(s, &w);
        o.written_lower_grad_y(&xs, y, &lb).unwrap()
    };
    let (gp, gm) = (moved(o, eps_x), moved(o, -eps_x));
    let directional = fd(&as_f64(&gp), &as_f64(&gm), eps_x);
    let (lhs, rhs) = (w.dot(&so.jvp), dot(&vf, &directional));
    assert!(
        (lhs - rhs).abs() <= 1e-6 * lhs.abs().max(1e-3),
        "⟨w,Jv⟩ = {lhs}, transpose form = {rhs}"
    );
    let closed = dot(&as_f64(&w), &jv);
    assert!(scalar_rel_err(lhs, closed) < TOL, "⟨w,Jv⟩ vs closed form");
}

/// The closed-form ∇Φ against central differences of the closed-form Φ, and y* against the
/// library's own lower gradient on the full data (it must vanish there).
fn check_closed_form<P: ClosedForm<f64>>(
    o: &mut Oracles<f64, P>,
    x: &P::X,
    y_shape: &P::Y,
    full: &P::LowerBatch,
) {
    let xf = as_f64(x);
    let grad = o.problem().hypergradient(&xf);
    let h = 1e-5;
    for i in 0..xf.len() {
        let (mut xp, mut xm) = (xf.clone(), xf.clone());
        xp[i] += h;
        xm[i] -= h;
        let fd = (o.problem().phi(&xp) - o.problem().phi(&xm)) / (2.0 * h);
        assert!(
            (fd - grad[i]).abs() <= 1e-7 * norm(&grad).max(1e-3),
            "∇Φ[{i}] = {}, FD {fd}",
            grad[i]
        );
    }
    let mut y_star = y_shape.clone();
    y_star.set_flat(&o.problem().y_star(&xf)).unwrap();
    let g = o.lower_grad(x, &y_star, full).unwrap();
    assert!(
        norm(&as_f64(&g.dy)) < 1e-12,
        "∇_y g(x, y*) = {:?}",
        as_f64(&g.dy)
    );
}

fn dev() -> Cpu {
    Cpu::seed_from_u64(11)
}

#[test]
fn quadratic_deterministic_and_stochastic() {
    for noise in [0.0, 0.4] {
        let cfg = QuadraticConfig {
            hessian_noise: noise,
            grad_noise: noise,
            upper_noise: noise,
            batch_size: 3,
            ..Default::default()
        };
        let mut o = Oracles::new(Quadratic::<f64, 3, 5>::new(cfg), 5);
        let d = dev();
        let (x, y, v) = (d.sample_normal(), d.sample_normal(), d.sample_normal());
        check_oracles(&mut o, &x, &y, &v);
        let full = o.problem().full_lower_batch();
        check_closed_form(&mut o, &x, &y, &full);
    }
}

#[test]
fn ridge_per_feature_and_scalar() {
    let d = dev();
    for batch in [None, Some(7)] {
        let cfg = RidgeConfig {
            lower_batch: batch,
            upper_batch: batch,
            ..Default::default()
        };
        let mut o = Oracles::new(
            Ridge::<f64, Tensor<Rank1<4>, f64, Cpu>, 4>::synthetic(cfg.clone()),
            3,
        );
        let x: Tensor<Rank1<4>, f64, Cpu> = d.sample_normal::<Rank1<4>>() * 0.5;
        let y: Tensor<Rank1<4>, f64, Cpu> = d.sample_normal();
        check_oracles(&mut o, &x, &y, &d.sample_normal());
        let full = o.problem().full_lower_batch();
        check_closed_form(&mut o, &x, &y, &full);

        let mut o = Oracles::new(Ridge::<f64, Tensor<Rank0, f64, Cpu>, 4>::synthetic(cfg), 3);
        let x: Tensor<Rank0, f64, Cpu> = d.tensor(-0.7);
        let y: Tensor<Rank1<4>, f64, Cpu> = d.sample_normal();
        check_oracles(&mut o, &x, &y, &d.sample_normal());
        let full = o.problem().full_lower_batch();
        check_closed_form(&mut o, &x, &y, &full);
    }
}

#[test]
fn logistic_reweighting_with_repeated_indices() {
    let d = dev();
    // A batch of 30 rows drawn with replacement from 12 repeats indices, which the gather's
    // backward and the closed form must both accumulate.
    for batch in [None, Some(30)] {
        let cfg = ReweightingConfig {
            lower_batch: batch,
            upper_batch: batch,
            ..Default::default()
        };
        let mut o = Oracles::new(LogisticReweighting::<f64, 12, 3>::synthetic(cfg), 9);
        let (x, y): (Tensor<Rank1<12>, f64, Cpu>, Tensor<Rank1<3>, f64, Cpu>) =
            (d.sample_normal(), d.sample_normal());
        check_oracles(&mut o, &x, &y, &d.sample_normal());
        let full = o.problem().full_lower_batch();
        check_closed_form(&mut o, &x, &y, &full);
    }
}

/// Every pass split over 2 and 3 batch shards on their own threads: the same closed forms hold
/// (1e-10), the values match the unsharded oracles on the same batches to rounding, and the
/// counts are those of one call each.
#[test]
fn sharded_oracles_match_closed_forms_and_the_unsharded_ones() {
    let d = dev();
    for threads in [2, 3] {
        let cfg = RidgeConfig {
            lower_batch: Some(7),
            upper_batch: Some(7),
            ..Default::default()
        };
        let problem = || Ridge::<f64, Tensor<Rank1<4>, f64, Cpu>, 4>::synthetic(cfg.clone());
        let mut o = Oracles::sharded(problem(), 3, threads).unwrap();
        let x: Tensor<Rank1<4>, f64, Cpu> = d.sample_normal::<Rank1<4>>() * 0.5;
        let y: Tensor<Rank1<4>, f64, Cpu> = d.sample_normal();
        let v: Tensor<Rank1<4>, f64, Cpu> = d.sample_normal();
        check_oracles(&mut o, &x, &y, &v);
        let full = o.problem().full_lower_batch();
        check_closed_form(&mut o, &x, &y, &full);
        assert_eq!(o.worker_devices().len(), threads - 1);

        let (mut sharded, mut serial) = (
            Oracles::sharded(problem(), 4, threads).unwrap(),
            Oracles::new(problem(), 4),
        );
        let (lb, ub) = (sharded.lower_batch(), sharded.upper_batch());
        let (lb2, ub2) = (serial.lower_batch(), serial.upper_batch());
        assert_eq!((&lb.indices, &ub.indices), (&lb2.indices, &ub2.indices));
        let close = |a: &[f64], b: &[f64]| rel_err(a, b) < 1e-14;
        let (a, b) = (
            sharded.upper_grad(&x, &y, &ub).unwrap(),
            serial.upper_grad(&x, &y, &ub).unwrap(),
        );
        assert!(scalar_rel_err(a.value, b.value) < 1e-14);
        assert!(close(&as_f64(&a.dy), &as_f64(&b.dy)));
        let (a, b) = (
            sharded.lower_grad(&x, &y, &lb).unwrap(),
            serial.lower_grad(&x, &y, &lb).unwrap(),
        );
        assert!(close(&as_f64(&a.dx), &as_f64(&b.dx)) && close(&as_f64(&a.dy), &as_f64(&b.dy)));
        let (a, b) = (
            sharded.lower_grad_in_y(&x, &y, &lb).unwrap(),
            serial.lower_grad_in_y(&x, &y, &lb).unwrap(),
        );
        assert!(scalar_rel_err(a.0, b.0) < 1e-14 && close(&as_f64(&a.1), &as_f64(&b.1)));
        let a = sharded.hvp_jvp(&x, &y, &v, &lb).unwrap();
        let b = serial.hvp_jvp(&x, &y, &v, &lb).unwrap();
        assert!(close(&as_f64(&a.hvp), &as_f64(&b.hvp)) && close(&as_f64(&a.jvp), &as_f64(&b.jvp)));
        assert!(close(
            &as_f64(&a.written_grad_y),
            &as_f64(&b.written_grad_y)
        ));
        assert_eq!(sharded.counts(), serial.counts());
    }

    // More shards than rows: the empty shards are skipped.
    let cfg = ReweightingConfig {
        lower_batch: Some(2),
        upper_batch: Some(2),
        ..Default::default()
    };
    let mut o = Oracles::sharded(LogisticReweighting::<f64, 12, 3>::synthetic(cfg), 9, 3).unwrap();
    let (x, y): (Tensor<Rank1<12>, f64, Cpu>, Tensor<Rank1<3>, f64, Cpu>) =
        (d.sample_normal(), d.sample_normal());
    check_oracles(&mut o, &x, &y, &d.sample_normal());
}

/// The hook of `between_passes` runs once before each of the seven kinds of pass, and the
/// passes compute what they compute without it.
#[test]
fn between_passes_runs_once_before_every_pass() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let cfg = QuadraticConfig {
        batch_size: 3,
        ..Default::default()
    };
    let d = dev();
    let (x, y, v) = (d.sample_normal(), d.sample_normal(), d.sample_normal());
    let run = |hooked: Option<Arc<AtomicUsize>>| {
        let mut o = Oracles::new(Quadratic::<f64, 3, 5>::new(cfg.clone()), 5);
        if let Some(calls) = hooked {
            o.between_passes(Box::new(move || {
                calls.fetch_add(1, Ordering::SeqCst);
            }));
        }
        let (lb, ub) = (o.lower_batch(), o.upper_batch());
        let mut out = as_f64(&o.upper_grad(&x, &y, &ub).unwrap().dx);
        out.extend(as_f64(&o.lower_grad(&x, &y, &lb).unwrap().dx));
        out.extend(as_f64(&o.lower_grad_in_y(&x, &y, &lb).unwrap().1));
        out.extend(as_f64(&o.written_lower_grad_y(&x, &y, &lb).unwrap()));
        out.extend(as_f64(&o.hvp_jvp(&x, &y, &v, &lb).unwrap().hvp));
        out.extend(as_f64(&o.hvp(&x, &y, &v, &lb).unwrap()));
        out.extend(as_f64(&o.jvp(&x, &y, &v, &lb).unwrap()));
        out
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let with_hook = run(Some(calls.clone()));
    assert_eq!(calls.load(Ordering::SeqCst), 7);
    assert_eq!(with_hook, run(None));
}
