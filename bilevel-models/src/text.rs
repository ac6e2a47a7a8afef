//! Texts as sequences of frozen word vectors, and the packed batches the models read.

use std::sync::Arc;

use bilevel_optim::problem::{Batch, Tp};
use bilevel_optim::real::Real;
use dfdx::prelude::*;

use crate::loss::one_hot;
use crate::sequence::{Sequence, SequenceMask};

/// A labelled collection of texts: token ids into a table of frozen word vectors.
#[derive(Debug, Clone)]
pub struct EmbeddedTexts {
    dim: usize,
    /// Row-major `vocabulary × dim` word vectors.
    vectors: Vec<f32>,
    texts: Vec<Vec<u32>>,
    labels: Vec<usize>,
}

impl EmbeddedTexts {
    /// Checks that the table is `dim`-wide, that every token id has a vector and that there is
    /// one label per text. An empty text is allowed: it becomes one zero vector.
    pub fn new(
        dim: usize,
        vectors: Vec<f32>,
        texts: Vec<Vec<u32>>,
        labels: Vec<usize>,
    ) -> Result<Self, String> {
        if dim == 0 || !vectors.len().is_multiple_of(dim) {
            return Err(format!(
                "a word-vector table of {} numbers is not a whole number of {dim}-d vectors",
                vectors.len()
            ));
        }
        if texts.len() != labels.len() {
            return Err(format!("{} texts but {} labels", texts.len(), labels.len()));
        }
        let vocabulary = vectors.len() / dim;
        if let Some((i, _)) = texts
            .iter()
            .enumerate()
            .find(|(_, t)| t.iter().any(|&id| id as usize >= vocabulary))
        {
            return Err(format!(
                "text {i} uses a token id beyond the {vocabulary} word vectors"
            ));
        }
        Ok(Self {
            dim,
            vectors,
            texts,
            labels,
        })
    }

    /// The number of texts.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether there is no text.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The word vectors' dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Text `i`'s token ids (rows of the word-vector table).
    pub fn tokens(&self, i: usize) -> &[u32] {
        &self.texts[i]
    }

    /// Each text's label.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// The texts `ids` (in that order) as a collection of their own.
    pub fn subset(&self, ids: &[usize]) -> Self {
        Self {
            dim: self.dim,
            vectors: self.vectors.clone(),
            texts: ids.iter().map(|&i| self.texts[i].clone()).collect(),
            labels: ids.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Replaces the label of text `i` (label corruption for hyper-cleaning).
    pub fn set_label(&mut self, i: usize, label: usize) {
        self.labels[i] = label;
    }

    /// The texts `ids`, each cut to its first `max_len` tokens, as a packed batch
    /// ([`SequenceMask`]: step t holds the texts longer than t, longest first).
    pub fn batch<E: Real, const EMB: usize>(
        &self,
        ids: &[usize],
        max_len: usize,
    ) -> TextBatch<E, EMB>
    where
        Cpu: Device<E>,
    {
        assert_eq!(
            self.dim, EMB,
            "{}-d word vectors for a {EMB}-d model",
            self.dim
        );
        let lengths: Vec<usize> = ids
            .iter()
            .map(|&i| self.texts[i].len().min(max_len).max(1))
            .collect();
        let mask = SequenceMask::from_lengths(lengths);
        let dev = bilevel_optim::real::device();
        let steps = (0..mask.steps())
            .map(|t| {
                let rows = mask.active(t);
                let mut data = vec![E::zero(); rows * EMB];
                for (packed, &row) in mask.order()[..rows].iter().enumerate() {
                    // An empty text reads one zero vector.
                    if let Some(&token) = self.texts[ids[row]].get(t) {
                        let v = &self.vectors[token as usize * EMB..(token as usize + 1) * EMB];
                        for (d, &x) in data[packed * EMB..(packed + 1) * EMB].iter_mut().zip(v) {
                            *d = E::of(x as f64);
                        }
                    }
                }
                dev.tensor_from_vec(data, (rows, Const::<EMB>))
            })
            .collect();
        TextBatch {
            steps,
            mask: Arc::new(mask),
            labels: ids.iter().map(|&i| self.labels[i]).collect(),
            ids: ids.to_vec(),
        }
    }
}

/// A packed batch of embedded texts with their labels and their indices in the collection
/// (labels and indices in the caller's order, as the models' outputs are).
#[derive(Debug, Clone)]
pub struct TextBatch<E: Real, const EMB: usize>
where
    Cpu: Device<E>,
{
    /// One (`mask.active(t)`, EMB) tensor per time step, rows in packed order.
    pub steps: Vec<Tensor<(usize, Const<EMB>), E, Cpu>>,
    /// The packing of the batch.
    pub mask: Arc<SequenceMask>,
    /// The labels, in the caller's order.
    pub labels: Vec<usize>,
    /// Index of each text in its collection (which sample weight applies, for instance).
    pub ids: Vec<usize>,
}

impl<E: Real, const EMB: usize> TextBatch<E, EMB>
where
    Cpu: Device<E>,
{
    /// The batch as a model input (constants with empty tapes).
    pub fn sequence(&self) -> Sequence<E, EMB> {
        Sequence {
            steps: self.steps.iter().map(|s| s.retaped::<Tp<E>>()).collect(),
            mask: Arc::clone(&self.mask),
        }
    }

    /// One-hot targets over `C` classes.
    pub fn targets<const C: usize>(&self) -> Tensor<(usize, Const<C>), E, Cpu> {
        one_hot(&self.labels)
    }

    /// The collection indices of shard `k` of `parts` (for [`bilevel_optim::problem::ShardedProblem`]):
    /// every `parts`-th text in packed order, so that shards hold texts of similar lengths and
    /// cost about the same. Sizes differ by at most one.
    pub fn shard_ids(&self, k: usize, parts: usize) -> Vec<usize> {
        self.mask
            .order()
            .iter()
            .skip(k)
            .step_by(parts)
            .map(|&row| self.ids[row])
            .collect()
    }

    /// The sample indices as an index tensor (to gather per-sample weights).
    pub fn id_tensor(&self) -> Tensor<(usize,), usize, Cpu> {
        bilevel_optim::real::device().tensor_from_vec(self.ids.clone(), (self.ids.len(),))
    }
}

impl<E: Real, const EMB: usize> Batch for TextBatch<E, EMB>
where
    Cpu: Device<E>,
{
    fn size(&self) -> usize {
        self.labels.len()
    }
}
