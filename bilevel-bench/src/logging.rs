//! What a run writes into its directory: TensorBoard event files (per-iteration training
//! quantities and per-evaluation metrics), the same figures as CSV, and the resolved config.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use bilevel_optim::optimizer::StepReport;
use bilevel_optim::tensorboard::EventWriter;

use crate::tasks::Metrics;

/// The TensorBoard tags of the per-iteration quantities, in the order of `steps.csv`: the
/// report's own ([`StepReport::scalars`]) and the training time.
pub const STEP_TAGS: [&str; 12] = [
    "train/upper_loss",
    "train/lower_loss",
    "train/hypergradient_norm",
    "train/lower_grad_norm",
    "train/linear_system_residual",
    "train/step_size",
    "oracle/upper_grad",
    "oracle/lower_grad",
    "oracle/hvp",
    "oracle/jvp",
    "oracle/total",
    "time/train_seconds",
];

/// The writer of a run's logs: TensorBoard events, `steps.csv` and `evaluations.csv`.
pub struct RunLogger {
    dir: PathBuf,
    tensorboard: EventWriter,
    steps: BufWriter<File>,
    evaluations: Option<BufWriter<File>>,
}

impl RunLogger {
    /// Creates `dir` (and its parents) with a fresh TensorBoard writer and CSV files.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the run directory", dir.display()))?;
        let steps_path = dir.join("steps.csv");
        let mut steps = BufWriter::new(
            File::create(&steps_path)
                .with_context(|| format!("{}: cannot create", steps_path.display()))?,
        );
        writeln!(steps, "iteration,{}", STEP_TAGS.join(","))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tensorboard: EventWriter::create(dir)?,
            steps,
            evaluations: None,
        })
    }

    /// Reopens the logs of `dir` for a run resumed after `iteration` iterations: rows of
    /// `steps.csv` and `evaluations.csv` beyond it (written after the checkpoint, before the
    /// interruption) are dropped, and the TensorBoard events are rewritten from the CSV files, so
    /// no step is missing or duplicated.
    pub fn resume(dir: &Path, iteration: usize) -> anyhow::Result<Self> {
        let keep = |file: &str| -> anyhow::Result<Vec<String>> {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            let mut lines = text.lines();
            let header = lines
                .next()
                .with_context(|| format!("{}: empty", path.display()))?;
            let columns = header.split(',').count();
            let mut out = vec![header.to_string()];
            for (k, line) in lines.enumerate() {
                let number = k + 2;
                let fields = line.split(',').count();
                if fields != columns {
                    anyhow::bail!(
                        "{}: line {number} has {fields} fields, the header {columns}",
                        path.display()
                    );
                }
                let step: usize = line
                    .split(',')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .with_context(|| {
                        format!("{}: line {number}: malformed row '{line}'", path.display())
                    })?;
                if step <= iteration {
                    out.push(line.to_string());
                }
            }
            Ok(out)
        };
        let steps = keep("steps.csv")?;
        let evaluations = keep("evaluations.csv")?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("events.out.tfevents"))
            {
                std::fs::remove_file(&path)
                    .with_context(|| format!("{}: cannot remove", path.display()))?;
            }
        }
        let mut tensorboard = EventWriter::create(dir)?;
        let replay = |tb: &mut EventWriter,
                      rows: &[String],
                      tag_of: &dyn Fn(usize, &str) -> Option<String>|
         -> std::io::Result<()> {
            let names: Vec<&str> = rows[0].split(',').collect();
            for row in &rows[1..] {
                let fields: Vec<&str> = row.split(',').collect();
                let step: usize = fields[0].parse().expect("checked above");
                for (k, value) in fields.iter().enumerate().skip(1) {
                    if let (Some(tag), Ok(v)) = (tag_of(k, names[k]), value.parse::<f64>()) {
                        tb.scalar(&tag, v, step)?;
                    }
                }
            }
            Ok(())
        };
        replay(&mut tensorboard, &steps, &|_, name| Some(name.to_string()))?;
        replay(&mut tensorboard, &evaluations, &|k, name| {
            (k >= 3).then(|| format!("eval/{name}"))
        })?;
        let rewrite = |file: &str, rows: &[String]| -> anyhow::Result<BufWriter<File>> {
            let path = dir.join(file);
            let mut w = BufWriter::new(
                File::create(&path)
                    .with_context(|| format!("{}: cannot rewrite", path.display()))?,
            );
            for row in rows {
                writeln!(w, "{row}")?;
            }
            w.flush()?;
            Ok(w)
        };
        let steps = rewrite("steps.csv", &steps)?;
        let evaluations = rewrite("evaluations.csv", &evaluations)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tensorboard,
            steps,
            evaluations: Some(evaluations),
        })
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The per-iteration values, as TensorBoard scalars at step `iteration + 1` (the number of
    /// iterations done) and a `steps.csv` row. Values a method does not compute are skipped in
    /// TensorBoard and empty in the CSV.
    pub fn step(&mut self, report: &StepReport, train_seconds: f64) -> anyhow::Result<()> {
        let scalars = report.scalars();
        let values = scalars
            .iter()
            .map(|(_, v)| *v)
            .chain(std::iter::once(Some(train_seconds)));
        let step = report.iteration as usize + 1;
        let mut row = format!("{step}");
        for (tag, v) in STEP_TAGS.iter().zip(values) {
            row.push(',');
            if let Some(v) = v {
                self.tensorboard.scalar(tag, v, step)?;
                row.push_str(&format!("{v}"));
            }
        }
        writeln!(self.steps, "{row}")?;
        Ok(())
    }

    /// Evaluation metrics at `step` iterations, as `eval/<name>` scalars and an
    /// `evaluations.csv` row (its header comes from the first evaluation's metric names).
    pub fn evaluation(
        &mut self,
        step: usize,
        oracle_total: u64,
        train_seconds: f64,
        metrics: &Metrics,
    ) -> anyhow::Result<()> {
        for (name, v) in metrics {
            self.tensorboard.scalar(&format!("eval/{name}"), *v, step)?;
        }
        if self.evaluations.is_none() {
            let path = self.dir.join("evaluations.csv");
            let mut w = BufWriter::new(
                File::create(&path)
                    .with_context(|| format!("{}: cannot create", path.display()))?,
            );
            let names: Vec<&str> = metrics.keys().map(String::as_str).collect();
            writeln!(
                w,
                "iteration,oracle_calls,train_seconds,{}",
                names.join(",")
            )?;
            self.evaluations = Some(w);
        }
        let w = self.evaluations.as_mut().expect("created above");
        let values: Vec<String> = metrics.values().map(|v| format!("{v}")).collect();
        writeln!(
            w,
            "{step},{oracle_total},{train_seconds},{}",
            values.join(",")
        )?;
        Ok(())
    }

    /// Writes everything buffered to disk.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.tensorboard.flush()?;
        self.steps.flush()?;
        if let Some(w) = self.evaluations.as_mut() {
            w.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{RunLogger, STEP_TAGS};
    use bilevel_optim::optimizer::StepReport;

    /// A resumed run's logs with a row wider than its header (a torn or edited file) are an error
    /// naming the file and the line, not an index out of bounds.
    #[test]
    fn a_row_wider_than_its_header_is_refused_with_its_line() {
        let dir = std::env::temp_dir().join(format!("bilevel-logging-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("steps.csv"),
            "iteration,a,b\n1,0.5,0.25\n2,0.5,0.25,7\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("evaluations.csv"),
            "iteration,oracle_calls,train_seconds\n",
        )
        .unwrap();
        let err = RunLogger::resume(&dir, 2)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("steps.csv") && err.contains("line 3 has 4 fields, the header 3"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `steps.csv` and the library's TensorBoard logger use the same tags, in the same order.
    #[test]
    fn the_step_tags_are_the_reports_and_the_time() {
        let report = StepReport {
            iteration: 0,
            upper_loss: None,
            lower_loss: None,
            hypergrad_norm: 0.0,
            lower_grad_norm: None,
            linear_system_residual: None,
            step_size: 0.0,
            x_step_norm: 0.0,
            oracle_calls: Default::default(),
            oracle_totals: Default::default(),
        };
        let tags: Vec<&str> = report.scalars().iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, STEP_TAGS[..11]);
        assert_eq!(STEP_TAGS[11], "time/train_seconds");
    }
}
