//! Data hyper-cleaning: y = the whole classifier, x = λ, one weight logit per training text.

use std::marker::PhantomData;

use bilevel_optim::params::Params;
use bilevel_optim::problem::{
    fixed_batch, fixed_batch_count, fixed_batch_share, BilevelProblem, SampleRng, ShardedProblem,
    Taped, Tp,
};
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::prelude::*;

use super::{draw, text_shard, BatchConfig};
use crate::classifier::{add_loss_gradient, loss};
use crate::layer::WrittenLayer;
use crate::penalty::{add_l2_gradient, l2_penalty, FixedL2};
use crate::sequence::{Activations, Sequence};
use crate::text::{EmbeddedTexts, TextBatch};

/// `g(λ, y) = (1/|B|) Σ_{i∈B} σ(λ_i) CE_i(y) + (μ/2)‖y‖²`, `f(y) = CE(y; clean validation batch)`.
/// Only the λ entries of the batch's texts get nonzero cross products.
pub struct HyperClean<E, M, const N: usize, const EMB: usize, const C: usize> {
    train: EmbeddedTexts,
    validation: EmbeddedTexts,
    config: BatchConfig,
    mu: f64,
    _types: PhantomData<(E, M)>,
}

impl<E: Real, M, const N: usize, const EMB: usize, const C: usize> HyperClean<E, M, N, EMB, C>
where
    Cpu: Device<E>,
{
    /// `train` holds exactly N texts (one weight each), with their possibly corrupted labels.
    pub fn new(
        train: EmbeddedTexts,
        validation: EmbeddedTexts,
        config: BatchConfig,
        mu: f64,
    ) -> Result<Self, String> {
        if train.len() != N {
            return Err(format!(
                "{} training texts for {N} sample weights",
                train.len()
            ));
        }
        for (name, set) in [("training", &train), ("validation", &validation)] {
            if set.dim() != EMB {
                return Err(format!(
                    "{name} texts have {}-d vectors, the model reads {EMB}-d",
                    set.dim()
                ));
            }
        }
        if validation.is_empty() {
            return Err("the validation set is empty".into());
        }
        Ok(Self {
            train,
            validation,
            config,
            mu,
            _types: PhantomData,
        })
    }

    /// The (noisy) training texts, one weight each.
    pub fn train(&self) -> &EmbeddedTexts {
        &self.train
    }

    /// The clean validation texts.
    pub fn validation(&self) -> &EmbeddedTexts {
        &self.validation
    }

    /// σ(λ_i) of the batch's texts, taped.
    fn weights(x: &Tensor<Rank1<N>, E, Cpu>, batch: &TextBatch<E, EMB>) -> Taped<(usize,), E> {
        x.retaped::<Tp<E>>().gather(batch.id_tensor()).sigmoid()
    }
}

impl<E: Real, M, const N: usize, const EMB: usize, const C: usize> BilevelProblem<E>
    for HyperClean<E, M, N, EMB, C>
where
    Cpu: Device<E>,
    M: Params<E> + WrittenLayer<E, Sequence<E, EMB>, Output = Activations<E, C>>,
{
    type X = Tensor<Rank1<N>, E, Cpu>;
    type Y = M;
    type UpperBatch = TextBatch<E, EMB>;
    type LowerBatch = TextBatch<E, EMB>;

    text_batches!();

    fn upper_loss(&self, _: &Self::X, y: &M, batch: &TextBatch<E, EMB>) -> Taped<Rank0, E> {
        loss(y, batch.sequence(), &batch.targets(), None)
    }

    fn lower_loss(&self, x: &Self::X, y: &M, batch: &TextBatch<E, EMB>) -> Taped<Rank0, E> {
        let weights = Some(Self::weights(x, batch));
        loss(y, batch.sequence(), &batch.targets(), weights) + l2_penalty(&FixedL2(self.mu), y)
    }

    fn write_lower_grad_y(
        &self,
        x: &Self::X,
        y: &M,
        batch: &TextBatch<E, EMB>,
        grads: &mut WrittenGrad<E>,
    ) {
        let weights = Some(Self::weights(x, batch));
        add_loss_gradient(y, batch.sequence(), &batch.targets(), weights, grads);
        add_l2_gradient(&FixedL2(self.mu), y, grads);
    }
}

/// Both losses are means over texts (plus a penalty in y), so shards are shares of the texts.
impl<E: Real, M, const N: usize, const EMB: usize, const C: usize> ShardedProblem<E>
    for HyperClean<E, M, N, EMB, C>
where
    Cpu: Device<E>,
    M: Params<E> + WrittenLayer<E, Sequence<E, EMB>, Output = Activations<E, C>>,
{
    text_shards!();
}
