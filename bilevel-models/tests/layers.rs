//! Every dense layer and dense composition: its written gradient equals dfdx's autodiff gradient,
//! and its exact H·v and J·v equal finite differences.

mod common;

use bilevel_models::classifier::{LinearHead, MlpHead};
use bilevel_optim::oracles::Oracles;
use common::*;
use dfdx::nn::modules::{Linear, Tanh};
use dfdx::prelude::*;

const B: usize = 6;
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
    let dev = Cpu::seed_from_u64(3);
    let y = M::build(&dev);
    let x: (Tensor<Rank1<K>, f64, Cpu>, Tensor<Rank1<B>, f64, Cpu>) = (
        dev.sample_normal::<Rank1<K>>() * 0.5 - 1.0,
        dev.sample_normal(),
    );
    let problem = DenseProblem::<M, K, B, F, C> {
        model: std::marker::PhantomData,
        seed: 5,
    };
    let mut oracles = Oracles::new(problem, 0);
    let checks = check_second_order(&mut oracles, &x, &y);
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
