//! Which text encoder the tasks' classifiers use (`model = "transformer"` in a run's
//! configuration, or `--model transformer`): the paper's recurrent network, or a transformer
//! over the same word vectors. Both give `cpu::HIDDEN` features to the same MLP head.

use serde::{Deserialize, Serialize};

/// The text encoder of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ModelName {
    /// Two Elman layers and max-pooling over time (the BO-REP paper's network, CPU size).
    #[default]
    Rnn,
    /// Two transformer encoder blocks over the padded words and the mean over each text's
    /// words (`bilevel_models::classifier::cpu::Transformer`).
    Transformer,
}

impl ModelName {
    /// The recurrent network, which a configuration need not name (runs saved before the key
    /// existed are the same runs).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The name in configurations and on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Rnn => "rnn",
            Self::Transformer => "transformer",
        }
    }

    /// How a run's model description (checkpoints compare it on resume) names this encoder:
    /// nothing for the default, so earlier checkpoints still resume.
    pub fn describe(&self, variant: &str) -> String {
        match self {
            Self::Rnn => variant.to_string(),
            _ => format!("{variant}, {}", self.as_str()),
        }
    }
}
