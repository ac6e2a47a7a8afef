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

mod hyper_clean;
mod hyper_opt;
mod hyper_rep;

pub use hyper_clean::HyperClean;
pub use hyper_opt::HyperOpt;
pub use hyper_rep::{HyperRep, Task, TaskBatch};

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
