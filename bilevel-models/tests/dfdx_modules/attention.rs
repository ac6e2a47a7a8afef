//! dfdx's `MultiHeadAttention` and `TransformerEncoderBlock` as written layers on (batch,
//! steps, features) tensors: written gradient against dfdx's autodiff, H·v and J·v against
//! finite differences, symmetry; the forward against dfdx's own; and an attention whose
//! backward forgets how its weights depend on y is caught.

use crate::broken::{copy_of, Detach, Detached};
use crate::common::*;
use bilevel_models::attention::AttentionSaved;
use bilevel_models::layer::WrittenLayer;
use bilevel_optim::problem::Tp;
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

/// The written forwards are dfdx's own, to the rounding of the matrix products.
#[test]
fn forwards_are_dfdxs_modules() {
    let dev = Cpu::seed_from_u64(8);
    let x: Tensor<(usize, usize, Const<H>), f64, Cpu> = dev.sample_normal_like(&(3, 5, Const::<H>));
    let attention = Attention::build(&dev);
    let ours = WrittenLayer::forward(&attention, x.retaped::<Tp<f64>>()).0;
    crate::common::assert_same_forward(
        &ours.as_vec(),
        &Module::forward(&attention, x.clone()).as_vec(),
        "attention",
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
    crate::common::assert_same_forward(&ours.as_vec(), &theirs.as_vec(), "attention");
    let block = Block::build(&dev);
    let ours = WrittenLayer::forward(&block, x.retaped::<Tp<f64>>()).0;
    crate::common::assert_same_forward(
        &ours.as_vec(),
        &Module::forward(&block, x).as_vec(),
        "block",
    );
}

/// Attention whose backward reads a copy of its weights A: the gradient is right, but H·v
/// misses how A depends on y.
impl Detach for AttentionSaved<f64, H, H, H> {
    fn detach(self) -> Self {
        let weights = copy_of(&self.weights);
        AttentionSaved { weights, ..self }
    }
}

#[test]
fn attention_with_detached_weights_is_caught() {
    type Broken = (
        Fold,
        Dense<5, H>,
        Detached<Attention>,
        Unfold,
        Tanh,
        Dense<H, 3>,
    );
    let (problem, x, y) = dense_setup::<Broken, 12>();
    assert_caught(problem, &x, &y, "attention with detached weights");
}
