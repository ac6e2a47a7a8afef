//! Exact first- and second-order oracles of a [`BilevelProblem`], with call counters.
//!
//! - `∇_x F, ∇_y F` (one backward of the upper loss), `∇_x G, ∇_y G` (one backward of the lower
//!   loss): ordinary dfdx autodiff.
//! - `∇²_yy G·v` and `∇²_xy G·v`: one backward over `⟨∇_y G, v⟩`, where `∇_y G` is the problem's
//!   written gradient. Exact up to rounding; no finite differences.
//!
//! All batches are drawn here, from one seeded generator, so every method sees data in the same
//! order and a run can be resumed from [`OracleState`].

use std::borrow::Cow;

use dfdx::prelude::{AsArray, Backward, Cpu, Device};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::check::{check_at, CheckConfig, CheckReport};
use crate::error::BilevelError;
use crate::params::Params;
use crate::passes::{anchored, lower_grad_pass, upper_pass, written_second_order_pass};
pub use crate::passes::{LossGrad, SecondOrder};
use crate::problem::{Batch, BilevelProblem, SampleRng, ShardedProblem};
use crate::real::Real;
use crate::shards::ShardPool;
use crate::written_grad::WrittenGrad;

fn no_split() -> BilevelError {
    BilevelError::InvalidConfig {
        field: "method",
        reason: "needs a problem whose data splits into a finite set of batches (lower_parts / upper_parts)"
            .into(),
    }
}

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

/// A problem together with its batch generator and call counters.
pub struct Oracles<E: Real, P: BilevelProblem<E>>
where
    Cpu: Device<E>,
{
    problem: P,
    rng: SampleRng,
    counts: OracleCounts,
    /// Set by [`Oracles::sharded`]: every pass is split over batch shards on several threads.
    sharding: Option<Sharding<E, P>>,
    first_use_check: FirstUseCheck,
}

/// The check of the problem ([`crate::check`]) that runs at the first second-order call.
#[derive(Debug, Clone)]
enum FirstUseCheck {
    Off,
    Pending(CheckConfig),
    Done(CheckReport),
}

/// The environment variable that turns the first-use check on (`1`) or off (`0`) whatever the
/// build, e.g. `BILEVEL_CHECK=1 cargo run --release ...` to check a release run.
pub const CHECK_ENV: &str = "BILEVEL_CHECK";

impl FirstUseCheck {
    /// On in debug builds (so every test checks its problem), off in release; [`CHECK_ENV`]
    /// overrides both.
    fn default_for<E: Real>() -> Self {
        let on = match std::env::var(CHECK_ENV).as_deref() {
            Ok("1") => true,
            Ok("0") => false,
            _ => cfg!(debug_assertions),
        };
        if on {
            Self::Pending(CheckConfig::for_precision::<E>())
        } else {
            Self::Off
        }
    }
}

/// The sharded passes, instantiated by [`Oracles::sharded`] where the problem's thread-safety
/// bounds are known, so that `Oracles` and the methods using it need no such bounds.
struct Sharding<E: Real, P: BilevelProblem<E>>
where
    Cpu: Device<E>,
{
    pool: ShardPool,
    upper: UpperSharded<E, P>,
    lower: LowerSharded<E, P>,
}

type UpperSharded<E, P> =
    fn(
        &ShardPool,
        &P,
        &<P as BilevelProblem<E>>::X,
        &<P as BilevelProblem<E>>::Y,
        &<P as BilevelProblem<E>>::UpperBatch,
    ) -> LossGrad<E, <P as BilevelProblem<E>>::X, <P as BilevelProblem<E>>::Y>;

type LowerSharded<E, P> = fn(
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

impl<E: Real, P: BilevelProblem<E>> Oracles<E, P>
where
    Cpu: Device<E>,
{
    /// Wraps `problem`; batches are drawn from a generator seeded with `seed`.
    pub fn new(problem: P, seed: u64) -> Self {
        Self {
            problem,
            rng: SampleRng::seed_from_u64(seed),
            counts: OracleCounts::default(),
            sharding: None,
            first_use_check: FirstUseCheck::default_for::<E>(),
        }
    }

    /// Whether the first second-order call first checks the problem at its point and batch
    /// ([`crate::check::check_at`], without the upper loss): on by default in debug builds, off
    /// in release, and as [`CHECK_ENV`] says when it is set. A fault makes that call fail with
    /// [`BilevelError::ProblemCheck`]; the check runs uncounted passes and draws nothing, so it
    /// never changes a run's trajectory.
    pub fn check_on_first_use(&mut self, on: bool) {
        self.first_use_check = if on {
            FirstUseCheck::Pending(CheckConfig::for_precision::<E>())
        } else {
            FirstUseCheck::Off
        };
    }

    /// Like [`Oracles::check_on_first_use`], with the given tolerances.
    pub fn check_on_first_use_with(&mut self, config: CheckConfig) {
        self.first_use_check = FirstUseCheck::Pending(config);
    }

    /// The report of the first-use check, once it has run.
    pub fn first_use_report(&self) -> Option<&CheckReport> {
        match &self.first_use_check {
            FirstUseCheck::Done(report) => Some(report),
            _ => None,
        }
    }

    /// Like [`Oracles::new`], with every pass split over `threads` shards of its batch, one
    /// thread each ([`crate::shards`]). Batches, calls and counts are those of `new`; values
    /// differ only by the order of floating-point sums. `threads = 1` is `new`.
    pub fn sharded(problem: P, seed: u64, threads: usize) -> Result<Self, BilevelError>
    where
        P: ShardedProblem<E> + Sync,
        P::X: Send + Sync,
        P::Y: Send + Sync,
        P::UpperBatch: Sync,
        P::LowerBatch: Sync,
    {
        let mut oracles = Self::new(problem, seed);
        let pool = ShardPool::new(threads)?;
        if pool.shards() > 1 {
            oracles.sharding = Some(Sharding {
                pool,
                upper: upper_sharded::<E, P>,
                lower: lower_sharded::<E, P>,
            });
        }
        Ok(oracles)
    }

    /// The devices of the shard threads (none without sharding), whose allocation caches the
    /// caller manages like those of its own devices.
    pub fn worker_devices(&self) -> Vec<Cpu> {
        self.sharding
            .as_ref()
            .map_or_else(Vec::new, |s| s.pool.worker_devices())
    }

    /// The wrapped problem.
    pub fn problem(&self) -> &P {
        &self.problem
    }

    /// The wrapped problem, mutably (its sampler state, for checkpoints).
    pub fn problem_mut(&mut self) -> &mut P {
        &mut self.problem
    }

    /// Applies the problem's constraint on x ([`BilevelProblem::project_x`]): every method calls
    /// this right after its x step.
    pub fn project_x(&self, x: &mut P::X) {
        self.problem.project_x(x);
    }

    /// Cumulative oracle counts.
    pub fn counts(&self) -> OracleCounts {
        self.counts
    }

    /// Draws a fresh upper batch ξ.
    pub fn upper_batch(&mut self) -> P::UpperBatch {
        self.problem.sample_upper(&mut self.rng)
    }

    /// Draws a fresh lower batch ζ.
    pub fn lower_batch(&mut self) -> P::LowerBatch {
        self.problem.sample_lower(&mut self.rng)
    }

    /// A fixed lower batch drawn uniformly from the problem's finite split, with its index
    /// (for per-batch memories). Fails when the problem has no finite split.
    pub fn indexed_lower_batch(&mut self) -> Result<(usize, P::LowerBatch), BilevelError> {
        let n = self
            .problem
            .lower_parts()
            .filter(|&n| n > 0)
            .ok_or_else(no_split)?;
        let k = self.rng.gen_range(0..n);
        Ok((k, self.problem.lower_part(k).ok_or_else(no_split)?))
    }

    /// Like [`Oracles::indexed_lower_batch`], for the upper data.
    pub fn indexed_upper_batch(&mut self) -> Result<(usize, P::UpperBatch), BilevelError> {
        let n = self
            .problem
            .upper_parts()
            .filter(|&n| n > 0)
            .ok_or_else(no_split)?;
        let k = self.rng.gen_range(0..n);
        Ok((k, self.problem.upper_part(k).ok_or_else(no_split)?))
    }

    /// A draw from the batch generator, for methods whose randomness is part of the data order
    /// (the truncation of a randomized Neumann series): uniform in `0..n`.
    pub fn draw_index(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n)
    }

    /// `F(x, y; ξ)`, `∇_x F`, `∇_y F` from one backward pass.
    pub fn upper_grad(
        &mut self,
        x: &P::X,
        y: &P::Y,
        batch: &P::UpperBatch,
    ) -> LossGrad<E, P::X, P::Y> {
        self.counts.upper_grad += 1;
        self.counts.upper_samples += batch.size() as u64;
        match &self.sharding {
            Some(s) => (s.upper)(&s.pool, &self.problem, x, y, batch),
            None => upper_pass(&self.problem, x, y, batch),
        }
    }

    /// `G(x, y; ζ)`, `∇_x G`, `∇_y G` from one backward pass (dfdx autodiff of the lower loss).
    pub fn lower_grad(
        &mut self,
        x: &P::X,
        y: &P::Y,
        batch: &P::LowerBatch,
    ) -> LossGrad<E, P::X, P::Y> {
        self.counts.lower_grad += 1;
        self.counts.lower_samples += batch.size() as u64;
        match self.lower(x, y, batch, LowerPass::Grad) {
            Ok(LowerResult::Grad(r)) => r,
            _ => unreachable!("a plain lower pass yields a loss and both gradients"),
        }
    }

    /// `G(x, y; ζ)` and `∇_y G` only (counted as a lower gradient call), from
    /// [`BilevelProblem::lower_loss_in_y`]: for SGD on y, where `∇_x G` would be thrown away.
    pub fn lower_grad_in_y(&mut self, x: &P::X, y: &P::Y, batch: &P::LowerBatch) -> (E, P::Y) {
        self.counts.lower_grad += 1;
        self.counts.lower_samples += batch.size() as u64;
        match self.lower(x, y, batch, LowerPass::GradY) {
            Ok(LowerResult::GradY(r)) => (r.value, r.dy),
            _ => unreachable!("a y-only lower pass yields a loss and ∇_y G"),
        }
    }

    /// `∇²_yy G·v`, `∇²_xy G·v` (and the value of `∇_y G`) from one backward pass over
    /// `⟨∇_y G(x, y; ζ), v⟩`.
    pub fn hvp_jvp(
        &mut self,
        x: &P::X,
        y: &P::Y,
        v: &P::Y,
        batch: &P::LowerBatch,
    ) -> Result<SecondOrder<P::X, P::Y>, BilevelError> {
        self.count_pass(1, 1, batch);
        self.second_order_pass(x, y, v, batch)
    }

    /// `∇²_yy G·v` only (counted as one HVP). The pass is the same as [`Oracles::hvp_jvp`]'s.
    pub fn hvp(
        &mut self,
        x: &P::X,
        y: &P::Y,
        v: &P::Y,
        batch: &P::LowerBatch,
    ) -> Result<P::Y, BilevelError> {
        self.count_pass(1, 0, batch);
        Ok(self.second_order_pass(x, y, v, batch)?.hvp)
    }

    /// `∇²_xy G·v` only (counted as one cross product).
    pub fn jvp(
        &mut self,
        x: &P::X,
        y: &P::Y,
        v: &P::Y,
        batch: &P::LowerBatch,
    ) -> Result<P::X, BilevelError> {
        self.count_pass(0, 1, batch);
        Ok(self.second_order_pass(x, y, v, batch)?.jvp)
    }

    /// The value of the problem's written gradient `∇_y G(x, y; ζ)`, without any backward pass.
    /// Counted as a lower gradient call. Useful to check a written gradient against
    /// [`Oracles::lower_grad`], which differentiates the lower loss with dfdx.
    pub fn written_lower_grad_y(
        &mut self,
        x: &P::X,
        y: &P::Y,
        batch: &P::LowerBatch,
    ) -> Result<P::Y, BilevelError> {
        self.counts.lower_grad += 1;
        self.counts.lower_samples += batch.size() as u64;
        let mut grad = WrittenGrad::new(y, None);
        self.problem.write_lower_grad_y(x, y, batch, &mut grad);
        Ok(grad.finish(y)?.0)
    }

    /// Saves the counters and the batch generator's position.
    pub fn state(&self) -> OracleState {
        OracleState {
            counts: self.counts,
            seed: self.rng.get_seed(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos(),
        }
    }

    /// Restores what [`Oracles::state`] saved.
    pub fn load_state(&mut self, state: &OracleState) {
        self.counts = state.counts;
        self.rng = SampleRng::from_seed(state.seed);
        self.rng.set_stream(state.stream);
        self.rng.set_word_pos(state.word_pos);
    }

    /// Counts one second-order pass over `batch` that the caller uses for `hvp` HVPs and `jvp`
    /// cross products.
    fn count_pass(&mut self, hvp: u64, jvp: u64, batch: &P::LowerBatch) {
        self.counts.hvp += hvp;
        self.counts.jvp += jvp;
        self.counts.lower_samples += batch.size() as u64;
    }

    fn second_order_pass(
        &mut self,
        x: &P::X,
        y: &P::Y,
        v: &P::Y,
        batch: &P::LowerBatch,
    ) -> Result<SecondOrder<P::X, P::Y>, BilevelError> {
        if let FirstUseCheck::Pending(config) = &self.first_use_check {
            let report = check_at(&self.problem, x, y, batch, None, config);
            let open = report.inconclusive().count();
            if open > 0 {
                eprintln!(
                    "warning: the check of the problem at the first second-order call could not \
                     judge {open} of its {} comparisons (differences disagree near a kink such as \
                     max-pooling); bilevel_optim::check::check_problem in f64 checks them tightly",
                    report.findings.len()
                );
            }
            self.first_use_check = FirstUseCheck::Done(report.clone());
            report.into_result()?;
        }
        match self.lower(x, y, batch, LowerPass::SecondOrder(v))? {
            LowerResult::SecondOrder(r) => Ok(r),
            _ => unreachable!("a second-order pass yields ∇_y G, H·v and J·v"),
        }
    }

    /// One pass over a lower batch, sharded or not.
    fn lower(
        &self,
        x: &P::X,
        y: &P::Y,
        batch: &P::LowerBatch,
        pass: LowerPass<'_, P::Y>,
    ) -> Result<LowerResult<E, P::X, P::Y>, BilevelError> {
        match &self.sharding {
            Some(s) => (s.lower)(&s.pool, &self.problem, x, y, batch, pass),
            None => lower_pass(&self.problem, x, y, batch, pass),
        }
    }
}

/// What a pass over a lower batch computes.
enum LowerPass<'v, Y> {
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

enum LowerResult<E, X, Y> {
    Grad(LossGrad<E, X, Y>),
    GradY(LossGradY<E, Y>),
    SecondOrder(SecondOrder<X, Y>),
}

struct LossGradY<E, Y> {
    value: E,
    dy: Y,
}

fn lower_pass<E: Real, P: BilevelProblem<E>>(
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

fn upper_sharded<E: Real, P>(
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

fn lower_sharded<E: Real, P>(
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
