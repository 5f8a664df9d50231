//! The sizes the project allows an image to have, whatever its file claims: checked before
//! anything is allocated for it, by the decoder (`decode.rs`), the Cheng reader and the resize.

/// The most pixels an image may have, decoded or resized: Pillow's `DecompressionBombError`
/// threshold (twice `Image.MAX_IMAGE_PIXELS`), about 537 MB as RGB8. The largest images of the
/// study (ISIC's 6000 x 4000) have 24 million.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// The most memory a decoder may allocate at once (16-bit RGBA at [`MAX_PIXELS`] stays under it).
pub(crate) const MAX_DECODER_BYTES: u64 = 2 << 30;
