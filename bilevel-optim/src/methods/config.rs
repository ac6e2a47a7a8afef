//! [`MethodConfig`]: any method's configuration, held without its type, as configuration files,
//! `compare` and `tune` handle methods.

use std::any::Any;
use std::fmt;

use dfdx::prelude::{Cpu, Device};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::method::{Built, Method, MethodVisitor, Start};
use super::registry;
use crate::error::BilevelError;
use crate::problem::BilevelProblem;
use crate::real::Real;

/// A method and its configuration; in TOML, `method = "soba"` followed by the method's fields.
/// Made from any [`Method`] (`MethodConfig::from(SobaConfig { .. })`) or by name
/// ([`MethodConfig::default_for`]).
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

    /// The default configuration of the method called `name` (built in or
    /// [registered](registry::register)).
    pub fn default_for(name: &str) -> Result<Self, BilevelError> {
        match registry::find(name) {
            Some(entry) => Ok((entry.default)()),
            None => Err(BilevelError::InvalidConfig {
                field: "method",
                reason: format!(
                    "'{name}' is not a method; choose one of {}",
                    registry::names().join(", ")
                ),
            }),
        }
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

    /// The optimizer of a built-in method, starting at `x` and `y` on `problem`. A method
    /// registered from outside the library is built from its own type ([`Method::build`]);
    /// `bilevel-bench` keeps a builder for each method it registers.
    pub fn build<E: Real, P: BilevelProblem<E> + 'static>(
        &self,
        x: &P::X,
        y: &P::Y,
        problem: &P,
    ) -> Built<E, P>
    where
        Cpu: Device<E>,
    {
        struct Build<'a, E: Real, P: BilevelProblem<E>>
        where
            Cpu: Device<E>,
        {
            config: &'a MethodConfig,
            start: Start<'a, E, P>,
            built: Option<Built<E, P>>,
        }
        impl<E: Real, P: BilevelProblem<E> + 'static> MethodVisitor for Build<'_, E, P>
        where
            Cpu: Device<E>,
        {
            fn visit<M: Method>(&mut self) {
                if let Some(config) = self.config.get::<M>() {
                    self.built = Some(config.build(self.start));
                }
            }
        }
        let mut build = Build {
            config: self,
            start: Start { x, y, problem },
            built: None,
        };
        registry::for_each_builtin(&mut build);
        build.built.unwrap_or_else(|| {
            Err(BilevelError::InvalidConfig {
                field: "method",
                reason: format!(
                    "'{}' is not built in: build it from its configuration type (Method::build)",
                    self.name()
                ),
            })
        })
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

impl<'de> Deserialize<'de> for MethodConfig {
    /// Reads `method = "<name>"`, then the named method's fields.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut table = serde_json::Map::deserialize(deserializer)?;
        let name = match table.remove("method") {
            Some(serde_json::Value::String(name)) => name,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`method` must be a method's name, not {other}"
                )))
            }
            None => return Err(D::Error::missing_field("method")),
        };
        let entry = registry::find(&name).ok_or_else(|| {
            D::Error::custom(format!(
                "unknown variant `{name}`, expected one of {}",
                registry::names()
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        (entry.from_table)(table).map_err(D::Error::custom)
    }
}
