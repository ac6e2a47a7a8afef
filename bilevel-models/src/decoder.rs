//! dfdx's `TransformerDecoderBlock`, `TransformerDecoder` and `Transformer` (encoder and
//! decoder) as written layers on steps, (batch, steps, M) tensors.
//!
//! The block is post-norm, as in dfdx, with no mask (dfdx 0.13's decoder has none):
//! `x₁ = norm₁(t + self_attention(t))`, `x₂ = norm₂(x₁ + attention(x₁, m, m))`,
//! `out = norm₃(ff(x₂))`, `ff` the residual `(Linear, ReLU, Linear)`; `t` is the target and `m`
//! the encoder's output (the memory). The memory's gradient sums what its keys and values get in
//! every block. Each part runs its written layer from [`crate::attention`], [`crate::norm`] and
//! [`crate::combinators`], so the forward is dfdx's and the backward exact.

use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::{Transformer, TransformerDecoder, TransformerDecoderBlock};
use dfdx::prelude::*;

use crate::attention::{
    attend, attend_and_norm, attend_and_norm_backward, attend_backward, feed_forward_and_norm,
    feed_forward_and_norm_backward, AttendedSaved, AttentionSaved, FedForwardSaved, ASKED,
};
use crate::by_rows::{backward_by_rows, forward_by_rows, ByRows, Steps};
use crate::layer::WrittenLayer;
use crate::norm::LayerNormSaved;
use crate::tape::{hold, taped, TapedSum};

/// What the backward of a decoder block reads: each part's saved values.
pub struct DecoderBlockSaved<E: Real, const M: usize, const F: usize>
where
    Cpu: Device<E>,
{
    attended: AttendedSaved<E, M>,
    cross_attention: AttentionSaved<E, M, M, M>,
    norm2: ByRows<LayerNormSaved<E, M>>,
    fed_forward: FedForwardSaved<E, M, F>,
}

/// A target and a memory, (batch, s₁, M) and (batch, s₂, M), to the target's new features.
impl<const M: usize, const H: usize, const F: usize, E: Real>
    WrittenLayer<E, (Steps<E, M>, Steps<E, M>)> for TransformerDecoderBlock<M, H, F, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Steps<E, M>;
    type Saved = DecoderBlockSaved<E, M, F>;

    fn forward(&self, (target, memory): (Steps<E, M>, Steps<E, M>)) -> (Steps<E, M>, Self::Saved) {
        let (x1, attended) = attend_and_norm(&self.self_attn, &self.norm1, target, None);
        let x1_held = hold(&x1);
        let m = hold(&memory);
        let (crossed, cross_attention) =
            attend::<M, H, M, M, E>(&self.mh_attn, x1, memory, taped(&m), None);
        let (x2, norm2) = forward_by_rows(&self.norm2, crossed + taped(&x1_held));
        let (out, fed_forward) = feed_forward_and_norm(&self.ff, &self.norm3, x2);
        let saved = DecoderBlockSaved {
            attended,
            cross_attention,
            norm2,
            fed_forward,
        };
        (out, saved)
    }

    fn backward(
        &self,
        saved: Self::Saved,
        grad_output: Steps<E, M>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<(Steps<E, M>, Steps<E, M>)> {
        let d = feed_forward_and_norm_backward(
            &self.ff,
            &self.norm3,
            saved.fed_forward,
            grad_output,
            grads,
        );
        let d = backward_by_rows(&self.norm2, saved.norm2, d, grads, true).expect(ASKED);
        let skip = hold(&d);
        let (d_x1, d_keys, d_values) =
            attend_backward::<M, H, M, M, E>(&self.mh_attn, saved.cross_attention, d, grads, true);
        let d_memory = d_keys.expect(ASKED) + d_values.expect(ASKED);
        let d = d_x1.expect(ASKED) + taped(&skip);
        match attend_and_norm_backward(
            &self.self_attn,
            &self.norm1,
            saved.attended,
            d,
            grads,
            want_input,
        ) {
            Some(d_target) => Some((d_target, d_memory)),
            None => {
                grads.keep_tape(d_memory);
                None
            }
        }
    }
}

/// The blocks in turn on the target, each attending to the same memory.
impl<const M: usize, const H: usize, const F: usize, const L: usize, E: Real>
    WrittenLayer<E, (Steps<E, M>, Steps<E, M>)> for TransformerDecoder<M, H, F, L, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Steps<E, M>;
    type Saved = Vec<DecoderBlockSaved<E, M, F>>;

    fn forward(&self, (target, memory): (Steps<E, M>, Steps<E, M>)) -> (Steps<E, M>, Self::Saved) {
        let m = hold(&memory);
        // The first block takes the memory's tape; the others a tape-free handle to it.
        let mut memory = Some(memory);
        let mut target = target;
        let mut saved = Vec::with_capacity(L);
        for block in &self.0.modules {
            let memory = memory.take().unwrap_or_else(|| taped(&m));
            let (out, block_saved) = WrittenLayer::forward(block, (target, memory));
            target = out;
            saved.push(block_saved);
        }
        (target, saved)
    }

    fn backward(
        &self,
        saved: Self::Saved,
        grad_output: Steps<E, M>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<(Steps<E, M>, Steps<E, M>)> {
        let mut d_memory = TapedSum::default();
        let mut d = Some(grad_output);
        for (i, (block, block_saved)) in self.0.modules.iter().zip(saved).enumerate().rev() {
            let want = want_input || i > 0;
            let delta = d
                .take()
                .expect("each later block returns its input gradient");
            if let Some((d_target, d_mem)) =
                WrittenLayer::backward(block, block_saved, delta, grads, want)
            {
                d = Some(d_target);
                d_memory.push(d_mem);
            }
        }
        let d_memory = d_memory.total();
        match (d, d_memory) {
            (Some(d_target), Some(d_memory)) => Some((d_target, d_memory)),
            (d, d_memory) => {
                // Not wanted (or no block): every tape is kept.
                d.into_iter()
                    .chain(d_memory)
                    .for_each(|t| grads.keep_tape(t));
                None
            }
        }
    }
}

/// What the backward of a transformer reads: its encoder's and decoder's saved values.
pub struct TransformerSaved<Encoder, Decoder> {
    encoder: Encoder,
    decoder: Decoder,
}

/// dfdx's encoder–decoder on a `(source, target)` pair: the decoder attends to the encoded source.
impl<const M: usize, const H: usize, const A: usize, const B: usize, const F: usize, E: Real>
    WrittenLayer<E, (Steps<E, M>, Steps<E, M>)> for Transformer<M, H, A, B, F, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Steps<E, M>;
    type Saved = TransformerSaved<
        <dfdx::nn::modules::TransformerEncoder<M, H, F, A, E, Cpu> as WrittenLayer<
            E,
            Steps<E, M>,
        >>::Saved,
        Vec<DecoderBlockSaved<E, M, F>>,
    >;

    fn forward(&self, (source, target): (Steps<E, M>, Steps<E, M>)) -> (Steps<E, M>, Self::Saved) {
        let (memory, encoder) = WrittenLayer::forward(&self.encoder, source);
        let (out, decoder) = WrittenLayer::forward(&self.decoder, (target, memory));
        (out, TransformerSaved { encoder, decoder })
    }

    fn backward(
        &self,
        saved: Self::Saved,
        grad_output: Steps<E, M>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<(Steps<E, M>, Steps<E, M>)> {
        let (d_target, d_memory) =
            WrittenLayer::backward(&self.decoder, saved.decoder, grad_output, grads, true)
                .expect(ASKED);
        let d_source =
            WrittenLayer::backward(&self.encoder, saved.encoder, d_memory, grads, want_input);
        match d_source {
            Some(d_source) => Some((d_source, d_target)),
            None => {
                grads.keep_tape(d_target);
                None
            }
        }
    }
}
