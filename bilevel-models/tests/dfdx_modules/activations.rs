//! dfdx's activation modules as written layers, each between two `Linear`s: the written gradient
//! against dfdx's autodiff, H·v and J·v against finite differences, symmetry; each element-wise
//! module's f' and f'' against differences of dfdx's own forward; and a broken variant of each
//! that the checks catch.

use crate::broken::Detached;
use crate::common::*;
use bilevel_models::activations::{pointwise_backward, pointwise_forward, Pointwise};
use bilevel_models::layer::WrittenLayer;
use bilevel_models::tape::Held;
use bilevel_optim::problem::{Taped, Tp};
use bilevel_optim::written_grad::WrittenGrad;
#[allow(deprecated)]
use dfdx::nn::modules::GeLU;
use dfdx::nn::modules::{
    Abs, AccurateGeLU, Cos, Exp, FastGeLU, LeakyReLU, Linear, Ln, LogSoftmax, ReLU, Sigmoid, Sin,
    Softmax, Sqrt, Square, Tanh,
};
use dfdx::nn::{Module, ZeroSizedModule};
use dfdx::prelude::*;

const H: usize = 4;
/// `A` between two dense layers (5 features → 3 classes): four tensors.
type Between<A> = (Linear<5, H, f64, Cpu>, A, Linear<H, 3, f64, Cpu>);
/// `A` on positive inputs (for `Ln` and `Sqrt`).
type AfterSigmoid<A> = (Linear<5, H, f64, Cpu>, Sigmoid, A, Linear<H, 3, f64, Cpu>);

#[test]
#[allow(deprecated)]
fn every_activation_has_exact_products() {
    assert_dense_exact::<Between<ReLU>, 4>("ReLU");
    assert_dense_exact::<Between<LeakyReLU<f64>>, 4>("LeakyReLU");
    assert_dense_exact::<Between<FastGeLU>, 4>("FastGeLU");
    assert_dense_exact::<Between<GeLU>, 4>("GeLU");
    assert_dense_exact::<Between<AccurateGeLU>, 4>("AccurateGeLU");
    assert_dense_exact::<Between<Sigmoid>, 4>("Sigmoid");
    assert_dense_exact::<Between<Tanh>, 4>("Tanh");
    assert_dense_exact::<Between<Exp>, 4>("Exp");
    assert_dense_exact::<AfterSigmoid<Ln>, 4>("Ln");
    assert_dense_exact::<AfterSigmoid<Sqrt>, 4>("Sqrt");
    assert_dense_exact::<Between<Square>, 4>("Square");
    assert_dense_exact::<Between<Sin>, 4>("Sin");
    assert_dense_exact::<Between<Cos>, 4>("Cos");
    assert_dense_exact::<Between<Abs>, 4>("Abs");
    assert_dense_exact::<Between<Softmax>, 4>("Softmax");
    assert_dense_exact::<Between<LogSoftmax>, 4>("LogSoftmax");
}

/// f' and f'' of `activation` at `points` against central differences of dfdx's forward (f')
/// and of f' (f''), and the taped forward against the module's.
fn derivatives<A>(activation: A, points: &[f64], what: &str)
where
    A: Pointwise<f64> + Module<Tensor<Rank1<1>, f64, Cpu>, Output = Tensor<Rank1<1>, f64, Cpu>>,
{
    let dev = Cpu::default();
    let f = |x: f64| activation.forward(dev.tensor([x])).as_vec()[0];
    let h = 1e-5;
    for &x in points {
        let fd_slope = (f(x + h) - f(x - h)) / (2.0 * h);
        let fd_curvature = (activation.slope(x + h) - activation.slope(x - h)) / (2.0 * h);
        let (slope, curvature) = (activation.slope(x), activation.curvature(x));
        assert!(
            (slope - fd_slope).abs() <= 1e-8 * (1.0 + slope.abs()),
            "{what}: f'({x}) = {slope}, differences {fd_slope}"
        );
        assert!(
            (curvature - fd_curvature).abs() <= 1e-8 * (1.0 + curvature.abs()),
            "{what}: f''({x}) = {curvature}, differences {fd_curvature}"
        );
        let taped = activation.apply(dev.tensor([x]).retaped::<Tp<f64>>());
        assert_eq!(taped.as_vec()[0], f(x), "{what}: forward at {x}");
    }
}

#[test]
#[allow(deprecated)]
fn every_element_wise_activation_states_its_derivatives_right() {
    let points = [-2.3, -0.7, 0.4, 1.1, 2.9];
    let positive = [0.2, 0.9, 1.7, 3.2];
    derivatives(ReLU, &points, "ReLU");
    derivatives(LeakyReLU(0.05), &points, "LeakyReLU");
    derivatives(FastGeLU, &points, "FastGeLU");
    derivatives(GeLU, &points, "GeLU");
    derivatives(AccurateGeLU, &points, "AccurateGeLU");
    derivatives(Sigmoid, &points, "Sigmoid");
    derivatives(Exp, &points, "Exp");
    derivatives(Ln, &positive, "Ln");
    derivatives(Sqrt, &positive, "Sqrt");
    derivatives(Square, &points, "Square");
    derivatives(Sin, &points, "Sin");
    derivatives(Cos, &points, "Cos");
    derivatives(Abs, &points, "Abs");
}

/// Why `AccurateGeLU` runs this crate's op: dfdx 0.13's own gradient of it is off (the x·φ(x)
/// term √2 too large), while the layer's matches differences of dfdx's values.
#[test]
fn dfdx_accurate_gelu_gradient_is_wrong_and_the_layers_is_right() {
    let dev = Cpu::default();
    let x: Tensor<Rank1<1>, f64, Cpu> = dev.tensor([1.0]);
    let theirs = x.leaky_trace().accurate_gelu().sum().backward();
    let ours = AccurateGeLU.apply(x.retaped::<Tp<f64>>()).sum().backward();
    let f = |v: f64| dev.tensor([v]).accurate_gelu().as_vec()[0];
    let fd = (f(1.0 + 1e-6) - f(1.0 - 1e-6)) / 2e-6;
    let (theirs, ours) = (theirs.get(&x).as_vec()[0], ours.get(&x).as_vec()[0]);
    assert!((ours - fd).abs() < 1e-8, "ours {ours}, differences {fd}");
    let phi = (-0.5f64).exp() / (2.0 * std::f64::consts::PI).sqrt();
    assert!(
        (theirs - ours - (2f64.sqrt() - 1.0) * phi).abs() < 1e-12,
        "dfdx {theirs}: not the known error (fixed upstream? then drop the fused op)"
    );
}

/// An element-wise module whose stated f'' is off by 0.25: its gradient stays right, its H·v
/// does not.
#[derive(Debug, Default, Clone, Copy)]
struct WrongCurvature<A>(A);
impl<A: Default + Clone> ZeroSizedModule for WrongCurvature<A> {}

impl<A: Pointwise<f64>> Pointwise<f64> for WrongCurvature<A> {
    fn apply<S: Shape>(self, x: Taped<S, f64>) -> Taped<S, f64> {
        self.0.apply(x)
    }
    fn slope(&self, x: f64) -> f64 {
        self.0.slope(x)
    }
    fn curvature(&self, x: f64) -> f64 {
        self.0.curvature(x) + 0.25
    }
}

impl<A: Pointwise<f64>, S: Shape> WrittenLayer<f64, Taped<S, f64>> for WrongCurvature<A> {
    type Output = Taped<S, f64>;
    type Saved = Held<S, f64>;
    fn forward(&self, input: Taped<S, f64>) -> (Taped<S, f64>, Held<S, f64>) {
        pointwise_forward(*self, input)
    }
    fn backward(
        &self,
        input: Held<S, f64>,
        grad_output: Taped<S, f64>,
        grads: &mut WrittenGrad<f64>,
        want_input: bool,
    ) -> Option<Taped<S, f64>> {
        pointwise_backward(*self, input, grad_output, grads, want_input)
    }
}

fn caught<M>(what: &str)
where
    M: bilevel_optim::params::Params<f64>
        + BuildModule<Cpu, f64>
        + WrittenLayer<
            f64,
            bilevel_models::sequence::Activations<f64, 5>,
            Output = bilevel_models::sequence::Activations<f64, 3>,
        >,
{
    let (problem, x, y) = dense_setup::<M, 4>();
    assert_caught(problem, &x, &y, what);
}

#[test]
#[allow(deprecated)]
fn a_broken_variant_of_every_activation_is_caught() {
    caught::<Between<WrongCurvature<ReLU>>>("ReLU");
    caught::<Between<WrongCurvature<LeakyReLU<f64>>>>("LeakyReLU");
    caught::<Between<WrongCurvature<FastGeLU>>>("FastGeLU");
    caught::<Between<WrongCurvature<GeLU>>>("GeLU");
    caught::<Between<WrongCurvature<AccurateGeLU>>>("AccurateGeLU");
    caught::<Between<WrongCurvature<Sigmoid>>>("Sigmoid");
    caught::<Between<WrongCurvature<Exp>>>("Exp");
    caught::<AfterSigmoid<WrongCurvature<Ln>>>("Ln");
    caught::<AfterSigmoid<WrongCurvature<Sqrt>>>("Sqrt");
    caught::<Between<WrongCurvature<Square>>>("Square");
    caught::<Between<WrongCurvature<Sin>>>("Sin");
    caught::<Between<WrongCurvature<Cos>>>("Cos");
    caught::<Between<WrongCurvature<Abs>>>("Abs");
    caught::<Between<Detached<Tanh>>>("Tanh");
    caught::<Between<Detached<Softmax>>>("Softmax");
    caught::<Between<Detached<LogSoftmax>>>("LogSoftmax");
}

/// Tanh, Softmax and LogSoftmax run dfdx's values too (f64).
#[test]
fn row_activations_forward_as_dfdx() {
    let dev = Cpu::seed_from_u64(9);
    let x: Tensor<(usize, Const<5>), f64, Cpu> = dev.sample_normal_like(&(4, Const::<5>));
    macro_rules! same {
        ($module:expr) => {
            let ours = WrittenLayer::forward(&$module, x.retaped::<Tp<f64>>()).0;
            let theirs = Module::forward(&$module, x.clone());
            assert_eq!(ours.as_vec(), theirs.as_vec(), stringify!($module));
        };
    }
    same!(Tanh);
    same!(Softmax);
    same!(LogSoftmax);
}
