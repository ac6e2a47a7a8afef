//! Runs that survive faults: a run killed with SIGKILL and resumed from its last checkpoint ends
//! bit-identical to an uninterrupted one (parameters, metrics, logged values, no duplicated or
//! missing steps); an interrupted checkpoint write leaves the previous checkpoint loadable; a
//! checkpoint is refused by another method or model size.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bilevel_bench::run::checkpoint::{Checkpoint, FILE};
use common::{diverging, diverging_with_rollback, short_borep_run, steps_without_time};

/// The run these tests interrupt, of `iters` iterations, evaluated every 8 and saved every 4.
fn run_config(iters: usize) -> String {
    short_borep_run(iters, 8, 4)
}

fn scratch(name: &str) -> common::Scratch {
    common::scratch("resume", name)
}

fn bench(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bilevel-bench"));
    c.args(args)
        .arg("--quiet")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn run_dir(out: &Path) -> PathBuf {
    out.join("hyper-opt/bo-rep/seed-0")
}

/// `run --config <base>/config.toml --out <base>`, with `config` written to that file first.
fn run_in(base: &Path, config: &str) -> Command {
    let file = base.join("config.toml");
    std::fs::write(&file, config).unwrap();
    bench(&[
        "run",
        "--config",
        file.to_str().unwrap(),
        "--out",
        base.to_str().unwrap(),
    ])
}

#[test]
#[allow(clippy::zombie_processes)] // every path of the polling loop kills and waits for the child
fn a_killed_run_resumes_bit_identically() {
    let base = scratch("kill");
    let config = base.join("config.toml");
    std::fs::write(&config, run_config(24)).unwrap();
    let config = config.to_str().unwrap();

    let whole = base.join("whole");
    let status = bench(&["run", "--config", config, "--out", whole.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());

    // Start the same run, kill it once a checkpoint past iteration 8 exists.
    let broken = base.join("broken");
    let mut child = bench(&["run", "--config", config, "--out", broken.to_str().unwrap()])
        .spawn()
        .unwrap();
    let dir = run_dir(&broken);
    let start = Instant::now();
    let killed_after = loop {
        if let Ok(cp) = Checkpoint::read(&dir) {
            if cp.header.iteration >= 8 {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                break cp.header.iteration;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let at_kill = Checkpoint::read(&dir).unwrap().header.iteration;
    println!("killed after the checkpoint of iteration {killed_after} (latest on disk: {at_kill})");
    assert!(at_kill < 24, "the run was killed before it finished");

    let out = bench(&["run", "--resume", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (a, b) = (
        Checkpoint::read(&run_dir(&whole)).unwrap(),
        Checkpoint::read(&dir).unwrap(),
    );
    assert_eq!(a.header.iteration, 24);
    assert_eq!(
        a.vectors, b.vectors,
        "x, y and the method state are bit-identical"
    );
    assert_eq!(a.header.oracles, b.header.oracles);
    let metrics = |c: &Checkpoint| {
        c.header
            .evaluations
            .iter()
            .map(|e| (e.iteration, e.oracle_calls, e.metrics.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(metrics(&a), metrics(&b), "same evaluations");
    let (sa, sb) = (
        steps_without_time(&run_dir(&whole)),
        steps_without_time(&dir),
    );
    assert_eq!(sa, sb, "steps.csv: same rows, none duplicated or missing");
    assert_eq!(sb.len(), 25);
    let events: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents")
        })
        .collect();
    assert_eq!(
        events.len(),
        1,
        "one TensorBoard file, rewritten from the logs on resume"
    );
}

#[test]
fn an_interrupted_checkpoint_write_leaves_the_previous_one() {
    let base = scratch("torn");
    let status = run_in(&base, &run_config(4)).status().unwrap();
    assert!(status.success());
    let dir = run_dir(&base);
    let good = Checkpoint::read(&dir).unwrap();
    // A crash in the middle of the next write: a partial temporary file next to the checkpoint.
    let bytes = std::fs::read(dir.join(FILE)).unwrap();
    std::fs::write(dir.join(format!("{FILE}.tmp")), &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(
        Checkpoint::read(&dir).unwrap(),
        good,
        "the previous checkpoint still loads"
    );
    // A truncated checkpoint itself is reported, not loaded.
    let torn = scratch("torn-copy");
    std::fs::write(torn.join(FILE), &bytes[..bytes.len() - 3]).unwrap();
    let err = format!("{:#}", Checkpoint::read(&torn).unwrap_err());
    // The checksum catches the cut before the parser reaches it.
    assert!(
        err.contains("truncated checkpoint") || err.contains("checksum does not match"),
        "{err}"
    );
    // Killed during the first checkpoint: only the temporary file exists, and the error says so.
    let first = scratch("torn-first");
    std::fs::write(first.join(format!("{FILE}.tmp")), &bytes[..bytes.len() / 2]).unwrap();
    let err = format!("{:#}", Checkpoint::read(&first).unwrap_err());
    assert!(
        err.contains("stopped while writing its first one") && err.contains("start the run again"),
        "{err}"
    );
}

#[test]
fn a_checkpoint_from_another_method_or_size_is_refused() {
    let base = scratch("identity");
    assert!(run_in(&base, &run_config(4)).status().unwrap().success());
    let dir = run_dir(&base);
    let cp = Checkpoint::read(&dir).unwrap();
    let saved = bilevel_bench::run::config::RunConfig::from_file(&dir.join("config.toml")).unwrap();
    let data = cp.header.data.clone();
    assert!(data.keys().any(|k| k.starts_with("glove/")), "{data:?}");
    assert!(
        data.keys().any(|k| k.starts_with("amazon_fdu_mtl/")),
        "{data:?}"
    );
    cp.check_run(&saved, "bo-rep", "one coefficient per tensor", &data)
        .unwrap();
    let err = cp
        .check_run(&saved, "bo-rep", "one shared coefficient", &data)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model size 'one coefficient per tensor'"),
        "{err}"
    );
    // Through the command, with config.toml edited: each refusal names what differs, and the
    // directory is left as it was.
    let original = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let resume_with = |config: &str, data_dir: Option<&Path>| -> String {
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let mut command = bench(&["run", "--resume", dir.to_str().unwrap()]);
        if let Some(d) = data_dir {
            command.arg("--data-dir").arg(d);
        }
        let out = command.output().unwrap();
        assert!(!out.status.success());
        std::fs::write(dir.join("config.toml"), &original).unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let before_method = original.split("[method]").next().unwrap();
    let after_method = &original[original.find("[hyper_rep]").unwrap()..];
    let err = resume_with(
        &format!("{before_method}[method]\nmethod = \"soba\"\n\n{after_method}"),
        None,
    );
    assert!(
        err.contains("the checkpoint is from method 'bo-rep', this run is 'soba'"),
        "{err}"
    );
    let err = resume_with(&original.replace("seed = 0", "seed = 1"), None);
    assert!(err.contains("`seed` (was 0, now 1)"), "{err}");
    let err = resume_with(&original.replace("eta = 0.1", "eta = 0.2"), None);
    assert!(err.contains("`method.eta` (was 0.1, now 0.2)"), "{err}");
    let err = resume_with(&original.replace("iters = 4", "iters = 2"), None);
    assert!(
        err.contains("iters = 2 is below the checkpoint's iteration 4"),
        "{err}"
    );
    // The same files with one review changed.
    let data_copy = scratch("identity-data");
    let shared = bilevel_bench::tasks::resolve_data_dir(None).unwrap();
    for sub in ["glove", "amazon_fdu_mtl"] {
        std::fs::create_dir_all(data_copy.join(sub)).unwrap();
        for entry in std::fs::read_dir(shared.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let target = data_copy.join(sub).join(path.file_name().unwrap());
            std::fs::copy(&path, &target).unwrap();
        }
    }
    let edited = data_copy.join("amazon_fdu_mtl/books.task.train");
    let mut perms = std::fs::metadata(&edited).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&edited, perms).unwrap();
    let text = std::fs::read_to_string(&edited).unwrap();
    std::fs::write(&edited, text.replacen("great", "grate", 1)).unwrap();
    let err = resume_with(&original, Some(&data_copy));
    assert!(
        err.contains("the data differs") && err.contains("amazon_fdu_mtl/books.task.train (then"),
        "{err}"
    );
    // Unchanged, it resumes.
    let out = bench(&["run", "--resume", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn divergence_stops_with_an_account_and_keeps_the_last_good_checkpoint() {
    let base = scratch("diverge");
    let out = run_in(&base, &diverging()).output().unwrap();
    assert!(!out.status.success(), "a diverging run exits non-zero");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in [
        "soba on hyper-opt, iteration",
        "is not finite at iteration",
        "lower the step sizes (gamma for x, rho for y and z)",
        "the last good checkpoint is kept",
    ] {
        assert!(stderr.contains(part), "missing '{part}' in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    let cp = Checkpoint::read(&base.join("hyper-opt/soba/seed-0")).unwrap();
    assert!(
        cp.vectors["y"].iter().all(|v| v.is_finite()),
        "the kept checkpoint is finite"
    );
}

#[test]
fn rollback_halves_the_steps_and_finishes_with_clean_logs() {
    let base = scratch("rollback");
    let out = run_in(&base, &diverging_with_rollback()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("rolling back to iteration 0 with halved step sizes"),
        "{stderr}"
    );
    let dir = base.join("hyper-opt/soba/seed-0");
    // config.toml keeps what was asked for; the checkpoint counts the halvings, so a resume
    // continues with the halved steps.
    let saved = bilevel_bench::run::config::RunConfig::from_file(&dir.join("config.toml")).unwrap();
    let Some(soba) = saved
        .method
        .as_ref()
        .and_then(|m| m.get::<bilevel_optim::methods::soba::SobaConfig>())
    else {
        panic!("soba")
    };
    assert_eq!(soba.rho.initial, 400.0);
    let rollbacks = Checkpoint::read(&dir).unwrap().header.rollbacks;
    assert!((1..=10).contains(&rollbacks), "{rollbacks}");
    let logged_step: f64 = steps_without_time(&dir)[12]
        .split(',')
        .nth(6)
        .unwrap()
        .parse()
        .unwrap();
    println!("{rollbacks} rollbacks; last step size {logged_step}");
    let steps: Vec<String> = steps_without_time(&dir)
        .iter()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(
        steps,
        (1..=12).map(|i| i.to_string()).collect::<Vec<_>>(),
        "every step once"
    );
    assert_eq!(Checkpoint::read(&dir).unwrap().header.iteration, 12);
}

/// A flag that would change a resumed run (its budget, method, task, seed) is refused with the
/// flag named, not silently ignored; nothing in the directory is touched.
#[test]
fn flags_a_resume_would_ignore_are_refused() {
    let base = scratch("resume-flags");
    for extra in [
        &["--iters", "10"][..],
        &["--method", "soba"],
        &["--task", "hyper-rep"],
    ] {
        let mut args = vec!["run", "--resume", base.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = bench(&args).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(extra[0]) && stderr.contains("would change it"),
            "{extra:?}: {stderr}"
        );
    }
}

/// A second `run` into a directory holding a finished run is refused and leaves it untouched;
/// `--overwrite` moves it aside whole before starting anew.
#[test]
fn a_finished_run_is_never_overwritten_silently() {
    let base = scratch("overwrite");
    let config = run_config(4);
    assert!(run_in(&base, &config).status().unwrap().success());
    let dir = run_dir(&base);
    let steps = std::fs::read_to_string(dir.join("steps.csv")).unwrap();

    let out = run_in(&base, &config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds a finished run") && stderr.contains("--overwrite"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("steps.csv")).unwrap(),
        steps,
        "untouched"
    );

    let again = run_in(&base, &config).arg("--overwrite").status();
    assert!(again.unwrap().success());
    let aside = PathBuf::from(format!("{}.old-1", dir.display()));
    assert_eq!(
        std::fs::read_to_string(aside.join("steps.csv")).unwrap(),
        steps,
        "kept whole"
    );
    assert!(aside.join("summary.json").exists() && dir.join("summary.json").exists());
}

/// Two runs started into one directory at once: exactly one runs (to a complete log), the other
/// is refused with the owner named, instead of both writing the same files.
#[test]
fn two_runs_into_one_directory_are_refused_not_mixed() {
    let base = scratch("concurrent");
    let config = run_config(24);
    // Both commands (and so both writes of the config file) before either run starts.
    let mut commands: Vec<_> = (0..2).map(|_| run_in(&base, &config)).collect();
    let children: Vec<_> = commands.iter_mut().map(|c| c.spawn().unwrap()).collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let succeeded = outputs.iter().filter(|o| o.status.success()).count();
    let messages: Vec<String> = outputs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    assert_eq!(succeeded, 1, "{messages:?}");
    // The refused run names the owner's pid once the owner has written it; a refusal in the
    // instant between the owner's lock and its write says "another process" alone.
    assert!(
        messages
            .iter()
            .any(|m| m.contains("in use by another process") || m.contains("holds a finished run")),
        "{messages:?}"
    );
    assert_eq!(
        steps_without_time(&run_dir(&base)).len(),
        25,
        "a complete log"
    );
}
