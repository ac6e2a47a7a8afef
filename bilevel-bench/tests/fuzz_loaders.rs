//! A fuzz of every loader: 2,000 random inputs each (random bytes, and mutations of valid
//! files), none of which may panic; each either loads or returns an error naming the file.

use std::path::{Path, PathBuf};

use bilevel_bench::data::glove::load_glove;
use bilevel_bench::data::reviews::{load_arsc, load_dataset_json, load_fdu_mtl};
use bilevel_bench::data::tweets::{load_leaf_json, load_lines, load_sentiment140_csv};
use rand::{Rng, SeedableRng};

const SEEDS: &[&[u8]] = &[
    b"great blade\t1\nbad one\t-1\n",
    b"1\tgood shoes\n0\tbad fit\n",
    br#"[{"text": "a b", "label": "positive", "domain": "d"}, {"text": "c", "label": "negative", "domain": "e"}]"#,
    b"\"0\",\"1\",\"Mon\",\"q\",\"u\",\"so sad\"\n\"4\",\"2\",\"Tue\",\"q\",\"v\",\"yay, \"\"fun\"\"\"\n",
    br#"{"users": ["a"], "user_data": {"a": {"x": [["1","d","q","a","hi there"]], "y": ["4"]}}}"#,
    b"the 0.1 0.2\ncat -0.5 1e-3\n",
];

fn mutate(rng: &mut impl Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.gen_range(1..6) {
        let choice = rng.gen_range(0..4);
        if out.is_empty() || choice == 0 {
            let at = rng.gen_range(0..=out.len());
            let bytes: Vec<u8> = (0..rng.gen_range(1..8))
                .map(|_| {
                    *b"\t\n\",{}[]:-0149 ex\xe9\xff"
                        .get(rng.gen_range(0..19))
                        .unwrap()
                })
                .collect();
            out.splice(at..at, bytes);
        } else if choice == 1 {
            let at = rng.gen_range(0..out.len());
            out.remove(at);
        } else if choice == 2 {
            let at = rng.gen_range(0..out.len());
            out[at] = rng.gen();
        } else {
            let cut = rng.gen_range(0..=out.len());
            out.truncate(cut);
        }
    }
    out
}

/// A loader under test: `None` when it loaded, else its error message.
type Loader = Box<dyn Fn(&Path) -> Option<String>>;

fn loaders() -> Vec<(&'static str, Loader)> {
    let err = |r: Result<usize, bilevel_bench::data::DataError>| r.err().map(|e| e.to_string());
    vec![
        (
            "arsc",
            Box::new(move |p| err(load_arsc(p, "d").map(|v| v.len()))),
        ),
        (
            "fdu",
            Box::new(move |p| err(load_fdu_mtl(p, "d").map(|v| v.len()))),
        ),
        (
            "json",
            Box::new(move |p| err(load_dataset_json(p).map(|v| v.len()))),
        ),
        (
            "csv",
            Box::new(move |p| err(load_sentiment140_csv(p).map(|v| v.len()))),
        ),
        (
            "leaf",
            Box::new(move |p| err(load_leaf_json(p).map(|v| v.len()))),
        ),
        (
            "lines",
            Box::new(move |p| err(load_lines(p, 1).map(|v| v.len()))),
        ),
        (
            "glove",
            Box::new(move |p| err(load_glove(p).map(|v| v.len()))),
        ),
    ]
}

#[test]
fn loaders_never_panic_on_random_input() {
    let dir: PathBuf = std::env::temp_dir().join(format!("bilevel-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let (mut loaded, mut rejected) = (0, 0);
    for round in 0..2000 {
        let input: Vec<u8> = if round % 4 == 0 {
            (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect()
        } else {
            mutate(&mut rng, SEEDS[round % SEEDS.len()])
        };
        for (name, load) in loaders() {
            let path = dir.join(format!("{name}-{round}"));
            std::fs::write(&path, &input).unwrap();
            match load(&path) {
                None => loaded += 1,
                Some(message) => {
                    assert!(
                        message.starts_with(&path.display().to_string()),
                        "{name}: '{message}' does not name the file"
                    );
                    rejected += 1;
                }
            }
        }
    }
    println!("{loaded} inputs loaded, {rejected} rejected with a message, no panic");
    // 14,000 files: never left behind in the temporary directory.
    let _ = std::fs::remove_dir_all(&dir);
    assert!(loaded > 0 && rejected > 0);
}
