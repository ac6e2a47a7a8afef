//! A kill or a full disk at any instant loses nothing: the run is killed (or its disk fills) at
//! every one of its write points in turn (`BILEVEL_FAULT_AT`, see `bilevel_bench::run::faults`),
//! then resumed — or started again when it stopped before its first checkpoint — and must end
//! exactly where an uninterrupted run ends: the same parameters and method state bit for bit,
//! the same evaluations, the same `steps.csv` rows (none lost or doubled), one TensorBoard event
//! file with as many records as the uninterrupted run's. The same for a resume killed at each of
//! its own write points.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bilevel_bench::run::checkpoint::Checkpoint;
use bilevel_bench::run::faults::{ENV, KILLED_STATUS};

fn scratch(name: &str) -> common::Scratch {
    common::scratch("faults", name)
}

fn bench(args: &[&str], fault: Option<String>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bilevel-bench"));
    c.args(args).arg("--quiet").env_remove(ENV);
    if let Some(f) = fault {
        c.env(ENV, f);
    }
    c.output().unwrap()
}

fn start(config: &Path, out: &Path, fault: Option<String>) -> Output {
    bench(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        fault,
    )
}

fn resume(dir: &Path, fault: Option<String>) -> Output {
    bench(&["run", "--resume", dir.to_str().unwrap()], fault)
}

fn run_dir(out: &Path) -> PathBuf {
    out.join("hyper-opt/bo-rep/seed-0")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One evaluation: iteration, oracle calls, metrics.
type EvaluationRow = (usize, u64, Vec<(String, f64)>);

/// What must come out the same: the final checkpoint's vectors and counts, the evaluations,
/// the step rows without their wall-clock column, the summary's metrics, and the event file.
#[derive(Debug, PartialEq)]
struct Outcome {
    iteration: usize,
    vectors_equal_to_reference: bool,
    evaluations: Vec<EvaluationRow>,
    steps: Vec<String>,
    summary_metrics: Vec<Vec<(String, f64)>>,
    event_files: usize,
    event_records: usize,
}

/// The number of TFRecords in an event file (length, its CRC, data, the data's CRC).
fn records(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    let (mut at, mut n) = (0, 0);
    while at + 12 <= bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 12 + len + 4;
        n += 1;
    }
    assert_eq!(at, bytes.len(), "{}: a torn record", path.display());
    n
}

fn outcome(dir: &Path, reference: Option<&Checkpoint>) -> Outcome {
    let cp = Checkpoint::read(dir).unwrap();
    let evaluations = cp
        .header
        .evaluations
        .iter()
        .map(|e| {
            (
                e.iteration,
                e.oracle_calls,
                e.metrics.clone().into_iter().collect(),
            )
        })
        .collect();
    let steps = std::fs::read_to_string(dir.join("steps.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect();
    let summary: bilevel_bench::run::summary::RunSummary =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let events: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("tfevents"))
        .collect();
    Outcome {
        iteration: cp.header.iteration,
        vectors_equal_to_reference: reference
            .is_none_or(|r| r.vectors == cp.vectors && r.header.oracles == cp.header.oracles),
        evaluations,
        steps,
        summary_metrics: summary
            .evaluations
            .iter()
            .map(|e| e.metrics.clone().into_iter().collect())
            .collect(),
        event_files: events.len(),
        event_records: events.iter().map(|p| records(p)).sum(),
    }
}

/// Brings a run stopped by a fault to its end without faults: resume, or start again when it
/// stopped before its first checkpoint (the message says so) or failed before its first
/// iteration (which removes the directory it created).
fn finish(config: &Path, out: &Path) {
    if !run_dir(out).exists() {
        let o = start(config, out, None);
        assert!(o.status.success(), "restart failed: {}", stderr(&o));
        return;
    }
    let o = resume(&run_dir(out), None);
    if o.status.success() {
        return;
    }
    let err = stderr(&o);
    assert!(err.contains("start the run again"), "resume failed: {err}");
    let o = start(config, out, None);
    assert!(o.status.success(), "restart failed: {}", stderr(&o));
}

/// Runs `job(n)` for n = 1, 2, ... on two threads until a job reports that n is past the last
/// write point; returns how many points there were.
fn every_point(job: impl Fn(usize) -> bool + Sync) -> usize {
    let next = AtomicUsize::new(1);
    let last = Mutex::new(usize::MAX);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n > *last.lock().unwrap() {
                    break;
                }
                if !job(n) {
                    let mut l = last.lock().unwrap();
                    *l = (*l).min(n - 1);
                    break;
                }
            });
        }
    });
    let points = *last.lock().unwrap();
    points
}

#[test]
fn a_kill_or_a_full_disk_at_any_write_loses_nothing() {
    let base = scratch("every-write");
    let config = base.join("config.toml");
    std::fs::write(&config, common::short_borep_run(4, 2, 2)).unwrap();
    let whole = base.join("whole");
    let o = start(&config, &whole, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let reference_cp = Checkpoint::read(&run_dir(&whole)).unwrap();
    let reference = outcome(&run_dir(&whole), None);
    assert_eq!(reference.iteration, 4);
    assert_eq!(reference.steps.len(), 5);
    assert_eq!(reference.event_files, 1);

    // Killed at each write point of a run, then brought to its end.
    let run_points = every_point(|n| {
        let out = base.join(format!("kill-{n}"));
        let o = start(&config, &out, Some(n.to_string()));
        if o.status.success() {
            return false;
        }
        assert_eq!(o.status.code(), Some(KILLED_STATUS), "{}", stderr(&o));
        finish(&config, &out);
        let got = outcome(&run_dir(&out), Some(&reference_cp));
        assert_eq!(got, reference, "killed at write point {n}: {}", stderr(&o));
        let _ = std::fs::remove_dir_all(&out);
        true
    });
    println!("a run has {run_points} write points; killed at each, it resumed to the same end");
    assert!(run_points > 30, "{run_points}");

    // The disk full from every other write point on (to keep the test short): a clean error
    // naming the file, then a resume.
    every_point(|k| {
        let n = 2 * k - 1;
        let out = base.join(format!("full-{n}"));
        let o = start(&config, &out, Some(format!("{n}:full")));
        if o.status.success() {
            return false;
        }
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "an error, not a crash: {err}");
        assert!(
            err.contains("no space left on device") && err.contains(out.to_str().unwrap()),
            "{err}"
        );
        finish(&config, &out);
        assert_eq!(
            outcome(&run_dir(&out), Some(&reference_cp)),
            reference,
            "full at {n}"
        );
        let _ = std::fs::remove_dir_all(&out);
        true
    });

    // A resume killed at each of its own write points (from a run killed between its second
    // and third checkpoints), then resumed again.
    let stopped = base.join("stopped");
    let o = start(&config, &stopped, Some(format!("{}", run_points * 3 / 4)));
    assert_eq!(o.status.code(), Some(KILLED_STATUS), "{}", stderr(&o));
    let resume_points = every_point(|n| {
        let out = base.join(format!("resume-{n}"));
        copy_dir(&stopped, &out);
        let o = resume(&run_dir(&out), Some(n.to_string()));
        if o.status.success() {
            return false;
        }
        assert_eq!(o.status.code(), Some(KILLED_STATUS), "{}", stderr(&o));
        finish(&config, &out);
        let got = outcome(&run_dir(&out), Some(&reference_cp));
        assert_eq!(
            got,
            reference,
            "resume killed at write point {n}: {}",
            stderr(&o)
        );
        let _ = std::fs::remove_dir_all(&out);
        true
    });
    println!(
        "a resume has {resume_points} write points; killed at each, it resumed to the same end"
    );
    assert!(resume_points > 10, "{resume_points}");
    let _ = std::fs::remove_dir_all(&base);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
