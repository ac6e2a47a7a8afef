//! What the oracles count and what they save: calls and samples per oracle, and the position of
//! the batch generator.

use serde::{Deserialize, Serialize};

/// How many times each oracle was called, and how many samples those calls touched.
///
/// A second-order call computes `∇²_yy G·v` and `∇²_xy G·v` in one pass and counts one of each
/// (an HVP-only call counts one HVP); the value of `∇_y G` it yields as a by-product is not
/// counted as a separate gradient call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OracleCounts {
    /// Calls of `(∇_x F, ∇_y F)` (one backward of the upper loss).
    pub upper_grad: u64,
    /// Calls of `(∇_x G, ∇_y G)` (one backward of the lower loss).
    pub lower_grad: u64,
    /// Hessian-vector products `∇²_yy G·v`.
    pub hvp: u64,
    /// Cross products `∇²_xy G·v`.
    pub jvp: u64,
    /// Upper-level samples touched, summed over calls.
    pub upper_samples: u64,
    /// Lower-level samples touched, summed over calls.
    pub lower_samples: u64,
}

impl OracleCounts {
    /// The calls made since `earlier`.
    pub fn since(&self, earlier: &OracleCounts) -> OracleCounts {
        OracleCounts {
            upper_grad: self.upper_grad - earlier.upper_grad,
            lower_grad: self.lower_grad - earlier.lower_grad,
            hvp: self.hvp - earlier.hvp,
            jvp: self.jvp - earlier.jvp,
            upper_samples: self.upper_samples - earlier.upper_samples,
            lower_samples: self.lower_samples - earlier.lower_samples,
        }
    }
}

/// What must be saved to continue drawing the same batches after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OracleState {
    /// The counters at the time of saving.
    pub counts: OracleCounts,
    /// The batch generator's seed.
    pub seed: [u8; 32],
    /// The generator's stream.
    pub stream: u64,
    /// The generator's position in its stream.
    pub word_pos: u128,
}
