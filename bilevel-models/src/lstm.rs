//! An LSTM layer with its backward pass through time written in taped ops, over packed sequences
//! (step t continues the first rows of step t − 1). Stack two with a tuple for the 2-layer
//! encoder. Gates (PyTorch's equations, h_0 = c_0 = 0):
//!
//! ```text
//! i = σ(a_i), f = σ(a_f), g = tanh(a_g), o = σ(a_o)      a_k = x_t W_kᵀ + b_k + h_{t−1} U_kᵀ + c_k
//! c_t = f ⊙ c_{t−1} + i ⊙ g,  h_t = o ⊙ tanh(c_t)
//! ```
//! Backward, from `dh_t = δ_t + Σ_k da_k,{t+1} U_k` and `dc_{t+1}`:
//! `da_o = dh ⊙ tanh(c_t) ⊙ o(1−o)`, `dc = dc_{t+1} ⊙ f_{t+1} + dh ⊙ o ⊙ (1 − tanh²c_t)`,
//! `da_f = dc ⊙ c_{t−1} ⊙ f(1−f)`, `da_i = dc ⊙ g ⊙ i(1−i)`, `da_g = dc ⊙ i ⊙ (1−g²)`.

use std::sync::Arc;

use bilevel_optim::problem::Taped;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::tensor_collection::{ModuleVisitor, TensorCollection};
use dfdx::prelude::*;

use crate::layer::WrittenLayer;
use crate::recurrent::{extend_rows, first_rows, AffineGrads, RecurrentAffine};
use crate::sequence::{Activations, Sequence};
use crate::tape::{hold, taped, Held};

/// One LSTM layer from `I` to `H` features: four gates, each a [`RecurrentAffine`].
#[derive(Debug, Clone)]
pub struct LstmLayer<const I: usize, const H: usize, E: Dtype, D: Storage<E>> {
    /// i_t's affine map.
    pub input_gate: RecurrentAffine<I, H, E, D>,
    /// f_t's affine map.
    pub forget_gate: RecurrentAffine<I, H, E, D>,
    /// g_t's (the candidate cell's) affine map.
    pub cell_gate: RecurrentAffine<I, H, E, D>,
    /// o_t's affine map.
    pub output_gate: RecurrentAffine<I, H, E, D>,
}

impl<const I: usize, const H: usize, E, D: Device<E>> TensorCollection<E, D>
    for LstmLayer<I, H, E, D>
where
    E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform,
{
    type To<E2: Dtype, D2: Device<E2>> = LstmLayer<I, H, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("input_gate", |s| &s.input_gate, |s| &mut s.input_gate),
                Self::module("forget_gate", |s| &s.forget_gate, |s| &mut s.forget_gate),
                Self::module("cell_gate", |s| &s.cell_gate, |s| &mut s.cell_gate),
                Self::module("output_gate", |s| &s.output_gate, |s| &mut s.output_gate),
            ),
            |(input_gate, forget_gate, cell_gate, output_gate)| LstmLayer {
                input_gate,
                forget_gate,
                cell_gate,
                output_gate,
            },
        )
    }
}

type Step<const N: usize, E> = Held<(usize, Const<N>), E>;

/// One time step's forward values.
struct LstmStep<const I: usize, const H: usize, E: Real>
where
    Cpu: Device<E>,
{
    x: Step<I, E>,
    input: Step<H, E>,
    forget: Step<H, E>,
    cell: Step<H, E>,
    output: Step<H, E>,
    /// c_t and tanh(c_t).
    c: Step<H, E>,
    tanh_c: Step<H, E>,
    h: Step<H, E>,
}

/// The forward values the backward pass through time reads.
pub struct LstmSaved<const I: usize, const H: usize, E: Real>(Vec<LstmStep<I, H, E>>)
where
    Cpu: Device<E>;

/// `s ⊙ (1 − s)`, the derivative of σ at the value s = σ(a).
fn sigmoid_slope<const H: usize, E: Real>(s: &Step<H, E>) -> Activations<E, H>
where
    Cpu: Device<E>,
{
    taped(s) * (taped(s).negate() + E::one())
}

/// `1 − t²`, the derivative of tanh at the value t = tanh(a).
fn tanh_slope<const H: usize, E: Real>(t: &Step<H, E>) -> Activations<E, H>
where
    Cpu: Device<E>,
{
    crate::elementwise::tanh_slope(taped(t))
}

impl<const I: usize, const H: usize, E: Real> LstmLayer<I, H, E, Cpu>
where
    Cpu: Device<E>,
{
    fn gates(&self) -> [&RecurrentAffine<I, H, E, Cpu>; 4] {
        [
            &self.input_gate,
            &self.forget_gate,
            &self.cell_gate,
            &self.output_gate,
        ]
    }
}

impl<const I: usize, const H: usize, E: Real> WrittenLayer<E, Sequence<E, I>>
    for LstmLayer<I, H, E, Cpu>
where
    Cpu: Device<E>,
{
    type Output = Sequence<E, H>;
    type Saved = LstmSaved<I, H, E>;

    fn forward(&self, input: Sequence<E, I>) -> (Sequence<E, H>, Self::Saved) {
        let mut saved: Vec<LstmStep<I, H, E>> = Vec::with_capacity(input.steps.len());
        let mut steps = Vec::with_capacity(input.steps.len());
        for x in input.steps {
            let x_held = hold(&x);
            let rows = x.shape().0;
            let previous = saved.last();
            // The state this step continues; its row selection rides on the input gate's tape.
            let h_prev = previous.map(|p| first_rows(&p.h, rows));
            let h_prev_held = h_prev.as_ref().map(hold);
            let pre = |gate: &RecurrentAffine<I, H, E, Cpu>, x: Activations<E, I>| {
                gate.forward(x, h_prev_held.as_ref().map(taped))
            };
            let i = self.input_gate.forward(x, h_prev).sigmoid();
            let f = pre(&self.forget_gate, taped(&x_held)).sigmoid();
            let g = crate::elementwise::tanh(pre(&self.cell_gate, taped(&x_held)));
            let o = pre(&self.output_gate, taped(&x_held)).sigmoid();
            let (i_held, f_held, g_held, o_held) = (hold(&i), hold(&f), hold(&g), hold(&o));
            let c = match previous {
                None => i * g,
                Some(p) => f * first_rows(&p.c, rows) + i * g,
            };
            let c_held = hold(&c);
            let tanh_c = crate::elementwise::tanh(c);
            let tanh_c_held = hold(&tanh_c);
            let h = o * tanh_c;
            saved.push(LstmStep {
                x: x_held,
                input: i_held,
                forget: f_held,
                cell: g_held,
                output: o_held,
                c: c_held,
                tanh_c: tanh_c_held,
                h: hold(&h),
            });
            steps.push(h);
        }
        (
            Sequence {
                steps,
                mask: input.mask,
            },
            LstmSaved(saved),
        )
    }

    fn backward(
        &self,
        saved: Self::Saved,
        grad_output: Sequence<E, H>,
        grads: &mut WrittenGrad<E>,
        want_input: bool,
    ) -> Option<Sequence<E, I>> {
        let saved = saved.0;
        assert_eq!(
            grad_output.steps.len(),
            saved.len(),
            "one gradient per step"
        );
        let mask = Arc::clone(&grad_output.mask);
        let mut sums: [AffineGrads<I, H, E>; 4] = Default::default();
        let mut input_grads = Vec::with_capacity(if want_input { saved.len() } else { 0 });
        let mut dh_next: Option<Activations<E, H>> = None;
        let mut dc_next: Option<Activations<E, H>> = None;
        for (t, delta) in grad_output.steps.into_iter().enumerate().rev() {
            let s = &saved[t];
            let previous = t.checked_sub(1).map(|p| &saved[p]);
            let rows = mask.active(t);
            let dh = match dh_next.take() {
                None => delta,
                Some(next) => delta + extend_rows(next, rows),
            };
            let dh_held = hold(&dh);
            let dc_here = dh * taped(&s.output) * tanh_slope(&s.tanh_c);
            let dc = match dc_next.take() {
                None => dc_here,
                Some(next) => dc_here + extend_rows(next, rows),
            };
            let dc_held = hold(&dc);
            // Gate pre-activation gradients, in the order of `gates()`: i, f, g, o.
            let da: [Option<Taped<(usize, Const<H>), E>>; 4] = [
                Some(taped(&dc_held) * taped(&s.cell) * sigmoid_slope(&s.input)),
                previous
                    .map(|p| taped(&dc_held) * first_rows(&p.c, rows) * sigmoid_slope(&s.forget)),
                Some(taped(&dc_held) * taped(&s.input) * tanh_slope(&s.cell)),
                Some(taped(&dh_held) * taped(&s.tanh_c) * sigmoid_slope(&s.output)),
            ];
            let mut dx: Option<Activations<E, I>> = None;
            for ((gate, sum), da) in self.gates().into_iter().zip(sums.iter_mut()).zip(da) {
                let Some(da) = da else { continue };
                let da_held = hold(&da);
                sum.push(&da_held, &s.x, previous.map(|p| &p.h));
                if want_input {
                    let term = gate.input_grad(&da_held);
                    dx = Some(match dx.take() {
                        None => term,
                        Some(acc) => acc + term,
                    });
                }
                if t > 0 {
                    let term = gate.hidden_grad(&da_held);
                    dh_next = Some(match dh_next.take() {
                        None => term,
                        Some(acc) => acc + term,
                    });
                }
                grads.keep_tape(da);
            }
            if t > 0 {
                dc_next = Some(taped(&dc_held) * taped(&s.forget));
            }
            grads.keep_tape(dc);
            if let Some(dx) = dx {
                input_grads.push(dx);
            }
        }
        for (gate, sum) in self.gates().into_iter().zip(sums) {
            sum.write(gate, grads);
        }
        want_input.then(|| {
            input_grads.reverse();
            Sequence {
                steps: input_grads,
                mask,
            }
        })
    }
}
