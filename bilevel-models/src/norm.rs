//! dfdx's `LayerNorm1D` with a written backward (on (batch, steps, features) tensors and packed
//! sequences in [`crate::by_rows`]).
//!
//! `y = γ ⊙ x̂ + β` per row, `x̂ = (x − μ)/σ`, `σ = √(mean((x − μ)²) + ε)`:
//! `∂γ = Σ_rows δ ⊙ x̂`, `∂β = Σ_rows δ`, and with `g = δ ⊙ γ`,
//! `∂x = (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)) / σ` (means over the features).
//!
//! The forward computes x̂ with dfdx's own ops in the order of dfdx's `normalize`, so its values
//! are dfdx's, and keeps handles to x̂ and σ: both are taped functions of x in the forward graph,
//! so H·v through the backward reaches x.

use bilevel_optim::problem::Tp;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::LayerNorm1D;
use dfdx::prelude::*;

use crate::layer::{when_wanted, WrittenLayer};
use crate::sequence::Activations;
use crate::tape::{hold, taped, Held};

/// What the backward of a layer norm reads: x̂ and σ of each row.
pub struct LayerNormSaved<E: Real, const M: usize>
where
    Cpu: Device<E>,
{
    /// x̂, (rows, M).
    pub normalized: Held<(usize, Const<M>), E>,
    /// σ, one per row.
    pub deviation: Held<(usize,), E>,
}

impl<const M: usize, E: Real> WrittenLayer<E, Activations<E, M>> for LayerNorm1D<M, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Activations<E, M>;
    type Saved = LayerNormSaved<E, M>;

    fn forward(&self, x: Activations<E, M>) -> (Self::Output, Self::Saved) {
        let shape = *x.shape();
        let mean = x.retaped::<Tp<E>>().mean::<(usize,), Axis<1>>();
        let centered = x - mean.broadcast_like(&shape);
        let deviation = centered
            .retaped::<Tp<E>>()
            .square()
            .mean::<(usize,), Axis<1>>()
            + E::of(self.epsilon);
        let deviation = deviation.sqrt();
        let held_deviation = hold(&deviation);
        let normalized = centered / deviation.broadcast_like(&shape);
        let saved = LayerNormSaved {
            normalized: hold(&normalized),
            deviation: held_deviation,
        };
        let out = normalized * self.gamma.retaped::<Tp<E>>().broadcast_like(&shape)
            + self.beta.retaped::<Tp<E>>().broadcast_like(&shape);
        (out, saved)
    }

    fn backward(
        &self,
        saved: Self::Saved,
        grad_output: Self::Output,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Activations<E, M>> {
        let delta = hold(&grad_output);
        let shape = *delta.shape();
        let x_hat = || taped(&saved.normalized);
        grads.add(&self.gamma, (taped(&delta) * x_hat()).sum::<Rank1<M>, _>());
        grads.add(&self.beta, taped(&delta).sum::<Rank1<M>, _>());
        let grad_output = when_wanted(grad_output, grads, want_input)?;
        let g = grad_output * self.gamma.retaped::<Tp<E>>().broadcast_like(&shape);
        let g_held = hold(&g);
        let mean_g = g.mean::<(usize,), Axis<1>>().broadcast_like(&shape);
        let mean_g_x_hat = (taped(&g_held) * x_hat())
            .mean::<(usize,), Axis<1>>()
            .broadcast_like(&shape);
        let centered = taped(&g_held) - mean_g - x_hat() * mean_g_x_hat;
        Some(centered / taped(&saved.deviation).broadcast_like(&shape))
    }
}
