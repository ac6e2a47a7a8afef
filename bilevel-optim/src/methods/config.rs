//! [`MethodConfig`]: any method's configuration, held without its type, as configuration files,
//! `compare` and `tune` handle methods.

use std::any::Any;
use std::fmt;

use dfdx::prelude::{Cpu, Device};
use serde::{Serialize, Serializer};

use super::method::{Built, Method, Start};
use crate::error::BilevelError;
use crate::problem::BilevelProblem;
use crate::real::Real;

/// A method and its configuration; in TOML, `method = "soba"` followed by the method's fields.
/// Made from any [`Method`] (`MethodConfig::from(SobaConfig { .. })`) or by name
/// ([`MethodConfig::default_for`], in [`super::registry`] with the other look-ups by name).
pub struct MethodConfig(Box<dyn AnyMethod>);

/// [`Method`] without its type parameters.
trait AnyMethod: erased_serde::Serialize + fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn validate(&self) -> Result<(), BilevelError>;
    fn level_steps(&self) -> (f64, f64);
    fn set_level_steps(&mut self, lower: f64, upper: f64);
    fn halve_step_sizes(&mut self);
    fn boxed_clone(&self) -> Box<dyn AnyMethod>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn equals(&self, other: &dyn AnyMethod) -> bool;
}

erased_serde::serialize_trait_object!(AnyMethod);

impl<M: Method> AnyMethod for M {
    fn name(&self) -> &'static str {
        M::NAME
    }
    fn validate(&self) -> Result<(), BilevelError> {
        Method::validate(self)
    }
    fn level_steps(&self) -> (f64, f64) {
        Method::level_steps(self)
    }
    fn set_level_steps(&mut self, lower: f64, upper: f64) {
        Method::set_level_steps(self, lower, upper)
    }
    fn halve_step_sizes(&mut self) {
        Method::halve_step_sizes(self)
    }
    fn boxed_clone(&self) -> Box<dyn AnyMethod> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn equals(&self, other: &dyn AnyMethod) -> bool {
        other.as_any().downcast_ref::<M>() == Some(self)
    }
}

impl MethodConfig {
    /// The configuration `config` of method `M`.
    pub fn new<M: Method>(config: M) -> Self {
        Self(Box::new(config))
    }

    /// The configuration as method `M`'s, if it is one.
    pub fn get<M: Method>(&self) -> Option<&M> {
        self.0.as_any().downcast_ref()
    }

    /// The configuration as method `M`'s, mutably, if it is one.
    pub fn get_mut<M: Method>(&mut self) -> Option<&mut M> {
        self.0.as_any_mut().downcast_mut()
    }

    /// The method's name.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// Checks every value of the configuration, naming the first one out of range.
    pub fn validate(&self) -> Result<(), BilevelError> {
        self.0.validate()
    }

    /// The method's (lower, upper) step sizes ([`Method::level_steps`]).
    pub fn level_steps(&self) -> (f64, f64) {
        self.0.level_steps()
    }

    /// Sets the pair [`MethodConfig::level_steps`] reads; schedules keep their decay exponents.
    pub fn set_level_steps(&mut self, lower: f64, upper: f64) {
        self.0.set_level_steps(lower, upper)
    }

    /// Halves every step size ([`Method::halve_step_sizes`]).
    pub fn halve_step_sizes(&mut self) {
        self.0.halve_step_sizes()
    }

    /// The optimizer of method `M`, whose configuration this must be.
    pub fn build_as<M: Method, E: Real, P: BilevelProblem<E> + 'static>(
        &self,
        at: Start<'_, E, P>,
    ) -> Built<E, P>
    where
        Cpu: Device<E>,
    {
        match self.get::<M>() {
            Some(config) => config.build(at),
            None => Err(BilevelError::InvalidConfig {
                field: "method",
                reason: format!("'{}' is not '{}'", self.name(), M::NAME),
            }),
        }
    }
}

impl<M: Method> From<M> for MethodConfig {
    fn from(config: M) -> Self {
        Self::new(config)
    }
}

impl Clone for MethodConfig {
    fn clone(&self) -> Self {
        Self(self.0.boxed_clone())
    }
}

impl PartialEq for MethodConfig {
    fn eq(&self, other: &Self) -> bool {
        self.0.equals(&*other.0)
    }
}

impl fmt::Debug for MethodConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for MethodConfig {
    /// `method = "<name>"` followed by the method's fields.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Tagged<'a> {
            method: &'static str,
            #[serde(flatten)]
            config: &'a dyn AnyMethod,
        }
        Tagged {
            method: self.name(),
            config: &*self.0,
        }
        .serialize(serializer)
    }
}
