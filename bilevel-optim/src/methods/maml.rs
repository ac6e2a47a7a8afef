//! MAML (Finn, Abbeel, Levine 2017), second order: meta-learns the initialization of the lower
//! variable y (use it with y = the whole model), differentiating through the K adaptation steps
//! with exact Hessian-vector products. x is left as it is. The rule is in [`super::meta`].

use super::meta::{Meta, MetaLearner, MetaVariant};
use super::rule::RuleOptimizer;

/// MAML's place among the meta-learners.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MamlVariant;

impl MetaVariant for MamlVariant {
    const NAME: &'static str = "maml";
    const LEARNS_UPPER: bool = false;
}

/// MAML's knobs (`MamlConfig::from(MetaConfig { .. })`).
pub type MamlConfig = Meta<MamlVariant>;

/// MAML: meta-learns y's initialization; x is left as it is.
pub type Maml<Y> = RuleOptimizer<MamlConfig, MetaLearner<Y, MamlVariant>>;
