//! Independent runs on several threads, and on several processes. Each run owns its devices and
//! tapes, and the global rayon pool has one thread (dfdx's products then run inline), so J runs
//! use J cores; under `mpirun`, the runs are dealt to the processes
//! ([`map_over_processes`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::run::processes::Processes;

/// The progress of a job of many runs (a grid search, a comparison running several at once):
/// one bar over the iterations of all the runs planned, advanced as each run finishes (or is
/// reused), with the time left. Runs on several threads cannot each draw a bar of their own.
/// A line per finished run is printed above the bar, or alone where stderr is no terminal.
pub struct JobProgress {
    bar: ProgressBar,
    visible: bool,
}

impl JobProgress {
    /// A bar for `iterations` iterations of `what`, hidden unless `visible`.
    pub fn new(what: &str, iterations: u64, visible: bool) -> Self {
        let bar = if visible {
            ProgressBar::new(iterations)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} it, {elapsed} elapsed, ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(what.to_string());
        Self { bar, visible }
    }

    /// A run of `iterations` iterations ended as `line` says.
    pub fn finished(&self, iterations: u64, line: &str) {
        if self.visible {
            if self.bar.is_hidden() {
                eprintln!("{line}");
            } else {
                self.bar.println(line);
            }
        }
        self.bar.inc(iterations);
    }

    /// Closes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `f` applied to every item by up to `jobs` threads taking items in order; the results come
/// back in the items' order.
pub fn map_in_threads<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(k) else { break };
                let r = f(item);
                results.lock().expect("no thread panics holding it")[k] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .expect("no thread panicked")
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

/// `f` applied to every item, the items dealt to the processes: item `i` runs in process
/// `owner(i) mod size`, with up to `jobs` threads per process. Every process gets every result,
/// in the items' order, exactly as `f` returned it (results travel as JSON, whose floats
/// round-trip exactly); an error travels as its text. A run that fails in one process does not
/// stop the others' runs. With one process this is [`map_in_threads`].
pub fn map_over_processes<T: Sync, R: Send + Serialize + DeserializeOwned>(
    items: &[T],
    jobs: usize,
    processes: &Processes,
    owner: impl Fn(usize) -> usize,
    f: impl Fn(&T) -> anyhow::Result<R> + Sync,
) -> anyhow::Result<Vec<anyhow::Result<R>>> {
    let Some(group) = processes.group() else {
        return Ok(map_in_threads(items, jobs, f));
    };
    let (rank, size) = (group.rank(), group.size());
    let mine: Vec<usize> = (0..items.len())
        .filter(|&i| owner(i) % size == rank)
        .collect();
    let results: Vec<(usize, Result<R, String>)> = mine
        .iter()
        .copied()
        .zip(map_in_threads(&mine, jobs, |&i| {
            f(&items[i]).map_err(|e| format!("{e:#}"))
        }))
        .collect();
    let message = serde_json::to_vec(&results).context("encoding this process's results")?;
    let messages = group
        .all_gather(&message)
        .context("gathering the processes' results")?;
    let mut all: Vec<Option<anyhow::Result<R>>> = (0..items.len()).map(|_| None).collect();
    for (from, message) in messages.iter().enumerate() {
        let results: Vec<(usize, Result<R, String>)> = serde_json::from_slice(message)
            .with_context(|| format!("the results of process {from} are malformed"))?;
        for (i, r) in results {
            let slot = all
                .get_mut(i)
                .with_context(|| format!("process {from} sent a result for item {i}"))?;
            *slot = Some(r.map_err(|e| anyhow::anyhow!("{e} (in process {from})")));
        }
    }
    all.into_iter()
        .enumerate()
        .map(|(i, r)| r.with_context(|| format!("no process ran item {i}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_items_order_with_any_number_of_threads() {
        let items: Vec<u64> = (0..37).collect();
        for jobs in [1, 2, 5, 100] {
            let squares = map_in_threads(&items, jobs, |&i| {
                // Uneven work, so threads finish out of order.
                let spin =
                    (0..(i * 7919) % 300 * 1000).fold(0u64, |a, k| a ^ std::hint::black_box(k));
                std::hint::black_box(spin);
                i * i
            });
            assert_eq!(squares, items.iter().map(|i| i * i).collect::<Vec<_>>());
        }
        assert!(map_in_threads(&Vec::<u64>::new(), 2, |&i| i).is_empty());
    }
}
