//! ANIL (Raghu, Raghu, Bengio, Vinyals 2020): adapts only the head. With the hyper-representation
//! form (x = encoder, y = head), it meta-learns the encoder x and the head's initialization θ₀,
//! differentiating through the K head-adaptation steps with exact second-order products (the
//! encoder's meta-gradient comes from the cross products). The rule is in [`super::meta`].

use dfdx::prelude::{Cpu, Device};

use super::meta::{meta_method, MetaConfig, MetaLearner};
use crate::error::BilevelError;
use crate::optimizer::{BilevelOptimizer, MethodState, StepReport};
use crate::oracles::Oracles;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;

/// ANIL: MAML that also learns the shared body x through the adaptation.
pub struct Anil<X, Y>(pub MetaLearner<X, Y>);

impl<X, Y> Anil<X, Y> {
    /// θ₀ starts at `y`.
    pub fn new<E: Real>(config: MetaConfig, y: &Y) -> Result<Self, BilevelError>
    where
        Cpu: Device<E>,
        Y: Params<E>,
    {
        Ok(Self(MetaLearner::new("anil", config, true, y)?))
    }
}

meta_method!(Anil);
