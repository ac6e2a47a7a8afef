//! dfdx's learnable-slope activations as written layers: `PReLU` (one slope `a`) on a taped
//! tensor of any shape, and `PReLU1D<C>` (a slope per channel, channels on axis 1) on rows,
//! (batch, C, steps) and images. (dfdx's own modules take compile-time shapes only; the written
//! layers also take a batch of any size.)
//!
//! `y = x` where `x ≥ 0`, `a x` where `x < 0`, as dfdx's `prelu`. With `m` the constant 0/1
//! indicator of `x < 0`: `∂a = Σ δ ⊙ x ⊙ m` (summed to the slope's shape) and
//! `∂x = δ ⊙ (1 − m + a m)`; `m` has derivative zero almost everywhere, so H·v is exact.

use bilevel_optim::problem::{Taped, Tp};
use bilevel_optim::real::{device, Real};
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::prelu::{PReLU, PReLU1D};
use dfdx::prelude::*;

use crate::layer::{when_wanted, WrittenLayer};
use crate::tape::{hold, taped, Held};

/// `prelu(x, slope)`, x kept for the backward: dfdx's forward.
fn prelu_forward<S: Shape, E: Real>(
    input: Taped<S, E>,
    slope: Taped<S, E>,
) -> (Taped<S, E>, Held<S, E>)
where
    Cpu: Device<E>,
{
    let saved = hold(&input);
    (input.prelu(slope), saved)
}

/// `(δ ⊙ x ⊙ m, ∂x)` of `prelu(x, slope)`: the first summed by the caller to its slope's shape;
/// `∂x` is `None` when not wanted (the tape kept in `grads`).
fn prelu_backward<S: Shape, E: Real>(
    input: &Held<S, E>,
    slope: impl FnOnce() -> Taped<S, E>,
    grad_output: Taped<S, E>,
    grads: &mut WrittenGrad<E>,
    want_input: bool,
) -> (Taped<S, E>, Option<Taped<S, E>>)
where
    Cpu: Device<E>,
{
    let shape = *input.shape();
    let dev = device();
    let negative = input
        .lt(E::zero())
        .choose(dev.ones_like(&shape), dev.zeros_like(&shape));
    let delta = hold(&grad_output);
    let grad_slope = taped(&delta) * taped(input) * negative.clone();
    let grad_input = when_wanted(grad_output, grads, want_input).map(|d| {
        let gain = slope() * negative.clone() - negative + E::one();
        d * gain
    });
    (grad_slope, grad_input)
}

/// One slope for every entry.
impl<S: Shape, E: Real> WrittenLayer<E, Taped<S, E>> for PReLU<E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Taped<S, E>;
    type Saved = Held<S, E>;

    fn forward(&self, input: Taped<S, E>) -> (Taped<S, E>, Held<S, E>) {
        let shape = *input.shape();
        prelu_forward(input, self.a.retaped::<Tp<E>>().broadcast_like(&shape))
    }

    fn backward(
        &self,
        input: Held<S, E>,
        grad_output: Taped<S, E>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Taped<S, E>> {
        let shape = *input.shape();
        let slope = || self.a.retaped::<Tp<E>>().broadcast_like(&shape);
        let (grad_slope, grad_input) =
            prelu_backward(&input, slope, grad_output, grads, want_input);
        grads.add(&self.a, grad_slope.sum());
        grad_input
    }
}

/// Implements [`WrittenLayer`] for `PReLU1D<Const<C>>` on inputs of shape `$shape` (channels on
/// axis 1; `$others` the axes the slope is broadcast along).
macro_rules! prelu_1d {
    ($shape:ty, $others:ty) => {
        impl<const C: usize, E: Real> WrittenLayer<E, Taped<$shape, E>>
            for PReLU1D<Const<C>, E, Cpu>
        where
            Cpu: Device<E>,
        {
            type Output = Taped<$shape, E>;
            type Saved = Held<$shape, E>;

            fn forward(&self, input: Taped<$shape, E>) -> (Taped<$shape, E>, Self::Saved) {
                let shape = *input.shape();
                let slope = self
                    .a
                    .retaped::<Tp<E>>()
                    .broadcast_like::<_, $others>(&shape);
                prelu_forward(input, slope)
            }

            fn backward(
                &self,
                input: Self::Saved,
                grad_output: Taped<$shape, E>,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<Taped<$shape, E>> {
                let shape = *input.shape();
                let slope = || {
                    self.a
                        .retaped::<Tp<E>>()
                        .broadcast_like::<_, $others>(&shape)
                };
                let (grad_slope, grad_input) =
                    prelu_backward(&input, slope, grad_output, grads, want_input);
                grads.add(&self.a, grad_slope.sum::<(Const<C>,), $others>());
                grad_input
            }
        }
    };
}

prelu_1d!((usize, Const<C>), Axis<0>);
prelu_1d!((usize, Const<C>, usize), Axes2<0, 2>);
prelu_1d!((usize, Const<C>, usize, usize), Axes3<0, 2, 3>);
