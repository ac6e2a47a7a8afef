//! One-step reference tests: each method's first three iterations on a small noisy quadratic,
//! recomputed here by plain f64 arithmetic on the quadratic's matrices from the paper's rule —
//! written without the library's shared pieces (`steps`, `neumann`, `variance`, schedules) — and
//! compared with the library's iterates and memories to 1e-12.
//!
//! The problem records every batch the oracles hand out, in order; the hand computation takes
//! them in the order its rule needs them. With noise at both levels every batch differs, so a
//! product fed by the wrong batch, an update made in the wrong order (z_t against z_{t+1},
//! gradients before or after the y step), a wrong schedule or a wrong weight shows as a
//! difference of order one, not 1e-12. Initial memories are read from the library only where the
//! method draws them at random (BO-REP's Xavier z₀); every other starts where its paper says.

mod common;

use std::sync::{Arc, Mutex};

use bilevel_optim::methods::anil::AnilConfig;
use bilevel_optim::methods::borep::{BoRepConfig, InitRefinement, ZInit};
use bilevel_optim::methods::f2sa::{F2saConfig, XGradients};
use bilevel_optim::methods::ma_soba::MaSobaConfig;
use bilevel_optim::methods::maml::MamlConfig;
use bilevel_optim::methods::saba::SabaConfig;
use bilevel_optim::methods::soba::SobaConfig;
use bilevel_optim::methods::MethodConfig;
use bilevel_optim::optimizer::MethodState;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::problem::{BilevelProblem, SampleRng, Taped};
use bilevel_optim::problems::quadratic::{QuadLowerBatch, QuadUpperBatch};
use bilevel_optim::problems::{as_f64, Quadratic, QuadraticConfig};
use bilevel_optim::schedule::PowerSchedule;
use bilevel_optim::written_grad::WrittenGrad;
use common::rel_err;
use dfdx::prelude::*;
use rand::SeedableRng;

const DX: usize = 3;
const DY: usize = 4;
type Quad = Quadratic<f64, DX, DY>;
type Vx = Tensor<Rank1<DX>, f64, Cpu>;
type Vy = Tensor<Rank1<DY>, f64, Cpu>;
type Vector = Vec<f64>;
type Mat = Vec<Vec<f64>>;

// ---------------------------------------------------------------------------------------------
// The problem that records its batches.

/// A lower batch as the hand computation sees it: H, C, b of `∇_y G = H y + C x + b`.
#[derive(Clone, Debug)]
struct Lower {
    h: Mat,
    c: Mat,
    b: Vector,
}

/// An upper batch: the noise added to `∇_x F` and `∇_y F`.
#[derive(Clone, Debug)]
struct Upper {
    nx: Vector,
    ny: Vector,
}

#[derive(Clone, Debug)]
enum Draw {
    Upper(Upper),
    Lower(Lower),
    /// A fixed batch of the finite split, with its index.
    LowerPart(usize, Lower),
    UpperPart(usize, Upper),
    /// The end of an iteration (pushed by the harness).
    EndOfIteration,
}

fn mat(m: &bilevel_optim::linalg::Matrix) -> Mat {
    (0..m.rows)
        .map(|i| (0..m.cols).map(|j| m.at(i, j)).collect())
        .collect()
}

fn lower_of(b: &QuadLowerBatch<f64, DX, DY>) -> Lower {
    Lower {
        h: mat(&b.h),
        c: mat(&b.c),
        b: b.b.clone(),
    }
}

fn upper_of(b: &QuadUpperBatch<f64, DX, DY>) -> Upper {
    Upper {
        nx: b.noise_x.clone(),
        ny: b.noise_y.clone(),
    }
}

/// The noisy quadratic, optionally with a finite split into fixed batches of unequal shares
/// (for SABA), recording every batch it hands out.
struct Recorded {
    inner: Quad,
    log: Arc<Mutex<Vec<Draw>>>,
    /// Shares of the fixed lower and upper batches (none: no finite split).
    lower_shares: Option<Vec<f64>>,
    upper_shares: Option<Vec<f64>>,
}

impl Recorded {
    fn push(&self, d: Draw) {
        self.log.lock().unwrap().push(d);
    }

    /// Fixed batch k: always the same draw of the noise.
    fn part_rng(level: u64, k: usize) -> SampleRng {
        SampleRng::seed_from_u64(1000 * level + k as u64)
    }
}

impl BilevelProblem<f64> for Recorded {
    type X = Vx;
    type Y = Vy;
    type UpperBatch = QuadUpperBatch<f64, DX, DY>;
    type LowerBatch = QuadLowerBatch<f64, DX, DY>;

    fn sample_upper(&mut self, rng: &mut SampleRng) -> Self::UpperBatch {
        let b = self.inner.sample_upper(rng);
        self.push(Draw::Upper(upper_of(&b)));
        b
    }

    fn sample_lower(&mut self, rng: &mut SampleRng) -> Self::LowerBatch {
        let b = self.inner.sample_lower(rng);
        self.push(Draw::Lower(lower_of(&b)));
        b
    }

    fn lower_parts(&self) -> Option<usize> {
        self.lower_shares.as_ref().map(Vec::len)
    }

    fn lower_part(&mut self, k: usize) -> Option<Self::LowerBatch> {
        self.lower_shares.as_ref()?;
        let b = self.inner.sample_lower(&mut Self::part_rng(1, k));
        self.push(Draw::LowerPart(k, lower_of(&b)));
        Some(b)
    }

    fn lower_part_share(&self, k: usize) -> f64 {
        self.lower_shares.as_ref().map_or(1.0, |s| s[k])
    }

    fn upper_parts(&self) -> Option<usize> {
        self.upper_shares.as_ref().map(Vec::len)
    }

    fn upper_part(&mut self, k: usize) -> Option<Self::UpperBatch> {
        self.upper_shares.as_ref()?;
        let b = self.inner.sample_upper(&mut Self::part_rng(2, k));
        self.push(Draw::UpperPart(k, upper_of(&b)));
        Some(b)
    }

    fn upper_part_share(&self, k: usize) -> f64 {
        self.upper_shares.as_ref().map_or(1.0, |s| s[k])
    }

    fn upper_loss(&self, x: &Vx, y: &Vy, batch: &Self::UpperBatch) -> Taped<Rank0, f64> {
        self.inner.upper_loss(x, y, batch)
    }

    fn lower_loss(&self, x: &Vx, y: &Vy, batch: &Self::LowerBatch) -> Taped<Rank0, f64> {
        self.inner.lower_loss(x, y, batch)
    }

    fn project_x(&self, x: &mut Vx) {
        self.inner.project_x(x)
    }

    fn write_lower_grad_y(
        &self,
        x: &Vx,
        y: &Vy,
        batch: &Self::LowerBatch,
        grad: &mut WrittenGrad<f64>,
    ) {
        self.inner.write_lower_grad_y(x, y, batch, grad)
    }
}

// ---------------------------------------------------------------------------------------------
// Plain f64 arithmetic on the quadratic.

fn mv(m: &Mat, v: &[f64]) -> Vector {
    m.iter()
        .map(|row| row.iter().zip(v).map(|(a, b)| a * b).sum())
        .collect()
}

/// mᵀ v.
fn mtv(m: &Mat, v: &[f64]) -> Vector {
    (0..m[0].len())
        .map(|j| m.iter().zip(v).map(|(row, vi)| row[j] * vi).sum())
        .collect()
}

/// Σ_k c_k v_k.
fn comb(terms: &[(f64, &[f64])]) -> Vector {
    let mut out = vec![0.0; terms[0].1.len()];
    for (c, v) in terms {
        for (o, x) in out.iter_mut().zip(v.iter()) {
            *o += c * x;
        }
    }
    out
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

/// `v` projected on the ball of radius `r` around 0.
fn onto_ball(v: Vector, r: f64) -> Vector {
    let n = norm(&v);
    if n > r {
        comb(&[(r / n, &v)])
    } else {
        v
    }
}

/// The quadratic's fixed matrices: `F = ½yᵀPy + xᵀRy + ½xᵀQx + pᵀy + qᵀx` plus an upper batch's
/// noise terms; `G = ½yᵀH y + yᵀC x + bᵀy` with a lower batch's H, C, b.
struct Calculus {
    p: Mat,
    r: Mat,
    q: Mat,
    pv: Vector,
    qv: Vector,
}

impl Calculus {
    fn of(problem: &Quad) -> Self {
        Self {
            p: mat(&problem.p),
            r: mat(&problem.r),
            q: mat(&problem.q),
            pv: problem.pv.clone(),
            qv: problem.qv.clone(),
        }
    }

    /// `∇_x F = Qx + Ry + q + n_x`.
    fn fx(&self, x: &[f64], y: &[f64], u: &Upper) -> Vector {
        comb(&[
            (1.0, &mv(&self.q, x)),
            (1.0, &mv(&self.r, y)),
            (1.0, &self.qv),
            (1.0, &u.nx),
        ])
    }

    /// `∇_y F = Py + Rᵀx + p + n_y`.
    fn fy(&self, x: &[f64], y: &[f64], u: &Upper) -> Vector {
        comb(&[
            (1.0, &mv(&self.p, y)),
            (1.0, &mtv(&self.r, x)),
            (1.0, &self.pv),
            (1.0, &u.ny),
        ])
    }
}

/// `∇_y G = H y + C x + b`.
fn gy(x: &[f64], y: &[f64], l: &Lower) -> Vector {
    comb(&[(1.0, &mv(&l.h, y)), (1.0, &mv(&l.c, x)), (1.0, &l.b)])
}

/// `∇_x G = Cᵀ y`.
fn gx(y: &[f64], l: &Lower) -> Vector {
    mtv(&l.c, y)
}

/// `H v`.
fn hv(v: &[f64], l: &Lower) -> Vector {
    mv(&l.h, v)
}

/// `J v = ∇²_xy G v = Cᵀ v`.
fn jv(v: &[f64], l: &Lower) -> Vector {
    mtv(&l.c, v)
}

/// `steps` SGD steps on y, each on the next lower batch: `y ← y − γ ∇_y G(x, y; ζ)`.
fn sgd_steps(d: &mut Draws, x: &[f64], y: &mut Vector, steps: usize, gamma: f64) {
    for _ in 0..steps {
        let zeta = d.lower();
        *y = comb(&[(1.0, y), (-gamma, &gy(x, y, &zeta))]);
    }
}

/// The lower batches drawn until the end of the iteration: a randomized series's Hessian
/// batches (as many as the q drawn) and, last, the cross batch.
fn series_batches(d: &mut Draws) -> (Vec<Lower>, Lower) {
    let mut lowers = Vec::new();
    loop {
        match d.next() {
            Draw::Lower(l) => lowers.push(l),
            Draw::EndOfIteration => break,
            other => panic!("unexpected draw {other:?}"),
        }
    }
    let cross = lowers.pop().expect("the cross batch");
    (lowers, cross)
}

/// `a/(t+1)^b`, the papers' step schedules.
fn decay(a: f64, b: f64, t: usize) -> f64 {
    a / ((t + 1) as f64).powf(b)
}

/// The batches the library drew, handed out in order to the hand computation.
struct Draws {
    log: Vec<Draw>,
    at: usize,
}

impl Draws {
    fn next(&mut self) -> Draw {
        let d = self.log.get(self.at).cloned().unwrap_or_else(|| {
            panic!(
                "the rule needs batch {} but the library drew fewer",
                self.at
            )
        });
        self.at += 1;
        d
    }

    fn upper(&mut self) -> Upper {
        match self.next() {
            Draw::Upper(u) => u,
            other => panic!(
                "draw {}: the rule needs an upper batch, the library drew {other:?}",
                self.at - 1
            ),
        }
    }

    fn lower(&mut self) -> Lower {
        match self.next() {
            Draw::Lower(l) => l,
            other => panic!(
                "draw {}: the rule needs a lower batch, the library drew {other:?}",
                self.at - 1
            ),
        }
    }

    fn lower_part(&mut self) -> (usize, Lower) {
        match self.next() {
            Draw::LowerPart(k, l) => (k, l),
            other => panic!(
                "draw {}: the rule needs a fixed lower batch, the library drew {other:?}",
                self.at - 1
            ),
        }
    }

    fn upper_part(&mut self) -> (usize, Upper) {
        match self.next() {
            Draw::UpperPart(k, u) => (k, u),
            other => panic!(
                "draw {}: the rule needs a fixed upper batch, the library drew {other:?}",
                self.at - 1
            ),
        }
    }

    fn end_of_iteration(&mut self) {
        match self.next() {
            Draw::EndOfIteration => {}
            other => panic!(
                "draw {}: the rule's iteration is over, the library drew {other:?}",
                self.at - 1
            ),
        }
    }

    fn finished(&self) {
        assert_eq!(
            self.at,
            self.log.len(),
            "the library drew batches the rule never used"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The harness.

/// What is compared after each iteration: x, y and the method's named memories.
#[derive(Debug, Clone)]
struct Iterate {
    x: Vector,
    y: Vector,
    memories: Vec<(&'static str, Vector)>,
}

const ITERATIONS: usize = 3;
const TOLERANCE: f64 = 1e-12;

fn x0() -> Vector {
    vec![0.3, -0.2, 0.5]
}

fn y0() -> Vector {
    vec![0.1, 0.2, -0.3, 0.4]
}

fn quadratic(x_constraint: Option<bilevel_optim::constraint::Constraint>) -> Quad {
    Quad::new(QuadraticConfig {
        grad_noise: 0.3,
        hessian_noise: 0.3,
        upper_noise: 0.3,
        batch_size: 2,
        seed: 11,
        x_constraint,
        ..Default::default()
    })
}

/// The library's run: three iterations from (x0, y0); the iterates (with the memories named in
/// `memories`, read from the method's saved state), the batches drawn, and the initial state.
fn library(
    config: &MethodConfig,
    problem: Recorded,
    memories: &[&'static str],
) -> (Vec<Iterate>, Draws, MethodState) {
    let log = problem.log.clone();
    let dev = Cpu::default();
    let mut x: Vx = dev.tensor([x0()[0], x0()[1], x0()[2]]);
    let mut y: Vy = dev.tensor([y0()[0], y0()[1], y0()[2], y0()[3]]);
    let mut method = config.build(&x, &y, &problem).unwrap();
    let initial = method.state();
    let mut oracles = Oracles::new(problem, 5);
    oracles.check_on_first_use(false);
    let mut out = Vec::new();
    for _ in 0..ITERATIONS {
        method.step(&mut oracles, &mut x, &mut y).unwrap();
        log.lock().unwrap().push(Draw::EndOfIteration);
        let state = method.state();
        out.push(Iterate {
            x: as_f64(&x),
            y: as_f64(&y),
            memories: memories
                .iter()
                .map(|m| (*m, state.vectors[*m].clone()))
                .collect(),
        });
    }
    let draws = Draws {
        log: log.lock().unwrap().clone(),
        at: 0,
    };
    (out, draws, initial)
}

fn recorded(quad: Quad) -> Recorded {
    Recorded {
        inner: quad,
        log: Arc::new(Mutex::new(Vec::new())),
        lower_shares: None,
        upper_shares: None,
    }
}

fn compare(name: &str, library: &[Iterate], reference: &[Iterate]) {
    assert_eq!(library.len(), reference.len());
    for (t, (a, b)) in library.iter().zip(reference).enumerate() {
        let mut pairs = vec![("x", &a.x, &b.x), ("y", &a.y, &b.y)];
        for ((name_a, va), (name_b, vb)) in a.memories.iter().zip(&b.memories) {
            assert_eq!(name_a, name_b);
            pairs.push((name_a, va, vb));
        }
        for (what, got, want) in pairs {
            let e = rel_err(got, want);
            assert!(
                e < TOLERANCE,
                "{name}, iteration {t}, {what}: library {got:?}, rule {want:?} (relative error {e:.1e})"
            );
        }
    }
}

/// Runs `config` in the library and `rule` by hand on the same batches, and compares.
fn check(
    name: &str,
    config: MethodConfig,
    problem: Recorded,
    memories: &[&'static str],
    rule: impl FnOnce(&mut Draws, &Calculus, &MethodState) -> Vec<Iterate>,
) {
    let calculus = Calculus::of(&problem.inner);
    let (got, mut draws, initial) = library(&config, problem, memories);
    let want = rule(&mut draws, &calculus, &initial);
    draws.finished();
    compare(name, &got, &want);
}

fn constant(a: f64) -> PowerSchedule {
    PowerSchedule {
        initial: a,
        exponent: 0.0,
    }
}

fn schedule(a: f64, b: f64) -> PowerSchedule {
    PowerSchedule {
        initial: a,
        exponent: b,
    }
}

fn iterate(x: &[f64], y: &[f64], memories: &[(&'static str, &Vector)]) -> Iterate {
    Iterate {
        x: x.to_vec(),
        y: y.to_vec(),
        memories: memories.iter().map(|(n, v)| (*n, (*v).clone())).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// SOBA and MA-SOBA.

/// SOBA (Dagréou et al. 2022, Algorithm 1): one ξ and one ζ per iteration, every direction at
/// (x_t, y_t, z_t): y ← y − ρ_t ∇_y G; z ← z − ρ_t (H z − ∇_y F); x ← x − γ_t (∇_x F − J z_t),
/// ρ_t = ρ/(t+1)^{2/5}, γ_t = γ/(t+1)^{3/5}.
#[test]
fn soba_follows_its_rule() {
    let config = MethodConfig::new(SobaConfig {
        rho: schedule(0.3, 0.4),
        gamma: schedule(0.2, 0.6),
    });
    check(
        "soba",
        config,
        recorded(quadratic(None)),
        &["z"],
        |d, f, _| {
            let (mut x, mut y, mut z) = (x0(), y0(), vec![0.0; DY]);
            let mut out = Vec::new();
            for t in 0..ITERATIONS {
                let (xi, zeta) = (d.upper(), d.lower());
                d.end_of_iteration();
                let (rho, gamma) = (decay(0.3, 0.4, t), decay(0.2, 0.6, t));
                let y_dir = gy(&x, &y, &zeta);
                let z_dir = comb(&[(1.0, &hv(&z, &zeta)), (-1.0, &f.fy(&x, &y, &xi))]);
                let x_dir = comb(&[(1.0, &f.fx(&x, &y, &xi)), (-1.0, &jv(&z, &zeta))]);
                y = comb(&[(1.0, &y), (-rho, &y_dir)]);
                z = comb(&[(1.0, &z), (-rho, &z_dir)]);
                x = comb(&[(1.0, &x), (-gamma, &x_dir)]);
                out.push(iterate(&x, &y, &[("z", &z)]));
            }
            out
        },
    );
}

/// MA-SOBA (Chen, Xu, Zhang 2023): SOBA's y and z steps with their own schedules, z projected
/// on the ball of radius ρ, and x moved along the moving average m ← (1 − θ) m + θ (∇_x F − J z_t).
#[test]
fn ma_soba_follows_its_rule() {
    let config = MethodConfig::new(MaSobaConfig {
        alpha: schedule(0.2, 0.5),
        beta: schedule(0.3, 0.4),
        gamma: constant(0.25),
        theta: 0.3,
        z_radius: Some(0.05),
    });
    check(
        "ma-soba",
        config,
        recorded(quadratic(None)),
        &["z", "m"],
        |d, f, _| {
            let (mut x, mut y, mut z, mut m) = (x0(), y0(), vec![0.0; DY], vec![0.0; DX]);
            let mut out = Vec::new();
            for t in 0..ITERATIONS {
                let (xi, zeta) = (d.upper(), d.lower());
                d.end_of_iteration();
                let h = comb(&[(1.0, &f.fx(&x, &y, &xi)), (-1.0, &jv(&z, &zeta))]);
                let z_dir = comb(&[(1.0, &hv(&z, &zeta)), (-1.0, &f.fy(&x, &y, &xi))]);
                y = comb(&[(1.0, &y), (-decay(0.3, 0.4, t), &gy(&x, &y, &zeta))]);
                z = comb(&[(1.0, &z), (-0.25, &z_dir)]);
                z = onto_ball(z, 0.05);
                m = comb(&[(0.7, &m), (0.3, &h)]);
                x = comb(&[(1.0, &x), (-decay(0.2, 0.5, t), &m)]);
                out.push(iterate(&x, &y, &[("z", &z), ("m", &m)]));
            }
            out
        },
    );
}

// ---------------------------------------------------------------------------------------------
// SABA.

/// The recorded quadratic split into fixed batches of uneven shares: 0.5, 0.3, 0.2 of the lower
/// data and 0.6, 0.4 of the upper (SABA, SRBA, SPABA).
fn uneven_split() -> (Recorded, (Vec<f64>, Vec<f64>)) {
    let (lower_shares, upper_shares) = (vec![0.5, 0.3, 0.2], vec![0.6, 0.4]);
    let mut problem = recorded(quadratic(None));
    problem.lower_shares = Some(lower_shares.clone());
    problem.upper_shares = Some(upper_shares.clone());
    (problem, (lower_shares, upper_shares))
}

/// SABA (Dagréou et al. 2022): SOBA's five directions replaced by SAGA estimates over fixed
/// batches drawn uniformly, memories starting at zero. With batches of unequal shares s_k (here
/// 0.5, 0.3, 0.2 of the lower data; 0.6, 0.4 of the upper), the estimate of batch k is
/// `K s_k (g_k − memory_k) + Σ_j s_j memory_j`: unbiased for the weighted objective.
#[test]
fn saba_follows_its_rule_with_uneven_batches() {
    let (problem, (lower_shares, upper_shares)) = uneven_split();
    let config = MethodConfig::new(SabaConfig {
        rho: 0.3,
        gamma: 0.2,
    });
    check("saba", config, problem, &["z"], |d, f, _| {
        /// A SAGA table by hand.
        struct Table {
            memory: Vec<Vector>,
            shares: Vec<f64>,
        }
        impl Table {
            fn new(shares: &[f64], dim: usize) -> Self {
                Self {
                    memory: vec![vec![0.0; dim]; shares.len()],
                    shares: shares.to_vec(),
                }
            }
            fn estimate(&mut self, k: usize, fresh: &[f64]) -> Vector {
                let n = self.shares.len() as f64;
                let mut est = comb(&[
                    (n * self.shares[k], fresh),
                    (-n * self.shares[k], &self.memory[k]),
                ]);
                for (s, m) in self.shares.iter().zip(&self.memory) {
                    est = comb(&[(1.0, &est), (*s, m)]);
                }
                self.memory[k] = fresh.to_vec();
                est
            }
        }
        let (ls, us) = (&lower_shares, &upper_shares);
        let (mut gy_t, mut hz_t, mut jz_t) =
            (Table::new(ls, DY), Table::new(ls, DY), Table::new(ls, DX));
        let (mut fy_t, mut fx_t) = (Table::new(us, DY), Table::new(us, DX));
        let (mut x, mut y, mut z) = (x0(), y0(), vec![0.0; DY]);
        let mut out = Vec::new();
        for _ in 0..ITERATIONS {
            let (i, zeta) = d.lower_part();
            let (j, xi) = d.upper_part();
            d.end_of_iteration();
            let d_y = gy_t.estimate(i, &gy(&x, &y, &zeta));
            let d_z = comb(&[
                (1.0, &hz_t.estimate(i, &hv(&z, &zeta))),
                (-1.0, &fy_t.estimate(j, &f.fy(&x, &y, &xi))),
            ]);
            let d_x = comb(&[
                (1.0, &fx_t.estimate(j, &f.fx(&x, &y, &xi))),
                (-1.0, &jz_t.estimate(i, &jv(&z, &zeta))),
            ]);
            y = comb(&[(1.0, &y), (-0.3, &d_y)]);
            z = comb(&[(1.0, &z), (-0.3, &d_z)]);
            x = comb(&[(1.0, &x), (-0.2, &d_x)]);
            out.push(iterate(&x, &y, &[("z", &z)]));
        }
        out
    });
}

// ---------------------------------------------------------------------------------------------
// F2SA.

fn f2sa_config(x_gradients: XGradients) -> MethodConfig {
    MethodConfig::new(F2saConfig {
        eta: schedule(0.2, 0.5),
        gamma_y: 0.3,
        gamma_z: 0.25,
        lambda: 0.6,
        lambda_increment: 0.5,
        // Reached at the third iteration: the cap is exercised.
        lambda_max: 1.4,
        x_gradients,
    })
}

/// F2SA (Kwon et al. 2023, Algorithm 1 with one inner step): z and y steps on ζ, ξ at
/// (x_t, y_t, z_t), both y and x steps divided by max(λ, 1); the x step's gradients at the
/// updated y and z on fresh ξ', ζ' (one ζ' for both ∇_x G) — or, with
/// `x_gradients = "simultaneous"`, at (x_t, y_t, z_t) on ξ, ζ; λ ← min(λ + δ, λ_max). The
/// caller's y is the paper's z; the paper's y is the memory `y_lambda`.
#[test]
fn f2sa_follows_its_rule_with_its_lambda_schedule_and_cap() {
    for variant in [XGradients::Updated, XGradients::Simultaneous] {
        let name = format!("f2sa ({variant:?})");
        check(
            &name,
            f2sa_config(variant),
            recorded(quadratic(None)),
            &["y_lambda"],
            |d, f, _| {
                let (mut x, mut y, mut z) = (x0(), y0(), y0());
                let mut lambda: f64 = 0.6;
                let mut out = Vec::new();
                for t in 0..ITERATIONS {
                    let (xi, zeta) = (d.upper(), d.lower());
                    let divisor = lambda.max(1.0);
                    let z_next = comb(&[(1.0, &z), (-0.25, &gy(&x, &z, &zeta))]);
                    let y_dir = comb(&[(1.0, &f.fy(&x, &y, &xi)), (lambda, &gy(&x, &y, &zeta))]);
                    let y_next = comb(&[(1.0, &y), (-0.3 / divisor, &y_dir)]);
                    let x_dir = match variant {
                        XGradients::Updated => {
                            let (xi2, zeta2) = (d.upper(), d.lower());
                            comb(&[
                                (1.0, &f.fx(&x, &y_next, &xi2)),
                                (lambda, &gx(&y_next, &zeta2)),
                                (-lambda, &gx(&z_next, &zeta2)),
                            ])
                        }
                        XGradients::Simultaneous => comb(&[
                            (1.0, &f.fx(&x, &y, &xi)),
                            (lambda, &gx(&y, &zeta)),
                            (-lambda, &gx(&z, &zeta)),
                        ]),
                    };
                    d.end_of_iteration();
                    x = comb(&[(1.0, &x), (-decay(0.2, 0.5, t) / divisor, &x_dir)]);
                    (y, z) = (y_next, z_next);
                    lambda = (lambda + 0.5).min(1.4);
                    // The caller holds the paper's z; the paper's y is the memory.
                    out.push(iterate(&x, &z, &[("y_lambda", &y)]));
                }
                assert_eq!(lambda, 1.4, "the cap was reached");
                out
            },
        );
    }
}

// ---------------------------------------------------------------------------------------------
// BO-REP.

fn borep_config(variant: &str) -> BoRepConfig {
    BoRepConfig {
        eta: 0.2,
        eta_decay: 0.5,
        beta: 0.6,
        nu: 0.3,
        gamma: 0.25,
        period: 2,
        lower_steps: 2,
        z_radius: Some(0.08),
        z_init: ZInit::Xavier,
        init_refinement: InitRefinement::Sgd { steps: 3 },
        jvp_with_updated_z: variant == "updated z" || variant == "official",
        separate_jvp_batch: variant == "separate batch" || variant == "official",
        seed: 4,
    }
}

/// BO-REP (Hao, Gong, Liu 2024, Algorithm 1): at t = 0 the refinement (here 3 SGD steps, each on
/// a fresh batch), at t > 0 with t mod I = 0 N SGD steps; then ξ_t, ζ_t at the updated y:
/// z ← Π_{‖z‖≤ρ}(z − ν (H z − ∇_y F)); m ← β m + (1 − β)(∇_x F − J z_t), J on ζ_t;
/// x ← x − η_t m/‖m‖ with η_t = η/(t+1)^b. The official code's switches: J·z_{t+1}
/// (`jvp_with_updated_z`), J on a batch of its own drawn after the z step
/// (`separate_jvp_batch`), and both.
#[test]
fn borep_follows_its_rule_in_each_variant() {
    for variant in ["paper", "updated z", "separate batch", "official"] {
        let config = borep_config(variant);
        let name = format!("bo-rep ({variant})");
        check(
            &name,
            MethodConfig::new(config.clone()),
            recorded(quadratic(None)),
            &["z", "m"],
            |d, f, initial| {
                let (mut x, mut y) = (x0(), y0());
                // Xavier z₀ is drawn by the library; its value is the only thing taken from it.
                let mut z = initial.vectors["z"].clone();
                assert!(z.iter().any(|v| *v != 0.0), "Xavier z₀");
                let mut m = vec![0.0; DX];
                let mut out = Vec::new();
                for t in 0..ITERATIONS {
                    let steps = match t {
                        0 => 3,
                        t if t % 2 == 0 => 2,
                        _ => 0,
                    };
                    sgd_steps(d, &x, &mut y, steps, 0.25);
                    let (xi, zeta) = (d.upper(), d.lower());
                    let z_t = z.clone();
                    let residual = comb(&[(1.0, &hv(&z, &zeta)), (-1.0, &f.fy(&x, &y, &xi))]);
                    z = comb(&[(1.0, &z), (-0.3, &residual)]);
                    z = onto_ball(z, 0.08);
                    let v = if config.jvp_with_updated_z { &z } else { &z_t };
                    let jz = if config.separate_jvp_batch {
                        jv(v, &d.lower())
                    } else {
                        jv(v, &zeta)
                    };
                    d.end_of_iteration();
                    let h = comb(&[(1.0, &f.fx(&x, &y, &xi)), (-1.0, &jz)]);
                    m = comb(&[(0.6, &m), (0.4, &h)]);
                    x = comb(&[(1.0, &x), (-decay(0.2, 0.5, t) / norm(&m), &m)]);
                    out.push(iterate(&x, &y, &[("z", &z), ("m", &m)]));
                }
                out
            },
        );
    }
}

/// A box constraint on x: every method's x step is followed by the projection (here BO-REP's
/// normalized step and SOBA's plain one, with a box that clips the first steps).
#[test]
fn projections_follow_every_x_step() {
    use bilevel_optim::constraint::Constraint;
    let boxed = || {
        quadratic(Some(Constraint::Box {
            lower: 0.25,
            upper: 0.45,
        }))
    };
    let clip = |x: Vector| -> Vector { x.into_iter().map(|v| v.clamp(0.25, 0.45)).collect() };
    let config = MethodConfig::new(SobaConfig {
        rho: schedule(0.3, 0.4),
        gamma: schedule(0.2, 0.6),
    });
    check(
        "soba (box)",
        config,
        recorded(boxed()),
        &["z"],
        |d, f, _| {
            let (mut x, mut y, mut z) = (x0(), y0(), vec![0.0; DY]);
            let mut out = Vec::new();
            for t in 0..ITERATIONS {
                let (xi, zeta) = (d.upper(), d.lower());
                d.end_of_iteration();
                let (rho, gamma) = (decay(0.3, 0.4, t), decay(0.2, 0.6, t));
                let x_dir = comb(&[(1.0, &f.fx(&x, &y, &xi)), (-1.0, &jv(&z, &zeta))]);
                let z_dir = comb(&[(1.0, &hv(&z, &zeta)), (-1.0, &f.fy(&x, &y, &xi))]);
                y = comb(&[(1.0, &y), (-rho, &gy(&x, &y, &zeta))]);
                z = comb(&[(1.0, &z), (-rho, &z_dir)]);
                x = clip(comb(&[(1.0, &x), (-gamma, &x_dir)]));
                out.push(iterate(&x, &y, &[("z", &z)]));
            }
            assert!(
                out[0].x.iter().any(|v| *v == 0.25 || *v == 0.45),
                "the box clips"
            );
            out
        },
    );
}

// ---------------------------------------------------------------------------------------------
// AID-CG.

/// Conjugate gradients by hand on `(H + λI) v = b` over one lower batch, from `v0`: at most `k`
/// steps, stopping once `‖b − (H + λI) v‖ ≤ tol ‖b‖`. Returns v and the steps taken.
fn cg_by_hand(
    l: &Lower,
    lambda: f64,
    b: &[f64],
    v0: &[f64],
    k: usize,
    tol: f64,
) -> (Vector, usize) {
    let dot = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(a, b)| a * b).sum::<f64>();
    let apply = |v: &[f64]| comb(&[(1.0, &hv(v, l)), (lambda, v)]);
    let mut v = v0.to_vec();
    let mut r = comb(&[(1.0, b), (-1.0, &apply(&v))]);
    let mut p = r.clone();
    for step in 0..k {
        if norm(&r) <= tol * norm(b) {
            return (v, step);
        }
        let ap = apply(&p);
        let alpha = dot(&r, &r) / dot(&p, &ap);
        v = comb(&[(1.0, &v), (alpha, &p)]);
        let r_next = comb(&[(1.0, &r), (-alpha, &ap)]);
        p = comb(&[(1.0, &r_next), (dot(&r_next, &r_next) / dot(&r, &r), &p)]);
        r = r_next;
    }
    (v, k)
}

/// AID-CG (Pedregosa 2016; Grazzi et al. 2020, stochastic as in hypertorch): T SGD steps on y,
/// then ξ and one ζ; K CG steps on `(H(ζ) + λI) v = ∇_y F(ξ)` from the last v (warm) or 0,
/// stopped at the tolerance; `x ← x − η_t (∇_x F − J(ζ) v)`. K = 3 < dim y, so the truncation,
/// the warm start and (second case) the stopping rule and damping all change the iterates.
#[test]
fn aid_cg_follows_its_rule() {
    use bilevel_optim::linear_solvers::CgConfig;
    use bilevel_optim::methods::aid_cg::AidCgConfig;
    for (warm_start, damping, tolerance) in [(true, 0.0, 0.0), (false, 0.3, 0.3)] {
        let config = MethodConfig::new(AidCgConfig {
            eta: schedule(0.2, 0.5),
            gamma: 0.25,
            inner_steps: 2,
            cg: CgConfig {
                max_steps: 3,
                tolerance,
                damping,
            },
            warm_start,
        });
        let mut early_stops = 0;
        check(
            "aid-cg",
            config,
            recorded(quadratic(None)),
            &["v"],
            |d, f, _| {
                let (mut x, mut y, mut v) = (x0(), y0(), vec![0.0; DY]);
                let mut out = Vec::new();
                for t in 0..ITERATIONS {
                    sgd_steps(d, &x, &mut y, 2, 0.25);
                    let (xi, zeta) = (d.upper(), d.lower());
                    d.end_of_iteration();
                    let start = if warm_start { v.clone() } else { vec![0.0; DY] };
                    let b = f.fy(&x, &y, &xi);
                    let steps;
                    (v, steps) = cg_by_hand(&zeta, damping, &b, &start, 3, tolerance);
                    early_stops += usize::from(steps < 3);
                    let h = comb(&[(1.0, &f.fx(&x, &y, &xi)), (-1.0, &jv(&v, &zeta))]);
                    x = comb(&[(1.0, &x), (-decay(0.2, 0.5, t), &h)]);
                    out.push(iterate(&x, &y, &[("v", &v)]));
                }
                out
            },
        );
        if tolerance > 0.0 {
            assert!(early_stops > 0, "the tolerance never stopped a solve early");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ITD.

/// ITD (Franceschi et al. 2017; Grazzi et al. 2020; truncated: Shaban et al. 2019): from the
/// last y, K SGD steps on one ζ, then ξ; the reverse pass `h ← h − γ J a`, `a ← a − γ H a`
/// through the last T of the K steps, from `a = ∇_y F`, `h = ∇_x F` at y_K; `x ← x − η_t h`,
/// y ← y_K. In full (T = K) and truncated (T = 1).
#[test]
fn itd_follows_its_rule() {
    use bilevel_optim::methods::itd::ItdConfig;
    for truncation in [None, Some(1)] {
        let (k, gamma) = (3, 0.3);
        let config = MethodConfig::new(ItdConfig {
            eta: schedule(0.2, 0.5),
            gamma,
            inner_steps: k,
            truncation,
        });
        let backward = truncation.unwrap_or(k);
        check("itd", config, recorded(quadratic(None)), &[], |d, f, _| {
            let (mut x, mut y) = (x0(), y0());
            let mut out = Vec::new();
            for t in 0..ITERATIONS {
                let (zeta, xi) = (d.lower(), d.upper());
                d.end_of_iteration();
                let mut trajectory = vec![y.clone()];
                for _ in 0..k {
                    let last = trajectory.last().unwrap();
                    let next = comb(&[(1.0, last), (-gamma, &gy(&x, last, &zeta))]);
                    trajectory.push(next);
                }
                let y_k = trajectory.pop().unwrap();
                let (mut a, mut h) = (f.fy(&x, &y_k, &xi), f.fx(&x, &y_k, &xi));
                for _ in 0..backward {
                    h = comb(&[(1.0, &h), (-gamma, &jv(&a, &zeta))]);
                    a = comb(&[(1.0, &a), (-gamma, &hv(&a, &zeta))]);
                }
                x = comb(&[(1.0, &x), (-decay(0.2, 0.5, t), &h)]);
                y = y_k;
                out.push(iterate(&x, &y, &[]));
            }
            out
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The Neumann family and AmIGO.

/// `v ≈ H⁻¹ b` by the series, by hand: deterministic `α Σ_{i=0}^{Q} (I − αH)^i b` on one batch,
/// or randomized `Qα Π_i (I − αH_i) b` over the batches given (their number is the drawn q).
fn series(b: &[f64], batches: &[Lower], terms: usize, alpha: f64, randomized: bool) -> Vector {
    let step = |p: &Vector, l: &Lower| comb(&[(1.0, p), (-alpha, &hv(p, l))]);
    if randomized {
        let mut p = b.to_vec();
        for l in batches {
            p = step(&p, l);
        }
        comb(&[(terms as f64 * alpha, &p)])
    } else {
        let (mut term, mut sum) = (b.to_vec(), b.to_vec());
        for _ in 0..terms {
            term = step(&term, &batches[0]);
            sum = comb(&[(1.0, &sum), (1.0, &term)]);
        }
        comb(&[(alpha, &sum)])
    }
}

/// One iteration of the Neumann family by hand: `steps` SGD steps on y (each on a fresh ζ),
/// then ξ, the Hessian batches and the cross batch ζ'; `h = ∇_x F − J(ζ') v`, `x ← x − η h`.
/// A randomized series's q is the number of Hessian batches the library drew (the test of its
/// distribution is `shared_pieces.rs`); the rule fixes everything else.
#[allow(clippy::too_many_arguments)]
fn neumann_iteration(
    d: &mut Draws,
    f: &Calculus,
    x: &mut Vector,
    y: &mut Vector,
    steps: usize,
    gamma: f64,
    (terms, alpha, randomized): (usize, f64, bool),
    eta: f64,
) {
    sgd_steps(d, x, y, steps, gamma);
    let xi = d.upper();
    let (lowers, cross) = series_batches(d);
    if randomized {
        assert!(lowers.len() < terms, "q = {} ≥ Q", lowers.len());
    } else {
        assert_eq!(lowers.len(), 1, "one Hessian batch");
    }
    let v = series(&f.fy(x, y, &xi), &lowers, terms, alpha, randomized);
    let h = comb(&[(1.0, &f.fx(x, y, &xi)), (-1.0, &jv(&v, &cross))]);
    *x = comb(&[(1.0, x), (-eta, &h)]);
}

/// Runs a Neumann-family method against [`neumann_iteration`] with its plan: the SGD steps,
/// the y step and the x step of iteration t, and the series (Q, α, randomized).
fn check_neumann(
    name: &str,
    config: MethodConfig,
    plan: impl Fn(usize) -> (usize, f64, f64),
    series: (usize, f64, bool),
) {
    check(name, config, recorded(quadratic(None)), &[], |d, f, _| {
        let (mut x, mut y) = (x0(), y0());
        (0..ITERATIONS)
            .map(|t| {
                let (steps, gamma, eta) = plan(t);
                neumann_iteration(d, f, &mut x, &mut y, steps, gamma, series, eta);
                iterate(&x, &y, &[])
            })
            .collect()
    });
}

/// StocBio (Ji, Yang, Liang 2021): D warm-started SGD steps, then the deterministic series.
#[test]
fn stocbio_follows_its_rule() {
    use bilevel_optim::methods::stocbio::StocBioConfig;
    use bilevel_optim::neumann::NeumannConfig;
    let config = MethodConfig::new(StocBioConfig {
        eta: schedule(0.2, 0.5),
        gamma: 0.25,
        inner_steps: 2,
        neumann: NeumannConfig::deterministic(3, 0.2),
    });
    let plan = |t| (2, 0.25, decay(0.2, 0.5, t));
    check_neumann("stocbio", config, plan, (3, 0.2, false));
}

/// StocBio with its Hessian batch's system solved by conjugate gradients instead of the series
/// (`neumann.cg`): D SGD steps, then ξ, the Hessian batch and the cross batch; v = 2 CG steps
/// from 0 on `(H + λI) v = ∇_y F` (K = 2 < dim y, λ = 0.1), `x ← x − η_t (∇_x F − J v)`.
#[test]
fn stocbio_follows_its_rule_with_conjugate_gradients() {
    use bilevel_optim::linear_solvers::CgConfig;
    use bilevel_optim::methods::stocbio::StocBioConfig;
    use bilevel_optim::neumann::NeumannConfig;
    let cg = CgConfig {
        max_steps: 2,
        tolerance: 0.0,
        damping: 0.1,
    };
    let config = MethodConfig::new(StocBioConfig {
        eta: schedule(0.2, 0.5),
        gamma: 0.25,
        inner_steps: 2,
        neumann: NeumannConfig {
            cg: Some(cg),
            ..NeumannConfig::deterministic(3, 0.2)
        },
    });
    check(
        "stocbio",
        config,
        recorded(quadratic(None)),
        &[],
        |d, f, _| {
            let (mut x, mut y) = (x0(), y0());
            (0..ITERATIONS)
                .map(|t| {
                    sgd_steps(d, &x, &mut y, 2, 0.25);
                    let xi = d.upper();
                    let (hessian, cross) = series_batches(d);
                    assert_eq!(hessian.len(), 1, "one Hessian batch");
                    let b = f.fy(&x, &y, &xi);
                    let (v, _) = cg_by_hand(&hessian[0], 0.1, &b, &[0.0; DY], 2, 0.0);
                    let h = comb(&[(1.0, &f.fx(&x, &y, &xi)), (-1.0, &jv(&v, &cross))]);
                    x = comb(&[(1.0, &x), (-decay(0.2, 0.5, t), &h)]);
                    iterate(&x, &y, &[])
                })
                .collect()
        },
    );
}

/// TTSA (Hong et al. 2023): one SGD step with β_t, the randomized series, x step α_t.
#[test]
fn ttsa_follows_its_rule() {
    use bilevel_optim::methods::ttsa::TtsaConfig;
    use bilevel_optim::neumann::NeumannConfig;
    let config = MethodConfig::new(TtsaConfig {
        alpha: schedule(0.2, 0.6),
        beta: schedule(0.3, 0.4),
        neumann: NeumannConfig::randomized(4, 0.2),
    });
    let plan = |t| (1, decay(0.3, 0.4, t), decay(0.2, 0.6, t));
    check_neumann("ttsa", config, plan, (4, 0.2, true));
}

/// BSA (Ghadimi & Wang 2018): t_k = min(⌈T (k+1)^s⌉, max) SGD steps (here T = 1, s = 1,
/// max = 2: 1, 2, 2 steps, the cap reached), then the randomized series.
#[test]
fn bsa_follows_its_rule_with_its_growing_and_capped_inner_loop() {
    use bilevel_optim::methods::bsa::BsaConfig;
    use bilevel_optim::neumann::NeumannConfig;
    let config = MethodConfig::new(BsaConfig {
        eta: constant(0.2),
        gamma: 0.25,
        inner_steps: 1,
        inner_growth: 1.0,
        max_inner_steps: 2,
        neumann: NeumannConfig::randomized(4, 0.2),
    });
    let plan = |t| ([1, 2, 2][t], 0.25, 0.2);
    check_neumann("bsa", config, plan, (4, 0.2, true));
}

/// ALSET (Chen, Sun, Yin 2021): T SGD steps with β, the randomized series, x step α_t.
#[test]
fn alset_follows_its_rule() {
    use bilevel_optim::methods::alset::AlsetConfig;
    use bilevel_optim::neumann::NeumannConfig;
    let config = MethodConfig::new(AlsetConfig {
        alpha: schedule(0.2, 0.5),
        beta: 0.25,
        inner_steps: 2,
        neumann: NeumannConfig::randomized(3, 0.3),
    });
    let plan = |t| (2, 0.25, decay(0.2, 0.5, t));
    check_neumann("alset", config, plan, (3, 0.3, true));
}

/// AmIGO (Arbel & Mairal 2022): T SGD steps on y; ξ; M warm-started steps on z, each on a fresh
/// ζ_k, against ∇_y F(ξ) at the new y; then J on a fresh ζ' and x ← x − α_t (∇_x F − J z).
#[test]
fn amigo_follows_its_rule() {
    use bilevel_optim::methods::amigo::AmigoConfig;
    let config = MethodConfig::new(AmigoConfig {
        alpha: schedule(0.2, 0.5),
        gamma: 0.25,
        rho: 0.3,
        inner_steps: 2,
        linear_steps: 3,
    });
    check(
        "amigo",
        config,
        recorded(quadratic(None)),
        &["z"],
        |d, f, _| {
            let (mut x, mut y, mut z) = (x0(), y0(), vec![0.0; DY]);
            let mut out = Vec::new();
            for t in 0..ITERATIONS {
                sgd_steps(d, &x, &mut y, 2, 0.25);
                let xi = d.upper();
                let b = f.fy(&x, &y, &xi);
                for _ in 0..3 {
                    let zeta = d.lower();
                    z = comb(&[
                        (1.0, &z),
                        (-0.3, &comb(&[(1.0, &hv(&z, &zeta)), (-1.0, &b)])),
                    ]);
                }
                let cross = d.lower();
                d.end_of_iteration();
                let h = comb(&[(1.0, &f.fx(&x, &y, &xi)), (-1.0, &jv(&z, &cross))]);
                x = comb(&[(1.0, &x), (-decay(0.2, 0.5, t), &h)]);
                out.push(iterate(&x, &y, &[("z", &z)]));
            }
            out
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Variance reduction: MRBO and VRBO.

/// The samples of one Neumann estimate: ξ, the Hessian batches, the cross batch.
struct NeumannDraw {
    xi: Upper,
    hessian: Vec<Lower>,
    cross: Lower,
}

/// Takes a deterministic series's samples (one Hessian batch) from the draws.
fn neumann_draw(d: &mut Draws) -> NeumannDraw {
    NeumannDraw {
        xi: d.upper(),
        hessian: vec![d.lower()],
        cross: d.lower(),
    }
}

/// `ĥ(x, y) = ∇_x F − J v`, `v` the deterministic series for `∇_y F`, on fixed samples.
fn neumann_estimate(
    f: &Calculus,
    x: &[f64],
    y: &[f64],
    s: &NeumannDraw,
    q: usize,
    a: f64,
) -> Vector {
    let v = series(&f.fy(x, y, &s.xi), &s.hessian, q, a, false);
    comb(&[(1.0, &f.fx(x, y, &s.xi)), (-1.0, &jv(&v, &s.cross))])
}

/// MRBO's and SUSTAIN's double momentum by hand: on a lower batch and the series' samples (ξ,
/// Hessian batches, cross batch), u = ∇_y G and v = ĥ, the series' estimate, plain at t = 0 and
/// else corrected by their values at the previous point on the same samples with the weights
/// `(a, b) = weights(t)` of v and u; then y ← y − y_step u, x ← x − x_step v with
/// `(x_step, y_step) = steps(t)`. Returns the iterates (with u and v) and the number of Hessian
/// products each estimate took in all.
fn double_momentum(
    d: &mut Draws,
    f: &Calculus,
    steps: impl Fn(usize) -> (f64, f64),
    weights: impl Fn(usize) -> (f64, f64),
    (terms, alpha, randomized): (usize, f64, bool),
) -> (Vec<Iterate>, usize) {
    let (mut x, mut y) = (x0(), y0());
    let (mut u, mut v) = (vec![0.0; DY], vec![0.0; DX]);
    let (mut x_prev, mut y_prev) = (x.clone(), y.clone());
    let mut products = 0;
    let mut out = Vec::new();
    for t in 0..ITERATIONS {
        let batch = d.lower();
        let xi = d.upper();
        let (hessian, cross) = series_batches(d);
        if randomized {
            assert!(hessian.len() < terms, "q = {} ≥ Q", hessian.len());
        } else {
            assert_eq!(hessian.len(), 1, "one Hessian batch");
        }
        products += hessian.len();
        let h = |x: &[f64], y: &[f64]| {
            let w = series(&f.fy(x, y, &xi), &hessian, terms, alpha, randomized);
            comb(&[(1.0, &f.fx(x, y, &xi)), (-1.0, &jv(&w, &cross))])
        };
        if t == 0 {
            (u, v) = (gy(&x, &y, &batch), h(&x, &y));
        } else {
            let (a, b) = weights(t);
            let g_old = gy(&x_prev, &y_prev, &batch);
            u = comb(&[(1.0, &gy(&x, &y, &batch)), (1.0 - b, &u), (b - 1.0, &g_old)]);
            v = comb(&[
                (1.0, &h(&x, &y)),
                (1.0 - a, &v),
                (a - 1.0, &h(&x_prev, &y_prev)),
            ]);
        }
        (x_prev, y_prev) = (x.clone(), y.clone());
        let (x_step, y_step) = steps(t);
        y = comb(&[(1.0, &y), (-y_step, &u)]);
        x = comb(&[(1.0, &x), (-x_step, &v)]);
        out.push(iterate(&x, &y, &[("u", &u), ("v", &v)]));
    }
    (out, products)
}

/// MRBO (Yang, Ji, Liang 2021): STORM on both levels, the same samples at the new and the
/// previous point; η_k = s/(m + k)^{1/3}; the momentum weights of iteration k are c₁η_{k−1}²
/// and c₂η_{k−1}² (capped at 1); y ← y − γη_k u, x ← x − λη_k v; at k = 0 the plain estimates.
#[test]
fn mrbo_follows_its_rule() {
    use bilevel_optim::methods::mrbo::MrboConfig;
    use bilevel_optim::neumann::NeumannConfig;
    let config = MethodConfig::new(MrboConfig {
        step_scale: 0.8,
        offset: 2.0,
        x_scale: 0.3,
        y_scale: 0.4,
        x_momentum: 0.5,
        y_momentum: 2.0,
        neumann: NeumannConfig::deterministic(2, 0.2),
    });
    check(
        "mrbo",
        config,
        recorded(quadratic(None)),
        &["u", "v"],
        |d, f, _| {
            let eta = |k: usize| 0.8 / (2.0 + k as f64).powf(1.0 / 3.0);
            let steps = |k: usize| (0.3 * eta(k), 0.4 * eta(k));
            let weights = |k: usize| {
                let e = eta(k - 1).powi(2);
                ((0.5 * e).min(1.0), (2.0 * e).min(1.0))
            };
            double_momentum(d, f, steps, weights, (2, 0.2, false)).0
        },
    );
}

/// VRBO (Yang, Ji, Liang 2021): every q iterations the estimates restart from the mean over
/// `anchor_batches` sample sets; x ← x − α v; then m SPIDER corrections, each on fresh samples
/// at (x_{k+1}, y_s) and at the previous point (first (x_k, y_k)), with y ← y − β u after each.
#[test]
fn vrbo_follows_its_rule() {
    use bilevel_optim::methods::vrbo::VrboConfig;
    use bilevel_optim::neumann::NeumannConfig;
    let config = MethodConfig::new(VrboConfig {
        alpha: 0.1,
        beta: 0.2,
        period: 2,
        inner_steps: 2,
        anchor_batches: 2,
        neumann: NeumannConfig::deterministic(2, 0.2),
    });
    check(
        "vrbo",
        config,
        recorded(quadratic(None)),
        &["u", "v"],
        |d, f, _| {
            let (mut x, mut y) = (x0(), y0());
            let (mut u, mut v) = (vec![0.0; DY], vec![0.0; DX]);
            let mut out = Vec::new();
            for k in 0..ITERATIONS {
                if k % 2 == 0 {
                    (u, v) = (vec![0.0; DY], vec![0.0; DX]);
                    for _ in 0..2 {
                        let samples = neumann_draw(d);
                        let batch = d.lower();
                        v = comb(&[
                            (1.0, &v),
                            (0.5, &neumann_estimate(f, &x, &y, &samples, 2, 0.2)),
                        ]);
                        u = comb(&[(1.0, &u), (0.5, &gy(&x, &y, &batch))]);
                    }
                }
                let (mut x_prev, mut y_prev) = (x.clone(), y.clone());
                x = comb(&[(1.0, &x), (-0.1, &v)]);
                for _ in 0..2 {
                    let samples = neumann_draw(d);
                    let batch = d.lower();
                    let h_new = neumann_estimate(f, &x, &y, &samples, 2, 0.2);
                    let h_old = neumann_estimate(f, &x_prev, &y_prev, &samples, 2, 0.2);
                    v = comb(&[(1.0, &v), (1.0, &h_new), (-1.0, &h_old)]);
                    let g_new = gy(&x, &y, &batch);
                    let g_old = gy(&x_prev, &y_prev, &batch);
                    u = comb(&[(1.0, &u), (1.0, &g_new), (-1.0, &g_old)]);
                    (x_prev, y_prev) = (x.clone(), y.clone());
                    y = comb(&[(1.0, &y), (-0.2, &u)]);
                }
                d.end_of_iteration();
                out.push(iterate(&x, &y, &[("u", &u), ("v", &v)]));
            }
            out
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Unbounded smoothness: SLIP, AccBO, AdamBO.

/// SLIP (Gong, Hao, Liu 2024): T₀ SGD steps before iteration 0, then one ξ and one ζ per
/// iteration, all at (x_t, y_t, z_t): y ← y − γ ∇_y G; z ← Π_{‖z‖≤ρ}(z − ν (H z − ∇_y F));
/// m ← β m + (1 − β)(∇_x F − J z_t); x ← x − η_t m/‖m‖.
#[test]
fn slip_follows_its_rule() {
    use bilevel_optim::methods::slip::SlipConfig;
    let config = MethodConfig::new(SlipConfig {
        eta: schedule(0.2, 0.5),
        beta: 0.6,
        gamma: 0.25,
        nu: 0.3,
        warm_start: 2,
        z_radius: Some(0.08),
    });
    check(
        "slip",
        config,
        recorded(quadratic(None)),
        &["z", "m"],
        |d, f, _| {
            let (mut x, mut y, mut z, mut m) = (x0(), y0(), vec![0.0; DY], vec![0.0; DX]);
            sgd_steps(d, &x, &mut y, 2, 0.25);
            let mut out = Vec::new();
            for t in 0..ITERATIONS {
                let (xi, zeta) = (d.upper(), d.lower());
                d.end_of_iteration();
                let h = comb(&[(1.0, &f.fx(&x, &y, &xi)), (-1.0, &jv(&z, &zeta))]);
                let residual = comb(&[(1.0, &hv(&z, &zeta)), (-1.0, &f.fy(&x, &y, &xi))]);
                y = comb(&[(1.0, &y), (-0.25, &gy(&x, &y, &zeta))]);
                z = comb(&[(1.0, &z), (-0.3, &residual)]);
                z = onto_ball(z, 0.08);
                m = comb(&[(0.6, &m), (0.4, &h)]);
                x = comb(&[(1.0, &x), (-decay(0.2, 0.5, t) / norm(&m), &m)]);
                out.push(iterate(&x, &y, &[("z", &z), ("m", &m)]));
            }
            out
        },
    );
}

/// AccBO (Gong, Hao, Liu 2024): T₀ SGD steps; then a Nesterov step on y,
/// w = y_t + δ(y_t − y_{t−1}), y_{t+1} = w − γ ∇_y G(x_t, w; π), averaged into
/// ŷ_{t+1} = (1 − τ) ŷ_t + τ y_{t+1}; the randomized Neumann estimate at (x_t, ŷ_{t+1}) on
/// samples drawn once, recursive momentum m_t = h_t + β (m_{t−1} − h(x_{t−1}, ŷ_t)) on those
/// same samples (m_0 = h_0); x ← x − η_t m/‖m‖.
#[test]
fn accbo_follows_its_rule() {
    use bilevel_optim::methods::accbo::AccBoConfig;
    use bilevel_optim::neumann::NeumannConfig;
    let config = MethodConfig::new(AccBoConfig {
        eta: schedule(0.2, 0.5),
        beta: 0.6,
        gamma: 0.25,
        nesterov: 0.3,
        averaging: 0.4,
        warm_start: 2,
        neumann: NeumannConfig::randomized(4, 0.2),
    });
    check(
        "accbo",
        config,
        recorded(quadratic(None)),
        &["m", "y_now"],
        |d, f, _| {
            let (mut x, mut y_avg) = (x0(), y0());
            sgd_steps(d, &x, &mut y_avg, 2, 0.25);
            let (mut y_now, mut y_before) = (y_avg.clone(), y_avg.clone());
            let mut m = vec![0.0; DX];
            let (mut x_prev, mut y_avg_prev) = (x.clone(), y_avg.clone());
            let mut out = Vec::new();
            for t in 0..ITERATIONS {
                let w = comb(&[(1.3, &y_now), (-0.3, &y_before)]);
                let pi = d.lower();
                let next = comb(&[(1.0, &w), (-0.25, &gy(&x, &w, &pi))]);
                (y_before, y_now) = (y_now, next);
                y_avg = comb(&[(0.6, &y_avg), (0.4, &y_now)]);
                let xi = d.upper();
                let (lowers, cross) = series_batches(d);
                let estimate = |x: &[f64], y: &[f64]| {
                    let v = series(&f.fy(x, y, &xi), &lowers, 4, 0.2, true);
                    comb(&[(1.0, &f.fx(x, y, &xi)), (-1.0, &jv(&v, &cross))])
                };
                let h = estimate(&x, &y_avg);
                m = if t == 0 {
                    h
                } else {
                    let old = estimate(&x_prev, &y_avg_prev);
                    comb(&[(1.0, &h), (0.6, &m), (-0.6, &old)])
                };
                (x_prev, y_avg_prev) = (x.clone(), y_avg.clone());
                x = comb(&[(1.0, &x), (-decay(0.2, 0.5, t) / norm(&m), &m)]);
                out.push(iterate(&x, &y_avg, &[("m", &m), ("y_now", &y_now)]));
            }
            out
        },
    );
}

/// The Adam knobs of the AdamBO and VR-AdamBO tests: η_t = 0.2/√(t+1), β₁ 0.7, β₂ 0.9, ε 1e-3,
/// γ 0.25, T₀ = 2, the deterministic series (Q = 2, α = 0.2).
fn adam_knobs(weight_decay: f64) -> bilevel_optim::methods::adambo::AdamBoConfig {
    bilevel_optim::methods::adambo::AdamBoConfig {
        eta: schedule(0.2, 0.5),
        beta1: 0.7,
        beta2: 0.9,
        epsilon: 1e-3,
        gamma: 0.25,
        warm_start: 2,
        neumann: bilevel_optim::neumann::NeumannConfig::deterministic(2, 0.2),
        weight_decay,
    }
}

/// AdamBO (Gong, Hao, Liu): T₀ SGD steps; then one SGD step on y, the deterministic Neumann
/// estimate h_t (plus λ_wd x_t with weight decay, as torch's Adam adds it), Adam's moments
/// m ← β₁m + (1 − β₁)h, v ← β₂v + (1 − β₂)h², and x ← x − η_t m̂/(√v̂ + ε) with the bias
/// corrections 1 − β^{t+1}.
#[test]
fn adambo_follows_its_rule_with_weight_decay() {
    for weight_decay in [0.0, 0.05] {
        let config = MethodConfig::new(adam_knobs(weight_decay));
        let name = format!("adambo (weight decay {weight_decay})");
        check(
            &name,
            config,
            recorded(quadratic(None)),
            &["m", "v"],
            |d, f, _| {
                let (mut x, mut y) = (x0(), y0());
                sgd_steps(d, &x, &mut y, 2, 0.25);
                let (mut m, mut v) = (vec![0.0; DX], vec![0.0; DX]);
                let mut out = Vec::new();
                for t in 0..ITERATIONS {
                    let zeta = d.lower();
                    y = comb(&[(1.0, &y), (-0.25, &gy(&x, &y, &zeta))]);
                    let samples = neumann_draw(d);
                    d.end_of_iteration();
                    let h = comb(&[
                        (1.0, &neumann_estimate(f, &x, &y, &samples, 2, 0.2)),
                        (weight_decay, &x),
                    ]);
                    m = comb(&[(0.7, &m), (0.3, &h)]);
                    v = v
                        .iter()
                        .zip(&h)
                        .map(|(v, g)| 0.9 * v + 0.1 * g * g)
                        .collect();
                    let (c1, c2) = (
                        1.0 - 0.7f64.powi(t as i32 + 1),
                        1.0 - 0.9f64.powi(t as i32 + 1),
                    );
                    let eta = decay(0.2, 0.5, t);
                    x = (0..DX)
                        .map(|i| x[i] - eta * (m[i] / c1) / ((v[i] / c2).sqrt() + 1e-3))
                        .collect();
                    out.push(iterate(&x, &y, &[("m", &m), ("v", &v)]));
                }
                out
            },
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Meta-learning: MAML and ANIL.

/// MAML (Finn et al. 2017) and ANIL (Raghu et al. 2020) with exact second-order meta-gradients:
/// per task a support ζ and a query ξ; K SGD steps y_{k+1} = y_k − α ∇_y G(x, y_k; ζ) from θ₀;
/// a = ∇_y F(x, y_K; ξ), g_x = ∇_x F(x, y_K; ξ); back through the steps, for k = K−1..0,
/// g_x ← g_x − α J(y_k) a, then a ← a − α H(y_k) a; θ₀ ← θ₀ − η_t mean(a), and for ANIL also
/// x ← x − η_t mean(g_x). The caller's y is the last task's adapted y_K. The encoder-learning
/// MAML (`maml-encoder`) keeps θ₀ at the starting y and steps x only.
#[test]
fn maml_and_anil_follow_their_rule() {
    use bilevel_optim::methods::maml_encoder::MamlEncoderConfig;
    use bilevel_optim::methods::meta::MetaConfig;
    for name in ["maml", "anil", "maml-encoder"] {
        let meta = MetaConfig {
            inner_steps: 2,
            inner_step: 0.25,
            outer_step: schedule(0.2, 0.5),
            tasks_per_batch: 2,
        };
        let (config, learn_upper, learn_init) = match name {
            "maml" => (MethodConfig::new(MamlConfig::from(meta)), false, true),
            "anil" => (MethodConfig::new(AnilConfig::from(meta)), true, true),
            _ => (
                MethodConfig::new(MamlEncoderConfig::from(meta)),
                true,
                false,
            ),
        };
        check(
            name,
            config,
            recorded(quadratic(None)),
            &["init"],
            |d, f, _| {
                let (mut x, mut y, mut init) = (x0(), y0(), y0());
                let mut out = Vec::new();
                for t in 0..ITERATIONS {
                    let (mut d_init, mut d_x) = (vec![0.0; DY], vec![0.0; DX]);
                    for _ in 0..2 {
                        let (support, query) = (d.lower(), d.upper());
                        let mut trajectory = vec![init.clone()];
                        for _ in 0..2 {
                            let last = trajectory.last().unwrap();
                            let next = comb(&[(1.0, last), (-0.25, &gy(&x, last, &support))]);
                            trajectory.push(next);
                        }
                        let adapted = trajectory.pop().unwrap();
                        let (mut a, mut g_x) =
                            (f.fy(&x, &adapted, &query), f.fx(&x, &adapted, &query));
                        for _y_k in trajectory.iter().rev() {
                            // The quadratic's H and J do not depend on y_k.
                            g_x = comb(&[(1.0, &g_x), (-0.25, &jv(&a, &support))]);
                            a = comb(&[(1.0, &a), (-0.25, &hv(&a, &support))]);
                        }
                        d_init = comb(&[(1.0, &d_init), (0.5, &a)]);
                        d_x = comb(&[(1.0, &d_x), (0.5, &g_x)]);
                        y = adapted;
                    }
                    d.end_of_iteration();
                    let eta = decay(0.2, 0.5, t);
                    if learn_init {
                        init = comb(&[(1.0, &init), (-eta, &d_init)]);
                    }
                    if learn_upper {
                        x = comb(&[(1.0, &x), (-eta, &d_x)]);
                    }
                    out.push(iterate(&x, &y, &[("init", &init)]));
                }
                out
            },
        );
    }
}

/// Every method the library selects by name has a one-step reference test in this file.
#[test]
fn every_method_has_a_one_step_reference_test() {
    let source = include_str!("one_step.rs");
    for name in bilevel_optim::methods::METHODS {
        let test = format!("fn {}_follows_its_rule", name.replace('-', "_"));
        let borep = name == "bo-rep" && source.contains("fn borep_follows_its_rule");
        let meta = (name == "maml" || name == "anil" || name == "maml-encoder")
            && source.contains("fn maml_and_anil_follow_their_rule");
        assert!(
            borep || meta || source.contains(&test),
            "{name} has no one-step reference test ({test})"
        );
    }
}

/// BO-REP with the paper's initialization: z₀ = 0 and the Epoch-SGD refinement (Algorithm 3):
/// epoch k runs T_k = T₁2^{k−1} SGD steps of γ₁/2^{k−1}, each on a fresh batch and projected on
/// the ball of radius D₁/√2^{k−1} around the epoch's start; the next start is the average of the
/// iterates after each step. Then the iterations as in Algorithm 1.
#[test]
fn borep_follows_its_rule_with_epoch_sgd_and_zero_z() {
    use bilevel_optim::epoch_sgd::EpochSgdConfig;
    let config = BoRepConfig {
        z_init: ZInit::Zeros,
        z_radius: None,
        init_refinement: InitRefinement::EpochSgd(EpochSgdConfig {
            step: 0.3,
            length: 2,
            // Small enough that the projection acts.
            radius: 0.05,
            epochs: 3,
        }),
        ..borep_config("paper")
    };
    check(
        "bo-rep (epoch-sgd, z₀ = 0)",
        MethodConfig::new(config),
        recorded(quadratic(None)),
        &["z", "m"],
        |d, f, _| {
            let (mut x, mut y) = (x0(), y0());
            let mut projected = false;
            let mut start = y.clone();
            for k in 1..=3 {
                let (step, length, radius) = (
                    0.3 / 2f64.powi(k - 1),
                    2usize << (k - 1),
                    0.05 / 2f64.sqrt().powi(k - 1),
                );
                let mut u = start.clone();
                let mut average = vec![0.0; DY];
                for _ in 0..length {
                    let zeta = d.lower();
                    u = comb(&[(1.0, &u), (-step, &gy(&x, &u, &zeta))]);
                    let offset = comb(&[(1.0, &u), (-1.0, &start)]);
                    let n = norm(&offset);
                    if n > radius {
                        u = comb(&[(1.0, &start), (radius / n, &offset)]);
                        projected = true;
                    }
                    average = comb(&[(1.0, &average), (1.0 / length as f64, &u)]);
                }
                start = average;
            }
            assert!(projected, "the ball constrains the refinement");
            y = start;
            let (mut z, mut m) = (vec![0.0; DY], vec![0.0; DX]);
            let mut out = Vec::new();
            for t in 0..ITERATIONS {
                if t > 0 && t % 2 == 0 {
                    sgd_steps(d, &x, &mut y, 2, 0.25);
                }
                let (xi, zeta) = (d.upper(), d.lower());
                d.end_of_iteration();
                let h = comb(&[(1.0, &f.fx(&x, &y, &xi)), (-1.0, &jv(&z, &zeta))]);
                let residual = comb(&[(1.0, &hv(&z, &zeta)), (-1.0, &f.fy(&x, &y, &xi))]);
                z = comb(&[(1.0, &z), (-0.3, &residual)]);
                m = comb(&[(0.6, &m), (0.4, &h)]);
                x = comb(&[(1.0, &x), (-decay(0.2, 0.5, t) / norm(&m), &m)]);
                out.push(iterate(&x, &y, &[("z", &z), ("m", &m)]));
            }
            out
        },
    );
}

// ---------------------------------------------------------------------------------------------
// FSLA, SUSTAIN and F2BA.

/// FSLA (Li, Gu, Huang 2022): y steps on ζ; then z steps with H at (x_t, y_{t+1}) on ζ' and ∇_y F
/// at (x_t, y_{t+1}) on ξ; `h(x, y, z) = ∇_x F(ξ') − J(ζ'') z`; the direction is
/// `d_t = h(x_t, y_{t+1}, z_{t+1}) + (1 − η_t)(d_{t−1} − h(x_{t−1}, y_t, z_t))` on the same ξ',
/// ζ'' (at t = 0 the plain estimate), and `x ← x − α_t d_t`.
#[test]
fn fsla_follows_its_rule() {
    use bilevel_optim::methods::fsla::FslaConfig;
    let config = MethodConfig::new(FslaConfig {
        rho: schedule(0.3, 0.5),
        alpha: schedule(0.2, 0.5),
        momentum: schedule(0.6, 0.5),
    });
    check(
        "fsla",
        config,
        recorded(quadratic(None)),
        &["z", "d", "x_prev"],
        |d, f, _| {
            let (mut x, mut y, mut z) = (x0(), y0(), vec![0.0; DY]);
            let (mut dir, mut x_prev) = (vec![0.0; DX], x0());
            let mut out = Vec::new();
            for t in 0..ITERATIONS {
                let rho = decay(0.3, 0.5, t);
                let (y_old, z_old) = (y.clone(), z.clone());
                let zeta = d.lower();
                y = comb(&[(1.0, &y), (-rho, &gy(&x, &y, &zeta))]);
                let (zeta2, xi) = (d.lower(), d.upper());
                let residual = comb(&[(1.0, &hv(&z, &zeta2)), (-1.0, &f.fy(&x, &y, &xi))]);
                z = comb(&[(1.0, &z), (-rho, &residual)]);
                let (xi2, zeta3) = (d.upper(), d.lower());
                d.end_of_iteration();
                let h = |x: &[f64], y: &[f64], z: &[f64]| {
                    comb(&[(1.0, &f.fx(x, y, &xi2)), (-1.0, &jv(z, &zeta3))])
                };
                dir = if t == 0 {
                    h(&x, &y, &z)
                } else {
                    let eta = decay(0.6, 0.5, t);
                    let old = h(&x_prev, &y_old, &z_old);
                    comb(&[(1.0, &h(&x, &y, &z)), (1.0 - eta, &dir), (eta - 1.0, &old)])
                };
                x_prev = x.clone();
                x = comb(&[(1.0, &x), (-decay(0.2, 0.5, t), &dir)]);
                out.push(iterate(
                    &x,
                    &y,
                    &[("z", &z), ("d", &dir), ("x_prev", &x_prev)],
                ));
            }
            out
        },
    );
}

/// SUSTAIN (Khanduri et al. 2021): MRBO's double momentum with one constant: ᾱ_t = 1/(w + t)^{1/3},
/// y ← y − a_y ᾱ_t u, x ← x − a_x ᾱ_t v; both momentum weights of iteration t are c_η ᾱ_{t−1}²,
/// capped at 1 (here the cap acts at t = 1); the estimate is the randomized series (Q = 3),
/// evaluated at the previous point on the same ζ, ξ, Hessian batches and cross batch.
#[test]
fn sustain_follows_its_rule() {
    use bilevel_optim::methods::sustain::SustainConfig;
    use bilevel_optim::neumann::NeumannConfig;
    let config = MethodConfig::new(SustainConfig {
        x_scale: 0.3,
        y_scale: 0.4,
        offset: 2.0,
        momentum: 2.0,
        neumann: NeumannConfig::randomized(3, 0.2),
    });
    let base = |t: usize| 1.0 / (2.0 + t as f64).powf(1.0 / 3.0);
    let raw_weight = |t: usize| 2.0 * base(t - 1).powi(2);
    assert!(
        raw_weight(1) > 1.0 && raw_weight(2) < 1.0,
        "the cap acts at t = 1 only"
    );
    check(
        "sustain",
        config,
        recorded(quadratic(None)),
        &["u", "v"],
        |d, f, _| {
            let steps = |t: usize| (0.3 * base(t), 0.4 * base(t));
            let weights = |t: usize| (raw_weight(t).min(1.0), raw_weight(t).min(1.0));
            let (out, products) = double_momentum(d, f, steps, weights, (3, 0.2, true));
            assert!(products > 0, "the drawn series had at least one factor");
            out
        },
    );
}

/// F2BA (Chen, Ma, Zhang 2023): K = 2 joint steps, each on fresh ξ, ζ (one ζ for y and z):
/// z ← z − γ_z ∇_y G(z), y ← y − γ_y (∇_y F(y)/λ + ∇_y G(y)); then on fresh ξ', ζ'
/// `x ← x − η_t (∇_x F(y) + λ (∇_x G(y) − ∇_x G(z)))`; z starts at y₀ and carries over, or with
/// `reset_z` restarts from y at every iteration (the official code). The caller's y is the
/// paper's z; the paper's y is the memory `y_lambda`.
#[test]
fn f2ba_follows_its_rule() {
    use bilevel_optim::methods::f2ba::F2baConfig;
    for reset_z in [false, true] {
        let config = MethodConfig::new(F2baConfig {
            eta: schedule(0.2, 0.5),
            gamma_y: 0.3,
            gamma_z: 0.25,
            lambda: 4.0,
            inner_steps: 2,
            reset_z,
        });
        let name = format!("f2ba (reset_z = {reset_z})");
        check(
            &name,
            config,
            recorded(quadratic(None)),
            &["y_lambda"],
            |d, f, _| {
                let (mut x, mut y, mut z) = (x0(), y0(), y0());
                let mut out = Vec::new();
                for t in 0..ITERATIONS {
                    if reset_z {
                        z = y.clone();
                    }
                    for _ in 0..2 {
                        let (xi, zeta) = (d.upper(), d.lower());
                        let y_dir = comb(&[(0.25, &f.fy(&x, &y, &xi)), (1.0, &gy(&x, &y, &zeta))]);
                        z = comb(&[(1.0, &z), (-0.25, &gy(&x, &z, &zeta))]);
                        y = comb(&[(1.0, &y), (-0.3, &y_dir)]);
                    }
                    let (xi, zeta) = (d.upper(), d.lower());
                    d.end_of_iteration();
                    let x_dir = comb(&[
                        (1.0, &f.fx(&x, &y, &xi)),
                        (4.0, &gx(&y, &zeta)),
                        (-4.0, &gx(&z, &zeta)),
                    ]);
                    x = comb(&[(1.0, &x), (-decay(0.2, 0.5, t), &x_dir)]);
                    // The caller holds the paper's z; the paper's y is the memory.
                    out.push(iterate(&x, &z, &[("y_lambda", &y)]));
                }
                out
            },
        );
    }
}

/// SOBA's directions `(∇_y G, H z − ∇_y F, ∇_x F − J z)` at (x, y, z), each batch weighted by its
/// share (one batch of weight 1 for a stochastic estimate), by hand: what SRBA and SPABA recurse on.
type Directions = (Vector, Vector, Vector);
fn soba_directions(
    f: &Calculus,
    (x, y, z): (&[f64], &[f64], &[f64]),
    lower: &[(Lower, f64)],
    upper: &[(Upper, f64)],
) -> Directions {
    let (mut dy, mut dz, mut dx) = (vec![0.0; DY], vec![0.0; DY], vec![0.0; DX]);
    for (l, s) in lower {
        dy = comb(&[(1.0, &dy), (*s, &gy(x, y, l))]);
        dz = comb(&[(1.0, &dz), (*s, &hv(z, l))]);
        dx = comb(&[(1.0, &dx), (-s, &jv(z, l))]);
    }
    for (u, s) in upper {
        dz = comb(&[(1.0, &dz), (-s, &f.fy(x, y, u))]);
        dx = comb(&[(1.0, &dx), (*s, &f.fx(x, y, u))]);
    }
    (dy, dz, dx)
}

/// The SARAH recursion of SRBA and SPABA by hand, from the batches the library drew: where the
/// next draw is a fixed batch, a full pass over the lower then the upper batches (weighted by
/// `shares`), else one ζ and one ξ with the directions at the current point minus those at
/// `previous`; then y ← y − β d_y, z ← Π_{‖z‖≤r}(z − ρ d_z), x ← x − α d_x. Returns the
/// iterates (with z and d_x) and how many iterations took a full pass.
fn sarah_iterations(
    d: &mut Draws,
    f: &Calculus,
    (lower_shares, upper_shares): (&[f64], &[f64]),
    (beta, rho, alpha, r): (f64, f64, f64, f64),
) -> (Vec<Iterate>, usize) {
    let (mut x, mut y, mut z) = (x0(), y0(), vec![0.0; DY]);
    let mut dir: Directions = (vec![0.0; DY], vec![0.0; DY], vec![0.0; DX]);
    let mut previous = (x.clone(), y.clone(), z.clone());
    let mut full_passes = 0;
    let mut out = Vec::new();
    for _ in 0..ITERATIONS {
        if matches!(d.log.get(d.at), Some(Draw::LowerPart(..))) {
            full_passes += 1;
            let lower: Vec<_> = (0..lower_shares.len())
                .map(|k| {
                    let (i, l) = d.lower_part();
                    assert_eq!(i, k, "the full pass takes every lower batch in order");
                    (l, lower_shares[k])
                })
                .collect();
            let upper: Vec<_> = (0..upper_shares.len())
                .map(|k| {
                    let (j, u) = d.upper_part();
                    assert_eq!(j, k, "the full pass takes every upper batch in order");
                    (u, upper_shares[k])
                })
                .collect();
            dir = soba_directions(f, (&x, &y, &z), &lower, &upper);
        } else {
            let (lower, upper) = ([(d.lower(), 1.0)], [(d.upper(), 1.0)]);
            let new = soba_directions(f, (&x, &y, &z), &lower, &upper);
            let old = soba_directions(f, (&previous.0, &previous.1, &previous.2), &lower, &upper);
            dir = (
                comb(&[(1.0, &dir.0), (1.0, &new.0), (-1.0, &old.0)]),
                comb(&[(1.0, &dir.1), (1.0, &new.1), (-1.0, &old.1)]),
                comb(&[(1.0, &dir.2), (1.0, &new.2), (-1.0, &old.2)]),
            );
        }
        d.end_of_iteration();
        previous = (x.clone(), y.clone(), z.clone());
        y = comb(&[(1.0, &y), (-beta, &dir.0)]);
        z = onto_ball(comb(&[(1.0, &z), (-rho, &dir.1)]), r);
        x = comb(&[(1.0, &x), (-alpha, &dir.2)]);
        out.push(iterate(&x, &y, &[("z", &z), ("d_x", &dir.2)]));
    }
    (out, full_passes)
}

/// SRBA (Dagréou et al. 2024): SOBA's directions as SARAH estimates. Every q = 2 iterations they
/// restart from the whole data, the fixed batches weighted by their shares (0.5, 0.3, 0.2 of the
/// lower data; 0.6, 0.4 of the upper); in between they add the directions at (x_t, y_t, z_t)
/// minus those at (x_{t−1}, y_{t−1}, z_{t−1}) on one fresh ζ, ξ. y ← y − ρ d_y,
/// z ← Π(z − ρ d_z) (the ball acts here), x ← x − γ d_x.
#[test]
fn srba_follows_its_rule() {
    use bilevel_optim::methods::srba::SrbaConfig;
    let (problem, (lower_shares, upper_shares)) = uneven_split();
    let config = MethodConfig::new(SrbaConfig {
        rho: 0.3,
        gamma: 0.2,
        period: Some(2),
        z_radius: Some(0.05),
    });
    check("srba", config, problem, &["z", "d_x"], |d, f, _| {
        let shares = (&lower_shares[..], &upper_shares[..]);
        let (out, full_passes) = sarah_iterations(d, f, shares, (0.3, 0.3, 0.2, 0.05));
        assert_eq!(full_passes, 2, "full passes at t = 0 and t = 2");
        // A z of norm r after the first step: the projection acted.
        let z = &out[0].memories[0].1;
        assert!(
            (norm(z) - 0.05).abs() < 1e-12,
            "the ball constrains z: ‖z‖ = {}",
            norm(z)
        );
        out
    });
}

/// SPABA (Chu et al. 2024): SRBA's recursion with the PAGE restart, a full pass (uneven fixed
/// batches weighted by share) at t = 0 and then with probability p, else the correction on one
/// fresh ζ, ξ; three steps y ← y − β d_y, z ← Π(z − ρ d_z), x ← x − α d_x. The coin is the
/// library's (its frequency is `spaba_restarts_with_its_probability` in methods.rs); the batches
/// drawn say which branch each iteration took, and p = 0.5 here makes both happen.
#[test]
fn spaba_follows_its_rule() {
    use bilevel_optim::methods::spaba::SpabaConfig;
    let (problem, (lower_shares, upper_shares)) = uneven_split();
    let config = MethodConfig::new(SpabaConfig {
        beta: 0.3,
        rho: 0.25,
        alpha: 0.2,
        probability: Some(0.5),
        z_radius: Some(0.05),
    });
    check("spaba", config, problem, &["z", "d_x"], |d, f, _| {
        assert!(
            matches!(d.log.first(), Some(Draw::LowerPart(..))),
            "the first iteration is a full pass"
        );
        let shares = (&lower_shares[..], &upper_shares[..]);
        let (out, full_passes) = sarah_iterations(d, f, shares, (0.3, 0.25, 0.2, 0.05));
        assert!(
            full_passes > 1 && full_passes < ITERATIONS,
            "{full_passes} full passes in {ITERATIONS} iterations: both branches occur"
        );
        out
    });
}

/// BOME (Ye, Liu, Wright, Stone, Liu 2022): θ by T = 3 SGD steps of α from y on fresh batches;
/// then on ξ and one ζ, ∇q̂ = (∇_x G(x, y) − ∇_x G(x, θ), ∇_y G(x, y)),
/// λ = max(η_φ‖∇q̂‖² − ⟨∇F, ∇q̂⟩, 0)/‖∇q̂‖², and (y, x) ← (y, x) − (γ_t, η_t)(∇F + λ∇q̂).
#[test]
fn bome_follows_its_rule() {
    use bilevel_optim::methods::bome::BomeConfig;
    let config = MethodConfig::new(BomeConfig {
        eta: schedule(0.2, 0.5),
        gamma: schedule(0.3, 0.5),
        inner_step: 0.25,
        inner_steps: 3,
        phi_scale: 0.7,
    });
    check("bome", config, recorded(quadratic(None)), &[], |d, f, _| {
        let (mut x, mut y) = (x0(), y0());
        let mut active = 0;
        let mut out = Vec::new();
        for t in 0..ITERATIONS {
            let mut theta = y.clone();
            sgd_steps(d, &x, &mut theta, 3, 0.25);
            let (xi, zeta) = (d.upper(), d.lower());
            d.end_of_iteration();
            let q_x = comb(&[(1.0, &gx(&y, &zeta)), (-1.0, &gx(&theta, &zeta))]);
            let q_y = gy(&x, &y, &zeta);
            let (f_x, f_y) = (f.fx(&x, &y, &xi), f.fy(&x, &y, &xi));
            let q_sq = norm(&q_x).powi(2) + norm(&q_y).powi(2);
            let along: f64 = f_x
                .iter()
                .zip(&q_x)
                .chain(f_y.iter().zip(&q_y))
                .map(|(a, b)| a * b)
                .sum();
            let lambda = (0.7 * q_sq - along).max(0.0) / q_sq;
            active += usize::from(lambda > 0.0);
            y = comb(&[
                (1.0, &y),
                (-decay(0.3, 0.5, t), &comb(&[(1.0, &f_y), (lambda, &q_y)])),
            ]);
            x = comb(&[
                (1.0, &x),
                (-decay(0.2, 0.5, t), &comb(&[(1.0, &f_x), (lambda, &q_x)])),
            ]);
            out.push(iterate(&x, &y, &[]));
        }
        assert!(active > 0, "the multiplier acted");
        out
    });
}

/// VR-AdamBO (reconstructed, docs/algorithms.md): T₀ SGD steps; then one SGD step on y, the
/// deterministic Neumann estimate h_t on fresh samples (plus λ_wd x with weight decay), the
/// recursive momentum m_t = h_t + β₁(m_{t−1} − h(x_{t−1}, y_{t−1})) on the same samples (the
/// old estimate with λ_wd x_{t−1}; m_0 = h_0), Adam's v ← β₂v + (1 − β₂)h², and
/// x ← x − η_t m/(√(v/(1 − β₂^{t+1})) + ε) (m is not bias-corrected).
#[test]
fn vr_adambo_follows_its_rule() {
    use bilevel_optim::methods::vr_adambo::VrAdamBoConfig;
    for weight_decay in [0.0, 0.05] {
        let config = MethodConfig::new(VrAdamBoConfig(adam_knobs(weight_decay)));
        let name = format!("vr-adambo (weight decay {weight_decay})");
        let memories = ["m", "v", "x_prev", "y_prev"];
        check(
            &name,
            config,
            recorded(quadratic(None)),
            &memories,
            |d, f, _| {
                let (mut x, mut y) = (x0(), y0());
                sgd_steps(d, &x, &mut y, 2, 0.25);
                let (mut m, mut v) = (vec![0.0; DX], vec![0.0; DX]);
                let (mut x_prev, mut y_prev) = (x.clone(), y.clone());
                let mut out = Vec::new();
                for t in 0..ITERATIONS {
                    let zeta = d.lower();
                    y = comb(&[(1.0, &y), (-0.25, &gy(&x, &y, &zeta))]);
                    let samples = neumann_draw(d);
                    d.end_of_iteration();
                    let h_at = |x: &[f64], y: &[f64]| {
                        let h = neumann_estimate(f, x, y, &samples, 2, 0.2);
                        comb(&[(1.0, &h), (weight_decay, x)])
                    };
                    let h = h_at(&x, &y);
                    m = if t == 0 {
                        h.clone()
                    } else {
                        comb(&[(1.0, &h), (0.7, &m), (-0.7, &h_at(&x_prev, &y_prev))])
                    };
                    v = v
                        .iter()
                        .zip(&h)
                        .map(|(v, g)| 0.9 * v + 0.1 * g * g)
                        .collect();
                    let c2 = 1.0 - 0.9f64.powi(t as i32 + 1);
                    let eta = decay(0.2, 0.5, t);
                    (x_prev, y_prev) = (x.clone(), y.clone());
                    x = (0..DX)
                        .map(|i| x[i] - eta * m[i] / ((v[i] / c2).sqrt() + 1e-3))
                        .collect();
                    let memories = [
                        ("m", &m),
                        ("v", &v),
                        ("x_prev", &x_prev),
                        ("y_prev", &y_prev),
                    ];
                    out.push(iterate(&x, &y, &memories));
                }
                out
            },
        );
    }
}
