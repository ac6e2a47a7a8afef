//! dfdx's composite modules as written layers: `Residual`, `GeneralizedResidual`, `AddInto`,
//! `SplitInto` and `Repeated` compose the written passes of their parts, so a model built with
//! them needs no calculus either. `Dropout` and `DropoutOneIn` are the identity, as in dfdx's
//! own `forward` (the deterministic passes every oracle makes). `Reshape` reshapes the gradient
//! back.
//!
//! Where a value feeds two branches, one branch takes it with its tape and the other a tape-free
//! handle to the same tensor (gradients meet by id); where two gradients meet, their sum carries
//! both tapes. No tape is dropped.

use bilevel_optim::problem::Taped;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::builders::Reshape;
use dfdx::nn::modules::{
    AddInto, Dropout, DropoutOneIn, GeneralizedResidual, Repeated, Residual, SplitInto,
};
use dfdx::prelude::*;

use crate::layer::{when_wanted, WrittenLayer};
use crate::sequence::Sequence;
use crate::tape::{hold, taped};

/// `x + F(x)`: `∂x = δ + F'(x)ᵀδ`.
impl<S: Shape, E: Real, F> WrittenLayer<E, Taped<S, E>> for Residual<F>
where
    Cpu: Device<E>,
    F: WrittenLayer<E, Taped<S, E>, Output = Taped<S, E>>,
{
    type Output = Taped<S, E>;
    type Saved = F::Saved;

    fn forward(&self, input: Taped<S, E>) -> (Taped<S, E>, F::Saved) {
        let x = hold(&input);
        let (fx, saved) = self.0.forward(input);
        (fx + taped(&x), saved)
    }

    fn backward(
        &self,
        saved: F::Saved,
        grad_output: Taped<S, E>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Taped<S, E>> {
        let delta = hold(&grad_output);
        let through = self.0.backward(saved, grad_output, grads, want_input)?;
        Some(through + taped(&delta))
    }
}

/// `F(x) + R(x)`: `∂x = F'(x)ᵀδ + R'(x)ᵀδ`.
impl<S: Shape, E: Real, T: Shape, F, R> WrittenLayer<E, Taped<S, E>> for GeneralizedResidual<F, R>
where
    Cpu: Device<E>,
    F: WrittenLayer<E, Taped<S, E>, Output = Taped<T, E>>,
    R: WrittenLayer<E, Taped<S, E>, Output = Taped<T, E>>,
{
    type Output = Taped<T, E>;
    type Saved = (F::Saved, R::Saved);

    fn forward(&self, input: Taped<S, E>) -> (Taped<T, E>, Self::Saved) {
        let x = hold(&input);
        let (fx, f_saved) = self.f.forward(input);
        let (rx, r_saved) = self.r.forward(taped(&x));
        (fx + rx, (f_saved, r_saved))
    }

    fn backward(
        &self,
        (f_saved, r_saved): Self::Saved,
        grad_output: Taped<T, E>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Taped<S, E>> {
        let delta = hold(&grad_output);
        let through_f = self.f.backward(f_saved, grad_output, grads, want_input);
        let through_r = self.r.backward(r_saved, taped(&delta), grads, want_input);
        Some(through_f? + through_r?)
    }
}

/// `(a, b) ↦ A(a) + B(b)`: each input's gradient through its own part.
impl<E: Real, T: Shape, Ia, Ib, A, B> WrittenLayer<E, (Ia, Ib)> for AddInto<(A, B)>
where
    Cpu: Device<E>,
    A: WrittenLayer<E, Ia, Output = Taped<T, E>>,
    B: WrittenLayer<E, Ib, Output = Taped<T, E>>,
{
    type Output = Taped<T, E>;
    type Saved = (A::Saved, B::Saved);

    fn forward(&self, (a, b): (Ia, Ib)) -> (Taped<T, E>, Self::Saved) {
        let (out_a, a_saved) = self.0 .0.forward(a);
        let (out_b, b_saved) = self.0 .1.forward(b);
        (out_a + out_b, (a_saved, b_saved))
    }

    fn backward(
        &self,
        (a_saved, b_saved): Self::Saved,
        grad_output: Taped<T, E>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<(Ia, Ib)> {
        let delta = hold(&grad_output);
        let a = self.0 .0.backward(a_saved, grad_output, grads, want_input);
        let b = self
            .0
             .1
            .backward(b_saved, taped(&delta), grads, want_input);
        Some((a?, b?))
    }
}

/// `x ↦ (A(x), B(x))`: `∂x = A'(x)ᵀδ_a + B'(x)ᵀδ_b`.
impl<S: Shape, E: Real, A, B> WrittenLayer<E, Taped<S, E>> for SplitInto<(A, B)>
where
    Cpu: Device<E>,
    A: WrittenLayer<E, Taped<S, E>>,
    B: WrittenLayer<E, Taped<S, E>>,
{
    type Output = (A::Output, B::Output);
    type Saved = (A::Saved, B::Saved);

    fn forward(&self, input: Taped<S, E>) -> (Self::Output, Self::Saved) {
        let x = hold(&input);
        let (out_a, a_saved) = self.0 .0.forward(input);
        let (out_b, b_saved) = self.0 .1.forward(taped(&x));
        ((out_a, out_b), (a_saved, b_saved))
    }

    fn backward(
        &self,
        (a_saved, b_saved): Self::Saved,
        (grad_a, grad_b): Self::Output,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Taped<S, E>> {
        let a = self.0 .0.backward(a_saved, grad_a, grads, want_input);
        let b = self.0 .1.backward(b_saved, grad_b, grads, want_input);
        Some(a? + b?)
    }
}

/// `(a, b, c) ↦ A(a) + B(b) + C(c)`.
impl<E: Real, T: Shape, Ia, Ib, Ic, A, B, C> WrittenLayer<E, (Ia, Ib, Ic)> for AddInto<(A, B, C)>
where
    Cpu: Device<E>,
    A: WrittenLayer<E, Ia, Output = Taped<T, E>>,
    B: WrittenLayer<E, Ib, Output = Taped<T, E>>,
    C: WrittenLayer<E, Ic, Output = Taped<T, E>>,
{
    type Output = Taped<T, E>;
    type Saved = (A::Saved, B::Saved, C::Saved);

    fn forward(&self, (a, b, c): (Ia, Ib, Ic)) -> (Taped<T, E>, Self::Saved) {
        let (out_a, a_saved) = self.0 .0.forward(a);
        let (out_b, b_saved) = self.0 .1.forward(b);
        let (out_c, c_saved) = self.0 .2.forward(c);
        // dfdx adds right to left: a + (b + c).
        (out_a + (out_b + out_c), (a_saved, b_saved, c_saved))
    }

    fn backward(
        &self,
        (a_saved, b_saved, c_saved): Self::Saved,
        grad_output: Taped<T, E>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<(Ia, Ib, Ic)> {
        let delta = hold(&grad_output);
        let a = self.0 .0.backward(a_saved, grad_output, grads, want_input);
        let b = self
            .0
             .1
            .backward(b_saved, taped(&delta), grads, want_input);
        let c = self
            .0
             .2
            .backward(c_saved, taped(&delta), grads, want_input);
        Some((a?, b?, c?))
    }
}

/// `x ↦ (A(x), B(x), C(x))`.
impl<S: Shape, E: Real, A, B, C> WrittenLayer<E, Taped<S, E>> for SplitInto<(A, B, C)>
where
    Cpu: Device<E>,
    A: WrittenLayer<E, Taped<S, E>>,
    B: WrittenLayer<E, Taped<S, E>>,
    C: WrittenLayer<E, Taped<S, E>>,
{
    type Output = (A::Output, B::Output, C::Output);
    type Saved = (A::Saved, B::Saved, C::Saved);

    fn forward(&self, input: Taped<S, E>) -> (Self::Output, Self::Saved) {
        let x = hold(&input);
        let (out_a, a_saved) = self.0 .0.forward(input);
        let (out_b, b_saved) = self.0 .1.forward(taped(&x));
        let (out_c, c_saved) = self.0 .2.forward(taped(&x));
        ((out_a, out_b, out_c), (a_saved, b_saved, c_saved))
    }

    fn backward(
        &self,
        (a_saved, b_saved, c_saved): Self::Saved,
        (grad_a, grad_b, grad_c): Self::Output,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Taped<S, E>> {
        let a = self.0 .0.backward(a_saved, grad_a, grads, want_input);
        let b = self.0 .1.backward(b_saved, grad_b, grads, want_input);
        let c = self.0 .2.backward(c_saved, grad_c, grads, want_input);
        Some(a? + b? + c?)
    }
}

/// N copies of a layer in sequence.
impl<E: Real, I, T, const N: usize> WrittenLayer<E, I> for Repeated<T, N>
where
    Cpu: Device<E>,
    T: WrittenLayer<E, I, Output = I>,
{
    type Output = I;
    type Saved = Vec<T::Saved>;

    fn forward(&self, input: I) -> (I, Self::Saved) {
        let mut saved = Vec::with_capacity(N);
        let mut x = input;
        for module in &self.modules {
            let (out, s) = module.forward(x);
            saved.push(s);
            x = out;
        }
        (x, saved)
    }

    fn backward(
        &self,
        saved: Self::Saved,
        grad_output: I,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<I> {
        let mut grad = grad_output;
        for (k, (module, s)) in self.modules.iter().zip(saved).enumerate().rev() {
            let want = want_input || k > 0;
            match module.backward(s, grad, grads, want) {
                Some(g) => grad = g,
                None => return None,
            }
        }
        Some(grad)
    }
}

/// The identity, on taped tensors and on packed sequences.
macro_rules! identity_layers {
    ($([$($generics:tt)*] $module:ty),+ $(,)?) => {$(
        impl<S: Shape, E: Real, $($generics)*> WrittenLayer<E, Taped<S, E>> for $module
        where
            Cpu: Device<E>,
        {
            type Output = Taped<S, E>;
            type Saved = ();

            fn forward(&self, input: Taped<S, E>) -> (Taped<S, E>, ()) {
                (input, ())
            }

            fn backward(
                &self,
                _: (),
                grad_output: Taped<S, E>,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<Taped<S, E>> {
                when_wanted(grad_output, grads, want_input)
            }
        }

        impl<const M: usize, E: Real, $($generics)*> WrittenLayer<E, Sequence<E, M>> for $module
        where
            Cpu: Device<E>,
        {
            type Output = Sequence<E, M>;
            type Saved = ();

            fn forward(&self, input: Sequence<E, M>) -> (Sequence<E, M>, ()) {
                (input, ())
            }

            fn backward(
                &self,
                _: (),
                grad_output: Sequence<E, M>,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<Sequence<E, M>> {
                if want_input {
                    return Some(grad_output);
                }
                for step in grad_output.steps {
                    grads.keep_tape(step);
                }
                None
            }
        }
    )+};
}

identity_layers!([] Dropout, [const P: usize] DropoutOneIn<P>);

/// dfdx's `Reshape<Dst>`: the input (of any shape with as many entries) as `Dst`, and the
/// gradient back to the input's shape.
impl<Src: Shape, Dst: ConstShape, E: Real> WrittenLayer<E, Taped<Src, E>> for Reshape<Dst>
where
    Cpu: Device<E>,
{
    type Output = Taped<Dst, E>;
    type Saved = Src;

    fn forward(&self, input: Taped<Src, E>) -> (Taped<Dst, E>, Src) {
        let shape = *input.shape();
        (input.reshape_like(&Dst::default()), shape)
    }

    fn backward(
        &self,
        shape: Src,
        grad_output: Taped<Dst, E>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Taped<Src, E>> {
        Some(when_wanted(grad_output, grads, want_input)?.reshape_like(&shape))
    }
}
