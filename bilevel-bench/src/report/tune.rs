//! Grid search of each method's (lower, upper) step sizes on one task, as `tasks.md` asks: every
//! pair of the grid runs at the configured budget, the pair with the best validation metric is
//! chosen, and a file of the chosen configurations feeds `compare --tuned`.
//!
//! Which step of a method is "lower" and which "upper" is
//! [`bilevel_optim::methods::MethodConfig::level_steps`]. With several seeds a pair is judged by
//! the median over seeds, because one seed's lucky run can pick steps that are unstable on the
//! others. A pair with a diverged run (a non-finite value) on any
//! seed is recorded as diverged and never chosen. A finished run of the same configuration
//! already in the output directory is reused, so an interrupted or widened search runs only what
//! is missing.
//!
//! With [`Halving`] (successive halving, Jamieson & Talwalkar 2016) every pair first runs a short
//! budget and only each method's best pairs there continue, from their checkpoints, to the next
//! budget and finally to the whole one. A continued run is bit-identical to one that ran the
//! whole budget at once (docs/checkpoints.md), so the choice is exactly the full grid's choice
//! among the pairs that survived the cuts, at a fraction of the cost.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::commands::refit::{check_task, refitted_with, Refit, RefitOptions};
use crate::report::{is_divergence, DIVERGED_FILE};
use anyhow::{bail, Context};

use crate::report::parallel::{map_over_processes, JobProgress};
use crate::report::stats::{ensure_distinct, quantile};
use crate::report::tuned::Tuned;
use crate::run::config::RunConfig;
use crate::run::processes::Processes;
use crate::run::{resume, run, summary::RunSummary};
use crate::tasks::Metrics;

/// What `tune` runs and where.
#[derive(Clone)]
pub struct TuneOptions {
    /// Task, budget and the starting configuration of each method (its other hyperparameters).
    pub base: RunConfig,
    /// The methods, by name.
    pub methods: Vec<String>,
    /// The steps of y tried.
    pub lower_grid: Vec<f64>,
    /// The steps of x tried.
    pub upper_grid: Vec<f64>,
    /// Every pair runs with each of these seeds.
    pub seeds: Vec<u64>,
    /// The directory the runs and the tables go to.
    pub out: PathBuf,
    /// Runs (grid pair × seed) at once, each on its own thread.
    pub jobs: usize,
    /// Print one line per finished grid point.
    pub verbose: bool,
    /// Successive halving instead of running every pair the whole budget.
    pub halving: Option<Halving>,
    /// Judge every finished run (at every rung of halving) after refitting y on the lower
    /// problem alone (`bilevel-bench refit`) instead of at the method's own y, which may have
    /// seen the upper loss (BOME's does; docs/algorithms.md).
    pub refit: Option<RefitOptions>,
}

/// Successive halving: every pair of a method runs to the first rung, the best
/// ⌈n / reduction⌉ of its n pairs there (median validation accuracy over seeds, ties: loss;
/// diverged pairs never) continue to the next rung, and so on; the pairs left after the last
/// rung run the whole budget, and the choice is made among them.
#[derive(Debug, Clone, PartialEq)]
pub struct Halving {
    /// Iteration counts, increasing and below the budget.
    pub rungs: Vec<usize>,
    /// At least 2.
    pub reduction: usize,
}

impl Halving {
    fn validate(&self, iters: usize) -> anyhow::Result<()> {
        if self.reduction < 2 {
            bail!("--reduction must be at least 2, got {}", self.reduction);
        }
        if self.rungs.is_empty() {
            bail!("--rungs needs at least one iteration count");
        }
        let mut last = 0;
        for &r in &self.rungs {
            if r <= last || r >= iters {
                bail!(
                    "--rungs must increase and lie between 1 and the budget's {iters} iterations \
                     (exclusive), got {:?}",
                    self.rungs
                );
            }
            last = r;
        }
        Ok(())
    }

    /// How many of `n` pairs go on from a rung.
    fn survivors(&self, n: usize) -> usize {
        n.div_ceil(self.reduction)
    }
}

/// How one grid point ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// The final validation accuracy and loss.
    Finished {
        /// The selection metric's accuracy.
        accuracy: f64,
        /// The matching loss (the tie-breaker).
        loss: f64,
    },
    /// A non-finite value stopped the run (the first line of what the method reported).
    Diverged(String),
}

/// For progress lines: "validation accuracy 0.5490, loss 0.7321" or `diverged: <reason>`.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Finished { accuracy, loss } => {
                write!(f, "validation accuracy {accuracy:.4}, loss {loss:.4}")
            }
            Outcome::Diverged(reason) => write!(f, "diverged: {reason}"),
        }
    }
}

/// One run of the grid and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct GridPoint {
    /// The method's name.
    pub method: String,
    /// The step of y.
    pub lower: f64,
    /// The step of x.
    pub upper: f64,
    /// The iterations the pair ran: the budget, or with [`Halving`] the rung it stopped at.
    pub iterations: usize,
    /// Over seeds, at `iterations`: the median accuracy and loss, or the first divergence; after
    /// the refit where [`TuneOptions::refit`] judged the pair.
    pub outcome: Outcome,
    /// Each seed's outcome as judged, in the order of [`TuneOptions::seeds`].
    pub runs: Vec<(u64, Outcome)>,
    /// Where a refit judged the pair: its outcome at the method's own y, over seeds.
    pub own: Option<Outcome>,
}

/// One run's outcome at the method's own y and, where the search refits, after the refit.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Judged {
    own: Outcome,
    refit: Option<Outcome>,
}

impl Judged {
    /// The outcome the search ranks by.
    fn outcome(&self) -> &Outcome {
        self.refit.as_ref().unwrap_or(&self.own)
    }
}

/// What `tune` wrote.
pub struct TuneReport {
    /// The directory of grid.md, grid.csv and tuned.toml.
    pub dir: PathBuf,
    /// Every run of the grid.
    pub points: Vec<GridPoint>,
    /// The chosen values.
    pub tuned: Tuned,
    /// The grid tables, as printed.
    pub markdown: String,
}

/// The directory of one grid point's run with one seed:
/// `<out>/<task>/tune/<method>/lower-L_upper-U/seed-S/` (see [`RunConfig::task_dir`]).
fn point_dir(
    out: &Path,
    base: &RunConfig,
    method: &str,
    lower: f64,
    upper: f64,
    seed: u64,
) -> PathBuf {
    base.task_dir(out)
        .join("tune")
        .join(method)
        .join(format!("lower-{lower}_upper-{upper}"))
        .join(format!("seed-{seed}"))
}

/// The outcome an evaluation's metrics say.
fn outcome(metrics: &Metrics, accuracy: &str, loss: &str) -> anyhow::Result<Outcome> {
    let read = |name: &str| {
        metrics
            .get(name)
            .copied()
            .with_context(|| format!("the run reports no '{name}'"))
    };
    let (accuracy, loss) = (read(accuracy)?, read(loss)?);
    Ok(if accuracy.is_finite() && loss.is_finite() {
        Outcome::Finished { accuracy, loss }
    } else {
        Outcome::Diverged(format!("{accuracy} accuracy, {loss} loss"))
    })
}

/// One pair's outcome over its seeds: diverged if any seed diverged, else the medians.
fn over_seeds(runs: &[(u64, Outcome)]) -> Outcome {
    let mut accuracies = Vec::new();
    let mut losses = Vec::new();
    for (seed, outcome) in runs {
        match outcome {
            Outcome::Finished { accuracy, loss } => {
                accuracies.push(*accuracy);
                losses.push(*loss);
            }
            Outcome::Diverged(why) => return Outcome::Diverged(format!("seed {seed}: {why}")),
        }
    }
    Outcome::Finished {
        accuracy: quantile(&accuracies, 0.5),
        loss: quantile(&losses, 0.5),
    }
}

/// What a grid run's directory already holds for `config` (a pair with one seed, at the budget
/// `config.iters`).
enum Cached {
    /// The outcome at `config.iters`: the run ended there, or went further and evaluated there.
    At(Outcome),
    /// The same run finished a shorter budget (an earlier rung): continue it from its checkpoint.
    Shorter,
    /// Nothing usable: run it from the start.
    Nothing,
}

fn cached(config: &RunConfig, dir: &Path, accuracy: &str, loss: &str) -> Cached {
    // The same run but for its budget.
    let Some(saved) = RunConfig::saved_matching(&dir.join("config.toml"), config) else {
        return Cached::Nothing;
    };
    // A directory's summary is its run's record up to the last budget it finished (`run`
    // removes a previous run's); continuing it to a larger budget keeps that history.
    let summary: Option<RunSummary> = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    // A run from before its task reported the selection metric (hyper-rep's validation tasks)
    // is run again rather than reused.
    if let Some(summary) = &summary {
        if let Some(Ok(o)) = at_budget(summary, config.iters, accuracy, loss) {
            return Cached::At(o);
        }
    }
    if saved.iters == config.iters {
        if let Ok(why) = std::fs::read_to_string(dir.join(DIVERGED_FILE)) {
            return Cached::At(Outcome::Diverged(why));
        }
    }
    // Continuing needs the checkpoint (halving removes those of the pairs it stops).
    let continuable = dir.join(crate::run::checkpoint::FILE).is_file();
    match summary.as_ref().and_then(|s| s.evaluations.last()) {
        Some(e)
            if continuable && e.iteration < config.iters && e.metrics.contains_key(accuracy) =>
        {
            Cached::Shorter
        }
        _ => Cached::Nothing,
    }
}

/// The outcome of the evaluation at iteration `budget`, if the run made one that reports the
/// selection metric.
fn at_budget(
    summary: &RunSummary,
    budget: usize,
    accuracy: &str,
    loss: &str,
) -> Option<anyhow::Result<Outcome>> {
    summary
        .evaluations
        .iter()
        .find(|e| e.iteration == budget && e.metrics.contains_key(accuracy))
        .map(|e| outcome(&e.metrics, accuracy, loss))
}

/// Runs (or reuses, or continues to `config.iters`) one grid point with one seed.
fn run_point(
    config: &RunConfig,
    data_dir: &Path,
    dir: &Path,
    accuracy: &str,
    loss: &str,
) -> anyhow::Result<Outcome> {
    let cache = cached(config, dir, accuracy, loss);
    if let Cached::At(o) = cache {
        return Ok(o);
    }
    let diverged_file = dir.join(DIVERGED_FILE);
    if diverged_file.exists() {
        std::fs::remove_file(&diverged_file)
            .with_context(|| format!("{}: cannot remove", diverged_file.display()))?;
    }
    let result = match cache {
        Cached::Shorter => {
            // `resume` continues to the budget in the directory's config.toml.
            let config_file = dir.join("config.toml");
            crate::run::durable::write_atomic(&config_file, toml::to_string(config)?.as_bytes())
                .with_context(|| format!("{}: cannot write", config_file.display()))?;
            resume(data_dir, dir, false)
        }
        _ => run(config, data_dir, dir, false),
    };
    match result {
        Ok(summary) => at_budget(&summary, config.iters, accuracy, loss).with_context(|| {
            format!(
                "{}: the run made no evaluation at iteration {}",
                dir.display(),
                config.iters
            )
        })?,
        Err(e) if is_divergence(&e) => {
            let why = e.root_cause().to_string();
            let why = why.lines().next().unwrap_or_default();
            crate::run::durable::write_atomic(&diverged_file, why.as_bytes())
                .with_context(|| format!("{}: cannot write", diverged_file.display()))?;
            Ok(Outcome::Diverged(why.into()))
        }
        Err(e) => Err(e),
    }
}

/// Judges a run that ended with `own` at the method's own y at iteration `budget`: with
/// [`TuneOptions::refit`], a finished run is also judged after its refit of the x of that
/// iteration ([`refit_at`]).
fn judge(
    options: &TuneOptions,
    data_dir: &Path,
    dir: &Path,
    budget: usize,
    own: Outcome,
    (accuracy, loss): (&str, &str),
) -> anyhow::Result<Judged> {
    let refit = match (&options.refit, &own) {
        (Some(how), Outcome::Finished { .. }) => {
            let done = refit_at(data_dir, dir, how, budget)?;
            Some(outcome(&done.metrics, accuracy, loss).context("after the refit")?)
        }
        _ => None,
    };
    Ok(Judged { own, refit })
}

/// The file in which the search keeps the refit of a run's x at iteration `budget`: a later
/// search ranks the rung again, after the run and its `refit.json` have moved on.
fn kept_refit_file(dir: &Path, budget: usize) -> PathBuf {
    dir.join(format!("refit-at-{budget}.json"))
}

/// The refit of the run's x at iteration `budget` made with `how`: the kept one, or a new one
/// (of the run's last checkpoint, which must be of that iteration), then kept.
fn refit_at(
    data_dir: &Path,
    dir: &Path,
    how: &RefitOptions,
    budget: usize,
) -> anyhow::Result<Refit> {
    let kept_file = kept_refit_file(dir, budget);
    let kept = Refit::read_file(&kept_file)?;
    if let Some(done) = kept.filter(|k| &k.options == how && k.iteration == budget) {
        return Ok(done);
    }
    let done = refitted_with(data_dir, dir, how)?;
    if done.iteration != budget {
        bail!(
            "{}: cannot refit the x of iteration {budget}: the run went on to iteration {}",
            dir.display(),
            done.iteration
        );
    }
    done.write_file(&kept_file)?;
    Ok(done)
}

/// The order of finished points, best first: highest accuracy, then lowest loss, then the
/// smaller steps. Diverged points come last.
fn ranking(p: &GridPoint, q: &GridPoint) -> std::cmp::Ordering {
    let key = |p: &GridPoint| match p.outcome {
        Outcome::Finished { accuracy, loss } => (false, -accuracy, loss),
        Outcome::Diverged(_) => (true, 0.0, 0.0),
    };
    let ((d1, a1, l1), (d2, a2, l2)) = (key(p), key(q));
    d1.cmp(&d2)
        .then(a1.total_cmp(&a2))
        .then(l1.total_cmp(&l2))
        .then(p.lower.total_cmp(&q.lower))
        .then(p.upper.total_cmp(&q.upper))
}

/// The best finished point.
fn best<'a>(points: impl Iterator<Item = &'a GridPoint>) -> Option<&'a GridPoint> {
    points
        .filter(|p| matches!(p.outcome, Outcome::Finished { .. }))
        .min_by(|p, q| ranking(p, q))
}

/// The search: every pair of every method's grid, rung by rung (one rung without halving),
/// then each method's best pair and the files that record it.
pub fn tune(options: &TuneOptions, data_dir: &Path) -> anyhow::Result<TuneReport> {
    tune_shared(options, data_dir, &Processes::single())
}

/// [`tune`] with its runs dealt to `processes` (the ranks of `mpirun`), each of which must call
/// it with the same arguments: run (pair, seed) always goes to the same process, which runs its
/// share with `jobs` threads and keeps that run's directory; every process gets every outcome,
/// so all choose alike, and process 0 writes the grid and `tuned.toml`, the same as one
/// process's.
pub fn tune_shared(
    options: &TuneOptions,
    data_dir: &Path,
    processes: &Processes,
) -> anyhow::Result<TuneReport> {
    let (accuracy, loss) = options.base.selection_metric()?;
    check_options(options)?;
    let pairs = grid_pairs(options)?;
    let iters = options.base.iters;
    let budgets: Vec<usize> = match &options.halving {
        Some(h) => h.rungs.iter().copied().chain([iters]).collect(),
        None => vec![iters],
    };
    let progress = JobProgress::new(
        &format!("tune {}", options.base.task.as_str()),
        planned_iterations(options, &budgets),
        options.verbose && processes.writes(),
    );
    let mut points: Vec<Option<GridPoint>> = vec![None; pairs.len()];
    let mut alive: Vec<usize> = (0..pairs.len()).collect();
    for (index, &budget) in budgets.iter().enumerate() {
        let rung = Rung {
            start: if index == 0 { 0 } else { budgets[index - 1] },
            budget,
            metric: (accuracy, loss),
        };
        let ran = run_rung(
            options, data_dir, &pairs, &alive, &rung, &progress, processes,
        )?;
        for (k, point) in ran {
            points[k] = Some(point);
        }
        if let (Some(h), true) = (&options.halving, index + 1 < budgets.len()) {
            alive = survivors(options, h, &pairs, &points, &alive);
            remove_stopped_checkpoints(options, &pairs, &alive, processes)?;
        }
    }
    progress.finish();
    let points: Vec<GridPoint> = points
        .into_iter()
        .map(|p| p.expect("every pair ran the first rung"))
        .collect();
    let tuned = choose(options, &pairs, &points)?;
    let (dir, markdown) = if processes.writes() {
        write_search(options, &points, &tuned, accuracy, loss)?
    } else {
        let dir = options.base.task_dir(&options.out).join("tune");
        (dir, grid_tables(options, &points, accuracy)?)
    };
    Ok(TuneReport {
        dir,
        points,
        tuned,
        markdown,
    })
}

/// Refuses options that cannot make a search, before anything runs.
fn check_options(options: &TuneOptions) -> anyhow::Result<()> {
    if options.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    if options.seeds.is_empty() {
        bail!("tune needs at least one seed");
    }
    ensure_distinct("--methods", &options.methods)?;
    ensure_distinct("--seeds", &options.seeds)?;
    ensure_distinct("--lower", &options.lower_grid)?;
    ensure_distinct("--upper", &options.upper_grid)?;
    for (name, grid) in [
        ("lower", &options.lower_grid),
        ("upper", &options.upper_grid),
    ] {
        if grid.is_empty() || grid.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            bail!("the {name} grid must hold positive finite step sizes, got {grid:?}");
        }
    }
    if let Some(h) = &options.halving {
        h.validate(options.base.iters)?;
    }
    if let Some(how) = &options.refit {
        how.validate()?;
        check_task(options.base.task)?;
    }
    Ok(())
}

/// One point of a method's grid and the configuration that runs it.
struct Pair {
    method: String,
    lower: f64,
    upper: f64,
    config: RunConfig,
}

/// Every (method, lower, upper) of the grid, each configuration built and checked before anything
/// runs.
fn grid_pairs(options: &TuneOptions) -> anyhow::Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    for method in &options.methods {
        let base = options.base.clone().with_method(Some(method))?;
        for &lower in &options.lower_grid {
            for &upper in &options.upper_grid {
                let mut m = base.method();
                m.set_level_steps(lower, upper);
                m.validate()
                    .with_context(|| format!("{method} at ({lower}, {upper})"))?;
                let mut config = base.clone();
                config.method = Some(m);
                pairs.push(Pair {
                    method: method.clone(),
                    lower,
                    upper,
                    config,
                });
            }
        }
    }
    Ok(pairs)
}

/// One rung of the search: runs go on from `start` to `budget` iterations and are judged by
/// `metric` (accuracy, loss).
struct Rung {
    start: usize,
    budget: usize,
    metric: (&'static str, &'static str),
}

/// Runs the `alive` pairs with every seed to the rung's budget; each pair's point over its seeds.
fn run_rung(
    options: &TuneOptions,
    data_dir: &Path,
    pairs: &[Pair],
    alive: &[usize],
    rung: &Rung,
    progress: &JobProgress,
    processes: &Processes,
) -> anyhow::Result<Vec<(usize, GridPoint)>> {
    let work: Vec<(usize, RunConfig)> = alive
        .iter()
        .flat_map(|&k| {
            options.seeds.iter().map(move |&seed| {
                let mut config = pairs[k].config.clone();
                config.seed = seed;
                config.iters = rung.budget;
                (k, config)
            })
        })
        .collect();
    let seeds = options.seeds.len();
    let owner = |i: usize| run_owner(work[i].0, i % seeds, seeds);
    let outcomes = map_over_processes(&work, options.jobs, processes, owner, |(k, config)| {
        let Pair {
            method,
            lower,
            upper,
            ..
        } = &pairs[*k];
        let dir = point_dir(&options.out, config, method, *lower, *upper, config.seed);
        let (accuracy, loss) = rung.metric;
        let outcome = run_point(config, data_dir, &dir, accuracy, loss)
            .and_then(|own| judge(options, data_dir, &dir, rung.budget, own, rung.metric))
            .with_context(|| format!("{method} at ({lower}, {upper}), seed {}", config.seed));
        let line = match &outcome {
            Ok(Judged { own, refit: None }) => format!(
                "{method} lower {lower} upper {upper} seed {}, {} iterations: {own}",
                config.seed, rung.budget
            ),
            Ok(Judged {
                own,
                refit: Some(refit),
            }) => format!(
                "{method} lower {lower} upper {upper} seed {}, {} iterations: {own}; \
                 after the refit {refit}",
                config.seed, rung.budget
            ),
            Err(e) => format!("{e:#}"),
        };
        progress.finished((rung.budget - rung.start) as u64, &line);
        outcome
    })?
    .into_iter()
    .collect::<anyhow::Result<Vec<_>>>()?;
    // `work` holds each pair's seeds consecutively.
    Ok(work
        .chunks(options.seeds.len())
        .zip(outcomes.chunks(options.seeds.len()))
        .map(|(chunk, outcomes)| {
            let k = chunk[0].0;
            let seeds = chunk.iter().map(|(_, config)| config.seed);
            let runs: Vec<(u64, Outcome)> = seeds
                .clone()
                .zip(outcomes.iter().map(|j| j.outcome().clone()))
                .collect();
            let own = outcomes.iter().any(|j| j.refit.is_some()).then(|| {
                let own: Vec<(u64, Outcome)> =
                    seeds.zip(outcomes.iter().map(|j| j.own.clone())).collect();
                over_seeds(&own)
            });
            let point = GridPoint {
                method: pairs[k].method.clone(),
                lower: pairs[k].lower,
                upper: pairs[k].upper,
                iterations: rung.budget,
                outcome: over_seeds(&runs),
                runs,
                own,
            };
            (k, point)
        })
        .collect())
}

/// The pairs that go on after a rung: each method's best ⌈n / reduction⌉ finished ones.
fn survivors(
    options: &TuneOptions,
    halving: &Halving,
    pairs: &[Pair],
    points: &[Option<GridPoint>],
    alive: &[usize],
) -> Vec<usize> {
    let point = |k: usize| points[k].as_ref().expect("every alive pair ran this rung");
    let mut next: Vec<usize> = options
        .methods
        .iter()
        .flat_map(|method| {
            let mut mine: Vec<usize> = alive
                .iter()
                .copied()
                .filter(|&k| &pairs[k].method == method)
                .collect();
            let keep = halving.survivors(mine.len());
            mine.retain(|&k| matches!(point(k).outcome, Outcome::Finished { .. }));
            mine.sort_by(|&a, &b| ranking(point(a), point(b)));
            mine.truncate(keep);
            mine
        })
        .collect();
    next.sort_unstable();
    next
}

/// Each method's best pair at the full budget.
fn choose(options: &TuneOptions, pairs: &[Pair], points: &[GridPoint]) -> anyhow::Result<Tuned> {
    let mut chosen = Vec::new();
    for method in &options.methods {
        let Some(p) = best(
            points
                .iter()
                .filter(|p| &p.method == method && p.iterations == options.base.iters),
        ) else {
            bail!("{method}: every grid point diverged; try smaller steps");
        };
        let pair = pairs
            .iter()
            .find(|q| &q.method == method && q.lower == p.lower && q.upper == p.upper)
            .expect("the chosen point is a pair");
        chosen.push(pair.config.method());
    }
    Ok(Tuned {
        task: options.base.task,
        method: chosen,
    })
}

/// Writes `tuned.toml`, `grid.csv` and `grid.md` into `<out>/<task>/tune`; returns the directory
/// and the grid tables.
fn write_search(
    options: &TuneOptions,
    points: &[GridPoint],
    tuned: &Tuned,
    accuracy: &str,
    loss: &str,
) -> anyhow::Result<(PathBuf, String)> {
    let task = options.base.task;
    let dir = options.base.task_dir(&options.out).join("tune");
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let header = format!(
        "# Chosen by `bilevel-bench tune` on {}, {}, {} iterations{}: the best {}final\n\
         # {accuracy}{} (ties: lower {loss}) over the grid. Use with `bilevel-bench compare --tuned <this file>`.\n",
        task.as_str(),
        seeds_text(&options.seeds),
        options.base.iters,
        halving_text(options.halving.as_ref()),
        if options.seeds.len() > 1 { "median " } else { "" },
        refit_text(options.refit.as_ref()),
    );
    crate::run::durable::write_atomic(
        &dir.join("tuned.toml"),
        (header + &toml::to_string(tuned).context("serializing the tuned configurations")?)
            .as_bytes(),
    )?;
    write_csv(&dir, points)?;
    let markdown = grid_tables(options, points, accuracy)?;
    crate::run::durable::write_atomic(&dir.join("grid.md"), markdown.as_bytes())?;
    Ok((dir, markdown))
}

/// Removes the checkpoints of the pairs that halving stopped: only a continuation reads them,
/// and some are large (SABA's on hyper-rep: 2.6 GB written plainly). Their logs and summaries
/// stay; should a later search continue such a pair, it runs it again from the start.
fn remove_stopped_checkpoints(
    options: &TuneOptions,
    pairs: &[Pair],
    alive: &[usize],
    processes: &Processes,
) -> anyhow::Result<()> {
    let seeds = options.seeds.len();
    for (k, pair) in pairs.iter().enumerate() {
        if alive.contains(&k) {
            continue;
        }
        for (s, &seed) in options.seeds.iter().enumerate() {
            if run_owner(k, s, seeds) % processes.size() != processes.rank() {
                continue;
            }
            let dir = point_dir(
                &options.out,
                &options.base,
                &pair.method,
                pair.lower,
                pair.upper,
                seed,
            );
            crate::run::checkpoint::Checkpoint::remove_all(&dir)?;
        }
    }
    Ok(())
}

/// Which process runs seed `s` of pair `k` (modulo the number of processes): the same at every
/// rung, so a run continues where its earlier rung left its checkpoint.
fn run_owner(k: usize, s: usize, seeds: usize) -> usize {
    k * seeds + s
}

/// The iterations of every run the search plans: all pairs to the first budget, then the
/// survivors of each cut (as many as halving keeps) to the next.
fn planned_iterations(options: &TuneOptions, budgets: &[usize]) -> u64 {
    let mut pairs = options.lower_grid.len() * options.upper_grid.len();
    let mut done = 0;
    let mut per_method = 0;
    for &budget in budgets {
        per_method += pairs * (budget - done);
        done = budget;
        if let Some(h) = &options.halving {
            pairs = h.survivors(pairs);
        }
    }
    (per_method * options.methods.len() * options.seeds.len()) as u64
}

/// ", successive halving at 50, 150 iterations (the best 1/3 of each method's pairs went on)",
/// or nothing.
fn halving_text(halving: Option<&Halving>) -> String {
    let Some(h) = halving else {
        return String::new();
    };
    let rungs = h
        .rungs
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        ", successive halving at {rungs} iterations (the best 1/{} of each method's pairs went on)",
        h.reduction
    )
}

/// " after a refit of y (300 steps of 0.1 from the initial y, seed 0)", or nothing.
fn refit_text(refit: Option<&RefitOptions>) -> String {
    refit
        .map(|how| format!(" after a refit of y ({})", how.describe()))
        .unwrap_or_default()
}

/// "seed 0" or "seeds 0, 1, 2".
fn seeds_text(seeds: &[u64]) -> String {
    let list = seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let noun = if seeds.len() == 1 { "seed" } else { "seeds" };
    format!("{noun} {list}")
}

/// One row per run (grid pair × seed), with the iterations it ran (the last column, so that the
/// rows of searches without halving read as before).
fn write_csv(dir: &Path, points: &[GridPoint]) -> anyhow::Result<()> {
    let mut csv = String::from(
        "method,lower,upper,seed,status,validation_accuracy,validation_loss,iterations\n",
    );
    for p in points {
        for (seed, outcome) in &p.runs {
            let (method, lower, upper, iterations) = (&p.method, p.lower, p.upper, p.iterations);
            match outcome {
                Outcome::Finished { accuracy, loss } => writeln!(
                    csv,
                    "{method},{lower},{upper},{seed},finished,{accuracy},{loss},{iterations}"
                )?,
                Outcome::Diverged(_) => writeln!(
                    csv,
                    "{method},{lower},{upper},{seed},diverged,,,{iterations}"
                )?,
            }
        }
    }
    crate::run::durable::write_atomic(&dir.join("grid.csv"), csv.as_bytes())
}

/// One table per method: rows are lower steps, columns upper steps, cells the validation
/// accuracy at the end of the pair's run, the median over seeds (bold: chosen; "div.": diverged
/// on some seed; "@N": stopped by successive halving at N iterations).
fn grid_tables(
    options: &TuneOptions,
    points: &[GridPoint],
    accuracy: &str,
) -> anyhow::Result<String> {
    let iters = options.base.iters;
    let mut md = String::new();
    for method in &options.methods {
        let mine: Vec<&GridPoint> = points.iter().filter(|p| &p.method == method).collect();
        let chosen = best(mine.iter().copied().filter(|p| p.iterations == iters));
        let over = match options.seeds.len() {
            1 => String::new(),
            _ => format!("median over {}, ", seeds_text(&options.seeds)),
        };
        writeln!(
            md,
            "### {method}: final {accuracy}{} ({over}rows: lower step, columns: upper step)\n",
            refit_text(options.refit.as_ref())
        )?;
        if options.refit.is_some() {
            writeln!(
                md,
                "In brackets: the same at the method's own y, before the refit.\n"
            )?;
        }
        if let Some(h) = &options.halving {
            writeln!(
                md,
                "Successive halving: a cell marked @N stopped at N iterations, where its pair was \
                 not among the best 1/{} of the pairs still running; its figure is the one there.\n",
                h.reduction
            )?;
        }
        write!(md, "| lower \\ upper |")?;
        for u in &options.upper_grid {
            write!(md, " {u} |")?;
        }
        writeln!(md, "\n|---|{}", "---|".repeat(options.upper_grid.len()))?;
        for &l in &options.lower_grid {
            write!(md, "| {l} |")?;
            for &u in &options.upper_grid {
                let p = mine
                    .iter()
                    .find(|p| p.lower == l && p.upper == u)
                    .expect("every pair ran");
                let mut cell = match p.outcome {
                    Outcome::Finished { accuracy, .. } if chosen == Some(*p) => {
                        format!("**{accuracy:.4}**")
                    }
                    Outcome::Finished { accuracy, .. } => format!("{accuracy:.4}"),
                    Outcome::Diverged(_) => "div.".to_string(),
                };
                if let Some(Outcome::Finished { accuracy, .. }) = p.own {
                    write!(cell, " ({accuracy:.4})")?;
                }
                if p.iterations < iters {
                    write!(cell, " @{}", p.iterations)?;
                }
                write!(md, " {cell} |")?;
            }
            writeln!(md)?;
        }
        writeln!(md)?;
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_judged_by_its_median_seed_and_diverges_with_any_seed() {
        let done = |accuracy, loss| Outcome::Finished { accuracy, loss };
        let three = [
            (0, done(0.9, 0.1)),
            (1, done(0.5, 0.7)),
            (2, done(0.6, 0.4)),
        ];
        assert_eq!(over_seeds(&three), done(0.6, 0.4));
        let one_diverged = [
            (0, done(0.9, 0.1)),
            (4, Outcome::Diverged("loss is not finite".into())),
        ];
        assert_eq!(
            over_seeds(&one_diverged),
            Outcome::Diverged("seed 4: loss is not finite".into())
        );
        assert_eq!(seeds_text(&[3]), "seed 3");
        assert_eq!(seeds_text(&[0, 1, 2]), "seeds 0, 1, 2");
    }
}
