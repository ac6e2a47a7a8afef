//! The three lower-level forms with both encoders, on packed batches of uneven lengths: written
//! gradient against dfdx's autodiff, exact H·v and J·v against finite differences, symmetry, and
//! the structure of the cross products (zero outside the batch).

mod common;

use bilevel_models::classifier::{
    ElmanEncoder, LinearHead, LstmEncoder, MlpHead, TextClassifier, TransformerEncoder,
};
use bilevel_models::elman::ElmanLayer;
use bilevel_models::forms::{
    BatchConfig, HyperClean, HyperOpt, HyperRep, Task, TaskBatch, TaskDraws,
};
use bilevel_models::lstm::LstmLayer;
use bilevel_models::padded::PadSequence;
use bilevel_models::pool::MaxPoolTime;
use bilevel_models::pool::MeanPoolSteps;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::params::Params;
use bilevel_optim::problem::BilevelProblem;
use common::*;
use dfdx::nn::modules::{
    FastGeLU, LayerNorm1D, Linear, ReLU, Repeated, Sigmoid, Sqrt, Tanh, TransformerEncoderBlock,
};
use dfdx::prelude::*;

const EMB: usize = 3;
const H: usize = 4;
const M: usize = 5;
const C: usize = 3;
const T: usize = 6;

type ElmanClassifier = TextClassifier<ElmanEncoder<EMB, H, f64>, MlpHead<H, M, C, f64>>;
type LstmClassifier = TextClassifier<LstmEncoder<EMB, H, f64>, MlpHead<H, M, C, f64>>;
type OneElman = (
    ElmanLayer<EMB, H, f64, Cpu>,
    MaxPoolTime,
    LinearHead<H, C, f64>,
);
type OneLstm = (
    LstmLayer<EMB, H, f64, Cpu>,
    MaxPoolTime,
    LinearHead<H, C, f64>,
);

fn config() -> BatchConfig {
    BatchConfig {
        lower_batch: 7,
        upper_batch: 5,
        max_len: T,
    }
}

fn hyper_opt<Y, const K: usize>(what: &str)
where
    Y: Params<f64> + BuildModule<Cpu, f64>,
    HyperOpt<f64, Y, Tensor<Rank1<K>, f64, Cpu>, EMB, C>:
        BilevelProblem<f64, X = Tensor<Rank1<K>, f64, Cpu>, Y = Y>,
{
    let dev = Cpu::seed_from_u64(7);
    let y = Y::build(&dev);
    let x: Tensor<Rank1<K>, f64, Cpu> = dev.sample_normal::<Rank1<K>>() * 0.3 - 1.5;
    let problem = HyperOpt::<f64, Y, _, EMB, C>::new(
        synthetic_texts(30, EMB, T, C, 1),
        synthetic_texts(10, EMB, T, C, 2),
        config(),
        &y,
        &x,
    )
    .expect("consistent sizes");
    let checks = check_second_order(&mut Oracles::new(problem, 3), &x, &y);
    println!("hyper-opt {what}: {checks:?}");
    checks.assert_exact(what);
}

#[test]
fn hyper_opt_single_elman_layer() {
    hyper_opt::<OneElman, 6>("one Elman layer");
}

#[test]
fn hyper_opt_single_lstm_layer() {
    hyper_opt::<OneLstm, 18>("one LSTM layer");
}

#[test]
fn hyper_opt_elman_classifier() {
    hyper_opt::<ElmanClassifier, 14>("2-layer Elman classifier");
}

#[test]
fn hyper_opt_lstm_classifier() {
    hyper_opt::<LstmClassifier, 38>("2-layer LSTM classifier");
}

#[test]
fn hyper_opt_scalar_coefficient() {
    let dev = Cpu::seed_from_u64(7);
    let y = ElmanClassifier::build(&dev);
    let x: Tensor<Rank0, f64, Cpu> = dev.tensor(-1.0);
    let problem = HyperOpt::<f64, ElmanClassifier, _, EMB, C>::new(
        synthetic_texts(30, EMB, T, C, 1),
        synthetic_texts(10, EMB, T, C, 2),
        config(),
        &y,
        &x,
    )
    .unwrap();
    let checks = check_second_order(&mut Oracles::new(problem, 3), &x, &y);
    println!("hyper-opt scalar: {checks:?}");
    checks.assert_exact("scalar coefficient");
}

#[test]
fn hyper_opt_rejects_a_wrong_coefficient_count() {
    let dev = Cpu::seed_from_u64(7);
    let y = ElmanClassifier::build(&dev);
    let x: Tensor<Rank1<13>, f64, Cpu> = dev.zeros();
    let err = HyperOpt::<f64, ElmanClassifier, _, EMB, C>::new(
        synthetic_texts(5, EMB, T, C, 1),
        synthetic_texts(5, EMB, T, C, 2),
        config(),
        &y,
        &x,
    )
    .err()
    .expect("13 coefficients for 14 tensors");
    assert!(err.contains("13") && err.contains("14"), "{err}");
}

const N: usize = 12;

fn hyper_clean<Y>(what: &str)
where
    Y: Params<f64> + BuildModule<Cpu, f64>,
    HyperClean<f64, Y, N, EMB, C>: BilevelProblem<
        f64,
        X = Tensor<Rank1<N>, f64, Cpu>,
        Y = Y,
        LowerBatch = bilevel_models::text::TextBatch<f64, EMB>,
    >,
{
    let dev = Cpu::seed_from_u64(9);
    let y = Y::build(&dev);
    let x: Tensor<Rank1<N>, f64, Cpu> = dev.sample_normal();
    let problem = HyperClean::<f64, Y, N, EMB, C>::new(
        synthetic_texts(N, EMB, T, C, 4),
        synthetic_texts(10, EMB, T, C, 5),
        config(),
        0.05,
    )
    .unwrap();
    let mut oracles = Oracles::new(problem, 5);
    let checks = check_second_order(&mut oracles, &x, &y);
    println!("hyper-clean {what}: {checks:?}");
    checks.assert_exact(what);

    // Only the λ entries of the batch's texts have nonzero cross products.
    let batch = oracles.lower_batch();
    let v = random_like(&y, 4);
    let jv = oracles.hvp_jvp(&x, &y, &v, &batch).unwrap().jvp.as_vec();
    for (i, value) in jv.iter().enumerate() {
        assert_eq!(
            batch.ids.contains(&i),
            *value != 0.0,
            "λ_{i}: cross product {value}, in batch: {}",
            batch.ids.contains(&i)
        );
    }
}

#[test]
fn hyper_clean_elman_classifier() {
    hyper_clean::<ElmanClassifier>("2-layer Elman classifier");
}

#[test]
fn hyper_clean_lstm_classifier() {
    hyper_clean::<LstmClassifier>("2-layer LSTM classifier");
}

/// dfdx's element-wise, dense and layer-norm modules on packed sequences, step by step.
#[test]
fn hyper_clean_with_dfdx_layers_over_time() {
    hyper_clean::<(
        ElmanLayer<EMB, H, f64, Cpu>,
        Linear<H, M, f64, Cpu>,
        LayerNorm1D<M, f64, Cpu>,
        ReLU,
        MaxPoolTime,
        LinearHead<M, C, f64>,
    )>("Elman, Linear, LayerNorm1D, ReLU over time, max-pool");
    hyper_clean::<(
        ElmanLayer<EMB, H, f64, Cpu>,
        FastGeLU,
        MaxPoolTime,
        LinearHead<H, C, f64>,
    )>("Elman, GeLU over time, max-pool");
    hyper_clean::<(
        ElmanLayer<EMB, H, f64, Cpu>,
        Sigmoid,
        Sqrt,
        MaxPoolTime,
        LinearHead<H, C, f64>,
    )>("Elman, sigmoid and sqrt over time, max-pool");
    hyper_clean::<(
        ElmanLayer<EMB, H, f64, Cpu>,
        Tanh,
        MaxPoolTime,
        LinearHead<H, C, f64>,
    )>("Elman, tanh over time, max-pool");
}

/// A transformer over the words (padded batch, masked attention, mean over the real words), and
/// one over an Elman layer's outputs, so the padding's written backward carries a gradient into
/// a layer with parameters.
#[test]
fn hyper_clean_transformers() {
    hyper_clean::<(
        TransformerEncoder<EMB, H, 2, M, 2, f64>,
        LinearHead<H, C, f64>,
    )>("2-block transformer");
    hyper_clean::<(
        ElmanLayer<EMB, H, f64, Cpu>,
        PadSequence,
        TransformerEncoderBlock<H, 2, M, f64, Cpu>,
        ReLU,
        MeanPoolSteps,
        LinearHead<H, C, f64>,
    )>("Elman, padding, an encoder block, ReLU, masked mean");
}

const TASKS: usize = 4;

fn hyper_rep<Enc>(what: &str)
where
    Enc: Params<f64> + BuildModule<Cpu, f64>,
    HyperRep<f64, Enc, MlpHead<H, M, C, f64>, TASKS, EMB, C>: BilevelProblem<
        f64,
        X = Enc,
        Y = Repeated<MlpHead<H, M, C, f64>, TASKS>,
        UpperBatch = bilevel_models::forms::TaskBatch<f64, EMB>,
        LowerBatch = bilevel_models::forms::TaskBatch<f64, EMB>,
    >,
{
    let dev = Cpu::seed_from_u64(11);
    let x = Enc::build(&dev);
    let y = Repeated::<MlpHead<H, M, C, f64>, TASKS>::build(&dev);
    let tasks = (0..TASKS)
        .map(|i| Task {
            support: (i * 8..i * 8 + 4).collect(),
            query: (i * 8 + 4..i * 8 + 8).collect(),
        })
        .collect();
    let problem = HyperRep::<f64, Enc, MlpHead<H, M, C, f64>, TASKS, EMB, C>::new(
        synthetic_texts(8 * TASKS, EMB, T, C, 6),
        tasks,
        2,
        T,
        0.05,
    )
    .unwrap();
    let mut oracles = Oracles::new(problem, 7);
    let checks = check_second_order(&mut oracles, &x, &y);
    println!("hyper-rep {what}: {checks:?}");
    checks.assert_exact(what);

    // Heads outside the task batch: zero gradient and zero H·v; inside: nonzero.
    let batch = oracles.lower_batch();
    let v = random_like(&y, 8);
    let out = oracles.hvp_jvp(&x, &y, &v, &batch).unwrap();
    let in_batch: Vec<usize> = batch.tasks.iter().map(|(i, _)| *i).collect();
    for i in 0..TASKS {
        let (g, hv) = (
            out.written_grad_y.modules[i].norm(),
            out.hvp.modules[i].norm(),
        );
        assert_eq!(
            in_batch.contains(&i),
            g != 0.0 && hv != 0.0,
            "head {i}: ‖g‖ {g}, ‖Hv‖ {hv}"
        );
    }
    touched_heads_carry_every_gradient(&mut oracles, &x, &y, what);
}

/// The passes keep gradients for the batch's heads only (`upper_touches`, `lower_touches`):
/// every other head comes back as a shared zero, and nothing is lost, since the gradients'
/// slopes along a direction over all of y and x match central differences of the losses
/// themselves (no gradient involved).
fn touched_heads_carry_every_gradient<P>(
    oracles: &mut Oracles<f64, P>,
    x: &P::X,
    y: &P::Y,
    what: &str,
) where
    P: BilevelProblem<
        f64,
        Y = Repeated<MlpHead<H, M, C, f64>, TASKS>,
        UpperBatch = TaskBatch<f64, EMB>,
        LowerBatch = TaskBatch<f64, EMB>,
    >,
{
    let (upper, lower) = (oracles.upper_batch(), oracles.lower_batch());
    let up = oracles.upper_grad(x, y, &upper).unwrap();
    let (_, low) = oracles.lower_grad_in_y(x, y, &lower).unwrap();
    for (dy, batch, level) in [(&up.dy, &upper, "upper"), (&low, &lower, "lower")] {
        for (i, head) in dy.modules.iter().enumerate() {
            let outside = !heads(batch).contains(&i);
            let mask = head.shared_zero_mask();
            assert!(
                mask.iter().all(|&zero| zero == outside),
                "{what}, {level} gradient, head {i}: shared zeros {mask:?}"
            );
        }
    }
    let (dx, dy) = (random_like(x, 31), random_like(y, 32));
    let eps = 1e-6;
    let along = |s: f64| {
        let (mut xs, mut ys) = (x.clone(), y.clone());
        xs.add_scaled(s, &dx);
        ys.add_scaled(s, &dy);
        (xs, ys)
    };
    let ((xp, yp), (xm, ym)) = (along(eps), along(-eps));
    let problem = oracles.problem();
    let upper_fd = (problem.upper_loss(&xp, &yp, &upper).array()
        - problem.upper_loss(&xm, &ym, &upper).array())
        / (2.0 * eps);
    let upper_slope = up.dx.dot(&dx) + up.dy.dot(&dy);
    let lower_fd = (problem.lower_loss(x, &yp, &lower).array()
        - problem.lower_loss(x, &ym, &lower).array())
        / (2.0 * eps);
    let lower_slope = low.dot(&dy);
    for (slope, fd, level) in [
        (upper_slope, upper_fd, "upper"),
        (lower_slope, lower_fd, "lower"),
    ] {
        assert!(
            (slope - fd).abs() <= 1e-6 * fd.abs().max(1.0),
            "{what}, {level}: slope {slope} against central difference {fd}"
        );
    }
}

/// The tasks (heads) of a task batch, in order.
fn heads(batch: &TaskBatch<f64, EMB>) -> Vec<usize> {
    batch.tasks.iter().map(|(i, _)| *i).collect()
}

type SmallRep = HyperRep<f64, ElmanEncoder<EMB, H, f64>, MlpHead<H, M, C, f64>, 6, EMB, C>;

/// Six tasks of 4 support and 4 query texts each, 2 per batch.
fn small_rep(draws: TaskDraws) -> SmallRep {
    let tasks = (0..6)
        .map(|i| Task {
            support: (i * 8..i * 8 + 4).collect(),
            query: (i * 8 + 4..i * 8 + 8).collect(),
        })
        .collect();
    SmallRep::new(synthetic_texts(48, EMB, T, C, 6), tasks, 2, T, 0.05)
        .unwrap()
        .with_task_draws(draws)
}

/// One task batch per iteration (the default): every lower batch of an iteration is its
/// supports and every upper batch its queries, fixed parts leave it alone, and the next
/// iteration draws another; per lower draw, every lower batch draws new tasks.
#[test]
fn hyper_rep_draws_one_task_batch_per_iteration() {
    assert_eq!(
        small_rep(TaskDraws::default()).task_draws(),
        TaskDraws::PerIteration
    );
    let mut oracles = Oracles::new(small_rep(TaskDraws::PerIteration), 3);
    let mut seen = Vec::new();
    for _ in 0..6 {
        oracles.begin_iteration();
        let tasks = heads(&oracles.lower_batch());
        assert_eq!(heads(&oracles.upper_batch()), tasks);
        assert_eq!(heads(&oracles.lower_part(2).unwrap()), vec![4, 5]);
        assert_eq!(heads(&oracles.lower_batch()), tasks);
        assert_eq!(heads(&oracles.upper_batch()), tasks);
        let upper = oracles.upper_batch();
        let query_rows: Vec<usize> = upper.tasks.iter().map(|(_, r)| r.len()).collect();
        assert_eq!(query_rows, vec![4, 4]);
        seen.push(tasks);
    }
    seen.dedup();
    assert!(seen.len() > 1, "a new batch per iteration: {seen:?}");

    let mut oracles = Oracles::new(small_rep(TaskDraws::PerLowerDraw), 3);
    let draws: Vec<_> = (0..6).map(|_| heads(&oracles.lower_batch())).collect();
    assert!(draws.windows(2).any(|w| w[0] != w[1]), "{draws:?}");
    assert_eq!(heads(&oracles.upper_batch()), draws[5]);
}

/// The sampler state says which convention drew it: a checkpoint resumes under the same one
/// with the same batch, and is refused under the other.
#[test]
fn hyper_rep_sampler_state_names_its_convention() {
    let mut rng = <bilevel_optim::problem::SampleRng as rand::SeedableRng>::seed_from_u64(1);
    for draws in [TaskDraws::PerIteration, TaskDraws::PerLowerDraw] {
        let mut a = small_rep(draws);
        a.begin_iteration(&mut rng);
        let tasks = heads(&a.sample_lower(&mut rng));
        let state = a.sampler_state();
        let mut b = small_rep(draws);
        b.restore_sampler(&state).unwrap();
        assert_eq!(heads(&b.sample_upper(&mut rng)), tasks);
        let other = match draws {
            TaskDraws::PerIteration => TaskDraws::PerLowerDraw,
            TaskDraws::PerLowerDraw => TaskDraws::PerIteration,
        };
        let err = small_rep(other).restore_sampler(&state).unwrap_err();
        assert!(err.contains("task_draws"), "{err}");
    }
}

#[test]
fn hyper_rep_elman_encoder() {
    hyper_rep::<ElmanEncoder<EMB, H, f64>>("Elman encoder");
}

#[test]
fn hyper_rep_lstm_encoder() {
    hyper_rep::<LstmEncoder<EMB, H, f64>>("LSTM encoder");
}

/// x is a transformer: every cross product runs through the padding, the masked attention and
/// the masked mean.
#[test]
fn hyper_rep_transformer_encoder() {
    hyper_rep::<TransformerEncoder<EMB, H, 2, M, 1, f64>>("1-block transformer encoder");
}

/// Every form's passes split over 2 and 3 batch shards (one thread and one device each) equal
/// the unsharded passes to rounding, and pass the finite-difference checks.
#[test]
fn sharded_passes_match_unsharded_on_every_form() {
    let dev = Cpu::seed_from_u64(17);
    let y = ElmanClassifier::build(&dev);
    for threads in [2, 3] {
        let x: Tensor<Rank1<14>, f64, Cpu> = dev.sample_normal::<Rank1<14>>() * 0.3 - 1.5;
        let opt = || {
            HyperOpt::<f64, ElmanClassifier, _, EMB, C>::new(
                synthetic_texts(30, EMB, T, C, 1),
                synthetic_texts(10, EMB, T, C, 2),
                config(),
                &y,
                &x,
            )
            .unwrap()
        };
        check_sharded(opt(), opt(), &x, &y, threads, "hyper-opt");

        let x: Tensor<Rank1<N>, f64, Cpu> = dev.sample_normal();
        let clean = || {
            HyperClean::<f64, ElmanClassifier, N, EMB, C>::new(
                synthetic_texts(N, EMB, T, C, 4),
                synthetic_texts(10, EMB, T, C, 5),
                config(),
                0.05,
            )
            .unwrap()
        };
        check_sharded(clean(), clean(), &x, &y, threads, "hyper-clean");

        type Head = MlpHead<H, M, C, f64>;
        let x = ElmanEncoder::<EMB, H, f64>::build(&dev);
        let heads = Repeated::<Head, TASKS>::build(&dev);
        let rep = || {
            let tasks = (0..TASKS)
                .map(|i| Task {
                    support: (i * 8..i * 8 + 4).collect(),
                    query: (i * 8 + 4..i * 8 + 8).collect(),
                })
                .collect();
            HyperRep::<f64, ElmanEncoder<EMB, H, f64>, Head, TASKS, EMB, C>::new(
                synthetic_texts(8 * TASKS, EMB, T, C, 6),
                tasks,
                3,
                T,
                0.05,
            )
            .unwrap()
        };
        check_sharded(rep(), rep(), &x, &heads, threads, "hyper-rep");
    }
}

/// BO-REP on hyper-rep with one task batch per iteration: stopped after 3 iterations and
/// resumed in a fresh problem, optimizer and generator (from their saved states), it ends at
/// the bits of the uninterrupted run; and its batches differ from the per-lower-draw run's.
#[test]
fn hyper_rep_per_iteration_resumes_bit_identically() {
    use bilevel_optim::methods::borep::{BoRep, BoRepConfig};
    use bilevel_optim::optimizer::BilevelOptimizer;
    type Y = Repeated<MlpHead<H, M, C, f64>, 6>;
    let start = || {
        (
            ElmanEncoder::<EMB, H, f64>::build(&Cpu::seed_from_u64(5)),
            Y::build(&Cpu::seed_from_u64(6)),
        )
    };
    let config = BoRepConfig {
        period: 2,
        lower_steps: 2,
        gamma: 0.1,
        eta: 0.05,
        ..BoRepConfig::default()
    };
    let run = |draws: TaskDraws, stop_at: Option<usize>| {
        let (mut x, mut y) = start();
        let mut oracles = Oracles::new(small_rep(draws), 9);
        let mut opt = BoRep::<f64, SmallRep>::new(config.clone(), &x, &y).unwrap();
        let mut batches = Vec::new();
        for t in 0..6 {
            if stop_at == Some(t) {
                let saved = (
                    opt.state(),
                    oracles.state(),
                    oracles.problem().sampler_state(),
                );
                oracles = Oracles::new(small_rep(draws), 1234);
                oracles.load_state(&saved.1);
                oracles.problem_mut().restore_sampler(&saved.2).unwrap();
                opt = BoRep::<f64, SmallRep>::new(config.clone(), &x, &y).unwrap();
                opt.load_state(&saved.0).unwrap();
            }
            opt.step(&mut oracles, &mut x, &mut y).unwrap();
            batches.push(oracles.problem().sampler_state());
        }
        (x.to_flat(), y.to_flat(), batches)
    };
    let whole = run(TaskDraws::PerIteration, None);
    let mut batches = whole.2.clone();
    batches.dedup();
    assert!(
        batches.len() > 2,
        "the step draws a batch per iteration: {batches:?}"
    );
    assert_eq!(run(TaskDraws::PerIteration, Some(3)), whole);
    let (x, y, _) = run(TaskDraws::PerLowerDraw, None);
    assert_ne!((x, y), (whole.0, whole.1));
}

/// SGD steps on the heads reuse the encoder's features of a batch at an unchanged x: the cached
/// gradient has the bits of a fresh pass, a changed x is encoded again, and ∇_y G agrees with
/// the full lower gradient's y part.
#[test]
fn hyper_rep_reuses_features_only_at_the_same_x() {
    type Y = Repeated<MlpHead<H, M, C, f64>, 6>;
    let x = ElmanEncoder::<EMB, H, f64>::build(&Cpu::seed_from_u64(5));
    let y = Y::build(&Cpu::seed_from_u64(6));
    let mut cached = Oracles::new(small_rep(TaskDraws::PerIteration), 4);
    cached.begin_iteration();
    let batch = cached.lower_batch();
    let fresh_grad = |x: &ElmanEncoder<EMB, H, f64>| {
        let mut fresh = Oracles::new(small_rep(TaskDraws::PerIteration), 4);
        let (value, dy) = fresh.lower_grad_in_y(x, &y, &batch).unwrap();
        (value, dy.to_flat())
    };
    let grad = |o: &mut Oracles<f64, SmallRep>, x: &ElmanEncoder<EMB, H, f64>| {
        let (value, dy) = o.lower_grad_in_y(x, &y, &batch).unwrap();
        (value, dy.to_flat())
    };
    let first = grad(&mut cached, &x);
    assert_eq!(grad(&mut cached, &x), first, "from the cache");
    assert_eq!(fresh_grad(&x), first);
    let full = cached.lower_grad(&x, &y, &batch).unwrap().dy.to_flat();
    for (a, b) in first.1.iter().zip(&full) {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} against {b}");
    }

    let mut moved = x.clone();
    let mut flat = moved.to_flat();
    flat[0] += 1e-3;
    moved.set_flat(&flat).unwrap();
    let after = grad(&mut cached, &moved);
    assert_ne!(after, first, "x moved: encoded again");
    assert_eq!(after, fresh_grad(&moved));
}
