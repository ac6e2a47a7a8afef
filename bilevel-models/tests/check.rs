//! The public checker (`bilevel_optim::check`) on a problem nobody here wrote: per-feature L2
//! log-coefficients x ∈ R²⁰ of a dfdx `(Linear<20,16>, Tanh, Linear<16,2>)` classifier y, with
//! the validation loss as F. The correct problem passes; each of the three faults a user planted
//! by hand (a dropped factor, a forgotten data term, x used without its tape) is named with its
//! tensor and kind, and the oracles' first-use check stops a run on the last one.

use bilevel_models::classifier::{add_loss_gradient, loss};
use bilevel_models::loss::one_hot;
use bilevel_models::penalty::{add_l2_gradient, l2_penalty, FixedL2};
use bilevel_optim::check::{check_problem, CheckConfig, Fault, Quantity, Verdict};
use bilevel_optim::error::BilevelError;
use bilevel_optim::methods::borep::{BoRep, BoRepConfig};
use bilevel_optim::optimizer::BilevelOptimizer;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::problem::{Batch, BilevelProblem, SampleRng, Taped, Tp};
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

/// The user's architecture, in dfdx's builder types, and the model it builds.
type Arch = (Linear<20, 16>, Tanh, Linear<16, 2>);
type Mlp = <Arch as BuildOnDevice<Cpu, f64>>::Built;
type LogL2 = Tensor<Rank1<20>, f64, Cpu>;

#[derive(Clone)]
struct Data {
    input: Tensor<(usize, Const<20>), f64, Cpu>,
    targets: Tensor<(usize, Const<2>), f64, Cpu>,
}
impl Batch for Data {
    fn size(&self) -> usize {
        self.input.shape().0
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Planted {
    None,
    /// The penalty's gradient written as `½ exp(x) ⊙ W` (the ½ of `½ Σ exp(x_j) W²` kept).
    HalfFactor,
    /// The cross-entropy's gradient forgotten; the fixed L2 term still gives every tensor one.
    ForgottenDataTerm,
    /// `x.clone().exp()`: the coefficients enter the written gradient as constants.
    UntapedX,
}

struct FeatureL2 {
    train: Data,
    val: Data,
    planted: Planted,
}

/// `n` rows of 20 Gaussian features, labelled by a fixed random linear rule.
fn data(n: usize, rng: &mut SampleRng) -> Data {
    let rule: Vec<f64> = (0..20).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let rows: Vec<f64> = (0..n * 20).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let labels: Vec<usize> = rows
        .chunks(20)
        .map(|r| usize::from(r.iter().zip(&rule).map(|(a, b)| a * b).sum::<f64>() > 0.0))
        .collect();
    Data {
        input: Cpu::default().tensor_from_vec(rows, (n, Const::<20>)),
        targets: one_hot(&labels),
    }
}

impl FeatureL2 {
    fn new(planted: Planted) -> Self {
        let mut rng = SampleRng::seed_from_u64(7);
        Self {
            train: data(64, &mut rng),
            val: data(32, &mut rng),
            planted,
        }
    }

    /// `exp(x_j)` per entry of the first layer's weight (16 × 20): column j gets `exp(x_j)`.
    fn coefficients(&self, x: &LogL2, taped: bool) -> Taped<Rank2<16, 20>, f64> {
        let c = if taped {
            x.retaped::<Tp<f64>>().exp()
        } else {
            x.clone().exp().retaped::<Tp<f64>>()
        };
        c.broadcast::<Rank2<16, 20>, _>()
    }
}

impl BilevelProblem<f64> for FeatureL2 {
    type X = LogL2;
    type Y = Mlp;
    type UpperBatch = Data;
    type LowerBatch = Data;
    fn sample_upper(&mut self, _: &mut SampleRng) -> Data {
        self.val.clone()
    }
    fn sample_lower(&mut self, _: &mut SampleRng) -> Data {
        self.train.clone()
    }
    fn upper_loss(&self, _: &LogL2, y: &Mlp, b: &Data) -> Taped<Rank0, f64> {
        loss(y, b.input.retaped::<Tp<f64>>(), &b.targets, None)
    }
    /// `CE + ½ Σ_j exp(x_j) ‖W₁[:, j]‖² + ½ 10⁻³ ‖y‖²`.
    fn lower_loss(&self, x: &LogL2, y: &Mlp, b: &Data) -> Taped<Rank0, f64> {
        let w = y.0.weight.retaped::<Tp<f64>>();
        let features = (w.square() * self.coefficients(x, true)).sum() * 0.5;
        loss(y, b.input.retaped::<Tp<f64>>(), &b.targets, None)
            + features
            + l2_penalty(&FixedL2(1e-3), y)
    }
    fn write_lower_grad_y(&self, x: &LogL2, y: &Mlp, b: &Data, grad: &mut WrittenGrad<f64>) {
        if self.planted != Planted::ForgottenDataTerm {
            add_loss_gradient(y, b.input.retaped::<Tp<f64>>(), &b.targets, None, grad);
        }
        let c = self.coefficients(x, self.planted != Planted::UntapedX);
        let term = y.0.weight.retaped::<Tp<f64>>() * c;
        let term = if self.planted == Planted::HalfFactor {
            term * 0.5
        } else {
            term
        };
        grad.add(&y.0.weight, term);
        add_l2_gradient(&FixedL2(1e-3), y, grad);
    }
}

fn point() -> (LogL2, Mlp) {
    let dev = Cpu::seed_from_u64(3);
    let x: LogL2 = dev.sample_uniform();
    (x * 0.5, dev.build_module::<Arch, f64>())
}

fn check(planted: Planted) -> bilevel_optim::check::CheckReport {
    let (x, y) = point();
    let mut problem = FeatureL2::new(planted);
    check_problem(&mut problem, &x, &y, &CheckConfig::for_precision::<f64>())
}

const Y_TENSORS: [&str; 4] = ["y.0.weight", "y.0.bias", "y.2.weight", "y.2.bias"];

#[test]
fn the_correct_problem_passes_every_comparison() {
    let report = check(Planted::None);
    assert!(report.passed(), "{report}");
    assert_eq!(report.inconclusive().count(), 0, "{report}");
    // Every kind of comparison ran: 4 tensors of y for the gradient, H·v and both losses; the one
    // tensor of x for J·v and both losses; the symmetry.
    let count = |q| report.findings.iter().filter(|f| f.quantity == q).count();
    assert_eq!(count(Quantity::WrittenGradient), 4);
    assert_eq!(count(Quantity::Hvp), 4);
    assert_eq!(count(Quantity::Jvp), 1);
    assert_eq!(count(Quantity::Symmetry), 1);
    assert_eq!(count(Quantity::LowerLoss), 5);
    assert_eq!(count(Quantity::UpperLoss), 5);
    // The errors are at rounding level, an order below the tolerances.
    for f in &report.findings {
        assert!(f.error < 0.1 * f.tolerance, "{f}");
    }
}

#[test]
fn a_dropped_factor_is_named_on_its_tensor() {
    let report = check(Planted::HalfFactor);
    assert!(!report.passed());
    assert_eq!(
        report.fault_for("y.0.weight"),
        Some(Fault::GradientWrong),
        "{report}"
    );
    for tensor in &Y_TENSORS[1..] {
        assert_eq!(report.fault_for(tensor), None, "{tensor}: {report}");
    }
}

#[test]
fn a_forgotten_data_term_is_named_on_every_tensor_it_feeds() {
    let report = check(Planted::ForgottenDataTerm);
    for tensor in Y_TENSORS {
        assert_eq!(
            report.fault_for(tensor),
            Some(Fault::GradientWrong),
            "{tensor}: {report}"
        );
    }
    let bias = report
        .faults()
        .find(|f| f.tensor == "y.2.bias")
        .expect("a fault on y.2.bias");
    assert!(bias.error > 0.5, "{bias}");
}

#[test]
fn x_without_its_tape_is_named_as_a_zero_cross_product() {
    let report = check(Planted::UntapedX);
    // The gradient's value is right, so only the cross product can show the fault.
    assert!(report
        .findings
        .iter()
        .filter(|f| f.quantity == Quantity::WrittenGradient)
        .all(|f| f.verdict == Verdict::Passed));
    let jvp = report
        .findings
        .iter()
        .find(|f| f.quantity == Quantity::Jvp)
        .expect("a J·v comparison");
    assert_eq!(jvp.verdict, Verdict::Fault(Fault::JvpZero), "{report}");
    assert!(jvp.diagnosis.contains("without its tape"), "{jvp}");
}

#[test]
fn the_first_second_order_call_refuses_a_problem_with_a_zero_cross_product() {
    let (mut x, mut y) = point();
    let mut oracles = Oracles::new(FeatureL2::new(Planted::UntapedX), 0);
    oracles.check_on_first_use(true);
    let mut method = BoRep::new(BoRepConfig::default(), &x, &y).expect("valid configuration");
    let err = method
        .step(&mut oracles, &mut x, &mut y)
        .expect_err("the check stops the run");
    let BilevelError::ProblemCheck(text) = &err else {
        panic!("expected a check failure, got {err}");
    };
    assert!(text.contains("J·v") && text.contains("JvpZero"), "{text}");

    // The same run on the correct problem goes through, with the check's report kept.
    let (mut x, mut y) = point();
    let mut oracles = Oracles::new(FeatureL2::new(Planted::None), 0);
    oracles.check_on_first_use(true);
    let mut method = BoRep::new(BoRepConfig::default(), &x, &y).expect("valid configuration");
    method.step(&mut oracles, &mut x, &mut y).expect("a step");
    assert!(oracles.first_use_report().expect("the check ran").passed());
}

#[test]
fn checking_does_not_change_the_trajectory() {
    let run = |on: bool| {
        let (mut x, mut y) = point();
        let mut oracles = Oracles::new(FeatureL2::new(Planted::None), 0);
        oracles.check_on_first_use(on);
        let mut method = BoRep::new(BoRepConfig::default(), &x, &y).expect("valid configuration");
        for _ in 0..3 {
            method.step(&mut oracles, &mut x, &mut y).expect("a step");
        }
        (x.as_vec(), oracles.counts())
    };
    assert_eq!(run(true), run(false));
}
