//! The tape of every taped computation in the library, named once for the problem interface and
//! the written gradients.

use dfdx::prelude::{Cpu, OwnedTape, Tensor};

/// The tape type of every taped computation in the library.
pub type Tp<E> = OwnedTape<E, Cpu>;

/// A tensor carrying a tape.
pub type Taped<S, E> = Tensor<S, E, Cpu, Tp<E>>;
