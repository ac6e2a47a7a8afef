//! dfdx's modules over batches of images, (batch, channels, height, width), as written layers:
//! `Bias2D`, `BatchNorm2D`, and the global pools `AvgPoolGlobal`, `MaxPoolGlobal`,
//! `MinPoolGlobal` (to (batch, channels)); and `BatchNorm1D` on (batch, channels).
//!
//! Batch norm runs as dfdx's `forward` does, with its running statistics, which no pass updates:
//! `y = (x − μ) ⊙ γ/σ + β`, `σ = √(v + ε)`, so `∂γ = Σ δ ⊙ (x − μ)/σ`, `∂β = Σ δ`,
//! `∂x = δ ⊙ γ/σ` (sums over everything but the channel). A max (min) pool's gradient goes to
//! the first position holding the maximum (minimum) of each channel, an average pool's equally
//! to all.
//!
//! dfdx's convolutions, 2-D pools and `Flatten2D` need its `nightly` feature, which no current
//! compiler builds; [`crate::conv`] provides them on stable Rust.

use bilevel_optim::problem::{Taped, Tp};
use bilevel_optim::real::{values, Real};
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::{
    AvgPoolGlobal, BatchNorm1D, BatchNorm2D, Bias2D, MaxPoolGlobal, MinPoolGlobal,
};
use dfdx::prelude::*;

use crate::layer::{when_wanted, WrittenLayer};
use crate::sequence::Activations;
use crate::tape::{hold, taped, Held};

/// A taped batch of `C`-channel images of any height and width.
pub type Images<E, const C: usize> = Taped<(usize, Const<C>, usize, usize), E>;
/// The shape of [`Images`].
pub type ImageShape<const C: usize> = (usize, Const<C>, usize, usize);

/// `x + b` per channel: `∂b = Σ δ`, `∂x = δ`.
impl<const C: usize, E: Real> WrittenLayer<E, Images<E, C>> for Bias2D<C, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Images<E, C>;
    type Saved = ();

    fn forward(&self, input: Images<E, C>) -> (Images<E, C>, ()) {
        let shape = *input.shape();
        (
            input + self.bias.retaped::<Tp<E>>().broadcast_like(&shape),
            (),
        )
    }

    fn backward(
        &self,
        _: (),
        grad_output: Images<E, C>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Images<E, C>> {
        let delta = hold(&grad_output);
        grads.add(&self.bias, taped(&delta).sum::<Rank1<C>, _>());
        when_wanted(grad_output, grads, want_input)
    }
}

/// Implements [`WrittenLayer`] for a batch norm with running statistics on inputs of type `$input`
/// (channels on axis 1).
macro_rules! batch_norm {
    ($module:ident, $input:ty, $shape:ty) => {
        impl<const C: usize, E: Real> WrittenLayer<E, $input> for $module<C, E, Cpu>
        where
            Cpu: Device<E>,
        {
            type Output = $input;
            /// x − μ.
            type Saved = Held<$shape, E>;

            fn forward(&self, input: $input) -> ($input, Self::Saved) {
                let shape = *input.shape();
                let centered = input - self.running_mean.clone().broadcast_like(&shape);
                let saved = hold(&centered);
                let out = centered * self.gain().broadcast_like(&shape)
                    + self.bias.retaped::<Tp<E>>().broadcast_like(&shape);
                (out, saved)
            }

            fn backward(
                &self,
                centered: Self::Saved,
                grad_output: $input,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<$input> {
                let delta = hold(&grad_output);
                let shape = *delta.shape();
                let deviation = self.deviation().broadcast_like(&shape);
                grads.add(
                    &self.scale,
                    (taped(&delta) * taped(&centered) / deviation).sum::<Rank1<C>, _>(),
                );
                grads.add(&self.bias, taped(&delta).sum::<Rank1<C>, _>());
                let grad_output = when_wanted(grad_output, grads, want_input)?;
                Some(grad_output * self.gain().broadcast_like(&shape))
            }
        }

        impl<const C: usize, E: Real> RunningStatistics<E, C> for $module<C, E, Cpu>
        where
            Cpu: Device<E>,
        {
            fn deviation(&self) -> Tensor<Rank1<C>, E, Cpu> {
                (self.running_var.clone() + E::of(self.epsilon)).sqrt()
            }
            fn gain(&self) -> Taped<Rank1<C>, E> {
                self.scale.retaped::<Tp<E>>() / self.deviation()
            }
        }
    };
}

/// σ and γ/σ of a batch norm with running statistics, as dfdx's inference forward rounds them.
trait RunningStatistics<E: Real, const C: usize>
where
    Cpu: Device<E>,
{
    fn deviation(&self) -> Tensor<Rank1<C>, E, Cpu>;
    fn gain(&self) -> Taped<Rank1<C>, E>;
}

batch_norm!(BatchNorm2D, Images<E, C>, ImageShape<C>);
batch_norm!(BatchNorm1D, Activations<E, C>, (usize, Const<C>));

/// The mean over each image's pixels: `∂x = δ / (height·width)`.
impl<const C: usize, E: Real> WrittenLayer<E, Images<E, C>> for AvgPoolGlobal
where
    Cpu: Device<E>,
{
    type Output = Activations<E, C>;
    type Saved = ImageShape<C>;

    fn forward(&self, input: Images<E, C>) -> (Activations<E, C>, ImageShape<C>) {
        let shape = *input.shape();
        (input.mean::<(usize, Const<C>), Axes2<2, 3>>(), shape)
    }

    fn backward(
        &self,
        shape: ImageShape<C>,
        grad_output: Activations<E, C>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Images<E, C>> {
        let grad_output = when_wanted(grad_output, grads, want_input)?;
        let pixels = E::of((shape.2 * shape.3) as f64);
        Some(grad_output.broadcast_like::<_, Axes2<2, 3>>(&shape) / pixels)
    }
}

/// Implements [`WrittenLayer`] for a global max or min pool: the extreme value of each channel,
/// with `∂x = δ ⊙ e`, `e` the indicator of the first position that holds it.
macro_rules! extreme_pool {
    ($module:ty, $reduce:ident, $better:expr) => {
        impl<const C: usize, E: Real> WrittenLayer<E, Images<E, C>> for $module
        where
            Cpu: Device<E>,
        {
            type Output = Activations<E, C>;
            /// The indicator of each channel's chosen position.
            type Saved = Tensor<ImageShape<C>, E, Cpu>;

            fn forward(&self, input: Images<E, C>) -> (Activations<E, C>, Self::Saved) {
                let (_, _, height, width) = *input.shape();
                let chosen = first_extremes(&hold(&input), height * width, $better);
                (input.$reduce::<(usize, Const<C>), Axes2<2, 3>>(), chosen)
            }

            fn backward(
                &self,
                chosen: Self::Saved,
                grad_output: Activations<E, C>,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<Images<E, C>> {
                let grad_output = when_wanted(grad_output, grads, want_input)?;
                let shape = *chosen.shape();
                Some(grad_output.broadcast_like::<_, Axes2<2, 3>>(&shape) * chosen)
            }
        }
    };
}

extreme_pool!(MaxPoolGlobal, max, |a: f64, b: f64| a > b);
extreme_pool!(MinPoolGlobal, min, |a: f64, b: f64| a < b);

/// The indicator of the first entry of each run of `group` consecutive entries (in row-major
/// order) that no later entry of the run beats: where a max or min pool sends its gradient.
pub(crate) fn first_extremes<S: Shape, E: Real>(
    t: &Held<S, E>,
    group: usize,
    better: fn(f64, f64) -> bool,
) -> Tensor<S, E, Cpu>
where
    Cpu: Device<E>,
{
    let data = values(t);
    let mut chosen = vec![E::zero(); data.len()];
    for (start, run) in data
        .chunks(group.max(1))
        .enumerate()
        .map(|(k, r)| (k * group, r))
    {
        let best = (1..run.len()).fold(0, |best, i| {
            if better(run[i].f64(), run[best].f64()) {
                i
            } else {
                best
            }
        });
        if !run.is_empty() {
            chosen[start + best] = E::one();
        }
    }
    bilevel_optim::real::device().tensor_from_vec(chosen, *t.shape())
}
