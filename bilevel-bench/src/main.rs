//! The `bilevel-bench` command: runs the text tasks of `tasks.md` with any method, compares
//! methods over seeds, and checks methods on closed-form problems.

use std::path::PathBuf;

use anyhow::Result;
use bilevel_bench::commands::check::check_task;
use bilevel_bench::commands::refit::{refit, RefitOptions, RefitStart};
use bilevel_bench::commands::{perf, synthetic};
use bilevel_bench::report::compare::{compare_shared, plot_run, CompareOptions, StepPair};
use bilevel_bench::report::tune::{tune_shared, Halving, TuneOptions};
use bilevel_bench::report::tuned::Tuned;
use bilevel_bench::run::config::{RunConfig, TaskName};
use bilevel_bench::run::processes::Processes;
use bilevel_bench::run::{run_dir, run_shared};
use bilevel_bench::tasks::model::ModelName;
use bilevel_bench::tasks::resolve_data_dir;
use bilevel_optim::methods::registry::names;
use clap::{Parser, Subcommand};

/// An iteration allocates and frees hundreds of tensors of up to megabytes (dfdx's outputs and
/// gradient buffers); glibc's allocator returns the large ones to the system and takes them
/// back page fault by page fault; mimalloc keeps them (hyper-opt 137 -> 110-117 ms per iteration,
/// docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The methods `compare` and `tune` run when none are named.
const DEFAULT_METHODS: &str = "bo-rep,stocbio,soba,ma-soba,slip";
/// The step-size grid of tasks.md, for both levels of `tune`.
const STEP_GRID: &str = "0.001,0.005,0.01,0.05,0.1,0.5";

#[derive(Parser)]
#[command(
    name = "bilevel-bench",
    about = "Runs stochastic bilevel methods on the text tasks of tasks.md and compares them",
    long_about = "Runs stochastic bilevel methods on three text tasks: hyper-representation \
(meta-learning on Amazon reviews), hyperparameter optimization (Amazon reviews) and data \
hyper-cleaning (Sentiment140), with real data from ../shared/data (or --data-dir, or \
BILEVEL_DATA_DIR). Every run writes TensorBoard event files and CSV files into its own directory \
<out>/<task>/<method>/seed-<seed>; open them with `tensorboard --logdir <out>`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one method on one task with one seed.
    Run {
        #[command(flatten)]
        common: Common,
        /// The method (default: bo-rep with the task's official values). One of: bo-rep,
        /// stocbio, ttsa, bsa, alset, amigo, soba, saba, ma-soba, f2sa, mrbo, vrbo, slip, accbo,
        /// adambo, maml, anil, aid-cg, itd, maml-encoder, fsla, sustain, f2ba, srba, spaba, bome,
        /// vr-adambo, or a method registered through the library.
        #[arg(long)]
        method: Option<String>,
        #[arg(long)]
        seed: Option<u64>,
        /// Continue the run in this directory from its last checkpoint, as its config.toml says
        /// (flags that would change the run are refused).
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Start anew in a run directory that already holds a run: the old run is first moved
        /// aside, whole, to <dir>.old-N (without this flag such a run is refused).
        #[arg(long, conflicts_with = "resume")]
        overwrite: bool,
    },
    /// Runs several methods over several seeds and writes a results table (CSV and Markdown),
    /// the same table with each run stopped at its best validation accuracy, and plots (PNG and
    /// SVG: median and 20–80% band over seeds, against iterations, oracle calls and training
    /// time). A run that already finished in --out with the same configuration is reused, so
    /// an interrupted comparison continues where it stopped.
    Compare {
        #[command(flatten)]
        common: Common,
        /// Comma-separated methods; with a config file, its [method] table configures the method
        /// of the same name.
        #[arg(long, value_delimiter = ',', default_value = DEFAULT_METHODS)]
        methods: Vec<String>,
        /// Comma-separated seeds.
        #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
        seeds: Vec<u64>,
        /// Comma-separated tuned.toml files written by `tune`, of one task: the methods they
        /// hold (each in one file) run with their step sizes.
        #[arg(long, value_delimiter = ',')]
        tuned: Vec<PathBuf>,
        /// Comma-separated METHOD=LOWER:UPPER step pairs (the step of y and the step of x, as
        /// docs/bench.md maps them), applied over --tuned: for example maml=0.05:0.1.
        #[arg(long, value_delimiter = ',')]
        steps: Vec<StepPair>,
        /// Runs at once, one thread each (each run itself uses one thread; no progress bar
        /// with more than one).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// STEPS:STEP: refit every finished run with that many lower SGD steps of that size
        /// from the initial y (as `refit`), and add the table of the refitted runs.
        #[arg(long)]
        refit: Option<RefitOptions>,
    },
    /// Grid search of each method's (lower, upper) step sizes at the configured budget, as
    /// tasks.md asks (on hyper-rep, on its validation tasks from the training domains). Every
    /// pair runs with each seed; the pair with the best final validation accuracy, the median
    /// over seeds (ties: lower validation loss), is chosen, and a pair that diverged on any seed
    /// never is. Runs already in --out, finished or diverged, are reused. Writes
    /// <out>/<task>/tune/: grid.md (one table per method), grid.csv (one row per run),
    /// tuned.toml (for `compare --tuned`) and every run's directory
    /// (<method>/lower-L_upper-U/seed-S).
    Tune {
        #[command(flatten)]
        common: Common,
        /// Comma-separated methods.
        #[arg(long, value_delimiter = ',', default_value = DEFAULT_METHODS)]
        methods: Vec<String>,
        /// The lower-level step sizes tried (the step of y; see docs/bench.md for each method).
        #[arg(long, value_delimiter = ',', default_value = STEP_GRID)]
        lower: Vec<f64>,
        /// The upper-level step sizes tried (the step of x).
        #[arg(long, value_delimiter = ',', default_value = STEP_GRID)]
        upper: Vec<f64>,
        /// Comma-separated seeds; every pair runs with each (several seeds guard against steps
        /// that only one seed's run tolerates).
        #[arg(long, value_delimiter = ',', default_value = "0", alias = "seed")]
        seeds: Vec<u64>,
        /// Runs (grid pair × seed) at once, one thread each (each run itself uses --threads).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Successive halving: comma-separated iteration counts below --iters (for example
        /// 50,150 of 300). Every pair runs to the first; only the best 1/--reduction of each
        /// method's pairs there (median validation accuracy over seeds) continue, from their
        /// checkpoints, to the next, and so on to --iters, where the choice is made. A continued
        /// run is bit-identical to one run to --iters at once, so the choice is the full grid's
        /// among the pairs that survived, at a fraction of the cost.
        #[arg(long, value_delimiter = ',')]
        rungs: Vec<usize>,
        /// With --rungs: each rung keeps the best ⌈n / this⌉ of a method's n pairs.
        #[arg(long, default_value_t = 3, requires = "rungs")]
        reduction: usize,
        /// STEPS:STEP: judge each pair by its validation metric after a refit of y (as `refit`:
        /// that many lower SGD steps of that size from the initial y, on the lower problem
        /// alone) instead of at the method's own y, which may have seen the upper loss (BOME's
        /// does), at every rung. grid.md shows both.
        #[arg(long)]
        refit: Option<RefitOptions>,
    },
    /// Times BO-REP iterations on a task with the tasks.md defaults (paper-level Algorithm 1:
    /// N plain SGD steps at t = 0, z₀ = 0, one lower batch shared by the HVP and the cross
    /// product). Data loading and the first iteration are excluded; prints the median
    /// milliseconds per iteration (median over blocks of I iterations, each holding one periodic
    /// update of y, of the block's mean), the oracle calls per iteration and the peak memory,
    /// ending with `TASK ms_per_iter=X threads=N`. See docs/performance.md.
    Perf {
        /// The task (with --oracle and no --task: all three).
        #[arg(long, value_enum)]
        task: Option<TaskName>,
        /// Threads: every oracle call splits its batch into this many shards, one thread each
        /// (matrix products themselves stay on one thread).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Measured iterations after the excluded first one (a multiple of 6 covers whole
        /// periods of every task).
        #[arg(long, default_value_t = 12)]
        iters: usize,
        /// Time the lower level's plain gradient and second-order pass (∇_y g, H·v, J·v) on one
        /// batch instead, and print their ratio.
        #[arg(long)]
        oracle: bool,
        /// Repetitions of each oracle with --oracle (the median is printed).
        #[arg(long, default_value_t = 10)]
        reps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// A TOML file whose task tables change the sizes (batch, T, ...); its method is ignored.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The text encoder: the recurrent network (default) or a transformer.
        #[arg(long, value_enum)]
        model: Option<ModelName>,
        /// The data directory (default: ../shared/data next to the checkout, or BILEVEL_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Checks a task's problem at its starting point (bilevel_optim::check): its written lower
    /// gradient against dfdx's autodiff per tensor, its H·v and J·v against central differences,
    /// the symmetry of H, and its losses' gradients against differences of their values. Prints
    /// every comparison and exits non-zero on a fault. In f32 (the tasks' precision) the
    /// differences only judge gross faults such as a dropped tape; see docs/guide.md.
    Check {
        /// The task.
        #[arg(long, value_enum)]
        task: Option<TaskName>,
        /// A TOML file whose task tables change the sizes; its method is ignored.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The text encoder: the recurrent network (default) or a transformer.
        #[arg(long, value_enum)]
        model: Option<ModelName>,
        /// The seed of the data split, the batches and the random directions.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The data directory (default: ../shared/data next to the checkout, or BILEVEL_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Judges finished runs' x by the lower problem alone: at the x of each run's last
    /// checkpoint, trains y by SGD on the lower loss (from the task's starting y, or the run's
    /// own) on batches of its own seed, evaluates it and writes refit.json into the run's
    /// directory. A method whose y has seen the upper loss (BOME) is then judged like the others.
    Refit {
        /// Comma-separated run directories (for example compare's
        /// <out>/<task>/<method>/seed-<S>).
        #[arg(long, value_delimiter = ',', required = true)]
        runs: Vec<PathBuf>,
        /// SGD steps on the lower loss (0: evaluate the starting y as it is).
        #[arg(long)]
        steps: usize,
        /// Their step size.
        #[arg(long)]
        step: f64,
        /// Where y starts: the task's starting y (a model trained afresh with the run's x) or
        /// the run's own y.
        #[arg(long, value_enum, default_value = "initial")]
        from: RefitStart,
        /// The seed of the refit's lower batches.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The data directory (default: ../shared/data next to the checkout, or BILEVEL_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Runs a method on the closed-form problems of bilevel-optim and prints ‖∇Φ‖.
    Synthetic {
        #[arg(long, default_value = "bo-rep")]
        method: String,
        #[arg(long, default_value_t = 4000)]
        iters: usize,
    },
}

#[derive(clap::Args)]
struct Common {
    /// The task.
    #[arg(long, value_enum)]
    task: Option<TaskName>,
    /// A TOML file with any of the run's settings (see docs/bench.md); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Outer iterations.
    #[arg(long)]
    iters: Option<usize>,
    /// Evaluate every this many iterations.
    #[arg(long)]
    eval_every: Option<usize>,
    /// The data directory (default: ../shared/data next to the checkout, or BILEVEL_DATA_DIR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where run directories go.
    #[arg(long, default_value = "runs")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Threads per run: every oracle call splits its batch into this many shards, one thread
    /// each (default 1; see docs/performance.md).
    #[arg(long)]
    threads: Option<usize>,
    /// The text encoder: the recurrent network (default) or a transformer.
    #[arg(long, value_enum)]
    model: Option<ModelName>,
}

impl Common {
    fn config(&self) -> Result<RunConfig> {
        let mut config = match &self.config {
            Some(path) => RunConfig::from_file(path)?,
            None => RunConfig::default(),
        };
        if let Some(task) = self.task {
            config.task = task;
        }
        if let Some(iters) = self.iters {
            config.iters = iters;
        }
        if let Some(every) = self.eval_every {
            config.eval_every = every;
        }
        if let Some(threads) = self.threads {
            config.threads = threads;
        }
        if let Some(model) = self.model {
            config.model = model;
        }
        Ok(config)
    }
}

fn check_methods(methods: &[String]) -> Result<()> {
    let known = names();
    for m in methods {
        if !known.contains(&m.as_str()) {
            anyhow::bail!(
                "--methods: '{m}' is not a method; choose from {}",
                known.join(", ")
            );
        }
    }
    Ok(())
}

/// A run directory that holds a run (finished, or with a checkpoint to resume) is never
/// overwritten silently: refused, or with `--overwrite` moved aside whole to `<dir>.old-N`.
fn keep_earlier_run(dir: &std::path::Path, overwrite: bool) -> Result<()> {
    let finished = dir.join("summary.json").exists();
    let started = dir.join(bilevel_bench::run::checkpoint::FILE).exists()
        || dir
            .join(bilevel_bench::run::checkpoint::PREVIOUS_FILE)
            .exists();
    if !finished && !started {
        return Ok(());
    }
    // Held while the run is moved aside: a run still writing there is never moved.
    let _lock = bilevel_bench::run::lock::RunLock::acquire(dir)?;
    if !overwrite {
        let what = if finished {
            "a finished run"
        } else {
            "an interrupted run (continue it with --resume)"
        };
        anyhow::bail!(
            "{} holds {what}: pass --overwrite to move it aside and start anew",
            dir.display()
        );
    }
    let aside = (1..)
        .map(|n| std::path::PathBuf::from(format!("{}.old-{n}", dir.display())))
        .find(|p| !p.exists())
        .expect("a free name");
    std::fs::rename(dir, &aside).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot move the earlier run aside to {}: {e}",
            dir.display(),
            aside.display()
        )
    })?;
    eprintln!("moved the earlier run aside to {}", aside.display());
    Ok(())
}

/// A resumed run continues as its directory's config.toml says: a flag that would change the
/// run is refused, not silently ignored.
fn refuse_flags_a_resume_ignores(
    common: &Common,
    method: Option<&str>,
    seed: Option<u64>,
) -> Result<()> {
    let given: Vec<&str> = [
        ("--task", common.task.is_some()),
        ("--config", common.config.is_some()),
        ("--iters", common.iters.is_some()),
        ("--eval-every", common.eval_every.is_some()),
        ("--threads", common.threads.is_some()),
        ("--model", common.model.is_some()),
        ("--method", method.is_some()),
        ("--seed", seed.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, set)| set.then_some(flag))
    .collect();
    if given.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "--resume continues the run as its config.toml says; {} would change it: \
             start a new run instead",
            given.join(", ")
        )
    }
}

fn main() -> std::process::ExitCode {
    let command = Cli::parse().command;
    let processes = match Processes::launched() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("Error: {e:?}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match execute(command, &processes) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if processes.size() > 1 => {
            eprintln!(
                "Error in process {} of {}: {e:?}",
                processes.rank(),
                processes.size()
            );
            processes.abort(1)
        }
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Commands that run in one process only refuse to run as several.
fn one_process(processes: &Processes, command: &str) -> Result<()> {
    if processes.size() > 1 {
        anyhow::bail!(
            "`{command}` runs in one process; under mpirun only `run`, `compare` and `tune` are \
             shared by the processes"
        );
    }
    Ok(())
}

fn execute(command: Command, processes: &Processes) -> Result<()> {
    // dfdx's matrix products split over the global rayon pool; at this library's shapes that
    // is slower than one thread (docs/performance.md): extra threads go to batch shards
    // (`--threads`) instead, so the pool has one thread unless RAYON_NUM_THREADS says otherwise.
    if !matches!(command, Command::Perf { .. }) && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        perf::set_threads(1)?;
    }
    match command {
        Command::Run {
            common,
            method,
            seed,
            resume,
            overwrite,
        } => {
            if resume.is_some() {
                refuse_flags_a_resume_ignores(&common, method.as_deref(), seed)?;
            }
            let data_dir = resolve_data_dir(common.data_dir.as_deref())?;
            let (summary, dir) = match resume {
                Some(dir) => (
                    bilevel_bench::run::resume_shared(&data_dir, &dir, !common.quiet, processes)?,
                    dir,
                ),
                None => {
                    let mut config = common.config()?.with_method(method.as_deref())?;
                    if let Some(seed) = seed {
                        config.seed = seed;
                    }
                    let dir = run_dir(&common.out, &config);
                    if processes.writes() {
                        keep_earlier_run(&dir, overwrite)?;
                    }
                    let summary = run_shared(&config, &data_dir, &dir, !common.quiet, processes)?;
                    (summary, dir)
                }
            };
            if !processes.writes() {
                return Ok(());
            }
            if processes.size() > 1 {
                println!(
                    "shared by {} processes; process 0 received {:.1} MB from the others",
                    processes.size(),
                    processes.bytes_received() as f64 / 1e6
                );
            }
            let done = summary.evaluations.last().map_or(0, |e| e.iteration);
            println!("final metrics ({done} iterations):");
            for (name, value) in summary.last() {
                println!("  {name:28} {value:.4}");
            }
            let plots = plot_run(&summary)?;
            println!(
                "run directory: {} (steps.csv, evaluations.csv, summary.json)",
                dir.display()
            );
            println!("plots:         {} (PNG and SVG)", plots.display());
            println!(
                "TensorBoard:   tensorboard --logdir {}  (then open http://localhost:6006)",
                common.out.display()
            );
            Ok(())
        }
        Command::Compare {
            common,
            methods,
            seeds,
            tuned,
            steps,
            jobs,
            refit,
        } => {
            let base = common.config()?;
            check_methods(&methods)?;
            let tuned = if tuned.is_empty() {
                None
            } else {
                Some(Tuned::from_files(&tuned)?)
            };
            let data_dir = resolve_data_dir(common.data_dir.as_deref())?;
            let options = CompareOptions {
                base,
                methods,
                seeds,
                out: common.out.clone(),
                progress: !common.quiet,
                tuned,
                jobs,
                steps,
                refit,
            };
            let report = compare_shared(&options, &data_dir, processes)?;
            if !processes.writes() {
                return Ok(());
            }
            println!("{}", report.markdown);
            let refit_tables = if report.dir.join("refit.md").exists() {
                "refit.*, "
            } else {
                ""
            };
            println!(
                "results and plots: {} (results.md, results.csv, results_at_best_validation.*, \
                 {refit_tables}*.png, *.svg)",
                report.dir.display()
            );
            println!(
                "TensorBoard:       tensorboard --logdir {}",
                common.out.display()
            );
            Ok(())
        }
        Command::Tune {
            common,
            methods,
            lower,
            upper,
            seeds,
            jobs,
            rungs,
            reduction,
            refit,
        } => {
            let base = common.config()?;
            check_methods(&methods)?;
            let halving = (!rungs.is_empty()).then_some(Halving { rungs, reduction });
            let data_dir = resolve_data_dir(common.data_dir.as_deref())?;
            let options = TuneOptions {
                base,
                methods,
                lower_grid: lower,
                upper_grid: upper,
                seeds,
                out: common.out.clone(),
                jobs,
                verbose: !common.quiet,
                halving,
                refit,
            };
            let report = tune_shared(&options, &data_dir, processes)?;
            if !processes.writes() {
                return Ok(());
            }
            println!("{}", report.markdown);
            println!(
                "grid and chosen values: {} (grid.md, grid.csv, tuned.toml)",
                report.dir.display()
            );
            Ok(())
        }
        Command::Perf {
            task,
            threads,
            iters,
            oracle,
            reps,
            seed,
            config,
            model,
            data_dir,
        } => {
            one_process(processes, "perf")?;
            let mut base = match &config {
                Some(path) => RunConfig::from_file(path)?,
                None => RunConfig::default(),
            };
            if let Some(model) = model {
                base.model = model;
            }
            base.validate()?;
            if threads == 0 || iters == 0 || reps == 0 {
                anyhow::bail!("--threads, --iters and --reps must be at least 1");
            }
            let data_dir = resolve_data_dir(data_dir.as_deref())?;
            perf::set_threads(1)?;
            let options = |task| perf::PerfOptions {
                task,
                iters,
                seed,
                oracle_reps: reps,
                threads,
                base: base.clone(),
            };
            if oracle {
                let tasks = match task {
                    Some(t) => vec![t],
                    None => TaskName::ALL.to_vec(),
                };
                for t in tasks {
                    let figures = perf::measure_oracles(&options(t), &data_dir)?;
                    perf::print_oracles(t, threads, &figures);
                }
            } else {
                let Some(task) = task else {
                    anyhow::bail!("--task is required (except with --oracle)");
                };
                let figures = perf::measure_iterations(&options(task), &data_dir)?;
                perf::print_iterations(task, threads, &figures);
            }
            Ok(())
        }
        Command::Check {
            task,
            config,
            model,
            seed,
            data_dir,
        } => {
            one_process(processes, "check")?;
            let mut run_config = match &config {
                Some(path) => RunConfig::from_file(path)?,
                None => RunConfig::default(),
            };
            if let Some(model) = model {
                run_config.model = model;
            }
            if let Some(task) = task {
                run_config.task = task;
            }
            run_config.seed = seed;
            let data_dir = resolve_data_dir(data_dir.as_deref())?;
            let (model, report) = check_task(&run_config, &data_dir)?;
            println!("{} ({model}), seed {seed}:", run_config.task.as_str());
            println!("{report}");
            if report.passed() {
                println!("check passed");
                Ok(())
            } else {
                anyhow::bail!(
                    "the problem failed its check ({} faults above)",
                    report.faults().count()
                )
            }
        }
        Command::Refit {
            runs,
            steps,
            step,
            from,
            seed,
            data_dir,
        } => {
            one_process(processes, "refit")?;
            let data_dir = resolve_data_dir(data_dir.as_deref())?;
            let options = RefitOptions {
                steps,
                step,
                from,
                seed,
            };
            for dir in &runs {
                let r = refit(&data_dir, dir, &options)?;
                println!(
                    "{} ({} seed {}, iteration {}), refitted: {}",
                    dir.display(),
                    r.method,
                    r.run_seed,
                    r.iteration,
                    options.describe()
                );
                for (name, value) in &r.metrics {
                    println!("  {name:<28} {value:.4}");
                }
            }
            Ok(())
        }
        Command::Synthetic { method, iters } => {
            one_process(processes, "synthetic")?;
            if iters == 0 {
                anyhow::bail!("--iters must be at least 1");
            }
            synthetic::synthetic(&synthetic::method(&method)?, iters)
        }
    }
}
