//! A fuzz of the other inputs a user or a crash can hand the bench: run configurations (TOML)
//! and checkpoint files. Thousands of mutated inputs each, seeded; none may panic, and each is
//! either accepted or refused with a message naming the file.

use std::path::Path;

use bilevel_bench::run::checkpoint::{Checkpoint, FILE};
use bilevel_bench::run::config::RunConfig;
use bilevel_optim::crc32c::crc32c;
use rand::{Rng, SeedableRng};

const CASES: usize = 3000;

const CONFIGS: &[&str] = &[
    "task = \"hyper-opt\"\niters = 20\neval_every = 5\n[hyper_opt]\nbatch = 8\n[method]\nmethod = \"bo-rep\"\neta = 0.1\n",
    "task = \"hyper-clean\"\nseed = 3\non_divergence = \"rollback\"\n[hyper_clean]\ntrain_size = 2000\n[method]\nmethod = \"soba\"\nrho = { initial = 0.5, exponent = 0.0 }\n",
    "task = \"hyper-rep\"\n[hyper_rep]\nshots = 2\n[method]\nmethod = \"f2sa\"\n",
    "task = \"hyper-opt\"\n[method]\nmethod = \"vrbo\"\ninner_steps = 3\n",
];

/// TOML fragments that make configurations wrong in interesting ways.
const FRAGMENTS: &[&str] = &[
    "=",
    "\"",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\n",
    " ",
    "-1",
    "0",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "18446744073709551616",
    "0.0",
    "true",
    "\"big\"",
    "method",
    "iters",
    "[method]",
    "eta",
    "seed",
    "task",
    "#",
    "'",
    "\u{e9}",
    "\\",
    ".",
    "[[x]]",
    "x = 1\n",
];

fn mutate_text(rng: &mut impl Rng, input: &str) -> String {
    let mut out: Vec<char> = input.chars().collect();
    for _ in 0..rng.gen_range(1..5) {
        let at = rng.gen_range(0..=out.len());
        match rng.gen_range(0..3) {
            0 => {
                let f = FRAGMENTS[rng.gen_range(0..FRAGMENTS.len())];
                out.splice(at..at, f.chars());
            }
            1 if at < out.len() => {
                let end = (at + rng.gen_range(1..6)).min(out.len());
                out.drain(at..end);
            }
            _ => {
                // Replace a number by another.
                if let Some(pos) = out.iter().position(|c| c.is_ascii_digit()) {
                    let f = ["0", "-3", "nan", "1e30", "2.5", "99999999999"][rng.gen_range(0..6)];
                    out.splice(pos..pos + 1, f.chars());
                }
            }
        }
    }
    out.into_iter().collect()
}

#[test]
fn configurations_never_panic() {
    let dir = std::env::temp_dir().join(format!("bilevel-fuzz-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(19);
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..CASES {
        let text = mutate_text(&mut rng, CONFIGS[case % CONFIGS.len()]);
        std::fs::write(&path, &text).unwrap();
        let config = match RunConfig::from_file(&path) {
            Ok(c) => c,
            Err(e) => {
                let message = format!("{e:#}");
                assert!(
                    message.contains(&path.display().to_string()),
                    "case {case}: a parse error must name the file: {message}"
                );
                refused += 1;
                continue;
            }
        };
        match config
            .validate()
            .and_then(|()| config.method().validate().map_err(Into::into))
        {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty(), "case {case}");
                refused += 1;
            }
        }
    }
    println!("{accepted} configurations accepted, {refused} refused, no panic");
    assert!(accepted > 30 && refused > 1000, "{accepted} {refused}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn mutate_bytes(rng: &mut impl Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..5) {
            0 => {
                let at = rng.gen_range(0..out.len());
                out[at] ^= 1 << rng.gen_range(0..8);
            }
            1 => {
                let at = rng.gen_range(0..out.len());
                out[at] = [0, 0xff, 0x7f, 0x80][rng.gen_range(0..4)];
            }
            2 => out.truncate(rng.gen_range(0..out.len())),
            3 => {
                // A huge count or length where one is read.
                let at = rng.gen_range(0..out.len().saturating_sub(8).max(1));
                let end = (at + 8).min(out.len());
                for b in &mut out[at..end] {
                    *b = 0xff;
                }
            }
            _ => {
                let at = rng.gen_range(0..=out.len());
                out.splice(at..at, [0u8, 1, 2, 3].into_iter().take(rng.gen_range(1..4)));
            }
        }
        if out.is_empty() {
            break;
        }
    }
    out
}

/// `bytes` with its trailing checksum recomputed, so the mutation reaches the parser.
fn with_valid_checksum(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() >= 4 {
        let body = bytes.len() - 4;
        let crc = crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
    }
    bytes
}

fn a_checkpoint(dir: &Path) -> Vec<u8> {
    // Written by the bench's own writer, with every header field and an empty vector.
    let header: bilevel_bench::run::checkpoint::Header =
        serde_json::from_value(serde_json::json!({
            "task": "hyper-opt", "method": "bo-rep", "model": "m", "iteration": 2,
            "train_seconds": 0.5, "method_scalars": {"t": 2.0},
            "oracles": {"counts": {"upper_grad": 1, "lower_grad": 2, "hvp": 3, "jvp": 4,
                                   "upper_samples": 8, "lower_samples": 16},
                        "seed": vec![1; 32], "stream": 0, "word_pos": 8},
            "sampler": [5], "evaluations": [], "config": "seed = 0\n", "data": {}, "rollbacks": 0
        }))
        .unwrap();
    let cp = Checkpoint {
        header,
        vectors: [
            (
                "x".to_string(),
                vec![0.5, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0],
            ),
            ("y".to_string(), vec![1.0; 5]),
            ("method.z".to_string(), vec![]),
        ]
        .into(),
    };
    cp.write(dir).unwrap();
    std::fs::read(dir.join(FILE)).unwrap()
}

#[test]
fn checkpoint_files_never_panic() {
    let dir = std::env::temp_dir().join(format!("bilevel-fuzz-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let good = a_checkpoint(&dir);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(23);
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..CASES {
        let mutated = mutate_bytes(&mut rng, &good);
        // Half the cases keep a valid checksum, to reach the parser behind it.
        let bytes = if case % 2 == 0 {
            with_valid_checksum(mutated)
        } else {
            mutated
        };
        std::fs::write(dir.join(FILE), &bytes).unwrap();
        match Checkpoint::read(&dir) {
            Ok(_) => accepted += 1,
            Err(e) => {
                let message = format!("{e:#}");
                assert!(message.contains(FILE), "case {case}: {message}");
                refused += 1;
            }
        }
    }
    println!("{accepted} checkpoints read, {refused} refused, no panic");
    assert!(refused > CASES / 2, "{refused}");
    let _ = std::fs::remove_dir_all(&dir);
}
