//! dfdx's `MultiHeadAttention` (self-attention on (batch, steps, features) tensors, and
//! attention of queries over keys and values given as a `(q, k, v)` triple) and
//! `TransformerEncoderBlock` as written layers.
//!
//! Per head, with `Q = x W_qᵀ`, `K = x W_kᵀ`, `V = x W_vᵀ` split into heads, scale `s = 1/√d_k`:
//! `A = softmax(s Q Kᵀ)`, `O = A V`, output `O W_oᵀ`. Backward, from `δO`:
//! `δV = Aᵀ δO`, `δA = δO Vᵀ`, `δZ = A ⊙ (δA − rowsum(δA ⊙ A))`, `δQ = s δZ K`,
//! `δK = s δZᵀ Q`, each through its projection's written backward; the input's gradient is the
//! sum of the three. Q, K, V and A are kept as handles of the forward graph, so H·v reaches x
//! through every one of them. The forward runs dfdx's ops in dfdx's order: its values are dfdx's.
//!
//! The encoder block is post-norm, as in dfdx: `x₁ = norm₁(x + attention(x))`,
//! `out = norm₂(x₁ + ff(x₁))`, composed from the written layers of its parts.

use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::{
    LayerNorm1D, Linear, MultiHeadAttention, ReLU, Residual, TransformerEncoderBlock,
};
use dfdx::prelude::*;

use crate::by_rows::{backward_by_rows, forward_by_rows, ByRows, Steps};
use crate::layer::WrittenLayer;
use crate::norm::LayerNormSaved;
use crate::padded::Padded;
use crate::tape::{hold, taped, Held};

/// (batch, heads, steps, per-head features), with every size known at run time.
type Heads = (usize, usize, usize, usize);

/// What the backward of an attention layer reads.
pub struct AttentionSaved<E: Real, const M: usize, const K: usize, const V: usize>
where
    Cpu: Device<E>,
{
    /// The projections' inputs.
    pub q_rows: ByRows<Held<(usize, Const<M>), E>>,
    /// See `q_rows`.
    pub k_rows: ByRows<Held<(usize, Const<M>), E>>,
    /// See `q_rows`.
    pub v_rows: ByRows<Held<(usize, Const<M>), E>>,
    /// The output projection's input.
    pub o_rows: ByRows<Held<(usize, Const<V>), E>>,
    /// Q, (batch, heads, steps, d_k).
    pub q: Held<Heads, E>,
    /// Kᵀ, (batch, heads, d_k, steps).
    pub k: Held<Heads, E>,
    /// V, (batch, heads, steps, d_v).
    pub v: Held<Heads, E>,
    /// A, (batch, heads, steps, steps).
    pub weights: Held<Heads, E>,
}

/// A layer over (batch, steps, M) tensors whose attention can mask keys: self-attention and the
/// encoder block. [`masked_or_not`] makes each a written layer on steps (nothing masked) and on
/// [`Padded`] batches (the padded keys masked, so each real step attends only to the real steps
/// of its sequence; the padded steps' outputs are computed and never read).
pub(crate) trait MaskableKeys<E: Real, const M: usize>
where
    Cpu: Device<E>,
{
    type Saved;

    /// The forward, with `key_bias` (batch, keys) added to every query's scores.
    fn forward_masked(
        &self,
        input: Steps<E, M>,
        key_bias: Option<&Held<(usize, usize), E>>,
    ) -> (Steps<E, M>, Self::Saved);

    /// Its backward (the mask is already in the saved attention weights).
    fn backward_masked(
        &self,
        saved: Self::Saved,
        grad_output: Steps<E, M>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Steps<E, M>>;
}

/// Implements [`WrittenLayer`] on steps and on padded batches for a [`MaskableKeys`] layer.
macro_rules! masked_or_not {
    ([$($generics:tt)*] $module:ty, $saved:ty) => {
        impl<$($generics)*, E: Real> WrittenLayer<E, Steps<E, M>> for $module
        where
            Cpu: Device<E>,
        {
            type Output = Steps<E, M>;
            type Saved = $saved;

            fn forward(&self, input: Steps<E, M>) -> (Steps<E, M>, Self::Saved) {
                self.forward_masked(input, None)
            }

            fn backward(
                &self,
                saved: Self::Saved,
                grad_output: Steps<E, M>,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<Steps<E, M>> {
                self.backward_masked(saved, grad_output, grads, want_input)
            }
        }

        impl<$($generics)*, E: Real> WrittenLayer<E, Padded<E, M>> for $module
        where
            Cpu: Device<E>,
        {
            type Output = Padded<E, M>;
            type Saved = $saved;

            fn forward(&self, input: Padded<E, M>) -> (Padded<E, M>, Self::Saved) {
                let bias = input.key_bias();
                input.forward_on_steps(|steps| self.forward_masked(steps, Some(&bias)))
            }

            fn backward(
                &self,
                saved: Self::Saved,
                grad_output: Padded<E, M>,
                grads: &mut WrittenGrad<E>,
                want_input: bool,
            ) -> Option<Padded<E, M>> {
                grad_output.backward_on_steps(|steps| {
                    self.backward_masked(saved, steps, grads, want_input)
                })
            }
        }
    };
}

/// Self-attention: `x` is the queries, keys and values; `∂x` sums the three gradients.
impl<const M: usize, const H: usize, const K: usize, const V: usize, E: Real> MaskableKeys<E, M>
    for MultiHeadAttention<M, H, K, V, E, Cpu>
where
    Cpu: Device<E>,
{
    type Saved = AttentionSaved<E, M, K, V>;

    fn forward_masked(
        &self,
        input: Steps<E, M>,
        key_bias: Option<&Held<(usize, usize), E>>,
    ) -> (Steps<E, M>, Self::Saved) {
        let x = hold(&input);
        attend::<M, H, K, V, E>(self, input, taped(&x), taped(&x), key_bias)
    }

    fn backward_masked(
        &self,
        saved: Self::Saved,
        grad_output: Steps<E, M>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Steps<E, M>> {
        let (q, k, v) =
            attend_backward::<M, H, K, V, E>(self, saved, grad_output, grads, want_input);
        Some(q? + k? + v?)
    }
}

masked_or_not!(
    [const M: usize, const H: usize, const K: usize, const V: usize]
    MultiHeadAttention<M, H, K, V, E, Cpu>,
    AttentionSaved<E, M, K, V>
);

/// Attention of queries `q` (batch, s₁, M) over keys `k` and values `v` (batch, s₂, M), as
/// dfdx's module on a `(q, k, v)` triple.
impl<const M: usize, const H: usize, const K: usize, const V: usize, E: Real>
    WrittenLayer<E, (Steps<E, M>, Steps<E, M>, Steps<E, M>)>
    for MultiHeadAttention<M, H, K, V, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Steps<E, M>;
    type Saved = AttentionSaved<E, M, K, V>;

    fn forward(
        &self,
        (q, k, v): (Steps<E, M>, Steps<E, M>, Steps<E, M>),
    ) -> (Steps<E, M>, Self::Saved) {
        attend::<M, H, K, V, E>(self, q, k, v, None)
    }

    fn backward(
        &self,
        saved: Self::Saved,
        grad_output: Steps<E, M>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<(Steps<E, M>, Steps<E, M>, Steps<E, M>)> {
        let (q, k, v) =
            attend_backward::<M, H, K, V, E>(self, saved, grad_output, grads, want_input);
        Some((q?, k?, v?))
    }
}

/// The forward of attention, in dfdx's order of operations (values, keys, queries). `key_bias`
/// (batch, keys) is added to every query's scores before the softmax: a padded key's weight is
/// then zero (see [`Padded::key_bias`]).
pub(crate) fn attend<const M: usize, const H: usize, const K: usize, const V: usize, E: Real>(
    layer: &MultiHeadAttention<M, H, K, V, E, Cpu>,
    q: Steps<E, M>,
    k: Steps<E, M>,
    v: Steps<E, M>,
    key_bias: Option<&Held<(usize, usize), E>>,
) -> (Steps<E, M>, AttentionSaved<E, M, K, V>)
where
    Cpu: Device<E>,
{
    let (b, s1, _) = *q.shape();
    let s2 = k.shape().1;
    let (v, v_rows) = forward_by_rows(&layer.w_v, v);
    let v = v
        .reshape_like(&(b, s2, H, V / H))
        .permute::<_, Axes4<0, 2, 1, 3>>();
    let (k, k_rows) = forward_by_rows(&layer.w_k, k);
    let k = k
        .reshape_like(&(b, s2, H, K / H))
        .permute::<_, Axes4<0, 2, 3, 1>>();
    let (q, q_rows) = forward_by_rows(&layer.w_q, q);
    let q = q
        .reshape_like(&(b, s1, H, K / H))
        .permute::<_, Axes4<0, 2, 1, 3>>();
    let (q_held, k_held, v_held) = (hold(&q), hold(&k), hold(&v));
    let scores = q.matmul(k) * scale::<E>(K / H);
    let scores = match key_bias {
        None => scores,
        Some(bias) => {
            let shape = *scores.shape();
            scores + bias.clone().broadcast_like::<_, Axes2<1, 2>>(&shape)
        }
    };
    let weights = scores.softmax::<Axis<3>>();
    let weights_held = hold(&weights);
    let tokens = weights
        .matmul(v)
        .permute::<_, Axes4<0, 2, 1, 3>>()
        .reshape_like(&(b, s1, Const::<V>));
    let (out, o_rows) = forward_by_rows(&layer.w_o, tokens);
    let saved = AttentionSaved {
        q_rows,
        k_rows,
        v_rows,
        o_rows,
        q: q_held,
        k: k_held,
        v: v_held,
        weights: weights_held,
    };
    (out, saved)
}

/// The gradients of the queries, keys and values (each `None` unless asked for).
pub(crate) type AttentionInputGradients<E, const M: usize> = (
    Option<Steps<E, M>>,
    Option<Steps<E, M>>,
    Option<Steps<E, M>>,
);

/// The queries', keys' and values' gradients (each `None` unless `want_input`); the projections'
/// own gradients go to `grads`.
pub(crate) fn attend_backward<
    const M: usize,
    const H: usize,
    const K: usize,
    const V: usize,
    E: Real,
>(
    layer: &MultiHeadAttention<M, H, K, V, E, Cpu>,
    saved: AttentionSaved<E, M, K, V>,
    grad_output: Steps<E, M>,
    grads: &mut WrittenGrad<E>,
    want_input: bool,
) -> AttentionInputGradients<E, M>
where
    Cpu: Device<E>,
{
    let (b, s1, _) = *grad_output.shape();
    let s2 = saved.v.shape().2;
    let tokens =
        backward_by_rows(&layer.w_o, saved.o_rows, grad_output, grads, true).expect("asked for");
    let d_o = tokens
        .reshape_like(&(b, s1, H, V / H))
        .permute::<_, Axes4<0, 2, 1, 3>>();
    let d_o_held = hold(&d_o);
    let a = || taped(&saved.weights);
    // δV = Aᵀ δO.
    let d_v = a().permute::<_, Axes4<0, 1, 3, 2>>().matmul(d_o);
    // δA = δO Vᵀ, then through the softmax, then the scale.
    let d_a = taped(&d_o_held).matmul(taped(&saved.v).permute::<_, Axes4<0, 1, 3, 2>>());
    let d_a_held = hold(&d_a);
    let shape = *d_a_held.shape();
    let along_a = (d_a * a())
        .sum::<(usize, usize, usize), Axis<3>>()
        .broadcast_like::<_, Axis<3>>(&shape);
    let d_z = (taped(&d_a_held) - along_a) * a() * scale::<E>(K / H);
    let d_z_held = hold(&d_z);
    // δQ = δZ K (K kept as Kᵀ), δKᵀ = Qᵀ δZ.
    let d_q = d_z.matmul(taped(&saved.k).permute::<_, Axes4<0, 1, 3, 2>>());
    let d_k = taped(&saved.q)
        .permute::<_, Axes4<0, 1, 3, 2>>()
        .matmul(taped(&d_z_held));
    let d_q = d_q
        .permute::<_, Axes4<0, 2, 1, 3>>()
        .reshape_like(&(b, s1, Const::<K>));
    let d_k = d_k
        .permute::<_, Axes4<0, 3, 1, 2>>()
        .reshape_like(&(b, s2, Const::<K>));
    let d_v = d_v
        .permute::<_, Axes4<0, 2, 1, 3>>()
        .reshape_like(&(b, s2, Const::<V>));
    (
        backward_by_rows(&layer.w_q, saved.q_rows, d_q, grads, want_input),
        backward_by_rows(&layer.w_k, saved.k_rows, d_k, grads, want_input),
        backward_by_rows(&layer.w_v, saved.v_rows, d_v, grads, want_input),
    )
}

/// `1/√d`, as dfdx rounds it.
fn scale<E: Real>(d: usize) -> E {
    E::of(1.0 / (d as f64).sqrt())
}

/// The feed-forward part of dfdx's encoder and decoder blocks.
pub(crate) type FeedForward<const M: usize, const F: usize, E> =
    Residual<(Linear<M, F, E, Cpu>, ReLU, Linear<F, M, E, Cpu>)>;

/// An inner layer's input gradient, which the block always asks for.
pub(crate) const ASKED: &str = "an inner layer returns its input gradient when asked";

/// What the backward of `norm(x + self_attention(x))` reads.
pub(crate) struct AttendedSaved<E: Real, const M: usize>
where
    Cpu: Device<E>,
{
    attention: AttentionSaved<E, M, M, M>,
    norm: ByRows<LayerNormSaved<E, M>>,
}

/// `norm(x + self_attention(x))` with `key_bias` masking keys: how dfdx's encoder and decoder
/// blocks open.
pub(crate) fn attend_and_norm<const M: usize, const H: usize, E: Real>(
    attention: &MultiHeadAttention<M, H, M, M, E, Cpu>,
    norm: &LayerNorm1D<M, E, Cpu>,
    input: Steps<E, M>,
    key_bias: Option<&Held<(usize, usize), E>>,
) -> (Steps<E, M>, AttendedSaved<E, M>)
where
    Cpu: Device<E>,
{
    let x = hold(&input);
    let (attended, attention) = attention.forward_masked(input, key_bias);
    let (out, norm) = forward_by_rows(norm, attended + taped(&x));
    (out, AttendedSaved { attention, norm })
}

/// The backward of [`attend_and_norm`]: `∂x = δ' + attention'(x)ᵀδ'`, `δ'` through the norm.
pub(crate) fn attend_and_norm_backward<const M: usize, const H: usize, E: Real>(
    attention: &MultiHeadAttention<M, H, M, M, E, Cpu>,
    norm: &LayerNorm1D<M, E, Cpu>,
    saved: AttendedSaved<E, M>,
    grad_output: Steps<E, M>,
    grads: &mut WrittenGrad<E>,
    want_input: bool,
) -> Option<Steps<E, M>>
where
    Cpu: Device<E>,
{
    let d = backward_by_rows(norm, saved.norm, grad_output, grads, true).expect(ASKED);
    let skip = hold(&d);
    let through = attention.backward_masked(saved.attention, d, grads, want_input)?;
    Some(through + taped(&skip))
}

/// What the backward of `norm(ff(x))` reads.
pub(crate) struct FedForwardSaved<E: Real, const M: usize, const F: usize>
where
    Cpu: Device<E>,
{
    ff: <FeedForward<M, F, E> as WrittenLayer<E, Steps<E, M>>>::Saved,
    norm: ByRows<LayerNormSaved<E, M>>,
}

/// `norm(ff(x))`, `ff` the residual `(Linear, ReLU, Linear)`: how dfdx's blocks close.
pub(crate) fn feed_forward_and_norm<const M: usize, const F: usize, E: Real>(
    ff: &FeedForward<M, F, E>,
    norm: &LayerNorm1D<M, E, Cpu>,
    input: Steps<E, M>,
) -> (Steps<E, M>, FedForwardSaved<E, M, F>)
where
    Cpu: Device<E>,
{
    let (x, ff_saved) = WrittenLayer::forward(ff, input);
    let (out, norm) = forward_by_rows(norm, x);
    let saved = FedForwardSaved { ff: ff_saved, norm };
    (out, saved)
}

/// The backward of [`feed_forward_and_norm`].
pub(crate) fn feed_forward_and_norm_backward<const M: usize, const F: usize, E: Real>(
    ff: &FeedForward<M, F, E>,
    norm: &LayerNorm1D<M, E, Cpu>,
    saved: FedForwardSaved<E, M, F>,
    grad_output: Steps<E, M>,
    grads: &mut WrittenGrad<E>,
) -> Steps<E, M>
where
    Cpu: Device<E>,
{
    let d = backward_by_rows(norm, saved.norm, grad_output, grads, true).expect(ASKED);
    WrittenLayer::backward(ff, saved.ff, d, grads, true).expect(ASKED)
}

/// What the backward of an encoder block reads: each half's saved values.
pub struct EncoderBlockSaved<E: Real, const M: usize, const F: usize>
where
    Cpu: Device<E>,
{
    attended: AttendedSaved<E, M>,
    fed_forward: FedForwardSaved<E, M, F>,
}

/// The post-norm block; its attention masks keys as [`MaskableKeys`] says.
impl<const M: usize, const H: usize, const F: usize, E: Real> MaskableKeys<E, M>
    for TransformerEncoderBlock<M, H, F, E, Cpu>
where
    Cpu: Device<E>,
{
    type Saved = EncoderBlockSaved<E, M, F>;

    fn forward_masked(
        &self,
        input: Steps<E, M>,
        key_bias: Option<&Held<(usize, usize), E>>,
    ) -> (Steps<E, M>, Self::Saved) {
        let (x1, attended) = attend_and_norm(&self.self_attn, &self.norm1, input, key_bias);
        let (out, fed_forward) = feed_forward_and_norm(&self.ff, &self.norm2, x1);
        let saved = EncoderBlockSaved {
            attended,
            fed_forward,
        };
        (out, saved)
    }

    fn backward_masked(
        &self,
        saved: Self::Saved,
        grad_output: Steps<E, M>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Steps<E, M>> {
        let d = feed_forward_and_norm_backward(
            &self.ff,
            &self.norm2,
            saved.fed_forward,
            grad_output,
            grads,
        );
        attend_and_norm_backward(
            &self.self_attn,
            &self.norm1,
            saved.attended,
            d,
            grads,
            want_input,
        )
    }
}

masked_or_not!(
    [const M: usize, const H: usize, const F: usize]
    TransformerEncoderBlock<M, H, F, E, Cpu>,
    EncoderBlockSaved<E, M, F>
);
