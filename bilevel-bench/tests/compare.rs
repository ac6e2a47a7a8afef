//! `compare` on a tiny budget: every run directory, the results table and the six plots.

use bilevel_bench::compare::{compare, quantile, CompareOptions};
use bilevel_bench::config::RunConfig;
use bilevel_bench::tasks::resolve_data_dir;

#[test]
fn quantiles_interpolate() {
    assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
    assert!((quantile(&[0.0, 10.0], 0.2) - 2.0).abs() < 1e-12);
    assert!(quantile(&[], 0.5).is_nan());
}

#[test]
fn compare_writes_runs_table_and_plots() {
    let base: RunConfig = toml::from_str(
        r#"
        task = "hyper-opt"
        iters = 4
        eval_every = 2
        [hyper_opt]
        batch = 8
        max_len = 8
        eval_size = 16
        "#,
    )
    .unwrap();
    let out = std::env::temp_dir().join(format!("bilevel-compare-{}", std::process::id()));
    let options = CompareOptions {
        base,
        methods: vec!["bo-rep".into(), "soba".into()],
        seeds: vec![0, 1],
        out: out.clone(),
        progress: false,
        tuned: None,
        jobs: 2,
    };
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
    let table = std::fs::read_to_string(report.dir.join("results.md")).unwrap();
    assert!(table.starts_with("| method | test/accuracy |"), "{table}");
    assert!(table.contains("| bo-rep |") && table.contains("| soba |"));
    let csv = std::fs::read_to_string(report.dir.join("results.csv")).unwrap();
    assert!(csv
        .lines()
        .any(|l| l.starts_with("soba,validation/loss,") && l.ends_with(",2")));
    for axis in ["iterations", "oracle_calls", "time"] {
        for ext in ["png", "svg"] {
            let path = report.dir.join(format!("test_accuracy_vs_{axis}.{ext}"));
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            assert!(size > 1_000, "{} ({size} bytes)", path.display());
        }
    }
    let svg = std::fs::read_to_string(report.dir.join("test_accuracy_vs_iterations.svg")).unwrap();
    assert!(
        svg.contains("bo-rep") && svg.contains("soba"),
        "legend names the methods"
    );
}
