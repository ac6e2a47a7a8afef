//! What a method saves to survive a restart, and the macro that writes its saving and loading
//! from one list of its fields.
//!
//! A method written as a [`Rule`] declares its memory once, inside that impl:
//!
//! ```text
//! saved_memory!(vector z, vector m);
//! ```
//!
//! which writes `save` (every field under its name) and `load` (every field read and checked,
//! and only then all of them assigned, so a state that does not fit leaves the method as it
//! was); its [`RuleOptimizer`] adds the counter `t` and the method's name. A
//! [`BilevelOptimizer`] written by hand uses `saved_state!(NAME; counter t, vector z)`, which
//! writes `name`, `state` and `load_state` the same way. A field is named by its path (`memory.hz`, saved
//! under `"memory.hz"`), or given a key of its own with `as "key"`. The kinds:
//! - `counter`: a `u64` iteration counter, saved as a scalar;
//! - `scalar`: an `f64`;
//! - `vector`: any parameter collection ([`Params`]), flattened;
//! - `table`: a [`SagaMemory`], one vector per fixed batch and the weighted sum.
//!
//! [`BilevelOptimizer`]: crate::optimizer::BilevelOptimizer
//! [`Rule`]: crate::methods::rule::Rule
//! [`RuleOptimizer`]: crate::methods::rule::RuleOptimizer
//! [`SagaMemory`]: crate::variance::SagaMemory

use std::collections::BTreeMap;

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use crate::error::BilevelError;
use crate::params::Params;
use crate::real::Real;

/// A method's savable state: named flat vectors and scalars, with the method's name so a state
/// is never loaded into another method.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodState {
    /// The name of the method that saved the state.
    pub method: String,
    /// Parameter-shaped memories (z, momenta, tables), flattened.
    pub vectors: BTreeMap<String, Vec<f64>>,
    /// Counters and scalar memories (t, λ, ...).
    pub scalars: BTreeMap<String, f64>,
}

impl MethodState {
    /// An empty state of `method`.
    pub fn new(method: &str) -> Self {
        Self {
            method: method.to_string(),
            ..Default::default()
        }
    }

    /// Records a parameter collection as a flat `f64` vector (exact for `f32` and `f64`).
    pub fn put<E: Real, T: Params<E>>(&mut self, name: &str, value: &T)
    where
        Cpu: Device<E>,
    {
        self.vectors.insert(
            name.into(),
            value.to_flat().into_iter().map(Real::f64).collect(),
        );
    }

    /// Records a scalar.
    pub fn put_scalar(&mut self, name: &str, value: f64) {
        self.scalars.insert(name.into(), value);
    }

    /// Checks the method name before anything is read.
    pub fn expect_method(&self, method: &str) -> Result<(), BilevelError> {
        if self.method == method {
            Ok(())
        } else {
            Err(BilevelError::StateMismatch(format!(
                "the state was saved by method '{}', not '{}'",
                self.method, method
            )))
        }
    }

    /// Loads the vector `name` into `into`, checking its length.
    pub fn get<E: Real, T: Params<E>>(&self, name: &str, into: &mut T) -> Result<(), BilevelError>
    where
        Cpu: Device<E>,
    {
        let v = self
            .vectors
            .get(name)
            .ok_or_else(|| BilevelError::StateMismatch(format!("vector '{name}' is missing")))?;
        let flat: Vec<E> = v.iter().map(|&a| E::of(a)).collect();
        into.set_flat(&flat)
            .map_err(|e| BilevelError::StateMismatch(format!("vector '{name}': {e}")))
    }

    /// The scalar `name`, or an error naming it when it is missing.
    pub fn scalar(&self, name: &str) -> Result<f64, BilevelError> {
        self.scalars
            .get(name)
            .copied()
            .ok_or_else(|| BilevelError::StateMismatch(format!("scalar '{name}' is missing")))
    }
}

/// How each kind of field of [`crate::saved_state!`] is saved and read back: `save(field, key, state)`
/// and `load(field, key, state)`, which returns the loaded value without touching the field.
pub mod kinds {
    /// A `u64` counter, saved as a scalar.
    pub mod counter {
        use crate::error::BilevelError;
        use crate::state::MethodState;

        /// Saves `value` under `key`.
        pub fn save(value: &u64, key: &str, state: &mut MethodState) {
            state.put_scalar(key, *value as f64);
        }

        /// The counter saved under `key`.
        pub fn load(_: &u64, key: &str, state: &MethodState) -> Result<u64, BilevelError> {
            Ok(state.scalar(key)? as u64)
        }
    }

    /// An `f64`.
    pub mod scalar {
        use crate::error::BilevelError;
        use crate::state::MethodState;

        /// Saves `value` under `key`.
        pub fn save(value: &f64, key: &str, state: &mut MethodState) {
            state.put_scalar(key, *value);
        }

        /// The scalar saved under `key`.
        pub fn load(_: &f64, key: &str, state: &MethodState) -> Result<f64, BilevelError> {
            state.scalar(key)
        }
    }

    /// A parameter collection, flattened.
    pub mod vector {
        use dfdx::prelude::{Cpu, Device};

        use crate::error::BilevelError;
        use crate::params::Params;
        use crate::real::Real;
        use crate::state::MethodState;

        /// Saves `value` under `key`.
        pub fn save<E: Real, T: Params<E>>(value: &T, key: &str, state: &mut MethodState)
        where
            Cpu: Device<E>,
        {
            state.put(key, value);
        }

        /// The vector saved under `key`, shaped like `like`.
        pub fn load<E: Real, T: Params<E>>(
            like: &T,
            key: &str,
            state: &MethodState,
        ) -> Result<T, BilevelError>
        where
            Cpu: Device<E>,
        {
            let mut value = like.clone();
            state.get(key, &mut value)?;
            Ok(value)
        }
    }

    /// A SAGA table: its memories as `{key}.{k}` and its weighted sum as `{key}.weighted_sum`
    /// (the key differs from the unweighted `{key}.sum` of earlier checkpoints, which are
    /// refused).
    pub mod table {
        use dfdx::prelude::{Cpu, Device};

        use crate::error::BilevelError;
        use crate::params::Params;
        use crate::real::Real;
        use crate::state::MethodState;
        use crate::variance::SagaMemory;

        /// Saves `value` under `key`.
        pub fn save<E: Real, T: Params<E>>(
            value: &SagaMemory<T>,
            key: &str,
            state: &mut MethodState,
        ) where
            Cpu: Device<E>,
        {
            for (k, m) in value.memories().iter().enumerate() {
                state.put(&format!("{key}.{k}"), m);
            }
            state.put(&format!("{key}.weighted_sum"), value.weighted_sum());
        }

        /// The table saved under `key`, shaped like `like`.
        pub fn load<E: Real, T: Params<E>>(
            like: &SagaMemory<T>,
            key: &str,
            state: &MethodState,
        ) -> Result<SagaMemory<T>, BilevelError>
        where
            Cpu: Device<E>,
        {
            let mut table = like.memories().to_vec();
            for (k, m) in table.iter_mut().enumerate() {
                state.get(&format!("{key}.{k}"), m)?;
            }
            let mut sum = like.weighted_sum().clone();
            state.get(&format!("{key}.weighted_sum"), &mut sum)?;
            Ok(like.with_memories(table, sum))
        }
    }
}

/// Writes `name`, `state` and `load_state` of a [`BilevelOptimizer`] impl from the method's name
/// and one list of its fields: `saved_state!(NAME; counter t, vector z, table memory.hz, vector moments.first as
/// "m")` (the module documentation lists the kinds). Loading checks the method name, reads every
/// field, and assigns them only when all fit. A method written as a
/// [`Rule`](crate::methods::rule::Rule) declares its memory with [`crate::saved_memory!`]
/// instead.
///
/// [`BilevelOptimizer`]: crate::optimizer::BilevelOptimizer
#[macro_export]
macro_rules! saved_state {
    ($name:expr; $($kind:ident $field:tt $(. $sub:tt)* $(as $key:literal)?),+ $(,)?) => {
        fn name(&self) -> &'static str {
            $name
        }

        fn state(&self) -> $crate::state::MethodState {
            let mut state = $crate::state::MethodState::new($name);
            $crate::saved_memory!(@save self, &mut state; $($kind $field $(. $sub)* $(as $key)?),+);
            state
        }

        fn load_state(
            &mut self,
            state: &$crate::state::MethodState,
        ) -> ::std::result::Result<(), $crate::error::BilevelError> {
            state.expect_method($name)?;
            $crate::saved_memory!(@load self, state; $($kind $field $(. $sub)* $(as $key)?),+);
            Ok(())
        }
    };
}

/// Writes `save` and `load` of a [`Rule`](crate::methods::rule::Rule) from one list of the
/// memory's fields, as [`crate::saved_state!`] does (the same kinds and keys; the counter `t`
/// and the method's name are the [`RuleOptimizer`](crate::methods::rule::RuleOptimizer)'s):
/// `saved_memory!(vector z, vector m)`, or `saved_memory!()` for a rule with no memory.
#[macro_export]
macro_rules! saved_memory {
    (@save $self:ident, $state:expr; $($kind:ident $field:tt $(. $sub:tt)* $(as $key:literal)?),+) => {
        $(
            $crate::state::kinds::$kind::save(
                &$self.$field $(.$sub)*,
                $crate::saved_memory!(@key $field $(. $sub)* $(as $key)?),
                $state,
            );
        )+
    };
    (@load $self:ident, $state:ident; $($kind:ident $field:tt $(. $sub:tt)* $(as $key:literal)?),+) => {
        let loaded = ($(
            $crate::state::kinds::$kind::load(
                &$self.$field $(.$sub)*,
                $crate::saved_memory!(@key $field $(. $sub)* $(as $key)?),
                $state,
            )?,
        )+);
        ($($self.$field $(.$sub)*,)+) = loaded;
    };
    (@key $field:tt $(. $sub:tt)* as $key:literal) => {
        $key
    };
    (@key $field:tt $(. $sub:tt)*) => {
        concat!(stringify!($field) $(, ".", stringify!($sub))*)
    };
    () => {
        fn save(&self, _: &mut $crate::state::MethodState) {}

        fn load(
            &mut self,
            _: &$crate::state::MethodState,
        ) -> ::std::result::Result<(), $crate::error::BilevelError> {
            Ok(())
        }
    };
    ($($kind:ident $field:tt $(. $sub:tt)* $(as $key:literal)?),+ $(,)?) => {
        fn save(&self, state: &mut $crate::state::MethodState) {
            $crate::saved_memory!(@save self, state; $($kind $field $(. $sub)* $(as $key)?),+);
        }

        fn load(
            &mut self,
            state: &$crate::state::MethodState,
        ) -> ::std::result::Result<(), $crate::error::BilevelError> {
            $crate::saved_memory!(@load self, state; $($kind $field $(. $sub)* $(as $key)?),+);
            Ok(())
        }
    };
}
