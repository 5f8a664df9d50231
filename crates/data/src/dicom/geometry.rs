//! Where a DICOM image lies in the patient: the numbers of its Image Position and Orientation
//! (Patient), a file's own or a frame's in its Functional Groups (Plane Position, Plane
//! Orientation), and its slices' normal. `series.rs` orders a series' files by them, `stack.rs` an
//! enhanced file's frames, and `volume/plane.rs` names a slice's plane.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};

use super::{dicom_header, number_of_frames};
use crate::error::{Error, Result};

/// Positions closer than this (mm along the normal), or orientation cosines closer than
/// this, are the same.
pub(super) const SAME: f64 = 1e-3;

/// The normal of the slices the DICOM file at `path` holds (its Image Orientation (Patient)'s row
/// direction crossed with its column direction), in the patient's axes (x to the left, y to the
/// back, z to the head): a single-frame file's own; an enhanced file's of several frames from its
/// Functional Groups' Plane Orientation (the first frame's own, else the shared group's: the
/// stack's where its frames are one, `stack.rs`). `None` for a file that is not DICOM or states
/// no orientation.
pub(crate) fn slice_normal(path: &Path) -> Result<Option<[f64; 3]>> {
    let Some((object, _)) = dicom_header(path)? else { return Ok(None) };
    let frames = number_of_frames(&object).map_err(|what| Error::format(path, what))?;
    let orientation: Option<[f64; 6]> = if frames == 1 {
        numbers(&object, tags::IMAGE_ORIENTATION_PATIENT).and_then(|v| v.try_into().ok())
    } else {
        group_value(&object, 0, tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT).and_then(|v| v.try_into().ok())
    };
    let Some(o) = orientation else { return Ok(None) };
    let normal = cross([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    Ok((normal.iter().map(|v| v * v).sum::<f64>() > 0.25).then_some(normal))
}

/// The numbers `tag` holds in the `macro_tag` macro of frame `frame`'s Functional Group, else of
/// the shared group.
pub(super) fn group_value(object: &DefaultDicomObject, frame: usize, macro_tag: dicom_core::Tag, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    let item = |groups: dicom_core::Tag, index: usize| -> Option<&InMemDicomObject> {
        let group = object.element_opt(groups).ok().flatten()?.items()?.get(index)?;
        group.element_opt(macro_tag).ok().flatten()?.items()?.first()
    };
    let per_frame = item(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frame);
    per_frame.or_else(|| item(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, 0)).and_then(|macro_item| numbers(macro_item, tag))
}

/// `tag`'s numbers; `None` where absent, not numbers or not all finite.
pub(super) fn numbers(object: &InMemDicomObject, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    let values = object.element_opt(tag).ok().flatten()?.to_multi_float64().ok()?;
    values.iter().all(|v| v.is_finite()).then_some(values)
}

/// The cross product `a` x `b`.
pub(super) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}
