//! The affine map every recurrent cell is built from, `a_t = x_t W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh`,
//! with the gradient pieces the written backward passes through time share.

use bilevel_optim::problem::Tp;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::Linear;
use dfdx::nn::tensor_collection::{ModuleVisitor, TensorCollection};
use dfdx::prelude::*;

use crate::sequence::Activations;
use crate::tape::{taped, Held, TapedSum};

/// `x W_ihᵀ + b_ih + h W_hhᵀ + b_hh`: an input projection and a recurrent projection, each with
/// its own bias (PyTorch's convention; both initialised uniform in ±1/√fan_in).
#[derive(Debug, Clone)]
pub struct RecurrentAffine<const I: usize, const H: usize, E: Dtype, D: Storage<E>> {
    pub input: Linear<I, H, E, D>,
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
        let rows = x.shape().0;
        let biases = (self.input.bias.retaped::<Tp<E>>() + self.recurrent.bias.retaped::<Tp<E>>())
            .broadcast_like(&(rows, Const::<H>));
        let a = x.matmul(
            self.input
                .weight
                .retaped::<Tp<E>>()
                .permute::<Rank2<I, H>, _>(),
        ) + biases;
        match h_prev {
            None => a,
            Some(h) => {
                a + h.matmul(
                    self.recurrent
                        .weight
                        .retaped::<Tp<E>>()
                        .permute::<Rank2<H, H>, _>(),
                )
            }
        }
    }

    /// `∂a_t/∂x_t` applied to `da`: `da W_ih`.
    pub fn input_grad(&self, da: &Held<(usize, Const<H>), E>) -> Activations<E, I> {
        taped(da).matmul(self.input.weight.retaped::<Tp<E>>())
    }

    /// `∂a_t/∂h_{t−1}` applied to `da`: `da W_hh`.
    pub fn hidden_grad(&self, da: &Held<(usize, Const<H>), E>) -> Activations<E, H> {
        taped(da).matmul(self.recurrent.weight.retaped::<Tp<E>>())
    }
}

/// The parameter gradients of a [`RecurrentAffine`], summed over time steps.
pub struct AffineGrads<const I: usize, const H: usize, E: Real>
where
    Cpu: Device<E>,
{
    input_weight: TapedSum<Rank2<H, I>, E>,
    recurrent_weight: TapedSum<Rank2<H, H>, E>,
    bias: TapedSum<Rank1<H>, E>,
}

impl<const I: usize, const H: usize, E: Real> Default for AffineGrads<I, H, E>
where
    Cpu: Device<E>,
{
    fn default() -> Self {
        Self {
            input_weight: TapedSum::default(),
            recurrent_weight: TapedSum::default(),
            bias: TapedSum::default(),
        }
    }
}

impl<const I: usize, const H: usize, E: Real> AffineGrads<I, H, E>
where
    Cpu: Device<E>,
{
    /// Adds step t's terms: `daᵀx_t`, `daᵀh_{t−1}` (when t > 0), `Σ_rows da`.
    pub fn push(
        &mut self,
        da: &Held<(usize, Const<H>), E>,
        x: &Held<(usize, Const<I>), E>,
        h_prev: Option<&Held<(usize, Const<H>), E>>,
    ) {
        let da_t = || taped(da).permute::<(Const<H>, usize), _>();
        self.input_weight.push(da_t().matmul(taped(x)));
        if let Some(h) = h_prev {
            self.recurrent_weight.push(da_t().matmul(taped(h)));
        }
        self.bias.push(taped(da).sum::<Rank1<H>, _>());
    }

    /// Gives the sums to `grads`; a tensor that got no term (a one-step sequence has no recurrent
    /// term) has gradient zero.
    pub fn write(self, affine: &RecurrentAffine<I, H, E, Cpu>, grads: &mut WrittenGrad<E>) {
        match self.input_weight.total() {
            Some(g) => grads.add(&affine.input.weight, g),
            None => grads.zero(&affine.input.weight),
        }
        match self.recurrent_weight.total() {
            Some(g) => grads.add(&affine.recurrent.weight, g),
            None => grads.zero(&affine.recurrent.weight),
        }
        match self.bias.total() {
            Some(g) => {
                // The two biases enter a_t identically, so they share one gradient.
                grads.add(&affine.input.bias, g.retaped::<Tp<E>>());
                grads.add(&affine.recurrent.bias, g);
            }
            None => {
                grads.zero(&affine.input.bias);
                grads.zero(&affine.recurrent.bias);
            }
        }
    }
}
