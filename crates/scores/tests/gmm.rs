//! EM of the Gaussian mixture against scikit-learn's GaussianMixture from the same explicit
//! start (fixtures/gmm_expected.json).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use medxfer_scores::faer::Mat;
use medxfer_scores::{GaussianMixture, GmmConfig, GmmStart};
use serde_json::Value;

const TOLERANCE: f64 = 1e-8;

fn matrix(value: &Value) -> Mat<f64> {
    let rows: Vec<Vec<f64>> =
        value.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()).collect();
    Mat::from_fn(rows.len(), rows[0].len(), |i, j| rows[i][j])
}

fn vector(value: &Value) -> Vec<f64> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

fn close(what: &str, ours: f64, theirs: f64) {
    let error = (ours - theirs).abs() / theirs.abs().max(1.0);
    assert!(error <= TOLERANCE, "{what}: ours {ours}, scikit-learn {theirs}, error {error:e}");
}

#[test]
fn em_from_an_explicit_start_matches_scikit_learn() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gmm_expected.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let x = matrix(&case["x"]);
        let weights = vector(&case["weights_init"]);
        let k = weights.len();
        let start = GmmStart::Explicit {
            weights,
            means: matrix(&case["means_init"]),
            covariances: case["covariances_init"].as_array().unwrap().iter().map(matrix).collect(),
        };
        let config = GmmConfig {
            reg_covar: case["reg_covar"].as_f64().unwrap(),
            tol: case["tol"].as_f64().unwrap(),
            max_iter: case["max_iter"].as_u64().unwrap() as usize,
        };
        let fit = GaussianMixture::fit(x.as_ref(), k, &config, &start).unwrap();
        assert_eq!(fit.n_iter as u64, case["n_iter"].as_u64().unwrap(), "{name}: iterations");
        assert_eq!(fit.converged, case["converged"].as_bool().unwrap(), "{name}: converged");
        close(&format!("{name}: lower bound"), fit.lower_bound, case["lower_bound"].as_f64().unwrap());
        for (c, w) in vector(&case["weights"]).into_iter().enumerate() {
            close(&format!("{name}: weight {c}"), fit.weights[c], w);
        }
        let means = matrix(&case["means"]);
        for c in 0..k {
            for j in 0..x.ncols() {
                close(&format!("{name}: mean {c},{j}"), fit.means[(c, j)], means[(c, j)]);
            }
            let covariance = matrix(&case["covariances"][c]);
            for i in 0..x.ncols() {
                for j in 0..x.ncols() {
                    close(&format!("{name}: covariance {c} ({i},{j})"), fit.covariances[c][(i, j)], covariance[(i, j)]);
                }
            }
        }
        let proba = fit.predict_proba(x.as_ref());
        let expected = matrix(&case["predict_proba"]);
        for i in 0..x.nrows() {
            for c in 0..k {
                assert!((proba[(i, c)] - expected[(i, c)]).abs() <= TOLERANCE, "{name}: posterior ({i},{c})");
            }
        }
    }
}

#[test]
fn more_components_than_samples_is_an_error() {
    let x = Mat::from_fn(3, 2, |i, j| (i + j) as f64);
    let result = GaussianMixture::fit(x.as_ref(), 5, &GmmConfig::default(), &GmmStart::KMeans { seed: 42 });
    assert!(result.is_err());
}
