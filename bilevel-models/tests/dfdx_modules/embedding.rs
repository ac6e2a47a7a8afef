//! dfdx's `Embedding` as a written layer, on a batch of ids and on a batch of sequences of ids:
//! written gradient against dfdx's autodiff, H·v and J·v against finite differences, symmetry;
//! the forward against dfdx's own.

use crate::common::*;
use bilevel_models::embedding::{TokenSteps, Tokens};
use bilevel_models::layer::WrittenLayer;
use bilevel_models::pool::MeanPoolSteps;
use dfdx::nn::modules::{Embedding, LayerNorm1D, Linear, Tanh};
use dfdx::nn::Module;
use dfdx::prelude::*;

const H: usize = 4;

#[test]
fn embeddings_have_exact_products() {
    type OnIds = (Embedding<10, H, f64, Cpu>, Tanh, Linear<H, 3, f64, Cpu>);
    let checks = token_checks::<OnIds, Tokens, 3>();
    println!("Embedding on ids: {checks:?}");
    checks.assert_exact("Embedding on ids");

    type OnSequences = (
        Embedding<10, H, f64, Cpu>,
        LayerNorm1D<H, f64, Cpu>,
        MeanPoolSteps,
        Tanh,
        Linear<H, 3, f64, Cpu>,
    );
    let checks = token_checks::<OnSequences, TokenSteps, 5>();
    println!("Embedding on sequences: {checks:?}");
    checks.assert_exact("Embedding on sequences of ids");
}

#[test]
fn the_forward_is_dfdxs_embedding() {
    let dev = Cpu::seed_from_u64(6);
    let table = Embedding::<10, H, f64, Cpu>::build(&dev);
    let ids: TokenSteps = dev.tensor_from_vec(vec![1, 9, 9, 0, 4, 2], (2, 3));
    let ours = WrittenLayer::forward(&table, ids.clone()).0;
    assert_eq!(ours.as_vec(), Module::forward(&table, ids).as_vec());
}

/// An embedding whose table gradient is scattered from a copy of the output's gradient: the
/// gradient is right, but the copy has no history, so H·v misses how it depends on y.
#[derive(Debug, Clone)]
struct DetachedEmbedding<E: Dtype, D: Storage<E>>(Embedding<10, H, E, D>);

impl<E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform, D: Device<E>>
    TensorCollection<E, D> for DetachedEmbedding<E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = DetachedEmbedding<E2, D2>;
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(Self::module("0", |s| &s.0, |s| &mut s.0), DetachedEmbedding)
    }
}

impl WrittenLayer<f64, Tokens> for DetachedEmbedding<f64, Cpu> {
    type Output = bilevel_models::sequence::Activations<f64, H>;
    type Saved = Vec<usize>;
    fn forward(&self, ids: Tokens) -> (Self::Output, Vec<usize>) {
        WrittenLayer::forward(&self.0, ids)
    }
    fn backward(
        &self,
        ids: Vec<usize>,
        grad_output: Self::Output,
        grads: &mut bilevel_optim::written_grad::WrittenGrad<f64>,
        want_input: bool,
    ) -> Option<Tokens> {
        let copy = Cpu::default().tensor_from_vec(grad_output.as_vec(), *grad_output.shape());
        grads.keep_tape(grad_output);
        WrittenLayer::backward(&self.0, ids, copy.retaped(), grads, want_input)
    }
}

#[test]
fn an_embedding_with_a_detached_gradient_is_caught() {
    type Broken = (DetachedEmbedding<f64, Cpu>, Tanh, Linear<H, 3, f64, Cpu>);
    let (problem, x, y) = token_setup::<Broken, Tokens, 3>();
    assert_caught(problem, &x, &y, "embedding with a detached gradient");
}

/// A model that is a tuple of dfdx modules (dfdx nests tuples beyond six), ids to class scores
/// through an embedding, attention, layer norm, ReLU and a mean over the steps, has exact products with no calculus from its user: the problem's losses
/// (`classifier::loss`, `add_loss_gradient`) are all it writes.
#[test]
fn a_tuple_of_dfdx_modules_with_attention_has_exact_products() {
    type Model = (
        (
            Embedding<10, H, f64, Cpu>,
            dfdx::nn::modules::MultiHeadAttention<H, 2, H, H, f64, Cpu>,
            LayerNorm1D<H, f64, Cpu>,
        ),
        Linear<H, H, f64, Cpu>,
        dfdx::nn::modules::ReLU,
        MeanPoolSteps,
        Linear<H, 3, f64, Cpu>,
    );
    let checks = token_checks::<Model, TokenSteps, 15>();
    println!("embedding, attention, layer norm, ReLU: {checks:?}");
    checks.assert_exact("embedding, attention, layer norm, ReLU");
}
