//! Amazon review files: ARSC (`text<TAB>±1`), FDU-MTL (`label<TAB>text`) and the official
//! `dataset.json`.

use std::path::Path;

use super::{read_text, DataError, LabelledText};

/// ARSC few-shot files, one review per line, `text<TAB>1` (positive) or `text<TAB>-1`.
pub fn load_arsc(path: &Path, domain: &str) -> Result<Vec<LabelledText>, DataError> {
    tab_separated(path, |line_no, line| {
        let (text, label) = line
            .rsplit_once('\t')
            .ok_or_else(|| DataError::at(path, line_no, "expected 'text<TAB>label'"))?;
        let label = match label.trim() {
            "1" => 1,
            "-1" => 0,
            other => {
                return Err(DataError::at(
                    path,
                    line_no,
                    format!("label '{other}' is not 1 or -1"),
                ))
            }
        };
        Ok(LabelledText {
            text: text.to_string(),
            label,
            domain: domain.to_string(),
        })
    })
}

/// FDU-MTL files, one review per line, `0<TAB>text` (negative) or `1<TAB>text`.
pub fn load_fdu_mtl(path: &Path, domain: &str) -> Result<Vec<LabelledText>, DataError> {
    tab_separated(path, |line_no, line| {
        let (label, text) = line
            .split_once('\t')
            .ok_or_else(|| DataError::at(path, line_no, "expected 'label<TAB>text'"))?;
        let label = match label.trim() {
            "0" => 0,
            "1" => 1,
            other => {
                return Err(DataError::at(
                    path,
                    line_no,
                    format!("label '{other}' is not 0 or 1"),
                ))
            }
        };
        Ok(LabelledText {
            text: text.to_string(),
            label,
            domain: domain.to_string(),
        })
    })
}

fn tab_separated(
    path: &Path,
    mut parse: impl FnMut(usize, &str) -> Result<LabelledText, DataError>,
) -> Result<Vec<LabelledText>, DataError> {
    let text = read_text(path)?;
    let reviews: Vec<LabelledText> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| parse(n + 1, l.trim_end_matches('\r')))
        .collect::<Result<_, _>>()?;
    if reviews.is_empty() {
        return Err(DataError::file(path, "no reviews (the file is empty)"));
    }
    Ok(reviews)
}

/// The official Amazon file: a JSON array of `{"text": …, "label": "positive"|"negative",
/// "domain": …}`. The record number (1-based) stands in for the line.
pub fn load_dataset_json(path: &Path) -> Result<Vec<LabelledText>, DataError> {
    let text = read_text(path)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| DataError::at(path, e.line(), format!("not valid JSON: {e}")))?;
    let records = value
        .as_array()
        .ok_or_else(|| DataError::file(path, "expected a JSON array of reviews"))?;
    records
        .iter()
        .enumerate()
        .map(|(n, r)| {
            let field = |key: &str| {
                r.get(key).and_then(|v| v.as_str()).ok_or_else(|| {
                    DataError::at(
                        path,
                        n + 1,
                        format!("record {} has no string field '{key}'", n + 1),
                    )
                })
            };
            let label = match field("label")? {
                "positive" => 1,
                "negative" => 0,
                other => {
                    return Err(DataError::at(
                        path,
                        n + 1,
                        format!(
                            "record {}: label '{other}' is not positive or negative",
                            n + 1
                        ),
                    ))
                }
            };
            Ok(LabelledText {
                text: field("text")?.to_string(),
                label,
                domain: field("domain")?.to_string(),
            })
        })
        .collect()
}
