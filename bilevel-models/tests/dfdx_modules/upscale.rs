//! dfdx's `Upscale2D` and the stable-Rust `Upscale2DBy` (`bilevel_models::upscale`), nearest and
//! bilinear: written gradient against dfdx's autodiff, H·v and J·v against finite differences,
//! symmetry, the forward against dfdx's own, and an upscaling that drops its gradient's tape is
//! caught.

use crate::broken::DroppedTape;
use crate::common::*;
use crate::conv::AsImages;
use bilevel_models::conv::Flatten2D;
use bilevel_models::layer::WrittenLayer;
use bilevel_models::upscale::Upscale2DBy;
use bilevel_optim::problem::Tp;
use dfdx::nn::modules::{Linear, Tanh, Upscale2D};
use dfdx::nn::Module;
use dfdx::prelude::*;

type Dense<const I: usize, const O: usize> = Linear<I, O, f64, Cpu>;
/// 3 × 2 × 3 images from the features, upscaled by `Up` to `N` features, then a tanh and a head.
type Upscaled<Up, const N: usize> = (
    (Dense<5, 18>, AsImages<18, 3, 2, 3>),
    Up,
    Tanh,
    (Flatten2D<N>, Dense<N, 3>),
);

#[test]
fn upscalings_have_exact_products() {
    assert_dense_exact::<Upscaled<Upscale2D<3, 5, NearestNeighbor>, 45>, 4>("Upscale2D, nearest");
    assert_dense_exact::<Upscaled<Upscale2D<3, 5, Bilinear>, 45>, 4>("Upscale2D, bilinear");
    assert_dense_exact::<Upscaled<Upscale2DBy<2, 3, NearestNeighbor>, 108>, 4>(
        "Upscale2DBy, nearest",
    );
    assert_dense_exact::<Upscaled<Upscale2DBy<2, 2, Bilinear>, 72>, 4>("Upscale2DBy, bilinear");
}

/// The written forwards are dfdx's own op, to the last bit.
#[test]
fn forwards_are_dfdxs() {
    let dev = Cpu::seed_from_u64(6);
    let images: Tensor<Rank4<2, 3, 2, 3>, f64, Cpu> = dev.sample_normal();
    let ours = |layer: &dyn Fn(bilevel_models::images::Images<f64, 3>) -> Vec<f64>| {
        layer(
            images
                .clone()
                .reshape_like(&(2, Const::<3>, 2, 3))
                .retaped::<Tp<f64>>(),
        )
    };
    macro_rules! same {
        ($module:expr, $theirs:expr) => {
            let got = ours(&|x| WrittenLayer::forward(&$module, x).0.as_vec());
            assert_eq!(got, $theirs, stringify!($module));
        };
    }
    same!(
        Upscale2D::<3, 5, NearestNeighbor>::default(),
        Module::forward(
            &Upscale2D::<3, 5, NearestNeighbor>::default(),
            images.clone()
        )
        .as_vec()
    );
    same!(
        Upscale2D::<3, 5, Bilinear>::default(),
        Module::forward(&Upscale2D::<3, 5, Bilinear>::default(), images.clone()).as_vec()
    );
    same!(
        Upscale2DBy::<2, 3, Bilinear>::default(),
        images
            .clone()
            .upscale2d::<4, 9, Bilinear>(Bilinear)
            .as_vec()
    );
}

#[test]
fn an_upscaling_that_drops_a_tape_is_caught() {
    type Broken = Upscaled<DroppedTape<Upscale2D<3, 5, Bilinear>>, 45>;
    let (problem, x, y) = dense_setup::<Broken, 4>();
    assert_caught(problem, &x, &y, "bilinear upscaling with a dropped tape");
}
