//! Dense layers and layer norm on batches, on (batch, steps, features) tensors and on packed
//! sequences: written gradient against dfdx's autodiff, H·v and J·v against finite differences,
//! symmetry; the forward against dfdx's own module; and a broken layer norm that is caught.

use crate::broken::{copy_of, Detach, Detached};
use crate::common::*;
use bilevel_models::layer::WrittenLayer;
use bilevel_models::norm::LayerNormSaved;
use bilevel_optim::problem::Tp;
use dfdx::nn::modules::{LayerNorm1D, Linear, Tanh, UnbiasedLinear};
use dfdx::nn::Module;
use dfdx::prelude::*;

const H: usize = 4;

#[test]
fn dense_layers_and_layer_norm_have_exact_products() {
    assert_dense_exact::<(UnbiasedLinear<5, H, f64, Cpu>, Tanh, Linear<H, 3, f64, Cpu>), 3>(
        "UnbiasedLinear",
    );
    assert_dense_exact::<
        (
            Linear<5, H, f64, Cpu>,
            LayerNorm1D<H, f64, Cpu>,
            Linear<H, 3, f64, Cpu>,
        ),
        6,
    >("LayerNorm1D");
    assert_dense_exact::<
        (
            Fold,
            Linear<5, H, f64, Cpu>,
            LayerNorm1D<H, f64, Cpu>,
            Tanh,
            UnbiasedLinear<H, 3, f64, Cpu>,
            Unfold,
        ),
        5,
    >("Linear, LayerNorm1D, UnbiasedLinear on (batch, steps, features)");
}

/// The forward of each layer is dfdx's module, to the last bit, on batches and on (batch,
/// steps, features) tensors.
#[test]
fn forwards_are_dfdxs_modules() {
    let dev = Cpu::seed_from_u64(2);
    let linear = Linear::<5, H, f64, Cpu>::build(&dev);
    let unbiased = UnbiasedLinear::<5, H, f64, Cpu>::build(&dev);
    let mut norm = LayerNorm1D::<5, f64, Cpu>::build(&dev);
    norm.gamma = dev.sample_normal();
    norm.beta = dev.sample_normal();
    let rows: Tensor<(usize, Const<5>), f64, Cpu> = dev.sample_normal_like(&(6, Const::<5>));
    let steps: Tensor<(usize, usize, Const<5>), f64, Cpu> =
        dev.sample_normal_like(&(2, 3, Const::<5>));
    macro_rules! same {
        ($layer:expr, $input:expr) => {
            let ours = WrittenLayer::forward(&$layer, $input.retaped::<Tp<f64>>()).0;
            let theirs = Module::forward(&$layer, $input.clone());
            crate::common::assert_same_forward(&ours.as_vec(), &theirs.as_vec(), "rows");
        };
    }
    same!(linear, rows);
    same!(unbiased, rows);
    same!(norm, rows);
    same!(linear, steps);
    same!(norm, steps);
}

/// A layer norm that forgets that σ depends on x: its backward divides by a copy of σ's
/// values, which has no history. Its gradient is right and its H·v is not.
impl Detach for LayerNormSaved<f64, H> {
    fn detach(self) -> Self {
        let deviation = copy_of(&self.deviation);
        LayerNormSaved { deviation, ..self }
    }
}

#[test]
fn a_layer_norm_with_a_detached_scale_is_caught() {
    type Broken = (
        Linear<5, H, f64, Cpu>,
        Detached<LayerNorm1D<H, f64, Cpu>>,
        Linear<H, 3, f64, Cpu>,
    );
    let (problem, x, y) = dense_setup::<Broken, 6>();
    assert_caught(problem, &x, &y, "layer norm with a detached σ");
}
