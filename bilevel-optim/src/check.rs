//! A diagnostic for a user's problem: is the written `∇_y G` right, and are the exact products
//! built from it right?
//!
//! A hand-written lower gradient can be wrong in ways no run shows: a dropped factor, a forgotten
//! data term, or `x` brought in without its tape (`x.clone().exp()`), which makes `J·v ≡ 0` while
//! the validation loss still falls because `y` trains. [`check_problem`] compares, at one point
//! and per tensor:
//! - the written `∇_y G` with dfdx's autodiff of `lower_loss` (relative error);
//! - `H·v` with central differences of autodiff `∇_y G` along a random direction `v`;
//! - `⟨u, J·v⟩` for each tensor of `x` with central differences of `⟨v, ∇_y G⟩` along `u`
//!   (which needs no tape on `x` in `lower_loss`, so it catches a missing tape anywhere);
//! - the symmetry `⟨u, H·v⟩ = ⟨v, H·u⟩`;
//! - dfdx's gradients of `lower_loss` and `upper_loss` against differences of their values, which
//!   catches a variable used without its tape in a loss.
//!
//! Each difference is taken at two steps and extrapolated (Richardson), so it is accurate to the
//! fourth order; when the two steps disagree with each other the point is near a kink (ReLU, max)
//! and the comparison is reported as inconclusive instead of as a fault.
//!
//! Finite differences live in this module only: it is a diagnostic, never an estimator. The
//! passes it runs are uncounted and draw no batch from the oracles, so checking a run does not
//! change its trajectory. [`crate::oracles::Oracles`] runs [`check_at`] at its first second-order
//! call in debug builds (and in release when asked).

use std::fmt;

use dfdx::prelude::{AsArray, Cpu, Device};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::error::BilevelError;
use crate::linalg::{add_scaled, dot, norm};
use crate::params::Params;
use crate::passes::{lower_grad_pass, upper_pass, written_second_order_pass};
use crate::problem::{BilevelProblem, SampleRng};
use crate::problems::as_f64;
use crate::real::Real;
use crate::written_grad::WrittenGrad;

/// Tolerances and steps of a check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    /// Largest relative error of the comparisons between exact values, which only rounding
    /// separates: the written `∇_y G` against dfdx's autodiff (per tensor), and the asymmetry
    /// `⟨u, Hv⟩ − ⟨v, Hu⟩`.
    pub exact_tolerance: f64,
    /// Largest relative error between an exact product and its central differences.
    pub difference_tolerance: f64,
    /// Largest relative error between dfdx's gradient of a loss along a direction and the
    /// differences of the loss's values. Looser than the products': a loss's value is rounded at
    /// the scale of its largest terms, which far from a solution can dwarf its derivative, and the
    /// fault this comparison is for (a variable used without its tape) drops a whole term.
    pub loss_tolerance: f64,
    /// The larger central-difference step, relative to `max(1, ‖variable‖)` along a unit
    /// direction; the smaller is half of it.
    pub step: f64,
    /// Seed of the random directions (and of the batches [`check_problem`] draws).
    pub seed: u64,
    /// The losses are compared along one direction per tensor (four loss evaluations each) when
    /// a variable has at most this many tensors, else along one direction over all of them (a
    /// model of 400 task heads would need 9,600 evaluations).
    pub max_loss_directions: usize,
}

impl CheckConfig {
    /// Tolerances that fit the element type. In `f64` they are tight: rounding is far below
    /// any fault. In `f32` the exact comparisons ([`CheckConfig::exact_tolerance`])
    /// stay tight, but differences only judge gross faults (a dropped tape, a term left off a
    /// tape): a model with max-pooling or ReLU is rough at the scale of any step `f32` allows,
    /// and its differences miss the exact products by a few percent. Check in `f64` for a tight
    /// comparison of the products.
    pub fn for_precision<E: Real>() -> Self {
        if E::epsilon().f64() < 1e-10 {
            Self {
                exact_tolerance: 1e-8,
                difference_tolerance: 1e-6,
                loss_tolerance: 1e-3,
                step: 1e-6,
                seed: 0,
                max_loss_directions: 32,
            }
        } else {
            Self {
                exact_tolerance: 1e-3,
                difference_tolerance: 0.2,
                loss_tolerance: 0.2,
                step: 1e-2,
                seed: 0,
                max_loss_directions: 32,
            }
        }
    }
}

/// What a finding compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// The written `∇_y G`: its structure (every tensor of y once) and its value against autodiff.
    WrittenGradient,
    /// `∇²_yy G·v` against differences of autodiff `∇_y G`.
    Hvp,
    /// `⟨u, ∇²_xy G·v⟩` against differences of `⟨v, ∇_y G⟩` along `u`.
    Jvp,
    /// `⟨u, H v⟩ = ⟨v, H u⟩`.
    Symmetry,
    /// dfdx's gradient of `lower_loss` against differences of its values.
    LowerLoss,
    /// dfdx's gradient of `upper_loss` against differences of its values.
    UpperLoss,
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::WrittenGradient => "written ∇_y G",
            Self::Hvp => "H·v",
            Self::Jvp => "J·v",
            Self::Symmetry => "symmetry of H",
            Self::LowerLoss => "autodiff of lower_loss",
            Self::UpperLoss => "autodiff of upper_loss",
        })
    }
}

/// The kind of a fault, so a test or a program can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A tensor of y got no component (or a component was given twice, or for a tensor not in y).
    ComponentMissing,
    /// The written component differs from dfdx's autodiff of the lower loss.
    GradientWrong,
    /// `H·v` is zero where differences are not: y reaches the written gradient without a tape.
    HvpZero,
    /// `H·v` differs from differences of the gradient.
    HvpWrong,
    /// `J·v` is zero where differences are not: x reaches the written gradient without a tape.
    JvpZero,
    /// `J·v` differs from differences of the gradient.
    JvpWrong,
    /// `⟨u, Hv⟩ ≠ ⟨v, Hu⟩`: the written gradient is not the gradient of any function.
    HessianAsymmetric,
    /// A loss's autodiff gradient misses how the loss changes with a tensor (used without tape).
    LossUntaped,
    /// A value is NaN or infinite at the checked point.
    NonFinite,
}

/// The outcome of one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The exact and the independent values agree within the tolerance.
    Passed,
    /// They disagree, and the differences are stable enough to say so: a fault of this kind.
    Fault(Fault),
    /// The differences are unstable here (a kink such as ReLU or max): nothing can be concluded.
    Inconclusive,
}

/// One comparison of the check.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// What was compared.
    pub quantity: Quantity,
    /// The tensor compared: `x` or `y` followed by dfdx's name of the tensor (`"y.0.weight"`;
    /// `"x"` alone when x is a single tensor).
    pub tensor: String,
    /// The relative error measured (NaN where none could be computed).
    pub error: f64,
    /// The largest relative error that passes.
    pub tolerance: f64,
    /// Passed, a fault, or inconclusive.
    pub verdict: Verdict,
    /// What the numbers suggest, for a fault or an inconclusive comparison.
    pub diagnosis: String,
}

/// Every comparison of a check, in the order they were made.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckReport {
    /// One finding per comparison, in the order they were made.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// No fault (inconclusive comparisons do not count as faults).
    pub fn passed(&self) -> bool {
        self.faults().next().is_none()
    }

    /// The findings that are faults.
    pub fn faults(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| matches!(f.verdict, Verdict::Fault(_)))
    }

    /// The fault found for `tensor`, if any (the first one).
    pub fn fault_for(&self, tensor: &str) -> Option<Fault> {
        self.faults()
            .filter(|f| f.tensor == tensor)
            .find_map(|f| match f.verdict {
                Verdict::Fault(k) => Some(k),
                _ => None,
            })
    }

    /// Whether some finding is a fault of `kind`.
    pub fn has(&self, kind: Fault) -> bool {
        self.faults().any(|f| f.verdict == Verdict::Fault(kind))
    }

    /// The comparisons that could not conclude.
    pub fn inconclusive(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.verdict == Verdict::Inconclusive)
    }

    /// Whether the checked point itself was not finite (a loss or gradient there is NaN or
    /// infinite), so nothing about the problem could be judged.
    pub fn point_not_finite(&self) -> bool {
        self.faults()
            .any(|f| f.tensor == "(point)" && f.verdict == Verdict::Fault(Fault::NonFinite))
    }

    /// `Ok(self)` without faults, else [`BilevelError::ProblemCheck`] listing every fault.
    pub fn into_result(self) -> Result<Self, BilevelError> {
        if self.passed() {
            Ok(self)
        } else {
            let faults: Vec<String> = self.faults().map(|f| f.to_string()).collect();
            Err(BilevelError::ProblemCheck(faults.join("\n")))
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Passed => "ok".to_string(),
            Verdict::Fault(k) => format!("FAULT ({k:?})"),
            Verdict::Inconclusive => "inconclusive".to_string(),
        };
        write!(
            f,
            "{verdict:<26} {:<24} '{}': relative error {:.2e} (tolerance {:.0e})",
            self.quantity.to_string(),
            self.tensor,
            self.error,
            self.tolerance
        )?;
        if !self.diagnosis.is_empty() {
            write!(f, "\n    {}", self.diagnosis)?;
        }
        Ok(())
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        let faults = self.faults().count();
        let open = self.inconclusive().count();
        write!(
            f,
            "{} comparisons: {} passed, {faults} faults, {open} inconclusive",
            self.findings.len(),
            self.findings.len() - faults - open
        )
    }
}

/// Draws one lower and one upper batch (lower first, as meta-learning problems reuse the lower
/// tasks) from a generator seeded with `config.seed`, and checks the problem at (x, y) on them.
pub fn check_problem<E: Real, P: BilevelProblem<E>>(
    problem: &mut P,
    x: &P::X,
    y: &P::Y,
    config: &CheckConfig,
) -> CheckReport
where
    Cpu: Device<E>,
{
    let mut rng = SampleRng::seed_from_u64(config.seed);
    let lower = problem.sample_lower(&mut rng);
    let upper = problem.sample_upper(&mut rng);
    check_at(problem, x, y, &lower, Some(&upper), config)
}

/// Checks the problem at (x, y) on the given batches; see the module documentation. Without an
/// upper batch, the upper loss is not checked.
pub fn check_at<E: Real, P: BilevelProblem<E>>(
    problem: &P,
    x: &P::X,
    y: &P::Y,
    lower: &P::LowerBatch,
    upper: Option<&P::UpperBatch>,
    config: &CheckConfig,
) -> CheckReport
where
    Cpu: Device<E>,
{
    let mut check = Checker {
        problem,
        x,
        y,
        lower,
        config,
        rng: SampleRng::seed_from_u64(config.seed ^ 0x5eed_c4ec),
        eps: E::epsilon().f64(),
        report: CheckReport::default(),
    };
    check.run(upper);
    check.report
}

struct Checker<'a, E: Real, P: BilevelProblem<E>>
where
    Cpu: Device<E>,
{
    problem: &'a P,
    x: &'a P::X,
    y: &'a P::Y,
    lower: &'a P::LowerBatch,
    config: &'a CheckConfig,
    rng: SampleRng,
    /// The element type's machine epsilon, for the rounding floor of differences.
    eps: f64,
    report: CheckReport,
}

/// A central difference at two steps `h` and `h/2`: `d1`, `d2`, and the extrapolation
/// `(4 d2 − d1)/3`, accurate to O(h⁴).
struct Differences {
    coarse: Vec<f64>,
    fine: Vec<f64>,
    extrapolated: Vec<f64>,
}

impl<E: Real, P: BilevelProblem<E>> Checker<'_, E, P>
where
    Cpu: Device<E>,
{
    fn run(&mut self, upper: Option<&P::UpperBatch>) {
        let autodiff = lower_grad_pass(self.problem, self.x, self.y, self.lower);
        if !self.finite("lower_loss", autodiff.value.f64(), &[&as_f64(&autodiff.dy)]) {
            return;
        }
        let grad_y = as_f64(&autodiff.dy);
        let (v, u) = (self.unit_direction(self.y), self.unit_direction(self.y));
        let terms = self.term_scale(&v);
        if !self.written_gradient(&grad_y, &terms) {
            return;
        }
        let products = (
            written_second_order_pass(self.problem, self.x, self.y, &v, self.lower),
            written_second_order_pass(self.problem, self.x, self.y, &u, self.lower),
        );
        let (Ok(at_v), Ok(at_u)) = products else {
            return; // the structural check above would have failed first
        };
        let (hv, jv, hu) = (as_f64(&at_v.hvp), as_f64(&at_v.jvp), as_f64(&at_u.hvp));
        if !self.finite("the second-order pass", 0.0, &[&hv, &jv, &hu]) {
            return;
        }
        self.hessian_vector(&v, &hv, &grad_y);
        self.symmetry(&as_f64(&v), &hv, &as_f64(&u), &hu);
        let value = autodiff.value.f64();
        self.cross_products(&v, &jv, &as_f64(&autodiff.dx), norm(&grad_y), value);
        let (problem, x, y, lower) = (self.problem, self.x, self.y, self.lower);
        let lower_value = |y: &P::Y| problem.lower_loss(x, y, lower).array().f64();
        self.loss_along(Quantity::LowerLoss, "y", y, &grad_y, value, &lower_value);
        if let Some(upper) = upper {
            let up = upper_pass(problem, x, y, upper);
            let (dx, dy) = (as_f64(&up.dx), as_f64(&up.dy));
            if !self.finite("upper_loss", up.value.f64(), &[&dx, &dy]) {
                return;
            }
            let upper_value = |x: &P::X, y: &P::Y| problem.upper_loss(x, y, upper).array().f64();
            let f = up.value.f64();
            self.loss_along(Quantity::UpperLoss, "y", y, &dy, f, &|y| upper_value(x, y));
            self.loss_along(Quantity::UpperLoss, "x", x, &dx, f, &|x| upper_value(x, y));
        }
    }

    /// The size of the terms the lower gradient sums, as a flat vector over y: the autodiff
    /// gradient one step `s = max(1, ‖y‖)` away along `v`, of the order of `s‖H v‖`. Both
    /// gradients round relative to their terms, not to their sum, so at a stationary y (a
    /// converged run), where the gradient itself is rounding noise, the comparison is judged
    /// against this; elsewhere it is of the gradient's own order and changes little. Zero where
    /// it is not finite.
    fn term_scale(&self, v: &P::Y) -> Vec<f64> {
        let mut shifted = self.y.duplicate();
        shifted.add_scaled(E::of(self.y.norm().f64().max(1.0)), v);
        let terms = as_f64(&lower_grad_pass(self.problem, self.x, &shifted, self.lower).dy);
        terms
            .into_iter()
            .map(|t| if t.is_finite() { t } else { 0.0 })
            .collect()
    }

    /// Structure (every tensor once) and value of the written gradient, per tensor of y, judged
    /// relative to the larger of the two gradients and the size of their terms (`terms`).
    /// Returns whether the gradient is well-formed and finite, so the products can be checked.
    fn written_gradient(&mut self, autodiff: &[f64], terms: &[f64]) -> bool {
        let mut grad = WrittenGrad::new(self.y, None);
        self.problem
            .write_lower_grad_y(self.x, self.y, self.lower, &mut grad);
        let missing = grad.missing_components();
        let misuses = grad.misuses().to_vec();
        for tensor in &missing {
            self.push(
                Quantity::WrittenGradient,
                &label("y", tensor),
                f64::NAN,
                0.0,
                Verdict::Fault(Fault::ComponentMissing),
                "write_lower_grad_y gave this tensor of y no component: set it, add its terms, or \
                 declare it zero with grad.zero(..)"
                    .into(),
            );
        }
        for misuse in &misuses {
            self.push(
                Quantity::WrittenGradient,
                "y",
                f64::NAN,
                0.0,
                Verdict::Fault(Fault::ComponentMissing),
                misuse.clone(),
            );
        }
        if !missing.is_empty() || !misuses.is_empty() {
            return false;
        }
        let Ok(written) = grad.into_value(self.y) else {
            return false;
        };
        let values = as_f64(&written);
        if !self.finite("the written gradient", 0.0, &[&values]) {
            return false;
        }
        let tol = self.config.exact_tolerance;
        for (name, span) in labelled("y", self.y) {
            let floor = norm(&terms[span.clone()]);
            let (w, a) = (&values[span.clone()], &autodiff[span]);
            let error = relative(w, a, floor);
            let (verdict, diagnosis) = if error <= tol {
                (Verdict::Passed, String::new())
            } else {
                (
                    Verdict::Fault(Fault::GradientWrong),
                    explain_gradient_mismatch(w, a),
                )
            };
            self.push(
                Quantity::WrittenGradient,
                &name,
                error,
                tol,
                verdict,
                diagnosis,
            );
        }
        true
    }

    /// `H·v` per tensor of y against differences of autodiff `∇_y G` along v.
    fn hessian_vector(&mut self, v: &P::Y, hv: &[f64], grad: &[f64]) {
        let h = self.config.step * self.y.norm().f64().max(1.0);
        let gradient_at = |s: f64| {
            let mut ys = self.y.duplicate();
            ys.add_scaled(E::of(s), v);
            as_f64(&lower_grad_pass(self.problem, self.x, &ys, self.lower).dy)
        };
        let d = differences(h, gradient_at);
        let tol = self.config.difference_tolerance;
        for (name, span) in labelled("y", self.y) {
            let floor = self.rounding_floor(norm(&grad[span.clone()]), h);
            let (exact, fd) = (&hv[span.clone()], &d.extrapolated[span.clone()]);
            let error = relative(exact, fd, floor);
            let unstable = unsettled(&d.coarse[span.clone()], &d.fine[span], floor, error, tol);
            let (verdict, diagnosis) = if error <= tol {
                (Verdict::Passed, String::new())
            } else if norm(exact) <= 1e-3 * norm(fd) && !unstable {
                (
                    Verdict::Fault(Fault::HvpZero),
                    format!(
                        "H·v is zero here but differences of dfdx's gradient give a norm of {:.3e}: \
                         y (or a value computed from it) enters write_lower_grad_y without its \
                         tape, or a taped value was dropped instead of merged (grad.keep_tape)",
                        norm(fd)
                    ),
                )
            } else if unstable {
                (Verdict::Inconclusive, KINK.into())
            } else {
                (
                    Verdict::Fault(Fault::HvpWrong),
                    "H·v disagrees with differences of dfdx's gradient: part of the written \
                     gradient's dependence on y is missing or wrong (see the written ∇_y G \
                     findings)"
                        .into(),
                )
            };
            self.push(Quantity::Hvp, &name, error, tol, verdict, diagnosis);
        }
    }

    fn symmetry(&mut self, v: &[f64], hv: &[f64], u: &[f64], hu: &[f64]) {
        let (uhv, vhu) = (dot(u, hv), dot(v, hu));
        let scale = 0.5 * (norm(hv) * norm(u) + norm(hu) * norm(v));
        let error = if scale > 0.0 {
            (uhv - vhu).abs() / scale
        } else {
            0.0
        };
        let tol = self.config.exact_tolerance;
        let (verdict, diagnosis) = if error <= tol {
            (Verdict::Passed, String::new())
        } else {
            (
                Verdict::Fault(Fault::HessianAsymmetric),
                format!(
                    "⟨u, Hv⟩ = {uhv:.6e} but ⟨v, Hu⟩ = {vhu:.6e}: the written gradient is not the \
                     gradient of any function of y"
                ),
            )
        };
        self.push(Quantity::Symmetry, "y", error, tol, verdict, diagnosis);
    }

    /// Per tensor of x: `⟨u, J v⟩` against differences of `⟨v, ∇_y G⟩` along u, and, from the
    /// same passes, dfdx's `∇_x G` against differences of G.
    fn cross_products(
        &mut self,
        v: &P::Y,
        jv: &[f64],
        grad_x: &[f64],
        grad_y_norm: f64,
        value: f64,
    ) {
        let v_flat = as_f64(v);
        let x0 = as_f64(self.x);
        let tol = self.config.difference_tolerance;
        for (name, span) in labelled("x", self.x) {
            let u = self.direction_on(
                &x0,
                span.clone(),
                &[&jv[span.clone()], &grad_x[span.clone()]],
            );
            let h = self.config.step * norm_on(&x0, &u).max(1.0);
            let at = |s: f64| {
                let xs = with_flat(self.x, &add_scaled(&x0, s, &u));
                let g = lower_grad_pass(self.problem, &xs, self.y, self.lower);
                vec![dot(&v_flat, &as_f64(&g.dy)), g.value.f64()]
            };
            let d = differences(h, at);
            // ⟨v, ∇_y G⟩ is rounded at the scale ‖v‖‖∇_y G‖.
            let inner_floor = self.rounding_floor(norm(&v_flat) * grad_y_norm, h);
            let exact = dot(&u, jv);
            let fd = d.extrapolated[0];
            let error = relative(&[exact], &[fd], inner_floor);
            let unstable = unsettled(&[d.coarse[0]], &[d.fine[0]], inner_floor, error, tol);
            let jv_norm = norm(&jv[span]);
            let (verdict, diagnosis) = if error <= tol {
                (Verdict::Passed, String::new())
            } else if jv_norm <= 1e-3 * fd.abs() && !unstable {
                (
                    Verdict::Fault(Fault::JvpZero),
                    format!(
                        "J·v is zero on this tensor of x, but ⟨v, ∇_y G⟩ changes with it at rate \
                         {fd:.3e}: x enters write_lower_grad_y without its tape (a constant such \
                         as x.clone().exp() instead of x.retaped::<Tp<E>>().exp())"
                    ),
                )
            } else if unstable {
                (Verdict::Inconclusive, KINK.into())
            } else {
                (
                    Verdict::Fault(Fault::JvpWrong),
                    format!(
                        "⟨u, J·v⟩ = {exact:.6e} but differences of ⟨v, ∇_y G⟩ give {fd:.6e}: the \
                         written gradient's dependence on this tensor of x is wrong"
                    ),
                )
            };
            self.push(Quantity::Jvp, &name, error, tol, verdict, diagnosis);
            let loss_diff = Differences {
                coarse: vec![d.coarse[1]],
                fine: vec![d.fine[1]],
                extrapolated: vec![d.extrapolated[1]],
            };
            self.loss_comparison(
                Quantity::LowerLoss,
                &name,
                "x",
                dot(&u, grad_x),
                &loss_diff,
                self.rounding_floor(value.abs(), h),
            );
        }
    }

    /// Per tensor of `at` (x or y, named `variable`): dfdx's gradient of a loss along a direction
    /// against differences of the loss's values.
    fn loss_along<T: Params<E>>(
        &mut self,
        quantity: Quantity,
        variable: &str,
        at: &T,
        grad: &[f64],
        value: f64,
        loss: &dyn Fn(&T) -> f64,
    ) {
        let t0 = as_f64(at);
        for (name, span) in self.loss_directions(variable, at) {
            let u = self.direction_on(&t0, span.clone(), &[&grad[span]]);
            let h = self.config.step * norm_on(&t0, &u).max(1.0);
            let d = differences(h, |s| vec![loss(&with_flat(at, &add_scaled(&t0, s, &u)))]);
            let floor = self.rounding_floor(value.abs(), h);
            self.loss_comparison(quantity, &name, variable, dot(&u, grad), &d, floor);
        }
    }

    fn loss_comparison(
        &mut self,
        quantity: Quantity,
        tensor: &str,
        variable: &str,
        exact: f64,
        d: &Differences,
        floor: f64,
    ) {
        let tol = self.config.loss_tolerance;
        let fd = d.extrapolated[0];
        let error = relative(&[exact], &[fd], floor);
        let unstable = unsettled(&d.coarse, &d.fine, floor, error, tol);
        let function = match quantity {
            Quantity::UpperLoss => "upper_loss",
            _ => "lower_loss",
        };
        let (verdict, diagnosis) = if error <= tol {
            (Verdict::Passed, String::new())
        } else if unstable {
            (Verdict::Inconclusive, KINK.into())
        } else {
            (
                Verdict::Fault(Fault::LossUntaped),
                format!(
                    "dfdx's gradient of {function} along a direction of this tensor of {variable} \
                     is {exact:.6e}, but the loss's values change at rate {fd:.6e}: {function} \
                     uses the tensor (or a value computed from it) without its tape"
                ),
            )
        };
        self.push(quantity, tensor, error, tol, verdict, diagnosis);
    }

    /// The spans the losses are compared on: each tensor, or all of them at once past
    /// [`CheckConfig::max_loss_directions`].
    fn loss_directions<T: Params<E>>(
        &self,
        variable: &str,
        t: &T,
    ) -> Vec<(String, std::ops::Range<usize>)> {
        let spans = labelled(variable, t);
        if spans.len() <= self.config.max_loss_directions {
            spans
        } else {
            let label = format!("{variable} (all {} tensors)", spans.len());
            vec![(label, 0..t.num_params())]
        }
    }

    /// A random unit direction over all of `like`'s tensors.
    fn unit_direction<T: Params<E>>(&mut self, like: &T) -> T {
        let values: Vec<f64> = (0..like.num_params())
            .map(|_| self.rng.sample::<f64, _>(StandardNormal))
            .collect();
        let n = norm(&values).max(f64::MIN_POSITIVE);
        with_flat(like, &values.iter().map(|a| a / n).collect::<Vec<_>>())
    }

    /// A unit direction supported on `span` of a flat vector of length `like.len()`: a random
    /// direction plus the unit directions of `towards` (so the exact quantities compared along
    /// it are of the order of their norms, never small by chance).
    fn direction_on(
        &mut self,
        like: &[f64],
        span: std::ops::Range<usize>,
        towards: &[&[f64]],
    ) -> Vec<f64> {
        let mut d: Vec<f64> = span
            .clone()
            .map(|_| self.rng.sample::<f64, _>(StandardNormal))
            .collect();
        let n = norm(&d).max(f64::MIN_POSITIVE);
        d.iter_mut().for_each(|a| *a /= n);
        for t in towards {
            let tn = norm(t);
            if tn > 0.0 && tn.is_finite() {
                d.iter_mut().zip(t.iter()).for_each(|(a, b)| *a += b / tn);
            }
        }
        let n = norm(&d).max(f64::MIN_POSITIVE);
        let mut out = vec![0.0; like.len()];
        out[span].iter_mut().zip(&d).for_each(|(o, a)| *o = a / n);
        out
    }

    /// Below this, a difference quotient with step `h` of values of magnitude `scale` is rounding.
    fn rounding_floor(&self, scale: f64, h: f64) -> f64 {
        100.0 * self.eps * scale / h
    }

    fn finite(&mut self, what: &str, value: f64, vectors: &[&[f64]]) -> bool {
        let ok = value.is_finite() && vectors.iter().all(|v| v.iter().all(|a| a.is_finite()));
        if !ok {
            self.push(
                Quantity::WrittenGradient,
                "(point)",
                f64::NAN,
                0.0,
                Verdict::Fault(Fault::NonFinite),
                format!("{what} is NaN or infinite at the checked point: check elsewhere"),
            );
        }
        ok
    }

    fn push(
        &mut self,
        quantity: Quantity,
        tensor: &str,
        error: f64,
        tolerance: f64,
        verdict: Verdict,
        diagnosis: String,
    ) {
        self.report.findings.push(Finding {
            quantity,
            tensor: tensor.to_string(),
            error,
            tolerance,
            verdict,
            diagnosis,
        });
    }
}

/// The tensors of `t` with their spans, named `"{variable}.{tensor}"`.
fn labelled<E: Real, T: Params<E>>(variable: &str, t: &T) -> Vec<(String, std::ops::Range<usize>)>
where
    Cpu: Device<E>,
{
    t.tensor_spans()
        .into_iter()
        .map(|(name, span)| (label(variable, &name), span))
        .collect()
}

fn label(variable: &str, tensor: &str) -> String {
    if tensor == "(tensor)" {
        variable.to_string()
    } else {
        format!("{variable}.{tensor}")
    }
}

const KINK: &str = "differences at two steps disagree with each other: the point is near a kink \
                    (ReLU, max, abs); check at another point or with a smaller step";

/// Central differences of `f` at steps `h` and `h/2`, extrapolated.
fn differences(h: f64, f: impl Fn(f64) -> Vec<f64>) -> Differences {
    let quotient = |h: f64| -> Vec<f64> {
        let (p, m) = (f(h), f(-h));
        p.iter().zip(&m).map(|(a, b)| (a - b) / (2.0 * h)).collect()
    };
    let (coarse, fine) = (quotient(h), quotient(h / 2.0));
    let extrapolated = coarse
        .iter()
        .zip(&fine)
        .map(|(c, f)| (4.0 * f - c) / 3.0)
        .collect();
    Differences {
        coarse,
        fine,
        extrapolated,
    }
}

/// Whether differences at the two steps disagree too much to judge an `error`: their spread
/// exceeds the tolerance, or is not far below the error (a fault shows as differences that agree
/// with each other and not with the exact value).
fn unsettled(coarse: &[f64], fine: &[f64], floor: f64, error: f64, tol: f64) -> bool {
    let spread = relative(coarse, fine, floor);
    spread > tol || 3.0 * spread >= error
}

/// What a written component that differs from autodiff most likely got wrong.
fn explain_gradient_mismatch(written: &[f64], autodiff: &[f64]) -> String {
    let (nw, na) = (norm(written), norm(autodiff));
    if na == 0.0 {
        return format!(
            "dfdx's gradient is zero but the written component has norm {nw:.3e}: lower_loss \
             does not depend on this tensor, or uses it without its tape"
        );
    }
    if nw == 0.0 {
        return format!(
            "the written component is zero but dfdx's gradient has norm {na:.3e}: a term is \
             missing (or the tensor was declared zero)"
        );
    }
    let c = dot(written, autodiff) / (na * na);
    let residual = relative(
        written,
        &autodiff.iter().map(|a| c * a).collect::<Vec<_>>(),
        0.0,
    );
    if residual < 1e-3 {
        format!(
            "the written component is {c:.6} × dfdx's gradient: a constant factor is wrong \
             (a ½, a mean instead of a sum, a sign)"
        )
    } else {
        format!(
            "norm {nw:.3e} against dfdx's {na:.3e}, cosine {:.4}: a term is missing or wrong",
            dot(written, autodiff) / (nw * na)
        )
    }
}

/// A copy of `like` (new tensor ids) holding `values`.
fn with_flat<E: Real, T: Params<E>>(like: &T, values: &[f64]) -> T
where
    Cpu: Device<E>,
{
    let mut out = like.duplicate();
    let values: Vec<E> = values.iter().map(|&a| E::of(a)).collect();
    out.set_flat(&values)
        .expect("a vector of the collection's length");
    out
}

/// The norm of `x` on the support of `u`.
fn norm_on(x: &[f64], u: &[f64]) -> f64 {
    x.iter()
        .zip(u)
        .filter(|(_, b)| **b != 0.0)
        .map(|(a, _)| a * a)
        .sum::<f64>()
        .sqrt()
}

/// `‖a − b‖ / max(‖a‖, ‖b‖, floor)`; 0 when both are 0.
fn relative(a: &[f64], b: &[f64], floor: f64) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let scale = norm(a).max(norm(b)).max(floor);
    if scale > 0.0 {
        diff / scale
    } else {
        0.0
    }
}
