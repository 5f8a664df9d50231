//! Times reading a NIfTI volume's slices as the image cache reads them: a CT-sized volume
//! (512 x 512 x 200 int16, gzipped and not) written to a temporary folder, its middle slice alone
//! and every slice in runs of `FRAMES_PER_READ` (`--slice all`).
//! `cargo run --release -p medxfer-data --example volume_timing`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use medxfer_data::{DicomFrame, FRAMES_PER_READ, load_image_frame, load_image_frames};

const SIDE: u16 = 512;
const SLICES: u16 = 200;

/// A NIfTI-1 int16 volume of a smooth body and noise, its header field by field (nifti1.h).
fn volume() -> Vec<u8> {
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

fn time(name: &str, path: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    load_image_frame(path, DicomFrame::Middle)?;
    println!("{name:<14} middle slice alone    {:8.1} ms", start.elapsed().as_secs_f64() * 1e3);
    let all: Vec<DicomFrame> = (1..=u32::from(SLICES)).map(DicomFrame::Number).collect();
    let start = Instant::now();
    for run in all.chunks(FRAMES_PER_READ) {
        for image in load_image_frames(path, run, None)? {
            image?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("{name:<14} every slice ({SLICES})    {:8.1} ms a slice, {seconds:.1} s in all", seconds * 1e3 / f64::from(SLICES));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bytes = volume();
    let plain = dir.path().join("ct.nii");
    std::fs::write(&plain, &bytes)?;
    let gzipped = dir.path().join("ct.nii.gz");
    let mut encoder = flate2::write::GzEncoder::new(std::fs::File::create(&gzipped)?, flate2::Compression::default());
    encoder.write_all(&bytes)?;
    encoder.finish()?;
    time(".nii", &plain)?;
    time(".nii.gz", &gzipped)?;
    Ok(())
}
