//! L2 penalties `½ Σ_k c_k ‖y_k‖²` over the trainable tensors y_k of a model, with the three kinds
//! of coefficient the tasks use:
//! - [`FixedL2`]: `c_k = μ` (the strong convexity of hyper-rep and hyper-clean);
//! - `Tensor<Rank1<K>>`: `c_k = exp(x_k)`, one learnable log-coefficient per tensor (hyper-opt);
//! - `Tensor<Rank0>`: `c_k = exp(x)`, one learnable log-coefficient shared by all tensors.
//!
//! A learnable coefficient enters the written gradient `c_k y_k` as a taped value, so the cross
//! product `∇²_xy g·v` (entry k: `exp(x_k)⟨y_k, v_k⟩`) comes out of the same backward pass.

use bilevel_optim::params::{EachTensor, Params};
use bilevel_optim::problem::{Taped, Tp};
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::tensor_collection::ViewTensorRef;
use dfdx::prelude::*;

use crate::tape::TapedSum;

/// The coefficient of one tensor: a constant, or a taped function of the upper variable.
pub enum Coefficient<E: Real>
where
    Cpu: Device<E>,
{
    /// A constant.
    Fixed(E),
    /// A taped function of x (so the cross product sees it).
    Learned(Taped<Rank0, E>),
}

/// Where the coefficients `c_k` come from.
pub trait L2Coefficients<E: Real>
where
    Cpu: Device<E>,
{
    /// How many tensors the coefficients are for; `None` when one coefficient serves any number.
    fn tensors(&self) -> Option<usize>;
    /// `c_k` for the k-th trainable tensor (in the model's visiting order).
    fn coefficient(&self, k: usize) -> Coefficient<E>;
}

/// A fixed coefficient μ for every tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedL2(pub f64);

impl<E: Real> L2Coefficients<E> for FixedL2
where
    Cpu: Device<E>,
{
    fn tensors(&self) -> Option<usize> {
        None
    }
    fn coefficient(&self, _: usize) -> Coefficient<E> {
        Coefficient::Fixed(E::of(self.0))
    }
}

impl<E: Real, const K: usize> L2Coefficients<E> for Tensor<Rank1<K>, E, Cpu>
where
    Cpu: Device<E>,
{
    fn tensors(&self) -> Option<usize> {
        Some(K)
    }
    fn coefficient(&self, k: usize) -> Coefficient<E> {
        let index = self.device().tensor(k);
        Coefficient::Learned(self.retaped::<Tp<E>>().select(index).exp())
    }
}

impl<E: Real> L2Coefficients<E> for Tensor<Rank0, E, Cpu>
where
    Cpu: Device<E>,
{
    fn tensors(&self) -> Option<usize> {
        None
    }
    fn coefficient(&self, _: usize) -> Coefficient<E> {
        Coefficient::Learned(self.retaped::<Tp<E>>().exp())
    }
}

/// Checks that `coefficients` has one entry per trainable tensor of `model`.
pub fn check_tensor_count<E: Real, Y: Params<E>>(
    coefficients: &impl L2Coefficients<E>,
    model: &Y,
) -> Result<(), String>
where
    Cpu: Device<E>,
{
    let mut visit = CountTensors { k: 0 };
    model.walk(&mut visit);
    match coefficients.tensors() {
        Some(n) if n != visit.k => Err(format!(
            "{n} L2 coefficients for a model with {} trainable tensors",
            visit.k
        )),
        _ => Ok(()),
    }
}

/// `½ Σ_k c_k ‖y_k‖²` as a taped scalar.
pub fn l2_penalty<E: Real, Y: Params<E>>(
    coefficients: &impl L2Coefficients<E>,
    model: &Y,
) -> Taped<Rank0, E>
where
    Cpu: Device<E>,
{
    let mut total = TapedSum::<Rank0, E>::default();
    model.walk(&mut Penalty {
        coefficients,
        k: 0,
        total: &mut total,
    });
    total.total().map(|t| t * E::of(0.5)).unwrap_or_else(|| {
        bilevel_optim::real::device()
            .zeros::<Rank0>()
            .retaped::<Tp<E>>()
    })
}

/// Adds `∇_{y_k} = c_k y_k` to every tensor's component in `grads`.
pub fn add_l2_gradient<E: Real, Y: Params<E>>(
    coefficients: &impl L2Coefficients<E>,
    model: &Y,
    grads: &mut WrittenGrad<E>,
) where
    Cpu: Device<E>,
{
    model.walk(&mut Gradient {
        coefficients,
        k: 0,
        grads,
    });
}

/// `c · t` for a tensor of any shape.
fn scaled<S: Shape, E: Real>(t: &Tensor<S, E, Cpu>, c: Coefficient<E>) -> Taped<S, E>
where
    Cpu: Device<E>,
{
    match c {
        Coefficient::Fixed(mu) => t.retaped::<Tp<E>>() * mu,
        Coefficient::Learned(c) => {
            let flat = (t.shape().num_elements(),);
            (t.retaped::<Tp<E>>().reshape_like(&flat) * c.broadcast_like(&flat))
                .reshape_like(t.shape())
        }
    }
}

struct CountTensors {
    k: usize,
}
impl<E: Real> EachTensor<E> for CountTensors
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorRef;
    fn each<S: Shape>(&mut self, _: &Tensor<S, E, Cpu>) {
        self.k += 1;
    }
}

struct Penalty<'a, C, E: Real>
where
    Cpu: Device<E>,
{
    coefficients: &'a C,
    k: usize,
    total: &'a mut TapedSum<Rank0, E>,
}
impl<E: Real, C: L2Coefficients<E>> EachTensor<E> for Penalty<'_, C, E>
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorRef;
    fn each<S: Shape>(&mut self, t: &Tensor<S, E, Cpu>) {
        let norm_sq = t.retaped::<Tp<E>>().square().sum();
        self.total
            .push(match self.coefficients.coefficient(self.k) {
                Coefficient::Fixed(mu) => norm_sq * mu,
                Coefficient::Learned(c) => norm_sq * c,
            });
        self.k += 1;
    }
}

struct Gradient<'a, C, E: Real>
where
    Cpu: Device<E>,
{
    coefficients: &'a C,
    k: usize,
    grads: &'a mut WrittenGrad<E>,
}
impl<E: Real, C: L2Coefficients<E>> EachTensor<E> for Gradient<'_, C, E>
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorRef;
    fn each<S: Shape>(&mut self, t: &Tensor<S, E, Cpu>) {
        let c = self.coefficients.coefficient(self.k);
        self.grads.add(t, scaled(t, c));
        self.k += 1;
    }
}
