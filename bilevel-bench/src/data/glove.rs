//! GloVe vectors in the standard text format (`word v1 … vd`), plain or gzip, any dimension.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use super::DataError;

/// Word vectors: a row-major table and the row of each word.
#[derive(Debug, Clone)]
pub struct WordVectors {
    /// The vectors' dimension.
    pub dim: usize,
    /// Every vector, row after row.
    pub vectors: Vec<f32>,
    /// Each word's row.
    pub index: HashMap<String, u32>,
}

impl WordVectors {
    /// The number of words.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there is no word.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The row of `word`, if it has a vector.
    pub fn id(&self, word: &str) -> Option<u32> {
        self.index.get(word).copied()
    }
}

/// Loads a GloVe file (gzip is recognised by its magic bytes). The dimension is taken from the
/// first line; a later line of another dimension, a value that is not a number, or an empty file
/// is an error naming the line. Words containing spaces (a few rows of the 840B file) are kept:
/// the last `d` fields are the vector.
pub fn load_glove(path: &Path) -> Result<WordVectors, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::new(super::fingerprint::Recorded::new(file, path));
    let gz = reader
        .fill_buf()
        .map_err(|e| DataError::io(path, e))?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gz {
        Box::new(GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut out = WordVectors {
        dim: 0,
        vectors: Vec::new(),
        index: HashMap::new(),
    };
    for (n, line) in BufReader::new(reader).lines().enumerate() {
        let line_no = n + 1;
        let line = line.map_err(|e| {
            DataError::at(
                path,
                line_no,
                format!("cannot read (corrupt gzip or not text?): {e}"),
            )
        })?;
        let fields: Vec<&str> = line.split(' ').filter(|f| !f.is_empty()).collect();
        if fields.is_empty() {
            continue;
        }
        if out.dim == 0 {
            if fields.len() < 2 {
                return Err(DataError::at(
                    path,
                    line_no,
                    "a GloVe line is a word followed by its vector",
                ));
            }
            out.dim = fields.len() - 1;
        }
        // Words may hold spaces, so the vector is the line's last `dim` fields; a line with too few
        // fields, or whose word part would itself end in numbers, has another count of values.
        let split = fields.len().saturating_sub(out.dim);
        let too_short = split == 0;
        let too_long = split > 1 && fields[1..split].iter().all(|f| f.parse::<f32>().is_ok());
        if too_short || too_long {
            return Err(DataError::at(
                path,
                line_no,
                format!(
                    "{} values where the first line has {}",
                    fields.len() - 1,
                    out.dim
                ),
            ));
        }
        let word = fields[..split].join(" ");
        for value in &fields[split..] {
            let v: f32 = value
                .parse()
                .map_err(|_| DataError::at(path, line_no, format!("'{value}' is not a number")))?;
            if !v.is_finite() {
                return Err(DataError::at(
                    path,
                    line_no,
                    format!("'{value}' is not a finite number"),
                ));
            }
            out.vectors.push(v);
        }
        let row = out.index.len() as u32;
        // The first occurrence of a word wins, as in the usual GloVe readers.
        match out.index.entry(word) {
            std::collections::hash_map::Entry::Occupied(_) => {
                out.vectors.truncate(out.vectors.len() - out.dim)
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(row);
            }
        }
    }
    if out.is_empty() {
        return Err(DataError::file(path, "no word vectors in the file"));
    }
    Ok(out)
}
