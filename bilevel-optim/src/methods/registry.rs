//! The methods the library knows by name: the built-in list ([`super::METHODS`], declared in
//! `methods/mod.rs`), and methods registered at run time by their users. A method written outside
//! the library is made known with [`register`], after which TOML configurations,
//! [`MethodConfig::default_for`] and `bilevel-bench` accept its name.

use std::any::TypeId;
use std::sync::{OnceLock, RwLock};

use dfdx::prelude::{Cpu, Device};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::config::MethodConfig;
use super::for_each_builtin;
use super::method::{Built, Method, MethodVisitor, Start};
use crate::error::BilevelError;
use crate::problem::BilevelProblem;
use crate::real::Real;

/// What a [`MethodTable`] keeps per method, made from the method's type when the method is
/// listed or registered: instantiations of generic code for that type, which a caller holding
/// only a method's name then reaches.
pub trait MethodEntry: Copy + Send + Sync + 'static {
    /// The entry of method `M`.
    fn of<M: Method>() -> Self;
}

/// A table of entries by method name: the built-in methods in the order of the documentation,
/// then those registered, in registration order. The library keeps one (reading configurations
/// by name); `bilevel-bench` keeps another (running methods by name).
pub struct MethodTable<T> {
    rows: OnceLock<RwLock<Vec<Row<T>>>>,
}

struct Row<T> {
    name: &'static str,
    type_id: TypeId,
    entry: T,
}

impl<T: MethodEntry> Row<T> {
    fn of<M: Method>() -> Self {
        Self {
            name: M::NAME,
            type_id: TypeId::of::<M>(),
            entry: T::of::<M>(),
        }
    }
}

impl<T: MethodEntry> Default for MethodTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: MethodEntry> MethodTable<T> {
    /// A table that lists the built-in methods when first read.
    pub const fn new() -> Self {
        Self {
            rows: OnceLock::new(),
        }
    }

    fn rows(&self) -> &RwLock<Vec<Row<T>>> {
        self.rows.get_or_init(|| {
            struct Collect<T>(Vec<Row<T>>);
            impl<T: MethodEntry> MethodVisitor for Collect<T> {
                fn visit<M: Method>(&mut self) {
                    self.0.push(Row::of::<M>());
                }
            }
            let mut collect = Collect(Vec::new());
            for_each_builtin(&mut collect);
            RwLock::new(collect.0)
        })
    }

    /// Adds method `M`. Adding the same type twice is harmless; a name already taken by another
    /// method is refused.
    pub fn register<M: Method>(&self) -> Result<(), BilevelError> {
        let mut rows = self.rows().write().unwrap_or_else(|e| e.into_inner());
        match rows.iter().find(|r| r.name == M::NAME) {
            Some(r) if r.type_id == TypeId::of::<M>() => Ok(()),
            Some(_) => Err(BilevelError::InvalidConfig {
                field: "method",
                reason: format!("the name '{}' is taken by another method", M::NAME),
            }),
            None => {
                rows.push(Row::of::<M>());
                Ok(())
            }
        }
    }

    /// The entry of the method called `name`, if it is listed.
    pub fn find(&self, name: &str) -> Option<T> {
        let rows = self.rows().read().unwrap_or_else(|e| e.into_inner());
        rows.iter().find(|r| r.name == name).map(|r| r.entry)
    }

    /// Every listed method's name.
    pub fn names(&self) -> Vec<&'static str> {
        let rows = self.rows().read().unwrap_or_else(|e| e.into_inner());
        rows.iter().map(|r| r.name).collect()
    }
}

/// What the library needs to read a method's configuration by name, without knowing its type.
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) default: fn() -> MethodConfig,
    /// The configuration from its fields (without `method`), or serde's message. The fields
    /// are held as JSON values, which TOML's and JSON's values (`null` included) all map to.
    pub(crate) from_table:
        fn(serde_json::Map<String, serde_json::Value>) -> Result<MethodConfig, String>,
}

impl MethodEntry for Entry {
    fn of<M: Method>() -> Self {
        Self {
            default: || MethodConfig::new(M::default()),
            from_table: |table| {
                serde_json::from_value::<M>(serde_json::Value::Object(table))
                    .map(MethodConfig::new)
                    .map_err(|e| e.to_string())
            },
        }
    }
}

/// The methods the library reads configurations of.
static LIBRARY: MethodTable<Entry> = MethodTable::new();

/// Makes a method written outside the library known by its name, so configurations can select
/// it. Registering the same type twice is harmless; a name already taken by another method is
/// refused.
pub fn register<M: Method>() -> Result<(), BilevelError> {
    LIBRARY.register::<M>()
}

/// Every method's name: the built-in ones in the order of the documentation, then the
/// registered ones.
pub fn names() -> Vec<&'static str> {
    LIBRARY.names()
}

/// The method called `name`, if it is built in or registered.
pub(crate) fn find(name: &str) -> Option<Entry> {
    LIBRARY.find(name)
}

impl MethodConfig {
    /// The default configuration of the method called `name` (built in or
    /// [registered](register)).
    pub fn default_for(name: &str) -> Result<Self, BilevelError> {
        match find(name) {
            Some(entry) => Ok((entry.default)()),
            None => Err(BilevelError::InvalidConfig {
                field: "method",
                reason: format!(
                    "'{name}' is not a method; choose one of {}",
                    names().join(", ")
                ),
            }),
        }
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
        for_each_builtin(&mut build);
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
        let entry = find(&name).ok_or_else(|| {
            D::Error::custom(format!(
                "unknown variant `{name}`, expected one of {}",
                names()
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        (entry.from_table)(table).map_err(D::Error::custom)
    }
}
