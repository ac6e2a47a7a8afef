//! What the three tasks share: turning labelled texts into word-vector sequences, and measuring a
//! classifier on a whole text collection.

use std::collections::HashMap;

use bilevel_models::classifier::cpu;
use bilevel_models::layer::WrittenLayer;
use bilevel_models::loss::{accuracy, cross_entropy};
use bilevel_models::sequence::{Activations, Sequence};
use bilevel_models::text::EmbeddedTexts;
use bilevel_optim::real::Real;
use dfdx::prelude::*;

use crate::data::glove::WordVectors;
use crate::data::tokenize::tokenize;
use crate::data::LabelledText;

/// The element type of every run: f32, as the reference implementations. The task builders are
/// generic over the precision so that `bilevel-bench check` can check them in f64.
pub type E = f32;
/// The word vectors' dimension.
pub const EMB: usize = cpu::EMBEDDING;
/// The number of classes.
pub const C: usize = cpu::CLASSES;

/// A classifier the tasks can run: a written layer from a batch of word-vector sequences to
/// logits (`cpu::Classifier`, `cpu::TransformerClassifier`, or any tuple of written layers).
pub trait TaskClassifier<F: Real>:
    WrittenLayer<F, Sequence<F, EMB>, Output = Activations<F, C>>
where
    Cpu: Device<F>,
{
}

impl<F: Real, M> TaskClassifier<F> for M
where
    Cpu: Device<F>,
    M: WrittenLayer<F, Sequence<F, EMB>, Output = Activations<F, C>>,
{
}

/// An encoder the tasks can run: a written layer from a batch of word-vector sequences to
/// `cpu::HIDDEN` features (`cpu::Encoder`, `cpu::Transformer`).
pub trait TaskEncoder<F: Real>:
    WrittenLayer<F, Sequence<F, EMB>, Output = Activations<F, { cpu::HIDDEN }>>
where
    Cpu: Device<F>,
{
}

impl<F: Real, M> TaskEncoder<F> for M
where
    Cpu: Device<F>,
    M: WrittenLayer<F, Sequence<F, EMB>, Output = Activations<F, { cpu::HIDDEN }>>,
{
}

/// Token ids over the words that actually occur, and their vectors (the full GloVe table is
/// 58k words; a task uses a fraction).
#[derive(Default)]
pub struct Vocabulary {
    compact: HashMap<u32, u32>,
    table: Vec<f32>,
}

impl Vocabulary {
    /// The ids of `text`'s tokens that have a vector, the first `max_len` of them.
    pub fn encode(
        &mut self,
        text: &str,
        tweet: bool,
        max_len: usize,
        glove: &WordVectors,
    ) -> Vec<u32> {
        let mut ids = Vec::new();
        for token in tokenize(text, tweet) {
            if ids.len() == max_len {
                break;
            }
            let Some(row) = glove.id(&token) else {
                continue;
            };
            let next = self.compact.len() as u32;
            let id = *self.compact.entry(row).or_insert_with(|| {
                let r = row as usize * glove.dim;
                self.table
                    .extend_from_slice(&glove.vectors[r..r + glove.dim]);
                next
            });
            ids.push(id);
        }
        ids
    }

    /// A collection of `texts` (already encoded) sharing this vocabulary's table.
    pub fn collection(
        &self,
        dim: usize,
        texts: Vec<Vec<u32>>,
        labels: Vec<usize>,
    ) -> anyhow::Result<EmbeddedTexts> {
        // A table with no word at all still needs one row for the zero-vector texts.
        let table = if self.table.is_empty() {
            vec![0.0; dim]
        } else {
            self.table.clone()
        };
        EmbeddedTexts::new(dim, table, texts, labels).map_err(anyhow::Error::msg)
    }
}

/// Encodes `texts` into a collection.
pub fn embed(
    texts: &[LabelledText],
    vocab: &mut Vocabulary,
    glove: &WordVectors,
    tweet: bool,
    max_len: usize,
) -> (Vec<Vec<u32>>, Vec<usize>) {
    texts
        .iter()
        .map(|t| (vocab.encode(&t.text, tweet, max_len, glove), t.label))
        .unzip()
}

/// Mean cross-entropy and accuracy of `model` over every text of `texts`, in batches; `None` for
/// an empty collection, which has neither (never a silent 0).
pub fn measure<F: Real, M, const IN: usize>(
    model: &M,
    texts: &EmbeddedTexts,
    max_len: usize,
) -> Option<(f64, f64)>
where
    Cpu: Device<F>,
    M: WrittenLayer<F, Sequence<F, IN>, Output = Activations<F, C>>,
{
    let batch = 512;
    let (mut loss, mut correct, mut n) = (0.0, 0.0, 0usize);
    let ids: Vec<usize> = (0..texts.len()).collect();
    for chunk in ids.chunks(batch) {
        let b = texts.batch::<F, IN>(chunk, max_len);
        let logits = model.forward(b.sequence()).0;
        let held = logits.retaped::<NoneTape>();
        let batch_loss = cross_entropy(logits, &b.targets::<C>(), None).array().f64();
        loss += batch_loss * chunk.len() as f64;
        correct += accuracy::<F, C>(&held, &b.labels) * chunk.len() as f64;
        n += chunk.len();
    }
    (n > 0).then(|| (loss / n as f64, correct / n as f64))
}
