//! The three lower-level forms of the text tasks as [`bilevel_optim::problem::BilevelProblem`]s.
//!
//! | form | upper x | lower y | g(x, y) |
//! |---|---|---|---|
//! | [`HyperRep`] | the encoder | one head per task | `Σ_{i∈B} CE(head_i(enc(support_i))) + (μ/2)‖y_i‖²` |
//! | [`HyperOpt`] | log L2 coefficients | the classifier | `CE(train batch) + ½ Σ_k exp(x_k)‖y_k‖²` |
//! | [`HyperClean`] | sample-weight logits λ | the classifier | `mean_B σ(λ_i) CE_i + (μ/2)‖y‖²` |
//!
//! Each is generic over the models, so any classifier built from [`crate::layer::WrittenLayer`]s
//! works, and each uses only the core's problem interface.

/// The batch methods of a [`bilevel_optim::problem::BilevelProblem`] over two text
/// collections, `self.train` (the lower level's) and `self.validation` (the upper level's), with
/// `self.config` a [`BatchConfig`]: random batches, fixed batches and their shares. Written once
/// for the forms whose levels are plain text collections.
macro_rules! text_batches {
    () => {
        fn sample_upper(&mut self, rng: &mut SampleRng) -> TextBatch<E, EMB> {
            let ids = draw(rng, self.validation.len(), self.config.upper_batch);
            self.validation.batch(&ids, self.config.max_len)
        }

        fn sample_lower(&mut self, rng: &mut SampleRng) -> TextBatch<E, EMB> {
            let ids = draw(rng, self.train.len(), self.config.lower_batch);
            self.train.batch(&ids, self.config.max_len)
        }

        fn lower_parts(&self) -> Option<usize> {
            Some(fixed_batch_count(self.train.len(), self.config.lower_batch))
        }

        fn lower_part(&mut self, k: usize) -> Option<TextBatch<E, EMB>> {
            let ids: Vec<usize> =
                fixed_batch(self.train.len(), self.config.lower_batch, k)?.collect();
            Some(self.train.batch(&ids, self.config.max_len))
        }

        /// The batches average their texts: a shorter last batch has a smaller share.
        fn lower_part_share(&self, k: usize) -> f64 {
            fixed_batch_share(self.train.len(), self.config.lower_batch, k)
        }

        fn upper_part_share(&self, k: usize) -> f64 {
            fixed_batch_share(self.validation.len(), self.config.upper_batch, k)
        }

        fn upper_parts(&self) -> Option<usize> {
            Some(fixed_batch_count(
                self.validation.len(),
                self.config.upper_batch,
            ))
        }

        fn upper_part(&mut self, k: usize) -> Option<TextBatch<E, EMB>> {
            let ids: Vec<usize> =
                fixed_batch(self.validation.len(), self.config.upper_batch, k)?.collect();
            Some(self.validation.batch(&ids, self.config.max_len))
        }
    };
}

/// The [`bilevel_optim::problem::ShardedProblem`] methods of the forms whose losses are means
/// over texts plus a penalty in y: a shard is a share of the batch's texts.
macro_rules! text_shards {
    () => {
        fn upper_shard(
            &self,
            batch: &TextBatch<E, EMB>,
            k: usize,
            parts: usize,
        ) -> Option<(f64, TextBatch<E, EMB>)> {
            text_shard(&self.validation, batch, self.config.max_len, k, parts)
        }

        fn lower_shard(
            &self,
            batch: &TextBatch<E, EMB>,
            k: usize,
            parts: usize,
        ) -> Option<(f64, TextBatch<E, EMB>)> {
            text_shard(&self.train, batch, self.config.max_len, k, parts)
        }
    };
}

mod hyper_clean;
mod hyper_opt;
mod hyper_rep;

pub use hyper_clean::HyperClean;
pub use hyper_opt::HyperOpt;
pub use hyper_rep::{HyperRep, Task, TaskBatch, TaskDraws};

use bilevel_optim::problem::SampleRng;
use bilevel_optim::real::Real;
use dfdx::prelude::{Cpu, Device};

use crate::text::{EmbeddedTexts, TextBatch};
use serde::{Deserialize, Serialize};

/// How batches are drawn from a text collection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BatchConfig {
    /// Texts per lower-level (training) batch.
    pub lower_batch: usize,
    /// Texts per upper-level (validation) batch.
    pub upper_batch: usize,
    /// Tokens kept per text (T).
    pub max_len: usize,
}

/// Shard `k` of `parts` of `batch`, a batch of `texts`, rebuilt on this thread's device and
/// weighted by its share of the texts: for losses that are a mean over texts plus a penalty.
pub(crate) fn text_shard<E: Real, const EMB: usize>(
    texts: &EmbeddedTexts,
    batch: &TextBatch<E, EMB>,
    max_len: usize,
    k: usize,
    parts: usize,
) -> Option<(f64, TextBatch<E, EMB>)>
where
    Cpu: Device<E>,
{
    let ids = batch.shard_ids(k, parts);
    if ids.is_empty() {
        return None;
    }
    let share = ids.len() as f64 / batch.ids.len() as f64;
    Some((share, texts.batch(&ids, max_len)))
}

/// `k` distinct indices below `n` (all of them, shuffled, when `k ≥ n`).
pub(crate) fn draw(rng: &mut SampleRng, n: usize, k: usize) -> Vec<usize> {
    rand::seq::index::sample(rng, n, k.min(n)).into_vec()
}
