//! Which anatomical plane a NIfTI volume's slices lie in, from its header's orientation: rank
//! warns where a folder's volumes differ (dcm2niix keeps each acquisition's own plane), and
//! `medxfer-data show` says it.

use std::path::Path;

use super::{is_nifti, open, read_header};
use crate::error::Result;

/// The anatomical plane of a volume's slices: the patient axis its third stored axis runs along,
/// from the header's affine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlicePlane {
    /// The third axis runs foot to head (S or I): transverse slices.
    Axial,
    /// Front to back (A or P).
    Coronal,
    /// Left to right (L or R).
    Sagittal,
}

impl std::fmt::Display for SlicePlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlicePlane::Axial => "axial",
            SlicePlane::Coronal => "coronal",
            SlicePlane::Sagittal => "sagittal",
        })
    }
}

/// The plane of the slices of the NIfTI file at `path`, from its header alone, as nibabel's
/// `aff2axcodes(img.affine)[2]` names it: by the sform where its code is set, else the qform
/// (its quaternion, nifti1_io's `quatern_to_mat44`), else `None` (a header without orientation).
/// `None` too for a file that is not NIfTI.
pub fn slice_plane(path: &Path) -> Result<Option<SlicePlane>> {
    if !is_nifti(path) {
        return Ok(None);
    }
    let mut stored = open(path)?;
    let header = read_header(path, &mut stored.content)?;
    // The affine's third column: where a step along the third stored axis goes in the patient's
    // x (towards the right), y (the front) and z (the head): RAS+, the space both forms map to.
    let column = if header.sform_code > 0 {
        [header.srow_x[2], header.srow_y[2], header.srow_z[2]].map(f64::from)
    } else if header.qform_code > 0 {
        let [b, c, d] = [header.quatern_b, header.quatern_c, header.quatern_d].map(f64::from);
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        [2.0 * (b * d + a * c), 2.0 * (c * d - a * b), a * a + d * d - c * c - b * b]
    } else {
        return Ok(None);
    };
    let largest = (0..3).max_by(|&i, &j| column[i].abs().total_cmp(&column[j].abs())).unwrap_or(2);
    if column[largest] == 0.0 || !column[largest].is_finite() {
        return Ok(None);
    }
    Ok(Some([SlicePlane::Sagittal, SlicePlane::Coronal, SlicePlane::Axial][largest]))
}
