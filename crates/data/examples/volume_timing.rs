//! Times reading a NIfTI volume's slices as the image cache reads them: a CT-sized volume
//! (512 x 512 x 200 int16, gzipped and not) written to a temporary folder, its middle slice alone
//! and every slice in runs of `FRAMES_PER_READ` (`--slice all`); then the same voxels as a
//! sagittal acquisition (its third axis left to right) read `--reorient canonical`: 512 axial
//! slices of 200 x 512, each crossing every stored slice.
//! `cargo run --release -p medxfer-data --example volume_timing`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use medxfer_data::{DicomFrame, FRAMES_PER_READ, Orientation, Rendering, load_image_frames};

const SIDE: u16 = 512;
const SLICES: u16 = 200;

/// A NIfTI-1 int16 volume of a smooth body and noise, its header field by field (nifti1.h); its
/// sform that of a sagittal acquisition where `sagittal` (the voxel axes towards the front, the
/// head and the right), else none.
fn volume(sagittal: bool) -> Vec<u8> {
    let mut bytes = vec![0u8; 352];
    let mut put = |at: usize, field: &[u8]| bytes[at..at + field.len()].copy_from_slice(field);
    put(0, &348i32.to_le_bytes());
    for (k, dim) in [3, SIDE, SIDE, SLICES, 1, 1, 1, 1].into_iter().enumerate() {
        put(40 + 2 * k, &dim.to_le_bytes());
    }
    put(70, &4i16.to_le_bytes()); // int16
    put(72, &16i16.to_le_bytes());
    put(108, &352f32.to_le_bytes());
    put(112, &1f32.to_le_bytes());
    put(116, &(-1024f32).to_le_bytes());
    if sagittal {
        put(254, &1i16.to_le_bytes()); // sform_code
        for (at, row) in [280, 296, 312].into_iter().zip([[0f32, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]) {
            for (k, value) in row.into_iter().enumerate() {
                put(at + 4 * k, &value.to_le_bytes());
            }
        }
    }
    put(344, b"n+1\0");
    let centre = f32::from(SIDE) / 2.0;
    for k in 0..SLICES {
        for j in 0..SIDE {
            for i in 0..SIDE {
                let r = ((f32::from(i) - centre).powi(2) + (f32::from(j) - centre).powi(2)).sqrt();
                let body = if r < 200.0 { 1064.0 + f32::from(k % 7) * 10.0 } else { 0.0 };
                let noise = ((u32::from(i) * 7919 + u32::from(j) * 104_729 + u32::from(k) * 31) % 40) as f32;
                bytes.extend_from_slice(&((body + noise) as i16).to_le_bytes());
            }
        }
    }
    bytes
}

fn time(name: &str, path: &Path, orientation: Orientation) -> anyhow::Result<()> {
    let rendering = Rendering { orientation, ..Rendering::default() };
    let start = Instant::now();
    load_image_frames(path, &[DicomFrame::Middle], rendering)?.remove(0)?;
    println!("{name:<22} middle slice alone     {:8.1} ms", start.elapsed().as_secs_f64() * 1e3);
    let slices = medxfer_data::frame_count(path, orientation)?;
    let all: Vec<DicomFrame> = (1..=slices).map(DicomFrame::Number).collect();
    let start = Instant::now();
    for run in all.chunks(FRAMES_PER_READ) {
        for image in load_image_frames(path, run, rendering)? {
            image?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("{name:<22} every slice ({slices:>3})    {:8.1} ms a slice, {seconds:.1} s in all", seconds * 1e3 / f64::from(slices));
    Ok(())
}

/// `bytes` written to `dir` as `name` and gzipped as `name`.gz.
fn write_both(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let plain = dir.join(name);
    std::fs::write(&plain, bytes)?;
    let gzipped = dir.join(format!("{name}.gz"));
    let mut encoder = flate2::write::GzEncoder::new(std::fs::File::create(&gzipped)?, flate2::Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()?;
    Ok((plain, gzipped))
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (plain, gzipped) = write_both(dir.path(), "ct.nii", &volume(false))?;
    time(".nii", &plain, Orientation::Stored)?;
    time(".nii.gz", &gzipped, Orientation::Stored)?;
    let (plain, gzipped) = write_both(dir.path(), "sagittal.nii", &volume(true))?;
    time("sagittal .nii canonical", &plain, Orientation::Canonical)?;
    time("sagittal .gz canonical", &gzipped, Orientation::Canonical)?;
    Ok(())
}
