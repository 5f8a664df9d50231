//! The `medxfer-scores` binary end to end: its JSON output against the reference values, and a
//! clear error (never a panic) for each kind of bad input.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use medxfer_scores::faer::Mat;
use medxfer_scores::{ScoreInput, write_feature_file};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medxfer-scores")).args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_clean_failure(output: &Output, needles: &[&str]) {
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(output));
    let message = stderr(output);
    assert!(!message.contains("panicked"), "{message}");
    for needle in needles {
        assert!(message.contains(needle), "'{needle}' missing from: {message}");
    }
}

#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    // `medxfer-scores correlate ... | head -1`: it panicked ("failed printing to stdout: Broken pipe").
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/scores_vs_accuracy.csv");
    let output = medxfer_cli::output_with_stdout_closed(Command::new(env!("CARGO_BIN_EXE_medxfer-scores")).args([
        "correlate".as_ref(),
        example.as_os_str(),
        "--x".as_ref(),
        "logme".as_ref(),
        "--y".as_ref(),
        "test_balanced_accuracy".as_ref(),
    ]))
    .unwrap();
    assert_eq!(output.status.code(), Some(i32::from(medxfer_cli::CLOSED_OUTPUT_STATUS)), "{output:?}");
    assert!(output.stderr.is_empty(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn score_json_holds_every_metric_with_the_reference_values() {
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("scores_expected.json")).unwrap()).unwrap();
    let file = fixtures().join("scores/four_class.safetensors");
    let output = run(&["score", file.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let ours: Value = serde_json::from_slice(&output.stdout).unwrap();
    let object = ours.as_object().unwrap();
    assert_eq!(object.len(), 13);
    for metric in [
        "h_score",
        "nce",
        "leep",
        "logme",
        "reg_h_score",
        "gbc",
        "transrate",
        "transrate_official",
        "sfda",
        "pactran_dir",
        "pactran_gam",
        "pactran_gauss",
    ] {
        let reference = expected["cases"]["four_class"]["scores"][metric].as_f64().unwrap();
        let value = object[metric].as_f64().unwrap();
        assert!((value - reference).abs() <= 1e-8 * reference.abs(), "{metric}: {value} vs {reference}");
    }
    assert!(object["n_leep"].as_f64().unwrap().is_finite());
}

/// The fixture files of a set in scores_expected.json, and `score-set --json` over them.
fn score_set_json(set: &Value, metrics: &str) -> (Vec<String>, Value) {
    let files: Vec<String> = set["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| fixtures().join(format!("scores/{}.safetensors", m.as_str().unwrap())).display().to_string())
        .collect();
    let mut args = vec!["score-set"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--metrics", metrics, "--json"]);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    (files, serde_json::from_slice(&output.stdout).unwrap())
}

#[test]
fn score_set_json_holds_etran_over_the_files_as_the_reference_combines_it() {
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("scores_expected.json")).unwrap()).unwrap();
    let set = &expected["set"];
    let (files, ours) = score_set_json(set, "etran,sfda");
    assert_eq!(ours["files"].as_array().unwrap().len(), 4);
    for (value, reference) in ours["scores"]["etran"].as_array().unwrap().iter().zip(set["etran"].as_array().unwrap()) {
        assert!((value.as_f64().unwrap() - reference.as_f64().unwrap()).abs() <= 1e-10, "{value} vs {reference}");
    }
    for (value, member) in ours["scores"]["sfda"].as_array().unwrap().iter().zip(set["members"].as_array().unwrap()) {
        let reference = expected["cases"][member.as_str().unwrap()]["scores"]["sfda"].as_f64().unwrap();
        assert!((value.as_f64().unwrap() - reference).abs() <= 1e-8 * reference, "{member}: {value} vs {reference}");
    }
    // A set-level score of one file alone is refused, naming the way to score a set.
    let one = run(&["score", &files[0], "--metrics", "etran"]);
    assert_clean_failure(&one, &["etran is defined over a set", "score-set"]);
}

/// The same file twice (here once through a link) is refused, naming both places.
#[test]
fn score_set_refuses_one_file_given_twice() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("again.safetensors");
    std::os::unix::fs::symlink(fixtures().join("scores/set_a.safetensors"), &link).unwrap();
    let a = fixtures().join("scores/set_a.safetensors");
    let b = fixtures().join("scores/set_b.safetensors");
    let output = run(&["score-set", a.to_str().unwrap(), b.to_str().unwrap(), link.to_str().unwrap(), "--metrics", "etran"]);
    assert_clean_failure(&output, &["again.safetensors is given twice (files 1 and 3)", "each candidate's feature file once"]);
}

#[test]
fn score_set_json_holds_ncti_and_refuses_features_too_narrow_for_its_pca() {
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("scores_expected.json")).unwrap()).unwrap();
    let set = &expected["ncti_set"];
    let (files, ours) = score_set_json(set, "ncti");
    for (value, reference) in ours["scores"]["ncti"].as_array().unwrap().iter().zip(set["ncti"].as_array().unwrap()) {
        assert!((value.as_f64().unwrap() - reference.as_f64().unwrap()).abs() <= 1e-8, "{value} vs {reference}");
    }
    // The first model's first 20 features, as a model of the same images: NCTI's PCA to 64
    // cannot run, and the error says why.
    let dir = tempfile::tempdir().unwrap();
    let first = medxfer_scores::read_feature_file(Path::new(&files[0])).unwrap();
    let labels: Vec<i64> = first.labels().iter().map(|&l| l as i64).collect();
    let columns = |width: usize| Mat::from_fn(first.num_samples(), width, |i, j| first.features()[(i, j)]);
    let narrow = write_input(dir.path(), "narrow.safetensors", &ScoreInput::new(columns(20), &labels).unwrap()).display().to_string();
    let refused = run(&["score-set", &files[0], &narrow, "--metrics", "ncti"]);
    assert_clean_failure(&refused, &["NCTI", "needs at least 64 features, got 20"]);
    // With another score beside it, that one is still computed for both files; NCTI is null.
    let partial = run(&["score-set", &files[0], &narrow, "--metrics", "ncti,transrate", "--json"]);
    assert_clean_failure(&partial, &["1 of 2 score(s) failed", "ncti: "]);
    let ours: Value = serde_json::from_slice(&partial.stdout).unwrap();
    assert!(ours["scores"]["ncti"].is_null(), "{ours}");
    let transrate = ours["scores"]["transrate"].as_array().unwrap();
    assert!(transrate.len() == 2 && transrate.iter().all(|v| v.as_f64().is_some_and(f64::is_finite)), "{ours}");

    // A model of other images is refused, naming both files and how its samples differ: another
    // label (two samples swapped), fewer samples, another task's features.
    let mut swapped = labels.clone();
    let other = swapped.iter().position(|&l| l != swapped[0]).unwrap();
    swapped.swap(0, other);
    let swapped = write_input(dir.path(), "swapped.safetensors", &ScoreInput::new(columns(70), &swapped).unwrap());
    let fewer = ScoreInput::new(Mat::from_fn(290, 70, |i, j| first.features()[(i, j)]), &labels[..290]).unwrap();
    let fewer = write_input(dir.path(), "fewer.safetensors", &fewer);
    let four_class = fixtures().join("scores/four_class.safetensors");
    for (file, problem) in [
        (&swapped, format!("sample 0 has label {}, model 1's has {}", labels[other], labels[0])),
        (&fewer, "it has 290 samples, model 1 has 300".to_string()),
        (&four_class, "it has 240 samples, model 1 has 300".to_string()),
    ] {
        let refused = run(&["score-set", &files[0], &files[1], file.to_str().unwrap()]);
        assert_clean_failure(&refused, &[&problem, "model 3 of the set", file.to_str().unwrap(), "from one split"]);
        assert!(refused.stdout.is_empty(), "nothing is scored: {}", String::from_utf8_lossy(&refused.stdout));
    }
}

fn write_input(dir: &Path, name: &str, input: &ScoreInput) -> PathBuf {
    let path = dir.join(name);
    write_feature_file(&path, input).unwrap();
    path
}

fn small_input() -> ScoreInput {
    let features = Mat::from_fn(12, 3, |i, j| ((i * 5 + j * 3) % 7) as f64 + if i % 2 == 0 { 0.0 } else { 1.5 });
    ScoreInput::new(features, &[0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]).unwrap()
}

#[test]
fn without_probs_label_scores_are_left_out_and_the_output_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_input(dir.path(), "no_probs.safetensors", &small_input());
    let output = run(&["score", path.to_str().unwrap(), "--json", "--metrics", "h_score,logme,gbc"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let ours: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(ours.as_object().unwrap().len(), 3);

    let output = run(&["score", path.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("nce, leep, pactran_dir, pactran_gam skipped"), "{table}");
    assert!(!table.contains("\nleep "), "{table}");

    let output = run(&["score", path.to_str().unwrap(), "--metrics", "leep"]);
    assert_clean_failure(&output, &["no_probs.safetensors", "probs"]);
}

/// Features with no variance (every sample alike): TransRate's official normalisation divides
/// by a zero norm, so it fails; the other scores are still computed and printed (its value is
/// null), the error names it, and the command fails.
#[test]
fn a_score_that_fails_on_the_features_leaves_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let constant = ScoreInput::new(Mat::from_fn(10, 4, |_, _| 1.0), &[0, 1, 0, 1, 0, 1, 0, 1, 0, 1]).unwrap();
    let path = write_input(dir.path(), "constant.safetensors", &constant);
    let output = run(&["score", path.to_str().unwrap(), "--json", "--metrics", "h_score,transrate_official,gbc"]);
    assert_clean_failure(&output, &["constant.safetensors", "1 of 3 score(s) failed", "transrate_official: ", "zero norm"]);
    let ours: Value = serde_json::from_slice(&output.stdout).unwrap();
    // No feature separates the classes: H-score is 0.
    assert_eq!(ours["h_score"].as_f64().map(f64::abs), Some(0.0), "{ours}");
    assert!(ours["gbc"].as_f64().is_some(), "{ours}");
    assert!(ours["transrate_official"].is_null(), "{ours}");

    let output = run(&["score", path.to_str().unwrap(), "--metrics", "h_score,transrate_official"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("transrate_official       failed (below)") && table.contains("h_score "), "{table}");
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn a_truncated_file_names_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_input(dir.path(), "whole.safetensors", &small_input());
    let bytes = std::fs::read(&path).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 40]).unwrap();
    let output = run(&["score", truncated.to_str().unwrap()]);
    assert_clean_failure(&output, &["truncated.safetensors", "truncated"]);
}

#[test]
fn a_missing_file_and_a_file_without_features_are_clear_errors() {
    let output = run(&["score", "/nonexistent/features.safetensors"]);
    assert_clean_failure(&output, &["/nonexistent/features.safetensors", "cannot read"]);

    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.safetensors");
    let data = [0u8; 8];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![1], &data).unwrap();
    std::fs::write(&other, safetensors::serialize(vec![("weights", view)], None).unwrap()).unwrap();
    let output = run(&["score", other.to_str().unwrap()]);
    assert_clean_failure(&output, &["other.safetensors", "'features'", "weights"]);
}

#[test]
fn nan_features_and_a_single_class_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    for i in 0..4 {
        for j in 0..2 {
            let value: f32 = if i == 2 && j == 1 { f32::NAN } else { (i + j) as f32 };
            bytes.extend_from_slice(&value.to_le_bytes());
        }
    }
    let labels: Vec<u8> = vec![0, 1, 0, 1];
    let features = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 2], &bytes).unwrap();
    let label_view = safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![4], &labels).unwrap();
    let path = dir.path().join("nan.safetensors");
    std::fs::write(&path, safetensors::serialize(vec![("features", features), ("labels", label_view)], None).unwrap()).unwrap();
    let output = run(&["score", path.to_str().unwrap()]);
    assert_clean_failure(&output, &["nan.safetensors", "row 2, column 1"]);

    let single: Vec<u8> = vec![0, 0, 0, 0];
    let good: Vec<u8> = (0..8).flat_map(|v| (v as f32).to_le_bytes()).collect();
    let features = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 2], &good).unwrap();
    let label_view = safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![4], &single).unwrap();
    let path = dir.path().join("one_class.safetensors");
    std::fs::write(&path, safetensors::serialize(vec![("features", features), ("labels", label_view)], None).unwrap()).unwrap();
    let output = run(&["score", path.to_str().unwrap()]);
    assert_clean_failure(&output, &["one_class.safetensors", "at least two"]);
}

#[test]
fn correlate_groups_match_scipy() {
    // scipy.stats on the two groups of examples/scores_vs_accuracy.csv (scipy 1.17.1):
    // toy_a: kendalltau -> (0.9999999999999999, 0.016666666666666666), exact p-value;
    // toy_b, with a tie in accuracy -> (0.7378647873726218, 0.07697417298126674), asymptotic.
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/scores_vs_accuracy.csv");
    let output = run(&["correlate", file.to_str().unwrap(), "--x", "logme", "--y", "test_balanced_accuracy", "--group", "task", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let groups: Value = serde_json::from_slice(&output.stdout).unwrap();
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["group"], "toy_a");
    assert_eq!(groups[0]["n"], 5);
    assert!((groups[0]["tau_b"].as_f64().unwrap() - 0.9999999999999999).abs() < 1e-12);
    assert!((groups[0]["p_value"].as_f64().unwrap() - 0.016666666666666666).abs() < 1e-12);
    let b = &groups[1];
    assert_eq!(b["group"], "toy_b");
    assert!((b["tau_b"].as_f64().unwrap() - 0.7378647873726218).abs() < 1e-12, "{b}");
    assert!((b["p_value"].as_f64().unwrap() - 0.07697417298126674).abs() < 1e-12, "{b}");
}

#[test]
fn correlate_names_a_missing_column_and_a_bad_cell() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("table.csv");
    std::fs::write(&csv, "score,acc\n1,0.5\n2,abc\n").unwrap();
    let output = run(&["correlate", csv.to_str().unwrap(), "--x", "score", "--y", "accuracy"]);
    assert_clean_failure(&output, &["table.csv", "'accuracy'", "score, acc"]);
    let output = run(&["correlate", csv.to_str().unwrap(), "--x", "score", "--y", "acc"]);
    assert_clean_failure(&output, &["table.csv", "line 3", "'abc'"]);
    // A column named twice is ambiguous (it took the first); an empty file says so.
    std::fs::write(&csv, "acc,score,acc\n0.5,1,0.6\n0.7,2,0.4\n").unwrap();
    let output = run(&["correlate", csv.to_str().unwrap(), "--x", "score", "--y", "acc"]);
    assert_clean_failure(&output, &["table.csv", "2 columns are named 'acc' (columns 1 and 3)"]);
    std::fs::write(&csv, "").unwrap();
    let output = run(&["correlate", csv.to_str().unwrap(), "--x", "score", "--y", "acc"]);
    assert_clean_failure(&output, &["table.csv: the file is empty"]);
    // A NaN (a score that failed) is named by its line in that group's row; other groups stand.
    std::fs::write(&csv, "score,acc,task\n1,0.5,a\n2,0.6,b\n3,0.7,b\n4,NaN,a\n5,0.9,a\n").unwrap();
    let output = run(&["correlate", csv.to_str().unwrap(), "--x", "score", "--y", "acc", "--group", "task", "--json"]);
    let list: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(list[0]["group"], "a");
    assert_eq!(list[0]["error"], "line 5 holds NaN in column 'acc': remove such rows, or fill in the value");
    assert_eq!((list[1]["group"].as_str(), list[1]["tau_b"].as_f64()), (Some("b"), Some(1.0)));
}
