//! dfdx's `Upscale2D<OH, OW, Method>` as a written layer on [`Images`], and `Upscale2DBy<H, W,
//! Method>` (dfdx's is nightly-only, see [`crate::conv`]) with the same semantics on stable Rust.
//!
//! An upscaling is a fixed linear map `L` (nearest neighbour or bilinear, dfdx's kernels), so its
//! written backward is `∂x = Lᵀδ`. Its values come from dfdx's own backward of the upscale op, and
//! its own backward is `L` again (dfdx's forward), so the written gradient is exact to any order.

use std::marker::PhantomData;

use bilevel_optim::problem::Tp;
use bilevel_optim::real::{device, Real};
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::Upscale2D;
use dfdx::nn::ZeroSizedModule;
use dfdx::prelude::*;

use crate::elementwise::buffer;
use crate::images::{ImageShape, Images};
use crate::layer::{when_wanted, WrittenLayer};

/// Each image scaled by `H` down and `W` across (the output is `(H·h, W·w)`): dfdx's
/// `Upscale2DBy` on stable Rust.
#[derive(Debug, Default, Clone, Copy)]
pub struct Upscale2DBy<const H: usize, const W: usize = H, M: UpscaleMethod = NearestNeighbor>(
    PhantomData<M>,
);

impl<const H: usize, const W: usize, M: UpscaleMethod> ZeroSizedModule for Upscale2DBy<H, W, M> {}

/// Images dfdx's upscale op with method `M` takes, to images (its kernel trait is private to
/// dfdx; this names the bound through its public op trait).
pub trait Upscalable<M: UpscaleMethod>: GenericUpscale2D<M, Output<usize, usize> = Self> {}
impl<M: UpscaleMethod, T: GenericUpscale2D<M, Output<usize, usize> = T>> Upscalable<M> for T {}

/// A batch of images upscaled to `(height, width)` with dfdx's op: dfdx's forward.
fn upscaled<const C: usize, E: Real, M: UpscaleMethod>(
    input: Images<E, C>,
    (height, width): (usize, usize),
) -> Images<E, C>
where
    Cpu: Device<E>,
    Images<E, C>: Upscalable<M>,
{
    input.upscale2d_like(M::default(), height, width)
}

/// `Lᵀδ` for the upscaling `L` from `input` images to δ's sides, on a tape whose backward adds
/// `L g` to δ's gradient.
fn upscale_transposed<const C: usize, E: Real, M: UpscaleMethod>(
    delta: Images<E, C>,
    input: ImageShape<C>,
) -> Images<E, C>
where
    Cpu: Device<E>,
    Images<E, C>: Upscalable<M>,
{
    let (delta, mut tape) = delta.split_tape();
    let sides = (delta.shape().2, delta.shape().3);
    let out = adjoint::<C, E, M>(&delta, input);
    let (delta_id, out_id) = (delta.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let g: Vec<E> = buffer::<E>(grads.get_or_alloc_mut(&out_id)?).to_vec();
        let g: Tensor<ImageShape<C>, E, Cpu> = device().tensor_from_vec(g, input);
        let lifted = upscaled::<C, E, M>(g.retaped::<Tp<E>>(), sides).as_vec();
        for (d, l) in buffer::<E>(grads.get_or_alloc_mut(&delta_id)?)
            .iter_mut()
            .zip(lifted)
        {
            *d += l;
        }
        Ok(())
    });
    out.put_tape(tape)
}

/// `Lᵀδ` as the gradient of `⟨L x, δ⟩` at x = 0, by dfdx's autodiff of its upscale op.
fn adjoint<const C: usize, E: Real, M: UpscaleMethod>(
    delta: &Tensor<ImageShape<C>, E, Cpu>,
    input: ImageShape<C>,
) -> Tensor<ImageShape<C>, E, Cpu>
where
    Cpu: Device<E>,
    Images<E, C>: Upscalable<M>,
{
    let sides = (delta.shape().2, delta.shape().3);
    let x: Tensor<ImageShape<C>, E, Cpu> = device().zeros_like(&input);
    let inner =
        (upscaled::<C, E, M>(x.retaped::<Tp<E>>(), sides) * delta.clone()).sum::<Rank0, _>();
    let grads = inner.backward();
    grads.get(&x)
}

/// Implements [`WrittenLayer`] for an upscaling module whose output sides are `$sides` of the
/// input sides `(h, w)`.
macro_rules! upscale_layer {
    ($module:ty, |$h:ident, $w:ident| $sides:expr) => {
        impl<const C: usize, const OH: usize, const OW: usize, M: UpscaleMethod, E: Real>
            WrittenLayer<E, Images<E, C>> for $module
        where
            Cpu: Device<E>,
            Images<E, C>: Upscalable<M>,
        {
            type Output = Images<E, C>;
            type Saved = ImageShape<C>;

            fn forward(&self, input: Images<E, C>) -> (Images<E, C>, ImageShape<C>) {
                let shape = *input.shape();
                let ($h, $w) = (shape.2, shape.3);
                (upscaled::<C, E, M>(input, $sides), shape)
            }

            fn backward(
                &self,
                shape: ImageShape<C>,
                grad_output: Images<E, C>,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<Images<E, C>> {
                let grad_output = when_wanted(grad_output, grads, want_input)?;
                Some(upscale_transposed::<C, E, M>(grad_output, shape))
            }
        }
    };
}

upscale_layer!(Upscale2D<OH, OW, M>, |_h, _w| (OH, OW));
upscale_layer!(Upscale2DBy<OH, OW, M>, |h, w| (h * OH, w * OW));
