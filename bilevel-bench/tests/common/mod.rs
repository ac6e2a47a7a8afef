//! What several test files share: the tiny task sizes that keep a test's runs to seconds.
#![allow(dead_code)]

use std::path::PathBuf;

use bilevel_bench::run::config::RunConfig;

/// A fresh, empty scratch directory for case `name` of test file `file`, removed when the test
/// ends: kept, for a look, when the test fails.
pub fn scratch(file: &str, name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("bilevel-{file}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A scratch directory's path, which removes the directory when dropped unless the thread is
/// panicking (a failed test keeps its files).
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A short BO-REP run on hyper-opt (batches of 8 reviews of 8 tokens, 32 evaluation reviews) as
/// a config file's text: the subject of the resume and fault-injection tests.
pub fn short_borep_run(iters: usize, eval_every: usize, checkpoint_every: usize) -> String {
    format!(
        r#"
task = "hyper-opt"
iters = {iters}
eval_every = {eval_every}
checkpoint_every = {checkpoint_every}
{TINY_HYPER_OPT}[method]
method = "bo-rep"
eta = 0.1
gamma = 0.1
period = 2
lower_steps = 2
nu = 0.1
"#
    )
}

/// `task` at tiny sizes: 40 hyper-rep heads on 2-shot tasks, batches of 8 or 16, 4 tokens.
pub fn tiny(task: &str) -> RunConfig {
    toml::from_str(&format!(
        r#"
        task = "{task}"
        [hyper_rep]
        train_tasks = 40
        shots = 2
        tasks_per_batch = 4
        max_len = 4
        [hyper_opt]
        batch = 8
        max_len = 4
        [hyper_clean]
        train_size = 2000
        batch = 16
        max_len = 4
        "#
    ))
    .unwrap()
}

/// A run's steps.csv without its last column, the wall-clock time.
pub fn steps_without_time(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("steps.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

/// hyper-opt at tiny sizes, the `[hyper_opt]` table of the runs above and below.
const TINY_HYPER_OPT: &str = "[hyper_opt]
batch = 8
max_len = 8
eval_size = 32
train_eval_size = 32
";

/// SOBA on hyper-opt with an upper step (ρ = 400) so large that the run diverges (resume.rs
/// checks that it does, and what a rollback then does).
pub fn diverging() -> String {
    format!(
        r#"
task = "hyper-opt"
iters = 12
eval_every = 6
checkpoint_every = 100
{TINY_HYPER_OPT}[method]
method = "soba"
rho = {{ initial = 400.0, exponent = 0.0 }}
gamma = {{ initial = 0.05, exponent = 0.0 }}
"#
    )
}

/// [`diverging`], rolling back with halved steps (up to 10 times) instead of stopping.
pub fn diverging_with_rollback() -> String {
    format!(
        "on_divergence = \"rollback\"\nmax_rollbacks = 10\n{}",
        diverging()
    )
}
