//! One run of (task, method, seed) into its own directory, and everything that keeps that
//! directory whole: the configuration ([`config`]), the loop ([`iterate`]), logs
//! ([`logging`]), checkpoints ([`checkpoint`]), the directory lock ([`lock`]), atomic writes
//! ([`durable`]), fault injection for the tests ([`faults`]), and the methods the bench can run
//! by name ([`methods`]).

pub mod checkpoint;
pub mod config;
pub mod durable;
pub mod faults;
pub mod iterate;
pub mod lock;
pub mod logging;
pub mod methods;
pub mod processes;
pub mod summary;

/// The file `bilevel-bench refit` writes into a run directory (`commands::refit`). Continuing
/// the run removes it: it judged an x that the run then moves on from.
pub const REFIT_FILE: &str = "refit.json";

use std::path::{Path, PathBuf};

use anyhow::Context;

use config::RunConfig;
use lock::RunLock;
use processes::Processes;
use summary::RunSummary;

/// Where a run writes: `<out>/<task>/<method>/seed-<seed>` (see [`RunConfig::task_dir`]).
pub fn run_dir(out: &Path, config: &RunConfig) -> PathBuf {
    config
        .task_dir(out)
        .join(config.method().name())
        .join(format!("seed-{}", config.seed))
}

/// Runs `config` on the data in `data_dir`, writing into `dir`, which it holds locked
/// ([`RunLock`]) while it runs. Nothing in `dir` is touched before the data is loaded and the
/// problem built; a run that fails before its first iteration (bad data, say) removes the
/// directory if it created it, so nothing is left that looks like a run; a run that fails later
/// keeps its logs and its last good checkpoint.
pub fn run(
    config: &RunConfig,
    data_dir: &Path,
    dir: &Path,
    progress: bool,
) -> anyhow::Result<RunSummary> {
    run_shared(config, data_dir, dir, progress, &Processes::single())
}

/// [`run`] shared by `processes` (the ranks of `mpirun`): every one of them must call it with
/// the same arguments. Process 0 alone touches `dir`; the others return the same summary.
pub fn run_shared(
    config: &RunConfig,
    data_dir: &Path,
    dir: &Path,
    progress: bool,
    processes: &Processes,
) -> anyhow::Result<RunSummary> {
    config.validate()?;
    let execute = methods::entry(config.method().name())?.execute;
    if !processes.writes() {
        return execute(config, data_dir, dir, false, None, processes);
    }
    let created = !dir.exists();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the run directory", dir.display()))?;
    let lock = RunLock::acquire(dir)?;
    let result = execute(config, data_dir, dir, progress, None, processes);
    drop(lock);
    if result.is_err() && created && !dir.join(crate::run::checkpoint::FILE).exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// Continues the run in `dir` from its last good checkpoint, with the configuration saved there
/// (which must be the one the checkpoint was written with, but for a larger `iters`). On the
/// CPU the result is bit-identical to a run that was never interrupted.
pub fn resume(data_dir: &Path, dir: &Path, progress: bool) -> anyhow::Result<RunSummary> {
    resume_shared(data_dir, dir, progress, &Processes::single())
}

/// [`resume`] shared by `processes`, as [`run_shared`]; their number may differ from the run's
/// earlier part. Process 0 reads the checkpoint and sends it to the others.
pub fn resume_shared(
    data_dir: &Path,
    dir: &Path,
    progress: bool,
    processes: &Processes,
) -> anyhow::Result<RunSummary> {
    let lock = if processes.writes() {
        if !dir.is_dir() {
            anyhow::bail!("{}: no such run directory", dir.display());
        }
        let lock = RunLock::acquire(dir)?;
        durable::remove(&dir.join(REFIT_FILE))?;
        Some(lock)
    } else {
        None
    };
    let checkpoint = processes.read_checkpoint(dir)?;
    let path = dir.join("config.toml");
    let text = processes.from_first(|| {
        std::fs::read(&path).with_context(|| format!("{}: cannot read the config", path.display()))
    })?;
    let text = String::from_utf8(text)
        .with_context(|| format!("{}: cannot read the config: not UTF-8", path.display()))?;
    let config = RunConfig::from_text(&text, &path)?;
    config.validate()?;
    let execute = methods::entry(config.method().name())?.execute;
    let summary = execute(
        &config,
        data_dir,
        dir,
        progress,
        Some(checkpoint),
        processes,
    );
    drop(lock);
    summary
}
