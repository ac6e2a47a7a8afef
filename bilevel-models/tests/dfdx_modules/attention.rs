//! dfdx's `MultiHeadAttention` and `TransformerEncoderBlock` as written layers on (batch,
//! steps, features) tensors: written gradient against dfdx's autodiff, H·v and J·v against
//! finite differences, symmetry; the forward against dfdx's own; and an attention whose
//! backward forgets how its weights depend on y is caught.

use crate::common::*;
use bilevel_models::attention::AttentionSaved;
use bilevel_models::by_rows::Steps;
use bilevel_models::layer::WrittenLayer;
use bilevel_optim::problem::Tp;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::{
    Linear, MultiHeadAttention, Sigmoid, SplitInto, Tanh, TransformerEncoderBlock,
};
use dfdx::nn::Module;
use dfdx::prelude::*;

const H: usize = 4;
type Dense<const I: usize, const O: usize> = Linear<I, O, f64, Cpu>;
type Attention = MultiHeadAttention<H, 2, H, H, f64, Cpu>;
type Block = TransformerEncoderBlock<H, 2, 6, f64, Cpu>;

#[test]
fn attention_and_the_encoder_block_have_exact_products() {
    assert_dense_exact::<(Fold, Dense<5, H>, Attention, Unfold, Tanh, Dense<H, 3>), 12>(
        "MultiHeadAttention",
    );
    type CrossAttention = (
        (Fold, Dense<5, H>),
        SplitInto<(Tanh, Sigmoid, Dense<H, H>)>,
        Attention,
        Unfold,
        Dense<H, 3>,
    );
    assert_dense_exact::<CrossAttention, 14>("MultiHeadAttention on (q, k, v)");
    assert_dense_exact::<(Fold, Dense<5, H>, Block, Unfold, Dense<H, 3>), 20>(
        "TransformerEncoderBlock",
    );
}

/// The written forwards are dfdx's own, to the last bit.
#[test]
fn forwards_are_dfdxs_modules() {
    let dev = Cpu::seed_from_u64(8);
    let x: Tensor<(usize, usize, Const<H>), f64, Cpu> = dev.sample_normal_like(&(3, 5, Const::<H>));
    let attention = Attention::build(&dev);
    let ours = WrittenLayer::forward(&attention, x.retaped::<Tp<f64>>()).0;
    assert_eq!(
        ours.as_vec(),
        Module::forward(&attention, x.clone()).as_vec()
    );
    // Queries and keys of different lengths, as dfdx's (q, k, v) form takes them.
    let q: Tensor<(usize, usize, Const<H>), f64, Cpu> = dev.sample_normal_like(&(3, 2, Const::<H>));
    let kv: Tensor<(usize, usize, Const<H>), f64, Cpu> =
        dev.sample_normal_like(&(3, 4, Const::<H>));
    let ours = WrittenLayer::forward(
        &attention,
        (
            q.retaped::<Tp<f64>>(),
            kv.retaped::<Tp<f64>>(),
            kv.retaped::<Tp<f64>>(),
        ),
    )
    .0;
    let theirs = Module::forward(&attention, (q.clone(), kv.clone(), kv.clone()));
    assert_eq!(ours.as_vec(), theirs.as_vec());
    let block = Block::build(&dev);
    let ours = WrittenLayer::forward(&block, x.retaped::<Tp<f64>>()).0;
    assert_eq!(ours.as_vec(), Module::forward(&block, x).as_vec());
}

/// Attention whose backward reads a copy of its weights A: the gradient is right, but H·v
/// misses how A depends on y.
#[derive(Debug, Clone)]
struct DetachedWeights<E: Dtype, D: Storage<E>>(MultiHeadAttention<H, 2, H, H, E, D>);

impl<E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform, D: Device<E>>
    TensorCollection<E, D> for DetachedWeights<E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = DetachedWeights<E2, D2>;
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(Self::module("0", |s| &s.0, |s| &mut s.0), DetachedWeights)
    }
}

impl WrittenLayer<f64, Steps<f64, H>> for DetachedWeights<f64, Cpu> {
    type Output = Steps<f64, H>;
    type Saved = AttentionSaved<f64, H, H, H>;
    fn forward(&self, input: Steps<f64, H>) -> (Steps<f64, H>, Self::Saved) {
        WrittenLayer::forward(&self.0, input)
    }
    fn backward(
        &self,
        mut saved: Self::Saved,
        grad_output: Steps<f64, H>,
        grads: &mut WrittenGrad<f64>,
        want_input: bool,
    ) -> Option<Steps<f64, H>> {
        let copy = saved.weights.as_vec();
        saved.weights = Cpu::default().tensor_from_vec(copy, *saved.weights.shape());
        WrittenLayer::backward(&self.0, saved, grad_output, grads, want_input)
    }
}

#[test]
fn attention_with_detached_weights_is_caught() {
    type Broken = (
        Fold,
        Dense<5, H>,
        DetachedWeights<f64, Cpu>,
        Unfold,
        Tanh,
        Dense<H, 3>,
    );
    let (problem, x, y) = dense_setup::<Broken, 12>();
    assert_caught(problem, &x, &y, "attention with detached weights");
}
