//! SUSTAIN (Khanduri, Zeng, Hong, Wai, Wang, Yang, NeurIPS 2021): double momentum. y and x move
//! along STORM estimates of `∇_y g` and of the hypergradient, each corrected by the same samples
//! at the previous point; the hypergradient is the randomized Neumann estimate.
//!
//! ```text
//! y_{t+1} = y_t − β_t u_t,   x_{t+1} = x_t − α_t v_t
//! u_{t+1} = ∇_y G(x_{t+1}, y_{t+1}; ζ) + (1 − η_{t+1})(u_t − ∇_y G(x_t, y_t; ζ))
//! v_{t+1} = ĥ(x_{t+1}, y_{t+1}; ξ̄) + (1 − η_{t+1})(v_t − ĥ(x_t, y_t; ξ̄))   ĥ: randomized Neumann
//! α_t = a_x ᾱ_t,  β_t = a_y ᾱ_t,  η_{t+1} = c_η ᾱ_t² (capped at 1),  ᾱ_t = 1/(w + t)^{1/3}
//! ```
//! It is MRBO's rule (published at the same time) with one momentum constant for both levels
//! and the randomized series, so it runs MRBO's [`Mrbo`] rule. The paper writes
//! `η_{t+1} = c_η α_t²`; here c_η multiplies ᾱ_t², so tuning the steps a_x, a_y leaves the
//! momentum as it is. benchopt's `sustain.py` uses the same exponents (1/3 and 2/3).

use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::mrbo::{DoubleMomentum, Mrbo};
use crate::neumann::NeumannConfig;

/// The knobs of SUSTAIN (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SustainConfig {
    /// a_x: x moves by a_x ᾱ_t v_t.
    pub x_scale: f64,
    /// a_y: y moves by a_y ᾱ_t u_t.
    pub y_scale: f64,
    /// w in ᾱ_t = 1/(w + t)^{1/3}.
    pub offset: f64,
    /// c_η: both momentum weights are c_η ᾱ_t².
    pub momentum: f64,
    /// The Neumann series of the hypergradient estimate (randomized in the paper).
    pub neumann: NeumannConfig,
}

impl Default for SustainConfig {
    /// benchopt's momentum scale 0.5 and 10-term series at step 0.1, the BO-REP paper's step
    /// scale 0.05.
    fn default() -> Self {
        Self {
            x_scale: 0.05,
            y_scale: 0.05,
            offset: 1.0,
            momentum: 0.5,
            neumann: NeumannConfig::randomized(10, 0.1),
        }
    }
}

impl SustainConfig {
    /// ᾱ_t.
    fn base(&self, t: u64) -> f64 {
        1.0 / (self.offset + t as f64).cbrt()
    }
}

impl DoubleMomentum for SustainConfig {
    fn steps_at(&self, t: u64) -> (f64, f64) {
        (self.x_scale * self.base(t), self.y_scale * self.base(t))
    }

    fn weights_at(&self, t: u64) -> (f64, f64) {
        let a = self.momentum * self.base(t - 1).powi(2);
        (a.min(1.0), a.min(1.0))
    }

    fn neumann(&self) -> &NeumannConfig {
        &self.neumann
    }
}

impl Method for SustainConfig {
    const NAME: &'static str = "sustain";
    const HINT: &'static str = "x_scale (α_t), y_scale (β_t)";

    crate::checks!(
        x_scale: positive,
        y_scale: positive,
        offset: positive,
        momentum: positive,
        neumann: valid,
    );

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.y_scale, &mut self.x_scale)
    }

    crate::rule_optimizer!(|_, at| Mrbo::<_, _, SustainConfig>::start(at.x, at.y));
}
