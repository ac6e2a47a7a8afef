//! Embedded text batches: truncation to T, packing, empty texts, bad input.

use bilevel_models::text::EmbeddedTexts;

fn texts() -> EmbeddedTexts {
    // Word k has the vector (k, −k).
    let vectors = (0..4).flat_map(|k| [k as f32, -(k as f32)]).collect();
    EmbeddedTexts::new(
        2,
        vectors,
        vec![vec![1, 2, 3], vec![], vec![3, 3, 3, 3, 3]],
        vec![0, 1, 1],
    )
    .unwrap()
}

#[test]
fn batches_are_truncated_and_packed() {
    let batch = texts().batch::<f64, 2>(&[0, 1, 2], 4);
    assert_eq!(
        batch.mask.lengths(),
        &[3, 1, 4],
        "cut at T = 4; an empty text is one step"
    );
    assert_eq!(batch.mask.order(), &[2, 0, 1], "longest first");
    assert_eq!(batch.steps.len(), 4, "as many steps as the longest");
    let step = |t: usize| batch.steps[t].as_vec();
    assert_eq!(
        step(0),
        vec![3.0, -3.0, 1.0, -1.0, 0.0, 0.0],
        "packed order; the empty text reads a zero vector"
    );
    assert_eq!(
        step(1),
        vec![3.0, -3.0, 2.0, -2.0],
        "the empty text has ended"
    );
    assert_eq!(step(2), vec![3.0, -3.0, 3.0, -3.0]);
    assert_eq!(step(3), vec![3.0, -3.0], "only the longest text is left");
    assert_eq!(
        batch.labels,
        vec![0, 1, 1],
        "labels stay in the caller's order"
    );
    assert_eq!(
        batch.targets::<2>().as_vec(),
        vec![1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    );
}

#[test]
fn bad_collections_are_rejected_with_a_reason() {
    let err = EmbeddedTexts::new(3, vec![0.0; 7], vec![], vec![]).unwrap_err();
    assert!(err.contains("3-d"), "{err}");
    let err = EmbeddedTexts::new(2, vec![0.0; 4], vec![vec![0], vec![1]], vec![0]).unwrap_err();
    assert!(err.contains("2 texts but 1 labels"), "{err}");
    let err = EmbeddedTexts::new(2, vec![0.0; 4], vec![vec![0], vec![2]], vec![0, 1]).unwrap_err();
    assert!(
        err.contains("text 1") && err.contains("2 word vectors"),
        "{err}"
    );
}
