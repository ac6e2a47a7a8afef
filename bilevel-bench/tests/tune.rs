//! `tune` on a tiny budget: every grid point runs, a diverging pair is recorded and never
//! chosen, the chosen pair is the best finished one, and `compare --tuned` runs with it.

use bilevel_bench::compare::{compare, CompareOptions};
use bilevel_bench::config::{RunConfig, TaskName};
use bilevel_bench::tasks::resolve_data_dir;
use bilevel_bench::tune::{tune, Outcome, TuneOptions, Tuned};

fn small(task: &str) -> RunConfig {
    toml::from_str(&format!(
        r#"
        task = "{task}"
        iters = 4
        eval_every = 2
        [hyper_opt]
        batch = 8
        max_len = 8
        eval_size = 16
        "#
    ))
    .unwrap()
}

#[test]
fn tune_runs_the_grid_records_divergence_and_feeds_compare() {
    let out = std::env::temp_dir().join(format!("bilevel-tune-{}", std::process::id()));
    let data_dir = resolve_data_dir(None).unwrap();
    let options = TuneOptions {
        base: small("hyper-opt"),
        methods: vec!["bo-rep".into(), "soba".into()],
        lower_grid: vec![0.05, 1e8],
        upper_grid: vec![0.01, 0.5],
        seeds: vec![1],
        out: out.clone(),
        jobs: 2,
        verbose: false,
    };
    let report = tune(&options, &data_dir).unwrap();
    assert_eq!(report.points.len(), 8);
    for p in &report.points {
        let dir = out.join(format!(
            "hyper-opt/tune/{}/lower-{}_upper-{}/seed-1",
            p.method, p.lower, p.upper
        ));
        assert!(dir.join("config.toml").is_file(), "{}", dir.display());
        // A lower step of 1e8 blows y up within the budget; 0.05 does not.
        match &p.outcome {
            Outcome::Diverged(why) => {
                assert_eq!(p.lower, 1e8, "{p:?}");
                assert!(why.contains("not finite"), "{why}");
            }
            Outcome::Finished { accuracy, loss } => {
                assert_eq!(p.lower, 0.05, "{p:?}");
                assert!((0.0..=1.0).contains(accuracy) && loss.is_finite(), "{p:?}");
            }
        }
    }
    let tuned = Tuned::from_file(&report.dir.join("tuned.toml")).unwrap();
    assert_eq!(tuned, report.tuned);
    assert_eq!(tuned.task, TaskName::HyperOpt);
    for method in ["bo-rep", "soba"] {
        let finished: Vec<(f64, f64, f64, f64)> = report
            .points
            .iter()
            .filter(|p| p.method == method)
            .filter_map(|p| match p.outcome {
                Outcome::Finished { accuracy, loss } => Some((accuracy, loss, p.lower, p.upper)),
                Outcome::Diverged(_) => None,
            })
            .collect();
        let best = finished
            .iter()
            .copied()
            .reduce(|a, b| {
                if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) {
                    b
                } else {
                    a
                }
            })
            .unwrap();
        let config = tuned.get(method).unwrap();
        assert_eq!(config.level_steps(), (best.2, best.3), "{method}");
    }
    let csv = std::fs::read_to_string(report.dir.join("grid.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9, "{csv}");
    assert!(csv.contains("soba,100000000,0.5,1,diverged,,"), "{csv}");
    let md = std::fs::read_to_string(report.dir.join("grid.md")).unwrap();
    assert!(md.contains("### bo-rep") && md.contains("div.") && md.contains("**"));

    // A second call reuses every run, the diverged ones included: none starts again.
    let started = |method: &str, lower: f64, upper: f64| {
        let config = out.join(format!(
            "hyper-opt/tune/{method}/lower-{lower}_upper-{upper}/seed-1/config.toml"
        ));
        std::fs::metadata(config).unwrap().modified().unwrap()
    };
    let before = [started("soba", 1e8, 0.5), started("bo-rep", 0.05, 0.01)];
    let again = tune(&options, &data_dir).unwrap();
    assert_eq!(again.points, report.points);
    assert_eq!(
        [started("soba", 1e8, 0.5), started("bo-rep", 0.05, 0.01)],
        before
    );

    let compared = compare(
        &CompareOptions {
            base: small("hyper-opt"),
            methods: vec!["soba".into()],
            seeds: vec![0],
            out: out.join("compare"),
            progress: false,
            tuned: Some(tuned.clone()),
            jobs: 1,
            steps: vec![],
        },
        &data_dir,
    )
    .unwrap();
    let used = RunConfig::from_file(&compared.runs[0].dir.join("config.toml")).unwrap();
    assert_eq!(used.method.as_ref(), tuned.get("soba"));

    let wrong_task = compare(
        &CompareOptions {
            base: small("hyper-clean"),
            methods: vec!["soba".into()],
            seeds: vec![0],
            out: out.join("wrong"),
            progress: false,
            tuned: Some(tuned),
            jobs: 1,
            steps: vec![],
        },
        &data_dir,
    );
    let err = wrong_task.err().unwrap().to_string();
    assert!(
        err.contains("tuned configurations are for hyper-opt"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn tune_refuses_hyper_rep_without_validation_tasks_and_bad_grids() {
    let data_dir = resolve_data_dir(None).unwrap();
    let options = |task: &str, lower: Vec<f64>| TuneOptions {
        base: small(task),
        methods: vec!["soba".into()],
        lower_grid: lower,
        upper_grid: vec![0.1],
        seeds: vec![0],
        out: std::env::temp_dir().join("bilevel-tune-never-written"),
        jobs: 1,
        verbose: false,
    };
    let mut without_validation = options("hyper-rep", vec![0.1]);
    without_validation.base.hyper_rep.validation_tasks = 0;
    let err = tune(&without_validation, &data_dir)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("hyper_rep.validation_tasks is 0"), "{err}");
    let err = tune(&options("hyper-opt", vec![0.1, -1.0]), &data_dir)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("lower grid"), "{err}");
    let err = tune(&options("hyper-opt", vec![0.1, 0.05, 0.1]), &data_dir)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--lower lists 0.1 twice"), "{err}");
    let err = tune(
        &TuneOptions {
            seeds: vec![3, 3],
            ..options("hyper-opt", vec![0.1])
        },
        &data_dir,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("--seeds lists 3 twice"), "{err}");
}

/// A second seed widens an earlier search: the seed-1 runs are reused (their files untouched),
/// only seed 2 runs, and each pair is judged by the median of its two seeds' final figures.
#[test]
fn tune_over_seeds_reuses_runs_and_takes_the_median() {
    let out = std::env::temp_dir().join(format!("bilevel-tune-seeds-{}", std::process::id()));
    let data_dir = resolve_data_dir(None).unwrap();
    let options = |seeds: Vec<u64>| TuneOptions {
        base: small("hyper-opt"),
        methods: vec!["slip".into()],
        lower_grid: vec![0.05],
        upper_grid: vec![0.01, 0.5],
        seeds,
        out: out.clone(),
        jobs: 2,
        verbose: false,
    };
    tune(&options(vec![1]), &data_dir).unwrap();
    let summary = |lower: f64, upper: f64, seed: u64| {
        out.join(format!(
            "hyper-opt/tune/slip/lower-{lower}_upper-{upper}/seed-{seed}/summary.json"
        ))
    };
    let modified = |path: &std::path::Path| std::fs::metadata(path).unwrap().modified().unwrap();
    let first = modified(&summary(0.05, 0.5, 1));

    let report = tune(&options(vec![1, 2]), &data_dir).unwrap();
    assert_eq!(modified(&summary(0.05, 0.5, 1)), first, "seed 1 was rerun");
    assert_eq!(report.points.len(), 2);
    let final_validation = |path: std::path::PathBuf| {
        let text = std::fs::read_to_string(path).unwrap();
        let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
        let last = summary["evaluations"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        (
            last["metrics"]["validation/accuracy"].as_f64().unwrap(),
            last["metrics"]["validation/loss"].as_f64().unwrap(),
        )
    };
    for p in &report.points {
        assert_eq!(
            p.runs.iter().map(|(seed, _)| *seed).collect::<Vec<_>>(),
            [1, 2]
        );
        let (a1, l1) = final_validation(summary(p.lower, p.upper, 1));
        let (a2, l2) = final_validation(summary(p.lower, p.upper, 2));
        let Outcome::Finished { accuracy, loss } = p.outcome else {
            panic!("{p:?}");
        };
        assert!((accuracy - (a1 + a2) / 2.0).abs() < 1e-12, "{p:?}");
        assert!((loss - (l1 + l2) / 2.0).abs() < 1e-12, "{p:?}");
    }
    let csv = std::fs::read_to_string(report.dir.join("grid.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    let md = std::fs::read_to_string(report.dir.join("grid.md")).unwrap();
    assert!(md.contains("median over seeds 1, 2"), "{md}");
    let tuned = std::fs::read_to_string(report.dir.join("tuned.toml")).unwrap();
    assert!(tuned.contains("seeds 1, 2"), "{tuned}");
    let _ = std::fs::remove_dir_all(&out);
}

/// hyper-rep is tuned on its validation tasks (new tasks from the training domains): each grid
/// point's figure is the run's final validation accuracy, and a finished run that reports no
/// validation figure (one made before hyper-rep had validation tasks) is run again, not reused.
#[test]
fn tune_chooses_hyper_rep_steps_on_its_validation_tasks() {
    let out = std::env::temp_dir().join(format!("bilevel-tune-rep-{}", std::process::id()));
    let data_dir = resolve_data_dir(None).unwrap();
    let base: RunConfig = toml::from_str(
        r#"
        task = "hyper-rep"
        iters = 2
        eval_every = 2
        [hyper_rep]
        train_tasks = 40
        test_tasks = 2
        validation_tasks = 3
        tasks_per_batch = 2
        max_len = 8
        test_steps = 5
        "#,
    )
    .unwrap();
    let options = TuneOptions {
        base,
        methods: vec!["soba".into()],
        lower_grid: vec![0.05],
        upper_grid: vec![0.01, 0.5],
        seeds: vec![0],
        out: out.clone(),
        jobs: 2,
        verbose: false,
    };
    let summary_path = |upper: f64| {
        out.join(format!(
            "hyper-rep/tune/soba/lower-0.05_upper-{upper}/seed-0/summary.json"
        ))
    };
    let read = |upper: f64| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(summary_path(upper)).unwrap()).unwrap()
    };
    let last_metrics = |summary: &serde_json::Value| {
        summary["evaluations"].as_array().unwrap().last().unwrap()["metrics"].clone()
    };
    let report = tune(&options, &data_dir).unwrap();
    for p in &report.points {
        let metrics = last_metrics(&read(p.upper));
        let Outcome::Finished { accuracy, loss } = p.outcome else {
            panic!("{p:?}");
        };
        assert_eq!(accuracy, metrics["validation/accuracy"].as_f64().unwrap());
        assert_eq!(loss, metrics["validation/loss"].as_f64().unwrap());
        assert!(metrics["test/accuracy"].is_number(), "{metrics}");
    }

    // Strip the validation figures from one run, as a run from before validation tasks would be.
    let mut old = read(0.5);
    for evaluation in old["evaluations"].as_array_mut().unwrap() {
        let metrics = evaluation["metrics"].as_object_mut().unwrap();
        metrics.retain(|name, _| !name.starts_with("validation/"));
    }
    std::fs::write(summary_path(0.5), serde_json::to_string(&old).unwrap()).unwrap();
    let again = tune(&options, &data_dir).unwrap();
    assert_eq!(again.points, report.points);
    assert!(last_metrics(&read(0.5))["validation/accuracy"].is_number());
    let _ = std::fs::remove_dir_all(&out);
}
