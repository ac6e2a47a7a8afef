//! ANIL (Raghu, Raghu, Bengio, Vinyals 2020): adapts only the head. With the hyper-representation
//! form (x = encoder, y = head), it meta-learns the encoder x and the head's initialization θ₀,
//! differentiating through the K head-adaptation steps with exact second-order products (the
//! encoder's meta-gradient comes from the cross products). The rule is in [`super::meta`].

use super::meta::{Meta, MetaLearner, MetaVariant};
use super::rule::RuleOptimizer;

/// ANIL's place among the meta-learners.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AnilVariant;

impl MetaVariant for AnilVariant {
    const NAME: &'static str = "anil";
    const LEARNS_UPPER: bool = true;
}

/// ANIL's knobs (`AnilConfig::from(MetaConfig { .. })`).
pub type AnilConfig = Meta<AnilVariant>;

/// ANIL: MAML that also learns the shared body x through the adaptation.
pub type Anil<Y> = RuleOptimizer<AnilConfig, MetaLearner<Y, AnilVariant>>;
