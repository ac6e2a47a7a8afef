//! The text classifier of the tasks (recurrent encoder + max-pool over time + MLP head), its size
//! presets, and the three things a problem needs from any classifier: logits, the loss, and the
//! loss's written gradient.
//!
//! A classifier is any [`WrittenLayer`] from some input to logits; the aliases below are tuples of
//! this crate's layers, so a user can swap a layer by writing another tuple.

use bilevel_optim::problem::Taped;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::{Linear, Repeated, Tanh, TransformerEncoderBlock};
use dfdx::prelude::*;

use crate::elman::ElmanLayer;
use crate::layer::WrittenLayer;
use crate::loss::{CrossEntropy, Loss, SampleWeights};
use crate::lstm::LstmLayer;
use crate::padded::PadSequence;
use crate::pool::{MaxPoolTime, MeanPoolSteps};
use crate::positions::SinusoidalPositions;
use crate::sequence::Activations;

/// `Linear(F→M)`, tanh, `Linear(M→M)`, tanh, `Linear(M→C)`.
pub type MlpHead<const F: usize, const M: usize, const C: usize, E> = (
    Linear<F, M, E, Cpu>,
    Tanh,
    Linear<M, M, E, Cpu>,
    Tanh,
    Linear<M, C, E, Cpu>,
);

/// `Linear(F→C)`: with softmax cross-entropy and an L2 penalty, a strongly convex lower level.
pub type LinearHead<const F: usize, const C: usize, E> = Linear<F, C, E, Cpu>;

/// Two Elman layers (`I→H`, `H→H`) and max-pooling over the valid steps of the top layer.
pub type ElmanEncoder<const I: usize, const H: usize, E> = (
    ElmanLayer<I, H, E, Cpu>,
    ElmanLayer<H, H, E, Cpu>,
    MaxPoolTime,
);

/// Two LSTM layers (`I→H`, `H→H`) and max-pooling over the valid steps of the top layer.
pub type LstmEncoder<const I: usize, const H: usize, E> = (
    LstmLayer<I, H, E, Cpu>,
    LstmLayer<H, H, E, Cpu>,
    MaxPoolTime,
);

/// A transformer over the words of each text: pad the packed batch, project `I → D`, add the
/// sinusoidal positions, `L` post-norm encoder blocks (`HEADS` heads, feed-forward width `F`;
/// padded words masked), and the mean over each text's real words.
pub type TransformerEncoder<
    const I: usize,
    const D: usize,
    const HEADS: usize,
    const F: usize,
    const L: usize,
    E,
> = (
    PadSequence,
    Linear<I, D, E, Cpu>,
    SinusoidalPositions,
    Repeated<TransformerEncoderBlock<D, HEADS, F, E, Cpu>, L>,
    MeanPoolSteps,
);

/// An encoder followed by a head.
pub type TextClassifier<Encoder, Head> = (Encoder, Head);

/// The sizes the project runs by default on a CPU (`tasks.md`).
pub mod cpu {
    use super::*;

    /// GloVe 6B 50-d word vectors.
    pub const EMBEDDING: usize = 50;
    /// Hidden units of each recurrent layer.
    pub const HIDDEN: usize = 128;
    /// Hidden units of the MLP head.
    pub const HEAD: usize = 64;
    /// Sentiment classes.
    pub const CLASSES: usize = 2;

    /// Two Elman layers and max-pooling over time.
    pub type Encoder<E> = ElmanEncoder<EMBEDDING, HIDDEN, E>;
    /// Two LSTM layers and max-pooling over time.
    pub type Lstm<E> = LstmEncoder<EMBEDDING, HIDDEN, E>;
    /// The MLP head on the pooled features.
    pub type Head<E> = MlpHead<HIDDEN, HEAD, CLASSES, E>;
    /// The Elman classifier the tasks run.
    pub type Classifier<E> = TextClassifier<Encoder<E>, Head<E>>;
    /// The LSTM classifier.
    pub type LstmClassifier<E> = TextClassifier<Lstm<E>, Head<E>>;
    /// Features of each transformer block: half the recurrent encoder's, which keeps a
    /// transformer step within a few times a recurrent one on 2 cores (docs/performance.md).
    pub const MODEL: usize = 64;
    /// Attention heads of each transformer block (16 features each).
    pub const ATTENTION_HEADS: usize = 4;
    /// Feed-forward width of each transformer block.
    pub const FEED_FORWARD: usize = 128;
    /// Transformer blocks.
    pub const BLOCKS: usize = 2;
    /// A transformer of [`MODEL`] features and [`BLOCKS`] blocks, the mean over each text's
    /// words, and a pooler (`Linear(MODEL → HIDDEN)`, tanh, as BERT's) to the [`HIDDEN`]
    /// features the recurrent encoders give, so both feed the same head.
    pub type Transformer<E> = (
        TransformerEncoder<EMBEDDING, MODEL, ATTENTION_HEADS, FEED_FORWARD, BLOCKS, E>,
        Linear<MODEL, HIDDEN, E, Cpu>,
        Tanh,
    );
    /// The transformer classifier.
    pub type TransformerClassifier<E> = TextClassifier<Transformer<E>, Head<E>>;
    /// Trainable tensors of [`TransformerClassifier`]: 2 in the input projection, 16 per block
    /// (4 projections of attention, 2 layer norms and 2 feed-forward layers), 2 in the pooler,
    /// 6 in the head.
    pub const TRANSFORMER_CLASSIFIER_TENSORS: usize = 2 + 16 * BLOCKS + 2 + 6;
    /// Trainable tensors of [`Classifier`] (8 in the encoder, 6 in the head): the length of
    /// hyper-opt's per-tensor log-coefficients.
    pub const CLASSIFIER_TENSORS: usize = 14;
    /// Trainable tensors of [`LstmClassifier`] (32 in the encoder, 6 in the head).
    pub const LSTM_CLASSIFIER_TENSORS: usize = 38;
}

/// The sizes of the BO-REP paper (for a machine with a GPU and 300-d vectors).
pub mod paper {
    use super::*;

    /// GloVe 840B 300-d word vectors.
    pub const EMBEDDING: usize = 300;
    /// Hidden units of each recurrent layer.
    pub const HIDDEN: usize = 4096;
    /// Hidden units of the MLP head.
    pub const HEAD: usize = 1024;
    /// Hyper-opt uses a smaller network in the paper.
    pub const HYPER_OPT_HIDDEN: usize = 2048;
    /// Hidden units of hyper-opt's head.
    pub const HYPER_OPT_HEAD: usize = 512;
    /// Sentiment classes.
    pub const CLASSES: usize = 2;

    /// Two Elman layers and max-pooling over time.
    pub type Encoder<E> = ElmanEncoder<EMBEDDING, HIDDEN, E>;
    /// The MLP head on the pooled features.
    pub type Head<E> = MlpHead<HIDDEN, HEAD, CLASSES, E>;
    /// The paper's classifier for hyper-representation and hyper-cleaning.
    pub type Classifier<E> = TextClassifier<Encoder<E>, Head<E>>;
    /// The paper's smaller classifier for hyperparameter optimization.
    pub type HyperOptClassifier<E> = TextClassifier<
        ElmanEncoder<EMBEDDING, HYPER_OPT_HIDDEN, E>,
        MlpHead<HYPER_OPT_HIDDEN, HYPER_OPT_HEAD, CLASSES, E>,
    >;
}

/// The logits of `model` on `input`.
pub fn logits<E: Real, Input, M, const C: usize>(model: &M, input: Input) -> Activations<E, C>
where
    Cpu: Device<E>,
    M: WrittenLayer<E, Input, Output = Activations<E, C>>,
{
    model.forward(input).0
}

/// The (weighted) mean cross-entropy of `model` on `input`, taped for dfdx autodiff.
pub fn loss<E: Real, Input, M, const C: usize>(
    model: &M,
    input: Input,
    targets: &Tensor<(usize, Const<C>), E, Cpu>,
    weights: SampleWeights<E>,
) -> Taped<Rank0, E>
where
    Cpu: Device<E>,
    M: WrittenLayer<E, Input, Output = Activations<E, C>>,
{
    loss_with(&CrossEntropy, model, input, targets, weights)
}

/// Adds the written gradient of [`loss`] with respect to every tensor of `model` to `grads`.
/// The input's own tape (features computed from the upper variable, say) is kept, so the cross
/// products with respect to whatever produced the input are exact too.
pub fn add_loss_gradient<E: Real, Input, M, const C: usize>(
    model: &M,
    input: Input,
    targets: &Tensor<(usize, Const<C>), E, Cpu>,
    weights: SampleWeights<E>,
    grads: &mut WrittenGrad<E>,
) where
    Cpu: Device<E>,
    M: WrittenLayer<E, Input, Output = Activations<E, C>>,
{
    add_loss_gradient_with(&CrossEntropy, model, input, targets, weights, grads)
}

/// [`loss`] with another [`Loss`] (squared error, Huber, binary cross-entropy on logits, ...).
pub fn loss_with<E: Real, Input, M, L, const C: usize>(
    loss: &L,
    model: &M,
    input: Input,
    targets: &Tensor<(usize, Const<C>), E, Cpu>,
    weights: SampleWeights<E>,
) -> Taped<Rank0, E>
where
    Cpu: Device<E>,
    M: WrittenLayer<E, Input, Output = Activations<E, C>>,
    L: Loss<E, C>,
{
    loss.value(logits(model, input), targets, weights)
}

/// [`add_loss_gradient`] with another [`Loss`].
pub fn add_loss_gradient_with<E: Real, Input, M, L, const C: usize>(
    loss: &L,
    model: &M,
    input: Input,
    targets: &Tensor<(usize, Const<C>), E, Cpu>,
    weights: SampleWeights<E>,
    grads: &mut WrittenGrad<E>,
) where
    Cpu: Device<E>,
    M: WrittenLayer<E, Input, Output = Activations<E, C>>,
    L: Loss<E, C>,
{
    let (outputs, saved) = model.forward(input);
    let delta = loss.gradient(outputs, targets, weights);
    let no_input_grad = model.backward(saved, delta, grads, false);
    debug_assert!(no_input_grad.is_none());
}
