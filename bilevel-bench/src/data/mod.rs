//! Loaders for the text data of the tasks, each reporting malformed input by file and line.
//!
//! | format | loader |
//! |---|---|
//! | ARSC few-shot reviews, `text<TAB>±1` | [`reviews::load_arsc`] |
//! | FDU-MTL reviews, `label<TAB>text` | [`reviews::load_fdu_mtl`] |
//! | the official Amazon `dataset.json` (`{"text","label","domain"}`) | [`reviews::load_dataset_json`] |
//! | Sentiment140 CSV (6 quoted columns, labels 0/2/4, UTF-8 or Latin-1) | [`tweets::load_sentiment140_csv`] |
//! | LEAF Sentiment140 JSON | [`tweets::load_leaf_json`] |
//! | one text per line | [`tweets::load_lines`] |
//! | GloVe text vectors, plain or gzipped, any dimension | [`glove::load_glove`] |
//!
//! Labels are class indices: 0 = negative, 1 = positive.

pub mod error;
pub mod fingerprint;
pub mod glove;
pub mod reviews;
pub mod tokenize;
pub mod tweets;

pub use error::DataError;

/// One labelled text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledText {
    /// The raw text.
    pub text: String,
    /// 0 = negative, 1 = positive.
    pub label: usize,
    /// The product domain (reviews) or "" (tweets).
    pub domain: String,
}

/// Reads a whole file as text, line by line UTF-8, with the path in the error. A line that is not
/// UTF-8 is read as Latin-1 (every byte a character), and that fallback is reported on stderr
/// with the file, the first such line and how many there are, rather than silently.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String, DataError> {
    let bytes = fingerprint::read(path).map_err(|e| DataError::io(path, e))?;
    let (text, latin1) = decode_lines(bytes);
    if let Some((first, count)) = latin1 {
        say_once(path, &latin1_note(path, first, count));
    }
    Ok(text)
}

/// Prints `note` about `path` once per process: a comparison loads the same data once per run.
pub(crate) fn say_once(path: &std::path::Path, note: &str) {
    static SAID: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !said.iter().any(|p| p == path) {
        said.push(path.to_path_buf());
        eprintln!("{note}");
    }
}

/// What [`read_text`] says when it falls back to Latin-1.
pub(crate) fn latin1_note(path: &std::path::Path, first: usize, count: usize) -> String {
    let more = match count {
        1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    format!(
        "warning: {}:{first}: not UTF-8; this line{more} read as Latin-1",
        path.display()
    )
}

/// `bytes` as text, each line UTF-8 or else Latin-1; with the first Latin-1 line (1-based) and
/// the number of such lines.
pub(crate) fn decode_lines(bytes: Vec<u8>) -> (String, Option<(usize, usize)>) {
    match String::from_utf8(bytes) {
        Ok(s) => (s, None),
        Err(e) => {
            let bytes = e.into_bytes();
            let mut text = String::with_capacity(bytes.len());
            let mut latin1: Option<(usize, usize)> = None;
            for (k, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
                match std::str::from_utf8(line) {
                    Ok(s) => text.push_str(s),
                    Err(_) => {
                        text.extend(line.iter().map(|&b| b as char));
                        latin1.get_or_insert((k + 1, 0)).1 += 1;
                    }
                }
            }
            (text, latin1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decode_lines;

    /// One invalid byte garbles its own line only, and the fallback names it.
    #[test]
    fn one_bad_byte_makes_one_line_latin1() {
        let good = "caf\u{e9} ok\nfine \u{2014} here\n".as_bytes().to_vec();
        let mut bad = good.clone();
        bad.extend_from_slice(b"bad \xe9 byte\nlast caf\xc3\xa9\n");
        let (text, latin1) = decode_lines(bad);
        assert_eq!(
            text,
            "caf\u{e9} ok\nfine \u{2014} here\nbad \u{e9} byte\nlast caf\u{e9}\n"
        );
        assert_eq!(latin1, Some((3, 1)));
        assert_eq!(decode_lines(good).1, None);
    }
}
