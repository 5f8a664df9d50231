#![allow(clippy::unwrap_used)]
//! Thousands of damaged feature files (truncated, bit-flipped, sizes in the header set to
//! boundary integers, spans deleted or repeated): reading each, and scoring it when it reads,
//! answers with an error or a value, never a panic.

use medxfer_mutate::{Mutator, never_panics};
use medxfer_scores::faer::Mat;
use medxfer_scores::{Metric, ScoreInput, read_feature_file, score_all, write_feature_file};

#[test]
fn mutated_feature_files_are_read_and_scored_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    // 24 images, 5 features, 3 classes, 4 source classes: small enough to score thousands.
    let (rows, cols) = (24, 5);
    let data: Vec<f64> = (0..rows * cols).map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.3 + (i / cols % 3) as f64).collect();
    let labels: Vec<i64> = (0..rows as i64).map(|i| i % 3).collect();
    let probs = Mat::<f64>::from_fn(rows, 4, |i, j| if (i + j) % 4 == 0 { 0.7 } else { 0.1 });
    let input = ScoreInput::from_row_major(rows, cols, &data, &labels).unwrap().with_source_probs(probs).unwrap();
    let original_path = dir.path().join("features.safetensors");
    write_feature_file(&original_path, &input).unwrap();
    let original = std::fs::read(&original_path).unwrap();
    assert_eq!(score_all(&read_feature_file(&original_path).unwrap(), &Metric::ALL).unwrap().len(), 7);

    let path = dir.path().join("mutant.safetensors");
    let mut read = 0;
    let failures = never_panics(
        1500,
        11,
        |m: &mut Mutator| m.bytes(&original),
        |bytes: &Vec<u8>| {
            std::fs::write(&path, bytes).unwrap();
            match read_feature_file(&path) {
                Ok(input) => {
                    read += 1;
                    let _ = score_all(&input, &Metric::ALL);
                }
                Err(error) => assert!(error.to_string().contains("mutant.safetensors"), "an error that does not name the file: {error}"),
            }
        },
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Some mutants change only values (and are scored), most break the file.
    assert!(read > 20, "only {read} mutants read");
}
