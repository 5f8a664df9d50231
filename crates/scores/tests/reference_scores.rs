//! The seven scores against the reference Python implementations (python/reference_scores.py,
//! numpy/scipy/scikit-learn versions in the fixture), on the cases fixtures/make_fixtures.py wrote.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use medxfer_scores::{Metric, read_feature_file, score_all};
use serde_json::Value;

/// Deterministic scores agree with the reference to this relative error.
const EXACT_RELATIVE: f64 = 1e-8;
/// N-LEEP's mixture starts from k-means++ with another random stream than numpy's. On data whose
/// clusters every start finds (scikit-learn gives one value over 100 seeds), ours agrees to this.
const N_LEEP_CLUSTERED: f64 = 1e-6;
/// Elsewhere scikit-learn's own value moves with its seed (by up to 0.08 on these cases); ours
/// must fall inside the range of its values over 100 seeds, widened by this.
const N_LEEP_SEED_MARGIN: f64 = 5e-3;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("scores_expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_score_matches_the_reference_code() {
    let expected = expected();
    let cases = expected["cases"].as_object().unwrap();
    assert!(cases.len() >= 8);
    for (name, case) in cases {
        let input = read_feature_file(&fixtures().join("scores").join(format!("{name}.safetensors"))).unwrap();
        let ours = score_all(&input, &Metric::ALL).unwrap();
        let exact: Vec<&str> = case["exact"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        for (metric, value) in ours {
            assert!(value.is_finite(), "{name}/{metric}: {value}");
            let reference = case["scores"][metric.as_str()].as_f64().unwrap();
            if exact.contains(&metric.as_str()) {
                let relative = (value - reference).abs() / reference.abs().max(1e-300);
                assert!(relative <= EXACT_RELATIVE, "{name}/{metric}: ours {value}, reference {reference}, relative error {relative:e}");
            }
            // Null where 100 of scikit-learn's starts do not bound N-LEEP's spread (make_fixtures.py).
            if metric == Metric::NLeep && !case["n_leep_seed_range"].is_null() {
                let range = &case["n_leep_seed_range"];
                let (low, high) = (range[0].as_f64().unwrap(), range[1].as_f64().unwrap());
                assert!(
                    value >= low - N_LEEP_SEED_MARGIN && value <= high + N_LEEP_SEED_MARGIN,
                    "{name}/n_leep: ours {value}, scikit-learn over seeds [{low}, {high}]"
                );
                if case["n_leep_compared"].as_bool().unwrap() {
                    assert!((value - reference).abs() <= N_LEEP_CLUSTERED, "{name}/n_leep: ours {value}, reference {reference}");
                }
            }
        }
    }
}

/// The scores beyond the paper's seven against python/reference_scores.py's restatements of
/// their authors' released code, on every case (N < D, a constant feature, ReLU features, two to
/// four classes).
#[test]
fn the_newer_scores_match_their_released_code() {
    let expected = expected();
    for (name, case) in expected["cases"].as_object().unwrap() {
        let input = read_feature_file(&fixtures().join("scores").join(format!("{name}.safetensors"))).unwrap();
        for (metric, value) in score_all(&input, &Metric::BEYOND).unwrap() {
            let reference = case["scores"][metric.as_str()].as_f64().unwrap_or_else(|| panic!("{name}/{metric}: no reference value"));
            let relative = (value - reference).abs() / reference.abs().max(1e-300);
            assert!(relative <= EXACT_RELATIVE, "{name}/{metric}: ours {value}, reference {reference}, relative error {relative:e}");
        }
    }
}

/// ETran's per-model terms against mgholamikn/ETran's released functions (the energy only where
/// N >= 200 leaves samples to average; upstream's NaN below is an error here), and the set-level
/// combination over four cases taken as candidate models.
#[test]
fn etran_terms_and_their_combination_match_the_released_code() {
    let expected = expected();
    let load = |name: &str| read_feature_file(&fixtures().join("scores").join(format!("{name}.safetensors"))).unwrap();
    for (name, case) in expected["cases"].as_object().unwrap() {
        let input = load(name);
        let lda = medxfer_scores::etran_lda(&input).unwrap();
        let reference = case["scores"]["etran_lda"].as_f64().unwrap();
        assert!((lda - reference).abs() <= 1e-10 * reference.abs(), "{name}/etran_lda: ours {lda}, reference {reference}");
        match case["scores"]["etran_energy"].as_f64() {
            Some(reference) => {
                let energy = medxfer_scores::etran_energy(&input).unwrap();
                assert!((energy - reference).abs() <= 1e-12 * reference.abs(), "{name}/etran_energy: ours {energy}, reference {reference}");
            }
            None => {
                let error = medxfer_scores::etran_energy(&input).unwrap_err().to_string();
                assert!(error.contains("needs at least 200 samples"), "{name}: {error}");
            }
        }
    }
    let set = &expected["set"];
    let inputs: Vec<_> = set["members"].as_array().unwrap().iter().map(|m| load(m.as_str().unwrap())).collect();
    let scores = medxfer_scores::score_set(&inputs, &[Metric::Etran, Metric::Transrate]).unwrap();
    assert_eq!(scores[0].0, Metric::Etran);
    for (ours, reference) in scores[0].1.iter().zip(set["etran"].as_array().unwrap()) {
        let reference = reference.as_f64().unwrap();
        assert!((ours - reference).abs() <= 1e-10, "etran over the set: ours {ours}, reference {reference}");
    }
    // The per-model scores of a set are each model's own.
    for (input, value) in inputs.iter().zip(&scores[1].1) {
        assert_eq!(*value, medxfer_scores::transrate(input, medxfer_scores::TRANSRATE_EPS).unwrap());
    }
    // One model is not a set, and a set-level score of one model alone is refused.
    assert!(medxfer_scores::score_set(&inputs[..1], &[Metric::Etran]).is_err());
    let alone = score_all(&inputs[0], &[Metric::Etran]).unwrap_err().to_string();
    assert!(alone.contains("score_set"), "{alone}");
}

/// NCTI's terms against BUserName/NCTI's `NCTI_Score` (exact PCA; the LDA written out as
/// scikit-learn computes it, with the authors' 1/(N - C) within factor and with 1.9's 1/N, the
/// latter asserted equal to the installed scikit-learn when the fixtures were written), on both
/// LDA solver paths and two to eight classes; the combination over sets of four and three
/// models; and the clear refusal below 64 samples or features.
#[test]
fn ncti_terms_and_their_combination_match_the_released_code() {
    let expected = expected();
    let load = |name: &str| read_feature_file(&fixtures().join("scores").join(format!("{name}.safetensors"))).unwrap();
    let close = |ours: f64, reference: &Value, what: &str| {
        let reference = reference.as_f64().unwrap();
        let relative = (ours - reference).abs() / reference.abs();
        assert!(relative <= EXACT_RELATIVE, "{what}: ours {ours}, reference {reference}, relative error {relative:e}");
    };
    let mut compared = 0;
    for (name, case) in expected["cases"].as_object().unwrap() {
        let input = load(name);
        let scores = &case["scores"];
        if scores.get("ncti_seli").is_none() {
            let error = medxfer_scores::ncti_terms(&input).unwrap_err().to_string();
            assert!(error.contains("needs at least 64"), "{name}: {error}");
            continue;
        }
        compared += 1;
        let terms = medxfer_scores::ncti_terms(&input).unwrap();
        close(terms.seli, &scores["ncti_seli"], &format!("{name}/seli"));
        close(terms.ncc, &scores["ncti_ncc"], &format!("{name}/ncc"));
        close(terms.vc, &scores["ncti_vc"], &format!("{name}/vc"));
        let sklearn_1_9 = medxfer_scores::ncti_terms_with(&input, medxfer_scores::LdaWithinFactor::N).unwrap();
        close(sklearn_1_9.seli, &scores["ncti_seli_fac_n"], &format!("{name}/seli, 1/N"));
        close(sklearn_1_9.ncc, &scores["ncti_ncc_fac_n"], &format!("{name}/ncc, 1/N"));
        close(sklearn_1_9.vc, &scores["ncti_vc_fac_n"], &format!("{name}/vc, 1/N"));
    }
    assert!(compared >= 4, "{compared} NCTI cases");
    let set = &expected["ncti_set"];
    let inputs: Vec<_> = set["members"].as_array().unwrap().iter().map(|m| load(m.as_str().unwrap())).collect();
    let combined = medxfer_scores::score_set(&inputs, &[Metric::Ncti]).unwrap();
    let first_three = medxfer_scores::score_set(&inputs[..3], &[Metric::Ncti]).unwrap();
    for (ours, reference) in combined[0]
        .1
        .iter()
        .zip(set["ncti"].as_array().unwrap())
        .chain(first_three[0].1.iter().zip(set["ncti_first_three"].as_array().unwrap()))
    {
        let reference = reference.as_f64().unwrap();
        assert!((ours - reference).abs() <= 1e-8, "ncti over the set: ours {ours}, reference {reference}");
    }
    // From stored terms, the same combination.
    let terms: Vec<Vec<f64>> = inputs.iter().map(|i| medxfer_scores::set_terms(i, Metric::Ncti).unwrap()).collect();
    assert_eq!(medxfer_scores::combine_terms(Metric::Ncti, &terms).unwrap(), combined[0].1);
    assert!(medxfer_scores::combine_terms(Metric::Ncti, &[vec![1.0, 2.0]]).is_err());
    // A model's NCTI moves when the set changes: the fourth model joining changes the others'.
    assert!((combined[0].1[0] - first_three[0].1[0]).abs() > 1e-3);
    let alone = score_all(&inputs[0], &[Metric::Ncti]).unwrap_err().to_string();
    assert!(alone.contains("score_set"), "{alone}");
}

#[test]
fn n_leep_ranks_the_clustered_cases_as_the_reference_does() {
    let expected = expected();
    let names = ["clustered_noisier", "clustered_pure", "clustered_noisy"];
    let mut ours = Vec::new();
    let mut reference = Vec::new();
    for name in names {
        let input = read_feature_file(&fixtures().join("scores").join(format!("{name}.safetensors"))).unwrap();
        ours.push(medxfer_scores::n_leep(&input).unwrap());
        reference.push(expected["cases"][name]["scores"]["n_leep"].as_f64().unwrap());
    }
    let order = |values: &[f64]| {
        let mut index: Vec<usize> = (0..values.len()).collect();
        index.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
        index
    };
    assert_eq!(order(&ours), order(&reference), "ours {ours:?}, reference {reference:?}");
}

#[test]
fn each_score_alone_equals_its_value_in_score_all() {
    let input = read_feature_file(&fixtures().join("scores/four_class.safetensors")).unwrap();
    let all = score_all(&input, &Metric::ALL).unwrap();
    let alone = [
        medxfer_scores::h_score(&input),
        medxfer_scores::nce(&input),
        medxfer_scores::leep(&input),
        medxfer_scores::n_leep(&input),
        medxfer_scores::logme(&input),
        medxfer_scores::reg_h_score(&input),
        medxfer_scores::gbc(&input),
    ];
    for ((metric, shared), alone) in all.into_iter().zip(alone) {
        assert_eq!(shared, alone.unwrap(), "{metric}");
    }
}

/// A score's value does not depend on which other scores share its analysis: each per-model
/// score asked for alone gives the same bits as in one call for all of them (the shared Gram is
/// the same sum of class shares either way).
#[test]
fn every_score_alone_equals_its_value_among_all() {
    for case in ["four_class", "wide"] {
        let input = read_feature_file(&fixtures().join(format!("scores/{case}.safetensors"))).unwrap();
        let metrics: Vec<Metric> = Metric::per_model().collect();
        for (metric, shared) in score_all(&input, &metrics).unwrap() {
            let alone = score_all(&input, &[metric]).unwrap()[0].1;
            assert_eq!(shared.to_bits(), alone.to_bits(), "{case}/{metric}: {shared} among all, {alone} alone");
        }
    }
}
