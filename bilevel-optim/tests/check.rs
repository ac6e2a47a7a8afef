//! The checker on a small problem with one planted fault per kind, in f64 and f32, and on the
//! closed-form problems, which must pass.

use bilevel_optim::check::{check_problem, CheckConfig, CheckReport, Fault, Quantity};
use bilevel_optim::params::Params;
use bilevel_optim::problem::{Batch, BilevelProblem, SampleRng, Taped, Tp};
use bilevel_optim::problems::*;
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::prelude::*;
use dfdx::tensor_ops::{add, mul};

type X<E> = Tensor<Rank1<2>, E, Cpu>;
type Y<E> = (Tensor<Rank1<2>, E, Cpu>, Tensor<Rank1<2>, E, Cpu>);

/// `g = ½ Σ e^{x_i} y0_i² + ½ ‖y1‖² + 0.3 ⟨y0, y1⟩ + ⟨x, y1⟩`, `f = ⟨1, y0⟩ + ½ ‖y1‖² + ½ ‖x‖²`;
/// `mode` plants one fault.
struct Planted {
    mode: &'static str,
}
struct Unit;
impl Batch for Unit {
    fn size(&self) -> usize {
        1
    }
}

fn t<E: Real, S: Shape>(a: &Tensor<S, E, Cpu>) -> Taped<S, E>
where
    Cpu: Device<E>,
{
    a.retaped::<Tp<E>>()
}

impl<E: Real> BilevelProblem<E> for Planted
where
    Cpu: Device<E>,
{
    type X = X<E>;
    type Y = Y<E>;
    type UpperBatch = Unit;
    type LowerBatch = Unit;
    fn sample_upper(&mut self, _: &mut SampleRng) -> Unit {
        Unit
    }
    fn sample_lower(&mut self, _: &mut SampleRng) -> Unit {
        Unit
    }
    fn upper_loss(&self, x: &X<E>, y: &Y<E>, _: &Unit) -> Taped<Rank0, E> {
        let y0 = if self.mode == "upper-loss-untaped-y" {
            t(&y.0.clone().exp().ln())
        } else {
            t(&y.0)
        };
        let half_squares = add(t(&y.1).square().sum(), t(x).square().sum()) * E::of(0.5);
        add(y0.sum(), half_squares)
    }
    fn lower_loss(&self, x: &X<E>, y: &Y<E>, _: &Unit) -> Taped<Rank0, E> {
        let xt = || {
            if self.mode == "lower-loss-untaped-x" {
                t(&(x.clone() * E::one()))
            } else {
                t(x)
            }
        };
        let curvature = mul(xt().exp(), t(&y.0).square()).sum() * E::of(0.5);
        let y1 = t(&y.1).square().sum() * E::of(0.5);
        let coupling = mul(t(&y.0), t(&y.1)).sum() * E::of(0.3);
        let linear = mul(xt(), t(&y.1)).sum();
        add(add(curvature, y1), add(coupling, linear))
    }
    fn write_lower_grad_y(&self, x: &X<E>, y: &Y<E>, _: &Unit, grad: &mut WrittenGrad<E>) {
        if self.mode == "untaped-y" {
            // y as constants (new tensors computed without a tape), x taped: J·v stays, H·v
            // vanishes. (A plain `y.0.clone()` keeps y.0's id, so a tape put on it still reaches y.)
            let (y0, y1) = (t(&(y.0.clone() * E::one())), t(&(y.1.clone() * E::one())));
            let (c0, c1) = (
                t(&(y.0.clone() * E::of(0.3))),
                t(&(y.1.clone() * E::of(0.3))),
            );
            grad.set(&y.0, add(mul(t(x).exp(), y0), c1));
            grad.set(&y.1, add(add(y1, c0), t(x)));
            return;
        }
        grad.set(&y.0, add(mul(t(x).exp(), t(&y.0)), t(&y.1) * E::of(0.3)));
        let g1 = match self.mode {
            "missing" => return,
            "asymmetric" => add(add(t(&y.1), t(&y.0) * E::of(0.6)), t(x)),
            _ => add(add(t(&y.1), t(&y.0) * E::of(0.3)), t(x)),
        };
        grad.set(&y.1, g1);
    }
}

fn check<E: Real>(mode: &'static str) -> CheckReport
where
    Cpu: Device<E>,
{
    check_point::<E>(mode, [0.7, -1.1], [0.5, 0.9])
}

/// The check at x = (0.2, −0.4) and y = (y0, y1).
fn check_point<E: Real>(mode: &'static str, y0: [f64; 2], y1: [f64; 2]) -> CheckReport
where
    Cpu: Device<E>,
{
    let dev = Cpu::default();
    let x: X<E> = dev.tensor([E::of(0.2), E::of(-0.4)]);
    let y: Y<E> = (dev.tensor(y0.map(E::of)), dev.tensor(y1.map(E::of)));
    let config = CheckConfig::for_precision::<E>();
    check_problem(&mut Planted { mode }, &x, &y, &config)
}

/// At a stationary y (a converged run) both gradients are rounding noise (dfdx's and the written
/// one differ there by 1e-17): that is not a fault, and a wrong term is still named there.
#[test]
fn at_a_stationary_point_rounding_is_no_fault_and_a_wrong_term_still_is() {
    let mut quadratic = Quadratic::<f64, 3, 4>::new(QuadraticConfig::default());
    let dev = Cpu::default();
    let at = [0.3, -0.2, 0.5];
    let x: Tensor<Rank1<3>, f64, Cpu> = dev.tensor(at);
    let y_star = quadratic.y_star(&at);
    let y: Tensor<Rank1<4>, f64, Cpu> = dev.tensor([y_star[0], y_star[1], y_star[2], y_star[3]]);
    let report = check_problem(&mut quadratic, &x, &y, &CheckConfig::for_precision::<f64>());
    assert!(report.passed(), "{report}");

    // ∇_y G = 0 for the planted problem: e^x ⊙ y0 + 0.3 y1 = 0 and y1 + 0.3 y0 + x = 0.
    let x = [0.2f64, -0.4];
    let y0 = x.map(|x| 0.3 * x / (x.exp() - 0.09));
    let y1 = [-x[0] - 0.3 * y0[0], -x[1] - 0.3 * y0[1]];
    let report = check_point::<f64>("ok", y0, y1);
    assert!(report.passed(), "{report}");
    let report = check_point::<f64>("asymmetric", y0, y1);
    assert!(
        report.faults().any(|f| f.tensor == "y.1"
            && f.verdict == bilevel_optim::check::Verdict::Fault(Fault::GradientWrong)),
        "{report}"
    );
}

#[test]
fn the_correct_problem_passes_in_f64_and_f32() {
    let report = check::<f64>("ok");
    assert!(report.passed(), "{report}");
    assert_eq!(report.inconclusive().count(), 0, "{report}");
    let report = check::<f32>("ok");
    assert!(report.passed(), "{report}");
    assert_eq!(report.inconclusive().count(), 0, "{report}");
}

#[test]
fn each_planted_fault_is_named_in_f64_and_f32() {
    fn named<E: Real>(mode: &'static str, tensor: &str, kind: Fault)
    where
        Cpu: Device<E>,
    {
        let report = check::<E>(mode);
        assert!(
            report
                .faults()
                .any(|f| f.tensor == tensor
                    && f.verdict == bilevel_optim::check::Verdict::Fault(kind)),
            "{mode}: expected {kind:?} on '{tensor}':\n{report}"
        );
    }
    for (mode, tensor, kind) in [
        ("missing", "y.1", Fault::ComponentMissing),
        ("asymmetric", "y", Fault::HessianAsymmetric),
        ("asymmetric", "y.1", Fault::GradientWrong),
        ("untaped-y", "y.0", Fault::HvpZero),
        ("untaped-y", "y.1", Fault::HvpZero),
        ("lower-loss-untaped-x", "x", Fault::LossUntaped),
        ("upper-loss-untaped-y", "y.0", Fault::LossUntaped),
    ] {
        named::<f64>(mode, tensor, kind);
        named::<f32>(mode, tensor, kind);
    }
}

#[test]
fn an_untaped_loss_is_reported_on_the_loss_not_on_the_written_gradient() {
    let report = check::<f64>("lower-loss-untaped-x");
    let faults: Vec<_> = report.faults().collect();
    assert_eq!(faults.len(), 1, "{report}");
    assert_eq!(faults[0].quantity, Quantity::LowerLoss);
    assert!(faults[0].diagnosis.contains("without its tape"));
}

/// Every closed-form problem of the library passes, in both precisions, at a random point.
#[test]
fn the_closed_form_problems_pass() {
    fn passes<E: Real, P: BilevelProblem<E>>(mut problem: P, x: &P::X, y: &P::Y, what: &str)
    where
        Cpu: Device<E>,
    {
        let report = check_problem(&mut problem, x, y, &CheckConfig::for_precision::<E>());
        assert!(report.passed(), "{what}:\n{report}");
    }
    fn point<E: Real, T: Params<E>>(like: &T, seed: u64) -> T
    where
        Cpu: Device<E>,
    {
        let mut out = like.zeros_like();
        let values: Vec<E> = (0..like.num_params())
            .map(|i| E::of(((i as f64 + 1.0) * 0.37 + seed as f64).sin() * 0.5))
            .collect();
        out.set_flat(&values).expect("same length");
        out
    }
    fn all<E: Real>(precision: &str)
    where
        Cpu: Device<E>,
    {
        let dev = Cpu::default();
        let quadratic = Quadratic::<E, 3, 4>::new(QuadraticConfig {
            grad_noise: 0.1,
            hessian_noise: 0.1,
            upper_noise: 0.1,
            batch_size: 4,
            ..Default::default()
        });
        let (x, y) = (point(&dev.zeros(), 1), point(&dev.zeros(), 2));
        passes(quadratic, &x, &y, &format!("quadratic {precision}"));
        let ridge = Ridge::<E, Tensor<Rank1<4>, E, Cpu>, 4>::synthetic(RidgeConfig::default());
        let (x, y) = (point(&dev.zeros(), 3), point(&dev.zeros(), 4));
        passes(ridge, &x, &y, &format!("ridge {precision}"));
        let reweighting = LogisticReweighting::<E, 12, 3>::synthetic(ReweightingConfig::default());
        let (x, y) = (point(&dev.zeros(), 5), point(&dev.zeros(), 6));
        passes(reweighting, &x, &y, &format!("reweighting {precision}"));
    }
    all::<f64>("f64");
    all::<f32>("f32");
}
