//! Several methods × seeds on one task: a results table (CSV and Markdown, median and 20–80%
//! range over seeds) and plots of the main metric against iterations, oracle calls and training
//! time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::commands::refit::{check_task, refitted_with, Refit, RefitOptions};
use crate::report::parallel::{map_over_processes, JobProgress};
use crate::report::plot::{plot, Series};
use crate::report::stats::{ensure_distinct, quantile};
use crate::report::tuned::Tuned;
use crate::report::{is_divergence, DIVERGED_FILE};
use crate::run::config::{RunConfig, TaskName};
use crate::run::processes::Processes;
use crate::run::summary::{Evaluation, RunSummary};
use crate::run::{run, run_dir};

/// What `compare` runs and where.
pub struct CompareOptions {
    /// Task, budget and the starting configuration of each method.
    pub base: RunConfig,
    /// The methods, by name.
    pub methods: Vec<String>,
    /// Every method runs with each of these seeds.
    pub seeds: Vec<u64>,
    /// The directory the runs and the results go to.
    pub out: PathBuf,
    /// Whether to show a progress bar.
    pub progress: bool,
    /// Configurations chosen by `tune`; a method found here runs with them.
    pub tuned: Option<Tuned>,
    /// Runs at once, one thread each.
    pub jobs: usize,
    /// (method, lower, upper) step pairs applied last, over `tuned` (for pairs published
    /// elsewhere, such as the paper's of algorithms.md §7.2).
    pub steps: Vec<StepPair>,
    /// Refit every finished run so (`bilevel-bench refit`), unless its `refit.json` already
    /// holds these options; the refitted runs get their own table.
    pub refit: Option<RefitOptions>,
}

/// A method's (lower, upper) step sizes in the sense of `MethodConfig::level_steps`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPair {
    /// The method's name.
    pub method: String,
    /// The step of y.
    pub lower: f64,
    /// The step of x.
    pub upper: f64,
}

impl std::str::FromStr for StepPair {
    type Err = String;

    /// Parses `METHOD=LOWER:UPPER`, for example `maml=0.05:0.1`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("'{text}' is not METHOD=LOWER:UPPER (for example maml=0.05:0.1)");
        let (method, pair) = text.split_once('=').ok_or_else(bad)?;
        let (lower, upper) = pair.split_once(':').ok_or_else(bad)?;
        let step = |s: &str| -> Result<f64, String> {
            let v: f64 = s.trim().parse().map_err(|_| bad())?;
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(format!("'{text}': a step must be positive and finite"))
            }
        };
        Ok(StepPair {
            method: method.trim().to_string(),
            lower: step(lower)?,
            upper: step(upper)?,
        })
    }
}

/// What `compare` wrote.
pub struct CompareReport {
    /// The results directory (tables and plots).
    pub dir: PathBuf,
    /// The results table, as printed.
    pub markdown: String,
    /// Every finished run, method by method and seed by seed.
    pub runs: Vec<RunSummary>,
    /// The runs that diverged (a non-finite value), left out of the table's figures.
    pub diverged: Vec<DivergedRun>,
}

/// A run of a comparison that stopped at a non-finite value: a result (its steps are too large
/// for that seed), not a failure of the comparison, which goes on with the other runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DivergedRun {
    /// The method's name.
    pub method: String,
    /// The seed.
    pub seed: u64,
    /// The error, naming the iteration and the value that was not finite.
    pub why: String,
}

/// How one run of a comparison ended.
#[derive(serde::Serialize, serde::Deserialize)]
enum RunOutcome {
    Finished(RunSummary),
    Diverged(DivergedRun),
}

/// Runs (or reuses) every method × seed and writes the tables and plots.
pub fn compare(options: &CompareOptions, data_dir: &Path) -> anyhow::Result<CompareReport> {
    compare_shared(options, data_dir, &Processes::single())
}

/// [`compare`] with its runs dealt to `processes` (the ranks of `mpirun`), each of which must
/// call it with the same arguments: each runs its share with `jobs` threads, every process gets
/// every outcome, and process 0 writes the tables and plots, the same as one process's.
pub fn compare_shared(
    options: &CompareOptions,
    data_dir: &Path,
    processes: &Processes,
) -> anyhow::Result<CompareReport> {
    if options.jobs == 0 {
        anyhow::bail!("--jobs must be at least 1");
    }
    if let Some(r) = &options.refit {
        r.validate()?;
        check_task(options.base.task).map_err(|e| anyhow::anyhow!("--refit: {e}"))?;
    }
    ensure_distinct("--methods", &options.methods)?;
    ensure_distinct("--seeds", &options.seeds)?;
    if let Some(tuned) = &options.tuned {
        if tuned.task != options.base.task {
            anyhow::bail!(
                "the tuned configurations are for {}, not {}",
                tuned.task.as_str(),
                options.base.task.as_str()
            );
        }
    }
    for pair in &options.steps {
        if !options.methods.contains(&pair.method) {
            anyhow::bail!(
                "--steps names {}, which is not among the compared methods ({})",
                pair.method,
                options.methods.join(", ")
            );
        }
    }
    let mut configs = Vec::new();
    for method in &options.methods {
        for &seed in &options.seeds {
            let mut config = options.base.clone().with_method(Some(method))?;
            if let Some(tuned) = options.tuned.as_ref().and_then(|t| t.get(method)) {
                config.method = Some(tuned.clone());
            }
            if let Some(pair) = options.steps.iter().find(|p| &p.method == method) {
                let mut chosen = config.method();
                chosen.set_level_steps(pair.lower, pair.upper);
                config.method = Some(chosen);
            }
            config.seed = seed;
            configs.push(config);
        }
    }
    // One progress bar at a time: bars of parallel runs would overwrite each other, so runs on
    // several threads share one bar over the whole comparison.
    let progress = options.progress && processes.writes();
    let each_run_draws = progress && options.jobs <= 1 && processes.size() == 1;
    let job = JobProgress::new(
        &format!("compare {}", options.base.task.as_str()),
        (configs.len() * options.base.iters) as u64,
        progress && !each_run_draws,
    );
    let outcomes = map_over_processes(
        &configs,
        options.jobs,
        processes,
        |i| i,
        |config| {
            let dir = run_dir(&options.out, config);
            let what = format!("{} seed {}", config.method().name(), config.seed);
            let diverged = |why: String| {
                RunOutcome::Diverged(DivergedRun {
                    method: config.method().name().to_string(),
                    seed: config.seed,
                    why,
                })
            };
            let refit = |outcome: RunOutcome| -> anyhow::Result<RunOutcome> {
                if let (RunOutcome::Finished(_), Some(r)) = (&outcome, &options.refit) {
                    refitted_with(data_dir, &dir, r).with_context(|| what.clone())?;
                }
                Ok(outcome)
            };
            let result = match earlier_outcome(config, &dir) {
                Some(Ok(done)) => Ok((RunOutcome::Finished(done), "reused")),
                Some(Err(why)) => Ok((diverged(why), "reused, diverged")),
                None => match run(config, data_dir, &dir, each_run_draws) {
                    Ok(done) => {
                        let _ = std::fs::remove_file(dir.join(DIVERGED_FILE));
                        Ok((RunOutcome::Finished(done), "finished"))
                    }
                    Err(e) if is_divergence(&e) => {
                        let why = format!("{e:#}");
                        crate::run::durable::write_atomic(&dir.join(DIVERGED_FILE), why.as_bytes())
                            .with_context(|| what.clone())?;
                        Ok((diverged(why), "diverged"))
                    }
                    Err(e) => Err(e).with_context(|| what.clone()),
                },
            };
            let result = result.and_then(|(outcome, how)| Ok((refit(outcome)?, how)));
            let line = match &result {
                Ok((RunOutcome::Diverged(d), how)) => format!("{what}: {how}: {}", d.why),
                Ok((_, how)) => format!("{what}: {how}"),
                Err(e) => format!("{e:#}"),
            };
            job.finished(config.iters as u64, &line);
            result.map(|(r, _)| r)
        },
    )?
    .into_iter()
    .collect::<anyhow::Result<Vec<_>>>()?;
    let (mut runs, mut diverged) = (Vec::new(), Vec::new());
    for outcome in outcomes {
        match outcome {
            RunOutcome::Finished(r) => runs.push(r),
            RunOutcome::Diverged(d) => diverged.push(d),
        }
    }
    job.finish();
    let task = options.base.task;
    let dir = options.base.task_dir(&options.out).join("compare");
    if !processes.writes() {
        return Ok(CompareReport {
            dir,
            markdown: String::new(),
            runs,
            diverged,
        });
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut markdown = write_table(&dir, "results", task, &options.methods, &runs, &diverged)?;
    if let Some(stopped) = stopped_at_best_validation(&runs) {
        let table = write_table(
            &dir,
            STOPPED_STEM,
            task,
            &options.methods,
            &stopped,
            &diverged,
        )?;
        write!(
            markdown,
            "\nEach run at its evaluation with the best {STOPPING_METRIC} \
             ({STOPPED_STEM}.md):\n\n{table}"
        )?;
    }
    if let Some((refitted, how)) = refitted(&runs)? {
        let table = write_table(
            &dir,
            REFIT_STEM,
            task,
            &options.methods,
            &refitted,
            &diverged,
        )?;
        write!(
            markdown,
            "\nEach run's x refitted ({REFIT_STEM}.md; `bilevel-bench refit`, {how}):\n\n{table}"
        )?;
    }
    markdown.push_str(&diverged_list(&diverged));
    write_diverged_csv(&dir, &diverged)?;
    write_plots(&dir, task, &options.methods, &runs)?;
    Ok(CompareReport {
        dir,
        markdown,
        runs,
        diverged,
    })
}

/// What `dir` already holds for `config`: its finished summary, or why it diverged.
fn earlier_outcome(config: &RunConfig, dir: &Path) -> Option<Result<RunSummary, String>> {
    if let Some(done) = finished_run(config, dir) {
        return Some(Ok(done));
    }
    let saved = RunConfig::saved_matching(&dir.join("config.toml"), config)?;
    let why = std::fs::read_to_string(dir.join(DIVERGED_FILE)).ok()?;
    (saved.iters == config.iters).then_some(Err(why))
}

/// The summary of a run of exactly `config` that already finished in `dir`, so that a comparison
/// that was interrupted (or extended by methods or seeds) reruns only what is missing.
pub fn finished_run(config: &RunConfig, dir: &Path) -> Option<RunSummary> {
    let saved = RunConfig::saved_matching(&dir.join("config.toml"), config)?;
    let text = std::fs::read_to_string(dir.join("summary.json")).ok()?;
    let summary: RunSummary = serde_json::from_str(&text).ok()?;
    let complete = summary.evaluations.last()?.iteration == config.iters;
    (saved.iters == config.iters && complete).then_some(summary)
}

/// The metric that picks each run's iterate in the early-stopping table.
const STOPPING_METRIC: &str = "validation/accuracy";
/// The early-stopping table's file names (`.md`, `.csv`).
const STOPPED_STEM: &str = "results_at_best_validation";
/// The metric that says at which iteration a run was stopped.
const STOPPED_AT: &str = "stopped/iteration";

/// Each run as if it had stopped at its evaluation with the best validation accuracy (the
/// earliest of equals; a non-finite value never wins): early stopping chosen without looking at
/// the test split, as practitioners select an iterate. The chosen iteration is reported as the
/// metric `stopped/iteration`. A run's candidates are the iterations that all runs of its method
/// evaluated, so that no seed gets more chances than another. `None` unless every candidate
/// evaluation of every run reports the metric.
fn stopped_at_best_validation(runs: &[RunSummary]) -> Option<Vec<RunSummary>> {
    let mut candidates_of: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for r in runs {
        candidates_of.entry(&r.method).or_insert_with(|| {
            let same_method: Vec<&RunSummary> =
                runs.iter().filter(|o| o.method == r.method).collect();
            common_iterations(&same_method)
        });
    }
    runs.iter()
        .map(|r| {
            let candidates = &candidates_of[r.method.as_str()];
            let mut best: Option<(&Evaluation, f64)> = None;
            for e in r
                .evaluations
                .iter()
                .filter(|e| candidates.contains(&e.iteration))
            {
                let v = *e.metrics.get(STOPPING_METRIC)?;
                let better = match best {
                    None => true,
                    Some((_, b)) => v > b || (b.is_nan() && !v.is_nan()),
                };
                if better {
                    best = Some((e, v));
                }
            }
            let mut stopped = best?.0.clone();
            stopped
                .metrics
                .insert(STOPPED_AT.into(), stopped.iteration as f64);
            Some(RunSummary {
                evaluations: vec![stopped],
                ..r.clone()
            })
        })
        .collect()
}

/// The stem of the table of refitted runs.
const REFIT_STEM: &str = "refit";

/// The runs whose directories hold a `refit.json` (written by `bilevel-bench refit`), each with
/// the refit's metrics as its last evaluation, and how they were refitted; `None` when no run
/// was. Refits made with different options are not mixed into one table: an error names two
/// runs that differ.
fn refitted(runs: &[RunSummary]) -> anyhow::Result<Option<(Vec<RunSummary>, String)>> {
    let mut out: Vec<(RunSummary, Refit)> = Vec::new();
    for r in runs {
        let Some(refit) = Refit::read(&r.dir)? else {
            continue;
        };
        if let Some((first, first_refit)) = out.first() {
            if refit.options != first_refit.options {
                anyhow::bail!(
                    "{} and {} were refitted with different options; refit them alike",
                    first.dir.display(),
                    r.dir.display()
                );
            }
        }
        let last = r.evaluations.last().cloned().unwrap_or(Evaluation {
            iteration: refit.iteration,
            oracle_calls: 0,
            train_seconds: 0.0,
            metrics: Default::default(),
        });
        let refitted = RunSummary {
            evaluations: vec![Evaluation {
                metrics: refit.metrics.clone(),
                ..last
            }],
            ..r.clone()
        };
        out.push((refitted, refit));
    }
    let Some((_, first)) = out.first() else {
        return Ok(None);
    };
    let how = first.options.describe();
    Ok(Some((out.into_iter().map(|(r, _)| r).collect(), how)))
}

/// Writes `<stem>.csv` and `<stem>.md`: per method, every metric's median and [20%, 80%] range
/// over seeds at each run's last evaluation; returns the Markdown.
fn write_table(
    dir: &Path,
    stem: &str,
    task: TaskName,
    methods: &[String],
    runs: &[RunSummary],
    diverged: &[DivergedRun],
) -> anyhow::Result<String> {
    // Every metric any run reports: a run reused from before a task gained a metric lacks it,
    // and its cells say over how many seeds they are.
    let metric_names: Vec<String> = runs
        .iter()
        .flat_map(|r| r.last().keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut csv = String::from("method,metric,median,q20,q80,seeds\n");
    let main = task.main_metric();
    let mut ordered: Vec<&String> = metric_names.iter().filter(|m| m.as_str() == main).collect();
    ordered.extend(metric_names.iter().filter(|m| m.as_str() != main));
    let mut md = format!(
        "| method | {} | oracle calls | train seconds |\n|---|",
        ordered
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    md.push_str(&"---|".repeat(ordered.len() + 2));
    md.push('\n');
    for method in methods {
        let mine: Vec<&RunSummary> = runs.iter().filter(|r| &r.method == method).collect();
        let cell = |name: &str, values: Vec<f64>| {
            let partial = if values.len() < mine.len() {
                format!(" ({} of {} seeds)", values.len(), mine.len())
            } else {
                String::new()
            };
            // Iterations are counts; every other metric is a loss, accuracy or rate.
            let decimals = if name == STOPPED_AT { 0 } else { 4 };
            format!(
                "{:.decimals$} [{:.decimals$}, {:.decimals$}]{partial}",
                quantile(&values, 0.5),
                quantile(&values, 0.2),
                quantile(&values, 0.8)
            )
        };
        let lost: Vec<String> = diverged
            .iter()
            .filter(|d| &d.method == method)
            .map(|d| d.seed.to_string())
            .collect();
        let mut row = if lost.is_empty() {
            format!("| {method} |")
        } else {
            format!("| {method} (diverged: seed {}) |", lost.join(", "))
        };
        for name in &ordered {
            let values: Vec<f64> = mine
                .iter()
                .filter_map(|r| r.last().get(*name).copied())
                .collect();
            writeln!(
                csv,
                "{method},{name},{},{},{},{}",
                quantile(&values, 0.5),
                quantile(&values, 0.2),
                quantile(&values, 0.8),
                values.len()
            )?;
            write!(row, " {} |", cell(name, values))?;
        }
        let last = |f: fn(&crate::run::summary::Evaluation) -> f64| {
            mine.iter()
                .filter_map(|r| r.evaluations.last().map(f))
                .collect::<Vec<_>>()
        };
        let calls = last(|e| e.oracle_calls as f64);
        let secs = last(|e| e.train_seconds);
        writeln!(
            row,
            " {:.0} | {:.1} |",
            quantile(&calls, 0.5),
            quantile(&secs, 0.5)
        )?;
        md.push_str(&row);
    }
    crate::run::durable::write_atomic(&dir.join(format!("{stem}.csv")), csv.as_bytes())?;
    let file = format!("{md}{}", diverged_list(diverged));
    crate::run::durable::write_atomic(&dir.join(format!("{stem}.md")), file.as_bytes())?;
    Ok(md)
}

/// The diverged runs as the tables' footnote (empty when none diverged).
fn diverged_list(diverged: &[DivergedRun]) -> String {
    if diverged.is_empty() {
        return String::new();
    }
    let mut md = String::from("\nDiverged runs, left out of the figures above (diverged.csv):\n\n");
    for d in diverged {
        md.push_str(&format!("- {} seed {}: {}\n", d.method, d.seed, d.why));
    }
    md
}

/// `diverged.csv`: method, seed and reason of every diverged run (written only when one did).
fn write_diverged_csv(dir: &Path, diverged: &[DivergedRun]) -> anyhow::Result<()> {
    if diverged.is_empty() {
        return Ok(());
    }
    let mut csv = String::from("method,seed,reason\n");
    for d in diverged {
        writeln!(
            csv,
            "{},{},\"{}\"",
            d.method,
            d.seed,
            d.why.replace('"', "'")
        )?;
    }
    crate::run::durable::write_atomic(&dir.join("diverged.csv"), csv.as_bytes())
}

/// The x coordinate of an evaluation on one plot axis.
type XAxis = fn(&crate::run::summary::Evaluation) -> f64;

fn write_plots(
    dir: &Path,
    task: TaskName,
    methods: &[String],
    runs: &[RunSummary],
) -> anyhow::Result<()> {
    let metric = task.main_metric();
    let axes: [(&str, &str, XAxis); 3] = [
        ("iterations", "iterations", |e| e.iteration as f64),
        (
            "oracle_calls",
            "oracle calls (∇F + ∇G + H·v + J·v)",
            |e| e.oracle_calls as f64,
        ),
        ("time", "training time (s)", |e| e.train_seconds),
    ];
    for (file, label, x_of) in axes {
        let series: Vec<Series> = methods
            .iter()
            .map(|method| {
                let mine: Vec<&RunSummary> = runs.iter().filter(|r| &r.method == method).collect();
                method_series(method, &mine, x_of, metric)
            })
            .collect();
        let title = format!("{}: {metric} (median, 20–80% over seeds)", task.as_str());
        plot(
            &dir.join(format!("{}_vs_{file}", metric.replace('/', "_"))),
            &title,
            label,
            metric,
            &series,
        )?;
    }
    Ok(())
}

/// One method's curve: at each iteration that all its runs evaluated, the median (and 20% and
/// 80% quantiles) over its runs of `metric`, placed at the median of `x_of`.
fn method_series(method: &str, runs: &[&RunSummary], x_of: XAxis, metric: &str) -> Series {
    let iterations = common_iterations(runs);
    let at = |iteration: usize, f: &dyn Fn(&Evaluation) -> f64| {
        runs.iter()
            .filter_map(|r| r.evaluations.iter().find(|e| e.iteration == iteration))
            .map(f)
            .collect::<Vec<_>>()
    };
    let value = |e: &Evaluation| e.metrics.get(metric).copied().unwrap_or(f64::NAN);
    let over = |q: f64, f: &dyn Fn(&Evaluation) -> f64| {
        iterations.iter().map(|&i| quantile(&at(i, f), q)).collect()
    };
    Series {
        name: method.to_string(),
        x: over(0.5, &x_of),
        median: over(0.5, &value),
        low: over(0.2, &value),
        high: over(0.8, &value),
    }
}

/// The iterations at which every one of `runs` evaluated, in order. A method's seeds are compared
/// at the same iterations even where one run evaluated more often: a seed-0 run reused from
/// `tune`'s successive halving also evaluated at the rungs.
fn common_iterations(runs: &[&RunSummary]) -> Vec<usize> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .evaluations
        .iter()
        .map(|e| e.iteration)
        .filter(|&i| {
            runs.iter()
                .all(|r| r.evaluations.iter().any(|e| e.iteration == i))
        })
        .collect()
}

/// Plots of one run's evaluation metrics against iterations (`<run dir>/plots/`): every metric
/// whose name ends in `loss` or `accuracy`. Returns the plot directory.
pub fn plot_run(summary: &RunSummary) -> anyhow::Result<PathBuf> {
    let dir = summary.dir.join("plots");
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let names: Vec<&String> = summary
        .last()
        .keys()
        .filter(|n| n.ends_with("loss") || n.ends_with("accuracy"))
        .collect();
    for name in names {
        let x: Vec<f64> = summary
            .evaluations
            .iter()
            .map(|e| e.iteration as f64)
            .collect();
        let y: Vec<f64> = summary
            .evaluations
            .iter()
            .map(|e| e.metrics.get(name).copied().unwrap_or(f64::NAN))
            .collect();
        let series = Series {
            name: summary.method.clone(),
            x,
            median: y.clone(),
            low: y.clone(),
            high: y,
        };
        let title = format!("{} seed {}: {name}", summary.task, summary.seed);
        plot(
            &dir.join(name.replace('/', "_")),
            &title,
            "iterations",
            name,
            &[series],
        )?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluation(iteration: usize, metrics: &[(&str, f64)]) -> Evaluation {
        Evaluation {
            iteration,
            oracle_calls: 3 * iteration as u64,
            train_seconds: 1.0,
            metrics: metrics.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        }
    }

    fn summary(seed: u64, metrics: &[(&str, f64)]) -> RunSummary {
        RunSummary {
            task: "hyper-rep".into(),
            method: "slip".into(),
            seed,
            dir: PathBuf::new(),
            evaluations: vec![evaluation(10, metrics)],
        }
    }

    /// The stopped iterate is the first of the best validation figures, a NaN never wins, and a
    /// run without the validation figure means there is no early-stopping table.
    #[test]
    fn early_stopping_picks_the_first_best_validation_evaluation() {
        let val = |v: f64, test: f64| [("validation/accuracy", v), ("test/accuracy", test)];
        let run = RunSummary {
            evaluations: vec![
                evaluation(0, &val(f64::NAN, 0.1)),
                evaluation(10, &val(0.6, 0.2)),
                evaluation(20, &val(0.7, 0.3)),
                evaluation(30, &val(0.7, 0.4)),
                evaluation(40, &val(0.5, 0.5)),
            ],
            ..summary(0, &[])
        };
        let stopped = stopped_at_best_validation(std::slice::from_ref(&run)).unwrap();
        let at = &stopped[0].evaluations;
        assert_eq!(at.len(), 1);
        assert_eq!((at[0].iteration, at[0].oracle_calls), (20, 60));
        assert_eq!(at[0].metrics["test/accuracy"], 0.3);
        assert_eq!(at[0].metrics["stopped/iteration"], 20.0);
        let dir = std::env::temp_dir().join(format!("bilevel-stopped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let md = write_table(
            &dir,
            STOPPED_STEM,
            TaskName::HyperRep,
            &["slip".into()],
            &stopped,
            &[],
        );
        assert!(md
            .unwrap()
            .contains("| 0.3000 [0.3000, 0.3000] | 20 [20, 20] |"));
        let _ = std::fs::remove_dir_all(&dir);
        let all_nan = RunSummary {
            evaluations: vec![evaluation(0, &val(f64::NAN, 0.1))],
            ..summary(0, &[])
        };
        assert_eq!(
            stopped_at_best_validation(&[all_nan]).unwrap()[0].evaluations[0].iteration,
            0
        );
        let without = summary(1, &[("test/accuracy", 0.5)]);
        assert!(stopped_at_best_validation(&[run, without]).is_none());
    }

    /// A seed-0 run reused from tune's successive halving also evaluated at a rung (iteration 5
    /// here); the curve and early stopping use only the iterations every seed evaluated, so the
    /// k-th point is never a mix of different iterations.
    #[test]
    fn seeds_are_compared_at_the_iterations_they_all_evaluated() {
        let acc = |v: f64| [("validation/accuracy", v), ("test/accuracy", v)];
        let with_rung = RunSummary {
            evaluations: vec![
                evaluation(0, &acc(0.5)),
                evaluation(5, &acc(0.9)),
                evaluation(10, &acc(0.6)),
                evaluation(20, &acc(0.7)),
            ],
            ..summary(0, &[])
        };
        let plain = |seed, last| RunSummary {
            evaluations: vec![
                evaluation(0, &acc(0.5)),
                evaluation(10, &acc(0.6)),
                evaluation(20, &acc(last)),
            ],
            ..summary(seed, &[])
        };
        let runs = [with_rung, plain(1, 0.8), plain(2, 0.9)];
        let mine: Vec<&RunSummary> = runs.iter().collect();
        assert_eq!(common_iterations(&mine), vec![0, 10, 20]);
        let series = method_series("slip", &mine, |e| e.iteration as f64, "test/accuracy");
        assert_eq!(series.x, vec![0.0, 10.0, 20.0]);
        assert_eq!(series.median, vec![0.5, 0.6, 0.8]);
        assert!((series.low[2] - 0.74).abs() < 1e-12, "{:?}", series.low);
        let stopped = stopped_at_best_validation(&runs).unwrap();
        assert_eq!(stopped[0].evaluations[0].iteration, 20);
    }

    /// A metric that only some runs report (a run reused from before the task had it) gets a
    /// column, and its cell says over how many seeds it is.
    #[test]
    fn a_metric_missing_from_some_runs_is_marked_not_dropped() {
        let dir = std::env::temp_dir().join(format!("bilevel-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let runs = [
            summary(0, &[("test/accuracy", 0.5)]),
            summary(1, &[("test/accuracy", 0.7), ("validation/accuracy", 0.6)]),
        ];
        let md = write_table(
            &dir,
            "results",
            TaskName::HyperRep,
            &["slip".into()],
            &runs,
            &[],
        )
        .unwrap();
        assert!(
            md.contains("| test/accuracy | validation/accuracy |"),
            "{md}"
        );
        assert!(md.contains("| 0.6000 [0.5400, 0.6600] |"), "{md}");
        assert!(
            md.contains("| 0.6000 [0.6000, 0.6000] (1 of 2 seeds) |"),
            "{md}"
        );
        let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
        assert!(
            csv.contains("slip,validation/accuracy,0.6,0.6,0.6,1"),
            "{csv}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
