//! `compare` on a tiny budget: every run directory, the results table and the six plots.

mod common;

use bilevel_bench::report::compare::{compare, CompareOptions, StepPair};
use bilevel_bench::report::stats::quantile;
use bilevel_bench::run::config::RunConfig;
use bilevel_bench::tasks::resolve_data_dir;

#[test]
fn quantiles_interpolate() {
    assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
    assert!((quantile(&[0.0, 10.0], 0.2) - 2.0).abs() < 1e-12);
    assert!(quantile(&[], 0.5).is_nan());
}

/// `compare` and `tune` reuse finished runs by reading their summary.json, so every f64 must come
/// back bit for bit (serde_json's default float parser can miss by one unit in the last place).
#[test]
fn figures_read_back_from_json_exactly() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut values = vec![
        1.5496858358383179,
        1.576674294471741,
        0.1 + 0.2,
        f64::MIN_POSITIVE,
    ];
    values.extend((0..20_000).map(|_| rng.gen::<f64>() * 10f64.powi(rng.gen_range(-8..8))));
    for x in values {
        let text = serde_json::to_string(&x).unwrap();
        let back: f64 = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back.to_bits(),
            x.to_bits(),
            "{x:e} came back as {back:e} via {text}"
        );
    }
}

#[test]
fn step_pairs_parse_or_say_why() {
    let pair: StepPair = "maml=0.05:0.1".parse().unwrap();
    assert_eq!(
        (pair.method.as_str(), pair.lower, pair.upper),
        ("maml", 0.05, 0.1)
    );
    for bad in [
        "maml",
        "maml=0.05",
        "maml=a:0.1",
        "maml=0.05:-1",
        "maml=0.05:inf",
    ] {
        let err = bad.parse::<StepPair>().unwrap_err();
        assert!(err.contains(bad), "{err}");
    }
    let base: RunConfig = toml::from_str("task = \"hyper-opt\"").unwrap();
    let err = compare(
        &CompareOptions {
            base,
            methods: vec!["soba".into()],
            seeds: vec![0],
            out: std::env::temp_dir().join("bilevel-compare-never-written"),
            progress: false,
            tuned: None,
            jobs: 1,
            steps: vec!["maml=0.05:0.1".parse().unwrap()],
            refit: None,
        },
        &resolve_data_dir(None).unwrap(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("--steps names maml"), "{err}");
    let twice = |methods: &[&str], seeds: Vec<u64>| {
        compare(
            &CompareOptions {
                base: toml::from_str("task = \"hyper-opt\"").unwrap(),
                methods: methods.iter().map(|m| m.to_string()).collect(),
                seeds,
                out: std::env::temp_dir().join("bilevel-compare-never-written"),
                progress: false,
                tuned: None,
                jobs: 2,
                steps: vec![],
                refit: None,
            },
            &resolve_data_dir(None).unwrap(),
        )
        .err()
        .unwrap()
        .to_string()
    };
    let err = twice(&["soba", "slip", "soba"], vec![0]);
    assert!(err.contains("--methods lists soba twice"), "{err}");
    let err = twice(&["soba"], vec![1, 2, 1]);
    assert!(err.contains("--seeds lists 1 twice"), "{err}");
}

/// BO-REP and SOBA on hyper-opt at a tiny size (batches of 8 reviews of 8 tokens, 16 evaluation
/// reviews), seeds 0 and 1 on two threads, with SOBA's steps set by `soba_steps`.
fn tiny_comparison(
    out: &std::path::Path,
    iters: usize,
    eval_every: usize,
    soba_steps: &str,
) -> CompareOptions {
    let mut base: RunConfig = toml::from_str(
        r#"
        task = "hyper-opt"
        [hyper_opt]
        batch = 8
        max_len = 8
        eval_size = 16
        train_eval_size = 16
        "#,
    )
    .unwrap();
    (base.iters, base.eval_every) = (iters, eval_every);
    CompareOptions {
        base,
        methods: vec!["bo-rep".into(), "soba".into()],
        seeds: vec![0, 1],
        out: out.to_path_buf(),
        progress: false,
        tuned: None,
        jobs: 2,
        steps: vec![format!("soba={soba_steps}").parse().unwrap()],
        refit: None,
    }
}

#[test]
fn compare_writes_runs_table_and_plots() {
    let out = common::scratch("compare", "table");
    let options = tiny_comparison(&out, 4, 2, "0.02:0.03");
    let out = options.out.clone();
    let report = compare(&options, &resolve_data_dir(None).unwrap()).unwrap();
    assert_eq!(report.runs.len(), 4);
    for method in ["bo-rep", "soba"] {
        for seed in [0, 1] {
            let dir = out.join(format!("hyper-opt/{method}/seed-{seed}"));
            for file in [
                "steps.csv",
                "evaluations.csv",
                "config.toml",
                "summary.json",
            ] {
                assert!(dir.join(file).is_file(), "{}/{file}", dir.display());
            }
        }
    }
    let used = |method: &str| {
        RunConfig::from_file(&out.join(format!("hyper-opt/{method}/seed-1/config.toml")))
            .unwrap()
            .method()
    };
    assert_eq!(used("soba").level_steps(), (0.02, 0.03));
    let default_bo_rep = RunConfig {
        method: None,
        ..options.base.clone()
    }
    .method();
    assert_eq!(used("bo-rep"), default_bo_rep, "--steps touches only soba");
    let table = std::fs::read_to_string(report.dir.join("results.md")).unwrap();
    assert!(table.starts_with("| method | test/accuracy |"), "{table}");
    assert!(table.contains("| bo-rep |") && table.contains("| soba |"));
    let csv = std::fs::read_to_string(report.dir.join("results.csv")).unwrap();
    assert!(csv
        .lines()
        .any(|l| l.starts_with("soba,validation/loss,") && l.ends_with(",2")));
    // The early-stopping table: each run at its best validation accuracy among iterations 0,
    // 2 and 4.
    let stopped =
        std::fs::read_to_string(report.dir.join("results_at_best_validation.csv")).unwrap();
    let seeds_at = |metric: &str| -> Vec<f64> {
        stopped
            .lines()
            .filter(|l| l.starts_with(&format!("bo-rep,{metric},")))
            .flat_map(|l| l.split(',').skip(2).take(3).map(|v| v.parse().unwrap()))
            .collect()
    };
    for v in seeds_at("stopped/iteration") {
        assert!([0.0, 1.0, 2.0, 3.0, 4.0].contains(&v), "{stopped}");
    }
    let best_validation = |seed: u64| {
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                out.join(format!("hyper-opt/bo-rep/seed-{seed}/summary.json")),
            )
            .unwrap(),
        )
        .unwrap();
        summary["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["metrics"]["validation/accuracy"].as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max)
    };
    let median = (best_validation(0) + best_validation(1)) / 2.0;
    assert!(
        (seeds_at("validation/accuracy")[0] - median).abs() < 1e-12,
        "{stopped}"
    );
    assert!(report.markdown.contains("best validation/accuracy"));
    for axis in ["iterations", "oracle_calls", "time"] {
        for ext in ["png", "svg"] {
            let path = report.dir.join(format!("test_accuracy_vs_{axis}.{ext}"));
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            assert!(size > 1_000, "{} ({size} bytes)", path.display());
        }
    }
    // Run again: every run is reused (its files are not rewritten), and the table is the same;
    // a run whose configuration changed is run anew.
    let written = |method: &str| {
        std::fs::metadata(out.join(format!("hyper-opt/{method}/seed-0/steps.csv")))
            .and_then(|m| m.modified())
            .unwrap()
    };
    let before = (written("bo-rep"), written("soba"));
    let csv_before = std::fs::read_to_string(report.dir.join("results.csv")).unwrap();
    let again = compare(&options, &resolve_data_dir(None).unwrap()).unwrap();
    assert_eq!((written("bo-rep"), written("soba")), before);
    assert_eq!(again.markdown, report.markdown);
    // Figures read back from summary.json are the very values the runs computed.
    let csv_again = std::fs::read_to_string(report.dir.join("results.csv")).unwrap();
    assert_eq!(csv_again, csv_before);
    let changed = CompareOptions {
        steps: vec!["soba=0.04:0.03".parse().unwrap()],
        ..options
    };
    compare(&changed, &resolve_data_dir(None).unwrap()).unwrap();
    assert_eq!(written("bo-rep"), before.0);
    assert_ne!(
        written("soba"),
        before.1,
        "soba's steps changed: it runs again"
    );
    let svg = std::fs::read_to_string(report.dir.join("test_accuracy_vs_iterations.svg")).unwrap();
    assert!(
        svg.contains("bo-rep") && svg.contains("soba"),
        "legend names the methods"
    );
}

/// A run that fails in a directory where another configuration finished leaves nothing that
/// passes for its own result: the earlier summary is gone, so neither `compare` nor `tune`
/// reuses it.
#[test]
fn a_failed_run_leaves_no_earlier_summary_behind() {
    let dir = common::scratch("compare", "stale");
    let data_dir = resolve_data_dir(None).unwrap();
    let config = |lower: f64| -> RunConfig {
        let mut c: RunConfig = toml::from_str(
            r#"
            task = "hyper-opt"
            iters = 3
            eval_every = 3
            [hyper_opt]
            batch = 8
            max_len = 8
            eval_size = 16
            train_eval_size = 16
            [method]
            method = "soba"
            "#,
        )
        .unwrap();
        let mut m = c.method();
        m.set_level_steps(lower, 0.01);
        c.method = Some(m);
        c
    };
    let (good, diverging) = (config(0.05), config(1e8));
    bilevel_bench::run::run(&good, &data_dir, &dir, false).unwrap();
    assert!(bilevel_bench::report::compare::finished_run(&good, &dir).is_some());
    let err = bilevel_bench::run::run(&diverging, &data_dir, &dir, false).unwrap_err();
    assert!(format!("{err:#}").contains("not finite"), "{err:#}");
    assert!(bilevel_bench::report::compare::finished_run(&diverging, &dir).is_none());
    assert!(!dir.join("summary.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run that diverges is a result, not a failure: the comparison goes on, its table marks the
/// method's lost seed and lists why, and a second call reuses the divergence instead of running
/// it again.
#[test]
fn a_diverged_run_is_reported_and_the_comparison_goes_on() {
    let out = common::scratch("compare", "diverged");
    let options = tiny_comparison(&out, 3, 3, "1e8:0.01");
    let out = options.out.clone();
    let data_dir = resolve_data_dir(None).unwrap();
    let report = compare(&options, &data_dir).unwrap();
    assert_eq!(report.runs.len(), 2, "bo-rep's two seeds finished");
    let lost: Vec<(&str, u64)> = report
        .diverged
        .iter()
        .map(|d| (d.method.as_str(), d.seed))
        .collect();
    assert_eq!(lost, [("soba", 0), ("soba", 1)]);
    assert!(
        report.diverged[0].why.contains("not finite"),
        "{:?}",
        report.diverged
    );
    let table = std::fs::read_to_string(report.dir.join("results.md")).unwrap();
    assert!(table.contains("| soba (diverged: seed 0, 1) |"), "{table}");
    assert!(table.contains("| bo-rep |"), "{table}");
    assert!(table.contains("- soba seed 1: "), "{table}");
    let csv = std::fs::read_to_string(report.dir.join("diverged.csv")).unwrap();
    assert!(csv.starts_with("method,seed,reason\nsoba,0,"), "{csv}");
    let record = out.join("hyper-opt/soba/seed-0/diverged.txt");
    let written = std::fs::metadata(&record).unwrap().modified().unwrap();
    let again = compare(&options, &data_dir).unwrap();
    assert_eq!(again.diverged, report.diverged);
    assert_eq!(
        std::fs::metadata(&record).unwrap().modified().unwrap(),
        written
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// `compare --tuned a.toml,b.toml` reads the methods of both files as one list, in order; files
/// of different tasks, or a method tuned in two files, are refused with both files named.
#[test]
fn tuned_files_merge_when_of_one_task_and_each_method_once() {
    use bilevel_bench::report::tuned::Tuned;
    let dir = common::scratch("compare", "tuned-files");
    let write = |name: &str, task: &str, method: &str| {
        let path = dir.join(name);
        let text = format!("task = \"{task}\"\n\n[[method]]\nmethod = \"{method}\"\n");
        std::fs::write(&path, text).unwrap();
        path
    };
    let borep = write("borep.toml", "hyper-opt", "bo-rep");
    let soba = write("soba.toml", "hyper-opt", "soba");
    let other_task = write("other-task.toml", "hyper-clean", "soba");
    let borep_again = write("borep-again.toml", "hyper-opt", "bo-rep");

    let merged = Tuned::from_files(&[borep.clone(), soba.clone()]).unwrap();
    let names: Vec<&str> = merged.method.iter().map(|m| m.name()).collect();
    assert_eq!(names, ["bo-rep", "soba"]);
    assert!(merged.get("soba").is_some());

    let err = Tuned::from_files(&[borep.clone(), other_task])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("other-task.toml") && err.contains("hyper-clean"),
        "{err}"
    );
    assert!(
        err.contains("borep.toml") && err.contains("hyper-opt"),
        "{err}"
    );

    let err = Tuned::from_files(&[borep, soba, borep_again])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("borep-again.toml") && err.contains("borep.toml"),
        "{err}"
    );
    assert!(err.contains("bo-rep is tuned in both"), "{err}");
}

/// Runs refitted by `bilevel-bench refit` get their own table (refit.md, refit.csv) when the
/// comparison is made again; refits with different options are refused, naming two runs.
#[test]
fn compare_tabulates_refitted_runs() {
    use bilevel_bench::commands::refit::{refit, RefitOptions, RefitStart};
    let data = resolve_data_dir(None).unwrap();
    let out = common::scratch("compare", "refit");
    let options = tiny_comparison(&out, 2, 2, "0.02:0.03");
    let first = compare(&options, &data).unwrap();
    assert!(!first.dir.join("refit.md").exists());
    let refit_options = RefitOptions {
        steps: 4,
        step: 0.5,
        from: RefitStart::Initial,
        seed: 1,
    };
    let mut soba_losses = Vec::new();
    for run in &first.runs {
        let r = refit(&data, &run.dir, &refit_options).unwrap();
        if run.method == "soba" {
            soba_losses.push(r.metrics["train/loss"]);
        }
    }
    let again = compare(&options, &data).unwrap();
    let table = std::fs::read_to_string(again.dir.join("refit.md")).unwrap();
    assert!(
        table.contains("| bo-rep |") && table.contains("| soba |"),
        "{table}"
    );
    assert!(again
        .markdown
        .contains("4 steps of 0.5 from the initial y, seed 1"));
    let csv = std::fs::read_to_string(again.dir.join("refit.csv")).unwrap();
    let row = csv
        .lines()
        .find(|l| l.starts_with("soba,train/loss,"))
        .unwrap();
    let median: f64 = row.split(',').nth(2).unwrap().parse().unwrap();
    assert_eq!(median, quantile(&soba_losses, 0.5), "{row}");

    let other = RefitOptions {
        steps: 5,
        ..refit_options
    };
    refit(&data, &first.runs[0].dir, &other).unwrap();
    let err = match compare(&options, &data) {
        Ok(_) => panic!("refits with different options were mixed"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("refitted with different options"), "{err}");

    // With `refit` set, compare refits every run that lacks a refit with those options.
    let with_refit = CompareOptions {
        refit: Some(other.clone()),
        ..options
    };
    let third = compare(&with_refit, &data).unwrap();
    assert!(third
        .markdown
        .contains("5 steps of 0.5 from the initial y, seed 1"));
    for run in &third.runs {
        let text = std::fs::read_to_string(run.dir.join("refit.json")).unwrap();
        let written: bilevel_bench::commands::refit::Refit = serde_json::from_str(&text).unwrap();
        assert_eq!(written.options, other, "{}", run.dir.display());
    }
}
