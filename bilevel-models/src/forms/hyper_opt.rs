//! Hyperparameter optimization: y = the whole classifier, x = its L2 log-coefficients.

use std::marker::PhantomData;

use bilevel_optim::params::Params;
use bilevel_optim::problem::{
    fixed_batch, fixed_batch_count, fixed_batch_share, BilevelProblem, SampleRng, ShardedProblem,
    Taped,
};
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::prelude::{Cpu, Device, Rank0};

use super::{draw, text_shard, BatchConfig};
use crate::classifier::{add_loss_gradient, loss};
use crate::layer::WrittenLayer;
use crate::penalty::{add_l2_gradient, check_tensor_count, l2_penalty, L2Coefficients};
use crate::sequence::{Activations, Sequence};
use crate::text::{EmbeddedTexts, TextBatch};

/// `g(x, y) = CE(y; train batch) + ½ Σ_k exp(x_k)‖y_k‖²`, `f(y) = CE(y; validation batch)`.
/// `X` is `Tensor<Rank1<K>>` (one coefficient per tensor of y) or `Tensor<Rank0>` (one shared).
pub struct HyperOpt<E, M, X, const EMB: usize, const C: usize> {
    train: EmbeddedTexts,
    validation: EmbeddedTexts,
    config: BatchConfig,
    _types: PhantomData<(E, M, X)>,
}

impl<E: Real, M, X, const EMB: usize, const C: usize> HyperOpt<E, M, X, EMB, C>
where
    Cpu: Device<E>,
    M: Params<E>,
    X: L2Coefficients<E>,
{
    /// Checks that `x` has one coefficient per trainable tensor of `model` and that both
    /// collections have `EMB`-d vectors and texts.
    pub fn new(
        train: EmbeddedTexts,
        validation: EmbeddedTexts,
        config: BatchConfig,
        model: &M,
        x: &X,
    ) -> Result<Self, String> {
        check_tensor_count(x, model)?;
        for (name, set) in [("training", &train), ("validation", &validation)] {
            if set.dim() != EMB {
                return Err(format!(
                    "{name} texts have {}-d vectors, the model reads {EMB}-d",
                    set.dim()
                ));
            }
            if set.is_empty() {
                return Err(format!("the {name} set is empty"));
            }
        }
        Ok(Self {
            train,
            validation,
            config,
            _types: PhantomData,
        })
    }

    /// The training texts (the lower level).
    pub fn train(&self) -> &EmbeddedTexts {
        &self.train
    }

    /// The validation texts (the upper level).
    pub fn validation(&self) -> &EmbeddedTexts {
        &self.validation
    }
}

impl<E: Real, M, X, const EMB: usize, const C: usize> BilevelProblem<E>
    for HyperOpt<E, M, X, EMB, C>
where
    Cpu: Device<E>,
    M: Params<E> + WrittenLayer<E, Sequence<E, EMB>, Output = Activations<E, C>>,
    X: Params<E> + L2Coefficients<E>,
{
    type X = X;
    type Y = M;
    type UpperBatch = TextBatch<E, EMB>;
    type LowerBatch = TextBatch<E, EMB>;

    text_batches!();

    fn upper_loss(&self, _: &X, y: &M, batch: &TextBatch<E, EMB>) -> Taped<Rank0, E> {
        loss(y, batch.sequence(), &batch.targets(), None)
    }

    fn lower_loss(&self, x: &X, y: &M, batch: &TextBatch<E, EMB>) -> Taped<Rank0, E> {
        loss(y, batch.sequence(), &batch.targets(), None) + l2_penalty(x, y)
    }

    fn write_lower_grad_y(
        &self,
        x: &X,
        y: &M,
        batch: &TextBatch<E, EMB>,
        grads: &mut WrittenGrad<E>,
    ) {
        add_loss_gradient(y, batch.sequence(), &batch.targets(), None, grads);
        add_l2_gradient(x, y, grads);
    }
}

/// Both losses are means over texts (plus a penalty in y), so shards are shares of the texts.
impl<E: Real, M, X, const EMB: usize, const C: usize> ShardedProblem<E>
    for HyperOpt<E, M, X, EMB, C>
where
    Cpu: Device<E>,
    M: Params<E> + WrittenLayer<E, Sequence<E, EMB>, Output = Activations<E, C>>,
    X: Params<E> + L2Coefficients<E>,
{
    text_shards!();
}
