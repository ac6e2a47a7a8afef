//! Worker threads for batch shards: how one oracle call uses several cores.
//!
//! Splitting a matrix product over threads does not pay at this library's shapes (64–400 rows),
//! so parallel oracles split the *batch* instead: each thread runs the whole pass (forward,
//! written gradient, backward) on its shard with its own tape, and the results are added
//! ([`crate::oracles::Oracles::sharded`]). Each worker is a persistent thread of its own
//! one-thread rayon pool, so
//! - its thread-local device ([`crate::real::device`]) and that device's allocation cache
//!   live as long as the pool (dfdx 0.13's cache must not be shared between threads);
//! - dfdx's matrix products, which split over `rayon::current_num_threads()`, run serially
//!   inside a worker instead of competing with the other shards.

use dfdx::prelude::Cpu;
use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::BilevelError;

/// `shards − 1` worker threads; shard 0 runs on the calling thread.
pub struct ShardPool {
    workers: Vec<ThreadPool>,
}

impl ShardPool {
    /// A pool for `shards` shards (at least 1; one shard needs no worker).
    pub fn new(shards: usize) -> Result<Self, BilevelError> {
        if shards == 0 {
            return Err(BilevelError::InvalidConfig {
                field: "threads",
                reason: "must be at least 1".into(),
            });
        }
        let workers = (1..shards)
            .map(|k| {
                ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("bilevel-shard-{k}"))
                    .build()
                    .map_err(|e| BilevelError::InvalidConfig {
                        field: "threads",
                        reason: format!("cannot start worker thread {k}: {e}"),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { workers })
    }

    /// The number of shards a batch is split into.
    pub fn shards(&self) -> usize {
        self.workers.len() + 1
    }

    /// `job(k)` for every shard `k`, at the same time: shard 0 on the calling thread, shard k ≥ 1
    /// on worker k. Results in shard order.
    pub fn run<R: Send>(&self, job: impl Fn(usize) -> R + Sync) -> Vec<R> {
        let slots: Vec<std::sync::Mutex<Option<R>>> =
            (0..self.shards()).map(|_| Default::default()).collect();
        let fill = |k: usize| {
            let r = job(k);
            *slots[k].lock().expect("a shard job panicked") = Some(r);
        };
        nest(&self.workers, 1, &fill);
        slots
            .into_iter()
            .map(|s| {
                s.into_inner()
                    .expect("a shard job panicked")
                    .expect("every shard ran")
            })
            .collect()
    }

    /// The devices the workers compute on (their thread-local [`crate::real::device`]), so the
    /// caller can manage their allocation caches like its own.
    pub fn worker_devices(&self) -> Vec<Cpu> {
        self.workers
            .iter()
            .map(|w| w.install(crate::real::device))
            .collect()
    }
}

/// The items of shard `k` when `n` items are split into `parts` contiguous shards whose sizes
/// differ by at most one.
pub fn shard_range(n: usize, k: usize, parts: usize) -> std::ops::Range<usize> {
    k * n / parts..(k + 1) * n / parts
}

/// Spawns shard `k` on the first worker, `k + 1` on the next, ..., and runs shard 0 on this
/// thread; returns when all are done (a panic in any of them propagates).
fn nest(workers: &[ThreadPool], k: usize, fill: &(dyn Fn(usize) + Sync)) {
    match workers.split_first() {
        None => fill(0),
        Some((pool, rest)) => pool.in_place_scope(|scope| {
            scope.spawn(move |_| fill(k));
            nest(rest, k + 1, fill);
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{shard_range, ShardPool};

    #[test]
    fn shard_ranges_cover_every_item_once() {
        for n in 0..20 {
            for parts in 1..5 {
                let ranges: Vec<_> = (0..parts).map(|k| shard_range(n, k, parts)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[parts - 1].end, n);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let sizes: Vec<_> = ranges.iter().map(|r| r.len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn every_shard_runs_once_on_its_own_thread() {
        let pool = ShardPool::new(3).unwrap();
        let caller = std::thread::current().id();
        let out = pool.run(|k| (k, std::thread::current().id(), rayon::current_num_threads()));
        assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(out[0].1, caller);
        assert!(out[1].1 != caller && out[2].1 != caller && out[1].1 != out[2].1);
        assert_eq!(
            (out[1].2, out[2].2),
            (1, 1),
            "products inside a worker run serially"
        );
        // Workers keep their thread (and so their device) from one call to the next.
        let again = pool.run(|_| std::thread::current().id());
        assert_eq!(again[1], out[1].1);
        assert!(ShardPool::new(0).is_err());
        assert_eq!(ShardPool::new(1).unwrap().run(|k| k * 10), vec![0]);
    }
}
