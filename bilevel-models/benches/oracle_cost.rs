//! Cost of the exact second-order oracle against a plain gradient, for the three task forms at
//! the default sizes of `tasks.md` (f32, CPU preset).
//!
//! `cargo bench -p bilevel-models --bench oracle_cost [-- FORM [REPEATS]]`
//! `cargo bench -p bilevel-models --bench oracle_cost -- hidden`: hyper-opt's oracles for RNN
//! hidden sizes 64, 128 (the default) and 256 (head width 64), allocation cache on.
//!
//! For each form it times, on one fixed lower batch, a plain gradient of g (dfdx autodiff of the
//! lower loss: ∇_x g and ∇_y g) and one second-order pass (∇_y g, H·v, J·v from one backward over
//! ⟨∇_y g, v⟩), prints the medians and their ratio, and the peak resident memory. Each form runs
//! in its own process so that peak memory is per form, once with dfdx's allocation cache off and
//! once with it on (`ORACLE_COST_CACHE` set: freed buffers are reused instead of page-faulted in). Texts are synthetic and full length
//! (T tokens each, no padding): the worst case for time, with the same shapes as the real data.

use std::process::Command;
use std::time::Instant;

use bilevel_models::classifier::{cpu, ElmanEncoder, MlpHead, TextClassifier};
use bilevel_models::forms::{BatchConfig, HyperClean, HyperOpt, HyperRep, Task};
use bilevel_models::text::EmbeddedTexts;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::problem::BilevelProblem;
use dfdx::nn::modules::Repeated;
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

type E = f32;
const EMB: usize = cpu::EMBEDDING;
const C: usize = cpu::CLASSES;
const TASKS: usize = 400;
const TRAIN_TWEETS: usize = 20_000;

fn texts(n: usize, len: usize, seed: u64) -> EmbeddedTexts {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let vocabulary = 2000;
    let vectors = (0..vocabulary * EMB)
        .map(|_| rng.gen_range(-0.5..0.5))
        .collect();
    let texts = (0..n)
        .map(|_| {
            (0..len)
                .map(|_| rng.gen_range(0..vocabulary as u32))
                .collect()
        })
        .collect();
    let labels = (0..n).map(|_| rng.gen_range(0..C)).collect();
    EmbeddedTexts::new(EMB, vectors, texts, labels).expect("valid texts")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Times both oracles on one lower batch; returns (plain ms, second-order ms).
fn time_oracles<P: BilevelProblem<E>>(
    problem: P,
    x: &P::X,
    y: &P::Y,
    repeats: usize,
) -> (f64, f64) {
    let mut oracles = Oracles::new(problem, 0);
    let batch = oracles.lower_batch();
    let v = oracles.lower_grad(x, y, &batch).unwrap().dy; // warm-up, and a realistic direction
    let (mut plain, mut second) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let t = Instant::now();
        std::hint::black_box(oracles.lower_grad(x, y, &batch).unwrap());
        plain.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        std::hint::black_box(
            oracles
                .hvp_jvp(x, y, &v, &batch)
                .expect("second-order pass"),
        );
        second.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(plain), median(second))
}

fn run_form(form: &str, repeats: usize) -> (f64, f64) {
    let dev = Cpu::seed_from_u64(0);
    if std::env::var_os("ORACLE_COST_CACHE").is_some() {
        dev.enable_cache();
        bilevel_optim::real::device().enable_cache();
    }
    match form {
        "hyper-rep" => {
            // 20 tasks per batch, 20 support reviews per task, T = 64.
            let x = cpu::Encoder::<E>::build(&dev);
            let y = Repeated::<cpu::Head<E>, TASKS>::build(&dev);
            let tasks = (0..TASKS)
                .map(|i| Task {
                    support: (i * 40..i * 40 + 20).collect(),
                    query: (i * 40 + 20..i * 40 + 40).collect(),
                })
                .collect();
            let problem = HyperRep::<E, cpu::Encoder<E>, cpu::Head<E>, TASKS, EMB, C>::new(
                texts(TASKS * 40, 64, 1),
                tasks,
                20,
                64,
                1e-3,
            )
            .unwrap();
            time_oracles(problem, &x, &y, repeats)
        }
        // Batch 64, T = 64, the CPU preset's classifier.
        "hyper-opt" => hyper_opt_with_hidden::<{ cpu::HIDDEN }>(&dev, repeats),
        "hyper-clean" => {
            // Batch 256, T = 32, one weight per training tweet.
            let y = cpu::Classifier::<E>::build(&dev);
            let x: Tensor<Rank1<TRAIN_TWEETS>, E, Cpu> = dev.ones();
            let config = BatchConfig {
                lower_batch: 256,
                upper_batch: 256,
                max_len: 32,
            };
            let problem = HyperClean::<E, cpu::Classifier<E>, TRAIN_TWEETS, EMB, C>::new(
                texts(TRAIN_TWEETS, 32, 4),
                texts(2000, 32, 5),
                config,
                1e-3,
            )
            .unwrap();
            time_oracles(problem, &x, &y, repeats)
        }
        "hyper-opt-h64" => hyper_opt_with_hidden::<64>(&dev, repeats),
        "hyper-opt-h128" => hyper_opt_with_hidden::<128>(&dev, repeats),
        "hyper-opt-h256" => hyper_opt_with_hidden::<256>(&dev, repeats),
        other => panic!("unknown form {other}: hyper-rep, hyper-opt or hyper-clean"),
    }
}

/// Hyper-opt (batch 64, T = 64) with an Elman encoder of `H` hidden units (the CPU preset's
/// classifier at `H` = `cpu::HIDDEN`).
fn hyper_opt_with_hidden<const H: usize>(dev: &Cpu, repeats: usize) -> (f64, f64) {
    type Model<const H: usize> =
        TextClassifier<ElmanEncoder<EMB, H, E>, MlpHead<H, { cpu::HEAD }, C, E>>;
    let y = Model::<H>::build(dev);
    let x: Tensor<Rank1<{ cpu::CLASSIFIER_TENSORS }>, E, Cpu> =
        dev.tensor([(1e-3f32).ln(); cpu::CLASSIFIER_TENSORS]);
    let config = BatchConfig {
        lower_batch: 64,
        upper_batch: 64,
        max_len: 64,
    };
    let problem = HyperOpt::<E, Model<H>, _, EMB, C>::new(
        texts(1000, 64, 2),
        texts(200, 64, 3),
        config,
        &y,
        &x,
    )
    .unwrap();
    time_oracles(problem, &x, &y, repeats)
}

/// Peak resident memory of this process in MiB (Linux), if known.
fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let Some(form) = args.first().filter(|f| *f != "hidden") {
        let repeats = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(5);
        let (plain, second) = run_form(form, repeats);
        println!(
            "RESULT {form} {plain:.1} {second:.1} {:.2} {:.0}",
            second / plain,
            peak_memory_mib().unwrap_or(f64::NAN)
        );
        return;
    }
    let me = std::env::current_exe().expect("own path");
    let run = |form: &str, cache: bool| -> Option<Vec<String>> {
        let mut command = Command::new(&me);
        command.arg(form);
        if cache {
            command.env("ORACLE_COST_CACHE", "1");
        }
        let out = command.output().expect("run one form");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find(|l| l.starts_with("RESULT")) else {
            eprintln!("{form} failed:\n{}", String::from_utf8_lossy(&out.stderr));
            return None;
        };
        Some(line.split_whitespace().map(String::from).collect())
    };
    if args.first().map(String::as_str) == Some("hidden") {
        println!("| hidden | plain ∇g (ms) | (∇_y g, Hv, Jv) (ms) | ratio | peak memory (MiB) |");
        println!("|---|---|---|---|---|");
        for h in [64, 128, 256] {
            if let Some(f) = run(&format!("hyper-opt-h{h}"), true) {
                println!("| {h} | {} | {} | {} | {} |", f[2], f[3], f[4], f[5]);
            }
        }
        return;
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    println!("f32, CPU preset, RAYON_NUM_THREADS={threads}, medians of 5 after one warm-up\n");
    println!("| form | y | allocation cache | plain ∇g (ms) | (∇_y g, Hv, Jv) (ms) | ratio | target | peak memory (MiB) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (form, y, target) in [
        ("hyper-rep", "400 MLP heads (20 per batch)", "≤ 1.5"),
        ("hyper-opt", "Elman classifier", "≤ 3"),
        ("hyper-clean", "Elman classifier", "≤ 3"),
    ] {
        for cache in ["off", "on"] {
            if let Some(f) = run(form, cache == "on") {
                println!(
                    "| {form} | {y} | {cache} | {} | {} | {} | {target} | {} |",
                    f[2], f[3], f[4], f[5]
                );
            }
        }
    }
}
