//! `bilevel-bench perf`: how long a BO-REP iteration takes on a task, with the work per iteration
//! fixed by `tasks.md` (paper-level Algorithm 1: N plain SGD steps at t = 0, z₀ = 0, one lower
//! batch shared by the HVP and the cross product), and how a second-order oracle compares with a
//! plain gradient. Figures go to docs/performance.md.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use bilevel_models::matmul::{product_flops, product_peak_gflops};
use bilevel_models::sequence::laid_out;
use bilevel_optim::methods::borep::{BoRepConfig, ZInit};
use bilevel_optim::methods::MethodConfig;
use dfdx::prelude::*;

use crate::run::config::{RunConfig, TaskName};
use crate::run::iterate::AllocationCaches;
use crate::run::processes::Processes;
use crate::tasks::common::E;
use crate::tasks::dispatch::{with_task, TaskProblem, TaskVisitor};
use crate::tasks::Metrics;

/// What `perf` measures.
#[derive(Debug, Clone)]
pub struct PerfOptions {
    /// The task measured.
    pub task: TaskName,
    /// Measured iterations (after the excluded first one).
    pub iters: usize,
    /// The seed of the data and the batches.
    pub seed: u64,
    /// Repetitions of each oracle in `--oracle` mode.
    pub oracle_reps: usize,
    /// Batch shards per oracle call, one thread each.
    pub threads: usize,
    /// The task settings (sizes, batch, T); its method is ignored.
    pub base: RunConfig,
}

/// The method `perf` times: BO-REP with the task's official values, read as the paper does.
pub fn paper_level_borep(task: TaskName) -> MethodConfig {
    MethodConfig::new(BoRepConfig {
        z_init: ZInit::Zeros,
        jvp_with_updated_z: false,
        separate_jvp_batch: false,
        ..task.official_borep()
    })
}

/// One `perf` measurement of iterations.
#[derive(Debug, Clone)]
pub struct IterationFigures {
    /// Median over blocks of I consecutive iterations (one periodic update of y each) of the
    /// block's mean time per iteration.
    pub ms_per_iter: f64,
    /// Every measured iteration's time.
    pub iteration_ms: Vec<f64>,
    /// Oracle calls per iteration, averaged over the measured iterations.
    pub calls_per_iter: [f64; 4],
    /// Floating-point operations of the matrix products per iteration (mean over the measured
    /// iterations; `bilevel_models::matmul::product_flops`).
    pub product_flops_per_iter: f64,
    /// The sequences laid out while iterating, their summed steps, and the longest sequence
    /// of the process (`bilevel_models::sequence::laid_out`): how much of a padded RNN's work
    /// the packed one does.
    pub sequences: (u64, u64, u64),
    /// Peak resident memory while iterating (after data loading), and of the whole process.
    pub peak_iterating_mib: Option<f64>,
    /// Peak resident memory of the whole process (where the system reports it).
    pub peak_process_mib: Option<f64>,
}

/// One `--oracle` measurement.
#[derive(Debug, Clone)]
pub struct OracleFigures {
    /// Median of a plain gradient (dfdx's backward over g) on one lower batch.
    pub plain_ms: f64,
    /// Median of one second-order pass (∇_y g, H·v and J·v together) on the same batch.
    pub second_order_ms: f64,
    /// The size of the batch timed.
    pub batch_size: usize,
}

/// Runs `options.iters` BO-REP iterations after an excluded first one.
pub fn measure_iterations(
    options: &PerfOptions,
    data_dir: &Path,
) -> anyhow::Result<IterationFigures> {
    let config = perf_config(options);
    let dev = Cpu::seed_from_u64(options.seed);
    let caches = AllocationCaches::enable(&dev);
    let visitor = Iterations {
        options,
        method: paper_level_borep(options.task),
        caches: &caches,
    };
    with_task(&config, data_dir, &dev, visitor)
}

/// Times the plain lower gradient and the second-order pass on one lower batch of the task.
pub fn measure_oracles(options: &PerfOptions, data_dir: &Path) -> anyhow::Result<OracleFigures> {
    let config = perf_config(options);
    let dev = Cpu::seed_from_u64(options.seed);
    let caches = AllocationCaches::enable(&dev);
    with_task(
        &config,
        data_dir,
        &dev,
        OracleTimes {
            options,
            caches: &caches,
        },
    )
}

fn perf_config(options: &PerfOptions) -> RunConfig {
    RunConfig {
        task: options.task,
        seed: options.seed,
        method: None,
        ..options.base.clone()
    }
}

struct Iterations<'a> {
    options: &'a PerfOptions,
    method: MethodConfig,
    caches: &'a AllocationCaches,
}

impl TaskVisitor<E> for Iterations<'_> {
    type Output = IterationFigures;

    fn visit<P: TaskProblem<E>>(
        self,
        _model: &str,
        problem: P,
        mut x: P::X,
        mut y: P::Y,
        _evaluate: impl FnMut(&P::X, &P::Y) -> Metrics,
    ) -> anyhow::Result<IterationFigures> {
        let period = self.method.get::<BoRepConfig>().map_or(1, |c| c.period);
        let mut method = self.method.build(&x, &y, &problem)?;
        let mut oracles = self.caches.oracles(
            problem,
            self.options.seed,
            self.options.threads,
            &Processes::single(),
        )?;
        let peak_process_before = peak_resident_mib();
        let reset = reset_peak_resident();
        // The first iteration refines y (N SGD steps) and warms the allocator: excluded.
        method.step(&mut oracles, &mut x, &mut y)?;
        self.caches.empty();
        let before = oracles.counts();
        let flops_before = product_flops();
        let sequences_before = laid_out();
        let mut iteration_ms = Vec::with_capacity(self.options.iters);
        for _ in 0..self.options.iters {
            let start = Instant::now();
            method.step(&mut oracles, &mut x, &mut y)?;
            iteration_ms.push(start.elapsed().as_secs_f64() * 1e3);
            self.caches.empty();
        }
        let calls = oracles.counts().since(&before);
        let n = self.options.iters as f64;
        let product_flops_per_iter = (product_flops() - flops_before) as f64 / n;
        let (sequences, steps, longest) = laid_out();
        let sequences = (
            sequences - sequences_before.0,
            steps - sequences_before.1,
            longest,
        );
        let peak_iterating = reset.then(peak_resident_mib).flatten();
        Ok(IterationFigures {
            ms_per_iter: median_of_block_means(&iteration_ms, period),
            calls_per_iter: [
                calls.upper_grad as f64 / n,
                calls.lower_grad as f64 / n,
                calls.hvp as f64 / n,
                calls.jvp as f64 / n,
            ],
            iteration_ms,
            product_flops_per_iter,
            sequences,
            peak_iterating_mib: peak_iterating,
            peak_process_mib: peak_resident_mib()
                .zip(peak_process_before)
                .map(|(a, b)| a.max(b)),
        })
    }
}

struct OracleTimes<'a> {
    options: &'a PerfOptions,
    caches: &'a AllocationCaches,
}

impl TaskVisitor<E> for OracleTimes<'_> {
    type Output = OracleFigures;

    fn visit<P: TaskProblem<E>>(
        self,
        _model: &str,
        problem: P,
        x: P::X,
        y: P::Y,
        _evaluate: impl FnMut(&P::X, &P::Y) -> Metrics,
    ) -> anyhow::Result<OracleFigures> {
        use bilevel_optim::problem::Batch;
        let mut oracles = self.caches.oracles(
            problem,
            self.options.seed,
            self.options.threads,
            &Processes::single(),
        )?;
        let batch = oracles.lower_batch();
        let v = y.clone();
        let reps = self.options.oracle_reps;
        let time = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
            f()?; // warm-up
            self.caches.empty();
            let mut ms = Vec::with_capacity(reps);
            for _ in 0..reps {
                let start = Instant::now();
                f()?;
                ms.push(start.elapsed().as_secs_f64() * 1e3);
                self.caches.empty();
            }
            Ok(median(&mut ms))
        };
        let plain_ms = time(&mut || {
            oracles.lower_grad(&x, &y, &batch)?;
            Ok(())
        })?;
        let second_order_ms = time(&mut || {
            oracles.hvp_jvp(&x, &y, &v, &batch)?;
            Ok(())
        })?;
        Ok(OracleFigures {
            plain_ms,
            second_order_ms,
            batch_size: batch.size(),
        })
    }
}

/// The median over consecutive blocks of `block` values of each block's mean (a trailing
/// partial block is left out; with fewer values than one block, the overall mean).
pub fn median_of_block_means(values: &[f64], block: usize) -> f64 {
    let block = block.max(1);
    let mut means: Vec<f64> = values
        .chunks_exact(block)
        .map(|c| c.iter().sum::<f64>() / block as f64)
        .collect();
    if means.is_empty() {
        return values.iter().sum::<f64>() / values.len().max(1) as f64;
    }
    median(&mut means)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The peak resident set size of this process (Linux `VmHWM`), in MiB.
pub fn peak_resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resets the peak resident set size to the current one (Linux ≥ 4.0); false where unsupported.
fn reset_peak_resident() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Sets the number of threads of the global rayon pool (dfdx's matrix products use it, and so
/// does the library's own parallel work).
pub fn set_threads(threads: usize) -> anyhow::Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("setting up the thread pool")
}

/// Prints the figures of [`measure_iterations`] as `perf` does.
pub fn print_iterations(task: TaskName, threads: usize, f: &IterationFigures) {
    let [upper, lower, hvp, jvp] = f.calls_per_iter;
    let fmt = |m: Option<f64>| m.map_or("n/a".into(), |v| format!("{v:.0} MiB"));
    println!(
        "{} BO-REP, {} measured iterations (first excluded), {threads} thread(s)",
        task.as_str(),
        f.iteration_ms.len()
    );
    println!(
        "  iteration ms:       {}",
        f.iteration_ms
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("  oracle calls / it:  upper grad {upper:.2}, lower grad {lower:.2}, HVP {hvp:.2}, cross {jvp:.2}");
    // Each thread runs its own shard's products on one core, so the peak is one core's times
    // the threads.
    let peak = product_peak_gflops(0.5) * threads as f64;
    let rate = f.product_flops_per_iter / (f.ms_per_iter / 1e3) / 1e9;
    println!(
        "  matrix products:    {:.2} GFLOP / it, {rate:.1} GFLOP/s over the iteration: {:.0}% of \
         {peak:.0} GFLOP/s ({threads} core(s) at this machine's 512x512 f32 product rate)",
        f.product_flops_per_iter / 1e9,
        100.0 * rate / peak
    );
    let (sequences, steps, longest) = f.sequences;
    if sequences > 0 {
        let mean = steps as f64 / sequences as f64;
        println!(
            "  sequences:          {sequences} laid out, mean length {mean:.1} steps, longest \
             {longest}: packed, the RNN runs {:.0}% of the row-steps of padding to {longest}",
            100.0 * mean / longest.max(1) as f64
        );
    }
    println!(
        "  peak memory:        {} while iterating, {} whole process",
        fmt(f.peak_iterating_mib),
        fmt(f.peak_process_mib)
    );
    println!(
        "{} ms_per_iter={:.1} threads={threads}",
        task.as_str(),
        f.ms_per_iter
    );
}

/// Prints the figures of [`measure_oracles`].
pub fn print_oracles(task: TaskName, threads: usize, f: &OracleFigures) {
    println!(
        "{} oracle (lower level, batch of {} samples, {threads} thread(s)): plain gradient {:.1} ms, second-order (grad, Hv, Jv) {:.1} ms, ratio {:.2}",
        task.as_str(),
        f.batch_size,
        f.plain_ms,
        f.second_order_ms,
        f.second_order_ms / f.plain_ms
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_means_take_the_median_block() {
        let v = [10.0, 2.0, 12.0, 2.0, 100.0, 4.0, 1.0];
        // Blocks (10, 2), (12, 2), (100, 4): means 6, 7, 52; the trailing 1 is left out.
        assert_eq!(median_of_block_means(&v, 2), 7.0);
        assert_eq!(median_of_block_means(&v[..1], 2), 10.0);
        assert_eq!(median_of_block_means(&[1.0, 3.0], 1), 2.0);
    }
}
