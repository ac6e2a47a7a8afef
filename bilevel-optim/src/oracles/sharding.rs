//! How one pass runs: on the calling thread, or split over batch shards on the pool's threads
//! and added with the shards' weights ([`crate::shards`]), and across processes
//! ([`crate::distributed`]): process r of R with T threads computes global shards
//! `r·T .. r·T + T` of `R·T`, adds its own, and the processes' partial sums are all-gathered and
//! added in rank order.

use std::borrow::Cow;
use std::sync::Arc;

use dfdx::prelude::{AsArray, Backward, Cpu, Device};

use crate::distributed::{ProcessGroup, Reader, Wire};
use crate::error::BilevelError;
use crate::params::Params;
use crate::passes::{anchored_on, lower_grad_pass, upper_pass, written_second_order_pass};
use crate::passes::{LossGrad, SecondOrder};
use crate::problem::{BilevelProblem, ShardedProblem};
use crate::real::Real;
use crate::shards::ShardPool;

/// The sharded passes, instantiated by [`Oracles::sharded`] and [`Oracles::distributed`] where
/// the problem's thread-safety bounds are known, so that `Oracles` and the methods using it need
/// no such bounds.
///
/// [`Oracles::sharded`]: super::Oracles::sharded
/// [`Oracles::distributed`]: super::Oracles::distributed
pub(super) struct Sharding<E: Real, P: BilevelProblem<E>>
where
    Cpu: Device<E>,
{
    pub(super) pool: ShardPool,
    /// The other processes sharing every pass, if any.
    pub(super) group: Option<Arc<dyn ProcessGroup>>,
    pub(super) upper: UpperSharded<E, P>,
    pub(super) lower: LowerSharded<E, P>,
}

impl<E: Real, P: BilevelProblem<E>> Sharding<E, P>
where
    Cpu: Device<E>,
{
    /// The global index of this process's first shard, and the number of shards in all.
    fn layout(&self) -> (usize, usize) {
        let threads = self.pool.shards();
        match &self.group {
            None => (0, threads),
            Some(g) => (g.rank() * threads, g.size() * threads),
        }
    }

    /// `Σ_k w_k r_k` over every shard of every process, from this process's `(w_k, r_k)` or
    /// its error. `template` gives a value of the result's shape to decode another process's
    /// sum into. An error in any process (a malformed written gradient in one of its shards,
    /// say) is sent to all of them, so that all fail together instead of waiting for each other.
    fn combine<T: Accumulate<E>>(
        &self,
        local: Result<Vec<Option<(f64, T)>>, BilevelError>,
        template: impl Fn() -> T,
    ) -> Result<T, BilevelError> {
        let empty = || BilevelError::InvalidConfig {
            field: "batch",
            reason: "has no sample in any shard".into(),
        };
        let Some(group) = &self.group else {
            return weighted_sum(local?).ok_or_else(empty);
        };
        // A lone shard is sent with its weight, so that with one thread per process the sum is
        // formed exactly as one process with one thread per shard forms it.
        let mine = local.map(|local| match local.iter().flatten().count() {
            1 => local.into_iter().flatten().next(),
            _ => weighted_sum(local).map(|sum| (1.0, sum)),
        });
        let mut wire = Wire::default();
        match &mine {
            Ok(None) => wire.u8(NOTHING),
            Ok(Some((w, r))) => {
                wire.u8(SUM);
                wire.f64(*w);
                r.encode(&mut wire);
            }
            Err(e) => {
                wire.u8(FAILED);
                wire.bytes.extend_from_slice(e.to_string().as_bytes());
            }
        }
        let messages = group.all_gather(&wire.bytes)?;
        let me = group.rank();
        let mut mine = Some(mine?);
        let mut parts = Vec::with_capacity(messages.len());
        for (rank, message) in messages.iter().enumerate() {
            if rank == me {
                parts.push(mine.take().flatten());
                continue;
            }
            let mut read = Reader::new(message, rank);
            let part = match read.u8()? {
                NOTHING => None,
                SUM => {
                    let w = read.f64()?;
                    let mut r = template();
                    r.decode(&mut read)?;
                    Some((w, r))
                }
                _ => {
                    return Err(BilevelError::Distributed(format!(
                        "rank {rank} failed its part of the pass: {}",
                        String::from_utf8_lossy(&message[1..])
                    )))
                }
            };
            read.finish()?;
            parts.push(part);
        }
        weighted_sum(parts).ok_or_else(empty)
    }
}

/// The first byte of a process's message: its shards had no sample, ...
const NOTHING: u8 = 0;
/// ... a weight and a sum follow, ...
const SUM: u8 = 1;
/// ... or an error's text follows.
const FAILED: u8 = 2;

pub(super) type UpperSharded<E, P> = fn(
    &Sharding<E, P>,
    &P,
    &<P as BilevelProblem<E>>::X,
    &<P as BilevelProblem<E>>::Y,
    &<P as BilevelProblem<E>>::UpperBatch,
) -> Result<
    LossGrad<E, <P as BilevelProblem<E>>::X, <P as BilevelProblem<E>>::Y>,
    BilevelError,
>;

pub(super) type LowerSharded<E, P> = fn(
    &Sharding<E, P>,
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
            let touched = problem.lower_touches(y, batch);
            let loss = problem.lower_loss_in_y(x, y, batch);
            let value = loss.array();
            let grads = anchored_on(loss, x, y, touched.as_deref()).backward();
            LowerResult::GradY(LossGradY {
                value,
                dy: y.gradient_on(&grads, touched.as_deref()),
            })
        }
        LowerPass::SecondOrder(v) => {
            LowerResult::SecondOrder(written_second_order_pass(problem, x, y, v, batch)?)
        }
    })
}

/// `t` itself on shard 0 (the calling thread), a copy on this worker's device otherwise: of
/// the tensors `touched` marks only, when the problem says which its shard touches.
fn on_shard<'t, E: Real, T: Params<E>>(t: &'t T, k: usize, touched: Option<&[bool]>) -> Cow<'t, T>
where
    Cpu: Device<E>,
{
    if k == 0 {
        Cow::Borrowed(t)
    } else {
        Cow::Owned(t.on_device_where(&crate::real::device(), touched))
    }
}

pub(super) fn upper_sharded<E: Real, P>(
    sharding: &Sharding<E, P>,
    problem: &P,
    x: &P::X,
    y: &P::Y,
    batch: &P::UpperBatch,
) -> Result<LossGrad<E, P::X, P::Y>, BilevelError>
where
    Cpu: Device<E>,
    P: ShardedProblem<E> + Sync,
    P::X: Send + Sync,
    P::Y: Send + Sync,
    P::UpperBatch: Sync,
{
    let (first, parts) = sharding.layout();
    let local = sharding.pool.run(|k| {
        let (w, shard) = problem.upper_shard(batch, first + k, parts)?;
        let touched = problem.upper_touches(y, &shard);
        let y = on_shard(y, k, touched.as_deref());
        let r = upper_pass(problem, &*on_shard(x, k, None), &*y, &shard);
        Some((w, r))
    });
    sharding.combine(Ok(local), || LossGrad {
        value: E::zero(),
        dx: x.clone(),
        dy: y.clone(),
    })
}

pub(super) fn lower_sharded<E: Real, P>(
    sharding: &Sharding<E, P>,
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
    let (first, parts) = sharding.layout();
    let local = sharding.pool.run(|k| {
        let (w, shard) = problem.lower_shard(batch, first + k, parts)?;
        let touched = problem.lower_touches(y, &shard);
        let (x, y) = (on_shard(x, k, None), on_shard(y, k, touched.as_deref()));
        let r = match pass {
            LowerPass::SecondOrder(v) => {
                let v = on_shard(v, k, touched.as_deref());
                lower_pass(problem, &*x, &*y, &shard, LowerPass::SecondOrder(&*v))
            }
            other => lower_pass(problem, &*x, &*y, &shard, other),
        };
        Some(r.map(|r| (w, r)))
    });
    let local = local
        .into_iter()
        .map(Option::transpose)
        .collect::<Result<Vec<_>, _>>();
    sharding.combine(local, || match pass {
        LowerPass::Grad => LowerResult::Grad(LossGrad {
            value: E::zero(),
            dx: x.clone(),
            dy: y.clone(),
        }),
        LowerPass::GradY => LowerResult::GradY(LossGradY {
            value: E::zero(),
            dy: y.clone(),
        }),
        LowerPass::SecondOrder(_) => LowerResult::SecondOrder(SecondOrder {
            written_grad_y: y.clone(),
            hvp: y.clone(),
            jvp: x.clone(),
        }),
    })
}

/// What the shards of a pass return, added with the shards' weights and sent between processes.
trait Accumulate<E> {
    /// `self ← w · self`.
    fn scale(&mut self, w: f64);
    /// `self ← self + w · other`.
    fn add_scaled(&mut self, w: f64, other: &Self);
    /// Appends the values at their exact bits.
    fn encode(&self, wire: &mut Wire);
    /// Overwrites the values from what [`Accumulate::encode`] wrote.
    fn decode(&mut self, read: &mut Reader<'_>) -> Result<(), BilevelError>;
}

/// `Σ_k w_k r_k` over the shards that had samples, in shard order (so a run is reproducible);
/// `None` when no shard had any.
fn weighted_sum<E, T: Accumulate<E>>(parts: Vec<Option<(f64, T)>>) -> Option<T> {
    let mut parts = parts.into_iter().flatten();
    let (w0, mut sum) = parts.next()?;
    if w0 != 1.0 {
        sum.scale(w0);
    }
    for (w, r) in parts {
        sum.add_scaled(w, &r);
    }
    Some(sum)
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
    fn encode(&self, wire: &mut Wire) {
        wire.real(self.value);
        wire.params(&self.dx);
        wire.params(&self.dy);
    }
    fn decode(&mut self, read: &mut Reader<'_>) -> Result<(), BilevelError> {
        self.value = read.real()?;
        read.params(&mut self.dx)?;
        read.params(&mut self.dy)
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
    fn encode(&self, wire: &mut Wire) {
        wire.real(self.value);
        wire.params(&self.dy);
    }
    fn decode(&mut self, read: &mut Reader<'_>) -> Result<(), BilevelError> {
        self.value = read.real()?;
        read.params(&mut self.dy)
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
    fn encode(&self, wire: &mut Wire) {
        wire.params(&self.written_grad_y);
        wire.params(&self.hvp);
        wire.params(&self.jvp);
    }
    fn decode(&mut self, read: &mut Reader<'_>) -> Result<(), BilevelError> {
        read.params(&mut self.written_grad_y)?;
        read.params(&mut self.hvp)?;
        read.params(&mut self.jvp)
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
    fn encode(&self, wire: &mut Wire) {
        match self {
            Self::Grad(r) => r.encode(wire),
            Self::GradY(r) => r.encode(wire),
            Self::SecondOrder(r) => r.encode(wire),
        }
    }
    fn decode(&mut self, read: &mut Reader<'_>) -> Result<(), BilevelError> {
        match self {
            Self::Grad(r) => r.decode(read),
            Self::GradY(r) => r.decode(read),
            Self::SecondOrder(r) => r.decode(read),
        }
    }
}
