//! Independent runs on several threads. Each run owns its devices and tapes, and the global
//! rayon pool has one thread (dfdx's products then run inline), so J runs use J cores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

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
