//! Every loss's written gradient with respect to the outputs, in f64: against dfdx's autodiff of
//! its value (1e-12), its value against dfdx's loss of the same name, H·v (outputs) and the
//! cross product with the sample weights against central differences, symmetry; and a gradient
//! computed from a detached copy of the outputs is caught.

use crate::common::rel_err;
use bilevel_models::loss::{
    BinaryCrossEntropyWithLogits, CrossEntropy, Huber, Loss, MeanSquaredError,
};
use bilevel_optim::problem::Tp;
use dfdx::losses::{binary_cross_entropy_with_logits_loss, huber_loss, mse_loss};
use dfdx::prelude::*;

type Outputs = Tensor<(usize, Const<3>), f64, Cpu>;
type Weights = Tensor<(usize,), f64, Cpu>;
type TapedOutputs = Tensor<(usize, Const<3>), f64, Cpu, Tp<f64>>;
type TapedScalar = Tensor<Rank0, f64, Cpu, Tp<f64>>;

/// Outputs, targets and weights of 6 samples; residuals stay clear of Huber's ±0.5. Targets are
/// probabilities, one-hot for the cross-entropy (whose gradient assumes rows that sum to 1).
fn data(one_hot: bool) -> (Outputs, Outputs, Weights) {
    let dev = Cpu::default();
    let p: Vec<f64> = (0..18)
        .map(|i| ((i * 7 % 18) as f64 - 8.5) * 0.23)
        .collect();
    let t: Vec<f64> = (0..18)
        .map(|i| match one_hot {
            true => f64::from(i % 3 == (i / 3) % 3),
            false => ((i * 5 % 18) as f64) / 17.0,
        })
        .collect();
    let w: Vec<f64> = (0..6).map(|i| 0.3 + 0.2 * i as f64).collect();
    (
        dev.tensor_from_vec(p, (6, Const::<3>)),
        dev.tensor_from_vec(t, (6, Const::<3>)),
        dev.tensor_from_vec(w, (6,)),
    )
}

/// dfdx's autodiff of the loss value: (∂/∂outputs, ∂/∂weights).
fn autodiff<L: Loss<f64, 3>>(
    loss: &L,
    p: &Outputs,
    t: &Outputs,
    w: &Weights,
) -> (Vec<f64>, Vec<f64>) {
    let g = loss
        .value(p.retaped::<Tp<f64>>(), t, Some(w.retaped::<Tp<f64>>()))
        .backward();
    (g.get(p).as_vec(), g.get(w).as_vec())
}

/// The written gradient, and one backward through ⟨gradient, v⟩: (gradient, H·v, J·v).
fn products<L: Loss<f64, 3>>(
    loss: &L,
    p: &Outputs,
    t: &Outputs,
    w: &Weights,
    v: &Outputs,
    detached: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let outputs = if detached {
        Cpu::default()
            .tensor_from_vec(p.as_vec(), *p.shape())
            .retaped::<Tp<f64>>()
    } else {
        p.retaped::<Tp<f64>>()
    };
    let gradient = loss.gradient(outputs, t, Some(w.retaped::<Tp<f64>>()));
    let values = gradient.as_vec();
    let g = (gradient * v.clone()).sum().backward();
    // A detached gradient has no path back to the outputs: its H·v is zero.
    let hv = if detached {
        vec![0.0; values.len()]
    } else {
        g.get(p).as_vec()
    };
    (values, hv, g.get(w).as_vec())
}

/// The checks of one loss; with `detached`, the H·v error it shows.
fn check<L: Loss<f64, 3>>(loss: L, what: &str, detached: bool) -> f64 {
    let (p, t, w) = data(what == "cross-entropy");
    let dev = Cpu::seed_from_u64(5);
    let (u, v): (Outputs, Outputs) = (
        dev.sample_normal_like(&(6, Const::<3>)),
        dev.sample_normal_like(&(6, Const::<3>)),
    );
    let (grad, hv, jv) = products(&loss, &p, &t, &w, &v, detached);
    let (auto_grad, _) = autodiff(&loss, &p, &t, &w);
    assert!(rel_err(&grad, &auto_grad) < 1e-12, "{what}: gradient");
    let eps = 1e-6;
    let shifted = |s: f64| autodiff(&loss, &(p.clone() + v.clone() * s), &t, &w);
    let ((gp, wp), (gm, wm)) = (shifted(eps), shifted(-eps));
    let fd = |a: Vec<f64>, b: Vec<f64>| -> Vec<f64> {
        a.iter()
            .zip(&b)
            .map(|(a, b)| (a - b) / (2.0 * eps))
            .collect()
    };
    let hv_error = rel_err(&hv, &fd(gp, gm));
    if detached {
        return hv_error;
    }
    assert!(hv_error < 1e-6, "{what}: H·v off by {hv_error:e}");
    let jv_error = rel_err(&jv, &fd(wp, wm));
    assert!(jv_error < 1e-6, "{what}: J·v off by {jv_error:e}");
    let (_, hu, _) = products(&loss, &p, &t, &w, &u, false);
    let dot = |a: &[f64], b: &Outputs| a.iter().zip(b.as_vec()).map(|(a, b)| a * b).sum::<f64>();
    let (u_hv, v_hu) = (dot(&hv, &u), dot(&hu, &v));
    assert!(
        (u_hv - v_hu).abs() <= 1e-12 * u_hv.abs().max(1e-300),
        "{what}: ⟨u,Hv⟩ {u_hv} ≠ ⟨v,Hu⟩ {v_hu}"
    );
    println!("{what}: H·v {hv_error:.1e}, J·v {jv_error:.1e}");
    hv_error
}

#[test]
fn every_loss_has_an_exact_gradient_and_products() {
    check(CrossEntropy, "cross-entropy", false);
    check(MeanSquaredError, "squared error", false);
    check(
        BinaryCrossEntropyWithLogits,
        "binary cross-entropy on logits",
        false,
    );
    check(Huber { delta: 0.5 }, "Huber", false);
}

#[test]
fn unweighted_values_are_dfdxs_losses() {
    let (p, t, _) = data(false);
    let close = |a: f64, b: f64, what: &str| {
        assert!(
            (a - b).abs() <= 1e-15 * b.abs(),
            "{what}: {a} against dfdx's {b}"
        );
    };
    let ours = |l: &dyn Fn(TapedOutputs) -> TapedScalar| l(p.retaped::<Tp<f64>>()).array();
    close(
        ours(&|x| MeanSquaredError.value(x, &t, None)),
        mse_loss(p.clone(), t.clone()).array(),
        "squared error",
    );
    close(
        ours(&|x| Huber { delta: 0.5 }.value(x, &t, None)),
        huber_loss(p.clone(), t.clone(), 0.5).array(),
        "Huber",
    );
    close(
        ours(&|x| BinaryCrossEntropyWithLogits.value(x, &t, None)),
        binary_cross_entropy_with_logits_loss(p.clone(), t.clone()).array(),
        "binary cross-entropy",
    );
}

#[test]
fn a_gradient_from_detached_outputs_is_caught() {
    for (error, what) in [
        (check(CrossEntropy, "cross-entropy", true), "cross-entropy"),
        (
            check(MeanSquaredError, "squared error", true),
            "squared error",
        ),
        (
            check(BinaryCrossEntropyWithLogits, "BCE", true),
            "binary cross-entropy",
        ),
        (check(Huber { delta: 0.5 }, "Huber", true), "Huber"),
    ] {
        assert!(
            error > 1e-3,
            "{what}: a detached gradient must fail the H·v check ({error:e})"
        );
    }
}
