//! The written-gradient builder reports malformed gradients by name, and a direction that shares
//! tensor ids with y (a clone of y) still gives the exact HVP.

mod common;

use bilevel_optim::error::BilevelError;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::params::Params;
use bilevel_optim::problem::{Batch, BilevelProblem, SampleRng, Taped, Tp};
use bilevel_optim::problems::*;
use bilevel_optim::written_grad::WrittenGrad;
use common::*;
use dfdx::prelude::*;

type Y = (Tensor<Rank1<2>, f64, Cpu>, Tensor<Rank1<3>, f64, Cpu>);
type X = Tensor<Rank0, f64, Cpu>;

/// g(x, y) = ½ e^x (‖y.0‖² + ‖y.1‖²); the written gradient is deliberately malformed per `mode`.
struct Malformed {
    mode: &'static str,
    stranger: Tensor<Rank1<2>, f64, Cpu>,
}
struct Unit;
impl Batch for Unit {
    fn size(&self) -> usize {
        1
    }
}
impl BilevelProblem<f64> for Malformed {
    type X = X;
    type Y = Y;
    type UpperBatch = Unit;
    type LowerBatch = Unit;
    fn sample_upper(&mut self, _: &mut SampleRng) -> Unit {
        Unit
    }
    fn sample_lower(&mut self, _: &mut SampleRng) -> Unit {
        Unit
    }
    fn upper_loss(&self, _: &X, y: &Y, _: &Unit) -> Taped<Rank0, f64> {
        y.0.retaped::<Tp<f64>>().sum()
    }
    fn lower_loss(&self, x: &X, y: &Y, _: &Unit) -> Taped<Rank0, f64> {
        let s = y.0.retaped::<Tp<f64>>().square().sum() + y.1.retaped::<Tp<f64>>().square().sum();
        s * x.retaped::<Tp<f64>>().exp() * 0.5
    }
    fn write_lower_grad_y(&self, x: &X, y: &Y, _: &Unit, grad: &mut WrittenGrad<f64>) {
        let c = || x.retaped::<Tp<f64>>().exp();
        let g0 = y.0.retaped::<Tp<f64>>() * c().broadcast();
        let g1 = y.1.retaped::<Tp<f64>>() * c().broadcast();
        match self.mode {
            "missing" => grad.set(&y.0, g0),
            "twice" => {
                grad.set(&y.0, g0);
                grad.set(&y.1, g1);
                grad.set(&y.0, y.0.retaped::<Tp<f64>>());
            }
            "set-then-add" => {
                grad.set(&y.0, g0);
                grad.set(&y.1, g1);
                grad.add(&y.0, y.0.retaped::<Tp<f64>>());
            }
            "zero-and-add" => {
                grad.zero(&y.0);
                grad.add(&y.0, g0);
                grad.set(&y.1, g1);
            }
            // The same gradient as "ok", in two terms per tensor: e^x y = (e^x − 1) y + y.
            "added" => {
                for (t, part) in [(&y.0, c() - 1.0), (&y.0, c() * 0.0 + 1.0)] {
                    grad.add(t, t.retaped::<Tp<f64>>() * part.broadcast());
                }
                grad.add(&y.1, g1);
            }
            // ∇_{y.1} declared zero: y.1's H·v and its part of J·v vanish.
            "zero" => {
                grad.zero(&y.1);
                grad.set(&y.0, g0);
            }
            "stranger" => {
                grad.set(&y.0, g0);
                grad.set(&y.1, g1);
                grad.set(&self.stranger, self.stranger.retaped::<Tp<f64>>());
            }
            _ => {
                grad.set(&y.1, g1);
                grad.set(&y.0, g0);
            }
        }
    }
}

fn setup(mode: &'static str) -> (Oracles<f64, Malformed>, X, Y) {
    let dev = Cpu::seed_from_u64(1);
    let p = Malformed {
        mode,
        stranger: dev.sample_normal(),
    };
    // These gradients are malformed (or disagree with the loss) on purpose, to test the builder's
    // own errors: the first-use check would refuse them first (tests/check.rs covers that).
    let mut oracles = Oracles::new(p, 0);
    oracles.check_on_first_use(false);
    (
        oracles,
        dev.tensor(0.3),
        (dev.sample_normal(), dev.sample_normal()),
    )
}

fn error_of(mode: &'static str) -> String {
    let (mut o, x, y) = setup(mode);
    let v = y.clone();
    match o.hvp_jvp(&x, &y, &v, &Unit) {
        Err(BilevelError::WrittenGradient(msg)) => msg,
        other => panic!("expected a WrittenGradient error, got {other:?}"),
    }
}

#[test]
fn missing_component_is_named() {
    assert!(
        error_of("missing").ends_with("no component was set for 1"),
        "{}",
        error_of("missing")
    );
}

#[test]
fn duplicate_component_is_named() {
    assert!(
        error_of("twice").contains("'0' was set twice"),
        "{}",
        error_of("twice")
    );
}

#[test]
fn foreign_tensor_is_rejected() {
    assert!(
        error_of("stranger").contains("not a trainable tensor of y"),
        "{}",
        error_of("stranger")
    );
}

#[test]
fn mixing_set_add_and_zero_on_one_tensor_is_named() {
    let msg = error_of("set-then-add");
    assert!(msg.contains("'0' was set once and then added to"), "{msg}");
    let msg = error_of("zero-and-add");
    assert!(
        msg.contains("'0' was declared zero and also given a component"),
        "{msg}"
    );
}

#[test]
fn added_terms_sum_and_zero_parts_vanish() {
    let dev = Cpu::default();
    let v: Y = (dev.sample_normal(), dev.sample_normal());
    let c = 0.3f64.exp();
    let (mut o, x, y) = setup("added");
    let so = o.hvp_jvp(&x, &y, &v, &Unit).unwrap();
    let expected_hv: Vec<f64> = as_f64(&v).iter().map(|a| c * a).collect();
    assert!(rel_err(&as_f64(&so.hvp), &expected_hv) < 1e-14);
    let expected_g: Vec<f64> = as_f64(&y).iter().map(|a| c * a).collect();
    assert!(rel_err(&as_f64(&so.written_grad_y), &expected_g) < 1e-14);
    assert!(scalar_rel_err(as_f64(&so.jvp)[0], c * dot(&as_f64(&y), &as_f64(&v))) < 1e-14);

    let (mut o, x, y) = setup("zero");
    let so = o.hvp_jvp(&x, &y, &v, &Unit).unwrap();
    assert!(so.hvp.1.as_vec().iter().all(|&h| h == 0.0));
    // +0.0 to the bit, not −0.0 where y.1 is negative (zero runs keep checkpoints small).
    assert!(y.1.as_vec().iter().any(|&y| y < 0.0));
    assert!(so
        .written_grad_y
        .1
        .as_vec()
        .iter()
        .all(|&g| g.to_bits() == 0));
    let hv0: Vec<f64> = v.0.as_vec().iter().map(|a| c * a).collect();
    assert!(rel_err(&so.hvp.0.as_vec(), &hv0) < 1e-14);
    let jv = c * dot(&y.0.as_vec(), &v.0.as_vec());
    assert!(scalar_rel_err(as_f64(&so.jvp)[0], jv) < 1e-14);
}

#[test]
fn components_in_any_order_give_exact_products() {
    let (mut o, x, y) = setup("ok");
    let dev = Cpu::default();
    let v: Y = (dev.sample_normal(), dev.sample_normal());
    let so = o.hvp_jvp(&x, &y, &v, &Unit).unwrap();
    let c = 0.3f64.exp();
    let expected_hv: Vec<f64> = as_f64(&v).iter().map(|a| c * a).collect();
    assert!(rel_err(&as_f64(&so.hvp), &expected_hv) < 1e-14);
    // ∇_x ⟨e^x y, v⟩ = e^x ⟨y, v⟩
    assert!(scalar_rel_err(as_f64(&so.jvp)[0], c * dot(&as_f64(&y), &as_f64(&v))) < 1e-14);
}

/// Regression: a direction made by cloning y shares y's tensor ids; dfdx would accumulate the
/// constant factor's gradient into the HVP under that id unless the library detaches it.
#[test]
fn direction_aliasing_y_gives_exact_hvp() {
    let cfg = QuadraticConfig::default();
    let mut o = Oracles::new(Quadratic::<f64, 2, 3>::new(cfg), 0);
    let dev = Cpu::seed_from_u64(4);
    let (x, y): (Tensor<Rank1<2>, f64, Cpu>, Tensor<Rank1<3>, f64, Cpu>) =
        (dev.sample_normal(), dev.sample_normal());
    let mut v = y.clone();
    v.scale(-2.0);
    let b = o.lower_batch();
    let hv = o.hvp(&x, &y, &v, &b).unwrap();
    let exact = o
        .problem()
        .exact_hvp(&as_f64(&x), &as_f64(&y), &as_f64(&v), &b);
    assert!(
        rel_err(&as_f64(&hv), &exact) < 1e-14,
        "{:?} vs {:?}",
        as_f64(&hv),
        exact
    );
}

/// A diverged point (the loss is infinite there) is not blamed on the problem: the first-use
/// check waits for a finite point, and the pass hands its non-finite values to the method,
/// which names them as a divergence.
#[test]
fn first_use_check_waits_for_a_finite_point() {
    let (mut o, x, y) = setup("ok");
    o.check_on_first_use(true);
    let far = Cpu::default().tensor(1e6);
    let out = o.hvp_jvp(&far, &y, &y, &Unit).unwrap();
    assert!(out.hvp.0.as_vec().iter().any(|v| !v.is_finite()));
    assert!(o.first_use_report().is_none(), "not checked yet");
    o.hvp_jvp(&x, &y, &y, &Unit).unwrap();
    assert!(o.first_use_report().unwrap().passed());
}
