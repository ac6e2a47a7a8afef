//! Range checks for configuration values, each naming the field it rejects.

use crate::error::BilevelError;

fn bad(field: &'static str, reason: &str) -> Result<(), BilevelError> {
    Err(BilevelError::InvalidConfig {
        field,
        reason: reason.into(),
    })
}

/// A finite number > 0.
pub fn positive(field: &'static str, v: f64) -> Result<(), BilevelError> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        bad(field, "must be a positive number")
    }
}

/// A finite number ≥ 0.
pub fn non_negative(field: &'static str, v: f64) -> Result<(), BilevelError> {
    if v >= 0.0 && v.is_finite() {
        Ok(())
    } else {
        bad(field, "must be a number ≥ 0")
    }
}

/// A momentum-like weight in [0, 1).
pub fn momentum(field: &'static str, v: f64) -> Result<(), BilevelError> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        bad(field, "must be in [0, 1)")
    }
}

/// An averaging weight in (0, 1].
pub fn weight(field: &'static str, v: f64) -> Result<(), BilevelError> {
    if v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        bad(field, "must be in (0, 1]")
    }
}

/// A count ≥ 1.
pub fn at_least_one(field: &'static str, n: usize) -> Result<(), BilevelError> {
    if n >= 1 {
        Ok(())
    } else {
        bad(field, "must be at least 1")
    }
}

/// Writes [`Method::validate`](crate::methods::method::Method::validate) from one list of
/// `field: check` pairs, checked in order and named by the field: `check` is a function of this
/// module (`positive`, `momentum`, ...), `valid` for a field that checks itself (a schedule, a
/// Neumann series), or `optional <check>` for an `Option` checked when given:
/// `checks!(eta: valid, beta: momentum, gamma: positive, z_radius: optional positive)`.
#[macro_export]
macro_rules! checks {
    ($($field:ident: $($check:ident)+),+ $(,)?) => {
        fn validate(&self) -> ::core::result::Result<(), $crate::error::BilevelError> {
            $($crate::checks!(@check self, $field, $($check)+);)+
            Ok(())
        }
    };
    (@check $config:ident, $field:ident, valid) => {
        $config.$field.validate(stringify!($field))?
    };
    (@check $config:ident, $field:ident, optional $check:ident) => {
        if let Some(value) = $config.$field {
            $crate::validate::$check(stringify!($field), value)?
        }
    };
    (@check $config:ident, $field:ident, $check:ident) => {
        $crate::validate::$check(stringify!($field), $config.$field)?
    };
}
