//! Cheng et al.'s figshare set: `<n>.mat` files, MATLAB v7.3 = HDF5 behind a 512-byte header,
//! read with the pure-Rust hdf5-pure. `/cjdata/label` (f64: 1 meningioma, 2 glioma,
//! 3 pituitary), `/cjdata/PID` (u16 character codes), `/cjdata/image` (int16, stored
//! transposed: MATLAB(r, c) = h5[c][r]).

use std::path::Path;

use rayon::prelude::*;

use super::admit;
use crate::catalog::DatasetSpec;
use crate::error::{Error, Result};
use crate::files::FileIndex;
use crate::record::Scan;

/// cjdata.label code -> class name.
pub const CLASSES: [(u32, &str); 3] = [(1, "meningioma"), (2, "glioma"), (3, "pituitary")];

/// One slice of the set.
#[derive(Debug, Clone, PartialEq)]
pub struct ChengSlice {
    /// meningioma, glioma or pituitary.
    pub class: &'static str,
    /// The patient id (`PID`).
    pub patient: String,
    /// Rows x columns in MATLAB's orientation (already transposed back).
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Row-major raw intensities, when asked for.
    pub pixels: Option<Vec<i16>>,
}

fn open(path: &Path) -> Result<hdf5_pure::File> {
    let length = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if length == 0 {
        return Err(Error::format(path, "the file is empty (0 bytes): an interrupted download or copy; fetch it again"));
    }
    if let Some(end) = hdf5_end_of_file(path)?
        && length < end
    {
        return Err(Error::format(
            path,
            format!(
                "the file is truncated: its HDF5 superblock says it ends at byte {end}, it has {length} (an interrupted download or copy); fetch it again"
            ),
        ));
    }
    hdf5_pure::File::open(path).map_err(|e| Error::format(path, format!("not a MATLAB v7.3 (HDF5) file: {e}")))
}

/// The end-of-file address an HDF5 superblock records (at 0, 512, 1024, ... as the format
/// allows a user block before it; MATLAB's is 512 bytes), as libhdf5 checks it against the
/// file's length to refuse a truncated file. `None` when no superblock is found (the HDF5
/// reader then says what is wrong).
fn hdf5_end_of_file(path: &Path) -> Result<Option<u64>> {
    use std::io::{Read, Seek, SeekFrom};
    const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 64];
    for at in [0u64, 512, 1024, 2048, 4096] {
        file.seek(SeekFrom::Start(at)).map_err(|e| Error::io(path, e))?;
        let mut filled = 0;
        while filled < head.len() {
            match file.read(&mut head[filled..]).map_err(|e| Error::io(path, e))? {
                0 => break,
                n => filled += n,
            }
        }
        if filled < 12 || &head[..8] != SIGNATURE {
            continue;
        }
        // Versions 0/1: offsets' size at byte 13, base/free-space/end-of-file addresses from
        // byte 24 (28 in version 1). Versions 2/3: size at 9, base/extension/end from 12.
        let (size, first) = match head[8] {
            0 => (head[13], 24),
            1 => (head[13], 28),
            _ => (head[9], 12),
        };
        let size = usize::from(size);
        if !(1..=8).contains(&size) || first + 3 * size > filled {
            return Ok(None);
        }
        let field = &head[first + 2 * size..first + 3 * size];
        let end = field.iter().rev().fold(0u64, |value, &byte| (value << 8) | u64::from(byte));
        return Ok(Some(end));
    }
    Ok(None)
}

/// Reads one .mat file: label and PID always, the image when `with_pixels`.
pub fn read_cheng(path: &Path, with_pixels: bool) -> Result<ChengSlice> {
    let file = open(path)?;
    let dataset = |name: &str| file.dataset(&format!("cjdata/{name}")).map_err(|e| Error::format(path, format!("no cjdata/{name}: {e}")));
    let labels = dataset("label")?.read_f64().map_err(|e| Error::format(path, format!("cjdata/label: {e}")))?;
    let code = match labels.as_slice() {
        [code] if code.fract() == 0.0 => *code as u32,
        other => return Err(Error::format(path, format!("cjdata/label should be one whole number, found {other:?}"))),
    };
    let Some(&(_, class)) = CLASSES.iter().find(|(c, _)| *c == code) else {
        return Err(Error::format(path, format!("cjdata/label = {code}, expected 1 (meningioma), 2 (glioma) or 3 (pituitary)")));
    };
    let pid = dataset("PID")?.read_u16().map_err(|e| Error::format(path, format!("cjdata/PID: {e}")))?;
    let patient: String = pid.iter().filter(|&&c| c != 0).filter_map(|&c| char::from_u32(u32::from(c))).collect();
    if patient.is_empty() {
        return Err(Error::format(path, "cjdata/PID is empty"));
    }
    let image = dataset("image")?;
    let shape = image.shape().map_err(|e| Error::format(path, format!("cjdata/image: {e}")))?;
    // HDF5 holds the MATLAB array transposed: h5 shape (columns, rows).
    let [columns, rows] = shape.as_slice() else {
        return Err(Error::format(path, format!("cjdata/image should be 2-d, has shape {shape:?}")));
    };
    let (height, width) = (*rows as usize, *columns as usize);
    if height == 0 || width == 0 {
        return Err(Error::format(path, format!("cjdata/image is empty (shape {shape:?}); the file is damaged, fetch it again")));
    }
    if (height as u64).saturating_mul(width as u64) > crate::limits::MAX_PIXELS {
        return Err(Error::format(
            path,
            format!("cjdata/image has shape {shape:?}, over the limit of {} pixels", crate::limits::MAX_PIXELS),
        ));
    }
    let pixels = if with_pixels {
        let stored = image.read_i16().map_err(|e| Error::format(path, format!("cjdata/image is not int16: {e}")))?;
        if stored.len() != height * width {
            return Err(Error::format(path, format!("cjdata/image holds {} values for shape {shape:?}", stored.len())));
        }
        // stored[c * rows + r] = MATLAB(r, c).
        Some((0..height).flat_map(|r| (0..width).map(move |c| (r, c))).map(|(r, c)| stored[c * height + r]).collect())
    } else {
        None
    };
    Ok(ChengSlice { class, patient, height, width, pixels })
}

pub fn scan(spec: &DatasetSpec, index: &FileIndex) -> Result<Scan> {
    let mut scan = Scan::default();
    let files: Vec<&str> = index.with_extension(".mat").filter(|f| !f.ends_with("cvind.mat")).collect();
    if files.is_empty() {
        return Err(Error::io(&index.root, "no <n>.mat files under this folder; is it the right --root?"));
    }
    let slices: Vec<Result<ChengSlice>> = files.par_iter().map(|f| read_cheng(&index.absolute(f), false)).collect();
    for (path, slice) in files.into_iter().zip(slices) {
        match slice {
            Ok(slice) => admit(&mut scan, spec, path, slice.class, slice.patient, ""),
            Err(e) => scan.problem(path, e.to_string()),
        }
    }
    Ok(scan)
}
