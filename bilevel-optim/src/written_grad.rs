//! Collects a user's written lower-level gradient `∇_y G`, one taped component per tensor of `y`.
//!
//! When a direction `v` is given, the builder forms the taped scalar `⟨∇_y G, v⟩` as components
//! arrive (merging every component's tape into it), so a single backward pass over that scalar
//! yields `∇²_yy G·v` and `∇²_xy G·v`. It also keeps each component's value, so the same pass
//! returns `∇_y G` itself.
//!
//! Components are matched to the tensors of `y` by their buffers: a map from each buffer's
//! address ([`crate::real::first_address`]; clones of a tensor share it) to the tensor's position
//! in `y`. Setting a tensor that is not in `y`, setting one twice, or leaving one out is reported
//! by name, never silently accepted.
//!
//! Three ways to give a component, for the three ways models are written:
//! - [`WrittenGrad::set`]: the whole component at once (a closed-form gradient);
//! - [`WrittenGrad::add`]: one term of a sum, as layers and regularizers contribute separately
//!   (a layer adds its data term, the L2 penalty adds `μ y`);
//! - [`WrittenGrad::zero`]: a part of `y` the batch does not touch (the heads of tasks outside a
//!   task batch), so its gradient is exactly zero and costs nothing: it becomes a shared zero
//!   ([`crate::shared_zeros`]), and the backward pass keeps no gradient buffer for it.

use std::any::Any;
use std::collections::HashMap;

use dfdx::nn::tensor_collection::{RecursiveWalker, ViewTensorMut, ViewTensorName, ViewTensorRef};
use dfdx::prelude::{
    Cpu, Device, HasShape, Merge, NoneTape, PutTape, Rank0, Shape, SplitTape, SumTo, Tensor,
    ZerosTensor,
};

use crate::error::BilevelError;
use crate::params::{tensor_label, EachTensor, Params, Visit};
use crate::real::{first_address, Real};
use crate::shared_zeros::shared_zeros;
use crate::tape::{Taped, Tp};

/// Builder for a written gradient `∇_y G`; see the module documentation.
pub struct WrittenGrad<E: Real>
where
    Cpu: Device<E>,
{
    /// Position of each trainable tensor of `y`, by the address of its buffer.
    position: HashMap<usize, usize>,
    names: Vec<String>,
    direction: Option<Vec<Box<dyn Any>>>,
    values: Vec<Option<Box<dyn Any>>>,
    given: Vec<Given>,
    inner: Option<Taped<Rank0, E>>,
    leftover: Option<Tp<E>>,
    problems: Vec<String>,
}

impl<E: Real> WrittenGrad<E>
where
    Cpu: Device<E>,
{
    /// A builder for the gradient at `y`; with `direction = Some(v)` it also forms `⟨∇_y G, v⟩`.
    pub fn new<Y: Params<E>>(y: &Y, direction: Option<&Y>) -> Self {
        let mut reg = Register {
            position: HashMap::new(),
            names: Vec::new(),
        };
        let _ = Y::iter_tensors(&mut RecursiveWalker {
            m: (y, String::new()),
            f: &mut Visit(&mut reg),
        });
        let n = reg.names.len();
        let direction = direction.map(|v| {
            let mut c = CollectTensors {
                out: Vec::with_capacity(n),
            };
            let _ = Y::iter_tensors(&mut RecursiveWalker {
                m: v,
                f: &mut Visit(&mut c),
            });
            c.out
        });
        Self {
            position: reg.position,
            names: reg.names,
            direction,
            values: (0..n).map(|_| None).collect(),
            given: vec![Given::Nothing; n],
            inner: None,
            leftover: None,
            problems: Vec::new(),
        }
    }

    /// Sets the component of the gradient for the tensor `param` of `y`: the whole component,
    /// given once.
    pub fn set<S: Shape>(&mut self, param: &Tensor<S, E, Cpu>, component: Taped<S, E>) {
        self.contribute(param, component, Given::Set);
    }

    /// Adds one term to the component for `param`; terms from several calls are summed.
    pub fn add<S: Shape>(&mut self, param: &Tensor<S, E, Cpu>, component: Taped<S, E>) {
        self.contribute(param, component, Given::Added);
    }

    /// Declares the gradient of every trainable tensor of `part` (a sub-collection of `y`) to be
    /// exactly zero for this batch.
    pub fn zero<P: Params<E>>(&mut self, part: &P) {
        let mut marks = Vec::new();
        let _ = P::iter_tensors(&mut RecursiveWalker {
            m: part,
            f: &mut Visit(&mut ZeroMarks {
                position: &self.position,
                out: &mut marks,
            }),
        });
        for k in marks {
            match k.filter(|&k| k >= 1 && k <= self.names.len()) {
                None => self
                    .problems
                    .push("a tensor declared zero is not a trainable tensor of y".into()),
                Some(k) if self.given[k - 1] != Given::Nothing => self.problems.push(format!(
                    "'{}' was declared zero but also given a component",
                    self.names[k - 1]
                )),
                Some(k) => self.given[k - 1] = Given::Zero,
            }
        }
    }

    fn contribute<S: Shape>(
        &mut self,
        param: &Tensor<S, E, Cpu>,
        component: Taped<S, E>,
        how: Given,
    ) {
        let Some(k) = self.position_of(param) else {
            self.problems.push(
                "a component was set for a tensor that is not a trainable tensor of y".into(),
            );
            return;
        };
        let compatible = matches!(
            (self.given[k], how),
            (Given::Nothing, _) | (Given::Added, Given::Added)
        );
        if !compatible {
            let what = match (self.given[k], how) {
                (Given::Zero, _) => "declared zero and also given a component",
                (_, Given::Added) => "set once and then added to",
                _ => "set twice",
            };
            self.problems
                .push(format!("the component for '{}' was {what}", self.names[k]));
            return;
        }
        self.given[k] = how;
        let value = component.retaped::<NoneTape>();
        self.values[k] = Some(Box::new(match self.values[k].take() {
            None => value,
            Some(previous) => {
                *previous
                    .downcast::<Tensor<S, E, Cpu>>()
                    .expect("same tensor, same shape type")
                    + value
            }
        }));
        if let Some(dir) = &self.direction {
            // A fresh tensor id: dfdx accumulates the gradient of the constant factor v under v's
            // id, so a direction sharing ids with y (a clone of y, say) would add ∇_y G to the
            // HVP. Made here, for the tensors that get a component, rather than for all of v.
            let v = dir[k]
                .downcast_ref::<Tensor<S, E, Cpu>>()
                .expect("same tensor, same shape type")
                .clone()
                * E::one();
            let term: Taped<Rank0, E> = (component * v).sum();
            self.inner = Some(match self.inner.take() {
                None => term,
                Some(acc) => acc + term,
            });
        }
    }

    /// Merges the tape of an intermediate result whose backward operations feed the components
    /// but which is not itself a component (e.g. the gradient with respect to an initial state).
    pub fn keep_tape<S: Shape>(&mut self, leftover: Taped<S, E>) {
        if self.direction.is_none() {
            return;
        }
        let (_, tape) = leftover.split_tape();
        self.leftover = Some(match self.leftover.take() {
            None => tape,
            Some(t) => t.merge(tape),
        });
    }

    /// The written gradient's value alone (no second-order products), after the same checks as
    /// the second-order pass makes: for using a model's written gradient directly, e.g. to train a
    /// head by gradient descent.
    pub fn into_value<Y: Params<E>>(self, y: &Y) -> Result<Y, BilevelError> {
        Ok(self.finish(y)?.0)
    }

    /// The tensors of `y` that have no component yet (neither given nor declared zero), by name.
    pub(crate) fn missing_components(&self) -> Vec<String> {
        self.given
            .iter()
            .zip(&self.names)
            .filter(|(g, _)| **g == Given::Nothing)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// For each trainable tensor of `y` (in visiting order), whether it was declared zero.
    pub(crate) fn declared_zero(&self) -> Vec<bool> {
        self.given.iter().map(|g| *g == Given::Zero).collect()
    }

    /// What was given wrongly so far (a tensor set twice, a tensor not in `y`, ...).
    pub(crate) fn misuses(&self) -> &[String] {
        &self.problems
    }

    /// Checks that every tensor of `y` got exactly one component and returns the gradient's value
    /// and, when a direction was given, the taped scalar `⟨∇_y G, v⟩`.
    pub(crate) fn finish<Y: Params<E>>(
        mut self,
        y: &Y,
    ) -> Result<(Y, Option<Taped<Rank0, E>>), BilevelError> {
        let missing: Vec<&str> = self
            .given
            .iter()
            .zip(&self.names)
            .filter(|(g, _)| **g == Given::Nothing)
            .map(|(_, n)| n.as_str())
            .collect();
        if !missing.is_empty() {
            self.problems
                .push(format!("no component was set for {}", missing.join(", ")));
        }
        if !self.problems.is_empty() {
            return Err(BilevelError::WrittenGradient(self.problems.join("; ")));
        }
        if self.inner.is_none() && self.direction.is_some() {
            // Every component was declared zero: ⟨∇_y G, v⟩ = 0, still a valid taped scalar.
            self.inner =
                Some(ZerosTensor::<E>::zeros::<Rank0>(&crate::real::device()).retaped::<Tp<E>>());
        }
        let mut value = y.clone();
        let _ = Y::iter_tensors(&mut RecursiveWalker {
            m: &mut value,
            f: &mut Visit(&mut PlaceValues {
                values: &mut self.values,
                next: 0,
            }),
        });
        let inner = match (self.inner, self.leftover) {
            (Some(s), Some(extra)) => {
                let (s, tape) = s.split_tape();
                Some(s.put_tape(tape.merge(extra)))
            }
            (inner, _) => inner,
        };
        Ok((value, inner))
    }

    fn position_of<S: Shape>(&mut self, param: &Tensor<S, E, Cpu>) -> Option<usize> {
        let k = read_marker(&self.position, param)?;
        (k >= 1 && k <= self.names.len()).then(|| k - 1)
    }
}

/// How the component of one tensor of `y` was given so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Given {
    Nothing,
    Set,
    Added,
    Zero,
}

// These two helpers deliberately carry no `Cpu: Device<E>` bound: with it in scope, the compiler
// cannot see that a CPU gradient buffer is a vector of `E`.
/// Records that `t` is tensor `k` (1-based) of `y`.
fn write_marker<E: Real, S: Shape>(map: &mut HashMap<usize, usize>, t: &Tensor<S, E, Cpu>, k: usize)
where
    Cpu: Device<E>,
{
    if let Some(address) = first_address(t) {
        map.insert(address, k);
    }
}

/// Which tensor (1-based) of `y` `t` is, if any.
fn read_marker<E: Real, S: Shape>(
    map: &HashMap<usize, usize>,
    t: &Tensor<S, E, Cpu>,
) -> Option<usize>
where
    Cpu: Device<E>,
{
    map.get(&first_address(t)?).copied()
}

struct Register {
    position: HashMap<usize, usize>,
    names: Vec<String>,
}
impl<E: Real> EachTensor<E> for Register
where
    Cpu: Device<E>,
{
    type Viewer = (ViewTensorRef, ViewTensorName);
    fn each<S: Shape>(&mut self, (t, name): (&Tensor<S, E, Cpu>, String)) {
        self.names.push(tensor_label(name));
        write_marker(&mut self.position, t, self.names.len());
    }
}

struct ZeroMarks<'a> {
    position: &'a HashMap<usize, usize>,
    out: &'a mut Vec<Option<usize>>,
}
impl<E: Real> EachTensor<E> for ZeroMarks<'_>
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorRef;
    fn each<S: Shape>(&mut self, t: &Tensor<S, E, Cpu>) {
        self.out.push(read_marker(self.position, t));
    }
}

struct CollectTensors {
    out: Vec<Box<dyn Any>>,
}
impl<E: Real> EachTensor<E> for CollectTensors
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorRef;
    fn each<S: Shape>(&mut self, t: &Tensor<S, E, Cpu>) {
        self.out.push(Box::new(t.clone()));
    }
}

struct PlaceValues<'a> {
    values: &'a mut Vec<Option<Box<dyn Any>>>,
    next: usize,
}
impl<E: Real> EachTensor<E> for PlaceValues<'_>
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorMut;
    fn each<S: Shape>(&mut self, t: &mut Tensor<S, E, Cpu>) {
        *t = match self.values[self.next].take() {
            Some(boxed) => *boxed
                .downcast::<Tensor<S, E, Cpu>>()
                .expect("same shape type"),
            // Declared zero (`finish` checked that every other tensor has a value): +0.0,
            // where `t * 0` would be −0.0 for every negative entry of `t`.
            None => shared_zeros(*t.shape()),
        };
        self.next += 1;
    }
}
