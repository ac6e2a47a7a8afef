//! How one pass runs: on the calling thread, or split over batch shards on the pool's threads
//! and added with the shards' weights ([`crate::shards`]).

use std::borrow::Cow;

use dfdx::prelude::{AsArray, Backward, Cpu, Device};

use crate::error::BilevelError;
use crate::params::Params;
use crate::passes::{anchored, lower_grad_pass, upper_pass, written_second_order_pass};
use crate::passes::{LossGrad, SecondOrder};
use crate::problem::{BilevelProblem, ShardedProblem};
use crate::real::Real;
use crate::shards::ShardPool;

/// The sharded passes, instantiated by [`Oracles::sharded`] where the problem's thread-safety
/// bounds are known, so that `Oracles` and the methods using it need no such bounds.
pub(super) struct Sharding<E: Real, P: BilevelProblem<E>>
where
    Cpu: Device<E>,
{
    pub(super) pool: ShardPool,
    pub(super) upper: UpperSharded<E, P>,
    pub(super) lower: LowerSharded<E, P>,
}

pub(super) type UpperSharded<E, P> =
    fn(
        &ShardPool,
        &P,
        &<P as BilevelProblem<E>>::X,
        &<P as BilevelProblem<E>>::Y,
        &<P as BilevelProblem<E>>::UpperBatch,
    ) -> LossGrad<E, <P as BilevelProblem<E>>::X, <P as BilevelProblem<E>>::Y>;

pub(super) type LowerSharded<E, P> = fn(
    &ShardPool,
    &P,
    &<P as BilevelProblem<E>>::X,
    &<P as BilevelProblem<E>>::Y,
    &<P as BilevelProblem<E>>::LowerBatch,
    LowerPass<'_, <P as BilevelProblem<E>>::Y>,
) -> Result<
    LowerResult<E, <P as BilevelProblem<E>>::X, <P as BilevelProblem<E>>::Y>,
    BilevelError,
>;

/// What a pass over a lower batch computes.
pub(super) enum LowerPass<'v, Y> {
    /// `G`, `∇_x G`, `∇_y G` by autodiff of the lower loss.
    Grad,
    /// `G`, `∇_y G` by autodiff of [`BilevelProblem::lower_loss_in_y`].
    GradY,
    /// `∇_y G` written, then `H·v` and `J·v` by one backward over `⟨∇_y G, v⟩`.
    SecondOrder(&'v Y),
}

// By hand: derived impls would require `Y: Copy`.
impl<Y> Clone for LowerPass<'_, Y> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Y> Copy for LowerPass<'_, Y> {}

pub(super) enum LowerResult<E, X, Y> {
    Grad(LossGrad<E, X, Y>),
    GradY(LossGradY<E, Y>),
    SecondOrder(SecondOrder<X, Y>),
}

pub(super) struct LossGradY<E, Y> {
    pub(super) value: E,
    pub(super) dy: Y,
}

pub(super) fn lower_pass<E: Real, P: BilevelProblem<E>>(
    problem: &P,
    x: &P::X,
    y: &P::Y,
    batch: &P::LowerBatch,
    pass: LowerPass<'_, P::Y>,
) -> Result<LowerResult<E, P::X, P::Y>, BilevelError>
where
    Cpu: Device<E>,
{
    Ok(match pass {
        LowerPass::Grad => LowerResult::Grad(lower_grad_pass(problem, x, y, batch)),
        LowerPass::GradY => {
            let loss = problem.lower_loss_in_y(x, y, batch);
            let value = loss.array();
            let grads = anchored(loss, x, y).backward();
            LowerResult::GradY(LossGradY {
                value,
                dy: y.gradient_from(&grads),
            })
        }
        LowerPass::SecondOrder(v) => {
            LowerResult::SecondOrder(written_second_order_pass(problem, x, y, v, batch)?)
        }
    })
}

/// `t` itself on shard 0 (the calling thread), a copy on this worker's device otherwise.
fn on_shard<E: Real, T: Params<E>>(t: &T, k: usize) -> Cow<'_, T>
where
    Cpu: Device<E>,
{
    if k == 0 {
        Cow::Borrowed(t)
    } else {
        Cow::Owned(t.on_device(&crate::real::device()))
    }
}

pub(super) fn upper_sharded<E: Real, P>(
    pool: &ShardPool,
    problem: &P,
    x: &P::X,
    y: &P::Y,
    batch: &P::UpperBatch,
) -> LossGrad<E, P::X, P::Y>
where
    Cpu: Device<E>,
    P: ShardedProblem<E> + Sync,
    P::X: Send + Sync,
    P::Y: Send + Sync,
    P::UpperBatch: Sync,
{
    let parts = pool.run(|k| {
        let (w, shard) = problem.upper_shard(batch, k, pool.shards())?;
        let r = upper_pass(problem, &*on_shard(x, k), &*on_shard(y, k), &shard);
        Some((w, r))
    });
    weighted_sum(parts)
}

pub(super) fn lower_sharded<E: Real, P>(
    pool: &ShardPool,
    problem: &P,
    x: &P::X,
    y: &P::Y,
    batch: &P::LowerBatch,
    pass: LowerPass<'_, P::Y>,
) -> Result<LowerResult<E, P::X, P::Y>, BilevelError>
where
    Cpu: Device<E>,
    P: ShardedProblem<E> + Sync,
    P::X: Send + Sync,
    P::Y: Send + Sync,
    P::LowerBatch: Sync,
{
    let parts = pool.run(|k| {
        let (w, shard) = problem.lower_shard(batch, k, pool.shards())?;
        let (x, y) = (on_shard(x, k), on_shard(y, k));
        let r = match pass {
            LowerPass::SecondOrder(v) => {
                let v = on_shard(v, k);
                lower_pass(problem, &*x, &*y, &shard, LowerPass::SecondOrder(&*v))
            }
            other => lower_pass(problem, &*x, &*y, &shard, other),
        };
        Some(r.map(|r| (w, r)))
    });
    let parts = parts.into_iter().flatten().collect::<Result<Vec<_>, _>>()?;
    Ok(weighted_sum(parts.into_iter().map(Some).collect()))
}

/// What the shards of a pass return, added with the shards' weights.
trait Accumulate<E> {
    /// `self ← w · self`.
    fn scale(&mut self, w: f64);
    /// `self ← self + w · other`.
    fn add_scaled(&mut self, w: f64, other: &Self);
}

/// `Σ_k w_k r_k` over the shards that had samples, in shard order (so a run is reproducible).
fn weighted_sum<E, T: Accumulate<E>>(parts: Vec<Option<(f64, T)>>) -> T {
    let mut parts = parts.into_iter().flatten();
    let (w0, mut sum) = parts.next().expect("a batch with at least one sample");
    if w0 != 1.0 {
        sum.scale(w0);
    }
    for (w, r) in parts {
        sum.add_scaled(w, &r);
    }
    sum
}

impl<E: Real, X: Params<E>, Y: Params<E>> Accumulate<E> for LossGrad<E, X, Y>
where
    Cpu: Device<E>,
{
    fn scale(&mut self, w: f64) {
        self.value = E::of(self.value.f64() * w);
        self.dx.scale(E::of(w));
        self.dy.scale(E::of(w));
    }
    fn add_scaled(&mut self, w: f64, other: &Self) {
        self.value = E::of(self.value.f64() + w * other.value.f64());
        self.dx.add_scaled(E::of(w), &other.dx);
        self.dy.add_scaled(E::of(w), &other.dy);
    }
}

impl<E: Real, Y: Params<E>> Accumulate<E> for LossGradY<E, Y>
where
    Cpu: Device<E>,
{
    fn scale(&mut self, w: f64) {
        self.value = E::of(self.value.f64() * w);
        self.dy.scale(E::of(w));
    }
    fn add_scaled(&mut self, w: f64, other: &Self) {
        self.value = E::of(self.value.f64() + w * other.value.f64());
        self.dy.add_scaled(E::of(w), &other.dy);
    }
}

impl<E: Real, X: Params<E>, Y: Params<E>> Accumulate<E> for SecondOrder<X, Y>
where
    Cpu: Device<E>,
{
    fn scale(&mut self, w: f64) {
        self.written_grad_y.scale(E::of(w));
        self.hvp.scale(E::of(w));
        self.jvp.scale(E::of(w));
    }
    fn add_scaled(&mut self, w: f64, other: &Self) {
        self.written_grad_y
            .add_scaled(E::of(w), &other.written_grad_y);
        self.hvp.add_scaled(E::of(w), &other.hvp);
        self.jvp.add_scaled(E::of(w), &other.jvp);
    }
}

impl<E: Real, X: Params<E>, Y: Params<E>> Accumulate<E> for LowerResult<E, X, Y>
where
    Cpu: Device<E>,
{
    fn scale(&mut self, w: f64) {
        match self {
            Self::Grad(r) => r.scale(w),
            Self::GradY(r) => r.scale(w),
            Self::SecondOrder(r) => r.scale(w),
        }
    }
    fn add_scaled(&mut self, w: f64, other: &Self) {
        match (self, other) {
            (Self::Grad(a), Self::Grad(b)) => a.add_scaled(w, b),
            (Self::GradY(a), Self::GradY(b)) => a.add_scaled(w, b),
            (Self::SecondOrder(a), Self::SecondOrder(b)) => a.add_scaled(w, b),
            _ => unreachable!("every shard runs the same pass"),
        }
    }
}
