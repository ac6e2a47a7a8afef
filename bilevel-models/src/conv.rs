//! 2-D convolution, 2-D pools and flattening as written layers, on stable Rust.
//!
//! dfdx 0.13 defines `Conv2D`, `ConvTrans2D`, `MaxPool2D`, `AvgPool2D`, `MinPool2D` and
//! `Flatten2D` (and their tensor ops) only with its `nightly` feature, which a current compiler
//! does not build (stable refuses its feature gates; its `gemm` 0.15 dependency asks for
//! `stdsimd`, which nightly removed in early 2024). These
//! layers take their place with dfdx's names, generics, weight layout and initialization, so a
//! model written for dfdx's reads the same:
//! - [`Conv2D<IN, OUT, KERNEL, STRIDE, PADDING, DILATION>`](Conv2D): weight (OUT, IN, K, K), no
//!   bias (add dfdx's `Bias2D`), zero padding; one group only.
//! - [`ConvTrans2D<IN, OUT, KERNEL, STRIDE, PADDING, DILATION>`](ConvTrans2D): weight
//!   (IN, OUT, K, K), output side `(h − 1)·s − 2p + d(k − 1) + 1`; one group only.
//! - [`MaxPool2D`], [`MinPool2D`], [`AvgPool2D`] with `<KERNEL, STRIDE, PADDING, DILATION>`:
//!   padding never wins a max or min pool, and counts as zeros in the average's K·K divisor, as
//!   in dfdx.
//! - [`Flatten2D<N>`](Flatten2D): (batch, C, H, W) → (batch, N), N = C·H·W checked on every
//!   call (stable Rust cannot compute C·H·W as a type).
//!
//! All run on [`Images`] (a batch of images of any height and width) through
//! [`crate::patches`]: a window's pixels become a row of a patch matrix `X`, so a convolution is
//! the product `X Wᵀ`, written backward `∂W = δᵀ X`, `∂X = δ W`, `∂x = fold(∂X)`. A max (min)
//! pool's gradient goes to the first tap that holds each window's maximum (minimum), an average
//! pool's equally to its K·K taps.

use bilevel_optim::problem::{Taped, Tp};
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::tensor_collection::{ModuleVisitor, TensorCollection, TensorOptions};
use dfdx::nn::ZeroSizedModule;
use dfdx::prelude::*;

use crate::images::{first_extremes, ImageShape, Images};
use crate::layer::{when_wanted, WrittenLayer};
use crate::matmul::matmul;
use crate::patches::{fold, unfold, PatchMap, PatchShape, Window};
use crate::sequence::Activations;
use crate::tape::{hold, taped, Held};

/// Defines a (transposed) convolution module: its struct with dfdx's generics, its tensor
/// collection with dfdx's initialization, and `kernel_matrix`, the weight as a
/// (`$rows`, `$cols`·K·K) matrix on a fresh tape (same tensor id).
macro_rules! convolution_module {
    ($(#[$doc:meta])* $name:ident, weight ($rows:ident, $cols:ident), $weight_doc:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name<
            const IN: usize,
            const OUT: usize,
            const K: usize,
            const STRIDE: usize = 1,
            const PADDING: usize = 0,
            const DILATION: usize = 1,
            E: Dtype = f32,
            D: Storage<E> = Cpu,
        > {
            #[doc = $weight_doc]
            pub weight: Tensor<Rank4<$rows, $cols, K, K>, E, D>,
        }

        impl<
                const IN: usize,
                const OUT: usize,
                const K: usize,
                const S: usize,
                const P: usize,
                const L: usize,
                E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
                D: Device<E>,
            > TensorCollection<E, D> for $name<IN, OUT, K, S, P, L, E, D>
        {
            type To<E2: Dtype, D2: Device<E2>> = $name<IN, OUT, K, S, P, L, E2, D2>;

            fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
                visitor: &mut V,
            ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
                visitor.visit_fields(
                    Self::tensor(
                        "weight",
                        |s| &s.weight,
                        |s| &mut s.weight,
                        TensorOptions::reset_with(dfdx_kernel_init::<IN, K, _, E, D>),
                    ),
                    |weight| $name { weight },
                )
            }
        }

        impl<
                const IN: usize,
                const OUT: usize,
                const K: usize,
                const S: usize,
                const P: usize,
                const L: usize,
                E: Real,
            > $name<IN, OUT, K, S, P, L, E, Cpu>
        where
            Cpu: Device<E>,
        {
            fn kernel_matrix(&self) -> Taped<(Const<$rows>, usize), E> {
                self.weight
                    .retaped::<Tp<E>>()
                    .reshape_like(&(Const::<$rows>, $cols * K * K))
            }
        }
    };
}

convolution_module!(
    /// A 2-D convolution from `IN` to `OUT` channels with a `K`×`K` kernel, dfdx's `Conv2D` on
    /// stable Rust (see the module's documentation).
    Conv2D,
    weight(OUT, IN),
    "The kernels, (OUT, IN, K, K)."
);

convolution_module!(
    /// A 2-D transposed convolution from `IN` to `OUT` channels with a `K`×`K` kernel, dfdx's
    /// `ConvTrans2D` on stable Rust: each input pixel adds its kernel-weighted copy onto the
    /// output at stride `STRIDE`, which is `(h − 1)·s − 2p + d(k − 1) + 1` pixels high. It is the
    /// transpose of a `Conv2D` with the same window: `y = fold(x W)` over the output's windows,
    /// written backward `∂W = xᵀ unfold(δ)`, `∂x = unfold(δ) Wᵀ`.
    ConvTrans2D,
    weight(IN, OUT),
    "The kernels, (IN, OUT, K, K), as dfdx lays them out."
);

/// dfdx's initialization of a (transposed) convolution's kernels: uniform in ±1/√(IN·K·K).
fn dfdx_kernel_init<const IN: usize, const K: usize, S: Shape, E, D: Device<E>>(
    t: &mut Tensor<S, E, D>,
) -> Result<(), D::Err>
where
    E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
{
    let bound = E::from((IN * K * K) as f64).unwrap().sqrt().recip();
    t.try_fill_with_distr(rand_distr::Uniform::new(-bound, bound))
}

/// What a convolution's backward reads: where the windows are, and the patch matrix.
pub struct ConvSaved<const IN: usize, E: Real>
where
    Cpu: Device<E>,
{
    /// Where the windows are.
    pub map: PatchMap<IN>,
    /// The patch matrix `X` (windows, IN·K·K).
    pub patches: Held<PatchShape, E>,
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const S: usize,
        const P: usize,
        const L: usize,
        E: Real,
    > WrittenLayer<E, Images<E, IN>> for Conv2D<IN, OUT, K, S, P, L, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Images<E, OUT>;
    type Saved = ConvSaved<IN, E>;

    fn forward(&self, input: Images<E, IN>) -> (Images<E, OUT>, Self::Saved) {
        let map = window::<K, S, P, L>().map(*input.shape());
        let patches = unfold(input, &map, E::zero());
        let saved_patches = hold(&patches);
        let rows = matmul(patches, self.kernel_matrix().permute::<_, Axes2<1, 0>>());
        let out = rows_to_images(rows, &map);
        (
            out,
            ConvSaved {
                map,
                patches: saved_patches,
            },
        )
    }

    fn backward(
        &self,
        saved: Self::Saved,
        grad_output: Images<E, OUT>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Images<E, IN>> {
        let delta = images_to_rows(grad_output);
        let held = hold(&delta);
        let grad_weight = matmul(
            taped(&held).permute::<(Const<OUT>, usize), Axes2<1, 0>>(),
            taped(&saved.patches),
        );
        grads.add(
            &self.weight,
            grad_weight.reshape_like(&(Const::<OUT>, Const::<IN>, Const::<K>, Const::<K>)),
        );
        let delta = when_wanted(delta, grads, want_input)?;
        Some(fold(matmul(delta, self.kernel_matrix()), &saved.map))
    }
}

/// What a transposed convolution's backward reads: the output's windows (one per input pixel),
/// and the input as rows.
pub struct ConvTransSaved<const OUT: usize, const IN: usize, E: Real>
where
    Cpu: Device<E>,
{
    /// The windows of the output, one per input pixel.
    pub map: PatchMap<OUT>,
    /// The input as (pixels, IN) rows.
    pub rows: Held<(usize, Const<IN>), E>,
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const S: usize,
        const P: usize,
        const L: usize,
        E: Real,
    > WrittenLayer<E, Images<E, IN>> for ConvTrans2D<IN, OUT, K, S, P, L, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Images<E, OUT>;
    type Saved = ConvTransSaved<OUT, IN, E>;

    fn forward(&self, input: Images<E, IN>) -> (Images<E, OUT>, Self::Saved) {
        let (batch, _, height, width) = *input.shape();
        // (h − 1)·s − 2p + d(k − 1) + 1, when positive.
        let grown = |side: usize| {
            (side > 0 && K > 0 && S > 0)
                .then(|| ((side - 1) * S + L * (K - 1) + 1).checked_sub(2 * P))
                .flatten()
                .filter(|&out| out > 0)
                .unwrap_or_else(|| {
                    panic!(
                        "ConvTrans2D<{IN}, {OUT}, {K}, {S}, {P}, {L}> has no output for images \
                         of {height} × {width} pixels"
                    )
                })
        };
        let map = window::<K, S, P, L>().map((batch, Const::<OUT>, grown(height), grown(width)));
        assert_eq!(
            (map.out_h, map.out_w),
            (height, width),
            "one window per input pixel"
        );
        let rows = images_to_rows(input);
        let saved_rows = hold(&rows);
        let out = fold(matmul(rows, self.kernel_matrix()), &map);
        (
            out,
            ConvTransSaved {
                map,
                rows: saved_rows,
            },
        )
    }

    fn backward(
        &self,
        saved: Self::Saved,
        grad_output: Images<E, OUT>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Images<E, IN>> {
        let delta = unfold(grad_output, &saved.map, E::zero());
        let held = hold(&delta);
        let grad_weight = matmul(
            taped(&saved.rows).permute::<(Const<IN>, usize), Axes2<1, 0>>(),
            taped(&held),
        );
        grads.add(
            &self.weight,
            grad_weight.reshape_like(&(Const::<IN>, Const::<OUT>, Const::<K>, Const::<K>)),
        );
        let delta = when_wanted(delta, grads, want_input)?;
        let rows = matmul(delta, self.kernel_matrix().permute::<_, Axes2<1, 0>>());
        Some(rows_to_images(rows, &saved.map))
    }
}

/// The window of a layer's generics.
fn window<const K: usize, const S: usize, const P: usize, const L: usize>() -> Window {
    Window {
        kernel: K,
        stride: S,
        padding: P,
        dilation: L,
    }
}

/// (windows, C) rows, one per (image, window position), back to (batch, C, out_h, out_w).
fn rows_to_images<const C: usize, const N: usize, E: Real>(
    rows: Taped<(usize, Const<C>), E>,
    map: &PatchMap<N>,
) -> Images<E, C>
where
    Cpu: Device<E>,
{
    let batch = map.image.0;
    rows.reshape_like(&(batch, map.out_h * map.out_w, Const::<C>))
        .permute::<_, Axes3<0, 2, 1>>()
        .reshape_like(&(batch, Const::<C>, map.out_h, map.out_w))
}

/// The transpose of [`rows_to_images`].
fn images_to_rows<const C: usize, E: Real>(images: Images<E, C>) -> Taped<(usize, Const<C>), E>
where
    Cpu: Device<E>,
{
    let (batch, _, height, width) = *images.shape();
    images
        .reshape_like(&(batch, Const::<C>, height * width))
        .permute::<_, Axes3<0, 2, 1>>()
        .reshape_like(&(batch * height * width, Const::<C>))
}

/// A patch matrix (windows, C·K·K) as (windows, C, K·K): each channel's taps on the last axis.
fn taps<const C: usize, E: Real>(
    patches: Taped<PatchShape, E>,
) -> Taped<(usize, Const<C>, usize), E>
where
    Cpu: Device<E>,
{
    let (windows, columns) = *patches.shape();
    patches.reshape_like(&(windows, Const::<C>, columns / C))
}

/// δ per (window, channel) spread over the window's taps with the weights `share`, folded back
/// onto the pixels: the backward of every 2-D pool.
fn spread<const C: usize, E: Real>(
    grad_output: Images<E, C>,
    share: impl FnOnce(Taped<(usize, Const<C>, usize), E>) -> Taped<(usize, Const<C>, usize), E>,
    map: &PatchMap<C>,
) -> Images<E, C>
where
    Cpu: Device<E>,
{
    let (windows, columns) = map.patch_shape();
    let per_tap = images_to_rows(grad_output).broadcast_like(&(windows, Const::<C>, columns / C));
    fold(share(per_tap).reshape_like(&(windows, columns)), map)
}

/// The mean of each `KERNEL`×`KERNEL` window, per channel: dfdx's `AvgPool2D` on stable Rust.
/// Padding counts as zeros (the divisor is always K·K). `∂x = fold(δ/K²)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct AvgPool2D<
    const KERNEL: usize,
    const STRIDE: usize = 1,
    const PADDING: usize = 0,
    const DILATION: usize = 1,
>;

impl<const K: usize, const S: usize, const P: usize, const L: usize> ZeroSizedModule
    for AvgPool2D<K, S, P, L>
{
}

impl<const C: usize, const K: usize, const S: usize, const P: usize, const L: usize, E: Real>
    WrittenLayer<E, Images<E, C>> for AvgPool2D<K, S, P, L>
where
    Cpu: Device<E>,
{
    type Output = Images<E, C>;
    type Saved = PatchMap<C>;

    fn forward(&self, input: Images<E, C>) -> (Images<E, C>, PatchMap<C>) {
        let map = window::<K, S, P, L>().map(*input.shape());
        let sums = taps::<C, E>(unfold(input, &map, E::zero())).sum::<(usize, Const<C>), Axis<2>>();
        (rows_to_images(sums * tap_share::<K, E>(), &map), map)
    }

    fn backward(
        &self,
        map: PatchMap<C>,
        grad_output: Images<E, C>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Images<E, C>> {
        let grad_output = when_wanted(grad_output, grads, want_input)?;
        Some(spread(grad_output, |d| d * tap_share::<K, E>(), &map))
    }
}

/// 1/K², each tap's share of an average pool.
fn tap_share<const K: usize, E: Real>() -> E {
    E::of(1.0 / (K * K) as f64)
}

/// What a max or min pool's backward reads: the windows, and the 0/1 indicator of each window's
/// chosen tap per channel.
pub struct ExtremePoolSaved<const C: usize, E: Real>
where
    Cpu: Device<E>,
{
    map: PatchMap<C>,
    chosen: Tensor<(usize, Const<C>, usize), E, Cpu>,
}

/// Defines a max or min 2-D pool: the extreme of each window per channel, padding filled with
/// `$fill` (so it never wins), `∂x = fold(δ ⊙ e)` with `e` the first extreme tap.
macro_rules! extreme_pool_2d {
    ($(#[$doc:meta])* $name:ident, $reduce:ident, $fill:expr, $better:expr) => {
        $(#[$doc])*
        #[derive(Debug, Default, Clone, Copy)]
        pub struct $name<
            const KERNEL: usize,
            const STRIDE: usize = 1,
            const PADDING: usize = 0,
            const DILATION: usize = 1,
        >;

        impl<const K: usize, const S: usize, const P: usize, const L: usize> ZeroSizedModule
            for $name<K, S, P, L>
        {
        }

        impl<
                const C: usize,
                const K: usize,
                const S: usize,
                const P: usize,
                const L: usize,
                E: Real,
            > WrittenLayer<E, Images<E, C>> for $name<K, S, P, L>
        where
            Cpu: Device<E>,
        {
            type Output = Images<E, C>;
            type Saved = ExtremePoolSaved<C, E>;

            fn forward(&self, input: Images<E, C>) -> (Images<E, C>, Self::Saved) {
                let map = window::<K, S, P, L>().map(*input.shape());
                let taps = taps::<C, E>(unfold(input, &map, $fill));
                let chosen = first_extremes(&hold(&taps), K * K, $better);
                let extremes = taps.$reduce::<(usize, Const<C>), Axis<2>>();
                (rows_to_images(extremes, &map), ExtremePoolSaved { map, chosen })
            }

            fn backward(
                &self,
                saved: Self::Saved,
                grad_output: Images<E, C>,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<Images<E, C>> {
                let grad_output = when_wanted(grad_output, grads, want_input)?;
                let ExtremePoolSaved { map, chosen } = saved;
                Some(spread(grad_output, |d| d * chosen, &map))
            }
        }
    };
}

extreme_pool_2d!(
    /// The maximum of each `KERNEL`×`KERNEL` window, per channel: dfdx's `MaxPool2D` on stable
    /// Rust.
    MaxPool2D,
    max,
    E::neg_infinity(),
    |a: f64, b: f64| a > b
);
extreme_pool_2d!(
    /// The minimum of each `KERNEL`×`KERNEL` window, per channel: dfdx's `MinPool2D` on stable
    /// Rust.
    MinPool2D,
    min,
    E::infinity(),
    |a: f64, b: f64| a < b
);

/// Each image as one row of `N` = C·H·W features, in (channel, row, column) order: dfdx's
/// `Flatten2D` on stable Rust, where the feature count must be named.
///
/// # Panics
/// When C·H·W of the images is not `N` (a shape error, as a wrong `Linear` width would be).
#[derive(Debug, Default, Clone, Copy)]
pub struct Flatten2D<const N: usize>;

impl<const N: usize> ZeroSizedModule for Flatten2D<N> {}

impl<const C: usize, const N: usize, E: Real> WrittenLayer<E, Images<E, C>> for Flatten2D<N>
where
    Cpu: Device<E>,
{
    type Output = Activations<E, N>;
    type Saved = ImageShape<C>;

    fn forward(&self, input: Images<E, C>) -> (Activations<E, N>, ImageShape<C>) {
        let shape = *input.shape();
        let (batch, _, height, width) = shape;
        assert_eq!(
            C * height * width,
            N,
            "Flatten2D<{N}> got images of {C} channels of {height} × {width} pixels"
        );
        (input.reshape_like(&(batch, Const::<N>)), shape)
    }

    fn backward(
        &self,
        shape: ImageShape<C>,
        grad_output: Activations<E, N>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Images<E, C>> {
        let grad_output = when_wanted(grad_output, grads, want_input)?;
        Some(grad_output.reshape_like(&shape))
    }
}
