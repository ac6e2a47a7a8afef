//! dfdx's `Embedding` as a written layer: token ids (a batch of them, a batch of sequences of
//! them, or padded sequences of them with their lengths) to rows of its table. `∂W = Σ_positions e_{id}ᵀ δ`, a scatter-add of the output's
//! gradient rows into the table's rows, whose own backward is the gather: exact to second order.
//! The ids are data, so an embedding is a model's first layer and gives no input gradient.

use std::sync::Arc;

use bilevel_optim::problem::{Taped, Tp};
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::Embedding;
use dfdx::prelude::*;

use crate::by_rows::Steps;
use crate::layer::WrittenLayer;
use crate::padded::Padded;
use crate::rows::scatter_rows;
use crate::sequence::{Activations, SequenceMask};

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

/// Token ids of padded sequences: `ids` is (batch, steps), any id past a sequence's length (a
/// padding id); `mask` holds the lengths. An embedding turns them into a [`Padded`] batch, whose
/// padded steps attention masks and the mean over steps skips.
#[derive(Debug, Clone)]
pub struct PaddedTokens {
    /// (batch, steps) ids.
    pub ids: TokenSteps,
    /// The lengths.
    pub mask: Arc<SequenceMask>,
}

impl PaddedTokens {
    /// `ids` with one length per row, each from 1 to the number of steps.
    pub fn new(ids: TokenSteps, lengths: Vec<usize>) -> Result<Self, String> {
        let (batch, steps) = *ids.shape();
        if lengths.len() != batch {
            return Err(format!("{} lengths for {batch} rows of ids", lengths.len()));
        }
        if let Some((row, len)) = lengths
            .iter()
            .enumerate()
            .find(|(_, &l)| l == 0 || l > steps)
        {
            return Err(format!(
                "row {row} has length {len}; lengths go from 1 to the {steps} steps"
            ));
        }
        Ok(Self {
            ids,
            mask: Arc::new(SequenceMask::from_lengths(lengths)),
        })
    }
}

impl<const V: usize, const M: usize, E: Real> WrittenLayer<E, PaddedTokens>
    for Embedding<V, M, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Padded<E, M>;
    type Saved = Vec<usize>;

    fn forward(&self, input: PaddedTokens) -> (Self::Output, Vec<usize>) {
        let (steps, saved) = WrittenLayer::forward(self, input.ids);
        let output = Padded {
            steps,
            mask: input.mask,
        };
        (output, saved)
    }

    fn backward(
        &self,
        ids: Vec<usize>,
        grad_output: Self::Output,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<PaddedTokens> {
        WrittenLayer::<E, TokenSteps>::backward(self, ids, grad_output.steps, grads, want_input);
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
