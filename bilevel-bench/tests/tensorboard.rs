//! The TensorBoard event files of a run, read back with an independent reader (the Python
//! `tensorboard` package's EventAccumulator): every tag, every step once, every value as logged.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use bilevel_bench::run::config::{RunConfig, TaskName};
use bilevel_bench::run::logging::STEP_TAGS;
use bilevel_bench::run::run;
use bilevel_bench::tasks::hyper_opt::HyperOptConfig;
use bilevel_bench::tasks::resolve_data_dir;

const READER: &str = r#"
import sys, json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
"#;

#[test]
fn event_files_read_back_with_the_tensorboard_package() {
    let out = common::scratch("tensorboard", "events");
    let config = RunConfig {
        task: TaskName::HyperOpt,
        iters: 6,
        eval_every: 3,
        hyper_opt: HyperOptConfig {
            batch: 8,
            max_len: 8,
            train_eval_size: 16,
            eval_size: Some(16),
            ..Default::default()
        },
        ..Default::default()
    };
    let dir = out.join("run");
    let summary = run(&config, &resolve_data_dir(None).unwrap(), &dir, false).unwrap();

    let script = out.join("read_events.py");
    std::fs::write(&script, READER).unwrap();
    let output = Command::new("python3")
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("python3 must be installed");
    assert!(
        output.status.success(),
        "the reader failed (needs `pip install tensorboard`): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: BTreeMap<String, Vec<(i64, f64)>> = serde_json::from_slice(&output.stdout).unwrap();

    // Per-iteration tags: steps 1..=6 exactly once each, values equal to steps.csv (as f32).
    let steps = std::fs::read_to_string(dir.join("steps.csv")).unwrap();
    let rows: Vec<Vec<&str>> = steps
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 6);
    for (column, tag) in STEP_TAGS.iter().enumerate() {
        let logged: Vec<(i64, f64)> = rows
            .iter()
            .filter(|r| !r[column + 1].is_empty())
            .map(|r| (r[0].parse().unwrap(), r[column + 1].parse::<f64>().unwrap()))
            .collect();
        let read = events.get(*tag).cloned().unwrap_or_default();
        assert_eq!(read.len(), logged.len(), "{tag}: {read:?} vs {logged:?}");
        for ((s_read, v_read), (s_log, v_log)) in read.iter().zip(&logged) {
            assert_eq!(s_read, s_log, "{tag}");
            assert_eq!(*v_read as f32, *v_log as f32, "{tag} at step {s_log}");
        }
    }
    for tag in [
        "train/upper_loss",
        "train/hypergradient_norm",
        "oracle/hvp",
        "time/train_seconds",
    ] {
        let s: Vec<i64> = events[tag].iter().map(|(s, _)| *s).collect();
        assert_eq!(s, [1, 2, 3, 4, 5, 6], "{tag}");
    }
    // Evaluations at 0, 3 and 6 iterations, with the summary's values.
    let evals = &events["eval/validation/loss"];
    assert_eq!(evals.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0, 3, 6]);
    for ((_, v), e) in evals.iter().zip(&summary.evaluations) {
        assert_eq!(*v as f32, e.metrics["validation/loss"] as f32);
    }
    assert!(
        events.contains_key("eval/test/accuracy")
            && events.contains_key("eval/coefficients/mean_log")
    );
}
