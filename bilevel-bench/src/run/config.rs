//! The configuration of one run, as read from TOML: the task, the method and every
//! hyperparameter, with the defaults of `tasks.md`. Unknown keys are errors.

use std::path::Path;

use anyhow::{bail, Context};
use bilevel_optim::methods::borep::BoRepConfig;
use bilevel_optim::methods::MethodConfig;
use serde::{Deserialize, Serialize};

use crate::tasks::model::ModelName;
use crate::tasks::task::Task;

/// Declares [`TaskName`] and the task-dependent parts of [`RunConfig`] from the task list
/// ([`crate::with_task_list`]).
macro_rules! declare_tasks {
    ($($variant:ident, $key:ident, $task:ty, $doc:literal;)+) => {
        /// The text tasks of `tasks.md`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
        #[serde(rename_all = "kebab-case")]
        pub enum TaskName {
            $(#[doc = $doc] $variant,)+
        }

        impl TaskName {
            /// Every task, in the order of the documentation.
            pub const ALL: &[TaskName] = &[$(TaskName::$variant),+];

            /// The task's name as in configurations and directories.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $(Self::$variant => <$task as Task>::NAME,)+
                }
            }

            /// BO-REP's configuration with the official run's values for this task.
            pub fn official_borep(&self) -> BoRepConfig {
                match self {
                    $(Self::$variant => <$task as Task>::official_borep(),)+
                }
            }

            /// Whether the task's metrics depend on x alone ([`Task::EVALUATES_X_ALONE`]).
            pub fn evaluates_x_alone(&self) -> bool {
                match self {
                    $(Self::$variant => <$task as Task>::EVALUATES_X_ALONE,)+
                }
            }

            /// The metric the tables lead with and the plots show.
            pub fn main_metric(&self) -> &'static str {
                match self {
                    $(Self::$variant => <$task as Task>::main_metric(),)+
                }
            }
        }

        /// One run. In TOML: top-level keys, a `[method]` table (`method = "soba"` and its fields) and
        /// one table per task.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct RunConfig {
            /// The task.
            pub task: TaskName,
            /// The seed of the data split, the initialization and the batches.
            pub seed: u64,
            /// Outer iterations.
            pub iters: usize,
            /// Evaluate every this many iterations (and before the first and after the last).
            pub eval_every: usize,
            /// Write a checkpoint every this many iterations (and after the last).
            pub checkpoint_every: usize,
            /// What to do on a non-finite value.
            pub on_divergence: OnDivergence,
            /// Rollbacks allowed before the run stops anyway.
            pub max_rollbacks: usize,
            /// Threads per run: every oracle call splits its batch into this many shards, one thread
            /// each (docs/performance.md). Results differ from one thread's only by rounding.
            pub threads: usize,
            /// The text encoder of the task's classifier (absent: the recurrent network).
            #[serde(skip_serializing_if = "ModelName::is_default")]
            pub model: ModelName,
            /// The method; absent = BO-REP with the task's official values.
            pub method: Option<MethodConfig>,
            $(#[doc = concat!("The settings of: ", $doc)] pub $key: <$task as Task>::Config,)+
        }

        impl Default for RunConfig {
            fn default() -> Self {
                Self {
                    task: TaskName::HyperClean,
                    seed: 0,
                    iters: 300,
                    eval_every: 50,
                    checkpoint_every: 50,
                    on_divergence: OnDivergence::Stop,
                    max_rollbacks: 3,
                    threads: 1,
                    model: ModelName::Rnn,
                    method: None,
                    $($key: Default::default(),)+
                }
            }
        }

        impl RunConfig {
            /// Checks the run's task settings, and that its method means something there.
            fn validate_task(&self) -> anyhow::Result<()> {
                match self.task {
                    $(TaskName::$variant => <$task as Task>::validate(&self.$key, &self.method()),)+
                }
            }

            /// The (accuracy, loss) a grid search on this run's task chooses by.
            pub fn selection_metric(&self) -> anyhow::Result<(&'static str, &'static str)> {
                match self.task {
                    $(TaskName::$variant => <$task as Task>::selection_metric(&self.$key),)+
                }
            }
        }
    };
}

crate::with_task_list!(declare_tasks);

impl TaskName {
    /// BO-REP with the official run's values for this task (`tasks.md`).
    pub fn default_method(&self) -> MethodConfig {
        MethodConfig::new(self.official_borep())
    }
}

/// What a run does when a loss, gradient or parameter becomes non-finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDivergence {
    /// Stop with an error naming the quantity, the iteration and the step sizes to lower; the
    /// last good checkpoint stays in the run directory.
    #[default]
    Stop,
    /// Go back to the last checkpoint and continue with every step size halved.
    Rollback,
}

impl RunConfig {
    /// Reads a TOML file; errors name the file and the offending key or line.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the config", path.display()))?;
        Self::from_text(&text, path)
    }

    /// The configuration in `text`, read from `path` (named in errors).
    pub fn from_text(text: &str, path: &Path) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| match method_key_error(text) {
            Some(why) => anyhow::anyhow!("{}: {why}", path.display()),
            None => anyhow::anyhow!("{}: {e}", path.display()),
        })
    }

    /// Reads the configuration saved in a run directory if it is exactly `wanted`, but for
    /// `iters` (which a caller compares itself). Exactly means key by key, as written: a saved
    /// file that lacks a key the configuration has now (an option added since, whose default
    /// might not be what that run did) does not match, so such a run is run again rather than
    /// reused under a behaviour it never had.
    pub fn saved_matching(path: &Path, wanted: &RunConfig) -> Option<RunConfig> {
        let text = std::fs::read_to_string(path).ok()?;
        let saved: RunConfig = toml::from_str(&text).ok()?;
        let mut written: toml::Value = toml::from_str(&text).ok()?;
        let mut wanted_value = toml::Value::try_from(wanted).ok()?;
        for v in [&mut written, &mut wanted_value] {
            v.as_table_mut()?.remove("iters");
        }
        (written == wanted_value).then_some(saved)
    }

    /// This configuration with the method called `name` (when given): its own `[method]` table
    /// if that configures the method, else the method's defaults (for BO-REP, the task's
    /// official values).
    pub fn with_method(mut self, name: Option<&str>) -> anyhow::Result<Self> {
        if let Some(name) = name {
            let keep = self.method.as_ref().is_some_and(|m| m.name() == name);
            if !keep {
                self.method = Some(if name == "bo-rep" {
                    self.task.default_method()
                } else {
                    MethodConfig::default_for(name)?
                });
            }
        }
        Ok(self)
    }

    /// The directory under an output directory that holds this task's runs, comparisons and
    /// grid searches: the task's name, with the model's when it is not the default (so a
    /// transformer's runs never meet the recurrent network's).
    pub fn task_dir(&self, out: &Path) -> std::path::PathBuf {
        if self.model.is_default() {
            out.join(self.task.as_str())
        } else {
            out.join(format!("{}-{}", self.task.as_str(), self.model.as_str()))
        }
    }

    /// The method to run.
    pub fn method(&self) -> MethodConfig {
        self.method
            .clone()
            .unwrap_or_else(|| self.task.default_method())
    }

    /// Every range check, the method's included, before any data is read.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.iters == 0 {
            bail!("iters must be at least 1");
        }
        if self.eval_every == 0 {
            bail!("eval_every must be at least 1");
        }
        if self.checkpoint_every == 0 {
            bail!("checkpoint_every must be at least 1");
        }
        if self.threads == 0 {
            bail!("threads must be at least 1");
        }
        self.validate_task()?;
        Ok(self.method().validate()?)
    }
}

/// The key of the `[method]` table that makes it invalid, with why. The table is an internally
/// tagged enum (`method = "..."` picks the variant), and serde's error for it names only the
/// table; so each key the user set is tried alone on the method's defaults.
fn method_key_error(text: &str) -> Option<String> {
    let root: toml::Value = toml::from_str(text).ok()?;
    let table = root.get("method")?.as_table()?;
    let name = table.get("method")?.as_str()?;
    let defaults = toml::Value::try_from(MethodConfig::default_for(name).ok()?).ok()?;
    for (key, value) in table {
        let mut trial = defaults.clone();
        trial.as_table_mut()?.insert(key.clone(), value.clone());
        if let Err(e) = trial.try_into::<MethodConfig>() {
            return Some(format!("[method] {key} = {value}: {}", e.message().trim()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::RunConfig;

    /// A task's name in configuration files (serde's kebab-case of its variant) is the name its
    /// `Task` declares, which directories and tables use.
    #[test]
    fn every_task_is_named_alike_in_files_and_directories() {
        for task in super::TaskName::ALL {
            let config = RunConfig {
                task: *task,
                ..Default::default()
            };
            let text = toml::to_string(&config).unwrap();
            assert!(
                text.contains(&format!("task = \"{}\"", task.as_str())),
                "{text}"
            );
        }
    }

    /// A wrong value inside `[method]` is reported with its key, not just the table's line.
    #[test]
    fn a_wrong_method_value_is_named_by_its_key() {
        let dir = std::env::temp_dir().join(format!("bilevel-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        for (text, expected) in [
            (
                "[method]\nmethod = \"bo-rep\"\neta = \"big\"\n",
                "[method] eta = \"big\": invalid type: string \"big\", expected f64",
            ),
            (
                "[method]\nmethod = \"soba\"\nrhoo = 3\n",
                "[method] rhoo = 3: unknown field `rhoo`",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = RunConfig::from_file(&path).unwrap_err().to_string();
            assert!(
                err.starts_with(&path.display().to_string()) && err.contains(expected),
                "{err}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
