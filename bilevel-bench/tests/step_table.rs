//! docs/bench.md's table "Which steps the pair sets" is what `tune` does: for every built-in
//! method, the fields that `MethodConfig::set_level_steps` changes are the ones its row names.

use std::collections::BTreeSet;

use bilevel_optim::methods::{registry, MethodConfig};

const BENCH_DOC: &str = include_str!("../../docs/bench.md");

/// The table's rows: (methods, fields of the lower step, fields of the upper step), each field
/// as written in backticks in its cell.
fn table() -> Vec<(Vec<String>, BTreeSet<String>, BTreeSet<String>)> {
    let start = BENCH_DOC
        .find("Which steps the pair sets")
        .expect("docs/bench.md's step table");
    let ticked = |cell: &str| -> BTreeSet<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    BENCH_DOC[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let methods = cells[1].split(',').map(|m| m.trim().to_string()).collect();
            (methods, ticked(cells[2]), ticked(cells[3]))
        })
        .collect()
}

/// The names of the leaves of `value` equal to `target`, a schedule's `initial` named by its
/// field (`eta.initial` is `eta`).
fn fields_equal_to(value: &toml::Value, target: f64, name: &str, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(t) => {
            for (key, v) in t {
                let field = if key == "initial" { name } else { key };
                fields_equal_to(v, target, field, out);
            }
        }
        toml::Value::Float(f) if *f == target => {
            out.insert(name.to_string());
        }
        _ => {}
    }
}

#[test]
fn the_step_table_names_the_fields_each_grid_pair_sets() {
    let rows = table();
    assert!(rows.len() > 10, "{} rows", rows.len());
    let (lower, upper) = (0.123_456_789, 0.987_654_321);
    for name in registry::names() {
        let (_, want_lower, want_upper) = rows
            .iter()
            .find(|(methods, ..)| methods.iter().any(|m| m == name))
            .unwrap_or_else(|| panic!("docs/bench.md's step table has no row for {name}"));
        let mut config = MethodConfig::default_for(name).unwrap();
        config.set_level_steps(lower, upper);
        let value = toml::Value::try_from(&config).unwrap();
        let (mut got_lower, mut got_upper) = (BTreeSet::new(), BTreeSet::new());
        fields_equal_to(&value, lower, "", &mut got_lower);
        fields_equal_to(&value, upper, "", &mut got_upper);
        assert_eq!(
            (&got_lower, &got_upper),
            (want_lower, want_upper),
            "{name}: set_level_steps sets {got_lower:?} (lower) and {got_upper:?} (upper); \
             docs/bench.md says otherwise"
        );
    }
}
