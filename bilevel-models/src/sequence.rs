//! Batches of activations and padded sequences, with compile-time feature sizes and runtime
//! batch sizes and lengths.

use std::rc::Rc;

use bilevel_optim::problem::Taped;
use bilevel_optim::real::Real;
use dfdx::prelude::{Const, Cpu, Device, Tensor, TensorFrom};

/// A taped batch of `N`-dimensional activations: shape (batch, N).
pub type Activations<E, const N: usize> = Taped<(usize, Const<N>), E>;

/// Which steps of a padded batch of sequences are real tokens.
#[derive(Debug, Clone)]
pub struct SequenceMask<E: Real>
where
    Cpu: Device<E>,
{
    lengths: Vec<usize>,
    /// Per time step, 1 for a real token and 0 for padding, shape (batch,).
    valid: Vec<Tensor<(usize,), E, Cpu>>,
}

impl<E: Real> SequenceMask<E>
where
    Cpu: Device<E>,
{
    /// A mask for sequences of the given lengths, padded to the longest. Every length must be at
    /// least 1 (the text pipeline turns an empty text into one zero vector).
    pub fn from_lengths(lengths: Vec<usize>) -> Self {
        assert!(
            lengths.iter().all(|&l| l >= 1),
            "every sequence needs at least one step"
        );
        let steps = lengths.iter().copied().max().unwrap_or(0);
        let dev = bilevel_optim::real::device();
        let b = lengths.len();
        let valid = (0..steps)
            .map(|t| {
                let v: Vec<E> = lengths
                    .iter()
                    .map(|&l| if t < l { E::one() } else { E::zero() })
                    .collect();
                dev.tensor((v, (b,)))
            })
            .collect();
        Self { lengths, valid }
    }

    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Number of time steps (the longest sequence).
    pub fn steps(&self) -> usize {
        self.valid.len()
    }

    pub fn batch_size(&self) -> usize {
        self.lengths.len()
    }

    /// 1 where step `t` is a real token, 0 where it is padding.
    pub fn valid(&self, t: usize) -> &Tensor<(usize,), E, Cpu> {
        &self.valid[t]
    }
}

/// A taped padded batch of sequences of `N`-dimensional vectors, one tensor per time step.
/// Recurrent layers run over every step (padding included: it cannot influence earlier steps);
/// the mask tells pooling which steps count.
pub struct Sequence<E: Real, const N: usize>
where
    Cpu: Device<E>,
{
    pub steps: Vec<Activations<E, N>>,
    pub mask: Rc<SequenceMask<E>>,
}
