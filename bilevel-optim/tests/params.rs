//! Parameter-space arithmetic on dfdx modules and tuples.

use bilevel_optim::params::Params;
use dfdx::prelude::*;

type Model = (Linear<3, 2>, Linear<2, 1>);

fn build() -> (
    <Model as BuildOnDevice<Cpu, f64>>::Built,
    <Model as BuildOnDevice<Cpu, f64>>::Built,
) {
    let dev = Cpu::seed_from_u64(0);
    (
        dev.build_module::<Model, f64>(),
        dev.build_module::<Model, f64>(),
    )
}

fn flat_dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn vector_space_operations_match_flat_arithmetic() {
    let (a, b) = build();
    let (fa, fb) = (a.to_flat(), b.to_flat());
    assert_eq!(a.num_params(), 3 * 2 + 2 + 2 + 1);
    assert_eq!(fa.len(), a.num_params());
    assert!((a.dot(&b) - flat_dot(&fa, &fb)).abs() < 1e-14);
    assert!((a.norm() - flat_dot(&fa, &fa).sqrt()).abs() < 1e-14);

    let mut c = a.clone();
    c.add_scaled(-0.5, &b);
    let expected: Vec<f64> = fa.iter().zip(&fb).map(|(x, y)| x - 0.5 * y).collect();
    assert_eq!(c.to_flat(), expected);
    assert_eq!(
        a.to_flat(),
        fa,
        "add_scaled on a clone must not touch the original"
    );

    let mut d = a.clone();
    d.lerp_with(0.9, 0.1, &b);
    let expected: Vec<f64> = fa.iter().zip(&fb).map(|(x, y)| 0.9 * x + 0.1 * y).collect();
    assert!(d
        .to_flat()
        .iter()
        .zip(&expected)
        .all(|(p, q)| (p - q).abs() < 1e-15));

    let mut s = a.clone();
    s.scale(3.0);
    assert!(s
        .to_flat()
        .iter()
        .zip(&fa)
        .all(|(p, q)| (p - 3.0 * q).abs() < 1e-15));

    let z = a.zeros_like();
    assert!(z.to_flat().iter().all(|&v| v == 0.0));
    assert_eq!(z.num_params(), a.num_params());
}

#[test]
fn ball_projections() {
    let (a, b) = build();
    let mut p = a.clone();
    let r = 0.25 * a.norm();
    assert!(p.project_ball(r));
    assert!((p.norm() - r).abs() < 1e-14);
    let dir = a.dot(&p) / (a.norm() * p.norm());
    assert!((dir - 1.0).abs() < 1e-14, "projection keeps the direction");
    let mut q = p.clone();
    assert!(!q.project_ball(2.0 * r), "inside the ball nothing moves");
    assert_eq!(q.to_flat(), p.to_flat());

    let mut around = a.clone();
    assert!(around.project_ball_around(&b, 0.1));
    let mut diff = around.clone();
    diff.add_scaled(-1.0, &b);
    assert!((diff.norm() - 0.1).abs() < 1e-14);
}

#[test]
fn flat_round_trip_and_length_check() {
    let (a, b) = build();
    let mut c = b.clone();
    c.set_flat(&a.to_flat()).unwrap();
    assert_eq!(c.to_flat(), a.to_flat());
    let err = c.set_flat(&[1.0, 2.0]).unwrap_err();
    assert_eq!((err.expected, err.found), (11, 2));
    assert_eq!(
        c.to_flat(),
        a.to_flat(),
        "a failed load leaves the value unchanged"
    );
}

#[test]
fn non_finite_values_are_located_by_name() {
    let (mut a, _) = build();
    assert_eq!(a.first_non_finite(), None);
    a.1.bias.copy_from(&[f64::NAN]);
    assert_eq!(a.first_non_finite().as_deref(), Some("1.bias"));
}

#[test]
fn works_in_f32_for_tensors_and_tuples() {
    let dev = Cpu::default();
    let t: (Tensor<Rank1<3>, f32, Cpu>, Tensor<Rank2<2, 2>, f32, Cpu>) = (
        dev.tensor([1.0, 2.0, 2.0]),
        dev.tensor([[0.0, 0.0], [0.0, 4.0]]),
    );
    assert_eq!(t.norm_sq(), 25.0);
    assert_eq!(t.norm(), 5.0);
}
