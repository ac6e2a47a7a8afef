//! Exact first- and second-order oracles of a [`BilevelProblem`], with call counters.
//!
//! - `∇_x F, ∇_y F` (one backward of the upper loss), `∇_x G, ∇_y G` (one backward of the lower
//!   loss): ordinary dfdx autodiff.
//! - `∇²_yy G·v` and `∇²_xy G·v`: one backward over `⟨∇_y G, v⟩`, where `∇_y G` is the problem's
//!   written gradient. Exact up to rounding; no finite differences.
//!
//! All batches are drawn here, from one seeded generator, so every method sees data in the same
//! order and a run can be resumed from [`OracleState`].

mod counts;
mod first_use;
mod sharding;

use dfdx::prelude::{Cpu, Device};
use rand::{Rng, SeedableRng};

use std::sync::Arc;

use crate::check::{check_at, CheckConfig, CheckReport};
use crate::distributed::ProcessGroup;
use crate::error::BilevelError;
use crate::passes::upper_pass;
pub use crate::passes::{LossGrad, SecondOrder};
use crate::problem::{Batch, BilevelProblem, SampleRng, ShardedProblem};
use crate::real::Real;
use crate::shards::ShardPool;
use crate::written_grad::WrittenGrad;
pub use counts::{OracleCounts, OracleState};
use first_use::FirstUseCheck;
pub use first_use::CHECK_ENV;
use sharding::{lower_pass, lower_sharded, upper_sharded, LowerPass, LowerResult, Sharding};

fn no_split() -> BilevelError {
    BilevelError::InvalidConfig {
        field: "method",
        reason: "needs a problem whose data splits into a finite set of batches (lower_parts / upper_parts)"
            .into(),
    }
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
    /// Set by [`Oracles::between_passes`]: runs before every pass.
    between_passes: Option<Box<dyn FnMut() + Send>>,
}

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
            between_passes: None,
        }
    }

    /// Runs `hook` before every counted pass: for housekeeping that cannot wait for the end of an
    /// iteration, because one iteration may pass over every fixed batch of the data (SRBA's and
    /// SPABA's restarts) — such as emptying dfdx's allocation caches, which keep every buffer of
    /// every batch shape they are handed. It does not change what the passes compute.
    pub fn between_passes(&mut self, hook: Box<dyn FnMut() + Send>) {
        self.between_passes = Some(hook);
    }

    fn before_pass(&mut self) {
        if let Some(hook) = &mut self.between_passes {
            hook();
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
                group: None,
                upper: upper_sharded::<E, P>,
                lower: lower_sharded::<E, P>,
            });
        }
        Ok(oracles)
    }

    /// Like [`Oracles::sharded`], with every pass shared by the processes of `group` (MPI ranks:
    /// `distributed::Mpi` with the `mpi` feature), each running `threads` shards of it. Every process must
    /// build its oracles alike (same problem, data, `seed` and `threads`) and call the same
    /// oracles in the same order, as running the same program does: each then holds
    /// bit-identical results ([`crate::distributed`]). Batches, calls and counts are those of
    /// `new`; values equal those of `sharded` with `threads × group.size()` threads up to the
    /// order of floating-point sums (exactly, with one thread per process).
    pub fn distributed(
        problem: P,
        seed: u64,
        threads: usize,
        group: Arc<dyn ProcessGroup>,
    ) -> Result<Self, BilevelError>
    where
        P: ShardedProblem<E> + Sync,
        P::X: Send + Sync,
        P::Y: Send + Sync,
        P::UpperBatch: Sync,
        P::LowerBatch: Sync,
    {
        let mut oracles = Self::new(problem, seed);
        oracles.sharding = Some(Sharding {
            pool: ShardPool::new(threads)?,
            group: Some(group),
            upper: upper_sharded::<E, P>,
            lower: lower_sharded::<E, P>,
        });
        Ok(oracles)
    }

    /// The processes sharing every pass ([`Oracles::distributed`]), if any.
    pub fn process_group(&self) -> Option<&Arc<dyn ProcessGroup>> {
        self.sharding.as_ref().and_then(|s| s.group.as_ref())
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

    /// Starts an iteration: the problem draws what it draws once per iteration
    /// ([`BilevelProblem::begin_iteration`]). Every method built on
    /// [`crate::methods::rule::RuleOptimizer`] calls it first; a method written directly against
    /// [`crate::optimizer::BilevelOptimizer`] must call it at the start of its `step`.
    pub fn begin_iteration(&mut self) {
        self.problem.begin_iteration(&mut self.rng);
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

    /// Fixed lower batch `k` of the problem's split (`k < lower_parts`), for a pass over the
    /// whole lower data; an error when the problem has no split.
    pub fn lower_part(&mut self, k: usize) -> Result<P::LowerBatch, BilevelError> {
        self.problem.lower_part(k).ok_or_else(no_split)
    }

    /// Fixed upper batch `k` of the problem's split, like [`Oracles::lower_part`].
    pub fn upper_part(&mut self, k: usize) -> Result<P::UpperBatch, BilevelError> {
        self.problem.upper_part(k).ok_or_else(no_split)
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

    /// A coin from the batch generator that shows `true` with probability `p` (clamped to
    /// [0, 1]), for methods that restart at random (SPABA).
    pub fn draw_coin(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p.clamp(0.0, 1.0))
    }

    /// `F(x, y; ξ)`, `∇_x F`, `∇_y F` from one backward pass. Fails only when the processes
    /// of a distributed run cannot combine their parts ([`Oracles::distributed`]) or the batch
    /// is empty.
    pub fn upper_grad(
        &mut self,
        x: &P::X,
        y: &P::Y,
        batch: &P::UpperBatch,
    ) -> Result<LossGrad<E, P::X, P::Y>, BilevelError> {
        self.before_pass();
        self.counts.upper_grad += 1;
        self.counts.upper_samples += batch.size() as u64;
        match &self.sharding {
            Some(s) => (s.upper)(s, &self.problem, x, y, batch),
            None => Ok(upper_pass(&self.problem, x, y, batch)),
        }
    }

    /// `G(x, y; ζ)`, `∇_x G`, `∇_y G` from one backward pass (dfdx autodiff of the lower loss).
    /// Fails as [`Oracles::upper_grad`] does.
    pub fn lower_grad(
        &mut self,
        x: &P::X,
        y: &P::Y,
        batch: &P::LowerBatch,
    ) -> Result<LossGrad<E, P::X, P::Y>, BilevelError> {
        self.before_pass();
        self.counts.lower_grad += 1;
        self.counts.lower_samples += batch.size() as u64;
        match self.lower(x, y, batch, LowerPass::Grad)? {
            LowerResult::Grad(r) => Ok(r),
            _ => unreachable!("a plain lower pass yields a loss and both gradients"),
        }
    }

    /// `G(x, y; ζ)` and `∇_y G` only (counted as a lower gradient call), from
    /// [`BilevelProblem::lower_loss_in_y`]: for SGD on y, where `∇_x G` would be thrown away.
    /// Fails as [`Oracles::upper_grad`] does.
    pub fn lower_grad_in_y(
        &mut self,
        x: &P::X,
        y: &P::Y,
        batch: &P::LowerBatch,
    ) -> Result<(E, P::Y), BilevelError> {
        self.before_pass();
        self.counts.lower_grad += 1;
        self.counts.lower_samples += batch.size() as u64;
        match self.lower(x, y, batch, LowerPass::GradY)? {
            LowerResult::GradY(r) => Ok((r.value, r.dy)),
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
        self.before_pass();
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
        self.before_pass();
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
            if report.point_not_finite() {
                // A diverged point says nothing about the problem: the pass below meets the same
                // non-finite values, which the method names as a divergence; the check waits for
                // a finite point.
                return self.unchecked_second_order(x, y, v, batch);
            }
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
        self.unchecked_second_order(x, y, v, batch)
    }

    fn unchecked_second_order(
        &self,
        x: &P::X,
        y: &P::Y,
        v: &P::Y,
        batch: &P::LowerBatch,
    ) -> Result<SecondOrder<P::X, P::Y>, BilevelError> {
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
            Some(s) => (s.lower)(s, &self.problem, x, y, batch, pass),
            None => lower_pass(&self.problem, x, y, batch, pass),
        }
    }
}
