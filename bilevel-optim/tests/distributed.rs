//! Oracles shared by MPI processes ([`Oracles::distributed`]), under `cargo test --features mpi`.
//! Each test launches itself under `mpirun -np 2` (Open MPI's flags, as root in CI) and checks,
//! in every process, that the distributed passes equal one process's sharded passes over the
//! same global shards (bit for bit with one thread per process, to 1e-12 with two), that every
//! process holds the same results, and that a method run on them follows one process's run.
#![cfg(feature = "mpi")]
mod common;

use std::process::Command;
use std::sync::Arc;

use bilevel_optim::distributed::{check_agreement, Mpi, ProcessGroup};
use bilevel_optim::methods::MethodConfig;
use bilevel_optim::oracles::Oracles;
use bilevel_optim::params::Params;
use bilevel_optim::problem::ShardedProblem;
use bilevel_optim::problems::*;
use common::rel_err;
use dfdx::prelude::*;

type Vec4 = Tensor<Rank1<4>, f64, Cpu>;
type Vec3 = Tensor<Rank1<3>, f64, Cpu>;
const RANKS: usize = 2;

/// Runs test `name` of this binary in `RANKS` processes under `mpirun`, and fails unless all of
/// them pass. Returns `None` in the launcher and the MPI world in a launched process.
fn under_mpirun(name: &str) -> Option<Arc<Mpi>> {
    if Mpi::launched() {
        return Some(Mpi::init().expect("MPI initializes"));
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let status = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(RANKS.to_string())
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .status()
        .expect("mpirun starts (Open MPI's mpirun must be on PATH for the mpi feature's tests)");
    assert!(status.success(), "{name} failed in a process under mpirun");
    None
}

fn ridge(batch: usize) -> Ridge<f64, Vec4, 4> {
    Ridge::synthetic(RidgeConfig {
        lower_batch: Some(batch),
        upper_batch: Some(batch),
        ..Default::default()
    })
}

fn flat(t: &impl Params<f64>) -> Vec<f64> {
    t.to_flat()
}

/// Every pass of `dist` (this process's part of `RANKS` processes with `threads` threads each)
/// against `one` (one process, `RANKS · threads` threads), at the same point and batches:
/// identical bits when `exact`, else within 1e-12. Returns the results' bytes for the
/// cross-process check.
fn compare_passes<P>(
    dist: &mut Oracles<f64, P>,
    one: &mut Oracles<f64, P>,
    x: &P::X,
    y: &P::Y,
    v: &P::Y,
    exact: bool,
) -> Vec<u8>
where
    P: ShardedProblem<f64>,
{
    let same = |what: &str, a: Vec<f64>, b: Vec<f64>| {
        if exact {
            assert_eq!(a, b, "{what}");
        } else {
            assert!(rel_err(&a, &b) < 1e-12, "{what}: {}", rel_err(&a, &b));
        }
        a
    };
    let (lb, ub) = (dist.lower_batch(), dist.upper_batch());
    let (lb1, ub1) = (one.lower_batch(), one.upper_batch());
    let mut seen = Vec::new();
    let (a, b) = (
        dist.upper_grad(x, y, &ub).unwrap(),
        one.upper_grad(x, y, &ub1).unwrap(),
    );
    seen.push(same("F", vec![a.value], vec![b.value]));
    seen.push(same("∇_x F", flat(&a.dx), flat(&b.dx)));
    seen.push(same("∇_y F", flat(&a.dy), flat(&b.dy)));
    let (a, b) = (
        dist.lower_grad(x, y, &lb).unwrap(),
        one.lower_grad(x, y, &lb1).unwrap(),
    );
    seen.push(same("∇_x G", flat(&a.dx), flat(&b.dx)));
    seen.push(same("∇_y G", flat(&a.dy), flat(&b.dy)));
    let (a, b) = (
        dist.lower_grad_in_y(x, y, &lb).unwrap(),
        one.lower_grad_in_y(x, y, &lb1).unwrap(),
    );
    seen.push(same("G", vec![a.0], vec![b.0]));
    seen.push(same("∇_y G alone", flat(&a.1), flat(&b.1)));
    let (a, b) = (
        dist.hvp_jvp(x, y, v, &lb).unwrap(),
        one.hvp_jvp(x, y, v, &lb1).unwrap(),
    );
    seen.push(same("H·v", flat(&a.hvp), flat(&b.hvp)));
    seen.push(same("J·v", flat(&a.jvp), flat(&b.jvp)));
    seen.push(same(
        "written ∇_y G",
        flat(&a.written_grad_y),
        flat(&b.written_grad_y),
    ));
    assert_eq!(dist.counts(), one.counts());
    seen.concat().iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn distributed_oracles_equal_one_process_with_as_many_shards() {
    let Some(mpi) = under_mpirun("distributed_oracles_equal_one_process_with_as_many_shards")
    else {
        return;
    };
    assert_eq!(mpi.size(), RANKS);
    let group: Arc<dyn ProcessGroup> = mpi.clone();
    // The same point in every process: a device seeded alike draws alike.
    let d = Cpu::seed_from_u64(5);
    let (x, y, v): (Vec4, Vec4, Vec4) = (d.sample_normal(), d.sample_normal(), d.sample_normal());
    for threads in [1, 2] {
        let mut dist = Oracles::distributed(ridge(7), 4, threads, group.clone()).unwrap();
        let mut one = Oracles::sharded(ridge(7), 4, RANKS * threads).unwrap();
        let bytes = compare_passes(&mut dist, &mut one, &x, &y, &v, threads == 1);
        check_agreement(
            &*group,
            &format!("the passes with {threads} thread(s)"),
            &bytes,
        )
        .unwrap();
    }
    // Two rows over four global shards: the second process has none and sends nothing.
    let reweighting = || {
        LogisticReweighting::<f64, 12, 3>::synthetic(ReweightingConfig {
            lower_batch: Some(2),
            upper_batch: Some(2),
            ..Default::default()
        })
    };
    let mut dist = Oracles::distributed(reweighting(), 9, 2, group.clone()).unwrap();
    let mut one = Oracles::sharded(reweighting(), 9, 4).unwrap();
    let x: Tensor<Rank1<12>, f64, Cpu> = d.sample_normal();
    let (y, v): (Vec3, Vec3) = (d.sample_normal(), d.sample_normal());
    let bytes = compare_passes(&mut dist, &mut one, &x, &y, &v, false);
    check_agreement(&*group, "the passes with empty shards", &bytes).unwrap();
    // A state that differs in one process is reported, naming that process.
    let mut state = bytes.clone();
    if mpi.rank() == 1 {
        state[0] ^= 1;
    }
    let err = check_agreement(&*group, "a test state", &state).unwrap_err();
    assert!(err.to_string().contains("rank(s) 1 differ"), "{err}");
}

/// BO-REP, SOBA and StocBio for 40 iterations on distributed oracles (one thread per process)
/// end at the bits of the same run on one process with one thread per shard.
#[test]
fn methods_on_distributed_oracles_follow_one_process() {
    let Some(mpi) = under_mpirun("methods_on_distributed_oracles_follow_one_process") else {
        return;
    };
    let group: Arc<dyn ProcessGroup> = mpi;
    let d = Cpu::seed_from_u64(1);
    let (x0, y0): (Vec4, Vec4) = (d.sample_normal(), d.sample_normal());
    for name in ["bo-rep", "soba", "stocbio"] {
        let config = MethodConfig::default_for(name).unwrap();
        let run = |mut oracles: Oracles<f64, Ridge<f64, Vec4, 4>>| {
            let mut method = config.build(&x0, &y0, oracles.problem()).unwrap();
            let (mut x, mut y) = (x0.clone(), y0.clone());
            for _ in 0..40 {
                method.step(&mut oracles, &mut x, &mut y).unwrap();
            }
            (flat(&x), flat(&y), method.state())
        };
        let dist = run(Oracles::distributed(ridge(8), 2, 1, group.clone()).unwrap());
        let one = run(Oracles::sharded(ridge(8), 2, RANKS).unwrap());
        assert_eq!((&dist.0, &dist.1), (&one.0, &one.1), "{name}: x and y");
        assert_eq!(dist.2.vectors, one.2.vectors, "{name}: the method's state");
        let bytes: Vec<u8> = dist
            .0
            .iter()
            .chain(&dist.1)
            .flat_map(|v| v.to_le_bytes())
            .collect();
        check_agreement(&*group, name, &bytes).unwrap();
    }
}
