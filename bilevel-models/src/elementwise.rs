//! Fused element-wise ops with their backward written by hand: `tanh` and its slope `1 − t²`,
//! and, for any element-wise function stated as a [`Pointwise`] (dfdx's activations in
//! [`crate::activations`]), its slope `f'(x)`.
//!
//! dfdx's `tanh` calls libm's `tanhf` per element (15% of a second-order pass) and `1 − t²` is
//! three dfdx ops, each allocating its output and its gradient buffer. These are one pass each,
//! and their backward passes are ordinary taped operations, so they stay exact to any order the
//! tape is differentiated (`tanh_slope`'s own derivative, `−2t`, is what an H·v through a
//! written tanh backward needs).

use bilevel_optim::problem::Taped;
use bilevel_optim::real::{device, Real};
use dfdx::prelude::*;

/// An element-wise activation `f`: its taped forward and, at a point x, its first and second
/// derivatives (computed in f64).
pub trait Pointwise<E: Real>: Copy + 'static
where
    Cpu: Device<E>,
{
    /// `f(x)`, taped, with the values the module's own `forward` computes.
    fn apply<S: Shape>(self, x: Taped<S, E>) -> Taped<S, E>;
    /// `f'(x)`.
    fn slope(&self, x: f64) -> f64;
    /// `f''(x)`.
    fn curvature(&self, x: f64) -> f64;
}

/// `tanh(x)` element-wise (see [`Real::tanh_in_place`]); backward `∂x += ∂y ⊙ (1 − y²)`.
pub fn tanh<S: Shape, E: Real>(x: Taped<S, E>) -> Taped<S, E>
where
    Cpu: Device<E>,
{
    map(x, E::tanh_in_place, Keep::Output, |y| E::one() - y * y)
}

/// `1 − t²` element-wise, the slope of tanh at the value `t = tanh(a)`; backward
/// `∂t += ∂out ⊙ (−2t)`.
pub fn tanh_slope<S: Shape, E: Real>(t: Taped<S, E>) -> Taped<S, E>
where
    Cpu: Device<E>,
{
    map(
        t,
        |v| v.iter_mut().for_each(|t| *t = E::one() - *t * *t),
        Keep::Input,
        |t| -(t + t),
    )
}

/// `f'(x)` element-wise for the activation `f`; backward `∂x += ∂out ⊙ f''(x)`. One pass, and
/// the second derivative a written backward's H·v needs is recorded on the tape.
pub fn slope<S: Shape, E: Real, A: Pointwise<E>>(x: Taped<S, E>, activation: A) -> Taped<S, E>
where
    Cpu: Device<E>,
{
    map(
        x,
        |v| {
            v.iter_mut()
                .for_each(|x| *x = E::of(activation.slope(x.f64())))
        },
        Keep::Input,
        move |x| E::of(activation.curvature(x.f64())),
    )
}

/// `value(x)` element-wise, computed in f64, with the backward `∂x += ∂y ⊙ f'(x)` of the
/// activation `f` it computes: for a function whose dfdx op is missing or wrong.
pub fn with_slope<S: Shape, E: Real, A: Pointwise<E>>(
    x: Taped<S, E>,
    activation: A,
    value: fn(f64) -> f64,
) -> Taped<S, E>
where
    Cpu: Device<E>,
{
    map(
        x,
        |v| v.iter_mut().for_each(|x| *x = E::of(value(x.f64()))),
        Keep::Input,
        move |x| E::of(activation.slope(x.f64())),
    )
}

/// Which values the derivative is a function of.
enum Keep {
    Input,
    Output,
}

/// `y = f(x)` element-wise, with `∂x += ∂y ⊙ slope(kept)` recorded on the tape.
fn map<S: Shape, E: Real>(
    x: Taped<S, E>,
    f: impl FnOnce(&mut [E]),
    keep: Keep,
    slope: impl Fn(E) -> E + 'static,
) -> Taped<S, E>
where
    Cpu: Device<E>,
{
    let (x, mut tape) = x.split_tape();
    let mut values = bilevel_optim::real::values(&x);
    f(&mut values);
    let y = device().tensor_from_vec(values, *x.shape());
    // The derivative's argument, as a tape-free handle (no copy until the backward pass).
    let kept = match keep {
        Keep::Input => x.clone(),
        Keep::Output => y.clone(),
    };
    let (x_id, y_id) = (x.ghost(), y.ghost());
    tape.add_backward_op(move |grads| {
        let dy: Vec<E> = buffer::<E>(grads.get_or_alloc_mut(&y_id)?).to_vec();
        let dx = buffer::<E>(grads.get_or_alloc_mut(&x_id)?);
        assert_eq!(
            dx.len(),
            dy.len(),
            "element-wise op on a tensor that is not contiguous"
        );
        for ((d, g), k) in dx
            .iter_mut()
            .zip(dy)
            .zip(bilevel_optim::real::values(&kept))
        {
            *d += g * slope(k);
        }
        Ok(())
    });
    y.put_tape(tape)
}

/// A gradient buffer as a slice. (Inside functions bound by `Cpu: Device<E>` the compiler does
/// not see that the buffer type is dfdx's vector; here, with `E: Unit` only, it does.)
pub(crate) fn buffer<E: Unit>(v: &mut <Cpu as Storage<E>>::Vec) -> &mut [E] {
    &mut v[..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bilevel_optim::problem::Tp;

    /// Values and gradients against dfdx's own `tanh` and `1 − t²`, in f64 and f32.
    fn against_dfdx<E: Real>(tolerance: f64)
    where
        Cpu: Device<E>,
    {
        let dev = device();
        let values = |scale: f64, shift: f64| -> Vec<E> {
            (0..15)
                .map(|i| E::of(((i * 7 % 15) as f64 / 14.0) * scale + shift))
                .collect()
        };
        let x: Tensor<Rank2<3, 5>, E, Cpu> = dev.tensor(values(6.0, -3.0));
        let w: Tensor<Rank2<3, 5>, E, Cpu> = dev.tensor(values(1.0, 0.5));
        let check = |ours: Taped<Rank2<3, 5>, E>, theirs: Taped<Rank2<3, 5>, E>| {
            let close = |a: Vec<E>, b: Vec<E>| {
                a.iter()
                    .zip(&b)
                    .all(|(a, b)| (a.f64() - b.f64()).abs() <= tolerance * (1.0 + b.f64().abs()))
            };
            assert!(close(ours.as_vec(), theirs.as_vec()), "values differ");
            let g_ours = (ours * w.clone()).sum().backward();
            let g_theirs = (theirs * w.clone()).sum().backward();
            assert!(
                close(g_ours.get(&x).as_vec(), g_theirs.get(&x).as_vec()),
                "gradients differ"
            );
        };
        check(tanh(x.retaped::<Tp<E>>()), x.retaped::<Tp<E>>().tanh());
        check(
            tanh_slope(x.retaped::<Tp<E>>()),
            x.retaped::<Tp<E>>().square().negate() + E::one(),
        );
    }

    #[test]
    fn tanh_and_its_slope_match_dfdx() {
        against_dfdx::<f64>(1e-15);
        against_dfdx::<f32>(2e-7);
    }
}
