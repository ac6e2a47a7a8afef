//! Every dense layer and dense composition: its written gradient equals dfdx's autodiff gradient,
//! and its exact H·v and J·v equal finite differences.

mod common;

use bilevel_models::classifier::{LinearHead, MlpHead};
use common::*;
use dfdx::nn::modules::{Linear, Tanh};
use dfdx::prelude::*;

const F: usize = 5;
const C: usize = 3;

#[test]
fn linear() {
    assert_dense_exact::<LinearHead<F, C, f64>, 2>("Linear");
}

#[test]
fn linear_tanh_linear() {
    assert_dense_exact::<(Linear<F, 4, f64, Cpu>, Tanh, Linear<4, C, f64, Cpu>), 4>(
        "Linear-tanh-Linear",
    );
}

#[test]
fn mlp_head() {
    assert_dense_exact::<MlpHead<F, 4, C, f64>, 6>("MLP head");
}
