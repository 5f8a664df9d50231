//! The on-disk form of a score input: one safetensors file holding `features` (N x D, f32 or
//! f64), `labels` (N, any integer dtype) and optionally `probs` (N x Cs, f32 or f64, the source
//! model's softmax). medxfer-train's `extract` writes such files; the CLI reads them.

use std::fs;
use std::path::Path;

use faer::Mat;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};
use crate::input::{ScoreInput, SourceProbs};

fn file_error(path: &Path, problem: impl Into<String>) -> Error {
    Error::FeatureFile { path: path.to_path_buf(), problem: problem.into() }
}

/// Reads a feature file into a validated [`ScoreInput`].
pub fn read_feature_file(path: &Path) -> Result<ScoreInput> {
    let bytes = fs::read(path).map_err(|e| file_error(path, format!("cannot read the file: {e}")))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| {
        file_error(
            path,
            format!("not a valid safetensors file ({e}); it may be truncated or not a feature file: re-run the extraction that wrote it"),
        )
    })?;
    let features = tensors.tensor("features").map_err(|_| {
        file_error(
            path,
            format!(
                "has no tensor named 'features' (it holds: {}); expected features N x D, labels N, optional probs N x Cs",
                list_names(&tensors)
            ),
        )
    })?;
    let features = float_matrix(path, "features", &features)?;
    let labels = tensors.tensor("labels").map_err(|_| file_error(path, "has no tensor named 'labels' (N integers 0..C-1)"))?;
    let labels = close_label_gaps(integer_vector(path, &labels)?);
    let input = ScoreInput::new(features, &labels).map_err(|e| file_error(path, e.to_string()))?;
    let Ok(probs) = tensors.tensor("probs") else {
        return Ok(input);
    };
    let with_probs = if probs.dtype() == Dtype::F32 {
        // Kept in single precision: exact in f64 arithmetic, half the memory.
        let (rows, cols) = matrix_shape(path, "probs", &probs)?;
        let mut matrix = Mat::<f32>::zeros(rows, cols);
        for (index, b) in probs.data().chunks_exact(4).enumerate() {
            matrix[(index / cols, index % cols)] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        input.with_source_probs_f32(matrix)
    } else {
        input.with_source_probs(float_matrix(path, "probs", &probs)?)
    };
    with_probs.map_err(|e| file_error(path, e.to_string()))
}

/// Writes features (f64), labels (i64) and optional probabilities (at their stored precision),
/// atomically: the file appears whole or not at all.
pub fn write_feature_file(path: &Path, input: &ScoreInput) -> Result<()> {
    let features = input.features();
    let feature_bytes: Vec<u8> =
        (0..features.nrows()).flat_map(|i| (0..features.ncols()).map(move |j| features[(i, j)])).flat_map(f64::to_le_bytes).collect();
    let label_bytes: Vec<u8> = input.labels().iter().flat_map(|&l| (l as i64).to_le_bytes()).collect();
    let mut views = vec![
        ("features".to_string(), tensor_view(path, Dtype::F64, vec![features.nrows(), features.ncols()], &feature_bytes)?),
        ("labels".to_string(), tensor_view(path, Dtype::I64, vec![input.num_samples()], &label_bytes)?),
    ];
    let prob_bytes: Vec<u8>;
    if let Some(probs) = input.source_probs() {
        let (rows, cols) = probs.shape();
        let dtype = match probs {
            SourceProbs::F32(m) => {
                prob_bytes = (0..rows).flat_map(|i| (0..cols).map(move |j| m[(i, j)])).flat_map(f32::to_le_bytes).collect();
                Dtype::F32
            }
            SourceProbs::F64(m) => {
                prob_bytes = (0..rows).flat_map(|i| (0..cols).map(move |j| m[(i, j)])).flat_map(f64::to_le_bytes).collect();
                Dtype::F64
            }
        };
        views.push(("probs".to_string(), tensor_view(path, dtype, vec![rows, cols], &prob_bytes)?));
    }
    let bytes = safetensors::serialize(views, None).map_err(|e| file_error(path, format!("cannot serialise: {e}")))?;
    medxfer_durable::write_atomic(path, &bytes).map_err(|e| file_error(e.path(), e.problem()))
}

fn tensor_view<'a>(path: &Path, dtype: Dtype, shape: Vec<usize>, bytes: &'a [u8]) -> Result<TensorView<'a>> {
    TensorView::new(dtype, shape, bytes).map_err(|e| file_error(path, format!("cannot build a tensor: {e}")))
}

fn list_names(tensors: &SafeTensors<'_>) -> String {
    let mut names = tensors.names();
    names.sort_unstable();
    if names.is_empty() { "nothing".to_string() } else { names.join(", ") }
}

fn matrix_shape(path: &Path, name: &str, view: &TensorView<'_>) -> Result<(usize, usize)> {
    let shape = view.shape();
    let &[rows, cols] = shape else {
        return Err(file_error(path, format!("tensor '{name}' has shape {shape:?}; it must be two-dimensional (N x D)")));
    };
    Ok((rows, cols))
}

fn float_matrix(path: &Path, name: &str, view: &TensorView<'_>) -> Result<Mat<f64>> {
    let (rows, cols) = matrix_shape(path, name, view)?;
    // Decoded straight into the matrix: no intermediate copy of an N x D array.
    let data = view.data();
    let mut matrix = Mat::<f64>::zeros(rows, cols);
    match view.dtype() {
        Dtype::F32 => {
            for (index, b) in data.chunks_exact(4).enumerate() {
                matrix[(index / cols, index % cols)] = f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
        }
        Dtype::F64 => {
            for (index, b) in data.chunks_exact(8).enumerate() {
                matrix[(index / cols, index % cols)] = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            }
        }
        other => return Err(file_error(path, format!("tensor '{name}' has dtype {other:?}; it must be F32 or F64"))),
    }
    Ok(matrix)
}

/// A file's labels are its task's, and a dataset without some of the task's classes leaves gaps
/// (Cheng's set has no brain scan without a tumour: labels 1, 2, 3 of the brain task's 0..3),
/// which `ScoreInput` refuses. They are closed keeping their order, as every score depends only
/// on which samples share a class. Negative labels are left for `ScoreInput` to refuse.
fn close_label_gaps(labels: Vec<i64>) -> Vec<i64> {
    let present: std::collections::BTreeSet<i64> = labels.iter().copied().collect();
    let dense = present.iter().zip(0..).all(|(&label, index)| label == index);
    if dense || present.first().is_some_and(|&lowest| lowest < 0) {
        return labels;
    }
    let index: std::collections::BTreeMap<i64, i64> = present.into_iter().zip(0..).collect();
    labels.iter().map(|label| index[label]).collect()
}

fn integer_vector(path: &Path, view: &TensorView<'_>) -> Result<Vec<i64>> {
    let shape = view.shape();
    if !(shape.len() == 1 || (shape.len() == 2 && shape[1] == 1)) {
        return Err(file_error(path, format!("tensor 'labels' has shape {shape:?}; it must be (N) or (N, 1)")));
    }
    let data = view.data();
    let too_large = |v: u64| file_error(path, format!("label {v} does not fit in 64 signed bits"));
    let labels = match view.dtype() {
        Dtype::U8 => data.iter().map(|&b| i64::from(b)).collect(),
        Dtype::I8 => data.iter().map(|&b| i64::from(b as i8)).collect(),
        Dtype::U16 => data.chunks_exact(2).map(|b| i64::from(u16::from_le_bytes([b[0], b[1]]))).collect(),
        Dtype::I16 => data.chunks_exact(2).map(|b| i64::from(i16::from_le_bytes([b[0], b[1]]))).collect(),
        Dtype::U32 => data.chunks_exact(4).map(|b| i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect(),
        Dtype::I32 => data.chunks_exact(4).map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect(),
        Dtype::I64 => data.chunks_exact(8).map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).collect(),
        Dtype::U64 => data
            .chunks_exact(8)
            .map(|b| {
                let v = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                i64::try_from(v).map_err(|_| too_large(v))
            })
            .collect::<Result<Vec<_>>>()?,
        other => return Err(file_error(path, format!("tensor 'labels' has dtype {other:?}; it must be an integer type"))),
    };
    Ok(labels)
}
