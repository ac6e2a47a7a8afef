//! Your own bilevel problem over a model made only of dfdx modules: learn one L2 log-coefficient
//! per input feature (x ∈ R²⁰) of a `(Linear<20,16>, Tanh, Linear<16,2>)` classifier (y) so that
//! the classifier trained on the penalized training loss does well on validation data. Five of
//! the twenty features carry the signal; the rest are noise that a good penalty suppresses.
//!
//! The problem is checked (`bilevel_optim::check`), then solved by three methods, each run
//! logged to TensorBoard under runs/feature_l2/<method>.
//!
//!     cargo run --release -p bilevel-models --example feature_l2
//!     tensorboard --logdir runs/feature_l2

use bilevel_models::classifier::{add_loss_gradient, logits, loss};
use bilevel_models::loss::{accuracy, one_hot};
use bilevel_models::penalty::{add_l2_gradient, l2_penalty, FixedL2};
use bilevel_optim::check::{check_problem, CheckConfig};
use bilevel_optim::constraint::Constraint;
use bilevel_optim::methods::soba::SobaConfig;
use bilevel_optim::methods::MethodConfig;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::problem::{Batch, BilevelProblem, SampleRng, Taped, Tp};
use bilevel_optim::schedule::PowerSchedule;
use bilevel_optim::tensorboard::TensorBoardLog;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

// ---- The user's problem: 64 lines with its doc comments. ----
type Arch = (Linear<20, 16>, Tanh, Linear<16, 2>);
type Mlp = <Arch as BuildOnDevice<Cpu, f64>>::Built;
type LogL2 = Tensor<Rank1<20>, f64, Cpu>;

#[derive(Clone)]
struct Data {
    input: Tensor<(usize, Const<20>), f64, Cpu>,
    labels: Vec<usize>,
}
impl Batch for Data {
    fn size(&self) -> usize {
        self.labels.len()
    }
}

struct FeatureL2 {
    train: Data,
    val: Data,
}

/// `exp(x_j)` for every weight of the first layer that reads feature j.
fn coefficients(x: &LogL2) -> Taped<Rank2<16, 20>, f64> {
    x.retaped::<Tp<f64>>().exp().broadcast()
}

impl BilevelProblem<f64> for FeatureL2 {
    type X = LogL2;
    type Y = Mlp;
    type UpperBatch = Data;
    type LowerBatch = Data;
    fn sample_upper(&mut self, rng: &mut SampleRng) -> Data {
        self.val.sample(rng, 64)
    }
    fn sample_lower(&mut self, rng: &mut SampleRng) -> Data {
        self.train.sample(rng, 64)
    }
    fn upper_loss(&self, _: &LogL2, y: &Mlp, b: &Data) -> Taped<Rank0, f64> {
        loss(y, b.input.retaped::<Tp<f64>>(), &one_hot(&b.labels), None)
    }
    /// `CE + ½ Σ_j exp(x_j) ‖W₁[:, j]‖² + ½ 10⁻³ ‖y‖²`.
    fn lower_loss(&self, x: &LogL2, y: &Mlp, b: &Data) -> Taped<Rank0, f64> {
        let w = y.0.weight.retaped::<Tp<f64>>();
        loss(y, b.input.retaped::<Tp<f64>>(), &one_hot(&b.labels), None)
            + (w.square() * coefficients(x)).sum() * 0.5
            + l2_penalty(&FixedL2(1e-3), y)
    }
    fn write_lower_grad_y(&self, x: &LogL2, y: &Mlp, b: &Data, grad: &mut WrittenGrad<f64>) {
        let input = b.input.retaped::<Tp<f64>>();
        add_loss_gradient(y, input, &one_hot(&b.labels), None, grad);
        grad.add(
            &y.0.weight,
            y.0.weight.retaped::<Tp<f64>>() * coefficients(x),
        );
        add_l2_gradient(&FixedL2(1e-3), y, grad);
    }
    /// Keeps every λ_j = exp(x_j) in [e⁻⁸, e⁴], so no run drifts into an unstable lower step.
    fn project_x(&self, x: &mut LogL2) {
        Constraint::Box {
            lower: -8.0,
            upper: 4.0,
        }
        .project(x);
    }
}
// ---- End of the user's problem. ----

impl Data {
    /// `n` rows whose label is the sign of a fixed rule over the first five features, 10% of
    /// them flipped.
    fn synthetic(n: usize, rng: &mut SampleRng) -> Self {
        let rows: Vec<f64> = (0..n * 20).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let labels = rows
            .chunks(20)
            .map(|r| {
                let signal = r[0] + r[1] - r[2] + 0.5 * r[3] - 0.5 * r[4];
                usize::from((signal > 0.0) != rng.gen_bool(0.1))
            })
            .collect();
        Self {
            input: Cpu::default().tensor_from_vec(rows, (n, Const::<20>)),
            labels,
        }
    }

    /// `n` rows drawn with replacement.
    fn sample(&self, rng: &mut SampleRng, n: usize) -> Self {
        let rows: Vec<usize> = (0..n).map(|_| rng.gen_range(0..self.size())).collect();
        let input = self.input.as_vec();
        let picked = rows
            .iter()
            .flat_map(|&r| input[r * 20..(r + 1) * 20].to_vec());
        Self {
            input: Cpu::default().tensor_from_vec(picked.collect(), (n, Const::<20>)),
            labels: rows.iter().map(|&r| self.labels[r]).collect(),
        }
    }
}

fn validation_accuracy(y: &Mlp, val: &Data) -> f64 {
    let out = logits(y, val.input.retaped::<Tp<f64>>());
    accuracy(&out.retaped::<NoneTape>(), &val.labels)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = SampleRng::seed_from_u64(1);
    let (train, val) = (
        Data::synthetic(200, &mut rng),
        Data::synthetic(500, &mut rng),
    );
    let mut problem = FeatureL2 {
        train,
        val: val.clone(),
    };
    let dev = Cpu::seed_from_u64(0);
    let (x0, y0): (LogL2, Mlp) = (dev.zeros(), dev.build_module::<Arch, f64>());

    // 1. Check the written gradient and the products built from it before trusting a run.
    let report = check_problem(&mut problem, &x0, &y0, &CheckConfig::for_precision::<f64>());
    println!("{report}\n");
    report.into_result()?;

    // 2. Any method by name, on the same problem.
    let soba = MethodConfig::new(SobaConfig {
        rho: PowerSchedule::constant(0.5),
        gamma: PowerSchedule::constant(0.5),
    });
    for config in [
        MethodConfig::default_for("bo-rep")?,
        soba,
        MethodConfig::default_for("stocbio")?,
    ] {
        let name = config.name();
        let mut method = config.build(&x0, &y0, &problem)?;
        let (mut x, mut y) = (x0.clone(), y0.clone());
        let mut oracles = Oracles::new(
            FeatureL2 {
                train: problem.train.clone(),
                val: problem.val.clone(),
            },
            0,
        );
        let mut log = TensorBoardLog::create(format!("runs/feature_l2/{name}"))?;
        for t in 1..=1000 {
            let report = method.step(&mut oracles, &mut x, &mut y)?;
            log.step(&report)?;
            if t % 100 == 0 {
                log.scalar("eval/validation_accuracy", validation_accuracy(&y, &val), t)?;
            }
        }
        log.flush()?;
        let logs = x.as_vec();
        let mean = |r: std::ops::Range<usize>| logs[r.clone()].iter().sum::<f64>() / r.len() as f64;
        println!(
            "{name:8} validation accuracy {:.3}; mean log λ: signal features {:+.2}, noise {:+.2}; {} oracle calls",
            validation_accuracy(&y, &val),
            mean(0..5),
            mean(5..20),
            oracles.counts().upper_grad + oracles.counts().lower_grad + oracles.counts().hvp + oracles.counts().jvp,
        );
    }
    println!("\nTensorBoard: tensorboard --logdir runs/feature_l2");
    Ok(())
}
