//! Image patches ("im2col") and their transpose ("col2im") as taped ops with written backward
//! passes, the one kernel the stable-Rust convolutions and 2-D pools of [`crate::conv`] need.
//!
//! `unfold` copies every window of a batch of images into a row of a (windows, C·K·K) matrix;
//! `fold` adds such a matrix's entries back onto the pixels they came from. Each is the other's
//! transpose, so each one's backward is the other and both stay exact to any order the tape is
//! differentiated (as `rows::gather_rows` and `rows::scatter_rows` are).

use std::sync::Arc;

use bilevel_optim::problem::Taped;
use bilevel_optim::real::{device, values, Real};
use dfdx::prelude::*;

use crate::elementwise::buffer;
use crate::images::ImageShape;

/// One row per window, one column per (channel, kernel row, kernel column).
pub type PatchShape = (usize, usize);

/// How a square window moves over an image, with dfdx's conventions: `KERNEL` pixels a side,
/// `stride` pixels between windows, `padding` pixels of padding on every border, `dilation` pixels
/// between a window's taps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Taps per side.
    pub kernel: usize,
    /// Pixels between consecutive windows.
    pub stride: usize,
    /// Padding on each border.
    pub padding: usize,
    /// Pixels between consecutive taps.
    pub dilation: usize,
}

impl Window {
    /// The number of windows along a side of `side` pixels: `(side + 2p − d(k − 1) − 1)/s + 1`,
    /// dfdx's formula. `None` when the padded side is shorter than the window's span.
    pub fn windows_along(&self, side: usize) -> Option<usize> {
        let span = self.dilation * self.kernel.checked_sub(1)? + 1;
        let room = (side + 2 * self.padding).checked_sub(span)?;
        (self.stride > 0).then(|| room / self.stride + 1)
    }

    /// Where each window reads a batch of `shape` images: the map of [`unfold`] and [`fold`].
    ///
    /// # Panics
    /// When the window does not fit the images (a layer applied to images too small for it, a
    /// shape error like a wrong feature count) or has a zero kernel or stride.
    pub fn map<const C: usize>(&self, shape: ImageShape<C>) -> PatchMap<C> {
        let (batch, _, height, width) = shape;
        let fit = |side| {
            self.windows_along(side).unwrap_or_else(|| {
                panic!("a {self:?} does not fit images of {height} × {width} pixels")
            })
        };
        let (out_h, out_w) = (fit(height), fit(width));
        let k = self.kernel;
        let columns = C * k * k;
        let mut source = Vec::with_capacity(batch * out_h * out_w * columns);
        // The pixel a tap reads along one side, if it is not padding.
        let tap = |window: usize, offset: usize, side: usize| {
            (window * self.stride + offset * self.dilation)
                .checked_sub(self.padding)
                .filter(|&p| p < side)
        };
        for b in 0..batch {
            for oh in 0..out_h {
                for ow in 0..out_w {
                    for c in 0..C {
                        let plane = (b * C + c) * height * width;
                        for i in 0..k {
                            for j in 0..k {
                                source.push(match (tap(oh, i, height), tap(ow, j, width)) {
                                    (Some(y), Some(x)) => plane + y * width + x,
                                    _ => PADDING,
                                });
                            }
                        }
                    }
                }
            }
        }
        PatchMap {
            image: shape,
            out_h,
            out_w,
            columns,
            source: source.into(),
        }
    }
}

/// Marks a patch entry that reads padding.
const PADDING: usize = usize::MAX;

/// For every entry of a patch matrix, the pixel it reads (or padding).
#[derive(Debug, Clone)]
pub struct PatchMap<const C: usize> {
    /// The images' shape.
    pub image: ImageShape<C>,
    /// Windows down each image.
    pub out_h: usize,
    /// Windows across each image.
    pub out_w: usize,
    /// Entries per window, C·K·K.
    pub columns: usize,
    source: Arc<[usize]>,
}

impl<const C: usize> PatchMap<C> {
    /// The patch matrix's shape: (batch · out_h · out_w, C·K·K).
    pub fn patch_shape(&self) -> PatchShape {
        (self.image.0 * self.out_h * self.out_w, self.columns)
    }
}

/// Every window of `images` as a row; padding reads `fill`. Backward: each entry's gradient is
/// added to the pixel it read ([`fold`]).
pub fn unfold<const C: usize, E: Real>(
    images: Taped<ImageShape<C>, E>,
    map: &PatchMap<C>,
    fill: E,
) -> Taped<PatchShape, E>
where
    Cpu: Device<E>,
{
    assert_eq!(
        *images.shape(),
        map.image,
        "the map was made for other images"
    );
    let (images, mut tape) = contiguous(images).split_tape();
    let pixels = values(&images);
    let patches: Vec<E> = map
        .source
        .iter()
        .map(|&s| if s == PADDING { fill } else { pixels[s] })
        .collect();
    let out = device().tensor_from_vec(patches, map.patch_shape());
    let source = Arc::clone(&map.source);
    let (in_id, out_id) = (images.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let d_out: Vec<E> = buffer::<E>(grads.get_or_alloc_mut(&out_id)?).to_vec();
        add_along(
            buffer::<E>(grads.get_or_alloc_mut(&in_id)?),
            &d_out,
            &source,
        );
        Ok(())
    });
    out.put_tape(tape)
}

/// The transpose of [`unfold`]: each entry of `patches` added onto the pixel its window read
/// (padding entries are dropped). Backward: each entry's gradient is its pixel's ([`unfold`]).
pub fn fold<const C: usize, E: Real>(
    patches: Taped<PatchShape, E>,
    map: &PatchMap<C>,
) -> Taped<ImageShape<C>, E>
where
    Cpu: Device<E>,
{
    assert_eq!(
        *patches.shape(),
        map.patch_shape(),
        "not this map's patches"
    );
    let (patches, mut tape) = contiguous(patches).split_tape();
    let mut pixels = vec![E::zero(); map.image.num_elements()];
    add_along(&mut pixels, &values(&patches), &map.source);
    let out = device().tensor_from_vec(pixels, map.image);
    let source = Arc::clone(&map.source);
    let (in_id, out_id) = (patches.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let d_out: Vec<E> = buffer::<E>(grads.get_or_alloc_mut(&out_id)?).to_vec();
        let d_in = buffer::<E>(grads.get_or_alloc_mut(&in_id)?);
        for (d, &s) in d_in.iter_mut().zip(source.iter()) {
            if s != PADDING {
                *d += d_out[s];
            }
        }
        Ok(())
    });
    out.put_tape(tape)
}

/// `pixels[source[k]] += patches[k]` for every entry that is not padding.
fn add_along<E: Real>(pixels: &mut [E], patches: &[E], source: &[usize]) {
    for (&p, &s) in patches.iter().zip(source) {
        if s != PADDING {
            pixels[s] += p;
        }
    }
}

/// `t` in row-major layout (a copy, on the tape, when it is a permuted or broadcast view), so
/// that its values and its gradient buffer are indexed alike.
fn contiguous<S: Shape, E: Real>(t: Taped<S, E>) -> Taped<S, E>
where
    Cpu: Device<E>,
{
    let shape = *t.shape();
    t.reshape_like(&shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bilevel_optim::problem::Tp;

    #[test]
    fn windows_follow_dfdxs_formula() {
        let w = |kernel, stride, padding, dilation| Window {
            kernel,
            stride,
            padding,
            dilation,
        };
        assert_eq!(w(3, 1, 0, 1).windows_along(5), Some(3));
        assert_eq!(w(3, 1, 1, 1).windows_along(5), Some(5));
        assert_eq!(w(2, 2, 0, 1).windows_along(5), Some(2));
        assert_eq!(w(3, 1, 0, 2).windows_along(5), Some(1));
        assert_eq!(w(3, 1, 0, 2).windows_along(4), None);
        assert_eq!(w(0, 1, 0, 1).windows_along(4), None);
        assert_eq!(w(2, 0, 0, 1).windows_along(4), None);
    }

    #[test]
    fn fold_is_the_transpose_of_unfold() {
        // ⟨unfold(x), p⟩ = ⟨x, fold(p)⟩ for any x and p.
        let dev = Cpu::seed_from_u64(1);
        let window = Window {
            kernel: 3,
            stride: 2,
            padding: 1,
            dilation: 1,
        };
        let x: Tensor<ImageShape<2>, f64, Cpu> = dev.sample_normal_like(&(2, Const::<2>, 5, 4));
        let map = window.map(*x.shape());
        let p: Tensor<PatchShape, f64, Cpu> = dev.sample_normal_like(&map.patch_shape());
        let dot = |a: Vec<f64>, b: Vec<f64>| a.iter().zip(&b).map(|(a, b)| a * b).sum::<f64>();
        let left = dot(
            unfold(x.retaped::<Tp<f64>>(), &map, 0.0).as_vec(),
            p.as_vec(),
        );
        let right = dot(x.as_vec(), fold(p.retaped::<Tp<f64>>(), &map).as_vec());
        assert!((left - right).abs() < 1e-12, "{left} vs {right}");
    }
}
