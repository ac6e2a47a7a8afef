//! Shared pieces of the model tests: synthetic texts, a dense-input problem, and the checks every
//! written gradient must pass (autodiff agreement, finite-difference HVP and cross product,
//! symmetry).
#![allow(dead_code)]

use bilevel_models::by_rows::Steps;
use bilevel_models::classifier::{add_loss_gradient, loss};
use bilevel_models::embedding::{TokenSteps, Tokens};
use bilevel_models::layer::WrittenLayer;
use bilevel_models::penalty::{add_l2_gradient, l2_penalty};
use bilevel_models::sequence::Activations;
use bilevel_models::text::EmbeddedTexts;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::params::Params;
use bilevel_optim::problem::{Batch, BilevelProblem, SampleRng, ShardedProblem, Taped, Tp};
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::ZeroSizedModule;
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

/// A written forward against dfdx's module: equal up to the rounding of the matrix products
/// (the models multiply with gemm 0.19's kernels, dfdx with gemm 0.15's, which sum in another
/// order): at most 1e-14 of the largest value, in f64.
pub fn assert_same_forward(ours: &[f64], theirs: &[f64], what: &str) {
    let err = rel_err(ours, theirs);
    assert!(
        err <= 1e-14,
        "{what}: forward differs from dfdx's by {err:e}"
    );
}

/// max |a − b| / max |b|.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

pub fn flat<E: Real, P: Params<E>>(p: &P) -> Vec<f64>
where
    Cpu: Device<E>,
{
    p.to_flat().into_iter().map(|v| v.f64()).collect()
}

/// `n` texts over a random `dim`-d vocabulary of 40 words, lengths 1..=max_len (so batches
/// need packing), labels in 0..classes.
pub fn synthetic_texts(
    n: usize,
    dim: usize,
    max_len: usize,
    classes: usize,
    seed: u64,
) -> EmbeddedTexts {
    let mut rng = SampleRng::seed_from_u64(seed);
    let vocabulary = 40;
    let vectors = (0..vocabulary * dim)
        .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
        .collect();
    let texts = (0..n)
        .map(|i| {
            // Text 0 is empty (one zero step); the rest have random lengths.
            let len = if i == 0 {
                0
            } else {
                rng.gen_range(1..=max_len + 2)
            };
            (0..len)
                .map(|_| rng.gen_range(0..vocabulary as u32))
                .collect()
        })
        .collect();
    let labels = (0..n).map(|_| rng.gen_range(0..classes)).collect();
    EmbeddedTexts::new(dim, vectors, texts, labels).expect("valid synthetic texts")
}

/// A random direction with the shape of `like`.
pub fn random_like<E: Real, P: Params<E>>(like: &P, seed: u64) -> P
where
    Cpu: Device<E>,
{
    let mut rng = SampleRng::seed_from_u64(seed);
    let mut out = like.zeros_like();
    let values: Vec<E> = (0..like.num_params())
        .map(|_| E::of(rng.sample::<f64, _>(StandardNormal)))
        .collect();
    out.set_flat(&values).expect("same length");
    out
}

/// The errors of one problem's second-order oracles against independent references.
#[derive(Debug)]
pub struct Checks {
    /// Written ∇_y g against dfdx's autodiff ∇_y g.
    pub grad: f64,
    /// The y-only lower gradient (`lower_loss_in_y`) against dfdx's full autodiff ∇_y g.
    pub grad_in_y: f64,
    /// H·v against central differences of autodiff ∇_y g along v.
    pub hvp: f64,
    /// J·v against central differences of autodiff ∇_x g along v.
    pub jvp: f64,
    /// |⟨u, Hv⟩ − ⟨v, Hu⟩| / (|⟨u, Hv⟩| + tiny).
    pub symmetry: f64,
    /// ‖Hv‖ and ‖Jv‖, to show the products are not trivially zero.
    pub hvp_norm: f64,
    pub jvp_norm: f64,
}

impl Checks {
    /// The tolerances of the issue: 1e-10 for gradients, 1e-6 against finite differences.
    pub fn assert_exact(&self, what: &str) {
        assert!(
            self.grad < 1e-10,
            "{what}: written gradient off by {:e}",
            self.grad
        );
        assert!(
            self.grad_in_y < 1e-12,
            "{what}: y-only lower gradient off by {:e}",
            self.grad_in_y
        );
        assert!(self.hvp < 1e-6, "{what}: H·v off by {:e}", self.hvp);
        assert!(self.jvp < 1e-6, "{what}: J·v off by {:e}", self.jvp);
        assert!(
            self.symmetry < 1e-10,
            "{what}: ⟨u,Hv⟩ ≠ ⟨v,Hu⟩ by {:e}",
            self.symmetry
        );
        assert!(
            self.hvp_norm > 1e-8 && self.jvp_norm > 1e-12,
            "{what}: trivial products {self:?}"
        );
    }
}

/// Runs every check on one lower batch of `oracles`' problem at (x, y), with a central-difference
/// step of 1e-7 along unit directions.
pub fn check_second_order<P: BilevelProblem<f64>>(
    oracles: &mut Oracles<f64, P>,
    x: &P::X,
    y: &P::Y,
) -> Checks {
    check_second_order_with_step(oracles, x, y, 1e-7)
}

/// [`check_second_order`] with another finite-difference step. Large models need a larger step:
/// with 1e-7 the rounding of sums over 10⁴-element tensors (the L2 term) reaches 1e-5 of the
/// cross product, while the truncation error at 1e-5 is below 1e-9.
pub fn check_second_order_with_step<P: BilevelProblem<f64>>(
    oracles: &mut Oracles<f64, P>,
    x: &P::X,
    y: &P::Y,
    eps: f64,
) -> Checks {
    let batch = oracles.lower_batch();
    // Unit directions, so the step is the distance moved: small enough not to cross a max-pool
    // kink, large enough for rounding to stay small.
    let unit = |seed| {
        let mut d = random_like(y, seed);
        d.scale(1.0 / d.norm());
        d
    };
    let (u, v) = (unit(11), unit(12));
    let autodiff = oracles.lower_grad(x, y, &batch).unwrap();
    let (_, in_y) = oracles.lower_grad_in_y(x, y, &batch).unwrap();
    let written = oracles
        .written_lower_grad_y(x, y, &batch)
        .expect("well-formed written gradient");
    let second = oracles
        .hvp_jvp(x, y, &v, &batch)
        .expect("second-order pass");
    let hu = oracles.hvp(x, y, &u, &batch).expect("second-order pass");

    let shifted = |o: &mut Oracles<f64, P>, s: f64| {
        let mut ys = y.clone();
        ys.add_scaled(s, &v);
        o.lower_grad(x, &ys, &batch).unwrap()
    };
    let (plus, minus) = (shifted(oracles, eps), shifted(oracles, -eps));
    let fd = |p: Vec<f64>, m: Vec<f64>| -> Vec<f64> {
        p.iter()
            .zip(&m)
            .map(|(a, b)| (a - b) / (2.0 * eps))
            .collect()
    };
    let fd_hv = fd(flat(&plus.dy), flat(&minus.dy));
    let fd_jv = fd(flat(&plus.dx), flat(&minus.dx));
    let u_hv = u.dot(&second.hvp);
    let v_hu = v.dot(&hu);
    Checks {
        grad: rel_err(&flat(&written), &flat(&autodiff.dy)),
        grad_in_y: rel_err(&flat(&in_y), &flat(&autodiff.dy)),
        hvp: rel_err(&flat(&second.hvp), &fd_hv),
        jvp: rel_err(&flat(&second.jvp), &fd_jv),
        symmetry: (u_hv - v_hu).abs() / (u_hv.abs() + 1e-300),
        hvp_norm: second.hvp.norm(),
        jvp_norm: second.jvp.norm(),
    }
}

/// Every pass of `sharded` (split over `threads` shards) against the same pass of `serial` (the
/// same problem, unsharded) on the same batches: values and gradients to 1e-12 relative, the
/// same counts; then the finite-difference checks on the sharded oracles.
pub fn check_sharded<P>(serial: P, sharded: P, x: &P::X, y: &P::Y, threads: usize, what: &str)
where
    P: ShardedProblem<f64> + Sync,
    P::X: Send + Sync,
    P::Y: Send + Sync,
    P::UpperBatch: Sync,
    P::LowerBatch: Sync,
{
    let mut a = Oracles::new(serial, 13);
    let mut b = Oracles::sharded(sharded, 13, threads).expect("worker threads");
    // Lower first: a meta-learning upper batch reuses the lower batch's tasks.
    let (lower_a, lower_b) = (a.lower_batch(), b.lower_batch());
    let (upper_a, upper_b) = (a.upper_batch(), b.upper_batch());
    let v = random_like(y, 21);
    let close = |p: &[f64], q: &[f64], name: &str| {
        let e = rel_err(p, q);
        assert!(e < 1e-12, "{what}, {threads} shards: {name} off by {e:e}");
    };
    let (p, q) = (
        a.upper_grad(x, y, &upper_a).unwrap(),
        b.upper_grad(x, y, &upper_b).unwrap(),
    );
    close(&[p.value], &[q.value], "F");
    close(&flat(&p.dx), &flat(&q.dx), "∇_x F");
    close(&flat(&p.dy), &flat(&q.dy), "∇_y F");
    let (p, q) = (
        a.lower_grad(x, y, &lower_a).unwrap(),
        b.lower_grad(x, y, &lower_b).unwrap(),
    );
    close(&[p.value], &[q.value], "G");
    close(&flat(&p.dx), &flat(&q.dx), "∇_x G");
    close(&flat(&p.dy), &flat(&q.dy), "∇_y G");
    let (p, q) = (
        a.lower_grad_in_y(x, y, &lower_a).unwrap(),
        b.lower_grad_in_y(x, y, &lower_b).unwrap(),
    );
    close(&[p.0], &[q.0], "G (y only)");
    close(&flat(&p.1), &flat(&q.1), "∇_y G (y only)");
    let p = a.hvp_jvp(x, y, &v, &lower_a).expect("second-order pass");
    let q = b.hvp_jvp(x, y, &v, &lower_b).expect("second-order pass");
    close(
        &flat(&p.written_grad_y),
        &flat(&q.written_grad_y),
        "written ∇_y G",
    );
    close(&flat(&p.hvp), &flat(&q.hvp), "H·v");
    close(&flat(&p.jvp), &flat(&q.jvp), "J·v");
    assert_eq!(a.counts(), b.counts(), "{what}: oracle counts");
    check_second_order(&mut b, x, y).assert_exact(what);
}

/// A dense model M (5 features → 3 classes, K tensors) in [`DenseProblem`] on 6 samples, with
/// a random x and M's seeded initialization.
pub fn dense_setup<M, const K: usize>() -> (DenseProblem<M, K, 6, 5, 3>, DenseX<K, 6>, M)
where
    M: BuildModule<Cpu, f64>,
{
    let dev = Cpu::seed_from_u64(3);
    let y = M::build(&dev);
    let x: DenseX<K, 6> = (
        dev.sample_normal::<Rank1<K>>() * 0.5 - 1.0,
        dev.sample_normal(),
    );
    let problem = DenseProblem {
        model: std::marker::PhantomData,
        seed: 5,
    };
    (problem, x, y)
}

/// [`check_second_order`] of [`dense_setup`].
pub fn dense_checks<M, const K: usize>() -> Checks
where
    M: Params<f64>
        + BuildModule<Cpu, f64>
        + WrittenLayer<f64, Activations<f64, 5>, Output = Activations<f64, 3>>,
{
    let (problem, x, y) = dense_setup::<M, K>();
    check_second_order(&mut Oracles::new(problem, 0), &x, &y)
}

/// [`dense_checks`] of M, asserted exact.
pub fn assert_dense_exact<M, const K: usize>(what: &str)
where
    M: Params<f64>
        + BuildModule<Cpu, f64>
        + WrittenLayer<f64, Activations<f64, 5>, Output = Activations<f64, 3>>,
{
    let checks = dense_checks::<M, K>();
    println!("{what}: {checks:?}");
    checks.assert_exact(what);
}

/// A broken written gradient is caught twice: the oracles' check on first use refuses the
/// second-order pass naming H·v, and, with that check off, the gradient is right while the
/// finite-difference check sees H·v wrong.
pub fn assert_caught<P: BilevelProblem<f64>>(problem: P, x: &P::X, y: &P::Y, what: &str) {
    let mut oracles = Oracles::new(problem, 0);
    let batch = oracles.lower_batch();
    let refused = oracles.hvp_jvp(x, y, &random_like(y, 1), &batch).err();
    assert!(
        refused
            .as_ref()
            .is_some_and(|e| e.to_string().contains("HvpWrong")),
        "{what}: the first-use check must refuse it: {refused:?}"
    );
    oracles.check_on_first_use(false);
    let checks = check_second_order(&mut oracles, x, y);
    println!("broken {what}: {checks:?}");
    assert!(
        checks.grad < 1e-10,
        "{what}: the gradient is right {checks:?}"
    );
    assert!(checks.hvp > 1e-4, "{what}: H·v must be caught {checks:?}");
}

/// A fixed batch of dense inputs.
pub struct DenseBatch<const F: usize, const C: usize> {
    pub input: Tensor<(usize, Const<F>), f64, Cpu>,
    pub targets: Tensor<(usize, Const<C>), f64, Cpu>,
    pub ids: Tensor<(usize,), usize, Cpu>,
}
impl<const F: usize, const C: usize> Batch for DenseBatch<F, C> {
    fn size(&self) -> usize {
        self.input.shape().0
    }
}

/// Tests a dense model M (features F → C classes) alone: x = (one log L2 coefficient per tensor
/// of M, one weight logit per sample), `g = mean σ(λ_i) CE_i + ½ Σ_k exp(x_k)‖y_k‖²`.
pub struct DenseProblem<M, const K: usize, const B: usize, const F: usize, const C: usize> {
    pub model: std::marker::PhantomData<M>,
    pub seed: u64,
}

impl<M, const K: usize, const B: usize, const F: usize, const C: usize>
    DenseProblem<M, K, B, F, C>
{
    fn batch(&self) -> DenseBatch<F, C> {
        let dev = Cpu::seed_from_u64(self.seed);
        let labels: Vec<usize> = (0..B).map(|i| (i * 7 + 1) % C).collect();
        DenseBatch {
            input: dev.sample_normal_like(&(B, Const::<F>)),
            targets: bilevel_models::loss::one_hot(&labels),
            ids: dev.tensor_from_vec((0..B).collect(), (B,)),
        }
    }
}

pub type DenseX<const K: usize, const B: usize> =
    (Tensor<Rank1<K>, f64, Cpu>, Tensor<Rank1<B>, f64, Cpu>);

impl<M, const K: usize, const B: usize, const F: usize, const C: usize> BilevelProblem<f64>
    for DenseProblem<M, K, B, F, C>
where
    M: Params<f64> + WrittenLayer<f64, Activations<f64, F>, Output = Activations<f64, C>>,
{
    type X = DenseX<K, B>;
    type Y = M;
    type UpperBatch = DenseBatch<F, C>;
    type LowerBatch = DenseBatch<F, C>;
    fn sample_upper(&mut self, _: &mut SampleRng) -> DenseBatch<F, C> {
        self.batch()
    }
    fn sample_lower(&mut self, _: &mut SampleRng) -> DenseBatch<F, C> {
        self.batch()
    }
    fn upper_loss(&self, _: &Self::X, y: &M, b: &DenseBatch<F, C>) -> Taped<Rank0, f64> {
        loss(y, b.input.retaped::<Tp<f64>>(), &b.targets, None)
    }
    fn lower_loss(&self, x: &Self::X, y: &M, b: &DenseBatch<F, C>) -> Taped<Rank0, f64> {
        let w = x.1.retaped::<Tp<f64>>().gather(b.ids.clone()).sigmoid();
        loss(y, b.input.retaped::<Tp<f64>>(), &b.targets, Some(w)) + l2_penalty(&x.0, y)
    }
    fn write_lower_grad_y(
        &self,
        x: &Self::X,
        y: &M,
        b: &DenseBatch<F, C>,
        grads: &mut WrittenGrad<f64>,
    ) {
        let w = x.1.retaped::<Tp<f64>>().gather(b.ids.clone()).sigmoid();
        add_loss_gradient(y, b.input.retaped::<Tp<f64>>(), &b.targets, Some(w), grads);
        add_l2_gradient(&x.0, y, grads);
    }
}

/// The 6 rows of a dense batch as 3 sequences of 2 steps.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fold;
impl ZeroSizedModule for Fold {}

impl<const N: usize> WrittenLayer<f64, Activations<f64, N>> for Fold {
    type Output = Steps<f64, N>;
    type Saved = ();
    fn forward(&self, input: Activations<f64, N>) -> (Steps<f64, N>, ()) {
        let rows = input.shape().0;
        (input.reshape_like(&(rows / 2, 2, Const::<N>)), ())
    }
    fn backward(
        &self,
        _: (),
        grad_output: Steps<f64, N>,
        grads: &mut WrittenGrad<f64>,
        want_input: bool,
    ) -> Option<Activations<f64, N>> {
        let (b, s, _) = *grad_output.shape();
        let grad = grad_output.reshape_like(&(b * s, Const::<N>));
        if want_input {
            Some(grad)
        } else {
            grads.keep_tape(grad);
            None
        }
    }
}

/// Back from (batch, steps, N) to its rows.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unfold;
impl ZeroSizedModule for Unfold {}

impl<const N: usize> WrittenLayer<f64, Steps<f64, N>> for Unfold {
    type Output = Activations<f64, N>;
    type Saved = usize;
    fn forward(&self, input: Steps<f64, N>) -> (Activations<f64, N>, usize) {
        let (b, s, _) = *input.shape();
        (input.reshape_like(&(b * s, Const::<N>)), s)
    }
    fn backward(
        &self,
        steps: usize,
        grad_output: Activations<f64, N>,
        _: &mut WrittenGrad<f64>,
        _: bool,
    ) -> Option<Steps<f64, N>> {
        let rows = grad_output.shape().0;
        Some(grad_output.reshape_like(&(rows / steps, steps, Const::<N>)))
    }
}

/// Token ids of a test batch: 6 ids, or 6 sequences of 3.
pub trait TokenInput: Sized {
    fn sample(dev: &Cpu) -> Self;
}

impl TokenInput for Tokens {
    fn sample(_: &Cpu) -> Self {
        Cpu::default().tensor_from_vec(vec![3, 0, 7, 3, 9, 1], (6,))
    }
}

impl TokenInput for TokenSteps {
    fn sample(_: &Cpu) -> Self {
        let ids = vec![3, 0, 7, 3, 9, 1, 2, 2, 8, 5, 0, 6, 4, 9, 3, 1, 1, 7];
        Cpu::default().tensor_from_vec(ids, (6, 3))
    }
}

impl TokenInput for bilevel_models::embedding::PaddedTokens {
    /// 6 sequences padded to 3 steps, of lengths 3, 1, 2, 3, 2, 1 (padding id 0).
    fn sample(dev: &Cpu) -> Self {
        let ids = vec![3, 0, 0, 9, 0, 0, 2, 2, 0, 5, 0, 6, 4, 9, 0, 1, 0, 0];
        let ids = TokenSteps::sample(dev)
            .device()
            .tensor_from_vec(ids, (6, 3));
        Self::new(ids, vec![3, 1, 2, 3, 2, 1]).expect("valid lengths")
    }
}

/// [`DenseProblem`]'s `g` on token ids: x = (K log L2 coefficients, 6 weight logits), a model M
/// from ids of type I to 6 rows of 3 class scores.
pub struct TokenProblem<M, I, const K: usize> {
    pub model: std::marker::PhantomData<(M, I)>,
}

pub struct TokenBatch<I> {
    pub ids: I,
    pub targets: Tensor<(usize, Const<3>), f64, Cpu>,
    pub rows: Tensor<(usize,), usize, Cpu>,
}
impl<I> Batch for TokenBatch<I> {
    fn size(&self) -> usize {
        6
    }
}

impl<M, I: TokenInput + Clone, const K: usize> TokenProblem<M, I, K> {
    fn batch(&self) -> TokenBatch<I> {
        let dev = Cpu::default();
        let labels: Vec<usize> = (0..6).map(|i| (i * 7 + 1) % 3).collect();
        TokenBatch {
            ids: I::sample(&dev),
            targets: bilevel_models::loss::one_hot(&labels),
            rows: dev.tensor_from_vec((0..6).collect(), (6,)),
        }
    }
}

impl<M, I: TokenInput + Clone, const K: usize> BilevelProblem<f64> for TokenProblem<M, I, K>
where
    M: Params<f64> + WrittenLayer<f64, I, Output = Activations<f64, 3>>,
{
    type X = DenseX<K, 6>;
    type Y = M;
    type UpperBatch = TokenBatch<I>;
    type LowerBatch = TokenBatch<I>;
    fn sample_upper(&mut self, _: &mut SampleRng) -> TokenBatch<I> {
        self.batch()
    }
    fn sample_lower(&mut self, _: &mut SampleRng) -> TokenBatch<I> {
        self.batch()
    }
    fn upper_loss(&self, _: &Self::X, y: &M, b: &TokenBatch<I>) -> Taped<Rank0, f64> {
        loss(y, b.ids.clone(), &b.targets, None)
    }
    fn lower_loss(&self, x: &Self::X, y: &M, b: &TokenBatch<I>) -> Taped<Rank0, f64> {
        let w = x.1.retaped::<Tp<f64>>().gather(b.rows.clone()).sigmoid();
        loss(y, b.ids.clone(), &b.targets, Some(w)) + l2_penalty(&x.0, y)
    }
    fn write_lower_grad_y(
        &self,
        x: &Self::X,
        y: &M,
        b: &TokenBatch<I>,
        grads: &mut WrittenGrad<f64>,
    ) {
        let w = x.1.retaped::<Tp<f64>>().gather(b.rows.clone()).sigmoid();
        add_loss_gradient(y, b.ids.clone(), &b.targets, Some(w), grads);
        add_l2_gradient(&x.0, y, grads);
    }
}

/// A token model M in [`TokenProblem`], with a random x and M's seeded initialization.
pub fn token_setup<M, I, const K: usize>() -> (TokenProblem<M, I, K>, DenseX<K, 6>, M)
where
    M: BuildModule<Cpu, f64>,
{
    let dev = Cpu::seed_from_u64(3);
    let y = M::build(&dev);
    let x: DenseX<K, 6> = (
        dev.sample_normal::<Rank1<K>>() * 0.5 - 1.0,
        dev.sample_normal(),
    );
    let problem = TokenProblem {
        model: std::marker::PhantomData,
    };
    (problem, x, y)
}

/// [`check_second_order`] of [`token_setup`].
pub fn token_checks<M, I: TokenInput + Clone, const K: usize>() -> Checks
where
    M: Params<f64> + BuildModule<Cpu, f64> + WrittenLayer<f64, I, Output = Activations<f64, 3>>,
{
    let (problem, x, y) = token_setup::<M, I, K>();
    check_second_order(&mut Oracles::new(problem, 0), &x, &y)
}
