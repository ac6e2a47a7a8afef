//! Grid search of each method's (lower, upper) step sizes on one task, as `tasks.md` asks: every
//! pair of the grid runs at the configured budget, the pair with the best validation metric is
//! chosen, and a file of the chosen configurations feeds `compare --tuned`.
//!
//! Which step of a method is "lower" and which "upper" is [`MethodConfig::level_steps`]. With
//! several seeds a pair is judged by the median over seeds, because one seed's lucky run can pick
//! steps that are unstable on the others. A pair with a diverged run (a non-finite value) on any
//! seed is recorded as diverged and never chosen. A finished run of the same configuration
//! already in the output directory is reused, so an interrupted or widened search runs only what
//! is missing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bilevel_optim::error::BilevelError;
use bilevel_optim::methods::MethodConfig;
use serde::{Deserialize, Serialize};

use crate::compare::{ensure_distinct, finished_run, quantile};
use crate::config::{RunConfig, TaskName};
use crate::parallel::map_in_threads;
use crate::runner::{run, RunSummary};
use crate::task_config;

pub struct TuneOptions {
    /// Task, budget and the starting configuration of each method (its other hyperparameters).
    pub base: RunConfig,
    pub methods: Vec<String>,
    pub lower_grid: Vec<f64>,
    pub upper_grid: Vec<f64>,
    /// Every pair runs with each of these seeds.
    pub seeds: Vec<u64>,
    pub out: PathBuf,
    /// Runs (grid pair × seed) at once, each on its own thread.
    pub jobs: usize,
    /// Print one line per finished grid point.
    pub verbose: bool,
}

/// How one grid point ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The final validation accuracy and loss.
    Finished { accuracy: f64, loss: f64 },
    /// A non-finite value stopped the run (the first line of what the method reported).
    Diverged(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct GridPoint {
    pub method: String,
    pub lower: f64,
    pub upper: f64,
    /// Over seeds: the median final accuracy and loss, or the first divergence.
    pub outcome: Outcome,
    /// Each seed's own outcome, in the order of [`TuneOptions::seeds`].
    pub runs: Vec<(u64, Outcome)>,
}

/// The chosen configuration of each method, as `tuned.toml` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuned {
    pub task: TaskName,
    pub method: Vec<MethodConfig>,
}

impl Tuned {
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the tuned configurations", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The tuned configuration of the method called `name`, if it was tuned.
    pub fn get(&self, name: &str) -> Option<&MethodConfig> {
        self.method.iter().find(|m| m.name() == name)
    }
}

pub struct TuneReport {
    pub dir: PathBuf,
    pub points: Vec<GridPoint>,
    pub tuned: Tuned,
    pub markdown: String,
}

/// The metric the grid search maximizes: the validation split's, never the test split's.
/// hyper-rep's validation tasks are the bench's addition (`HyperRepConfig::validation_tasks`);
/// with none there is nothing to choose on.
fn selection_metric(config: &RunConfig) -> anyhow::Result<(&'static str, &'static str)> {
    if config.task == TaskName::HyperRep && config.hyper_rep.validation_tasks == 0 {
        bail!(
            "hyper_rep.validation_tasks is 0: hyper-rep needs validation tasks to tune on \
             (tuning on its test tasks would report a tuned test score)"
        );
    }
    Ok(("validation/accuracy", "validation/loss"))
}

/// Whether `e` is a divergence (a non-finite value) rather than a failure of the bench itself.
fn is_divergence(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<BilevelError>(),
            Some(BilevelError::NonFinite { .. })
        )
    })
}

/// The directory of one grid point's run with one seed:
/// `<out>/<task>/tune/<method>/lower-L_upper-U/seed-S/`.
fn point_dir(
    out: &Path,
    task: TaskName,
    method: &str,
    lower: f64,
    upper: f64,
    seed: u64,
) -> PathBuf {
    out.join(task.as_str())
        .join("tune")
        .join(method)
        .join(format!("lower-{lower}_upper-{upper}"))
        .join(format!("seed-{seed}"))
}

fn finished(summary: &RunSummary, accuracy: &str, loss: &str) -> anyhow::Result<Outcome> {
    let last = summary.last();
    let read = |name: &str| {
        last.get(name)
            .copied()
            .with_context(|| format!("the run reports no '{name}'"))
    };
    let (accuracy, loss) = (read(accuracy)?, read(loss)?);
    Ok(if accuracy.is_finite() && loss.is_finite() {
        Outcome::Finished { accuracy, loss }
    } else {
        Outcome::Diverged(format!("final {accuracy} accuracy, {loss} loss"))
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

/// The file in which a grid run that diverged records why, so that a later `tune` over the same
/// `--out` reuses the outcome instead of running the pair again.
const DIVERGED_FILE: &str = "diverged.txt";

/// The recorded divergence of a run of `config` in `dir`, if that is how it ended.
fn recorded_divergence(config: &RunConfig, dir: &Path) -> Option<String> {
    let saved = RunConfig::from_file(&dir.join("config.toml")).ok()?;
    (saved == *config)
        .then(|| std::fs::read_to_string(dir.join(DIVERGED_FILE)).ok())
        .flatten()
}

/// Runs (or reuses) one grid point with one seed.
fn run_point(
    config: &RunConfig,
    data_dir: &Path,
    dir: &Path,
    accuracy: &str,
    loss: &str,
) -> anyhow::Result<Outcome> {
    // A run from before its task reported the selection metric (hyper-rep's validation tasks)
    // is run again rather than reused.
    let reusable = finished_run(config, dir).filter(|s| s.last().contains_key(accuracy));
    if let Some(summary) = reusable {
        return finished(&summary, accuracy, loss);
    }
    if let Some(why) = recorded_divergence(config, dir) {
        return Ok(Outcome::Diverged(why));
    }
    let diverged_file = dir.join(DIVERGED_FILE);
    if diverged_file.exists() {
        std::fs::remove_file(&diverged_file)
            .with_context(|| format!("{}: cannot remove", diverged_file.display()))?;
    }
    match run(config, data_dir, dir, false) {
        Ok(summary) => finished(&summary, accuracy, loss),
        Err(e) if is_divergence(&e) => {
            let why = e.root_cause().to_string();
            let why = why.lines().next().unwrap_or_default();
            std::fs::write(&diverged_file, why)
                .with_context(|| format!("{}: cannot write", diverged_file.display()))?;
            Ok(Outcome::Diverged(why.into()))
        }
        Err(e) => Err(e),
    }
}

/// The best finished point: highest accuracy, then lowest loss, then the smaller steps.
fn best<'a>(points: impl Iterator<Item = &'a GridPoint>) -> Option<&'a GridPoint> {
    points
        .filter_map(|p| match p.outcome {
            Outcome::Finished { accuracy, loss } => Some((p, accuracy, loss)),
            Outcome::Diverged(_) => None,
        })
        .min_by(|(p, a1, l1), (q, a2, l2)| {
            a2.total_cmp(a1)
                .then(l1.total_cmp(l2))
                .then(p.lower.total_cmp(&q.lower))
                .then(p.upper.total_cmp(&q.upper))
        })
        .map(|(p, _, _)| p)
}

pub fn tune(options: &TuneOptions, data_dir: &Path) -> anyhow::Result<TuneReport> {
    let task = options.base.task;
    let (accuracy, loss) = selection_metric(&options.base)?;
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
    // Every configuration is built (and checked) before anything runs.
    let mut work = Vec::new();
    for method in &options.methods {
        let base = task_config(options.base.clone(), Some(method))?;
        for &lower in &options.lower_grid {
            for &upper in &options.upper_grid {
                let mut m = base.method();
                m.set_level_steps(lower, upper);
                m.validate()
                    .with_context(|| format!("{method} at ({lower}, {upper})"))?;
                for &seed in &options.seeds {
                    let mut config = base.clone();
                    config.method = Some(m.clone());
                    config.seed = seed;
                    work.push((method.clone(), lower, upper, config));
                }
            }
        }
    }
    let outcomes = map_in_threads(&work, options.jobs, |(method, lower, upper, config)| {
        let dir = point_dir(&options.out, task, method, *lower, *upper, config.seed);
        let outcome = run_point(config, data_dir, &dir, accuracy, loss)
            .with_context(|| format!("{method} at ({lower}, {upper}), seed {}", config.seed));
        if options.verbose {
            match &outcome {
                Ok(o) => eprintln!(
                    "{method} lower {lower} upper {upper} seed {}: {o:?}",
                    config.seed
                ),
                Err(e) => eprintln!("{e:#}"),
            }
        }
        outcome
    })
    .into_iter()
    .collect::<anyhow::Result<Vec<_>>>()?;
    // `work` holds each pair's seeds consecutively.
    let points: Vec<GridPoint> = work
        .chunks(options.seeds.len())
        .zip(outcomes.chunks(options.seeds.len()))
        .map(|(pair, outcomes)| {
            let (method, lower, upper, _) = &pair[0];
            let runs: Vec<(u64, Outcome)> = pair
                .iter()
                .map(|(.., config)| config.seed)
                .zip(outcomes.iter().cloned())
                .collect();
            GridPoint {
                method: method.clone(),
                lower: *lower,
                upper: *upper,
                outcome: over_seeds(&runs),
                runs,
            }
        })
        .collect();

    let mut chosen = Vec::new();
    for method in &options.methods {
        let Some(p) = best(points.iter().filter(|p| &p.method == method)) else {
            bail!("{method}: every grid point diverged; try smaller steps");
        };
        let mut m = work
            .iter()
            .find(|(name, ..)| name == method)
            .expect("every method has grid points")
            .3
            .method();
        m.set_level_steps(p.lower, p.upper);
        chosen.push(m);
    }
    let tuned = Tuned {
        task,
        method: chosen,
    };
    let dir = options.out.join(task.as_str()).join("tune");
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let header = format!(
        "# Chosen by `bilevel-bench tune` on {}, {}, {} iterations: the best {}final {accuracy}\n\
         # (ties: lower {loss}) over the grid. Use with `bilevel-bench compare --tuned <this file>`.\n",
        task.as_str(),
        seeds_text(&options.seeds),
        options.base.iters,
        if options.seeds.len() > 1 { "median " } else { "" },
    );
    std::fs::write(
        dir.join("tuned.toml"),
        header + &toml::to_string(&tuned).context("serializing the tuned configurations")?,
    )?;
    write_csv(&dir, &points)?;
    let markdown = grid_tables(options, &points, accuracy)?;
    std::fs::write(dir.join("grid.md"), &markdown)?;
    Ok(TuneReport {
        dir,
        points,
        tuned,
        markdown,
    })
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

/// One row per run (grid pair × seed).
fn write_csv(dir: &Path, points: &[GridPoint]) -> anyhow::Result<()> {
    let mut csv =
        String::from("method,lower,upper,seed,status,validation_accuracy,validation_loss\n");
    for p in points {
        for (seed, outcome) in &p.runs {
            let (method, lower, upper) = (&p.method, p.lower, p.upper);
            match outcome {
                Outcome::Finished { accuracy, loss } => writeln!(
                    csv,
                    "{method},{lower},{upper},{seed},finished,{accuracy},{loss}"
                )?,
                Outcome::Diverged(_) => {
                    writeln!(csv, "{method},{lower},{upper},{seed},diverged,,")?
                }
            }
        }
    }
    std::fs::write(dir.join("grid.csv"), csv).context("writing grid.csv")
}

/// One table per method: rows are lower steps, columns upper steps, cells the final validation
/// accuracy, the median over seeds (bold: chosen; "div.": diverged on some seed).
fn grid_tables(
    options: &TuneOptions,
    points: &[GridPoint],
    accuracy: &str,
) -> anyhow::Result<String> {
    let mut md = String::new();
    for method in &options.methods {
        let mine: Vec<&GridPoint> = points.iter().filter(|p| &p.method == method).collect();
        let chosen = best(mine.iter().copied());
        let over = match options.seeds.len() {
            1 => String::new(),
            _ => format!("median over {}, ", seeds_text(&options.seeds)),
        };
        writeln!(
            md,
            "### {method}: final {accuracy} ({over}rows: lower step, columns: upper step)\n"
        )?;
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
                let cell = match p.outcome {
                    Outcome::Finished { accuracy, .. } if chosen == Some(*p) => {
                        format!("**{accuracy:.4}**")
                    }
                    Outcome::Finished { accuracy, .. } => format!("{accuracy:.4}"),
                    Outcome::Diverged(_) => "div.".to_string(),
                };
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
