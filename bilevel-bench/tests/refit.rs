//! `refit` restores the run's x (and, from the run's y, its y) exactly, trains y on the lower
//! loss alone, writes refit.json, and refuses bad options and missing runs with clear errors.

mod common;

use bilevel_bench::commands::refit::{refit, Refit, RefitOptions, RefitStart, FILE};
use bilevel_bench::run::config::RunConfig;
use bilevel_bench::run::summary::RunSummary;
use bilevel_bench::run::{resume, run};
use bilevel_bench::tasks::resolve_data_dir;

fn options(steps: usize, from: RefitStart) -> RefitOptions {
    RefitOptions {
        steps,
        step: 0.5,
        from,
        seed: 3,
    }
}

#[test]
fn refit_restores_the_run_and_trains_y_on_the_lower_loss() {
    let data = resolve_data_dir(None).unwrap();
    let base = common::scratch("refit", "run");
    let config: RunConfig = toml::from_str(&common::short_borep_run(6, 3, 3)).unwrap();
    let dir = base.join("run");
    let summary: RunSummary = run(&config, &data, &dir, false).unwrap();
    let last = summary.evaluations.last().unwrap();

    // No step from the run's own y: exactly the run's last evaluation.
    let same = refit(&data, &dir, &options(0, RefitStart::Final)).unwrap();
    assert_eq!(same.iteration, 6);
    assert_eq!(same.metrics, last.metrics);
    assert_eq!(same.last_lower_loss, None);

    // From the task's starting y: the first evaluation's y with the run's x.
    let fresh = refit(&data, &dir, &options(0, RefitStart::Initial)).unwrap();
    assert_ne!(
        fresh.metrics, last.metrics,
        "x was restored, so some metric moved"
    );

    // Training y on the lower loss lowers the training loss, and is written down.
    let trained = refit(&data, &dir, &options(30, RefitStart::Initial)).unwrap();
    let loss = |r: &Refit| r.metrics["train/loss"];
    assert!(
        loss(&trained) < loss(&fresh) - 1e-3,
        "train/loss {} after 30 steps, {} before",
        loss(&trained),
        loss(&fresh)
    );
    assert!(trained.last_lower_loss.is_some_and(f64::is_finite));
    let written: Refit =
        serde_json::from_str(&std::fs::read_to_string(dir.join(FILE)).unwrap()).unwrap();
    assert_eq!(written, trained);
    // The same refit again gives the same bits: its batches come from its own seed.
    let again = refit(&data, &dir, &options(30, RefitStart::Initial)).unwrap();
    assert_eq!(again, trained);

    // Continuing the run moves x on: the refit of the old x is removed, not left to be reused.
    let config_file = dir.join("config.toml");
    let longer = std::fs::read_to_string(&config_file)
        .unwrap()
        .replace("iters = 6", "iters = 9");
    assert!(longer.contains("iters = 9"), "{longer}");
    std::fs::write(&config_file, longer).unwrap();
    resume(&data, &dir, false).unwrap();
    assert!(
        !dir.join(FILE).exists(),
        "a stale refit.json outlived the resume"
    );
    assert_eq!(Refit::read(&dir).unwrap(), None);
}

#[test]
fn refit_refuses_bad_options_and_missing_runs() {
    let data = resolve_data_dir(None).unwrap();
    let base = common::scratch("refit", "errors");
    let missing = base.join("no-run");
    let err = refit(&data, &missing, &options(1, RefitStart::Initial))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-run") && err.contains("no such run directory"),
        "{err}"
    );

    for step in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let bad = RefitOptions {
            step,
            ..options(1, RefitStart::Initial)
        };
        let err = refit(&data, &base, &bad).unwrap_err().to_string();
        assert!(err.contains("--step must be a positive number"), "{err}");
    }

    // A directory without a checkpoint: says so, and writes nothing.
    let err = format!(
        "{:#}",
        refit(&data, &base, &options(1, RefitStart::Initial)).unwrap_err()
    );
    assert!(
        err.contains("refit reads the run's last checkpoint"),
        "{err}"
    );
    assert!(err.contains("no checkpoint"), "{err}");
    assert!(!base.join(FILE).exists());
}

/// `compare --refit STEPS:STEP` parses to a refit from the initial y with seed 0; anything else
/// is refused with the expected form.
#[test]
fn refit_option_parses_steps_and_step() {
    let parsed: RefitOptions = "300:0.1".parse().unwrap();
    assert_eq!(
        parsed,
        RefitOptions {
            steps: 300,
            step: 0.1,
            from: RefitStart::Initial,
            seed: 0
        }
    );
    for bad in ["300", "x:0.1", "300:y", "-1:0.1"] {
        let err = bad.parse::<RefitOptions>().unwrap_err();
        assert!(err.contains("STEPS:STEP"), "{bad}: {err}");
    }
    for bad in ["300:0", "300:-0.5", "300:inf"] {
        let err = bad.parse::<RefitOptions>().unwrap_err();
        assert!(err.contains("positive"), "{bad}: {err}");
    }
}

/// hyper-rep's metrics fit fresh heads on x alone, so a refit of y is refused as pointless.
#[test]
fn refit_refuses_a_task_whose_metrics_use_x_alone() {
    let data = resolve_data_dir(None).unwrap();
    let base = common::scratch("refit", "hyper-rep");
    let mut config = common::tiny("hyper-rep");
    (config.iters, config.eval_every) = (1, 1);
    let dir = base.join("run");
    run(&config, &data, &dir, false).unwrap();
    let err = refit(&data, &dir, &options(1, RefitStart::Initial))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hyper-rep") && err.contains("fresh heads"),
        "{err}"
    );
    assert!(!dir.join(FILE).exists());
}
