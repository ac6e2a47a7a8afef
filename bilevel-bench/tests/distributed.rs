//! Runs shared by MPI processes (`mpirun -np 2 bilevel-bench run ...`, the `mpi` feature): they
//! end bit-identical to one process with one thread per process; a killed process ends the
//! whole job within seconds, and the run then resumes, on 2 processes or on 1, bit-identically;
//! a process that fails stops the others instead of leaving them waiting.
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bilevel_bench::run::checkpoint::{Checkpoint, FILE};
use bilevel_bench::run::lock::RunLock;
use common::{diverging_with_rollback, short_borep_run, steps_without_time};

const BENCH: &str = env!("CARGO_BIN_EXE_bilevel-bench");

fn scratch(name: &str) -> common::Scratch {
    common::scratch("distributed", name)
}

/// `bilevel-bench args` in `ranks` processes under Open MPI's `mpirun` (1: no launcher).
fn bench(ranks: usize, args: &[&str]) -> Command {
    let mut c = if ranks == 1 {
        Command::new(BENCH)
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--allow-run-as-root", "--oversubscribe", "-np"])
            .arg(ranks.to_string())
            .arg(BENCH);
        c
    };
    c.args(args)
        .arg("--quiet")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn succeed(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `run --config config --threads threads --out out`.
fn run_args<'a>(config: &'a str, threads: &'a str, out: &'a str) -> [&'a str; 7] {
    [
        "run",
        "--config",
        config,
        "--threads",
        threads,
        "--out",
        out,
    ]
}

/// The run `config` describes, made in `base/one` by one process with 2 threads and in
/// `base/two` by 2 processes with one thread each; the directories and the second one's output.
fn one_by_two_and_two_by_one(base: &Path, config: &str) -> (PathBuf, PathBuf, Output) {
    let file = base.join("config.toml");
    std::fs::write(&file, config).unwrap();
    let (one, two) = (base.join("one"), base.join("two"));
    succeed(
        bench(1, &run_args(path(&file), "2", path(&one)))
            .output()
            .unwrap(),
    );
    let out = succeed(
        bench(2, &run_args(path(&file), "1", path(&two)))
            .output()
            .unwrap(),
    );
    (one, two, out)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run_dir(out: &Path) -> PathBuf {
    out.join("hyper-opt/bo-rep/seed-0")
}

/// Everything but timings: x, y, the method's state, counts, evaluations, logged steps.
fn assert_same_run(a: &Path, b: &Path) {
    let (ca, cb) = (Checkpoint::read(a).unwrap(), Checkpoint::read(b).unwrap());
    assert_eq!(ca.header.iteration, cb.header.iteration);
    assert_eq!(ca.vectors, cb.vectors, "x, y and the method's state");
    assert_eq!(ca.header.oracles, cb.header.oracles);
    let metrics = |c: &Checkpoint| {
        c.header
            .evaluations
            .iter()
            .map(|e| (e.iteration, e.oracle_calls, e.metrics.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(metrics(&ca), metrics(&cb), "the evaluations");
    assert_eq!(steps_without_time(a), steps_without_time(b), "steps.csv");
}

fn events_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("events.out"))
        .count()
}

#[test]
fn two_processes_run_what_one_process_with_two_threads_runs() {
    let base = scratch("same");
    let (one, two, out) = one_by_two_and_two_by_one(&base, &short_borep_run(12, 4, 4));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("final metrics").count(), 1, "{stdout}");
    assert!(stdout.contains("shared by 2 processes"), "{stdout}");
    assert_same_run(&run_dir(&one), &run_dir(&two));
    assert_eq!(events_files(&run_dir(&two)), 1, "process 0 alone writes");
}

/// The pid of the process of rank `rank` whose command line mentions `marker`.
fn rank_pid(rank: usize, marker: &str) -> Option<u32> {
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let path = e.ok()?.path();
        let pid: u32 = path.file_name()?.to_str()?.parse().ok()?;
        let cmdline = std::fs::read(path.join("cmdline")).ok()?;
        let environ = std::fs::read(path.join("environ")).ok()?;
        let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        (has(&cmdline, marker.as_bytes())
            && has(&cmdline, BENCH.as_bytes())
            && environ.split(|&b| b == 0).any(|v| v == wanted.as_bytes()))
        .then_some(pid)
    })
}

#[test]
fn a_killed_process_ends_the_job_and_the_run_resumes_on_two_processes_or_one() {
    let base = scratch("kill");
    let config = base.join("config.toml");
    std::fs::write(&config, short_borep_run(24, 8, 4)).unwrap();
    let config = config.to_str().unwrap();
    let whole = base.join("whole");
    succeed(
        bench(2, &run_args(config, "1", path(&whole)))
            .output()
            .unwrap(),
    );
    for resume_ranks in [2, 1] {
        let broken = base.join(format!("broken-{resume_ranks}"));
        let marker = broken.to_str().unwrap().to_string();
        let child = bench(2, &run_args(config, "1", &marker)).spawn().unwrap();
        let dir = run_dir(&broken);
        let start = Instant::now();
        loop {
            // Read without Checkpoint::read, which would set a file aside that the run is
            // replacing at this instant.
            let latest = std::fs::read(dir.join(FILE))
                .ok()
                .and_then(|b| Checkpoint::from_bytes(&b, &dir).ok());
            if latest.is_some_and(|cp| cp.header.iteration >= 8) {
                if let Some(pid) = rank_pid(1, &marker) {
                    Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status()
                        .unwrap();
                    break;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(300), "no checkpoint");
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed = Instant::now();
        let out = child.wait_with_output().unwrap();
        let waited = killed.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("the job ended {waited:?} after the kill:\n{stderr}");
        assert!(!out.status.success());
        assert!(waited < Duration::from_secs(20), "ended after {waited:?}");
        assert!(
            stderr.contains("rank 1"),
            "mpirun names the killed rank: {stderr}"
        );
        let at_kill = Checkpoint::read(&dir).unwrap().header.iteration;
        assert!(at_kill < 24, "killed before the end");

        succeed(
            bench(resume_ranks, &["run", "--resume", path(&dir)])
                .output()
                .unwrap(),
        );
        if resume_ranks == 2 {
            assert_same_run(&run_dir(&whole), &dir);
        } else {
            // One process with the run's one thread adds the shards in another order: the run
            // continues, and ends within rounding of the uninterrupted one.
            let (a, b) = (
                Checkpoint::read(&run_dir(&whole)).unwrap(),
                Checkpoint::read(&dir).unwrap(),
            );
            assert_eq!(b.header.iteration, 24);
            assert_eq!(a.header.oracles.counts, b.header.oracles.counts);
            for name in ["x", "y"] {
                let (u, v) = (&a.vectors[name], &b.vectors[name]);
                let diff = u
                    .iter()
                    .zip(v)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f64::max);
                let size = u.iter().map(|p| p.abs()).fold(0.0, f64::max);
                assert!(diff <= 1e-4 * size, "{name}: {diff} of {size}");
            }
        }
    }
}

/// A run that diverges and rolls back with halved steps: every process reads the checkpoint
/// process 0 sends, and the run ends as on one process with two threads.
#[test]
fn a_rollback_on_two_processes_matches_one_process() {
    let base = scratch("rollback");
    let (one, two, out) = one_by_two_and_two_by_one(&base, &diverging_with_rollback());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("rolling back to iteration 0").count(),
        Checkpoint::read(&two.join("hyper-opt/soba/seed-0"))
            .unwrap()
            .header
            .rollbacks,
        "process 0 alone reports each rollback: {stderr}"
    );
    let (a, b) = (
        one.join("hyper-opt/soba/seed-0"),
        two.join("hyper-opt/soba/seed-0"),
    );
    assert!(Checkpoint::read(&b).unwrap().header.rollbacks >= 1);
    assert_eq!(
        Checkpoint::read(&a).unwrap().header.rollbacks,
        Checkpoint::read(&b).unwrap().header.rollbacks
    );
    assert_same_run(&a, &b);
}

#[test]
fn a_process_that_fails_stops_the_others() {
    let base = scratch("fail");
    let config = base.join("config.toml");
    std::fs::write(&config, short_borep_run(400, 100, 100)).unwrap();
    let out = base.join("out");
    let dir = run_dir(&out);
    std::fs::create_dir_all(&dir).unwrap();
    // Process 0 cannot lock the directory; process 1 has begun the run and waits for it.
    let _held = RunLock::acquire(&dir).unwrap();
    let start = Instant::now();
    let result = bench(2, &["run", "--config", path(&config), "--out", path(&out)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(stderr.contains("Error in process 0 of 2"), "{stderr}");
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(60));
}

/// A tiny hyper-opt budget for the grids: 6 iterations, evaluated every 2.
const TINY_HYPER_OPT: &str = r#"
task = "hyper-opt"
iters = 6
eval_every = 2
[hyper_opt]
batch = 8
max_len = 8
eval_size = 16
train_eval_size = 16
"#;

fn file(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Successive halving over two seeds, with a step size that diverges: the grid, its table and
/// `tuned.toml` on 2 processes are those of 1 process, byte for byte, and so is `compare`'s table
/// with the tuned steps.
#[test]
fn tune_and_compare_on_two_processes_write_what_one_process_writes() {
    let base = scratch("tune");
    let config = base.join("config.toml");
    std::fs::write(&config, TINY_HYPER_OPT).unwrap();
    let config = path(&config);
    let mut outs = Vec::new();
    for ranks in [1, 2] {
        let out = base.join(format!("ranks-{ranks}"));
        let tune = [
            "tune",
            "--config",
            config,
            "--methods",
            "bo-rep,soba",
            "--lower",
            "0.01,0.1",
            "--upper",
            "0.01,1000",
            "--seeds",
            "0,1",
            "--rungs",
            "2",
            "--out",
            path(&out),
        ];
        let stdout = succeed(bench(ranks, &tune).output().unwrap()).stdout;
        assert!(String::from_utf8_lossy(&stdout).contains("tuned.toml"));
        let tuned = out.join("hyper-opt/tune/tuned.toml");
        let compare = [
            "compare",
            "--config",
            config,
            "--methods",
            "bo-rep,soba",
            "--seeds",
            "0,1,2",
            "--tuned",
            path(&tuned),
            "--out",
            path(&out),
        ];
        succeed(bench(ranks, &compare).output().unwrap());
        outs.push(out);
    }
    for rel in [
        "hyper-opt/tune/tuned.toml",
        "hyper-opt/tune/grid.csv",
        "hyper-opt/tune/grid.md",
    ] {
        assert_eq!(file(&outs[0], rel), file(&outs[1], rel), "{rel}");
    }
    assert!(file(&outs[1], "hyper-opt/tune/grid.csv").contains("diverged"));
    // The runs were dealt: their directories' locks name two processes of `tune` and two of
    // `compare`.
    let mut owners = std::collections::BTreeSet::new();
    let mut stack = vec![outs[1].clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "run.lock") {
                owners.insert(std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    assert_eq!(owners.len(), 4, "{owners:?}");
    // The compared runs, their seconds column aside.
    let summaries = |out: &Path| -> Vec<String> {
        ["bo-rep", "soba"]
            .iter()
            .flat_map(|m| (0..3).map(move |s| format!("hyper-opt/{m}/seed-{s}/evaluations.csv")))
            .map(|rel| {
                file(out, &rel)
                    .lines()
                    .map(|l| {
                        l.split(',')
                            .take(2)
                            .chain(l.split(',').skip(3))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect()
    };
    assert_eq!(
        summaries(&outs[0]),
        summaries(&outs[1]),
        "the compared runs"
    );
}
