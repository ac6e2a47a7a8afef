//! Independent runs on several threads. Each run owns its devices and tapes, and the global
//! rayon pool has one thread (dfdx's products then run inline), so J runs use J cores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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
