//! The stable-Rust `Conv2D`, `ConvTrans2D`, 2-D pools and `Flatten2D` (`bilevel_models::conv`): written gradient
//! against dfdx's autodiff, H·v and J·v against finite differences, symmetry, forwards against a
//! direct loop over dfdx's formulas, and broken variants that are caught.

use crate::broken::{copy_of, Detach, Detached, DroppedTape};
use crate::common::*;
use bilevel_models::conv::{
    AvgPool2D, Conv2D, ConvSaved, ConvTrans2D, ConvTransSaved, Flatten2D, MaxPool2D, MinPool2D,
};
use bilevel_models::images::Images;
use bilevel_models::layer::WrittenLayer;
use bilevel_models::sequence::Activations;
use bilevel_optim::problem::Tp;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::{Bias2D, Linear, Tanh};
use dfdx::nn::ZeroSizedModule;
use dfdx::prelude::*;

/// Each row of `N` features as an image of `C` channels of `H` × `W` pixels.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AsImages<const N: usize, const C: usize, const H: usize, const W: usize>;
impl<const N: usize, const C: usize, const H: usize, const W: usize> ZeroSizedModule
    for AsImages<N, C, H, W>
{
}

impl<const N: usize, const C: usize, const H: usize, const W: usize>
    WrittenLayer<f64, Activations<f64, N>> for AsImages<N, C, H, W>
{
    type Output = Images<f64, C>;
    type Saved = ();
    fn forward(&self, input: Activations<f64, N>) -> (Images<f64, C>, ()) {
        let rows = input.shape().0;
        (input.reshape_like(&(rows, Const::<C>, H, W)), ())
    }
    fn backward(
        &self,
        _: (),
        grad_output: Images<f64, C>,
        _: &mut WrittenGrad<f64>,
        _: bool,
    ) -> Option<Activations<f64, N>> {
        let rows = grad_output.shape().0;
        Some(grad_output.reshape_like(&(rows, Const::<N>)))
    }
}

type Dense<const I: usize, const O: usize> = Linear<I, O, f64, Cpu>;
type Conv<
    const I: usize,
    const O: usize,
    const K: usize,
    const S: usize,
    const P: usize,
    const L: usize,
> = Conv2D<I, O, K, S, P, L, f64, Cpu>;

/// 3 × 4 × 4 images; a padded 3 × 3 convolution to 4 channels, a 2 × 2 max pool of stride 2.
type PaddedMax = (
    (Dense<5, 48>, AsImages<48, 3, 4, 4>),
    Conv<3, 4, 3, 1, 1, 1>,
    Bias2D<4, f64, Cpu>,
    Tanh,
    MaxPool2D<2, 2>,
    (Flatten2D<16>, Dense<16, 3>),
);
/// A dilated 2 × 2 convolution of stride 2 (span 3) to 2 × 2, then a padded 2 × 2 average pool.
type StridedAvg = (
    (Dense<5, 48>, AsImages<48, 3, 4, 4>),
    Conv<3, 2, 2, 2, 1, 2>,
    Tanh,
    AvgPool2D<2, 1, 1>,
    (Flatten2D<18>, Dense<18, 3>),
);
/// Two convolutions, the second on the first's output, then a padded 3 × 3 min pool.
type StackedMin = (
    (Dense<5, 48>, AsImages<48, 3, 4, 4>),
    Conv<3, 3, 2, 1, 0, 1>,
    Tanh,
    Conv<3, 2, 2, 1, 1, 1>,
    MinPool2D<3, 1, 1, 1>,
    (Flatten2D<32>, Dense<32, 3>),
);

type ConvTrans<
    const I: usize,
    const O: usize,
    const K: usize,
    const S: usize,
    const P: usize,
    const L: usize,
> = ConvTrans2D<I, O, K, S, P, L, f64, Cpu>;
/// A strided, padded transposed convolution (4 × 4 to 7 × 7), then a max pool back down.
type Upsampled = (
    (Dense<5, 48>, AsImages<48, 3, 4, 4>),
    ConvTrans<3, 2, 3, 2, 1, 1>,
    Tanh,
    MaxPool2D<3, 2>,
    (Flatten2D<18>, Dense<18, 3>),
);
/// A dilated transposed convolution (3 × 3 to 7 × 7) after a convolution.
type ConvThenTrans = (
    (Dense<5, 48>, AsImages<48, 3, 4, 4>),
    Conv<3, 2, 2, 1, 0, 1>,
    Tanh,
    ConvTrans<2, 1, 3, 2, 1, 2>,
    (Flatten2D<49>, Dense<49, 3>),
);

#[test]
fn convolutions_and_2d_pools_have_exact_products() {
    assert_dense_exact::<Upsampled, 5>("ConvTrans2D (stride 2, padded), MaxPool2D");
    assert_dense_exact::<ConvThenTrans, 6>("Conv2D, ConvTrans2D (dilation 2)");
    assert_dense_exact::<PaddedMax, 6>("Conv2D (padded), Bias2D, MaxPool2D (stride 2), Flatten2D");
    assert_dense_exact::<StridedAvg, 5>("Conv2D (stride 2, dilation 2), AvgPool2D (padded)");
    assert_dense_exact::<StackedMin, 6>("two Conv2D, MinPool2D (padded)");
}

/// y[b, o, i, j] = Σ_{c, u, v} w[o, c, u, v] · x[b, c, s·i + l·u − p, s·j + l·v − p], zero
/// outside the image (dfdx's convolution, written out).
fn direct_conv(
    x: &[f64],
    (b, c, h, w): (usize, usize, usize, usize),
    weight: &[f64],
    (o, k): (usize, usize),
    (s, p, l): (usize, usize, usize),
) -> Vec<f64> {
    let (oh, ow) = (
        (h + 2 * p - l * (k - 1) - 1) / s + 1,
        (w + 2 * p - l * (k - 1) - 1) / s + 1,
    );
    let mut y = vec![0.0; b * o * oh * ow];
    for n in 0..b {
        for f in 0..o {
            for i in 0..oh {
                for j in 0..ow {
                    let mut sum = 0.0;
                    for ch in 0..c {
                        for u in 0..k {
                            for v in 0..k {
                                let (r, q) = (
                                    (s * i + l * u) as isize - p as isize,
                                    (s * j + l * v) as isize - p as isize,
                                );
                                if r >= 0 && q >= 0 && (r as usize) < h && (q as usize) < w {
                                    sum += weight[((f * c + ch) * k + u) * k + v]
                                        * x[((n * c + ch) * h + r as usize) * w + q as usize];
                                }
                            }
                        }
                    }
                    y[((n * o + f) * oh + i) * ow + j] = sum;
                }
            }
        }
    }
    y
}

/// y[b, o, s·i + l·u − p, s·j + l·v − p] += w[c, o, u, v] · x[b, c, i, j] where inside the
/// output (dfdx's transposed convolution, written out).
fn direct_conv_trans(
    x: &[f64],
    (b, c, h, w): (usize, usize, usize, usize),
    weight: &[f64],
    (o, k): (usize, usize),
    (s, p, l): (usize, usize, usize),
) -> Vec<f64> {
    let (oh, ow) = (
        (h - 1) * s + l * (k - 1) + 1 - 2 * p,
        (w - 1) * s + l * (k - 1) + 1 - 2 * p,
    );
    let mut y = vec![0.0; b * o * oh * ow];
    for n in 0..b {
        for ch in 0..c {
            for i in 0..h {
                for j in 0..w {
                    for f in 0..o {
                        for u in 0..k {
                            for v in 0..k {
                                let r = (s * i + l * u) as isize - p as isize;
                                let q = (s * j + l * v) as isize - p as isize;
                                if r >= 0 && q >= 0 && (r as usize) < oh && (q as usize) < ow {
                                    y[((n * o + f) * oh + r as usize) * ow + q as usize] += weight
                                        [((ch * o + f) * k + u) * k + v]
                                        * x[((n * c + ch) * h + i) * w + j];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

/// Each window's max, min or mean (sum / k²) of the pixels inside the image, per channel.
fn direct_pool(
    x: &[f64],
    (b, c, h, w): (usize, usize, usize, usize),
    k: usize,
    (s, p, l): (usize, usize, usize),
    reduce: fn(&[f64], usize) -> f64,
) -> Vec<f64> {
    let (oh, ow) = (
        (h + 2 * p - l * (k - 1) - 1) / s + 1,
        (w + 2 * p - l * (k - 1) - 1) / s + 1,
    );
    let mut y = Vec::with_capacity(b * c * oh * ow);
    for plane in x.chunks(h * w).take(b * c) {
        for i in 0..oh {
            for j in 0..ow {
                let mut inside = vec![];
                for u in 0..k {
                    for v in 0..k {
                        let (r, q) = (
                            (s * i + l * u) as isize - p as isize,
                            (s * j + l * v) as isize - p as isize,
                        );
                        if r >= 0 && q >= 0 && (r as usize) < h && (q as usize) < w {
                            inside.push(plane[r as usize * w + q as usize]);
                        }
                    }
                }
                y.push(reduce(&inside, k));
            }
        }
    }
    y
}

fn max_of(v: &[f64], _: usize) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
fn min_of(v: &[f64], _: usize) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}
fn mean_of(v: &[f64], k: usize) -> f64 {
    v.iter().sum::<f64>() * (1.0 / (k * k) as f64)
}

/// The forwards are dfdx's formulas for every stride, padding and dilation: the convolution to
/// rounding (its sums run in another order), the max and min pools exactly.
#[test]
fn forwards_follow_dfdxs_formulas() {
    let dev = Cpu::seed_from_u64(4);
    let dims = (2, 3, 7, 6);
    let x: Tensor<(usize, Const<3>, usize, usize), f64, Cpu> =
        dev.sample_normal_like(&(2, Const::<3>, 7, 6));
    let xs = x.as_vec();
    let ours = |layer: &dyn Fn(Images<f64, 3>) -> Vec<f64>| layer(x.retaped::<Tp<f64>>());
    macro_rules! conv_case {
        ($o:literal, $k:literal, $s:literal, $p:literal, $l:literal) => {{
            let conv = Conv::<3, $o, $k, $s, $p, $l>::build(&dev);
            let got = ours(&|x| WrittenLayer::forward(&conv, x).0.as_vec());
            let want = direct_conv(&xs, dims, &conv.weight.as_vec(), ($o, $k), ($s, $p, $l));
            assert_eq!(got.len(), want.len());
            let err = rel_err(&got, &want);
            assert!(
                err < 1e-14,
                "Conv2D<3, {}, {}, {}, {}, {}>: {err:e}",
                $o,
                $k,
                $s,
                $p,
                $l
            );
        }};
    }
    conv_case!(4, 3, 1, 0, 1);
    conv_case!(2, 3, 2, 1, 1);
    conv_case!(5, 2, 1, 2, 2);
    conv_case!(1, 1, 3, 0, 1);
    macro_rules! conv_trans_case {
        ($o:literal, $k:literal, $s:literal, $p:literal, $l:literal) => {{
            let conv = ConvTrans::<3, $o, $k, $s, $p, $l>::build(&dev);
            let got = ours(&|x| WrittenLayer::forward(&conv, x).0.as_vec());
            let want = direct_conv_trans(&xs, dims, &conv.weight.as_vec(), ($o, $k), ($s, $p, $l));
            assert_eq!(got.len(), want.len());
            let err = rel_err(&got, &want);
            let what = format!("ConvTrans2D<3, {}, {}, {}, {}, {}>", $o, $k, $s, $p, $l);
            assert!(err < 1e-14, "{what}: {err:e}");
        }};
    }
    conv_trans_case!(4, 3, 1, 0, 1);
    conv_trans_case!(2, 3, 2, 1, 1);
    conv_trans_case!(5, 2, 3, 2, 2);
    macro_rules! pool_case {
        ($pool:ident, $reduce:expr, $k:literal, $s:literal, $p:literal, $l:literal) => {{
            let got = ours(&|x| {
                WrittenLayer::forward(&$pool::<$k, $s, $p, $l>, x)
                    .0
                    .as_vec()
            });
            let want = direct_pool(&xs, dims, $k, ($s, $p, $l), $reduce);
            assert_eq!(
                got,
                want,
                "{}<{}, {}, {}, {}>",
                stringify!($pool),
                $k,
                $s,
                $p,
                $l
            );
        }};
    }
    for_each_pool!(pool_case);
}

/// Runs `$case!(pool, reduce, kernel, stride, padding, dilation)` for each pool and geometry.
macro_rules! for_each_pool {
    ($case:ident) => {
        $case!(MaxPool2D, max_of, 2, 2, 0, 1);
        $case!(MaxPool2D, max_of, 3, 1, 1, 1);
        $case!(MinPool2D, min_of, 3, 2, 1, 2);
        $case!(MinPool2D, min_of, 2, 1, 0, 1);
        $case!(AvgPool2D, mean_of, 3, 1, 1, 1);
        $case!(AvgPool2D, mean_of, 2, 2, 1, 2);
    };
}
use for_each_pool;

/// A convolution whose weight gradient reads a copy of its patches: the gradient is right, but
/// H·v misses how the weight's gradient depends on the input.
impl Detach for ConvSaved<3, f64> {
    fn detach(self) -> Self {
        let patches = copy_of(&self.patches);
        ConvSaved { patches, ..self }
    }
}

#[test]
fn a_convolution_with_detached_patches_is_caught() {
    type Broken = (
        (Dense<5, 48>, AsImages<48, 3, 4, 4>),
        Detached<Conv<3, 4, 3, 1, 1, 1>>,
        Tanh,
        (Flatten2D<64>, Dense<64, 3>),
    );
    let (problem, x, y) = dense_setup::<Broken, 5>();
    assert_caught(problem, &x, &y, "convolution with detached patches");
}

/// A transposed convolution whose weight gradient reads a copy of its input.
impl Detach for ConvTransSaved<2, 3, f64> {
    fn detach(self) -> Self {
        let rows = copy_of(&self.rows);
        ConvTransSaved { rows, ..self }
    }
}

#[test]
fn a_transposed_convolution_with_a_detached_input_is_caught() {
    type Broken = (
        (Dense<5, 48>, AsImages<48, 3, 4, 4>),
        Detached<ConvTrans<3, 2, 3, 2, 1, 1>>,
        Tanh,
        (Flatten2D<98>, Dense<98, 3>),
    );
    let (problem, x, y) = dense_setup::<Broken, 5>();
    assert_caught(
        problem,
        &x,
        &y,
        "transposed convolution with a detached input",
    );
}

#[test]
fn a_pool_that_drops_a_tape_is_caught() {
    type Broken = (
        (Dense<5, 48>, AsImages<48, 3, 4, 4>),
        Conv<3, 4, 3, 1, 1, 1>,
        Tanh,
        DroppedTape<MaxPool2D<2, 2>>,
        (Flatten2D<16>, Dense<16, 3>),
    );
    let (problem, x, y) = dense_setup::<Broken, 5>();
    assert_caught(problem, &x, &y, "max pool with a dropped tape");
}

#[test]
#[should_panic(expected = "Flatten2D<10> got images of 3 channels of 4 × 4 pixels")]
fn a_flatten_of_the_wrong_width_names_the_shapes() {
    let x: Tensor<(usize, Const<3>, usize, usize), f64, Cpu> =
        Cpu::default().zeros_like(&(1, Const::<3>, 4, 4));
    let _ = WrittenLayer::<f64, Images<f64, 3>>::forward(&Flatten2D::<10>, x.retaped::<Tp<f64>>());
}
