//! Every loader on the real files of ../shared/data and on small files written here, and every
//! malformed input rejected with the file and line in the message.

use std::io::Write;
use std::path::{Path, PathBuf};

use bilevel_bench::data::glove::load_glove;
use bilevel_bench::data::reviews::{load_arsc, load_dataset_json, load_fdu_mtl};
use bilevel_bench::data::tweets::{load_leaf_json, load_lines, load_sentiment140_csv};
use bilevel_bench::tasks::resolve_data_dir;

fn data() -> PathBuf {
    resolve_data_dir(None).expect("the shared data directory (../shared/data or BILEVEL_DATA_DIR)")
}

/// A scratch file with `content`, in a directory unique to the process; removed (with the
/// directory, once empty) when the returned path is dropped.
fn scratch(name: &str, content: &[u8]) -> ScratchFile {
    let dir = std::env::temp_dir().join(format!("bilevel-loaders-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(content)
        .unwrap();
    ScratchFile(path)
}

/// A scratch file's path that removes the file when dropped.
struct ScratchFile(PathBuf);

impl std::ops::Deref for ScratchFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn message<T: std::fmt::Debug>(r: Result<T, bilevel_bench::data::DataError>) -> String {
    r.expect_err("malformed input must be rejected").to_string()
}

#[test]
fn real_review_files_load() {
    let d = data();
    let arsc = load_arsc(
        &d.join("amazon_arsc_yu2018/automotive.t4.train"),
        "automotive",
    )
    .unwrap();
    assert!(
        arsc.len() > 10 && arsc.iter().any(|r| r.label == 0) && arsc.iter().any(|r| r.label == 1)
    );
    assert!(arsc
        .iter()
        .all(|r| r.domain == "automotive" && !r.text.contains('\t')));
    let fdu = load_fdu_mtl(&d.join("amazon_fdu_mtl/apparel.task.train"), "apparel").unwrap();
    assert!(
        fdu.len() > 1000 && fdu.iter().any(|r| r.label == 0) && fdu.iter().any(|r| r.label == 1)
    );
}

#[test]
fn real_tweet_files_load() {
    let d = data().join("sentiment140");
    let manual = load_sentiment140_csv(&d.join("testdata.manual.2009.06.14.csv")).unwrap();
    let count = |l: Option<usize>| manual.iter().filter(|(_, x)| *x == l).count();
    assert_eq!(
        (manual.len(), count(Some(0)), count(None), count(Some(1))),
        (498, 177, 139, 182)
    );
    let big =
        load_sentiment140_csv(&d.join("training.1600000.processed.noemoticon.head10k_tail10k.csv"))
            .unwrap();
    assert_eq!(big.len(), 20_000);
    // The head of the 1.6M file is negative and its tail positive (the file holds 9,999 and
    // 10,001 of them), negatives first.
    let negatives = big.iter().take_while(|(_, l)| *l == Some(0)).count();
    assert_eq!(negatives, 9_999);
    assert!(big[negatives..].iter().all(|(_, l)| *l == Some(1)));
    let negative = load_lines(&d.join("tweets_100k_head50k_negative.txt"), 0).unwrap();
    assert_eq!(negative.len(), 50_000);
}

#[test]
fn real_glove_file_loads() {
    let g = load_glove(&data().join("glove/glove.6B.50d.vocab_min5.txt.gz")).unwrap();
    assert_eq!((g.len(), g.dim, g.vectors.len()), (58_207, 50, 58_207 * 50));
    let the = g.id("the").expect("'the' has a vector") as usize;
    assert!(
        (g.vectors[the * 50] - 0.418).abs() < 1e-6,
        "first value of 'the' in GloVe 6B 50d"
    );
}

#[test]
fn official_formats_load() {
    let json = scratch(
        "dataset.json",
        br#"[{"text": "great blade", "label": "positive", "domain": "automotive"},
             {"text": "broke fast", "label": "negative", "domain": "tools"}]"#,
    );
    let reviews = load_dataset_json(&json).unwrap();
    assert_eq!(
        (
            reviews[0].label,
            reviews[1].label,
            reviews[1].domain.as_str()
        ),
        (1, 0, "tools")
    );

    let leaf = scratch(
        "leaf.json",
        br#"{"users": ["b", "a"], "num_samples": [1, 2],
             "user_data": {"a": {"x": [["1","d","q","a","hello"], ["2","d","q","a","bye"]], "y": ["4", 0]},
                           "b": {"x": [["3","d","q","b","first"]], "y": [1]}}}"#,
    );
    let tweets = load_leaf_json(&leaf).unwrap();
    let got: Vec<(&str, usize)> = tweets.iter().map(|t| (t.text.as_str(), t.label)).collect();
    assert_eq!(
        got,
        [("first", 1), ("hello", 1), ("bye", 0)],
        "users in the order of 'users'"
    );

    // Latin-1 CSV: é as the single byte 0xE9.
    let csv = scratch(
        "latin1.csv",
        b"\"4\",\"1\",\"d\",\"q\",\"u\",\"caf\xe9 ok\"\n\"0\",\"2\",\"d\",\"q\",\"u\",\"bad\"\n",
    );
    let rows = load_sentiment140_csv(&csv).unwrap();
    assert_eq!(rows[0], ("café ok".to_string(), Some(1)));

    // Plain and gzipped GloVe of another dimension, with a word containing spaces.
    let text = "the 1 2 3\n. . . 4 5 6\ncat 7 8 9\n";
    let plain = load_glove(&scratch("g3.txt", text.as_bytes())).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    let zipped = load_glove(&scratch("g3.txt.gz", &gz.finish().unwrap())).unwrap();
    for g in [&plain, &zipped] {
        assert_eq!((g.dim, g.len()), (3, 3));
        assert_eq!(
            &g.vectors[g.id(". . .").unwrap() as usize * 3..][..3],
            &[4.0, 5.0, 6.0]
        );
    }
}

/// Each malformed input, and the message it must give (file and line).
#[test]
fn malformed_inputs_name_the_file_and_line() {
    type Loader = Box<dyn Fn(&Path) -> String>;
    let cases: Vec<(ScratchFile, Loader, &str)> = vec![
        (
            scratch("arsc_label", b"good one\t1\nbad one\t3\n"),
            Box::new(|p| message(load_arsc(p, "d"))),
            ":2: label '3' is not 1 or -1",
        ),
        (
            scratch("arsc_tab", b"no tab here\n"),
            Box::new(|p| message(load_arsc(p, "d"))),
            ":1: expected 'text<TAB>label'",
        ),
        (
            scratch("fdu_label", b"1\tok\nyes\tno\n"),
            Box::new(|p| message(load_fdu_mtl(p, "d"))),
            ":2: label 'yes' is not 0 or 1",
        ),
        (
            scratch("csv_cols", b"\"0\",\"1\",\"d\",\"q\",\"u\"\n"),
            Box::new(|p| message(load_sentiment140_csv(p))),
            ":1: 5 columns, expected 6",
        ),
        (
            scratch(
                "csv_pol",
                b"\"0\",\"1\",\"d\",\"q\",\"u\",\"t\"\n\"3\",\"1\",\"d\",\"q\",\"u\",\"t\"\n",
            ),
            Box::new(|p| message(load_sentiment140_csv(p))),
            ":2: polarity '3' is not 0, 2 or 4",
        ),
        (
            scratch("glove_dim", b"a 1 2\nb 3 4\nc 5\n"),
            Box::new(|p| message(load_glove(p))),
            ":3: 1 values where the first line has 2",
        ),
        (
            scratch("glove_long", b"a 1 2\nb 3 4 5\n"),
            Box::new(|p| message(load_glove(p))),
            ":2: 3 values where the first line has 2",
        ),
        (
            scratch("glove_nan", b"a 1 2\nb 3 x\n"),
            Box::new(|p| message(load_glove(p))),
            ":2: 'x' is not a number",
        ),
        (
            scratch("glove_empty", b"\n\n"),
            Box::new(|p| message(load_glove(p))),
            ": no word vectors in the file",
        ),
        (
            scratch("glove_gz", &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]),
            Box::new(|p| message(load_glove(p))),
            ":1: cannot read (corrupt gzip or not text?)",
        ),
        (
            scratch(
                "json_label",
                br#"[{"text": "a", "label": "meh", "domain": "d"}]"#,
            ),
            Box::new(|p| message(load_dataset_json(p))),
            ":1: record 1: label 'meh' is not positive or negative",
        ),
        (
            scratch("json_field", br#"[{"text": "a", "label": "positive"}]"#),
            Box::new(|p| message(load_dataset_json(p))),
            ":1: record 1 has no string field 'domain'",
        ),
        (
            scratch("json_bad", b"[{\"text\": "),
            Box::new(|p| message(load_dataset_json(p))),
            "not valid JSON",
        ),
        (
            scratch("leaf_users", br#"{"user_data": {}}"#),
            Box::new(|p| message(load_leaf_json(p))),
            ": no 'users' array",
        ),
        (
            scratch("lines_empty", b"  \n"),
            Box::new(|p| message(load_lines(p, 0))),
            ": the file has no texts",
        ),
        (
            scratch("arsc_empty", b"\n \n"),
            Box::new(|p| message(load_arsc(p, "d"))),
            ": no reviews (the file is empty)",
        ),
        (
            scratch("fdu_empty", b""),
            Box::new(|p| message(load_fdu_mtl(p, "d"))),
            ": no reviews (the file is empty)",
        ),
        (
            scratch("csv_empty", b""),
            Box::new(|p| message(load_sentiment140_csv(p))),
            ": no tweets (the file is empty)",
        ),
        (
            ScratchFile(PathBuf::from("/nonexistent/bilevel/file.txt")),
            Box::new(|p| message(load_lines(p, 0))),
            "/nonexistent/bilevel/file.txt: file not found",
        ),
    ];
    for (path, load, expected) in cases {
        let msg = load(&path);
        assert!(
            msg.contains(expected),
            "{}: got '{msg}', expected '{expected}'",
            path.display()
        );
        assert!(
            msg.starts_with(&path.display().to_string()),
            "'{msg}' must start with the path"
        );
    }
}
