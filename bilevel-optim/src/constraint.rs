//! Convex sets for the upper variable x: a box or a Euclidean ball, per tensor.
//!
//! A problem declares its constraint by projecting in [`crate::problem::BilevelProblem::project_x`]
//! (e.g. `Constraint::Box { lower: -6.0, upper: 3.0 }.project(&mut x.0)` for log-coefficients that
//! must not drift until the lower step becomes unstable); every method applies it right after its
//! x step, which makes each rule its projected variant `x ← Π(x − step)`.

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use crate::error::BilevelError;
use crate::params::Params;
use crate::real::Real;

/// A closed convex set for a tensor (or a collection of tensors, taken as one vector).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Constraint {
    /// Every entry in `[lower, upper]`.
    Box {
        /// The smallest value an entry may take.
        lower: f64,
        /// The largest value an entry may take.
        upper: f64,
    },
    /// Euclidean norm at most `radius` (the ball around 0).
    Ball {
        /// The largest Euclidean norm.
        radius: f64,
    },
}

impl Constraint {
    /// Fails, naming the field, when the set is empty or not a number.
    pub fn validate(&self) -> Result<(), BilevelError> {
        let bad = |field, reason: &str| {
            Err(BilevelError::InvalidConfig {
                field,
                reason: reason.into(),
            })
        };
        match *self {
            Self::Box { lower, upper } => {
                if lower.is_nan() || upper.is_nan() {
                    bad("lower/upper", "must be numbers")
                } else if lower > upper {
                    bad("lower", "must not exceed upper")
                } else {
                    Ok(())
                }
            }
            Self::Ball { radius } => {
                if radius >= 0.0 && radius.is_finite() {
                    Ok(())
                } else {
                    bad("radius", "must be a finite number ≥ 0")
                }
            }
        }
    }

    /// Projects `t` onto the set (the nearest point in Euclidean distance). Returns whether `t`
    /// moved.
    pub fn project<E: Real, T: Params<E>>(&self, t: &mut T) -> bool
    where
        Cpu: Device<E>,
    {
        match *self {
            Self::Box { lower, upper } => {
                let (lo, hi) = (E::of(lower), E::of(upper));
                let mut moved = false;
                t.map_in_place(|a| {
                    // NaN stays NaN, so the method's non-finite check still sees it.
                    for v in a.iter_mut().filter(|v| !v.is_nan()) {
                        let c = v.max(lo).min(hi);
                        moved |= c != *v;
                        *v = c;
                    }
                });
                moved
            }
            Self::Ball { radius } => t.project_ball(E::of(radius)),
        }
    }

    /// Whether `t` lies in the set, up to `slack` (relative to the set's scale for a ball).
    pub fn contains<E: Real, T: Params<E>>(&self, t: &T, slack: f64) -> bool
    where
        Cpu: Device<E>,
    {
        match *self {
            Self::Box { lower, upper } => t
                .to_flat()
                .iter()
                .all(|v| v.f64() >= lower - slack && v.f64() <= upper + slack),
            Self::Ball { radius } => t.norm().f64() <= radius * (1.0 + slack) + slack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::{Tensor, TensorFrom};

    #[test]
    fn box_and_ball_project_to_the_nearest_point_and_keep_nan() {
        let dev = crate::real::device();
        let mut t: Tensor<(dfdx::prelude::Const<4>,), f64, Cpu> =
            dev.tensor([-3.0, 0.5, 2.0, f64::NAN]);
        let b = Constraint::Box {
            lower: -1.0,
            upper: 1.0,
        };
        assert!(b.project(&mut t));
        let v = t.as_vec();
        assert_eq!(&v[..3], &[-1.0, 0.5, 1.0]);
        assert!(v[3].is_nan(), "a NaN is left for the non-finite check");
        let mut u: Tensor<(dfdx::prelude::Const<2>,), f64, Cpu> = dev.tensor([3.0, 4.0]);
        let ball = Constraint::Ball { radius: 1.0 };
        assert!(ball.project(&mut u));
        let v = u.as_vec();
        assert!(
            (v[0] - 0.6).abs() < 1e-15 && (v[1] - 0.8).abs() < 1e-15,
            "{v:?}"
        );
        assert!(!ball.project(&mut u) && ball.contains(&u, 1e-15));
    }

    #[test]
    fn an_empty_or_meaningless_set_is_refused_by_name() {
        let err = |c: Constraint| c.validate().unwrap_err().to_string();
        assert!(err(Constraint::Box {
            lower: 1.0,
            upper: 0.0
        })
        .contains("`lower`"));
        assert!(err(Constraint::Ball { radius: -1.0 }).contains("`radius`"));
        assert!(err(Constraint::Ball { radius: f64::NAN }).contains("`radius`"));
    }
}
