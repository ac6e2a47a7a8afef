//! The small statistics and checks that comparisons and grid searches share.

/// The q-quantile (linear interpolation) of `values`.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Refuses a list that names an item twice: two runs of the same item would share a run
/// directory (and, with --jobs, write it at the same time).
pub fn ensure_distinct<T: PartialEq + std::fmt::Display>(
    flag: &str,
    items: &[T],
) -> anyhow::Result<()> {
    for (i, item) in items.iter().enumerate() {
        if items[..i].contains(item) {
            anyhow::bail!("{flag} lists {item} twice");
        }
    }
    Ok(())
}
