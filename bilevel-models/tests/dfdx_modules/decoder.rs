//! dfdx's `TransformerDecoderBlock`, `TransformerDecoder` and `Transformer` as written layers:
//! written gradient against dfdx's autodiff, H·v and J·v against finite differences, symmetry;
//! the forward against dfdx's own (a target and a memory of different lengths); and a decoder
//! block that drops its memory gradient's tape is caught.

use crate::common::*;
use bilevel_models::by_rows::Steps;
use bilevel_models::layer::WrittenLayer;
use bilevel_optim::problem::Tp;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::{
    Linear, SplitInto, Tanh, Transformer, TransformerDecoder, TransformerDecoderBlock,
};
use dfdx::nn::tensor_collection::{ModuleVisitor, TensorCollection};
use dfdx::nn::Module;
use dfdx::prelude::*;

const H: usize = 4;
type Dense<const I: usize, const O: usize> = Linear<I, O, f64, Cpu>;
type Block = TransformerDecoderBlock<H, 2, 6, f64, Cpu>;
/// Rows folded into steps, split into a target and a memory, through `D`, back to rows.
type Seq2Seq<D> = (
    (Fold, Dense<5, H>),
    SplitInto<(Tanh, Dense<H, H>)>,
    D,
    Unfold,
    Dense<H, 3>,
);

#[test]
fn the_decoder_and_the_transformer_have_exact_products() {
    assert_dense_exact::<Seq2Seq<Block>, 32>("TransformerDecoderBlock");
    assert_dense_exact::<Seq2Seq<TransformerDecoder<H, 2, 6, 2, f64, Cpu>>, 58>(
        "TransformerDecoder, 2 blocks",
    );
    assert_dense_exact::<Seq2Seq<Transformer<H, 2, 1, 1, 6, f64, Cpu>>, 48>(
        "Transformer, 1 encoder and 1 decoder block",
    );
}

/// The written forwards are dfdx's own, to the rounding of the matrix products.
#[test]
fn forwards_are_dfdxs_modules() {
    let dev = Cpu::seed_from_u64(9);
    let target: Tensor<(usize, usize, Const<H>), f64, Cpu> =
        dev.sample_normal_like(&(3, 2, Const::<H>));
    let memory: Tensor<(usize, usize, Const<H>), f64, Cpu> =
        dev.sample_normal_like(&(3, 5, Const::<H>));
    let pair = || (target.retaped::<Tp<f64>>(), memory.retaped::<Tp<f64>>());
    let block = Block::build(&dev);
    let ours = WrittenLayer::forward(&block, pair()).0;
    let theirs = Module::forward(&block, (target.clone(), memory.clone()));
    crate::common::assert_same_forward(&ours.as_vec(), &theirs.as_vec(), "decoder");
    let decoder = TransformerDecoder::<H, 2, 6, 2, f64, Cpu>::build(&dev);
    let ours = WrittenLayer::forward(&decoder, pair()).0;
    let theirs = Module::forward(&decoder, (target.clone(), memory.clone()));
    crate::common::assert_same_forward(&ours.as_vec(), &theirs.as_vec(), "decoder");
    // The transformer's pair is (source, target).
    let transformer = Transformer::<H, 2, 2, 1, 6, f64, Cpu>::build(&dev);
    let ours = WrittenLayer::forward(
        &transformer,
        (memory.retaped::<Tp<f64>>(), target.retaped::<Tp<f64>>()),
    )
    .0;
    let theirs = Module::forward(&transformer, (memory, target));
    crate::common::assert_same_forward(&ours.as_vec(), &theirs.as_vec(), "decoder");
}

/// A decoder block whose memory gradient is passed on from a tape-free handle, the tape that
/// carried it dropped: the gradient is right, H·v is not.
#[derive(Debug, Clone)]
struct DroppedMemoryTape<E: Dtype, D: Storage<E>>(TransformerDecoderBlock<H, 2, 6, E, D>);

impl<E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform, D: Device<E>>
    TensorCollection<E, D> for DroppedMemoryTape<E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = DroppedMemoryTape<E2, D2>;
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(Self::module("0", |s| &s.0, |s| &mut s.0), DroppedMemoryTape)
    }
}

impl WrittenLayer<f64, (Steps<f64, H>, Steps<f64, H>)> for DroppedMemoryTape<f64, Cpu> {
    type Output = Steps<f64, H>;
    type Saved = <Block as WrittenLayer<f64, (Steps<f64, H>, Steps<f64, H>)>>::Saved;
    fn forward(&self, input: (Steps<f64, H>, Steps<f64, H>)) -> (Steps<f64, H>, Self::Saved) {
        WrittenLayer::forward(&self.0, input)
    }
    fn backward(
        &self,
        saved: Self::Saved,
        grad_output: Steps<f64, H>,
        grads: &mut WrittenGrad<f64>,
        want_input: bool,
    ) -> Option<(Steps<f64, H>, Steps<f64, H>)> {
        let (d_target, d_memory) =
            WrittenLayer::backward(&self.0, saved, grad_output, grads, want_input)?;
        let detached = d_memory.retaped::<NoneTape>();
        drop(d_memory); // the bug
        Some((d_target, detached.retaped()))
    }
}

#[test]
fn a_decoder_that_drops_its_memory_tape_is_caught() {
    let (problem, x, y) = dense_setup::<Seq2Seq<DroppedMemoryTape<f64, Cpu>>, 32>();
    assert_caught(problem, &x, &y, "decoder block with a dropped memory tape");
}
