//! TensorBoard logging of a run, for users of the library (feature `tensorboard`): every
//! [`StepReport`] as scalars, plus any metric of the user's own, in an event file that
//! `tensorboard --logdir DIR` reads. The `bilevel-bench` command logs with the same tags.
//!
//! ```no_run
//! # fn demo(report: &bilevel_optim::optimizer::StepReport) -> std::io::Result<()> {
//! let mut log = bilevel_optim::tensorboard::TensorBoardLog::create("runs/my-problem")?;
//! log.step(report);                              // train/upper_loss, oracle/hvp, ...
//! log.scalar("eval/validation_accuracy", 0.91, report.iteration as usize + 1);
//! log.flush();
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use tensorboard_rs::summary_writer::SummaryWriter;

use crate::optimizer::StepReport;

/// An event-file writer in one directory.
pub struct TensorBoardLog {
    dir: PathBuf,
    writer: SummaryWriter,
}

impl TensorBoardLog {
    /// Creates `dir` (and its parents) and a new event file in it.
    pub fn create(dir: impl AsRef<Path>) -> std::io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{}: cannot create: {e}", dir.display()))
        })?;
        Ok(Self {
            writer: SummaryWriter::new(&dir),
            dir,
        })
    }

    /// The directory the events go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The report's scalars ([`StepReport::scalars`]) at step `iteration + 1`, the number of
    /// iterations done; values the method did not compute are skipped.
    pub fn step(&mut self, report: &StepReport) {
        let step = report.iteration as usize + 1;
        for (tag, value) in report.scalars() {
            if let Some(v) = value {
                self.writer.add_scalar(tag, v as f32, step);
            }
        }
    }

    /// Any scalar of the user's own (an evaluation metric, a timing) at `step`.
    pub fn scalar(&mut self, tag: &str, value: f64, step: usize) {
        self.writer.add_scalar(tag, value as f32, step);
    }

    /// Writes the buffered events to the file.
    pub fn flush(&mut self) {
        self.writer.flush();
    }
}
