//! The checks bite: a layer whose backward drops one tape computes the right gradient value, so
//! the autodiff comparison passes, but its H·v is wrong, and the finite-difference and symmetry
//! checks catch it.

mod common;

use bilevel_models::layer::WrittenLayer;
use bilevel_models::sequence::Activations;
use bilevel_models::tape::{hold, taped, Held};
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

#[test]
fn a_dropped_tape_passes_the_gradient_check_and_fails_the_hvp_checks() {
    type Broken = (
        Linear<5, 4, f64, Cpu>,
        DroppedTapeTanh,
        Linear<4, 3, f64, Cpu>,
    );
    let dev = Cpu::seed_from_u64(3);
    let y = Broken::build(&dev);
    let x: (Tensor<Rank1<4>, f64, Cpu>, Tensor<Rank1<6>, f64, Cpu>) = (
        dev.sample_normal::<Rank1<4>>() * 0.5 - 1.0,
        dev.sample_normal(),
    );
    let problem = DenseProblem::<Broken, 4, 6, 5, 3> {
        model: std::marker::PhantomData,
        seed: 5,
    };
    let checks = check_second_order(&mut Oracles::new(problem, 0), &x, &y);
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
