//! The example `transformer_cleaning` (a transformer of dfdx modules, data hyper-cleaning on
//! synthetic sequences): its problem passes the checker, and BO-REP, with the exact products
//! through the attention, gives the flipped sequences low weights and lifts validation accuracy.

#[path = "../../examples/transformer_cleaning.rs"]
mod example;

#[test]
fn borep_cleans_the_labels_of_a_transformer() {
    let outcome = example::run(300).expect("the problem checks and runs");
    assert!(
        outcome.flipped_weight < 0.5 * outcome.clean_weight,
        "flipped {:.3} against clean {:.3}",
        outcome.flipped_weight,
        outcome.clean_weight
    );
    assert!(
        outcome.accuracy_after > outcome.accuracy_before + 0.1,
        "validation accuracy {:.3} → {:.3}",
        outcome.accuracy_before,
        outcome.accuracy_after
    );
}
