//! Which anatomical plane a NIfTI volume's slices lie in, from its header's orientation (a DICOM
//! slice's, from its Image Orientation (Patient)): rank warns where a folder's volumes differ
//! (dcm2niix keeps each acquisition's own plane), and `medxfer-data show` says it.

use std::path::Path;

use super::orientation::{oriented_affine, patient_axes};
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

/// The plane of the slices of the NIfTI file at `path` as stored, from its header alone, as
/// nibabel's `aff2axcodes(img.affine)[2]` names it: by the sform where its code is set, else the
/// qform, else `None` (a header without orientation, or a degenerate one). Of a DICOM file, the
/// patient axis its slices' normal lies closest to, by its Image Orientation (Patient) (an enhanced
/// file's in its Functional Groups). `None` too for another file.
pub fn slice_plane(path: &Path) -> Result<Option<SlicePlane>> {
    if !is_nifti(path) {
        let normal = crate::dicom::slice_normal(path)?;
        return Ok(normal.map(|normal| {
            let closest = (0..3).max_by(|&a, &b| normal[a].abs().total_cmp(&normal[b].abs())).unwrap_or(2);
            PLANES[closest]
        }));
    }
    let mut stored = open(path)?;
    let header = read_header(path, &mut stored.content)?;
    let Some(patient) = oriented_affine(&header).as_ref().and_then(patient_axes) else { return Ok(None) };
    Ok(Some(PLANES[patient[2].0]))
}

/// The plane of slices along each patient axis (x, y, z).
const PLANES: [SlicePlane; 3] = [SlicePlane::Sagittal, SlicePlane::Coronal, SlicePlane::Axial];
