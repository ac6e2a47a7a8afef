//! dfdx's image modules (`Bias2D`, `BatchNorm2D`, the global pools) and `BatchNorm1D` as written
//! layers: written gradient against dfdx's autodiff, H·v and J·v against finite differences,
//! symmetry; the forward against dfdx's own; and a batch norm whose scale gradient reads a copy
//! of its input is caught.

use crate::broken::Detached;
use crate::common::*;
use bilevel_models::images::Images;
use bilevel_models::layer::WrittenLayer;
use bilevel_models::sequence::Activations;
use bilevel_optim::problem::Tp;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::{
    AvgPoolGlobal, BatchNorm1D, BatchNorm2D, Bias2D, Linear, MaxPoolGlobal, MinPoolGlobal, Tanh,
};
use dfdx::nn::{Module, ZeroSizedModule};
use dfdx::prelude::*;

/// Each row of 12 features as an image of 3 channels of 2 × 2 pixels.
#[derive(Debug, Default, Clone, Copy)]
struct ToImages;
impl ZeroSizedModule for ToImages {}

impl WrittenLayer<f64, Activations<f64, 12>> for ToImages {
    type Output = Images<f64, 3>;
    type Saved = ();
    fn forward(&self, input: Activations<f64, 12>) -> (Images<f64, 3>, ()) {
        let rows = input.shape().0;
        (input.reshape_like(&(rows, Const::<3>, 2, 2)), ())
    }
    fn backward(
        &self,
        _: (),
        grad_output: Images<f64, 3>,
        _: &mut WrittenGrad<f64>,
        _: bool,
    ) -> Option<Activations<f64, 12>> {
        let rows = grad_output.shape().0;
        Some(grad_output.reshape_like(&(rows, Const::<12>)))
    }
}

type Dense<const I: usize, const O: usize> = Linear<I, O, f64, Cpu>;
type ImageModel<Pool> = (
    (Dense<5, 12>, ToImages),
    Bias2D<3, f64, Cpu>,
    BatchNorm2D<3, f64, Cpu>,
    Tanh,
    Pool,
    Dense<3, 3>,
);

#[test]
fn image_modules_have_exact_products() {
    assert_dense_exact::<ImageModel<AvgPoolGlobal>, 7>("Bias2D, BatchNorm2D, AvgPoolGlobal");
    assert_dense_exact::<ImageModel<MaxPoolGlobal>, 7>("Bias2D, BatchNorm2D, MaxPoolGlobal");
    assert_dense_exact::<ImageModel<MinPoolGlobal>, 7>("Bias2D, BatchNorm2D, MinPoolGlobal");
    assert_dense_exact::<(Dense<5, 4>, BatchNorm1D<4, f64, Cpu>, Tanh, Dense<4, 3>), 6>(
        "BatchNorm1D",
    );
}

/// The written forwards are dfdx's own (batch norms with non-trivial running statistics).
#[test]
fn forwards_are_dfdxs_modules() {
    let dev = Cpu::seed_from_u64(12);
    let images: Tensor<(usize, Const<3>, usize, usize), f64, Cpu> =
        dev.sample_normal_like(&(4, Const::<3>, 3, 5));
    macro_rules! same {
        ($module:expr, $input:expr) => {
            let ours = WrittenLayer::forward(&$module, $input.retaped::<Tp<f64>>()).0;
            let theirs = Module::forward(&$module, $input.clone());
            assert_eq!(ours.as_vec(), theirs.as_vec(), stringify!($module));
        };
    }
    let mut bias = Bias2D::<3, f64, Cpu>::build(&dev);
    bias.bias = dev.sample_normal();
    let mut norm = BatchNorm2D::<3, f64, Cpu>::build(&dev);
    (norm.running_mean, norm.running_var) = (dev.sample_normal(), dev.sample_uniform());
    (norm.scale, norm.bias) = (dev.sample_normal(), dev.sample_normal());
    same!(bias, images);
    same!(norm, images);
    same!(AvgPoolGlobal, images);
    same!(MaxPoolGlobal, images);
    same!(MinPoolGlobal, images);
    let rows: Tensor<(usize, Const<3>), f64, Cpu> = dev.sample_normal_like(&(4, Const::<3>));
    let mut norm = BatchNorm1D::<3, f64, Cpu>::build(&dev);
    (norm.running_mean, norm.running_var) = (dev.sample_normal(), dev.sample_uniform());
    same!(norm, rows);
}

/// A batch norm whose scale gradient reads a copy of its centred input: the gradient is right,
/// but H·v misses how the scale's gradient depends on y.
#[test]
fn a_batch_norm_with_a_detached_input_is_caught() {
    type Broken = (
        Dense<5, 4>,
        Detached<BatchNorm1D<4, f64, Cpu>>,
        Tanh,
        Dense<4, 3>,
    );
    let (problem, x, y) = dense_setup::<Broken, 6>();
    assert_caught(problem, &x, &y, "batch norm with a detached input");
}
