//! Grid search of each method's (lower, upper) step sizes on one task, as `tasks.md` asks: every
//! pair of the grid runs at the configured budget, the pair with the best validation metric is
//! chosen, and a file of the chosen configurations feeds `compare --tuned`.
//!
//! Which step of a method is "lower" and which "upper" is [`MethodConfig::level_steps`]. A pair
//! whose run diverges (a non-finite value) is recorded as diverged and never chosen.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bilevel_optim::error::BilevelError;
use bilevel_optim::methods::MethodConfig;
use serde::{Deserialize, Serialize};

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
    pub seed: u64,
    pub out: PathBuf,
    /// Grid points run at once, each on its own thread.
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
    pub outcome: Outcome,
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

/// The metric the grid search maximizes. hyper-rep has no validation split (its test tasks come
/// from held-out domains), so it cannot be tuned without looking at the test figures.
fn selection_metric(task: TaskName) -> anyhow::Result<(&'static str, &'static str)> {
    match task {
        TaskName::HyperOpt | TaskName::HyperClean => Ok(("validation/accuracy", "validation/loss")),
        TaskName::HyperRep => bail!(
            "hyper-rep has no validation split to tune on (its metrics are the test tasks'); \
             tune on hyper-opt or hyper-clean"
        ),
    }
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

/// The directory of one grid point's run: `<out>/<task>/tune/<method>/lower-L_upper-U/`.
fn point_dir(out: &Path, task: TaskName, method: &str, lower: f64, upper: f64) -> PathBuf {
    out.join(task.as_str())
        .join("tune")
        .join(method)
        .join(format!("lower-{lower}_upper-{upper}"))
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
    let (accuracy, loss) = selection_metric(task)?;
    if options.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
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
        let mut base = task_config(options.base.clone(), Some(method))?;
        base.seed = options.seed;
        for &lower in &options.lower_grid {
            for &upper in &options.upper_grid {
                let mut config = base.clone();
                let mut m = config.method();
                m.set_level_steps(lower, upper);
                m.validate()
                    .with_context(|| format!("{method} at ({lower}, {upper})"))?;
                config.method = Some(m);
                work.push((method.clone(), lower, upper, config));
            }
        }
    }
    let points = map_in_threads(&work, options.jobs, |(method, lower, upper, config)| {
        let dir = point_dir(&options.out, task, method, *lower, *upper);
        let outcome = match run(config, data_dir, &dir, false) {
            Ok(summary) => finished(&summary, accuracy, loss),
            Err(e) if is_divergence(&e) => Ok(Outcome::Diverged(
                e.root_cause()
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .into(),
            )),
            Err(e) => Err(e.context(format!("{method} at ({lower}, {upper})"))),
        };
        if options.verbose {
            match &outcome {
                Ok(o) => eprintln!("{method} lower {lower} upper {upper}: {o:?}"),
                Err(e) => eprintln!("{e:#}"),
            }
        }
        outcome.map(|outcome| GridPoint {
            method: method.clone(),
            lower: *lower,
            upper: *upper,
            outcome,
        })
    })
    .into_iter()
    .collect::<anyhow::Result<Vec<_>>>()?;

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
        "# Chosen by `bilevel-bench tune` on {}, seed {}, {} iterations: the best final {accuracy}\n\
         # (ties: lower {loss}) over the grid. Use with `bilevel-bench compare --tuned <this file>`.\n",
        task.as_str(),
        options.seed,
        options.base.iters
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

fn write_csv(dir: &Path, points: &[GridPoint]) -> anyhow::Result<()> {
    let mut csv = String::from("method,lower,upper,status,validation_accuracy,validation_loss\n");
    for p in points {
        match &p.outcome {
            Outcome::Finished { accuracy, loss } => writeln!(
                csv,
                "{},{},{},finished,{accuracy},{loss}",
                p.method, p.lower, p.upper
            )?,
            Outcome::Diverged(_) => {
                writeln!(csv, "{},{},{},diverged,,", p.method, p.lower, p.upper)?
            }
        }
    }
    std::fs::write(dir.join("grid.csv"), csv).context("writing grid.csv")
}

/// One table per method: rows are lower steps, columns upper steps, cells the final validation
/// accuracy (bold: chosen; "div.": diverged).
fn grid_tables(
    options: &TuneOptions,
    points: &[GridPoint],
    accuracy: &str,
) -> anyhow::Result<String> {
    let mut md = String::new();
    for method in &options.methods {
        let mine: Vec<&GridPoint> = points.iter().filter(|p| &p.method == method).collect();
        let chosen = best(mine.iter().copied());
        writeln!(
            md,
            "### {method}: final {accuracy} (rows: lower step, columns: upper step)\n"
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
