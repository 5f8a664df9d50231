//! The sizes the project allows an image to have, whatever its file claims: checked before
//! anything is allocated for it, by the decoder (`decode.rs`), the Cheng reader and the resize.

use std::path::Path;

use crate::error::{Error, Result};

/// The most pixels an image may have, decoded or resized: Pillow's `DecompressionBombError`
/// threshold (twice `Image.MAX_IMAGE_PIXELS`), about 537 MB as RGB8. The largest images of the
/// study (ISIC's 6000 x 4000) have 24 million.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// The most memory a decoder may allocate at once (16-bit RGBA at [`MAX_PIXELS`] stays under it).
pub(crate) const MAX_DECODER_BYTES: u64 = 2 << 30;

/// Refuses an image over [`MAX_PIXELS`] before anything is allocated for it.
pub(crate) fn check_pixels(path: &Path, width: u32, height: u32) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_PIXELS {
        return Err(Error::format(
            path,
            format!(
                "the image is {width} x {height} = {pixels} pixels, over the limit of {MAX_PIXELS} (a decompression bomb or not an image of the study)"
            ),
        ));
    }
    if pixels == 0 {
        return Err(Error::format(path, format!("the image is {width} x {height}: it has no pixels")));
    }
    Ok(())
}
