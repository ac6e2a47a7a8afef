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

/// Reads a whole file as text, accepting UTF-8 and falling back to Latin-1 (every byte a
/// character), with the path in the error.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => e.into_bytes().iter().map(|&b| b as char).collect(),
    })
}
