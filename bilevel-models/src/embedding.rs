//! dfdx's `Embedding` as a written layer: token ids (a batch of them, or a batch of sequences of
//! them) to rows of its table. `∂W = Σ_positions e_{id}ᵀ δ`, a scatter-add of the output's
//! gradient rows into the table's rows, whose own backward is the gather: exact to second order.
//! The ids are data, so an embedding is a model's first layer and gives no input gradient.

use bilevel_optim::problem::{Taped, Tp};
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::Embedding;
use dfdx::prelude::*;

use crate::by_rows::Steps;
use crate::layer::WrittenLayer;
use crate::rows::scatter_rows;
use crate::sequence::Activations;

/// A batch of token ids.
pub type Tokens = Tensor<(usize,), usize, Cpu>;
/// A batch of sequences of token ids, (batch, steps).
pub type TokenSteps = Tensor<(usize, usize), usize, Cpu>;

impl<const V: usize, const M: usize, E: Real> WrittenLayer<E, Tokens> for Embedding<V, M, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Activations<E, M>;
    type Saved = Vec<usize>;

    fn forward(&self, ids: Tokens) -> (Self::Output, Vec<usize>) {
        let saved = ids.as_vec();
        (self.weight.retaped::<Tp<E>>().gather(ids), saved)
    }

    fn backward(
        &self,
        ids: Vec<usize>,
        grad_output: Self::Output,
        grads: &mut WrittenGrad<E>,
        _: bool,
    ) -> Option<Tokens> {
        add_table_gradient(&self.weight, grad_output, &ids, grads);
        None
    }
}

impl<const V: usize, const M: usize, E: Real> WrittenLayer<E, TokenSteps>
    for Embedding<V, M, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Steps<E, M>;
    type Saved = Vec<usize>;

    fn forward(&self, ids: TokenSteps) -> (Self::Output, Vec<usize>) {
        let saved = ids.as_vec();
        (self.weight.retaped::<Tp<E>>().gather(ids), saved)
    }

    fn backward(
        &self,
        ids: Vec<usize>,
        grad_output: Self::Output,
        grads: &mut WrittenGrad<E>,
        _: bool,
    ) -> Option<TokenSteps> {
        let rows = grad_output.reshape_like(&(ids.len(), Const::<M>));
        add_table_gradient(&self.weight, rows, &ids, grads);
        None
    }
}

/// `∂W += scatter-add of the gradient's rows at the ids`.
fn add_table_gradient<const V: usize, const M: usize, E: Real>(
    weight: &Tensor<Rank2<V, M>, E, Cpu>,
    grad_rows: Taped<(usize, Const<M>), E>,
    ids: &[usize],
    grads: &mut WrittenGrad<E>,
) where
    Cpu: Device<E>,
{
    let table = scatter_rows(grad_rows, ids, V);
    grads.add(weight, table.reshape_like(&(Const::<V>, Const::<M>)));
}
