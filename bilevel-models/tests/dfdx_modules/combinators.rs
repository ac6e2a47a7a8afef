//! dfdx's composite modules (`Residual`, `GeneralizedResidual`, `SplitInto`, `AddInto`,
//! `Repeated`, `Dropout`) as written layers: written gradient against dfdx's autodiff, H·v and
//! J·v against finite differences, symmetry; the forward against dfdx's own; and a residual
//! whose skip connection drops its tape is caught.

use crate::broken::DroppedTape;
use crate::common::*;
use bilevel_models::layer::WrittenLayer;
use bilevel_optim::problem::Tp;
use dfdx::nn::modules::{
    AddInto, Dropout, DropoutOneIn, GeneralizedResidual, Linear, ReLU, Repeated, Residual, Sigmoid,
    SplitInto, Tanh,
};
use dfdx::nn::Module;
use dfdx::prelude::*;

const H: usize = 4;
type Dense<const I: usize, const O: usize> = Linear<I, O, f64, Cpu>;

type WithResidual = (Dense<5, H>, Residual<(Dense<H, H>, Tanh)>, Dense<H, 3>);
type WithGeneralized = (
    Dense<5, H>,
    GeneralizedResidual<(Dense<H, H>, Sigmoid), Dense<H, H>>,
    Tanh,
    Dense<H, 3>,
);
type WithSplitAdd = (
    Dense<5, H>,
    SplitInto<(Dense<H, H>, (Tanh, Dense<H, H>))>,
    AddInto<(Tanh, Sigmoid)>,
    Dense<H, 3>,
);
type WithTriples = (
    Dense<5, H>,
    SplitInto<(Dense<H, H>, Tanh, Sigmoid)>,
    AddInto<(Tanh, Sigmoid, Dense<H, H>)>,
    Dense<H, 3>,
);
type WithRepeated = (Dense<5, H>, Repeated<(Dense<H, H>, Tanh), 3>, Dense<H, 3>);
type WithDropout = (Dense<5, H>, Dropout, ReLU, DropoutOneIn<3>, Dense<H, 3>);

#[test]
fn composite_modules_have_exact_products() {
    assert_dense_exact::<WithResidual, 6>("Residual");
    assert_dense_exact::<WithGeneralized, 8>("GeneralizedResidual");
    assert_dense_exact::<WithSplitAdd, 8>("SplitInto and AddInto");
    assert_dense_exact::<WithTriples, 8>("SplitInto and AddInto of three");
    assert_dense_exact::<WithRepeated, 10>("Repeated");
    assert_dense_exact::<WithDropout, 4>("Dropout");
}

/// The written forward of each composite is dfdx's own, to the rounding of the matrix products.
#[test]
fn forwards_are_dfdxs_modules() {
    let dev = Cpu::seed_from_u64(4);
    let input: Tensor<(usize, Const<5>), f64, Cpu> = dev.sample_normal_like(&(6, Const::<5>));
    macro_rules! same {
        ($model:ty) => {
            let model = <$model>::build(&dev);
            let ours = WrittenLayer::forward(&model, input.retaped::<Tp<f64>>()).0;
            let theirs = Module::forward(&model, input.clone());
            crate::common::assert_same_forward(
                &ours.as_vec(),
                &theirs.as_vec(),
                stringify!($model),
            );
        };
    }
    same!(WithResidual);
    same!(WithGeneralized);
    same!(WithSplitAdd);
    same!(WithTriples);
    same!(WithRepeated);
    same!(WithDropout);
}

/// A residual block whose backward takes its gradient, skip connection included, from a
/// tape-free handle and drops the tape that carried it: the gradient is right, H·v is not.
#[test]
fn a_residual_that_drops_a_tape_is_caught() {
    type Broken = (Dense<5, H>, DroppedTape<Residual<Tanh>>, Dense<H, 3>);
    let (problem, x, y) = dense_setup::<Broken, 4>();
    assert_caught(problem, &x, &y, "residual with a dropped skip tape");
}
