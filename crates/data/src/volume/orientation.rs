//! A volume's stored axes against the patient's, from its header (nibabel's `io_orientation` of
//! `header.get_best_affine()`), and the reading `--reorient canonical` asks for: nibabel's
//! `as_closest_canonical`, the axes permuted and flipped to run closest to the patient's right,
//! front and head (RAS+), so that every volume's slices are axial, whatever plane it was acquired
//! in.

use std::fmt;
use std::str::FromStr;

use nifti::NiftiHeader;

/// How a volume's axes are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Orientation {
    /// As stored: slices along the third stored axis, in whatever plane the volume was acquired.
    #[default]
    Stored,
    /// nibabel's `as_closest_canonical` (what `fslreorient2std` does up to the left-right
    /// convention): axes permuted and flipped to run closest to the patient's right, front and
    /// head (RAS+); slices axial, seen from the feet with the front up.
    Canonical,
}

impl FromStr for Orientation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "stored" => Ok(Orientation::Stored),
            "canonical" => Ok(Orientation::Canonical),
            _ => Err(format!(
                "'{text}' is not an orientation: give stored (a volume's axes as stored) or canonical (nibabel's as_closest_canonical: \
                 every volume's slices axial)"
            )),
        }
    }
}

crate::as_text::serde_as_text!(Orientation);

impl fmt::Display for Orientation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Orientation::Stored => "stored",
            Orientation::Canonical => "canonical",
        })
    }
}

/// Where each axis of a volume as read comes from: for each axis read, the stored axis and whether
/// it runs backwards along it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Axes([(usize, bool); 3]);

/// A 3 x 3 matrix, rows of columns.
type Matrix = [[f64; 3]; 3];

impl Axes {
    /// The axes as stored.
    pub(super) const STORED: Axes = Axes([(0, false), (1, false), (2, false)]);

    /// The axes `orientation` reads the volume of `header` in, or why they cannot be told.
    pub(super) fn read(header: &NiftiHeader, orientation: Orientation) -> Result<Axes, String> {
        if orientation == Orientation::Stored {
            return Ok(Axes::STORED);
        }
        let affine = oriented_affine(header).unwrap_or_else(|| base_affine(header));
        let patient = patient_axes(&affine).ok_or_else(|| {
            "the NIfTI header's affine is degenerate (its axes do not span space), so the volume cannot be reoriented; correct the \
             header's sform or qform, or read it with --reorient stored"
                .to_string()
        })?;
        // nibabel's apply_orientation: the patient axis each stored axis runs along becomes the
        // axis it is read as, backwards where it runs towards left, back or feet.
        let mut axes = Axes::STORED;
        for (stored, (patient, backwards)) in patient.into_iter().enumerate() {
            axes.0[patient] = (stored, backwards);
        }
        Ok(axes)
    }

    /// The sizes of the axes as read, of a volume of `stored` sizes.
    pub(super) fn sizes(self, stored: [usize; 3]) -> [usize; 3] {
        self.0.map(|(axis, _)| stored[axis])
    }

    /// The stored voxel at `read` (indices along the axes as read) of a volume of `stored` sizes.
    pub(super) fn stored_voxel(self, stored: [usize; 3], read: [usize; 3]) -> [usize; 3] {
        let mut voxel = [0; 3];
        for (at, &(axis, backwards)) in read.into_iter().zip(&self.0) {
            voxel[axis] = if backwards { stored[axis] - 1 - at } else { at };
        }
        voxel
    }

    /// The stored slice (along the third stored axis) that slice `index` as read is, of `slices`
    /// stored slices; `None` where each slice as read crosses every stored one.
    pub(super) fn stored_slice(self, index: u32, slices: u32) -> Option<u32> {
        match self.0[2] {
            (2, false) => Some(index),
            (2, true) => Some(slices - 1 - index),
            _ => None,
        }
    }
}

/// The header's affine's rotation, zoom and shear (its 3 x 3 part), as nibabel's
/// `get_best_affine` takes it: the sform where its code is set, else the qform (its quaternion,
/// with qfac, pixdim[0], flipping the third axis where it is -1: nifti1_io's `quatern_to_mat44`),
/// else `None`: a header without orientation.
pub(super) fn oriented_affine(header: &NiftiHeader) -> Option<Matrix> {
    if header.sform_code != 0 {
        let rows = [header.srow_x, header.srow_y, header.srow_z];
        return Some(rows.map(|row| [row[0], row[1], row[2]].map(f64::from)));
    }
    if header.qform_code == 0 {
        return None;
    }
    let [b, c, d] = [header.quatern_b, header.quatern_c, header.quatern_d].map(f64::from);
    let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
    // The standard reads a qfac other than -1 as 1.
    let qfac = if header.pixdim[0] == -1.0 { -1.0 } else { 1.0 };
    let zooms = [header.pixdim[1], header.pixdim[2], header.pixdim[3]].map(f64::from);
    let rotation = [
        [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
        [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
        [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ];
    Some(rotation.map(|row| [row[0] * zooms[0], row[1] * zooms[1], row[2] * zooms[2] * qfac]))
}

/// The affine nibabel gives a header without orientation (Analyze's, `get_base_affine`): the
/// voxel sizes on the diagonal, the first axis running towards the patient's left (radiological).
fn base_affine(header: &NiftiHeader) -> Matrix {
    // A 2-D image's third size is 1, whatever pixdim[3] holds.
    let third = if header.dim[0] >= 3 { f64::from(header.pixdim[3]) } else { 1.0 };
    [[-f64::from(header.pixdim[1]), 0.0, 0.0], [0.0, f64::from(header.pixdim[2]), 0.0], [0.0, 0.0, third]]
}

/// For each stored axis, the patient axis (0 towards the right, 1 the front, 2 the head) it runs
/// closest to and whether it runs against it: nibabel's `io_orientation`, the affine's columns
/// scaled to unit length, their closest orthogonal matrix (the polar factor), then each stored
/// axis in turn given the patient axis its column points along most of those not yet given.
/// `None` where the affine is degenerate (a zero or dependent column; nibabel cannot apply it).
pub(super) fn patient_axes(affine: &Matrix) -> Option<[(usize, bool); 3]> {
    let mut unit = *affine;
    for column in 0..3 {
        let norm = (0..3).map(|row| affine[row][column].powi(2)).sum::<f64>().sqrt();
        if !(norm > 0.0 && norm.is_finite()) {
            return None;
        }
        (0..3).for_each(|row| unit[row][column] /= norm);
    }
    let mut closest = polar_factor(unit)?;
    let mut axes = [(0, false); 3];
    for (stored, axis) in axes.iter_mut().enumerate() {
        // The first largest, as numpy's argmax chooses among ties.
        let patient = (0..3).fold(0, |best, row| if closest[row][stored].abs() > closest[best][stored].abs() { row } else { best });
        if closest[patient][stored] == 0.0 {
            return None;
        }
        *axis = (patient, closest[patient][stored] < 0.0);
        closest[patient] = [0.0; 3];
    }
    Some(axes)
}

/// The orthogonal matrix closest to `m` (its polar decomposition's), by Newton's iteration
/// X <- (X + X^-T) / 2, which converges to it quadratically from any invertible matrix; `None`
/// where `m` is (nearly) singular.
fn polar_factor(m: Matrix) -> Option<Matrix> {
    let mut x = m;
    for _ in 0..100 {
        let inverse_transposed = inverse_transposed(x)?;
        let next: Matrix = std::array::from_fn(|r| std::array::from_fn(|c| (x[r][c] + inverse_transposed[r][c]) / 2.0));
        let change: f64 = (0..9).map(|i| (next[i / 3][i % 3] - x[i / 3][i % 3]).abs()).sum();
        x = next;
        if change < 1e-14 {
            return Some(x);
        }
    }
    Some(x)
}

/// (m^-1)^T: the cofactor matrix over the determinant; `None` where `m` is (nearly) singular.
fn inverse_transposed(m: Matrix) -> Option<Matrix> {
    let cofactor = |r: usize, c: usize| {
        let (r1, r2, c1, c2) = ((r + 1) % 3, (r + 2) % 3, (c + 1) % 3, (c + 2) % 3);
        m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]
    };
    let cofactors: Matrix = std::array::from_fn(|r| std::array::from_fn(|c| cofactor(r, c)));
    let determinant: f64 = (0..3).map(|c| m[0][c] * cofactors[0][c]).sum();
    // The columns are unit vectors (or, in the iteration, near orthonormal): a determinant this
    // small means one is (almost) a combination of the others.
    if determinant.abs() < 1e-10 || !determinant.is_finite() {
        return None;
    }
    Some(cofactors.map(|row| row.map(|v| v / determinant)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientations_read_as_they_print() {
        for orientation in [Orientation::Stored, Orientation::Canonical] {
            assert_eq!(orientation.to_string().parse::<Orientation>(), Ok(orientation));
        }
        let error = "ras".parse::<Orientation>().unwrap_err();
        assert!(error.contains("'ras'") && error.contains("canonical"), "{error}");
    }

    #[test]
    fn the_polar_factor_is_orthogonal_and_keeps_a_rotation() {
        let (s, c) = (0.3f64.sin(), 0.3f64.cos());
        let rotation = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
        let closest = polar_factor(rotation).unwrap();
        for (row, expected) in closest.iter().zip(rotation) {
            for (v, e) in row.iter().zip(expected) {
                assert!((v - e).abs() < 1e-12, "{closest:?}");
            }
        }
        // A sheared matrix's factor is orthogonal: X^T X = I.
        let closest = polar_factor([[1.0, 0.9, 0.0], [0.0, 0.5, 0.0], [0.0, 0.2, 1.0]]).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let dot: f64 = (0..3).map(|k| closest[k][i] * closest[k][j]).sum();
                assert!((dot - f64::from(u8::from(i == j))).abs() < 1e-12, "{closest:?}");
            }
        }
        assert_eq!(polar_factor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), None);
    }

    #[test]
    fn reading_axes_map_voxels_back_to_the_stored_ones() {
        // Stored sagittal (as t1_sagittal.nii.gz): axis 0 front, 1 head, 2 towards the left.
        let axes = Axes([(2, true), (0, false), (1, false)]);
        let stored = [12, 9, 2];
        assert_eq!(axes.sizes(stored), [2, 12, 9]);
        assert_eq!(axes.stored_voxel(stored, [0, 3, 4]), [3, 4, 1]);
        assert_eq!(axes.stored_voxel(stored, [1, 0, 8]), [0, 8, 0]);
        assert_eq!(axes.stored_slice(4, 2), None);
        assert_eq!(Axes([(0, true), (1, false), (2, true)]).stored_slice(0, 5), Some(4));
        assert_eq!(Axes::STORED.stored_slice(3, 5), Some(3));
    }
}
