//! Every dense layer and dense composition: its written gradient equals dfdx's autodiff gradient,
//! and its exact H·v and J·v equal finite differences.

mod common;

use bilevel_models::classifier::{LinearHead, MlpHead};
use common::*;
use dfdx::nn::modules::{Linear, Tanh};
use dfdx::prelude::*;

const F: usize = 5;
const C: usize = 3;

fn check<M, const K: usize>(what: &str)
where
    M: bilevel_optim::params::Params<f64>
        + BuildModule<Cpu, f64>
        + bilevel_models::layer::WrittenLayer<
            f64,
            bilevel_models::sequence::Activations<f64, F>,
            Output = bilevel_models::sequence::Activations<f64, C>,
        >,
{
    let checks = dense_checks::<M, K>();
    println!("{what}: {checks:?}");
    checks.assert_exact(what);
}

#[test]
fn linear() {
    check::<LinearHead<F, C, f64>, 2>("Linear");
}

#[test]
fn linear_tanh_linear() {
    check::<(Linear<F, 4, f64, Cpu>, Tanh, Linear<4, C, f64, Cpu>), 4>("Linear-tanh-Linear");
}

#[test]
fn mlp_head() {
    check::<MlpHead<F, 4, C, f64>, 6>("MLP head");
}
