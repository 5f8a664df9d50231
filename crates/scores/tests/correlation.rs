//! Correlations against scipy.stats (fixtures/correlation_expected.json): kendalltau (exact and
//! asymptotic p-values, with and without ties), weightedtau, pearsonr, spearmanr.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use medxfer_scores::correlate;
use serde_json::Value;

#[test]
fn correlations_match_scipy() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/correlation_expected.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let values = |key: &str| -> Vec<f64> { case[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
        let ours = correlate(&values("x"), &values("y")).unwrap();
        let check = |what: &str, ours: f64, tolerance: f64| {
            let theirs = case[what].as_f64().unwrap();
            assert!((ours - theirs).abs() <= tolerance * theirs.abs().max(1e-300), "{name}/{what}: ours {ours}, scipy {theirs}");
        };
        check("tau_b", ours.tau_b, 1e-12);
        check("p_value", ours.p_value, 1e-12);
        check("weighted_tau", ours.weighted_tau, 1e-12);
        check("pearson", ours.pearson, 1e-12);
        check("spearman", ours.spearman, 1e-12);
    }
}
