//! dfdx's `PReLU`, `PReLU1D` and `Reshape` as written layers: written gradient against dfdx's
//! autodiff, H·v and J·v against finite differences, symmetry, the forward against dfdx's own,
//! and a PReLU whose slope gradient reads a copy of its input is caught.

use crate::broken::Detached;
use crate::common::*;
use crate::conv::AsImages;
use bilevel_models::layer::WrittenLayer;
use bilevel_models::sequence::Activations;
use bilevel_optim::problem::{Taped, Tp};
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::builders::Reshape;
use dfdx::nn::modules::{AvgPoolGlobal, Linear};
use dfdx::nn::prelu::{PReLU, PReLU1D};
use dfdx::nn::{Module, ZeroSizedModule};
use dfdx::prelude::*;

type Dense<const I: usize, const O: usize> = Linear<I, O, f64, Cpu>;

/// A (B, N) tensor of compile-time shape back to rows of any count.
#[derive(Debug, Default, Clone, Copy)]
struct ToRows<const B: usize, const N: usize>;
impl<const B: usize, const N: usize> ZeroSizedModule for ToRows<B, N> {}

impl<const B: usize, const N: usize> WrittenLayer<f64, Taped<Rank2<B, N>, f64>> for ToRows<B, N> {
    type Output = Activations<f64, N>;
    type Saved = ();
    fn forward(&self, input: Taped<Rank2<B, N>, f64>) -> (Activations<f64, N>, ()) {
        (input.reshape_like(&(B, Const::<N>)), ())
    }
    fn backward(
        &self,
        _: (),
        grad_output: Activations<f64, N>,
        _: &mut WrittenGrad<f64>,
        _: bool,
    ) -> Option<Taped<Rank2<B, N>, f64>> {
        Some(grad_output.reshape_like(&(Const::<B>, Const::<N>)))
    }
}

#[test]
fn learnable_slopes_and_reshape_have_exact_products() {
    assert_dense_exact::<(Dense<5, 4>, PReLU<f64, Cpu>, Dense<4, 3>), 5>("PReLU");
    assert_dense_exact::<(Dense<5, 4>, PReLU1D<Const<4>, f64, Cpu>, Dense<4, 3>), 5>(
        "PReLU1D on rows",
    );
    assert_dense_exact::<
        (
            (Dense<5, 48>, AsImages<48, 3, 4, 4>),
            PReLU1D<Const<3>, f64, Cpu>,
            AvgPoolGlobal,
            Dense<3, 3>,
        ),
        5,
    >("PReLU1D on images");
    // The problem's batch has 6 samples; the slope acts on a (6, 2, 2) view of the features.
    assert_dense_exact::<
        (
            Dense<5, 4>,
            Reshape<Rank3<6, 2, 2>>,
            PReLU<f64, Cpu>,
            Reshape<Rank2<6, 4>>,
            ToRows<6, 4>,
            Dense<4, 3>,
        ),
        5,
    >("Reshape");
}

/// The written forwards are dfdx's own, to the last bit, with slopes that are not zero.
#[test]
fn forwards_are_dfdxs_modules() {
    let dev = Cpu::seed_from_u64(8);
    let mut single = PReLU::<f64, Cpu>::build(&dev);
    single.a = dev.sample_normal();
    let mut per_channel = PReLU1D::<Const<3>, f64, Cpu>::build(&dev);
    per_channel.a = dev.sample_normal();
    let rows: Tensor<Rank2<4, 3>, f64, Cpu> = dev.sample_normal();
    let images: Tensor<Rank4<2, 3, 2, 5>, f64, Cpu> = dev.sample_normal();
    let ours = WrittenLayer::forward(&single, images.retaped::<Tp<f64>>()).0;
    assert_eq!(
        ours.as_vec(),
        Module::forward(&single, images.clone()).as_vec()
    );
    let ours = WrittenLayer::forward(
        &per_channel,
        rows.clone()
            .reshape_like(&(4, Const::<3>))
            .retaped::<Tp<f64>>(),
    )
    .0;
    assert_eq!(
        ours.as_vec(),
        Module::forward(&per_channel, rows.clone()).as_vec()
    );
    let ours = WrittenLayer::forward(
        &per_channel,
        images
            .clone()
            .reshape_like(&(2, Const::<3>, 2, 5))
            .retaped::<Tp<f64>>(),
    )
    .0;
    assert_eq!(
        ours.as_vec(),
        Module::forward(&per_channel, images.clone()).as_vec()
    );
    let reshape = Reshape::<Rank2<3, 20>>::default();
    let ours = WrittenLayer::forward(&reshape, images.retaped::<Tp<f64>>()).0;
    assert_eq!(ours.as_vec(), Module::forward(&reshape, images).as_vec());
}

/// A PReLU whose slope gradient reads a copy of its input: the gradient is right, but H·v
/// misses how the slope's gradient depends on y.
#[test]
fn a_prelu_with_a_detached_input_is_caught() {
    type Broken = (Dense<5, 4>, Detached<PReLU<f64, Cpu>>, Dense<4, 3>);
    let (problem, x, y) = dense_setup::<Broken, 5>();
    assert_caught(problem, &x, &y, "PReLU with a detached input");
}
