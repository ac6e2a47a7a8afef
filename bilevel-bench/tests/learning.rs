//! Evidence that the methods learn on the real tasks, with fixed seeds and small budgets.

mod common;

use bilevel_bench::run::config::RunConfig;
use bilevel_bench::run::run;
use bilevel_bench::run::summary::RunSummary;
use bilevel_bench::tasks::resolve_data_dir;

fn run_toml(name: &str, text: &str) -> RunSummary {
    let config: RunConfig = toml::from_str(text).unwrap();
    let out = common::scratch("learning", name);
    run(&config, &resolve_data_dir(None).unwrap(), &out, false).unwrap()
}

fn metric(summary: &RunSummary, at: usize, name: &str) -> f64 {
    summary.evaluations[at].metrics[name]
}

/// Hyperparameter optimization: 60 BO-REP iterations lower the validation loss.
#[test]
fn hyper_opt_validation_loss_decreases() {
    let s = run_toml(
        "opt",
        r#"
        task = "hyper-opt"
        iters = 60
        eval_every = 60
        [hyper_opt]
        eval_size = 300
        train_eval_size = 300
        batch = 32
        max_len = 32
        [method]
        method = "bo-rep"
        eta = 0.1
        gamma = 0.1
        period = 1
        lower_steps = 2
        nu = 0.1
        z_init = "zeros"
        "#,
    );
    let (before, after) = (
        metric(&s, 0, "validation/loss"),
        metric(&s, 1, "validation/loss"),
    );
    println!("hyper-opt validation loss {before:.5} → {after:.5}");
    assert!(after < before - 1e-3, "{before} → {after}");
}

/// Hyper-representation: after 100 iterations on 40 training tasks, heads fitted on the learned
/// encoder classify the 50 test tasks' queries better than heads fitted on the random encoder
/// the run started from.
#[test]
fn hyper_rep_encoder_beats_the_random_encoder() {
    let s = run_toml(
        "rep",
        r#"
        task = "hyper-rep"
        iters = 100
        eval_every = 100
        [hyper_rep]
        train_tasks = 40
        test_tasks = 50
        validation_tasks = 0
        tasks_per_batch = 5
        max_len = 32
        [method]
        method = "bo-rep"
        eta = 0.2
        gamma = 0.1
        period = 1
        lower_steps = 2
        nu = 0.1
        z_init = "zeros"
        "#,
    );
    let (random, learned) = (
        metric(&s, 0, "test/accuracy"),
        metric(&s, 1, "test/accuracy"),
    );
    println!("hyper-rep test accuracy: random encoder {random:.4}, learned {learned:.4}");
    assert!(learned > random + 0.03, "{random} → {learned}");
}

/// Data hyper-cleaning (configs/hyper-clean-quick.toml: 2,000 tweets, 30% flipped, 300
/// iterations): BO-REP gives the flipped tweets a lower mean weight than the clean ones, flags
/// them better than chance, and beats the validation loss of the same training with the weights
/// frozen at their start (the unweighted baseline). The losses compared are each run's best
/// evaluation (early stopping, as `compare` reports it): the last evaluation swings by up to 0.5
/// from one evaluation to the next (seed 1: 0.62 at iteration 250, 1.13 at 300), and where in a
/// swing it lands moves with the last bit of the arithmetic (another matrix-product kernel took
/// seed 0's from 0.61 to 0.68).
#[test]
fn hyper_clean_down_weights_flipped_labels_and_beats_the_unweighted_baseline() {
    let quick = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/hyper-clean-quick.toml"
    ))
    .unwrap();
    let cleaned = run_toml("clean", &quick);
    let frozen = run_toml("frozen", &quick.replace("eta = 1.0", "eta = 1e-12"));
    let last = |s: &RunSummary, m: &str| s.last()[m];
    let (corrupted, clean) = (
        last(&cleaned, "weights/mean_corrupted"),
        last(&cleaned, "weights/mean_clean"),
    );
    let best = |s: &RunSummary, m: &str| {
        s.evaluations
            .iter()
            .map(|e| e.metrics[m])
            .fold(f64::INFINITY, f64::min)
    };
    let (val, val_frozen) = (
        best(&cleaned, "validation/loss"),
        best(&frozen, "validation/loss"),
    );
    println!(
        "mean weight: flipped {corrupted:.4}, clean {clean:.4}; precision {:.3}, recall {:.3}; best validation loss {val:.4} vs unweighted {val_frozen:.4}",
        last(&cleaned, "detection/precision"),
        last(&cleaned, "detection/recall")
    );
    assert!(corrupted < clean - 0.05, "{corrupted} vs {clean}");
    assert!(
        last(&cleaned, "detection/precision") > 0.3 + 0.05,
        "better than the 30% base rate"
    );
    assert!(val < val_frozen - 0.02, "{val} vs {val_frozen}");
    // The frozen run really is unweighted: every weight stays σ(1).
    assert!(
        (last(&frozen, "weights/mean_corrupted") - last(&frozen, "weights/mean_clean")).abs()
            < 1e-6
    );
}
