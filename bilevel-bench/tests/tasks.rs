//! The tasks' data as `tasks.md` defines it (splits, balance, corruption, few-shot tasks), and
//! configuration errors that name the offending field.

use bilevel_bench::run::config::{RunConfig, TaskName};
use bilevel_bench::run::run;
use bilevel_bench::tasks::hyper_clean::{self, HyperCleanConfig};
use bilevel_bench::tasks::hyper_opt::{self, HyperOptConfig};
use bilevel_bench::tasks::hyper_rep::{self, HyperRepConfig};
use bilevel_bench::tasks::resolve_data_dir;

mod common;

#[test]
fn hyper_clean_splits_are_balanced_and_a_fixed_fraction_is_flipped() {
    let config = HyperCleanConfig {
        train_size: 2_000,
        validation_size: 400,
        test_size: 600,
        ..Default::default()
    };
    let data = hyper_clean::load(&resolve_data_dir(None).unwrap(), &config, 7).unwrap();
    assert_eq!(
        (data.train.len(), data.validation.len(), data.test.len()),
        (2_000, 400, 600)
    );
    assert_eq!(
        data.corrupted.iter().filter(|&&c| c).count(),
        600,
        "30% of 2,000 flipped"
    );
    let positives = |labels: &[usize]| labels.iter().filter(|&&l| l == 1).count();
    assert_eq!(
        positives(data.validation.labels()),
        200,
        "clean validation stays balanced"
    );
    assert_eq!(positives(data.test.labels()), 300);
    // Flipping 600 of a balanced 2,000 keeps the observed positives between 700 and 1,300, and
    // the clean-label positives exactly 1,000.
    let clean_positives = data
        .train
        .labels()
        .iter()
        .zip(&data.corrupted)
        .filter(|(&l, &c)| (l == 1) != c)
        .count();
    assert_eq!(clean_positives, 1_000);
    assert_eq!(
        data.manual_test.len(),
        359,
        "177 negative + 182 positive hand-labelled tweets"
    );
    // The same seed gives the same corruption; another seed another one.
    let again = hyper_clean::load(&resolve_data_dir(None).unwrap(), &config, 7).unwrap();
    assert_eq!(again.corrupted, data.corrupted);
    let other = hyper_clean::load(&resolve_data_dir(None).unwrap(), &config, 8).unwrap();
    assert_ne!(other.corrupted, data.corrupted);
}

#[test]
fn hyper_opt_splits_the_training_pool_80_20() {
    let data = hyper_opt::load(
        &resolve_data_dir(None).unwrap(),
        &HyperOptConfig::default(),
        0,
    )
    .unwrap();
    let pool = data.train.len() + data.validation.len();
    assert_eq!(data.train.len(), (pool as f64 * 0.8).round() as usize);
    assert!(data.test.len() > 5_000, "all 14 domains' test files");
}

/// The test files come domain by domain; each seed shuffles them, so the first `eval_size`
/// reviews of a quick run sample every domain instead of the first five.
#[test]
fn hyper_opt_shuffles_the_test_reviews_per_seed() {
    let load = |seed| {
        hyper_opt::load(
            &resolve_data_dir(None).unwrap(),
            &HyperOptConfig::default(),
            seed,
        )
        .unwrap()
    };
    let (a, b) = (load(0), load(1));
    assert_eq!(a.test.len(), b.test.len());
    assert_ne!(
        a.test.labels(),
        b.test.labels(),
        "a different order per seed"
    );
    let positives =
        |d: &hyper_opt::HyperOptData| d.test.labels().iter().filter(|&&l| l == 1).count();
    assert_eq!(positives(&a), positives(&b), "the same reviews");
}

#[test]
fn hyper_rep_tasks_are_balanced_two_way_ten_shot() {
    let config = HyperRepConfig {
        train_tasks: 40,
        test_tasks: 10,
        ..Default::default()
    };
    let data = hyper_rep::load(&resolve_data_dir(None).unwrap(), &config, 3).unwrap();
    assert_eq!((data.train_tasks.len(), data.test_tasks.len()), (40, 10));
    let labels = data.texts.labels();
    for task in data.train_tasks.iter().chain(&data.test_tasks) {
        for set in [&task.support, &task.query] {
            assert_eq!(set.len(), 20);
            assert_eq!(set.iter().filter(|&&i| labels[i] == 1).count(), 10);
        }
        assert!(task.support.iter().all(|i| !task.query.contains(i)));
    }
}

/// Validation tasks are balanced 2-way 10-shot tasks too, and drawing them leaves the seed's
/// training and test tasks as they were without them (same reviews, same labels).
#[test]
fn hyper_rep_validation_tasks_leave_the_training_and_test_tasks_unchanged() {
    let config = |validation_tasks| HyperRepConfig {
        train_tasks: 40,
        test_tasks: 10,
        validation_tasks,
        ..Default::default()
    };
    let data_dir = resolve_data_dir(None).unwrap();
    let without = hyper_rep::load(&data_dir, &config(0), 5).unwrap();
    let with = hyper_rep::load(&data_dir, &config(12), 5).unwrap();
    assert!(without.validation_tasks.is_empty());
    assert_eq!(with.validation_tasks.len(), 12);
    let reviews = |data: &hyper_rep::HyperRepData, tasks: &[bilevel_models::forms::Task]| {
        let labels = data.texts.labels();
        tasks
            .iter()
            .flat_map(|t| t.support.iter().chain(&t.query))
            .map(|&i| (data.texts.tokens(i).to_vec(), labels[i]))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        reviews(&with, &with.train_tasks),
        reviews(&without, &without.train_tasks)
    );
    assert_eq!(
        reviews(&with, &with.test_tasks),
        reviews(&without, &without.test_tasks)
    );
    let labels = with.texts.labels();
    for task in &with.validation_tasks {
        for set in [&task.support, &task.query] {
            assert_eq!(set.len(), 20);
            assert_eq!(set.iter().filter(|&&i| labels[i] == 1).count(), 10);
        }
    }
}

#[test]
fn bad_configurations_are_rejected_with_the_field() {
    let dir = common::scratch("tasks", "config");
    std::fs::create_dir_all(&dir).unwrap();
    let check = |toml_text: &str, expected: &str| {
        let path = dir.join("c.toml");
        std::fs::write(&path, toml_text).unwrap();
        let err = match RunConfig::from_file(&path) {
            Err(e) => e.to_string(),
            Ok(c) => match c
                .validate()
                .and_then(|_| c.method().validate().map_err(anyhow::Error::from))
            {
                Err(e) => e.to_string(),
                Ok(()) => panic!("accepted: {toml_text}"),
            },
        };
        assert!(
            err.contains(expected),
            "'{toml_text}': got '{err}', expected '{expected}'"
        );
    };
    check("iterz = 3", "unknown field `iterz`");
    check("task = \"hyper-cook\"", "unknown variant `hyper-cook`");
    check("iters = 0", "iters must be at least 1");
    check(
        "[hyper_clean]\ncorruption = 1.5",
        "hyper_clean.corruption must be in [0, 1]",
    );
    check(
        "[hyper_clean]\nbatch = 0",
        "hyper_clean.batch must be at least 1",
    );
    check(
        "[hyper_clean]\ntrain_size = 5000",
        "hyper_clean.train_size must be one of [20000, 2000]",
    );
    check(
        "[method]\nmethod = \"soba\"\nrho = { initial = -0.1, exponent = 0.4 }",
        "`rho` must be a positive number",
    );
    check(
        "[method]\nmethod = \"bo-rep\"\neta = -1.0",
        "`eta` must be a positive number",
    );
    check(
        "[method]\nmethod = \"bo-rep\"\nbeta = 1.5",
        "`beta` must be in [0, 1)",
    );
    check("[method]\nmethod = \"adam\"", "unknown variant `adam`");
    check(
        "task = \"hyper-opt\"\n[hyper_opt]\ntrain_fraction = 1.0",
        "hyper_opt.train_fraction must be in (0, 1)",
    );
    check("iters = \"many\"", "invalid type");
    check("threads = 0", "threads must be at least 1");
    check(
        "[hyper_clean]\ntrain_eval_size = 0",
        "hyper_clean.train_eval_size must be at least 1",
    );
    check(
        "[hyper_clean]\nweight_logit_init = nan",
        "hyper_clean.weight_logit_init must be a finite number",
    );
    // MAML never steps x, and hyper-rep's metric reads x alone: refused, naming the alternatives.
    check(
        "task = \"hyper-rep\"\n[method]\nmethod = \"maml\"",
        "or maml-encoder, the lab's MAML",
    );
}

#[test]
fn a_missing_data_directory_is_a_clear_error() {
    let err = resolve_data_dir(Some(std::path::Path::new("/nonexistent/data")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/data does not exist"), "{err}");
    // A data directory without the task's files names the missing file.
    let empty = common::scratch("tasks", "empty");
    std::fs::create_dir_all(&empty).unwrap();
    let config = RunConfig {
        task: TaskName::HyperOpt,
        iters: 1,
        ..Default::default()
    };
    let err = format!(
        "{:#}",
        run(&config, &empty, &empty.join("run"), false).unwrap_err()
    );
    assert!(err.contains("apparel.task.train: file not found"), "{err}");
}

/// A run with batch shards on two threads is the same run as on one: the same iterations, oracle
/// calls and, up to the rounding of the shards' sums (f32), the same metrics.
#[test]
fn a_run_on_two_threads_matches_one_thread() {
    let data = resolve_data_dir(None).unwrap();
    let out = common::scratch("tasks", "threads");
    let summary = |threads: usize| {
        let mut config: RunConfig = toml::from_str(
            r#"
            task = "hyper-clean"
            iters = 6
            eval_every = 3
            [hyper_clean]
            train_size = 2000
            validation_size = 100
            test_size = 100
            batch = 32
            max_len = 8
            train_eval_size = 100
            "#,
        )
        .unwrap();
        config.threads = threads;
        run(&config, &data, &out.join(format!("t{threads}")), false).unwrap()
    };
    let (one, two) = (summary(1), summary(2));
    assert_eq!(one.evaluations.len(), two.evaluations.len());
    for (a, b) in one.evaluations.iter().zip(&two.evaluations) {
        assert_eq!((a.iteration, a.oracle_calls), (b.iteration, b.oracle_calls));
        for (name, va) in &a.metrics {
            let vb = b.metrics[name];
            assert!(
                (va - vb).abs() <= 1e-4 * va.abs().max(1.0),
                "iteration {}: {name} {va} on one thread, {vb} on two",
                a.iteration
            );
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// `bilevel-bench run --model transformer` runs each task (BO-REP, tiny sizes): its runs go to
/// `<task>-transformer/`, its configuration names the model, and every metric is finite.
#[test]
fn the_transformer_runs_every_task_from_the_command_line() {
    let out = common::scratch("tasks", "transformer");
    for task in ["hyper-rep", "hyper-opt", "hyper-clean"] {
        let config = out.join(format!("{task}.toml"));
        let mut tiny = common::tiny(task);
        tiny.iters = 2;
        tiny.eval_every = 2;
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(&config, toml::to_string(&tiny).unwrap()).unwrap();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_bilevel-bench"))
            .args(["run", "--quiet", "--model", "transformer", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{task}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let dir = out.join(format!("{task}-transformer/bo-rep/seed-0"));
        let saved = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        assert!(saved.contains("model = \"transformer\""), "{saved}");
        let summary: bilevel_bench::run::summary::RunSummary =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        let metrics = &summary.evaluations.last().unwrap().metrics;
        assert!(metrics.contains_key("test/accuracy"), "{task}: {metrics:?}");
        for (name, value) in metrics {
            assert!(value.is_finite(), "{task}: {name} = {value}");
        }
        assert!(
            !out.join(task).exists(),
            "{task}: a transformer run left {task}/"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// An empty evaluation set (an empty hand-labelled file) has no accuracy and no loss: it is not
/// evaluated, never scored 0.
#[test]
fn an_empty_evaluation_set_is_not_scored() {
    use bilevel_bench::tasks::common::{measure, EMB};
    use bilevel_models::classifier::cpu;
    use bilevel_models::text::EmbeddedTexts;
    use dfdx::prelude::*;
    let model = cpu::Classifier::<f32>::build(&Cpu::default());
    let empty = EmbeddedTexts::new(EMB, vec![0.0; EMB], vec![], vec![]).unwrap();
    assert_eq!(measure::<f32, _, EMB>(&model, &empty, 4), None);
    let one = EmbeddedTexts::new(EMB, vec![0.0; EMB], vec![vec![0]], vec![1]).unwrap();
    let (loss, accuracy) = measure::<f32, _, EMB>(&model, &one, 4).expect("one text");
    assert!(loss > 0.0 && (accuracy == 0.0 || accuracy == 1.0));
}

/// Every configuration shipped in `configs/` reads and passes every check, its method's
/// included, so a command in the docs that names one cannot fail on it.
#[test]
fn every_shipped_config_reads_and_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut read = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = RunConfig::from_file(&path).unwrap();
            config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            read += 1;
        }
    }
    assert!(read >= 4, "only {read} configurations in {}", dir.display());
}
