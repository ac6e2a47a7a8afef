//! The lab's MAML for hyper-representation, at the paper level: every task adapts a head from
//! the same fixed initialization (the y the method starts with, never meta-learned) by K SGD
//! steps on its support set, and only the encoder x is meta-learned, with the exact derivative of
//! the query loss through the adaptation (second order). Paper-level MAML (`maml`) meta-learns
//! y's initialization instead and leaves x, so on hyper-rep, whose test fits fresh heads on x
//! alone, it measures nothing; ANIL (`anil`) meta-learns both. The lab's code takes this
//! variant's meta-gradient first-order and adds the inner steps' `Σ_k ∇_x G(x, y_k)` (its
//! encoder gradients are never zeroed): neither is reproduced (docs/algorithms.md). The rule is
//! in [`super::meta`].

use super::meta::{Meta, MetaLearner, MetaVariant};
use super::rule::RuleOptimizer;

/// The encoder-learning MAML's place among the meta-learners.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MamlEncoderVariant;

impl MetaVariant for MamlEncoderVariant {
    const NAME: &'static str = "maml-encoder";
    const LEARNS_UPPER: bool = true;
    const LEARNS_INIT: bool = false;
}

/// The encoder-learning MAML's knobs (`MamlEncoderConfig::from(MetaConfig { .. })`).
pub type MamlEncoderConfig = Meta<MamlEncoderVariant>;

/// The encoder-learning MAML: meta-learns x through adaptations from a fixed head.
pub type MamlEncoder<Y> = RuleOptimizer<MamlEncoderConfig, MetaLearner<Y, MamlEncoderVariant>>;
