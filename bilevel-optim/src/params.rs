//! Parameter-space arithmetic over any dfdx [`TensorCollection`].
//!
//! Bilevel algorithms manipulate whole parameter sets (x, y, the linear-system variable z,
//! momenta) as vectors. [`Params`] gives every dfdx module, tensor or tuple of them the
//! vector-space operations those algorithms are written in, so an update rule reads like its
//! pseudocode: `z.add_scaled(-nu, &residual)`, `m.norm()`, `z.project_ball(rho)`.
//!
//! Only tensors marked for gradient updates take part (dfdx's `TensorOptions::do_gradient_update`);
//! detached tensors such as running statistics are carried along unchanged.

use dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorViewer, TensorVisitor, ViewTensorMut,
    ViewTensorName, ViewTensorRef,
};
use dfdx::prelude::{Cpu, Device, Gradients, HasShape, Shape, Tensor, TensorFromVec, ZerosTensor};

use crate::real::Real;
use crate::shared_zeros::is_shared_zero;

/// Vector-space operations on a collection of tensors.
///
/// Implemented for every `TensorCollection<E, Cpu> + Clone`: dfdx modules, const-shaped tensors,
/// and tuples of them. Reductions accumulate in `f64`.
pub trait Params<E: Real>: TensorCollection<E, Cpu> + Clone
where
    Cpu: Device<E>,
{
    /// A collection of the same shape filled with zeros, made of new tensors (new tensor ids), so
    /// it never aliases `self` in a taped computation.
    fn zeros_like(&self) -> Self {
        let mut out = self.clone();
        out.walk_mut(&mut FreshZeros);
        out
    }

    /// A copy made of new tensors (new tensor ids), so it never aliases `self` in a taped
    /// computation; a plain `clone` shares ids.
    fn duplicate(&self) -> Self {
        let mut out = self.zeros_like();
        out.add_scaled(E::one(), self);
        out
    }

    /// A copy of every tensor (trainable or not) made on `dev`: a worker thread computes on its
    /// own device, because ops allocate their outputs on their inputs' device and dfdx 0.13's
    /// allocation cache must not be used from two threads (see [`crate::shards`]).
    fn on_device(&self, dev: &Cpu) -> Self {
        self.on_device_where(dev, None)
    }

    /// [`Params::on_device`] for the trainable tensors `touched` marks (in visiting order;
    /// `None`: all) and every frozen one; the others stay shared with `self`. For a pass that
    /// reads only the touched tensors ([`crate::problem::BilevelProblem::lower_touches`]): the
    /// rest is never handed to an op, so no op allocates on `self`'s device from another thread.
    fn on_device_where(&self, dev: &Cpu, touched: Option<&[bool]>) -> Self {
        let mut out = self.clone();
        out.walk_mut(&mut CopyTo {
            dev,
            touched: Marks::new(touched),
        });
        out
    }

    /// `self ← a · self`. Shared zeros ([`crate::shared_zeros`]) stay as they are, and `a = 1`
    /// does nothing.
    fn scale(&mut self, a: E) {
        if a != E::one() {
            self.walk_mut(&mut Scale { a });
        }
    }

    /// `self ← self + a · other`.
    fn add_scaled(&mut self, a: E, other: &Self) {
        walk_mut_ref(
            self,
            other,
            &mut Combine {
                alpha: 1.0,
                beta: a.f64(),
            },
        );
    }

    /// `self ← alpha · self + beta · other` (a convex combination when alpha + beta = 1).
    fn lerp_with(&mut self, alpha: E, beta: E, other: &Self) {
        walk_mut_ref(
            self,
            other,
            &mut Combine {
                alpha: alpha.f64(),
                beta: beta.f64(),
            },
        );
    }

    /// Euclidean inner product over all trainable tensors (pairs with a shared zero add nothing
    /// and are skipped).
    fn dot(&self, other: &Self) -> E {
        let mut acc = 0.0f64;
        fold_pairs(self, other, true, |a, b| {
            acc += a.iter().zip(b).map(|(x, y)| x.f64() * y.f64()).sum::<f64>();
        });
        E::of(acc)
    }

    /// Squared global Euclidean norm (all tensors concatenated; shared zeros are skipped).
    fn norm_sq(&self) -> E {
        let mut acc = 0.0f64;
        self.walk(&mut EachSlice {
            f: |a: &[E]| acc += a.iter().map(|x| x.f64() * x.f64()).sum::<f64>(),
            buf: Vec::new(),
            skip_shared_zeros: true,
        });
        E::of(acc)
    }

    /// Global Euclidean norm (all tensors concatenated), not per tensor.
    fn norm(&self) -> E {
        self.norm_sq().sqrt()
    }

    /// Projects onto the ball `‖self‖ ≤ radius` centred at 0. Returns whether a projection
    /// happened.
    fn project_ball(&mut self, radius: E) -> bool {
        let n = self.norm();
        if n > radius {
            self.scale(radius / n);
            true
        } else {
            false
        }
    }

    /// Projects onto the ball `‖self − center‖ ≤ radius`. Returns whether a projection happened.
    fn project_ball_around(&mut self, center: &Self, radius: E) -> bool {
        let mut d = self.clone();
        d.add_scaled(-E::one(), center);
        if d.project_ball(radius) {
            d.add_scaled(E::one(), center);
            *self = d;
            true
        } else {
            false
        }
    }

    /// Number of trainable tensors (the length of [`Params::tensor_spans`]), without reading
    /// any values.
    fn tensor_count(&self) -> usize {
        let mut count = CountTensors(0);
        self.walk(&mut count);
        count.0
    }

    /// Number of trainable scalars.
    fn num_params(&self) -> usize {
        let mut n = 0;
        self.for_each_slice(|a| n += a.len());
        n
    }

    /// All trainable scalars in visiting order, for saving and for dense linear algebra.
    fn to_flat(&self) -> Vec<E> {
        let mut out = Vec::with_capacity(self.num_params());
        self.for_each_slice(|a| out.extend_from_slice(a));
        out
    }

    /// Overwrites the trainable scalars from a flat vector in visiting order.
    ///
    /// Fails (leaving `self` unchanged) when the length differs from [`Params::num_params`].
    fn set_flat(&mut self, flat: &[E]) -> Result<(), ParamLengthMismatch> {
        let expected = self.num_params();
        if flat.len() != expected {
            return Err(ParamLengthMismatch {
                expected,
                found: flat.len(),
            });
        }
        let mut offset = 0;
        self.map_in_place(|a| {
            a.copy_from_slice(&flat[offset..offset + a.len()]);
            offset += a.len();
        });
        Ok(())
    }

    /// The name of the first tensor holding a NaN or an infinity, if any.
    fn first_non_finite(&self) -> Option<String> {
        self.first_non_finite_among(None)
    }

    /// [`Params::first_non_finite`] among the tensors `among` marks (in visiting order; `None`:
    /// all): after a step that changed only those, the others need no second look.
    fn first_non_finite_among(&self, among: Option<&[bool]>) -> Option<String> {
        let mut v = FirstNonFinite {
            among: Marks::new(among),
            buf: Vec::new(),
            found: None,
        };
        walk_named(self, &mut v);
        v.found
    }

    /// For each trainable tensor (in visiting order), whether it is a shared zero
    /// ([`crate::shared_zeros`]): a step along `self` leaves those tensors unchanged.
    fn shared_zero_mask(&self) -> Vec<bool> {
        let mut mask = Vec::new();
        self.walk(&mut SharedZeroMask(&mut mask));
        mask
    }

    /// Each trainable tensor's name (as in error messages, e.g. `"0.weight"`) and its range in
    /// [`Params::to_flat`], in visiting order: for reports and checks that name a tensor.
    fn tensor_spans(&self) -> Vec<(String, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        let mut next = 0;
        self.for_each_named_slice(|name, a| {
            out.push((name.to_string(), next..next + a.len()));
            next += a.len();
        });
        out
    }

    /// Visits each trainable tensor's name (as in [`Params::tensor_spans`]) and data.
    fn for_each_named_slice(&self, f: impl FnMut(&str, &[E])) {
        let mut v = EachNamedSlice { f, buf: Vec::new() };
        walk_named(self, &mut v);
    }

    /// Applies `f` to each trainable tensor's data in place.
    fn map_in_place(&mut self, f: impl FnMut(&mut [E])) {
        let mut v = MapSlices { f, buf: Vec::new() };
        self.walk_mut(&mut v);
    }

    /// Applies `f` to each pair of corresponding trainable tensors, the first mutably.
    fn zip_in_place(&mut self, other: &Self, f: impl FnMut(&mut [E], &[E])) {
        walk_mut_ref(
            self,
            other,
            &mut ZipSlices {
                f,
                a: Vec::new(),
                b: Vec::new(),
            },
        );
    }

    /// Visits each trainable tensor's data.
    fn for_each_slice(&self, f: impl FnMut(&[E])) {
        self.walk(&mut EachSlice {
            f,
            buf: Vec::new(),
            skip_shared_zeros: false,
        });
    }

    /// Visits each pair of corresponding trainable tensors.
    fn fold_with(&self, other: &Self, f: impl FnMut(&[E], &[E])) {
        fold_pairs(self, other, false, f);
    }

    /// A collection shaped like `self` holding the gradients recorded in `grads` for `self`'s
    /// tensors. Every tensor must have an entry (allocate with `alloc_grads` first).
    fn gradient_from(&self, grads: &Gradients<E, Cpu>) -> Self {
        self.gradient_on(grads, None)
    }

    /// [`Params::gradient_from`] for the tensors `touched` marks (in visiting order; `None`: all),
    /// and shared zeros ([`crate::shared_zeros`]) for the others, which need no entry in `grads`.
    fn gradient_on(&self, grads: &Gradients<E, Cpu>, touched: Option<&[bool]>) -> Self {
        let mut out = self.clone();
        out.walk_mut(&mut TakeGradientOn {
            grads,
            touched: Marks::new(touched),
        });
        out
    }

    /// Runs `pass` over every tensor, read-only.
    fn walk<V: EachTensor<E, Viewer = ViewTensorRef>>(&self, pass: &mut V) {
        let _ = Self::iter_tensors(&mut RecursiveWalker {
            m: self,
            f: &mut Visit(pass),
        });
    }

    /// Runs `pass` over every tensor, in place.
    fn walk_mut<V: EachTensor<E, Viewer = ViewTensorMut>>(&mut self, v: &mut V) {
        let _ = Self::iter_tensors(&mut RecursiveWalker {
            m: self,
            f: &mut Visit(v),
        });
    }
}

impl<E: Real, T: TensorCollection<E, Cpu> + Clone> Params<E> for T where Cpu: Device<E> {}

/// A readable name for a tensor from dfdx's visitor path ("1.bias"; "(tensor)" for a bare tensor).
pub(crate) fn tensor_label(path: String) -> String {
    let trimmed = path.trim_end_matches('.');
    if trimmed.is_empty() {
        "(tensor)".into()
    } else {
        trimmed.into()
    }
}

/// A flat vector did not have the length of the collection it was loaded into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter vector has {found} values, the model has {expected}")]
pub struct ParamLengthMismatch {
    /// The collection's number of trainable scalars.
    pub expected: usize,
    /// The vector's length.
    pub found: usize,
}

fn walk_mut_ref<E: Real, T: TensorCollection<E, Cpu>, V>(a: &mut T, b: &T, v: &mut V)
where
    Cpu: Device<E>,
    V: EachTensor<E, Viewer = (ViewTensorMut, ViewTensorRef)>,
{
    let _ = T::iter_tensors(&mut RecursiveWalker {
        m: (a, b),
        f: &mut Visit(v),
    });
}

/// `f` on each pair of corresponding trainable tensors' values, pairs with a shared zero left out
/// when `skip_shared_zeros`.
fn fold_pairs<E: Real, T: TensorCollection<E, Cpu>>(
    a: &T,
    b: &T,
    skip_shared_zeros: bool,
    f: impl FnMut(&[E], &[E]),
) where
    Cpu: Device<E>,
{
    let mut v = FoldSlices {
        f,
        a: Vec::new(),
        b: Vec::new(),
        skip_shared_zeros,
    };
    let _ = T::iter_tensors(&mut RecursiveWalker {
        m: (a, b),
        f: &mut Visit(&mut v),
    });
}

fn walk_named<E: Real, T: TensorCollection<E, Cpu>, V>(a: &T, v: &mut V)
where
    Cpu: Device<E>,
    V: EachTensor<E, Viewer = (ViewTensorRef, ViewTensorName)>,
{
    let _ = T::iter_tensors(&mut RecursiveWalker {
        m: (a, String::new()),
        f: &mut Visit(v),
    });
}

/// A pass over the tensors of a collection: dfdx's `TensorVisitor` without its boilerplate.
/// [`EachTensor::each`] sees every tensor that takes gradient updates (`do_gradient_update`)
/// through the view `Viewer`; [`EachTensor::frozen`] every other one (running statistics and the
/// like), which by default it leaves alone. [`Visit`] makes it a dfdx visitor.
pub trait EachTensor<E: Real>
where
    Cpu: Device<E>,
{
    /// dfdx's view of each tensor: `ViewTensorRef`, `ViewTensorMut`, tuples of them, names.
    type Viewer: TensorViewer;

    /// Called with each tensor that takes gradient updates.
    fn each<S: Shape>(&mut self, view: View<'_, Self::Viewer, S, E>);

    /// Called with each tensor that does not.
    fn frozen<S: Shape>(&mut self, _view: View<'_, Self::Viewer, S, E>) {}
}

/// The view a `Viewer` gives of one tensor.
pub type View<'a, V, S, E> = <V as TensorViewer>::View<'a, Tensor<S, E, Cpu>>;

/// dfdx's visitor for an [`EachTensor`] pass: walk a collection with
/// `RecursiveWalker { m: <the collection's view>, f: &mut Visit(&mut pass) }`.
pub struct Visit<'p, P>(pub &'p mut P);

impl<E: Real, P: EachTensor<E>> TensorVisitor<E, Cpu> for Visit<'_, P>
where
    Cpu: Device<E>,
{
    type Viewer = P::Viewer;
    type Err = std::convert::Infallible;
    type E2 = E;
    type D2 = Cpu;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, Cpu>,
        view: View<'_, P::Viewer, S, E>,
    ) -> Result<Option<Tensor<S, E, Cpu>>, Self::Err> {
        if opts.do_gradient_update {
            self.0.each(view);
        } else {
            self.0.frozen(view);
        }
        Ok(None)
    }
}

/// `dst ← alpha·dst + beta·src`.
struct Combine {
    alpha: f64,
    beta: f64,
}
impl<E: Real> EachTensor<E> for Combine
where
    Cpu: Device<E>,
{
    type Viewer = (ViewTensorMut, ViewTensorRef);
    fn each<S: Shape>(&mut self, (dst, src): (&mut Tensor<S, E, Cpu>, &Tensor<S, E, Cpu>)) {
        if is_shared_zero(src) {
            // `alpha·dst + beta·0`: only the scaling of dst is left.
            Scale {
                a: E::of(self.alpha),
            }
            .each(dst);
        } else {
            dst.axpy(self.alpha, src, self.beta);
        }
    }
}

/// `t ← a·t`, leaving shared zeros (and everything when `a = 1`) alone.
struct Scale<E> {
    a: E,
}
impl<E: Real> EachTensor<E> for Scale<E>
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorMut;
    fn each<S: Shape>(&mut self, t: &mut Tensor<S, E, Cpu>) {
        if self.a != E::one() && !is_shared_zero(t) {
            let mut values = crate::real::values(t);
            values.iter_mut().for_each(|v| *v *= self.a);
            t.copy_from(&values);
        }
    }
}

/// `f` on each tensor's values, written back.
struct MapSlices<F, E> {
    f: F,
    buf: Vec<E>,
}
impl<E: Real, F: FnMut(&mut [E])> EachTensor<E> for MapSlices<F, E>
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorMut;
    fn each<S: Shape>(&mut self, t: &mut Tensor<S, E, Cpu>) {
        self.buf.resize(t.shape().num_elements(), E::zero());
        t.copy_into(&mut self.buf);
        (self.f)(&mut self.buf);
        t.copy_from(&self.buf);
    }
}

/// `f` on each pair of tensors' values, the first written back.
struct ZipSlices<F, E> {
    f: F,
    a: Vec<E>,
    b: Vec<E>,
}
impl<E: Real, F: FnMut(&mut [E], &[E])> EachTensor<E> for ZipSlices<F, E>
where
    Cpu: Device<E>,
{
    type Viewer = (ViewTensorMut, ViewTensorRef);
    fn each<S: Shape>(&mut self, (a, b): (&mut Tensor<S, E, Cpu>, &Tensor<S, E, Cpu>)) {
        let n = a.shape().num_elements();
        self.a.resize(n, E::zero());
        self.b.resize(n, E::zero());
        a.copy_into(&mut self.a);
        b.copy_into(&mut self.b);
        (self.f)(&mut self.a, &self.b);
        a.copy_from(&self.a);
    }
}

/// `f` on each tensor's values.
struct EachSlice<F, E> {
    f: F,
    buf: Vec<E>,
    skip_shared_zeros: bool,
}
impl<E: Real, F: FnMut(&[E])> EachTensor<E> for EachSlice<F, E>
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorRef;
    fn each<S: Shape>(&mut self, t: &Tensor<S, E, Cpu>) {
        if self.skip_shared_zeros && is_shared_zero(t) {
            return;
        }
        self.buf.resize(t.shape().num_elements(), E::zero());
        t.copy_into(&mut self.buf);
        (self.f)(&self.buf);
    }
}

/// `f` on each pair of tensors' values.
struct FoldSlices<F, E> {
    f: F,
    a: Vec<E>,
    b: Vec<E>,
    skip_shared_zeros: bool,
}
impl<E: Real, F: FnMut(&[E], &[E])> EachTensor<E> for FoldSlices<F, E>
where
    Cpu: Device<E>,
{
    type Viewer = (ViewTensorRef, ViewTensorRef);
    fn each<S: Shape>(&mut self, (a, b): (&Tensor<S, E, Cpu>, &Tensor<S, E, Cpu>)) {
        if self.skip_shared_zeros && (is_shared_zero(a) || is_shared_zero(b)) {
            return;
        }
        let n = a.shape().num_elements();
        self.a.resize(n, E::zero());
        self.b.resize(n, E::zero());
        a.copy_into(&mut self.a);
        b.copy_into(&mut self.b);
        (self.f)(&self.a, &self.b);
    }
}

/// `f` on each tensor's name and values.
struct EachNamedSlice<F, E> {
    f: F,
    buf: Vec<E>,
}
impl<E: Real, F: FnMut(&str, &[E])> EachTensor<E> for EachNamedSlice<F, E>
where
    Cpu: Device<E>,
{
    type Viewer = (ViewTensorRef, ViewTensorName);
    fn each<S: Shape>(&mut self, (t, name): (&Tensor<S, E, Cpu>, String)) {
        self.buf.resize(t.shape().num_elements(), E::zero());
        t.copy_into(&mut self.buf);
        (self.f)(&tensor_label(name), &self.buf);
    }
}

/// Each tensor replaced by new zeros (a new tensor id).
struct FreshZeros;
impl<E: Real> EachTensor<E> for FreshZeros
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorMut;
    fn each<S: Shape>(&mut self, t: &mut Tensor<S, E, Cpu>) {
        *t = t.device().zeros_like(t.shape());
    }
}

/// Every frozen tensor and every trainable one `touched` marks (all when `None`) copied onto
/// `dev`.
struct CopyTo<'d> {
    dev: &'d Cpu,
    touched: Marks<'d>,
}
impl<E: Real> EachTensor<E> for CopyTo<'_>
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorMut;
    fn each<S: Shape>(&mut self, t: &mut Tensor<S, E, Cpu>) {
        if self.touched.next_marked() {
            *t = self.dev.tensor_from_vec(crate::real::values(t), *t.shape());
        }
    }
    fn frozen<S: Shape>(&mut self, t: &mut Tensor<S, E, Cpu>) {
        *t = self.dev.tensor_from_vec(crate::real::values(t), *t.shape());
    }
}

/// Walks a mask of the trainable tensors (in visiting order) alongside a pass: `None` marks
/// every tensor.
pub(crate) struct Marks<'a> {
    marks: Option<&'a [bool]>,
    next: usize,
}

impl<'a> Marks<'a> {
    pub(crate) fn new(marks: Option<&'a [bool]>) -> Self {
        Self { marks, next: 0 }
    }

    /// Whether the next tensor is marked.
    pub(crate) fn next_marked(&mut self) -> bool {
        let marked = self.marks.is_none_or(|marks| marks[self.next]);
        self.next += 1;
        marked
    }
}

/// Each tensor replaced by its gradient in `grads` where `touched` marks it, by a shared zero
/// elsewhere; frozen ones by zeros.
struct TakeGradientOn<'g, E: Real> {
    grads: &'g Gradients<E, Cpu>,
    touched: Marks<'g>,
}
impl<E: Real> EachTensor<E> for TakeGradientOn<'_, E>
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorMut;
    fn each<S: Shape>(&mut self, t: &mut Tensor<S, E, Cpu>) {
        *t = if self.touched.next_marked() {
            self.grads.get(&*t)
        } else {
            crate::shared_zeros::shared_zeros(*t.shape())
        };
    }
    fn frozen<S: Shape>(&mut self, t: &mut Tensor<S, E, Cpu>) {
        t.fill_with_zeros();
    }
}

/// Counts the trainable tensors.
struct CountTensors(usize);
impl<E: Real> EachTensor<E> for CountTensors
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorRef;
    fn each<S: Shape>(&mut self, _t: &Tensor<S, E, Cpu>) {
        self.0 += 1;
    }
}

/// Records, tensor by tensor, whether each is a shared zero.
struct SharedZeroMask<'a>(&'a mut Vec<bool>);
impl<E: Real> EachTensor<E> for SharedZeroMask<'_>
where
    Cpu: Device<E>,
{
    type Viewer = ViewTensorRef;
    fn each<S: Shape>(&mut self, t: &Tensor<S, E, Cpu>) {
        self.0.push(is_shared_zero(t));
    }
}

/// The name of the first tensor (among those `among` marks) holding a NaN or an infinity;
/// shared zeros need no look.
struct FirstNonFinite<'a, E> {
    among: Marks<'a>,
    buf: Vec<E>,
    found: Option<String>,
}
impl<E: Real> EachTensor<E> for FirstNonFinite<'_, E>
where
    Cpu: Device<E>,
{
    type Viewer = (ViewTensorRef, ViewTensorName);
    fn each<S: Shape>(&mut self, (t, name): (&Tensor<S, E, Cpu>, String)) {
        if !self.among.next_marked() || self.found.is_some() || is_shared_zero(t) {
            return;
        }
        self.buf.resize(t.shape().num_elements(), E::zero());
        t.copy_into(&mut self.buf);
        if self.buf.iter().any(|v| !v.is_finite()) {
            self.found = Some(tensor_label(name));
        }
    }
}
