//! Sentiment140: the original CSV, the LEAF JSON, and plain one-tweet-per-line files.

use std::path::Path;

use super::{read_text, DataError, LabelledText};

/// The original CSV: six quoted columns `polarity, id, date, query, user, text`, polarity 0
/// (negative), 2 (neutral) or 4 (positive); UTF-8 or Latin-1. Neutral rows are returned with
/// `None` so callers can drop them knowingly.
pub fn load_sentiment140_csv(path: &Path) -> Result<Vec<(String, Option<usize>)>, DataError> {
    let bytes = super::fingerprint::read(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes.as_slice());
    let mut out = Vec::new();
    // The first record with a field that is not UTF-8, and how many fields fell back to Latin-1.
    let mut latin1: Option<(usize, usize)> = None;
    for (n, record) in reader.byte_records().enumerate() {
        let line = n + 1;
        let record =
            record.map_err(|e| DataError::at(path, line, format!("not a CSV row: {e}")))?;
        if record.len() != 6 {
            return Err(DataError::at(
                path,
                line,
                format!("{} columns, expected 6", record.len()),
            ));
        }
        let mut decode = |b: &[u8]| match std::str::from_utf8(b) {
            Ok(s) => s.to_string(),
            Err(_) => {
                latin1.get_or_insert((line, 0)).1 += 1;
                b.iter().map(|&c| c as char).collect()
            }
        };
        let label = match decode(&record[0]).trim() {
            "0" => Some(0),
            "2" => None,
            "4" => Some(1),
            other => {
                return Err(DataError::at(
                    path,
                    line,
                    format!("polarity '{other}' is not 0, 2 or 4"),
                ))
            }
        };
        out.push((decode(&record[5]), label));
    }
    if let Some((first, count)) = latin1 {
        super::say_once(path, &super::latin1_note(path, first, count));
    }
    if out.is_empty() {
        return Err(DataError::file(path, "no tweets (the file is empty)"));
    }
    Ok(out)
}

/// LEAF's Sentiment140 JSON: `{"users": […], "user_data": {u: {"x": [[id, date, query, user,
/// text], …], "y": […]}}}`, users in the order of `users`. Labels may be "0"/"4" strings or
/// 0/1/4 numbers.
pub fn load_leaf_json(path: &Path) -> Result<Vec<LabelledText>, DataError> {
    let text = read_text(path)?;
    let root: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| DataError::at(path, e.line(), format!("not valid JSON: {e}")))?;
    let bad = |m: String| DataError::file(path, m);
    let users = root
        .get("users")
        .and_then(|u| u.as_array())
        .ok_or_else(|| bad("no 'users' array".into()))?;
    let data = root
        .get("user_data")
        .and_then(|d| d.as_object())
        .ok_or_else(|| bad("no 'user_data' object".into()))?;
    let mut out = Vec::new();
    for user in users {
        let name = user
            .as_str()
            .ok_or_else(|| bad(format!("user {user} is not a string")))?;
        let entry = data
            .get(name)
            .ok_or_else(|| bad(format!("user '{name}' has no user_data")))?;
        let (xs, ys) = match (
            entry.get("x").and_then(|x| x.as_array()),
            entry.get("y").and_then(|y| y.as_array()),
        ) {
            (Some(x), Some(y)) if x.len() == y.len() => (x, y),
            _ => {
                return Err(bad(format!(
                    "user '{name}': 'x' and 'y' must be arrays of equal length"
                )))
            }
        };
        for (k, (x, y)) in xs.iter().zip(ys).enumerate() {
            let text = x
                .as_array()
                .and_then(|f| f.get(4))
                .and_then(|t| t.as_str())
                .ok_or_else(|| {
                    bad(format!(
                        "user '{name}', sample {k}: the text (element 4 of x) is missing"
                    ))
                })?;
            let label = match y {
                serde_json::Value::String(s) if s == "0" => 0,
                serde_json::Value::String(s) if s == "4" || s == "1" => 1,
                serde_json::Value::Number(n) if n.as_u64() == Some(0) => 0,
                serde_json::Value::Number(n) if matches!(n.as_u64(), Some(1) | Some(4)) => 1,
                other => {
                    return Err(bad(format!(
                        "user '{name}', sample {k}: label {other} is not 0 or 4"
                    )))
                }
            };
            out.push(LabelledText {
                text: text.to_string(),
                label,
                domain: String::new(),
            });
        }
    }
    Ok(out)
}

/// One text per line, all with `label`. Blank lines are kept as empty texts (a tweet with no
/// usable token), so line numbers stay aligned with indices.
pub fn load_lines(path: &Path, label: usize) -> Result<Vec<LabelledText>, DataError> {
    let text = read_text(path)?;
    if text.trim().is_empty() {
        return Err(DataError::file(path, "the file has no texts"));
    }
    Ok(text
        .lines()
        .map(|l| LabelledText {
            text: l.trim_end_matches('\r').to_string(),
            label,
            domain: String::new(),
        })
        .collect())
}
