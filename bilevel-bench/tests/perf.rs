//! `perf` measures what the algorithm prescribes: BO-REP's oracle calls per iteration on the
//! hyper-opt task (I = 3, N = 3: one upper gradient, one lower gradient on average, one shared
//! second-order pass), and both oracle timings are positive. Timings are not asserted against
//! any figure (tests must not depend on the machine's speed).

use bilevel_bench::commands::perf::{measure_iterations, measure_oracles, PerfOptions};
use bilevel_bench::run::config::{RunConfig, TaskName};
use bilevel_bench::tasks::resolve_data_dir;

fn options() -> PerfOptions {
    let mut base = RunConfig::default();
    // Short texts keep the test quick; the oracle counts do not depend on sizes.
    base.hyper_opt.max_len = 8;
    base.hyper_opt.batch = 16;
    PerfOptions {
        task: TaskName::HyperOpt,
        iters: 6,
        seed: 0,
        oracle_reps: 2,
        threads: 1,
        base,
    }
}

#[test]
fn perf_counts_the_prescribed_oracle_calls() {
    let data = resolve_data_dir(None).unwrap();
    // Batch shards on two threads make the same calls.
    for threads in [1, 2] {
        let f = measure_iterations(
            &PerfOptions {
                threads,
                ..options()
            },
            &data,
        )
        .unwrap();
        assert_eq!(f.iteration_ms.len(), 6);
        assert_eq!(f.calls_per_iter, [1.0, 1.0, 1.0, 1.0], "{threads} threads");
        assert!(f.ms_per_iter > 0.0 && f.ms_per_iter.is_finite());
        assert!(f.peak_process_mib.is_some_and(|m| m > 0.0));
        // The iterations' batches were laid out as packed sequences: at least one step each,
        // and never more steps than padding every one to the longest.
        let (sequences, steps, longest) = f.sequences;
        assert!(sequences > 0 && steps >= sequences && steps <= sequences * longest);
    }

    let o = measure_oracles(&options(), &data).unwrap();
    assert_eq!(o.batch_size, 16);
    assert!(o.plain_ms > 0.0 && o.second_order_ms > 0.0);
}
