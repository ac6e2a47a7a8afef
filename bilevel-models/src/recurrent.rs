//! The affine map every recurrent cell is built from, `a_t = x_t W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh`,
//! with the gradient pieces the written backward passes through time share.

use bilevel_optim::problem::Tp;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::Linear;
use dfdx::nn::tensor_collection::{ModuleVisitor, TensorCollection};
use dfdx::prelude::*;

use crate::matmul::{matmul, matmul_plus, matmul_plus_row};
use crate::rows::{concat_rows, gather_rows, scatter_rows};
use crate::sequence::Activations;
use crate::tape::{hold, taped, Held};

/// `x W_ihᵀ + b_ih + h W_hhᵀ + b_hh`: an input projection and a recurrent projection, each with
/// its own bias (PyTorch's convention; both initialised uniform in ±1/√fan_in).
#[derive(Debug, Clone)]
pub struct RecurrentAffine<const I: usize, const H: usize, E: Dtype, D: Storage<E>> {
    /// The input projection `x W_ihᵀ + b_ih`.
    pub input: Linear<I, H, E, D>,
    /// The recurrent projection `h W_hhᵀ + b_hh`.
    pub recurrent: Linear<H, H, E, D>,
}

impl<const I: usize, const H: usize, E, D: Device<E>> TensorCollection<E, D>
    for RecurrentAffine<I, H, E, D>
where
    E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
{
    type To<E2: Dtype, D2: Device<E2>> = RecurrentAffine<I, H, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("input", |s| &s.input, |s| &mut s.input),
                Self::module("recurrent", |s| &s.recurrent, |s| &mut s.recurrent),
            ),
            |(input, recurrent)| RecurrentAffine { input, recurrent },
        )
    }
}

impl<const I: usize, const H: usize, E: Real> RecurrentAffine<I, H, E, Cpu>
where
    Cpu: Device<E>,
{
    /// `a_t` from the taped input `x_t` and the previous state (`None` at t = 0: h_0 = 0).
    pub fn forward(
        &self,
        x: Activations<E, I>,
        h_prev: Option<Activations<E, H>>,
    ) -> Activations<E, H> {
        let biases = self.input.bias.retaped::<Tp<E>>() + self.recurrent.bias.retaped::<Tp<E>>();
        let a = matmul_plus_row(
            x,
            self.input
                .weight
                .retaped::<Tp<E>>()
                .permute::<Rank2<I, H>, _>(),
            biases,
        );
        match h_prev {
            None => a,
            Some(h) => matmul_plus(
                a,
                h,
                self.recurrent
                    .weight
                    .retaped::<Tp<E>>()
                    .permute::<Rank2<H, H>, _>(),
            ),
        }
    }

    /// `∂a_t/∂x_t` applied to `da`: `da W_ih`.
    pub fn input_grad(&self, da: &Held<(usize, Const<H>), E>) -> Activations<E, I> {
        matmul(taped(da), self.input.weight.retaped::<Tp<E>>())
    }

    /// `∂a_t/∂h_{t−1}` applied to `da`: `da W_hh`.
    pub fn hidden_grad(&self, da: &Held<(usize, Const<H>), E>) -> Activations<E, H> {
        matmul(taped(da), self.recurrent.weight.retaped::<Tp<E>>())
    }
}

/// The parameter gradients of a [`RecurrentAffine`], summed over time steps.
///
/// The steps' `da_t`, `x_t` and `h_{t−1}` are collected and stacked, so each weight gradient is
/// one large matrix product (`DAᵀX` over all T·B rows) instead of T small ones and T additions:
/// fewer, better-shaped operations both here and in the backward pass over them.
pub struct AffineGrads<const I: usize, const H: usize, E: Real>
where
    Cpu: Device<E>,
{
    da: Vec<Held<(usize, Const<H>), E>>,
    x: Vec<Held<(usize, Const<I>), E>>,
    /// `da_t` of the steps that have a previous state, and that state.
    da_recurrent: Vec<Held<(usize, Const<H>), E>>,
    h_prev: Vec<Held<(usize, Const<H>), E>>,
}

impl<const I: usize, const H: usize, E: Real> Default for AffineGrads<I, H, E>
where
    Cpu: Device<E>,
{
    fn default() -> Self {
        Self {
            da: Vec::new(),
            x: Vec::new(),
            da_recurrent: Vec::new(),
            h_prev: Vec::new(),
        }
    }
}

/// The state a step of `rows` rows continues: the first `rows` rows of the previous state (a
/// packed batch loses its ended sequences from the end).
pub fn first_rows<const H: usize, E: Real>(
    previous: &Held<(usize, Const<H>), E>,
    rows: usize,
) -> Activations<E, H>
where
    Cpu: Device<E>,
{
    if previous.shape().0 == rows {
        taped(previous)
    } else {
        gather_rows(taped(previous), &(0..rows).collect::<Vec<_>>())
    }
}

/// `grad` (of a later, smaller step) padded with zero rows to `rows` rows: the transpose of
/// [`first_rows`].
pub fn extend_rows<const H: usize, E: Real>(
    grad: Activations<E, H>,
    rows: usize,
) -> Activations<E, H>
where
    Cpu: Device<E>,
{
    let have = grad.shape().0;
    if have == rows {
        grad
    } else {
        scatter_rows(grad, &(0..have).collect::<Vec<_>>(), rows)
    }
}

/// Every step's rows, stacked into one taped matrix.
fn stack_rows<const N: usize, E: Real>(steps: &[Held<(usize, Const<N>), E>]) -> Activations<E, N>
where
    Cpu: Device<E>,
{
    let take: Vec<usize> = steps.iter().map(|s| s.shape().0).collect();
    concat_rows(steps, &take)
}

impl<const I: usize, const H: usize, E: Real> AffineGrads<I, H, E>
where
    Cpu: Device<E>,
{
    /// Records step t: `da_t`, `x_t` and `h_{t−1}` (absent at t = 0, where h_0 = 0).
    pub fn push(
        &mut self,
        da: &Held<(usize, Const<H>), E>,
        x: &Held<(usize, Const<I>), E>,
        h_prev: Option<&Held<(usize, Const<H>), E>>,
    ) {
        self.da.push(da.clone());
        self.x.push(x.clone());
        if let Some(h) = h_prev {
            self.da_recurrent.push(da.clone());
            self.h_prev.push(h.clone());
        }
    }

    /// Gives `∂W_ih = Σ da_tᵀx_t`, `∂W_hh = Σ da_tᵀh_{t−1}` and `∂b = Σ da_t` to `grads`; a tensor
    /// with no term (the recurrent weight of a one-step sequence) has gradient zero.
    pub fn write(self, affine: &RecurrentAffine<I, H, E, Cpu>, grads: &mut WrittenGrad<E>) {
        if self.da.is_empty() {
            grads.zero(affine);
            return;
        }
        // Stack once, use through tape-free handles, and keep the stack's own tape (it routes the
        // gradient back to every step's da_t).
        let stacked = stack_rows(&self.da);
        let da = hold(&stacked);
        grads.keep_tape(stacked);
        let transposed =
            |da: &Held<(usize, Const<H>), E>| taped(da).permute::<(Const<H>, usize), _>();
        grads.add(
            &affine.input.weight,
            matmul(transposed(&da), stack_rows(&self.x)),
        );
        if self.h_prev.is_empty() {
            grads.zero(&affine.recurrent.weight);
        } else {
            let stacked = stack_rows(&self.da_recurrent);
            let da_recurrent = hold(&stacked);
            grads.keep_tape(stacked);
            // h_{t−1} has a row for every sequence still running at t − 1; step t reads the first.
            let take: Vec<usize> = self.da_recurrent.iter().map(|d| d.shape().0).collect();
            grads.add(
                &affine.recurrent.weight,
                matmul(transposed(&da_recurrent), concat_rows(&self.h_prev, &take)),
            );
        }
        // The two biases enter a_t identically, so they share one gradient.
        let bias = taped(&da).sum::<Rank1<H>, _>();
        grads.add(&affine.input.bias, bias.retaped::<Tp<E>>());
        grads.add(&affine.recurrent.bias, bias);
    }
}
