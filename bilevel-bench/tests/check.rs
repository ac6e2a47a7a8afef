//! `bilevel-bench check` passes on the three tasks with both models (tiny sizes, real data, in
//! f64), and the
//! command prints its comparisons and says so.

use bilevel_bench::commands::check::check_task;
use bilevel_bench::tasks::model::ModelName;
use bilevel_bench::tasks::resolve_data_dir;
use bilevel_optim::check::Quantity;
use common::tiny;

mod common;

#[test]
fn every_task_passes_its_check_with_either_model() {
    let data = resolve_data_dir(None).unwrap();
    let tasks = ["hyper-clean", "hyper-opt", "hyper-rep"];
    for (task, model) in tasks
        .into_iter()
        .flat_map(|t| [(t, ModelName::Rnn), (t, ModelName::Transformer)])
    {
        let mut config = tiny(task);
        config.model = model;
        let (model, report) = check_task(&config, &data).unwrap();
        println!("{task} ({model}):\n{report}");
        assert!(report.passed(), "{task}:\n{report}");
        for q in [Quantity::WrittenGradient, Quantity::Hvp, Quantity::Jvp] {
            let judged = report
                .findings
                .iter()
                .filter(|f| f.quantity == q && f.verdict == bilevel_optim::check::Verdict::Passed)
                .count();
            assert!(judged > 0, "{task}: no {q} comparison passed:\n{report}");
        }
    }
}

#[test]
fn the_command_prints_the_comparisons_and_passes() {
    let (_dir, config) = write_config("hyper-opt");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bilevel-bench"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("written ∇_y G") && stdout.contains("check passed"),
        "{stdout}"
    );
}

/// `task`'s tiny configuration written to a file, with the scratch directory that holds it.
fn write_config(task: &str) -> (common::Scratch, std::path::PathBuf) {
    let dir = common::scratch("check", task);
    let path = dir.join(format!("{task}.toml"));
    std::fs::write(&path, toml::to_string(&tiny(task)).unwrap()).unwrap();
    (dir, path)
}
