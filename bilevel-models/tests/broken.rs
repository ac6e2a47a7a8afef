//! The checks bite: a layer whose backward drops one tape computes the right gradient value, so
//! the autodiff comparison passes, but its H·v is wrong, and the finite-difference and symmetry
//! checks catch it.

mod common;

use bilevel_models::layer::WrittenLayer;
use bilevel_models::sequence::Activations;
use bilevel_models::tape::{hold, taped, Held};
use bilevel_optim::check::{check_problem, CheckConfig, Fault, Quantity, Verdict};
use bilevel_optim::error::BilevelError;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::written_grad::WrittenGrad;
use common::*;
use dfdx::nn::modules::Linear;
use dfdx::nn::ZeroSizedModule;
use dfdx::prelude::*;

/// tanh whose backward uses a tape-free handle of its incoming gradient and drops the tape that
/// carries that gradient's history: the classic silent error.
#[derive(Debug, Default, Clone, Copy)]
struct DroppedTapeTanh;
impl ZeroSizedModule for DroppedTapeTanh {}

impl<const N: usize> WrittenLayer<f64, Activations<f64, N>> for DroppedTapeTanh {
    type Output = Activations<f64, N>;
    type Saved = Held<(usize, Const<N>), f64>;

    fn forward(&self, input: Activations<f64, N>) -> (Activations<f64, N>, Self::Saved) {
        let out = input.tanh();
        let saved = hold(&out);
        (out, saved)
    }

    fn backward(
        &self,
        out: Self::Saved,
        grad_output: Activations<f64, N>,
        _: &mut WrittenGrad<f64>,
        _: bool,
    ) -> Option<Activations<f64, N>> {
        let delta = hold(&grad_output);
        drop(grad_output); // the bug: this tape should go on (or into `keep_tape`)
        Some(taped(&delta) * (taped(&out).square().negate() + 1.0))
    }
}

type Broken = (
    Linear<5, 4, f64, Cpu>,
    DroppedTapeTanh,
    Linear<4, 3, f64, Cpu>,
);
type BrokenX = (Tensor<Rank1<4>, f64, Cpu>, Tensor<Rank1<6>, f64, Cpu>);

fn broken() -> (DenseProblem<Broken, 4, 6, 5, 3>, BrokenX, Broken) {
    let dev = Cpu::seed_from_u64(3);
    let y = Broken::build(&dev);
    let x: BrokenX = (
        dev.sample_normal::<Rank1<4>>() * 0.5 - 1.0,
        dev.sample_normal(),
    );
    let problem = DenseProblem::<Broken, 4, 6, 5, 3> {
        model: std::marker::PhantomData,
        seed: 5,
    };
    (problem, x, y)
}

#[test]
fn a_dropped_tape_passes_the_gradient_check_and_fails_the_hvp_checks() {
    let (problem, x, y) = broken();
    let mut oracles = Oracles::new(problem, 0);
    oracles.check_on_first_use(false); // so the test's own checks see the broken products
    let checks = check_second_order(&mut oracles, &x, &y);
    println!("{checks:?}");
    assert!(checks.grad < 1e-12, "the value is right: {checks:?}");
    assert!(checks.hvp > 1e-3, "the FD check must catch it: {checks:?}");
    assert!(
        checks.jvp > 1e-3,
        "the cross product is wrong too: {checks:?}"
    );
    let caught = std::panic::catch_unwind(|| checks.assert_exact("broken")).is_err();
    assert!(caught);
}

/// The public checker names the same fault, and the oracles' first-use check (on in tests)
/// refuses the first second-order call.
#[test]
fn the_public_checker_and_the_first_use_check_catch_the_dropped_tape() {
    let (mut problem, x, y) = broken();
    let report = check_problem(&mut problem, &x, &y, &CheckConfig::for_precision::<f64>());
    assert!(report
        .findings
        .iter()
        .filter(|f| f.quantity == Quantity::WrittenGradient)
        .all(|f| f.verdict == Verdict::Passed));
    assert_eq!(
        report.fault_for("y.0.weight"),
        Some(Fault::HvpWrong),
        "{report}"
    );
    assert_eq!(report.fault_for("x.1"), Some(Fault::JvpZero), "{report}");

    let mut oracles = Oracles::new(problem, 0);
    let batch = oracles.lower_batch();
    let err = oracles.hvp_jvp(&x, &y, &y, &batch).expect_err("refused");
    assert!(matches!(err, BilevelError::ProblemCheck(_)), "{err}");
}
