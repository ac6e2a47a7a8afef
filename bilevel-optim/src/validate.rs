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
