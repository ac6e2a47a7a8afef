//! Step-size schedules `a / (t + 1)^b`, the form every method of the library uses.

use serde::{Deserialize, Serialize};

use crate::error::BilevelError;

/// `a / (t + 1)^b` at iteration t (0-based); b = 0 is a constant step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerSchedule {
    /// a: the step at t = 0.
    pub initial: f64,
    /// b: the decay exponent (0 = constant).
    pub exponent: f64,
}

impl PowerSchedule {
    /// The constant step `step`.
    pub fn constant(step: f64) -> Self {
        Self {
            initial: step,
            exponent: 0.0,
        }
    }

    /// The step at iteration t: `initial/(t+1)^exponent`.
    pub fn at(&self, t: u64) -> f64 {
        if self.exponent == 0.0 {
            self.initial
        } else {
            self.initial / ((t + 1) as f64).powf(self.exponent)
        }
    }

    /// Checks a > 0 and 0 ≤ b ≤ 1, naming `field` when not.
    pub fn validate(&self, field: &'static str) -> Result<(), BilevelError> {
        if !(self.initial > 0.0 && self.initial.is_finite()) {
            return Err(BilevelError::InvalidConfig {
                field,
                reason: "must be a positive number".into(),
            });
        }
        if !(0.0..=1.0).contains(&self.exponent) {
            return Err(BilevelError::InvalidConfig {
                field,
                reason: "decay exponent must be in [0, 1]".into(),
            });
        }
        Ok(())
    }
}
