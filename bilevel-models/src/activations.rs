//! dfdx's activation modules as written layers, so a model that is a tuple of dfdx modules gets
//! exact H·v and J·v with no calculus from its user:
//! - element-wise, on a taped tensor of any shape and on a packed [`Sequence`]: `ReLU`,
//!   `LeakyReLU`, `FastGeLU` (and the deprecated `GeLU`), `AccurateGeLU`, `Sigmoid`, `Tanh`,
//!   `Exp`, `Ln`, `Sqrt`, `Square`, `Sin`, `Cos`, `Abs`;
//! - `Softmax` and `LogSoftmax` over the features of a batch ([`Activations`]).
//!
//! An element-wise `y = f(x)` writes `∂x = ∂y ⊙ f'(x)`, where `f'(x)` is one fused op whose own
//! backward is `f''(x)` ([`crate::elementwise::slope`]), so the H·v through it is exact.
//! [`Pointwise`] states f' and f'' of each module; a module of your own that implements it gets
//! its layer from [`pointwise_forward`] and [`pointwise_backward`].
//!
//! dfdx 0.13's own backward of `accurate_gelu` is wrong (its `x·φ(x)` term is √2 too large:
//! it uses 2/√π where 1/√(2π) belongs), so `AccurateGeLU` runs this crate's fused op instead,
//! whose values are dfdx's formula and whose derivative is the true one; dfdx's autodiff through
//! this layer is then right too.

use std::f64::consts::{FRAC_1_SQRT_2, PI};

use bilevel_optim::problem::Taped;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
#[allow(deprecated)]
use dfdx::nn::modules::GeLU;
use dfdx::nn::modules::{
    Abs, AccurateGeLU, Cos, Exp, FastGeLU, LeakyReLU, Ln, LogSoftmax, ReLU, Sigmoid, Sin, Softmax,
    Sqrt, Square, Tanh,
};
use dfdx::prelude::*;

use crate::elementwise;
pub use crate::elementwise::Pointwise;
use crate::layer::{when_wanted, WrittenLayer};
use crate::padded::on_padded;
use crate::sequence::{backward_each_step, each_step, Activations, Sequence};
use crate::tape::{hold, taped, Held};

/// The forward of an element-wise layer: `f(input)` and the input, kept for the backward.
pub fn pointwise_forward<S: Shape, E: Real, A: Pointwise<E>>(
    activation: A,
    input: Taped<S, E>,
) -> (Taped<S, E>, Held<S, E>)
where
    Cpu: Device<E>,
{
    let saved = hold(&input);
    (activation.apply(input), saved)
}

/// The backward of an element-wise layer: `∂x = ∂y ⊙ f'(x)` (see [`WrittenLayer::backward`]).
pub fn pointwise_backward<S: Shape, E: Real, A: Pointwise<E>>(
    activation: A,
    input: Held<S, E>,
    grad_output: Taped<S, E>,
    grads: &mut WrittenGrad<E>,
    want_input: bool,
) -> Option<Taped<S, E>>
where
    Cpu: Device<E>,
{
    let grad_output = when_wanted(grad_output, grads, want_input)?;
    Some(grad_output * elementwise::slope(taped(&input), activation))
}

/// Implements [`WrittenLayer`] for element-wise modules, on taped tensors of any shape and on
/// packed sequences (step by step).
macro_rules! pointwise_layers {
    ($($module:ty),+ $(,)?) => {$(
        #[allow(deprecated)]
        impl<S: Shape, E: Real> WrittenLayer<E, Taped<S, E>> for $module
        where
            Cpu: Device<E>,
        {
            type Output = Taped<S, E>;
            type Saved = Held<S, E>;

            fn forward(&self, input: Taped<S, E>) -> (Taped<S, E>, Held<S, E>) {
                pointwise_forward(*self, input)
            }

            fn backward(
                &self,
                input: Held<S, E>,
                grad_output: Taped<S, E>,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<Taped<S, E>> {
                pointwise_backward(*self, input, grad_output, grads, want_input)
            }
        }

        #[allow(deprecated)]
        impl<const N: usize, E: Real> WrittenLayer<E, Sequence<E, N>> for $module
        where
            Cpu: Device<E>,
        {
            type Output = Sequence<E, N>;
            type Saved = Vec<Held<(usize, Const<N>), E>>;

            fn forward(&self, input: Sequence<E, N>) -> (Sequence<E, N>, Self::Saved) {
                each_step(input, |step| pointwise_forward(*self, step))
            }

            fn backward(
                &self,
                inputs: Self::Saved,
                grad_output: Sequence<E, N>,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<Sequence<E, N>> {
                backward_each_step(inputs, grad_output, grads, want_input, |x, d, g, want| {
                    pointwise_backward(*self, x, d, g, want)
                })
            }
        }
    )+};
}

pointwise_layers!(
    ReLU,
    LeakyReLU<E>,
    FastGeLU,
    GeLU,
    AccurateGeLU,
    Sigmoid,
    Exp,
    Ln,
    Sqrt,
    Square,
    Sin,
    Cos,
    Abs,
);

// On padded batches, the activations that are finite at every value (the padding's values are
// whatever the layers before made of zeros; `ln`, `sqrt` and `exp` could make them infinite,
// and an infinite value times a zero weight is NaN).
on_padded!(
    [const N: usize] ReLU: N -> N,
    [const N: usize] LeakyReLU<E>: N -> N,
    [const N: usize] FastGeLU: N -> N,
    [const N: usize] GeLU: N -> N,
    [const N: usize] AccurateGeLU: N -> N,
    [const N: usize] Sigmoid: N -> N,
    [const N: usize] Tanh: N -> N,
    [const N: usize] Square: N -> N,
    [const N: usize] Sin: N -> N,
    [const N: usize] Cos: N -> N,
    [const N: usize] Abs: N -> N,
);

impl<E: Real> Pointwise<E> for ReLU
where
    Cpu: Device<E>,
{
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E> {
        x.relu()
    }
    fn slope(&self, x: f64) -> f64 {
        if x > 0.0 {
            1.0
        } else {
            0.0
        }
    }
    fn curvature(&self, _: f64) -> f64 {
        0.0
    }
}

impl<E: Real> Pointwise<E> for LeakyReLU<E>
where
    Cpu: Device<E>,
{
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E> {
        x.prelu(self.0)
    }
    /// dfdx's convention: the slope is `a` below 0 and 1 from 0 on.
    fn slope(&self, x: f64) -> f64 {
        if x < 0.0 {
            self.0.f64()
        } else {
            1.0
        }
    }
    fn curvature(&self, _: f64) -> f64 {
        0.0
    }
}

impl<E: Real> Pointwise<E> for Abs
where
    Cpu: Device<E>,
{
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E> {
        x.abs()
    }
    /// dfdx's convention: 0 at 0.
    fn slope(&self, x: f64) -> f64 {
        if x == 0.0 {
            0.0
        } else {
            x.signum()
        }
    }
    fn curvature(&self, _: f64) -> f64 {
        0.0
    }
}

impl<E: Real> Pointwise<E> for Sigmoid
where
    Cpu: Device<E>,
{
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E> {
        x.sigmoid()
    }
    fn slope(&self, x: f64) -> f64 {
        let s = sigmoid(x);
        s * (1.0 - s)
    }
    fn curvature(&self, x: f64) -> f64 {
        let s = sigmoid(x);
        s * (1.0 - s) * (1.0 - 2.0 * s)
    }
}

impl<E: Real> Pointwise<E> for Exp
where
    Cpu: Device<E>,
{
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E> {
        x.exp()
    }
    fn slope(&self, x: f64) -> f64 {
        x.exp()
    }
    fn curvature(&self, x: f64) -> f64 {
        x.exp()
    }
}

impl<E: Real> Pointwise<E> for Ln
where
    Cpu: Device<E>,
{
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E> {
        x.ln()
    }
    fn slope(&self, x: f64) -> f64 {
        1.0 / x
    }
    fn curvature(&self, x: f64) -> f64 {
        -1.0 / (x * x)
    }
}

impl<E: Real> Pointwise<E> for Sqrt
where
    Cpu: Device<E>,
{
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E> {
        x.sqrt()
    }
    fn slope(&self, x: f64) -> f64 {
        0.5 / x.sqrt()
    }
    fn curvature(&self, x: f64) -> f64 {
        -0.25 / (x * x.sqrt())
    }
}

impl<E: Real> Pointwise<E> for Square
where
    Cpu: Device<E>,
{
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E> {
        x.square()
    }
    fn slope(&self, x: f64) -> f64 {
        2.0 * x
    }
    fn curvature(&self, _: f64) -> f64 {
        2.0
    }
}

impl<E: Real> Pointwise<E> for Sin
where
    Cpu: Device<E>,
{
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E> {
        x.sin()
    }
    fn slope(&self, x: f64) -> f64 {
        x.cos()
    }
    fn curvature(&self, x: f64) -> f64 {
        -x.sin()
    }
}

impl<E: Real> Pointwise<E> for Cos
where
    Cpu: Device<E>,
{
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E> {
        x.cos()
    }
    fn slope(&self, x: f64) -> f64 {
        -x.sin()
    }
    fn curvature(&self, x: f64) -> f64 {
        -x.cos()
    }
}

/// The tanh approximation of GeLU: `½x(1 + tanh(u))`, `u = √(2/π)(x + 0.044715 x³)`.
impl<E: Real> Pointwise<E> for FastGeLU
where
    Cpu: Device<E>,
{
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E> {
        x.fast_gelu()
    }
    fn slope(&self, x: f64) -> f64 {
        let (t, du, _) = fast_gelu_inner(x);
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
    }
    fn curvature(&self, x: f64) -> f64 {
        let (t, du, d2u) = fast_gelu_inner(x);
        let sech2 = 1.0 - t * t;
        sech2 * du + 0.5 * x * sech2 * (d2u - 2.0 * t * du * du)
    }
}

/// The deprecated name of [`FastGeLU`].
#[allow(deprecated)]
impl<E: Real> Pointwise<E> for GeLU
where
    Cpu: Device<E>,
{
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E> {
        x.fast_gelu()
    }
    fn slope(&self, x: f64) -> f64 {
        Pointwise::<E>::slope(&FastGeLU, x)
    }
    fn curvature(&self, x: f64) -> f64 {
        Pointwise::<E>::curvature(&FastGeLU, x)
    }
}

/// `x Φ(x) = ½x(1 + erf(x/√2))`, by this crate's fused op (dfdx's backward of it is wrong; see
/// the module documentation).
impl<E: Real> Pointwise<E> for AccurateGeLU
where
    Cpu: Device<E>,
{
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E> {
        elementwise::with_slope(x, self, |x| 0.5 * x * (1.0 + libm::erf(x * FRAC_1_SQRT_2)))
    }
    fn slope(&self, x: f64) -> f64 {
        0.5 * (1.0 + libm::erf(x * FRAC_1_SQRT_2)) + x * normal_density(x)
    }
    fn curvature(&self, x: f64) -> f64 {
        normal_density(x) * (2.0 - x * x)
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// φ(x), the standard normal density.
fn normal_density(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * PI).sqrt()
}

/// For FastGeLU at x: `tanh(u)`, `u'` and `u''`.
fn fast_gelu_inner(x: f64) -> (f64, f64, f64) {
    const KAPPA: f64 = 0.044715;
    let c = (2.0 / PI).sqrt();
    let u = c * (x + KAPPA * x * x * x);
    (
        u.tanh(),
        c * (1.0 + 3.0 * KAPPA * x * x),
        6.0 * c * KAPPA * x,
    )
}

/// tanh on a taped tensor of any shape: the fused op of [`crate::elementwise::tanh`], with
/// `∂x = ∂y ⊙ (1 − y²)` written from the output y.
impl<S: Shape, E: Real> WrittenLayer<E, Taped<S, E>> for Tanh
where
    Cpu: Device<E>,
{
    type Output = Taped<S, E>;
    type Saved = Held<S, E>;

    fn forward(&self, input: Taped<S, E>) -> (Self::Output, Self::Saved) {
        let out = elementwise::tanh(input);
        let saved = hold(&out);
        (out, saved)
    }

    fn backward(
        &self,
        out: Self::Saved,
        grad_output: Self::Output,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Taped<S, E>> {
        let grad = grad_output * elementwise::tanh_slope(taped(&out));
        when_wanted(grad, grads, want_input)
    }
}

impl<const N: usize, E: Real> WrittenLayer<E, Sequence<E, N>> for Tanh
where
    Cpu: Device<E>,
{
    type Output = Sequence<E, N>;
    type Saved = Vec<Held<(usize, Const<N>), E>>;

    fn forward(&self, input: Sequence<E, N>) -> (Sequence<E, N>, Self::Saved) {
        each_step(input, |step| {
            WrittenLayer::<E, Activations<E, N>>::forward(self, step)
        })
    }

    fn backward(
        &self,
        outputs: Self::Saved,
        grad_output: Sequence<E, N>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Sequence<E, N>> {
        backward_each_step(outputs, grad_output, grads, want_input, |y, d, g, want| {
            WrittenLayer::<E, Activations<E, N>>::backward(self, y, d, g, want)
        })
    }
}

/// Softmax over the features: `∂x = y ⊙ (∂y − ⟨∂y, y⟩)` per row, from the output y.
impl<const N: usize, E: Real> WrittenLayer<E, Activations<E, N>> for Softmax
where
    Cpu: Device<E>,
{
    type Output = Activations<E, N>;
    type Saved = Held<(usize, Const<N>), E>;

    fn forward(&self, input: Activations<E, N>) -> (Self::Output, Self::Saved) {
        let out = input.softmax::<Axis<1>>();
        let saved = hold(&out);
        (out, saved)
    }

    fn backward(
        &self,
        out: Self::Saved,
        grad_output: Self::Output,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Activations<E, N>> {
        let grad_output = when_wanted(grad_output, grads, want_input)?;
        let delta = hold(&grad_output);
        let shape = *delta.shape();
        let along_y = (grad_output * taped(&out)).sum::<(usize,), Axis<1>>();
        Some((taped(&delta) - along_y.broadcast_like(&shape)) * taped(&out))
    }
}

/// Log-softmax over the features: `∂x = ∂y − softmax(x) Σ ∂y` per row, with
/// `softmax(x) = exp(y)` from the output y.
impl<const N: usize, E: Real> WrittenLayer<E, Activations<E, N>> for LogSoftmax
where
    Cpu: Device<E>,
{
    type Output = Activations<E, N>;
    type Saved = Held<(usize, Const<N>), E>;

    fn forward(&self, input: Activations<E, N>) -> (Self::Output, Self::Saved) {
        let out = input.log_softmax::<Axis<1>>();
        let saved = hold(&out);
        (out, saved)
    }

    fn backward(
        &self,
        out: Self::Saved,
        grad_output: Self::Output,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Activations<E, N>> {
        let grad_output = when_wanted(grad_output, grads, want_input)?;
        let delta = hold(&grad_output);
        let shape = *delta.shape();
        let total = taped(&delta).sum::<(usize,), Axis<1>>();
        Some(grad_output - taped(&out).exp() * total.broadcast_like(&shape))
    }
}
