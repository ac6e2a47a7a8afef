//! `tune` on a tiny budget: every grid point runs, a diverging pair is recorded and never
//! chosen, the chosen pair is the best finished one, and `compare --tuned` runs with it.

use bilevel_bench::report::compare::{compare, CompareOptions};
use bilevel_bench::report::tune::{tune, Halving, Outcome, TuneOptions};
use bilevel_bench::report::tuned::Tuned;
use bilevel_bench::run::config::{RunConfig, TaskName};
use bilevel_bench::tasks::resolve_data_dir;

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
        train_eval_size = 16
        "#
    ))
    .unwrap()
}

/// A run's evaluations (from summary.json), wall-clock time aside.
fn evaluations_without_time(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
    summary["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        .map(|mut e| {
            e.as_object_mut().unwrap().remove("train_seconds");
            e
        })
        .collect()
}

/// A run's steps.csv rows, wall-clock time aside.
fn steps_without_time(dir: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("steps.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let time = header.iter().position(|h| h.contains("seconds")).unwrap();
    text.lines()
        .map(|line| {
            let mut cells: Vec<&str> = line.split(',').collect();
            cells.remove(time);
            cells.join(",")
        })
        .collect()
}

/// hyper-rep with 40 heads, 2 tasks a batch, 2 test and 3 validation tasks, evaluated every 2
/// iterations.
fn tiny_hyper_rep(iters: usize) -> RunConfig {
    let mut config: RunConfig = toml::from_str(
        r#"
        task = "hyper-rep"
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
    config.iters = iters;
    config
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
        halving: None,
        refit: None,
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
            refit: None,
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
            refit: None,
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
        halving: None,
        refit: None,
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
        halving: None,
        refit: None,
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
    let options = TuneOptions {
        base: tiny_hyper_rep(2),
        methods: vec!["soba".into()],
        lower_grid: vec![0.05],
        upper_grid: vec![0.01, 0.5],
        seeds: vec![0],
        out: out.clone(),
        jobs: 2,
        verbose: false,
        halving: None,
        refit: None,
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

/// Successive halving: every pair runs to the first rung, only the best half (by validation
/// accuracy there) goes on to the next, and the one left runs the whole budget. The runs it
/// continued from their checkpoints are bit-identical to runs made whole, so the choice is the
/// full grid's among the survivors.
#[test]
fn halving_continues_the_best_pairs_like_runs_made_whole() {
    let out = std::env::temp_dir().join(format!("bilevel-tune-halving-{}", std::process::id()));
    let data_dir = resolve_data_dir(None).unwrap();
    let mut base = small("hyper-opt");
    base.iters = 6;
    let options = TuneOptions {
        base: base.clone(),
        methods: vec!["slip".into()],
        lower_grid: vec![0.05, 0.5],
        upper_grid: vec![0.01, 0.5],
        seeds: vec![1],
        out: out.clone(),
        jobs: 2,
        verbose: false,
        halving: Some(Halving {
            rungs: vec![2, 4],
            reduction: 2,
        }),
        refit: None,
    };
    let run_dir = |lower: f64, upper: f64| {
        out.join(format!(
            "hyper-opt/tune/slip/lower-{lower}_upper-{upper}/seed-1"
        ))
    };
    let evaluations = |dir: &std::path::Path| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
        let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
        summary["evaluations"].as_array().unwrap().clone()
    };
    // An earlier search of the first rung's budget, whose runs the halving search takes up.
    let mut first_rung = options.clone();
    first_rung.base.iters = 2;
    first_rung.halving = None;
    tune(&first_rung, &data_dir).unwrap();
    let seconds_at_2 = |lower: f64, upper: f64| {
        evaluations(&run_dir(lower, upper))
            .into_iter()
            .find(|e| e["iteration"].as_u64() == Some(2))
            .unwrap()["train_seconds"]
            .as_f64()
            .unwrap()
    };
    let pairs = [(0.05, 0.01), (0.05, 0.5), (0.5, 0.01), (0.5, 0.5)];
    let seconds_before: Vec<f64> = pairs.iter().map(|&(l, u)| seconds_at_2(l, u)).collect();

    let report = tune(&options, &data_dir).unwrap();
    // No run was made again: every pair's first two iterations, timed once, are the same ones.
    let seconds_after: Vec<f64> = pairs.iter().map(|&(l, u)| seconds_at_2(l, u)).collect();
    assert_eq!(seconds_after, seconds_before);
    let validation_at = |dir: &std::path::Path, iteration: u64| {
        let e = evaluations(dir)
            .into_iter()
            .find(|e| e["iteration"].as_u64() == Some(iteration))
            .unwrap();
        (
            e["metrics"]["validation/accuracy"].as_f64().unwrap(),
            e["metrics"]["validation/loss"].as_f64().unwrap(),
        )
    };
    // Rung 2 keeps the better two of four, rung 4 the better one of those.
    let mut ranked: Vec<(f64, f64, f64, f64)> = report
        .points
        .iter()
        .map(|p| {
            let (a, l) = validation_at(&run_dir(p.lower, p.upper), 2);
            (-a, l, p.lower, p.upper)
        })
        .collect();
    ranked.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let iterations = |lower: f64, upper: f64| {
        let p = report
            .points
            .iter()
            .find(|p| p.lower == lower && p.upper == upper)
            .unwrap();
        p.iterations
    };
    let reached: Vec<usize> = ranked.iter().map(|r| iterations(r.2, r.3)).collect();
    assert!(reached[0] >= 4 && reached[1] >= 4, "{ranked:?} {reached:?}");
    assert_eq!(&reached[2..], &[2, 2], "{ranked:?}");
    assert_eq!(
        reached.iter().filter(|&&r| r == 6).count(),
        1,
        "{reached:?}"
    );
    let winner = report.points.iter().find(|p| p.iterations == 6).unwrap();
    assert_eq!(
        report.tuned.get("slip").unwrap().level_steps(),
        (winner.lower, winner.upper)
    );
    let (a, l) = validation_at(&run_dir(winner.lower, winner.upper), 6);
    assert_eq!(
        winner.outcome,
        Outcome::Finished {
            accuracy: a,
            loss: l
        }
    );

    // The winner's run, continued at iterations 2 and 4, equals the same run made whole:
    // every evaluation (0, 2, 4, 6) and every logged step, wall-clock time aside.
    let mut whole = base.clone();
    whole.method = report.tuned.get("slip").cloned();
    whole.seed = 1;
    let whole_dir = out.join("whole");
    bilevel_bench::run::run(&whole, &data_dir, &whole_dir, false).unwrap();
    let continued = run_dir(winner.lower, winner.upper);
    assert_eq!(
        evaluations_without_time(&continued),
        evaluations_without_time(&whole_dir)
    );
    assert_eq!(
        steps_without_time(&continued),
        steps_without_time(&whole_dir)
    );
    assert_eq!(steps_without_time(&continued).len(), 7);

    let md = std::fs::read_to_string(report.dir.join("grid.md")).unwrap();
    assert!(
        md.contains(" @2 |") && md.contains(" @4 |") && md.contains("**"),
        "{md}"
    );
    let csv = std::fs::read_to_string(report.dir.join("grid.csv")).unwrap();
    assert!(
        csv.lines().next().unwrap().ends_with(",iterations"),
        "{csv}"
    );
    assert_eq!(
        csv.lines().filter(|l| l.ends_with(",2")).count(),
        2,
        "{csv}"
    );
    let tuned = std::fs::read_to_string(report.dir.join("tuned.toml")).unwrap();
    assert!(
        tuned.contains("successive halving at 2, 4 iterations"),
        "{tuned}"
    );

    // Searching again reuses every run at the rung it reached: no file is written anew.
    let modified = |dir: std::path::PathBuf| {
        std::fs::metadata(dir.join("summary.json"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before: Vec<_> = report
        .points
        .iter()
        .map(|p| modified(run_dir(p.lower, p.upper)))
        .collect();
    let again = tune(&options, &data_dir).unwrap();
    assert_eq!(again.points, report.points);
    let after: Vec<_> = report
        .points
        .iter()
        .map(|p| modified(run_dir(p.lower, p.upper)))
        .collect();
    assert_eq!(after, before);

    // Halving removed the checkpoints of the pairs it stopped, not the winner's.
    for p in &report.points {
        let kept = run_dir(p.lower, p.upper).join("checkpoint.bin").is_file();
        assert_eq!(kept, p.iterations == 6, "{p:?}");
    }
    // A pair to continue whose checkpoint is gone runs again from the start, to the same end:
    // here the winner, taken on to 8 iterations.
    std::fs::remove_file(continued.join("checkpoint.bin")).unwrap();
    let mut longer = options.clone();
    longer.base.iters = 8;
    longer.halving = Some(Halving {
        rungs: vec![2, 4, 6],
        reduction: 2,
    });
    let report8 = tune(&longer, &data_dir).unwrap();
    let winner8 = report8.points.iter().find(|p| p.iterations == 8).unwrap();
    assert_eq!((winner8.lower, winner8.upper), (winner.lower, winner.upper));
    whole.iters = 8;
    let whole8 = out.join("whole8");
    bilevel_bench::run::run(&whole, &data_dir, &whole8, false).unwrap();
    assert_eq!(
        evaluations_without_time(&continued),
        evaluations_without_time(&whole8)
    );

    // Rungs must increase below the budget, and the reduction must cut.
    for (rungs, reduction, says) in [
        (vec![4, 2], 2, "--rungs must increase"),
        (vec![2, 6], 2, "--rungs must increase"),
        (vec![], 2, "--rungs needs"),
        (vec![2], 1, "--reduction must be at least 2"),
    ] {
        let bad = TuneOptions {
            halving: Some(Halving { rungs, reduction }),
            out: std::env::temp_dir().join("bilevel-tune-never-written"),
            ..options.clone()
        };
        let err = tune(&bad, &data_dir).err().unwrap().to_string();
        assert!(err.contains(says), "{err}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// On hyper-rep (heads kept across iterations, a task sampler) and hyper-clean (per-tweet
/// weights), a run that halving continues from a rung equals the run made whole, for methods
/// with momentum, periodic updates, SAGA tables or a growing penalty.
#[test]
fn halving_continues_hyper_rep_and_hyper_clean_runs_exactly() {
    let out = std::env::temp_dir().join(format!("bilevel-halving-tasks-{}", std::process::id()));
    let data_dir = resolve_data_dir(None).unwrap();
    let hyper_rep = tiny_hyper_rep(4);
    let hyper_clean: RunConfig = toml::from_str(
        r#"
        task = "hyper-clean"
        iters = 4
        eval_every = 2
        [hyper_clean]
        train_size = 2000
        validation_size = 100
        test_size = 100
        batch = 16
        max_len = 8
        train_eval_size = 100
        "#,
    )
    .unwrap();
    for (base, methods) in [
        (hyper_rep, ["bo-rep", "saba"]),
        (hyper_clean, ["bo-rep", "f2sa"]),
    ] {
        let options = TuneOptions {
            base: base.clone(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            lower_grid: vec![0.05],
            upper_grid: vec![0.05],
            seeds: vec![3],
            out: out.clone(),
            jobs: 2,
            verbose: false,
            halving: Some(Halving {
                rungs: vec![2],
                reduction: 2,
            }),
            refit: None,
        };
        let report = tune(&options, &data_dir).unwrap();
        for method in methods {
            let task = base.task.as_str();
            let continued = out.join(format!("{task}/tune/{method}/lower-0.05_upper-0.05/seed-3"));
            let mut whole = base.clone();
            whole.seed = 3;
            whole.method = report.tuned.get(method).cloned();
            let whole_dir = out.join(format!("whole/{task}/{method}"));
            bilevel_bench::run::run(&whole, &data_dir, &whole_dir, false).unwrap();
            let evaluations = evaluations_without_time(&continued);
            assert_eq!(evaluations.len(), 3, "{task} {method}");
            assert_eq!(
                evaluations,
                evaluations_without_time(&whole_dir),
                "{task} {method}"
            );
            assert_eq!(
                steps_without_time(&continued),
                steps_without_time(&whole_dir),
                "{task} {method}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// `refit`: each pair is judged after a refit of y, the refit.json its run keeps; the own-y
/// figures are kept beside; the choice is the best refitted pair; the files say how the pairs
/// were judged; a second search reuses the refits; hyper-rep refuses.
#[test]
fn tune_with_refit_judges_and_chooses_by_the_refitted_y() {
    use bilevel_bench::commands::refit::{Refit, RefitOptions};
    let out = std::env::temp_dir().join(format!("bilevel-tune-refit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let data_dir = resolve_data_dir(None).unwrap();
    let how: RefitOptions = "5:0.5".parse().unwrap();
    let options = TuneOptions {
        base: small("hyper-opt"),
        methods: vec!["soba".into()],
        lower_grid: vec![0.05, 0.5, 1e8],
        upper_grid: vec![0.5],
        seeds: vec![0],
        out: out.clone(),
        jobs: 2,
        verbose: false,
        halving: None,
        refit: Some(how.clone()),
    };
    let report = tune(&options, &data_dir).unwrap();
    let mut best: Option<(f64, f64, f64)> = None;
    for p in &report.points {
        let dir = out.join(format!(
            "hyper-opt/tune/soba/lower-{}_upper-{}/seed-0",
            p.lower, p.upper
        ));
        let refit = Refit::read(&dir).unwrap();
        let Outcome::Finished { accuracy, loss } = p.outcome else {
            // The exploding step diverges, is never refitted, and carries no own-y figure.
            assert_eq!(p.lower, 1e8, "{p:?}");
            assert!(refit.is_none() && p.own.is_none(), "{p:?}");
            continue;
        };
        let refit = refit.expect("a finished pair is refitted");
        assert_eq!(refit.options, how);
        assert_eq!(accuracy, refit.metrics["validation/accuracy"]);
        assert_eq!(loss, refit.metrics["validation/loss"]);
        let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
        let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
        let last = summary["evaluations"].as_array().unwrap().last().unwrap();
        let own_accuracy = last["metrics"]["validation/accuracy"].as_f64().unwrap();
        match &p.own {
            Some(Outcome::Finished { accuracy, .. }) => assert_eq!(*accuracy, own_accuracy),
            other => panic!("own-y outcome {other:?}"),
        }
        if best.is_none_or(|b| accuracy > b.0 || (accuracy == b.0 && loss < b.1)) {
            best = Some((accuracy, loss, p.lower));
        }
    }
    let diverged = report.points.iter().filter(|p| p.own.is_none()).count();
    assert_eq!(diverged, 1, "{:?}", report.points);
    let (_, _, lower) = best.expect("a pair finished");
    assert_eq!(report.tuned.method[0].level_steps().0, lower);
    let tuned = std::fs::read_to_string(report.dir.join("tuned.toml")).unwrap();
    assert!(tuned.contains("after a refit of y (5 steps of 0.5 from the initial y, seed 0)"));
    assert!(report.markdown.contains("after a refit of y"));
    assert!(report
        .markdown
        .contains("In brackets: the same at the method's own y"));

    // A second search reuses every run and every refit: the same points, bit for bit.
    let again = tune(&options, &data_dir).unwrap();
    assert_eq!(again.points, report.points);

    // With halving, every rung ranks after a refit of the rung's x: a stopped pair's refit is
    // of the rung's iteration, a continued pair's of the whole budget's.
    let halved = TuneOptions {
        lower_grid: vec![0.05, 0.1, 0.5],
        out: out.join("halving"),
        halving: Some(Halving {
            rungs: vec![2],
            reduction: 2,
        }),
        ..options.clone()
    };
    let report = tune(&halved, &data_dir).unwrap();
    let mut at = Vec::new();
    for p in &report.points {
        let dir = halved.out.join(format!(
            "hyper-opt/tune/soba/lower-{}_upper-{}/seed-0",
            p.lower, p.upper
        ));
        let refit = Refit::read(&dir).unwrap().expect("every pair is refitted");
        assert_eq!(refit.iteration, p.iterations, "{p:?}");
        match p.outcome {
            Outcome::Finished { accuracy, .. } => {
                assert_eq!(accuracy, refit.metrics["validation/accuracy"])
            }
            Outcome::Diverged(_) => panic!("{p:?}"),
        }
        at.push(p.iterations);
    }
    at.sort_unstable();
    assert_eq!(at, [2, 4, 4], "3 pairs, the best 2 go on");
    // Searched again, the continued pairs are ranked at the rung by the refit of their x there,
    // which the first search kept: their run and its refit.json have moved on to iteration 4.
    let again = tune(&halved, &data_dir).unwrap();
    assert_eq!(again.points, report.points);

    let refused = TuneOptions {
        base: tiny_hyper_rep(2),
        out: out.join("never-written"),
        ..options.clone()
    };
    let err = tune(&refused, &data_dir).err().unwrap().to_string();
    assert!(
        err.contains("hyper-rep") && err.contains("fresh heads"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
