//! Degenerate but legal input gives finite scores computed the reference way; input a score
//! cannot use gives a clear error.

#![allow(clippy::unwrap_used)]

use medxfer_scores::faer::Mat;
use medxfer_scores::{Error, Metric, ScoreInput, gbc, h_score, score_all};

const FEATURE_SCORES: [Metric; 5] = [Metric::HScore, Metric::NLeep, Metric::LogMe, Metric::RegHScore, Metric::Gbc];

fn labels(n: usize) -> Vec<i64> {
    (0..n as i64).map(|i| i % 2).collect()
}

#[test]
fn constant_features_give_finite_scores_and_a_zero_h_score() {
    let input = ScoreInput::new(Mat::from_fn(30, 6, |_, j| j as f64 * 0.5 + 1.0), &labels(30)).unwrap();
    for (metric, value) in score_all(&input, &FEATURE_SCORES).unwrap() {
        assert!(value.is_finite(), "{metric}: {value}");
    }
    // cov(F) = 0, so pinv(cov(F)) = 0 and the trace is 0.
    assert_eq!(h_score(&input).unwrap(), 0.0);
}

#[test]
fn rank_deficient_and_wide_features_give_finite_scores() {
    // 20 samples, 50 features that are 5 independent ones repeated: rank 5, like ViT's features.
    let base = Mat::from_fn(20, 5, |i, j| ((i * 31 + j * 17) % 13) as f64 / 13.0 + if i % 2 == 0 { 0.3 } else { 0.0 });
    let input = ScoreInput::new(Mat::from_fn(20, 50, |i, j| base[(i, j % 5)] * (1.0 + j as f64 / 50.0)), &labels(20)).unwrap();
    for (metric, value) in score_all(&input, &FEATURE_SCORES).unwrap() {
        assert!(value.is_finite(), "{metric}: {value}");
    }
}

#[test]
fn a_class_with_one_sample_is_refused_by_gbc_only() {
    let mut y = vec![0i64; 9];
    y.push(1);
    let input = ScoreInput::new(Mat::from_fn(10, 3, |i, j| (i * 3 + j) as f64 % 7.0), &y).unwrap();
    let error = gbc(&input).unwrap_err();
    assert!(matches!(error, Error::SmallClass { class: 1, count: 1, .. }), "{error}");
    assert!(error.to_string().contains("class 1"));
    assert!(h_score(&input).unwrap().is_finite());
}

#[test]
fn label_scores_without_probabilities_name_what_is_missing() {
    let input = ScoreInput::new(Mat::from_fn(4, 2, |i, j| (i + j) as f64), &labels(4)).unwrap();
    let error = score_all(&input, &[Metric::Leep]).unwrap_err();
    assert!(matches!(error, Error::MissingSourceProbs { metric: "leep" }), "{error}");
}

#[test]
fn n_leep_needs_five_samples_per_class_at_least() {
    let input = ScoreInput::new(Mat::from_fn(8, 2, |i, j| (i * 2 + j) as f64), &labels(8)).unwrap();
    let error = score_all(&input, &[Metric::NLeep]).unwrap_err();
    assert!(error.to_string().contains("needs at least 10 samples"), "{error}");
}

/// A feature file whose labels skip some of its task's classes (Cheng's set: brain labels 1, 2,
/// 3, no 0) is scored as the same partition with the gaps closed: every score equals that of the
/// file labelled 0..C-1 (the file was refused: "class(es) [0] have no sample").
#[test]
fn a_feature_file_whose_labels_skip_classes_is_scored_as_the_same_partition() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/scores/four_class.safetensors");
    let bytes = std::fs::read(fixture).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let labels: Vec<i64> =
        file.tensor("labels").unwrap().data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(labels.iter().copied().collect::<std::collections::BTreeSet<_>>(), (0..4).collect());
    let dir = tempfile::tempdir().unwrap();
    let relabelled = dir.path().join("relabelled.safetensors");
    // The fixture with each label mapped by `map`, read back.
    let read_relabelled = |map: &dyn Fn(i64) -> i64| {
        let data: Vec<u8> = labels.iter().flat_map(|&l| map(l).to_le_bytes()).collect();
        let views = file.names().into_iter().map(|name| {
            let view = file.tensor(name).unwrap();
            let view = match name {
                "labels" => safetensors::tensor::TensorView::new(view.dtype(), view.shape().to_vec(), &data).unwrap(),
                _ => view,
            };
            (name.to_string(), view)
        });
        safetensors::serialize_to_file(views, None, &relabelled).unwrap();
        medxfer_scores::read_feature_file(&relabelled)
    };
    // 0, 1, 2, 3 -> 1, 3, 4, 7: order kept, gaps between.
    let closed = read_relabelled(&|l| [1, 3, 4, 7][l as usize]).unwrap();
    let original = medxfer_scores::read_feature_file(fixture.as_ref()).unwrap();
    let metrics: Vec<Metric> = Metric::per_model().collect();
    assert_eq!(score_all(&closed, &metrics).unwrap(), score_all(&original, &metrics).unwrap());
    // Negative labels are still refused.
    let error = read_relabelled(&|l| l - 1).unwrap_err().to_string();
    assert!(error.contains("has label -1"), "{error}");
}
