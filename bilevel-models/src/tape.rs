//! Small helpers for the tape discipline of [`crate::layer`].

use bilevel_optim::problem::{Taped, Tp};
use bilevel_optim::real::Real;
use dfdx::prelude::{Cpu, Device, NoneTape, Shape, Tensor};

/// A tape-free handle to a value of the forward or backward pass (same tensor id).
pub type Held<S, E> = Tensor<S, E, Cpu>;

/// A tape-free handle to `t`, to be reused after `t` itself is consumed.
pub fn hold<S: Shape, E: Real>(t: &Taped<S, E>) -> Held<S, E>
where
    Cpu: Device<E>,
{
    t.retaped::<NoneTape>()
}

/// `h` with an empty tape, ready to enter a taped computation; gradients reach `h`'s id.
pub fn taped<S: Shape, E: Real>(h: &Held<S, E>) -> Taped<S, E>
where
    Cpu: Device<E>,
{
    h.retaped::<Tp<E>>()
}

/// A running sum of taped terms (for gradients accumulated over time steps).
pub struct TapedSum<S: Shape, E: Real>(Option<Taped<S, E>>)
where
    Cpu: Device<E>;

impl<S: Shape, E: Real> Default for TapedSum<S, E>
where
    Cpu: Device<E>,
{
    fn default() -> Self {
        Self(None)
    }
}

impl<S: Shape, E: Real> TapedSum<S, E>
where
    Cpu: Device<E>,
{
    /// Adds a term, merging its tape.
    pub fn push(&mut self, term: Taped<S, E>) {
        self.0 = Some(match self.0.take() {
            None => term,
            Some(acc) => acc + term,
        });
    }

    /// The sum, or `None` when no term was pushed.
    pub fn total(self) -> Option<Taped<S, E>> {
        self.0
    }
}
