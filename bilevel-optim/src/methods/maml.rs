//! MAML (Finn, Abbeel, Levine 2017), second order: meta-learns the initialization of the lower
//! variable y (use it with y = the whole model), differentiating through the K adaptation steps
//! with exact Hessian-vector products. x is left as it is. The rule is in [`super::meta`].

use dfdx::prelude::{Cpu, Device};

use super::meta::{meta_method, MetaConfig, MetaLearner};
use crate::error::BilevelError;
use crate::optimizer::{BilevelOptimizer, MethodState, StepReport};
use crate::oracles::Oracles;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;

/// MAML: meta-learns y's initialization; x is left as it is.
pub struct Maml<X, Y>(pub MetaLearner<X, Y>);

impl<X, Y> Maml<X, Y> {
    /// θ₀ starts at `y`.
    pub fn new<E: Real>(config: MetaConfig, y: &Y) -> Result<Self, BilevelError>
    where
        Cpu: Device<E>,
        Y: Params<E>,
    {
        Ok(Self(MetaLearner::new("maml", config, false, y)?))
    }
}

meta_method!(Maml);
