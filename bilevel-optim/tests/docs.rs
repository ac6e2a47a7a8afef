//! The method example of `docs/architecture.md` ("Writing a new method") is SOBA's file as it is:
//! every line of the example, without the comments added for the reader, stands in
//! `methods/soba.rs` in the same order. A change to the trait or the macros that leaves the guide
//! behind fails here.

const GUIDE: &str = include_str!("../../docs/architecture.md");
const SOBA: &str = include_str!("../src/methods/soba.rs");

/// The lines of the guide's Rust block that starts with `first`, without blank lines, comment
/// lines (doc comments stay: they are code) and trailing comments set off by two spaces.
fn example_lines(first: &str) -> Vec<String> {
    let start = GUIDE
        .find(&format!("```rust\n{first}"))
        .expect("the guide's method example");
    let body = &GUIDE[start + "```rust\n".len()..];
    let end = body.find("```").expect("the example's closing fence");
    body[..end]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && (!l.starts_with("//") || l.starts_with("///")))
        .map(|l| match l.find("  //") {
            Some(k) => l[..k].trim_end().to_string(),
            None => l.to_string(),
        })
        .collect()
}

#[test]
fn the_guides_method_example_is_sobas_file_as_it_is() {
    let source: Vec<&str> = SOBA.lines().map(str::trim).collect();
    let example = example_lines("impl Method for SobaConfig");
    assert!(example.len() > 20, "{} lines", example.len());
    let mut at = 0;
    for line in &example {
        match source[at..].iter().position(|l| l == line) {
            Some(k) => at += k + 1,
            None => panic!(
                "docs/architecture.md's example has `{line}`, which methods/soba.rs does not \
                 have after line {at}: update the guide"
            ),
        }
    }
}
