//! Times a DICOM series stored a file a slice as rank reads it: a CT series of 200 files of
//! 512 x 512 int16 (explicit VR little endian, a window, positions along the normal, the files
//! named in another order) written to a temporary folder by dicom-rs; then the folder's series
//! placed (every header read once), every slice read alone, every slice 2.5-D
//! (`--adjacent-slices`: each slice wanted for itself and its two neighbours, kept once read),
//! and `--slice middle` listing the one slice kept.
//! `cargo run --release -p medxfer-data --example series_timing`.

use std::path::Path;
use std::time::Instant;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use medxfer_data::{DicomFrame, Entry, FrameSelection, Orientation, Part, Rendering, frame_entries, load_image_frames, series_place};

const SIDE: u16 = 512;
const SLICES: u16 = 200;

/// Slice `index` of the series (a smooth body and noise), written at `path`.
fn write_slice(path: &Path, index: u16) -> anyhow::Result<()> {
    let mut object = InMemDicomObject::new_empty();
    let uid = format!("1.2.826.0.1.3680043.10.1234.{}", u32::from(index) + 1);
    let text = |tag, vr, value: String| DataElement::new(tag, vr, PrimitiveValue::from(value));
    object.put(text(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE.into()));
    object.put(text(tags::SOP_INSTANCE_UID, VR::UI, uid.clone()));
    object.put(text(tags::MODALITY, VR::CS, "CT".into()));
    object.put(text(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.10.1234.0".into()));
    object.put(text(tags::INSTANCE_NUMBER, VR::IS, (SLICES - index).to_string()));
    object.put(text(tags::IMAGE_POSITION_PATIENT, VR::DS, format!("-250\\-250\\{}", f64::from(index) * 1.25)));
    object.put(text(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0".into()));
    object.put(text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2".into()));
    object.put(text(tags::WINDOW_CENTER, VR::DS, "40".into()));
    object.put(text(tags::WINDOW_WIDTH, VR::DS, "400".into()));
    object.put(text(tags::RESCALE_INTERCEPT, VR::DS, "-1024".into()));
    object.put(text(tags::RESCALE_SLOPE, VR::DS, "1".into()));
    for (tag, value) in [
        (tags::SAMPLES_PER_PIXEL, 1),
        (tags::ROWS, SIDE),
        (tags::COLUMNS, SIDE),
        (tags::BITS_ALLOCATED, 16),
        (tags::BITS_STORED, 16),
        (tags::HIGH_BIT, 15),
        (tags::PIXEL_REPRESENTATION, 1),
    ] {
        object.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
    }
    let centre = f64::from(SIDE) / 2.0;
    let mut seed = u32::from(index).wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut pixels = Vec::with_capacity(usize::from(SIDE) * usize::from(SIDE) * 2);
    for y in 0..SIDE {
        for x in 0..SIDE {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let r = (f64::from(x) - centre).hypot(f64::from(y) - centre) / centre;
            let body = if r < 0.8 { 1064.0 - 60.0 * r } else { 24.0 };
            let value = (body + f64::from(seed % 41) - 20.0 + f64::from(index)) as i16;
            pixels.extend_from_slice(&value.to_le_bytes());
        }
    }
    object.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(pixels)));
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(uid);
    object.with_meta(meta)?.write_to_file(path)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let temporary = tempfile::tempdir()?;
    let dir = temporary.path();
    // Named against their order, as exports number slices head to feet or feet to head.
    let names: Vec<String> = (0..SLICES).map(|index| format!("IM{:06}", SLICES - index)).collect();
    for (index, name) in (0..SLICES).zip(&names) {
        write_slice(&dir.join(name), index)?;
    }
    let megabytes = names.iter().map(|name| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len())).sum::<u64>() as f64 / 1e6;
    println!("a CT series of {SLICES} files of {SIDE} x {SIDE} int16 ({megabytes:.0} MB)");

    let start = Instant::now();
    let place = series_place(&dir.join(&names[0]))?.ok_or_else(|| anyhow::anyhow!("not placed in its series"))?;
    println!("series placed (every header read once): {:.1} ms; first by position: slice {} of {}", ms(start), place.index + 1, place.len);

    let read_all = |rendering: Rendering| -> anyhow::Result<f64> {
        let start = Instant::now();
        for name in &names {
            load_image_frames(&dir.join(name), &[DicomFrame::Only], rendering)?.remove(0)?;
        }
        Ok(ms(start) / f64::from(SLICES))
    };
    println!("every slice alone: {:.2} ms a slice", read_all(Rendering::default())?);
    let adjacent = Rendering { adjacent_slices: true, ..Rendering::default() };
    println!("every slice 2.5-D (--adjacent-slices, each neighbour kept once read): {:.2} ms a slice", read_all(adjacent)?);

    let files: Vec<Entry> =
        names.iter().map(|name| Entry { path: name.clone(), label: 0, group: name.clone(), split: Part::Train, frame: None }).collect();
    let start = Instant::now();
    let kept = frame_entries(dir, &files, FrameSelection::One(DicomFrame::Middle), Orientation::Stored)?;
    println!(
        "--slice middle over the {SLICES} files: {:.1} ms, kept {}",
        ms(start),
        kept.iter().map(|e| e.path.as_str()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// Milliseconds since `start`.
fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}
