//! The reference's transforms (`utils.get_data_transforms`), on RGB8 images, as torchvision
//! runs them on PIL images.
//!
//! - eval: `Resize(256)` (shorter side, bilinear, antialiased like PIL), `CenterCrop(224)`,
//!   `ToTensor`, `Normalize(mean, std)`.
//! - train: `RandomHorizontalFlip`, `RandomVerticalFlip`, `RandomResizedCrop(224, scale
//!   0.75-1, ratio 3/4-4/3, bilinear)`, `RandomRotation(45)` (nearest, black fill),
//!   `ColorJitter(hue=0.2)`, then the same `ToTensor` + `Normalize`.
//!
//! Random parameters are drawn from a ChaCha8 stream seeded by (seed, epoch, sample), so a run
//! is reproducible and independent of thread scheduling; each operation at given parameters
//! matches torchvision (tests/fixtures/make_fixtures.py).

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// `Normalize(mean, std)` after `ToTensor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Per-channel mean.
    pub mean: [f64; 3],
    /// Per-channel standard deviation.
    pub std: [f64; 3],
}

impl Normalization {
    /// ImageNet statistics.
    pub const IMAGENET: Self = Self { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
    /// ViT-S's statistics.
    pub const HALF: Self = Self { mean: [0.5; 3], std: [0.5; 3] };

    /// A backbone's statistics as the study applies them: the reference code typed 0.228 for
    /// ImageNet's first std (faithful); `fix_std` keeps the correct 0.229.
    pub fn study(mean: [f64; 3], std: [f64; 3], fix_std: bool) -> Self {
        let typo = !fix_std && std == Self::IMAGENET.std;
        Self { mean, std: if typo { [0.228, std[1], std[2]] } else { std } }
    }
}

/// The largest crop (and shorter side of a resize) a command takes.
pub const MAX_SIDE: u32 = 1 << 14;

/// The study's resize-then-centre-crop sizes, as a command line gives them: both from 1 to
/// [`MAX_SIDE`], the resize at least the crop (a smaller one would crop past the image's edge).
pub fn check_sizes(resize: u32, crop: u32) -> Result<()> {
    let bad = |problem: String| Err(Error::Config { source_name: "--resize/--crop".into(), problem });
    if !(1..=MAX_SIDE).contains(&crop) {
        return bad(format!("the crop is {crop}; expected 1 to {MAX_SIDE} (the protocol's is 224)"));
    }
    if !(1..=MAX_SIDE).contains(&resize) {
        return bad(format!("the resize is {resize}; expected 1 to {MAX_SIDE} (the protocol's is 256)"));
    }
    if resize < crop {
        return bad(format!(
            "the resize ({resize}) is smaller than the crop ({crop}); the shorter side must be at least the crop (the protocol: 256 and 224)"
        ));
    }
    Ok(())
}

/// torchvision's `Resize(size)` size rule: the shorter side becomes `size`, the longer one
/// scales and truncates. (An empty side gives an empty size, which [`resize`] refuses; a longer side past `u32::MAX`
/// saturates, which [`resize`]'s pixel limit refuses.)
pub fn shorter_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let scaled = |long: u32, short: u32| u32::try_from(u64::from(size) * u64::from(long) / u64::from(short)).unwrap_or(u32::MAX);
    match (width, height) {
        (0, _) | (_, 0) => (0, 0),
        (w, h) if w <= h => (size, scaled(h, w)),
        (w, h) => (scaled(w, h), size),
    }
}

/// Bilinear resampling with PIL's antialiasing (a triangle filter widened by the scale).
pub fn resize(image: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if image.width() == 0 || image.height() == 0 || width == 0 || height == 0 {
        return Err(Error::Transform(format!("cannot resize a {}x{} image to {width}x{height}", image.width(), image.height())));
    }
    // Checked before anything is allocated: a 1 x 100,000 image resized to a shorter side of
    // 256 would be 256 x 25,600,000 pixels (20 GB).
    if u64::from(width) * u64::from(height) > crate::limits::MAX_PIXELS {
        return Err(Error::Transform(format!(
            "resizing a {}x{} image to {width}x{height} would make {} pixels, over the limit of {}; its aspect ratio is too extreme for the study's transforms",
            image.width(),
            image.height(),
            u64::from(width) * u64::from(height),
            crate::limits::MAX_PIXELS
        )));
    }
    let source = ImageRef::new(image.width(), image.height(), image.as_raw(), PixelType::U8x3)
        .map_err(|e| Error::Transform(format!("cannot wrap the pixels: {e}")))?;
    let mut resized = Image::new(width, height, PixelType::U8x3);
    thread_local! {
        // A Resizer keeps its buffers between calls; one per thread.
        static RESIZER: std::cell::RefCell<Resizer> = std::cell::RefCell::new(Resizer::new());
    }
    RESIZER
        .with_borrow_mut(|resizer| {
            resizer.resize(&source, &mut resized, &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)))
        })
        .map_err(|e| Error::Transform(format!("cannot resize: {e}")))?;
    RgbImage::from_raw(width, height, resized.into_vec()).ok_or_else(|| Error::Transform("resize produced a wrong buffer".into()))
}

/// `Resize(size)`: shorter side to `size`.
pub fn resize_shorter(image: &RgbImage, size: u32) -> Result<RgbImage> {
    let (width, height) = shorter_side_size(image.width(), image.height(), size);
    resize(image, width, height)
}

/// A `width` x `height` window at (left, top); parts outside the image are black, as PIL's
/// `crop` pads.
pub fn crop(image: &RgbImage, left: i64, top: i64, width: u32, height: u32) -> RgbImage {
    let (full_width, full_height) = (i64::from(image.width()), i64::from(image.height()));
    let mut out = RgbImage::new(width, height);
    // Copy the part of each row that lies inside the image; the rest stays black.
    let (x_start, x_end) = (left.max(0), (left + i64::from(width)).min(full_width));
    if x_start < x_end {
        let source = image.as_raw();
        let target_width = width as usize * 3;
        for y in 0..i64::from(height) {
            let sy = top + y;
            if sy < 0 || sy >= full_height {
                continue;
            }
            let from = ((sy * full_width + x_start) * 3) as usize;
            let to = ((x_start - left) * 3) as usize + y as usize * target_width;
            let len = ((x_end - x_start) * 3) as usize;
            out.as_mut()[to..to + len].copy_from_slice(&source[from..from + len]);
        }
    }
    out
}

/// `CenterCrop(size)`: torchvision rounds the offsets with Python's `round` (half to even:
/// 18.5 -> 18), and pads with black when the image is smaller than the crop.
pub fn center_crop(image: &RgbImage, size: u32) -> RgbImage {
    let offset = |full: u32| ((f64::from(full) - f64::from(size)) / 2.0).round_ties_even() as i64;
    crop(image, offset(image.width()), offset(image.height()), size, size)
}

/// `ToTensor` + `Normalize`: a (3, H, W) f32 buffer in channel-major order. Each channel's 256
/// possible values are computed once (the same f64 expression, tabulated).
pub fn to_normalized_chw(image: &RgbImage, normalization: &Normalization) -> Vec<f32> {
    let mut data = vec![0f32; 3 * image.width() as usize * image.height() as usize];
    to_normalized_chw_into(image, normalization, &mut data);
    data
}

/// [`to_normalized_chw`] into a caller's buffer of 3 x H x W values (a slot of a batch).
pub fn to_normalized_chw_into(image: &RgbImage, normalization: &Normalization, data: &mut [f32]) {
    let plane = image.width() as usize * image.height() as usize;
    let table: [[f32; 256]; 3] =
        std::array::from_fn(|c| std::array::from_fn(|v| ((v as f64 / 255.0 - normalization.mean[c]) / normalization.std[c]) as f32));
    let (red, rest) = data.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    for (index, pixel) in image.pixels().enumerate() {
        let [r, g, b] = pixel.0;
        red[index] = table[0][r as usize];
        green[index] = table[1][g as usize];
        blue[index] = table[2][b as usize];
    }
}

/// The eval transform up to the crop: `Resize(resize)` + `CenterCrop(crop)`, RGB8.
pub fn eval_rgb8(image: &RgbImage, resize_to: u32, crop_to: u32) -> Result<RgbImage> {
    Ok(center_crop(&resize_shorter(image, resize_to)?, crop_to))
}

/// Mirror left-right.
pub fn flip_horizontal(image: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(image)
}

/// Mirror top-bottom.
pub fn flip_vertical(image: &RgbImage) -> RgbImage {
    image::imageops::flip_vertical(image)
}

/// torchvision's `resized_crop` on a PIL image: crop (top, left, height, width), then resize to
/// size x size (bilinear, antialiased).
pub fn resized_crop(image: &RgbImage, top: i64, left: i64, height: u32, width: u32, size: u32) -> Result<RgbImage> {
    resize(&crop(image, left, top, width, height), size, size)
}

/// PIL's `rotate(angle, NEAREST, expand=False, fillcolor=black)`: counter-clockwise by `angle`
/// degrees about the image centre. PIL builds the inverse affine matrix (cos/sin rounded to 15
/// digits) and, for nearest sampling, walks it in 16.16 fixed point from each output pixel
/// centre (Geometry.c `affine_fixed`); this does the same integer walk, so it picks the same
/// pixels even where a position falls on a pixel boundary.
pub fn rotate_nearest(image: &RgbImage, angle_degrees: f64) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    let round15 = |v: f64| (v * 1e15).round() / 1e15;
    let angle = -(angle_degrees % 360.0).to_radians();
    let (a, b, d, e) = (round15(angle.cos()), round15(angle.sin()), round15(-angle.sin()), round15(angle.cos()));
    let (cx, cy) = (f64::from(width) / 2.0, f64::from(height) / 2.0);
    let c = a * -cx + b * -cy + cx;
    let f = d * -cx + e * -cy + cy;
    let fixed = |v: f64| (v * 65536.0 + 0.5).floor() as i64;
    let (step_x, step_y, row_x, row_y) = (fixed(a), fixed(d), fixed(b), fixed(e));
    let (mut start_x, mut start_y) = (fixed(c + a * 0.5 + b * 0.5), fixed(f + d * 0.5 + e * 0.5));
    let (w, h) = (i64::from(width), i64::from(height));
    let source = image.as_raw();
    let mut out = RgbImage::new(width, height);
    for row in out.chunks_exact_mut(width as usize * 3) {
        let (mut x, mut y) = (start_x, start_y);
        for pixel in row.as_chunks_mut::<3>().0 {
            let (xin, yin) = (x >> 16, y >> 16);
            if xin >= 0 && xin < w && yin >= 0 && yin < h {
                let at = ((yin * w + xin) * 3) as usize;
                pixel.copy_from_slice(&source[at..at + 3]);
            }
            x += step_x;
            y += step_y;
        }
        start_x += row_x;
        start_y += row_y;
    }
    out
}

/// f32 quotients num / den for 0 <= num, den <= 255, tabulated: the same values as PIL's float
/// divisions, without a division per pixel.
struct Quotients(Vec<f32>);

impl Quotients {
    fn new() -> Self {
        Self((0..256 * 256).map(|i| (i / 256) as f32 / (i % 256) as f32).collect())
    }

    #[inline(always)]
    fn get(&self, numerator: u8, denominator: u8) -> f32 {
        self.0[usize::from(numerator) * 256 + usize::from(denominator)]
    }
}

fn quotients() -> &'static Quotients {
    static TABLE: std::sync::OnceLock<Quotients> = std::sync::OnceLock::new();
    TABLE.get_or_init(Quotients::new)
}

/// PIL's 8-bit RGB -> HSV (Convert.c `rgb2hsv_row`, which follows colorsys), with its mix of
/// float and double arithmetic: the hue truncation sits on rounding edges.
#[inline(always)]
fn rgb_to_hsv(pixel: [u8; 3], q: &Quotients) -> [u8; 3] {
    let [r, g, b] = pixel;
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    if max == min {
        return [0, 0, max];
    }
    let range = max - min;
    let s: f32 = q.get(range, max);
    let (rc, gc, bc) = (q.get(max - r, range), q.get(max - g, range), q.get(max - b, range));
    // All three sector formulas, then a select: the branch on which channel is largest is a
    // coin toss on real images and mispredicts cost more than the arithmetic.
    let from_red = bc - gc;
    let from_green = (2.0 + f64::from(rc) - f64::from(bc)) as f32;
    let from_blue = (4.0 + f64::from(gc) - f64::from(rc)) as f32;
    let sector = usize::from(r != max) * (1 + usize::from(g != max));
    let h = [from_red, from_green, from_blue][sector];
    // fmod(x, 1.0) for x = h / 6 + 1 in [5/6, 11/6]: subtracting 1 is exact there, and avoids
    // a libm call per pixel.
    let x = f64::from(h) / 6.0 + 1.0;
    let h = (if x >= 1.0 { x - 1.0 } else { x }) as f32;
    // C's (int) then CLIP8: truncate, then clamp to 0..=255; Rust's saturating `as u8` is both.
    [(f64::from(h) * 255.0) as u8, (f64::from(s) * 255.0) as u8, max]
}

/// PIL's 8-bit HSV -> RGB (Convert.c `hsv2rgb`): the sector and fraction of each hue and the
/// fraction of each saturation are tabulated.
struct HsvToRgb {
    sector: [i32; 256],
    fraction: [f64; 256],
    saturation: [f64; 256],
}

impl HsvToRgb {
    fn new() -> Self {
        let scaled = |h: usize| h as f64 * 6.0 / 255.0;
        Self {
            // PIL switches on i % 6 (h = 255 gives i = 6, sector 0).
            sector: std::array::from_fn(|h| scaled(h).floor() as i32 % 6),
            fraction: std::array::from_fn(|h| f64::from((scaled(h) - scaled(h).floor()) as f32)),
            saturation: std::array::from_fn(|s| f64::from((s as f64 / 255.0) as f32)),
        }
    }

    #[inline(always)]
    fn convert(&self, pixel: [u8; 3]) -> [u8; 3] {
        // Which of (v, p, q, t) each of r, g, b takes, per sector: PIL's switch as a table.
        const SECTORS: [[usize; 3]; 6] = [[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]];
        let [h, s, v] = pixel;
        // s = 0 gives p = q = t = v below, PIL's grey branch, without the branch.
        let (i, f, fs) = (self.sector[usize::from(h)], self.fraction[usize::from(h)], self.saturation[usize::from(s)]);
        let v_f = f64::from(v);
        // C's round (half away from zero) for the non-negative values here, without a libm
        // call: x - trunc(x) is exact.
        let round = |x: f64| {
            let whole = x.trunc();
            if x - whole >= 0.5 { whole + 1.0 } else { whole }
        };
        // Saturating: CLIP8.
        let clip = |x: f64| round(x) as u8;
        let values = [v, clip(v_f * (1.0 - fs)), clip(v_f * (1.0 - fs * f)), clip(v_f * (1.0 - fs * (1.0 - f)))];
        SECTORS[i as usize].map(|k| values[k])
    }
}

fn hsv_to_rgb_table() -> &'static HsvToRgb {
    static TABLE: std::sync::OnceLock<HsvToRgb> = std::sync::OnceLock::new();
    TABLE.get_or_init(HsvToRgb::new)
}

/// PIL's `convert("HSV")` of one pixel.
pub fn pil_rgb_to_hsv(pixel: [u8; 3]) -> [u8; 3] {
    rgb_to_hsv(pixel, quotients())
}

/// PIL's `convert("RGB")` of one HSV pixel.
pub fn pil_hsv_to_rgb(pixel: [u8; 3]) -> [u8; 3] {
    hsv_to_rgb_table().convert(pixel)
}

/// torchvision's `adjust_hue` on a PIL image: through PIL's 8-bit HSV, the hue channel shifted
/// by `uint8(hue_factor * 255)` with wrap-around.
pub fn adjust_hue(image: &RgbImage, hue_factor: f64) -> RgbImage {
    let mut out = image.clone();
    adjust_hue_in_place(&mut out, hue_factor);
    out
}

/// [`adjust_hue`] without a copy. Pixels go through in blocks of [`LANES`], one arithmetic
/// step at a time over the block (structure of arrays, no branches), which the compiler turns
/// into vector instructions; the arithmetic is PIL's, step for step, as in [`pil_rgb_to_hsv`]
/// and [`pil_hsv_to_rgb`].
pub fn adjust_hue_in_place(image: &mut RgbImage, hue_factor: f64) {
    // numpy's float -> uint8 cast truncates toward zero, then wraps.
    let shift = (hue_factor * 255.0).trunc() as i64 as u8;
    let back = hsv_to_rgb_table();
    let (blocks, rest) = image.as_chunks_mut::<3>().0.as_chunks_mut::<LANES>();
    for block in blocks {
        hue_block(block, shift, back);
    }
    for pixel in rest {
        let [h, s, v] = rgb_to_hsv(*pixel, quotients());
        *pixel = back.convert([h.wrapping_add(shift), s, v]);
    }
}

/// Pixels per block of [`adjust_hue_in_place`].
const LANES: usize = 64;

fn hue_block(block: &mut [[u8; 3]; LANES], shift: u8, back: &HsvToRgb) {
    let (mut hue, mut saturation, mut value) = ([0u8; LANES], [0u8; LANES], [0u8; LANES]);
    // RGB -> HSV. A grey pixel (range 0) gives NaNs below, which the saturating casts turn
    // into PIL's h = s = 0.
    for k in 0..LANES {
        let [r, g, b] = block[k];
        let (max, min) = (r.max(g).max(b), r.min(g).min(b));
        let (range, max_f) = (f32::from(max - min), f32::from(max));
        let (rc, gc, bc) = (f32::from(max - r) / range, f32::from(max - g) / range, f32::from(max - b) / range);
        let from_red = bc - gc;
        let from_green = (2.0 + f64::from(rc) - f64::from(bc)) as f32;
        let from_blue = (4.0 + f64::from(gc) - f64::from(rc)) as f32;
        let h = if r == max {
            from_red
        } else if g == max {
            from_green
        } else {
            from_blue
        };
        let x = f64::from(h) / 6.0 + 1.0;
        let h = (if x >= 1.0 { x - 1.0 } else { x }) as f32;
        hue[k] = ((f64::from(h) * 255.0) as u8).wrapping_add(shift);
        saturation[k] = (f64::from(range / max_f) * 255.0) as u8;
        value[k] = max;
    }
    // HSV -> RGB.
    for k in 0..LANES {
        let (h, s, v) = (usize::from(hue[k]), usize::from(saturation[k]), value[k]);
        let (sector, f, fs) = (back.sector[h], back.fraction[h], back.saturation[s]);
        let v_f = f64::from(v);
        let round = |x: f64| {
            let whole = x.trunc();
            if x - whole >= 0.5 { whole + 1.0 } else { whole }
        };
        let p = round(v_f * (1.0 - fs)) as u8;
        let q = round(v_f * (1.0 - fs * f)) as u8;
        let t = round(v_f * (1.0 - fs * (1.0 - f))) as u8;
        let red = if sector == 0 || sector == 5 {
            v
        } else if sector == 1 {
            q
        } else if sector == 4 {
            t
        } else {
            p
        };
        let green = if sector == 1 || sector == 2 {
            v
        } else if sector == 0 {
            t
        } else if sector == 3 {
            q
        } else {
            p
        };
        let blue = if sector == 3 || sector == 4 {
            v
        } else if sector == 2 {
            t
        } else if sector == 5 {
            q
        } else {
            p
        };
        block[k] = [red, green, blue];
    }
}

/// The random parameters of one train-transform draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainDraw {
    /// Mirror left-right.
    pub flip_horizontal: bool,
    /// Mirror top-bottom.
    pub flip_vertical: bool,
    /// (top, left, height, width) of the crop.
    pub crop: (i64, i64, u32, u32),
    /// Rotation in degrees (counter-clockwise, nearest neighbour).
    pub angle: f64,
    /// Hue shift as a fraction of the circle.
    pub hue: f64,
}

/// The train transform's settings (the reference's values by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainTransform {
    /// Side of the random resized crop.
    pub size: u32,
    /// Area fraction range of the crop (`RandomResizedCrop`'s `scale`).
    pub scale: (f64, f64),
    /// Aspect ratio range of the crop.
    pub ratio: (f64, f64),
    /// Rotations are drawn from +-degrees.
    pub degrees: f64,
    /// Hue shifts are drawn from +-hue (`ColorJitter(hue=...)`).
    pub hue: f64,
}

impl Default for TrainTransform {
    fn default() -> Self {
        Self { size: 224, scale: (0.75, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0), degrees: 45.0, hue: 0.2 }
    }
}

impl TrainTransform {
    /// The parameters for sample `index` of `epoch` under `seed`, for an image of this size;
    /// `RandomResizedCrop.get_params`'s ten tries and its central fallback included.
    pub fn draw(&self, seed: u64, epoch: u64, index: u64, width: u32, height: u32) -> TrainDraw {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let flip_horizontal = rng.random::<f64>() < 0.5;
        let flip_vertical = rng.random::<f64>() < 0.5;
        let crop = self.crop_params(&mut rng, width, height);
        let angle = rng.random_range(-self.degrees..=self.degrees);
        let hue = rng.random_range(-self.hue..=self.hue);
        TrainDraw { flip_horizontal, flip_vertical, crop, angle, hue }
    }

    fn crop_params(&self, rng: &mut ChaCha8Rng, width: u32, height: u32) -> (i64, i64, u32, u32) {
        let (w_full, h_full) = (f64::from(width), f64::from(height));
        let area = w_full * h_full;
        let (log_low, log_high) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * rng.random_range(self.scale.0..=self.scale.1);
            let aspect = rng.random_range(log_low..=log_high).exp();
            let w = (target_area * aspect).sqrt().round();
            let h = (target_area / aspect).sqrt().round();
            if w > 0.0 && h > 0.0 && w <= w_full && h <= h_full {
                let top = rng.random_range(0..=(h_full - h) as i64);
                let left = rng.random_range(0..=(w_full - w) as i64);
                return (top, left, h as u32, w as u32);
            }
        }
        // Fallback: the whole image, its ratio clamped to the allowed range, centred.
        let in_ratio = w_full / h_full;
        let (w, h) = if in_ratio < self.ratio.0 {
            (w_full, (w_full / self.ratio.0).round())
        } else if in_ratio > self.ratio.1 {
            ((h_full * self.ratio.1).round(), h_full)
        } else {
            (w_full, h_full)
        };
        (((h_full - h) / 2.0) as i64, ((w_full - w) / 2.0) as i64, h as u32, w as u32)
    }

    /// Applies one draw: flips, resized crop, rotation, hue, in the reference's order.
    pub fn apply(&self, image: &RgbImage, draw: &TrainDraw) -> Result<RgbImage> {
        self.apply_owned(image.clone(), draw)
    }

    /// [`TrainTransform::apply`] on an image it may consume. The flips are folded into the crop:
    /// a window of the flipped image is the flipped window at the mirrored position, so only
    /// the crop is mirrored (rows reversed, pixels of each row reversed), which is exact.
    pub fn apply_owned(&self, image: RgbImage, draw: &TrainDraw) -> Result<RgbImage> {
        let (top, left, height, width) = draw.crop;
        let (full_width, full_height) = (i64::from(image.width()), i64::from(image.height()));
        let source_left = if draw.flip_horizontal { full_width - left - i64::from(width) } else { left };
        let source_top = if draw.flip_vertical { full_height - top - i64::from(height) } else { top };
        let mut window = crop(&image, source_left, source_top, width, height);
        let row_len = width as usize * 3;
        if draw.flip_horizontal {
            for row in window.chunks_exact_mut(row_len) {
                row.as_chunks_mut::<3>().0.reverse();
            }
        }
        if draw.flip_vertical {
            let rows = height as usize;
            for y in 0..rows / 2 {
                let (upper, lower) = window.split_at_mut((rows - 1 - y) * row_len);
                upper[y * row_len..(y + 1) * row_len].swap_with_slice(&mut lower[..row_len]);
            }
        }
        let resized = resize(&window, self.size, self.size)?;
        let mut rotated = rotate_nearest(&resized, draw.angle);
        adjust_hue_in_place(&mut rotated, draw.hue);
        Ok(rotated)
    }
}

#[cfg(test)]
mod tests {
    use image::Rgb;

    use super::*;

    #[test]
    fn hsv_round_trip_is_pils_colorsys_on_hand_computed_pixels() {
        // Pure colours and grays (hand-computed with colorsys, scaled and truncated to u8).
        let q = quotients();
        assert_eq!(rgb_to_hsv([255, 0, 0], q), [0, 255, 255]);
        assert_eq!(rgb_to_hsv([0, 255, 0], q), [85, 255, 255]);
        assert_eq!(rgb_to_hsv([0, 0, 255], q), [170, 255, 255]);
        assert_eq!(rgb_to_hsv([90, 90, 90], q), [0, 0, 90]);
        // (200, 100, 50): h = (bc - gc) / 6 = (1 - 2/3) / 6 = 0.0556 -> 14; s = 150/200 -> 191.
        assert_eq!(rgb_to_hsv([200, 100, 50], q), [14, 191, 200]);
        let back = hsv_to_rgb_table();
        assert_eq!(back.convert([0, 255, 255]), [255, 0, 0]);
        assert_eq!(back.convert([0, 0, 77]), [77, 77, 77]);
    }

    #[test]
    fn the_blocked_hue_shift_equals_the_pixel_by_pixel_one() {
        // Every 8-bit grey and colour edge case plus random pixels, over all shifts.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let pixels: Vec<[u8; 3]> = (0..=255u8)
            .flat_map(|v| [[v, v, v], [v, 0, 0], [0, v, 255], [255, v, v]])
            .chain((0..4000).map(|_| [rng.random(), rng.random(), rng.random()]))
            .collect();
        let width = pixels.len() as u32;
        let image = RgbImage::from_fn(width, 1, |x, _| Rgb(pixels[x as usize]));
        for shift in [0.0, 0.2, -0.2, 0.137, -0.004, 0.5] {
            let blocked = adjust_hue(&image, shift);
            let step = (shift * 255.0f64).trunc() as i64 as u8;
            for (x, pixel) in pixels.iter().enumerate() {
                let [h, s, v] = pil_rgb_to_hsv(*pixel);
                assert_eq!(blocked.get_pixel(x as u32, 0).0, pil_hsv_to_rgb([h.wrapping_add(step), s, v]), "{pixel:?} shift {shift}");
            }
        }
    }

    #[test]
    fn the_study_normalization_keeps_the_typo_unless_fixed() {
        let faithful = Normalization::study(Normalization::IMAGENET.mean, Normalization::IMAGENET.std, false);
        assert_eq!(faithful.std, [0.228, 0.224, 0.225]);
        assert_eq!(Normalization::study(Normalization::IMAGENET.mean, Normalization::IMAGENET.std, true), Normalization::IMAGENET);
        assert_eq!(Normalization::study([0.5; 3], [0.5; 3], false), Normalization::HALF);
    }

    #[test]
    fn folding_the_flips_into_the_crop_changes_nothing() {
        let image = RgbImage::from_fn(37, 29, |x, y| Rgb([(x * 7) as u8, (y * 9) as u8, (x * y) as u8]));
        let transform = TrainTransform { size: 20, ..TrainTransform::default() };
        for index in 0..40 {
            let draw = transform.draw(5, 0, index, 37, 29);
            // The plain order: flip the whole image, then crop, resize, rotate, hue.
            let mut flipped = image.clone();
            if draw.flip_horizontal {
                flipped = flip_horizontal(&flipped);
            }
            if draw.flip_vertical {
                flipped = flip_vertical(&flipped);
            }
            let (top, left, height, width) = draw.crop;
            let plain = adjust_hue(&rotate_nearest(&resized_crop(&flipped, top, left, height, width, 20).unwrap(), draw.angle), draw.hue);
            assert_eq!(transform.apply(&image, &draw).unwrap(), plain, "draw {index}: {draw:?}");
        }
    }

    #[test]
    fn draws_are_deterministic_and_within_the_reference_ranges() {
        let transform = TrainTransform::default();
        let a = transform.draw(1, 2, 3, 300, 200);
        assert_eq!(a, transform.draw(1, 2, 3, 300, 200));
        assert_ne!(a, transform.draw(1, 2, 4, 300, 200));
        assert_ne!(a, transform.draw(1, 3, 3, 300, 200));
        let (mut horizontal, n) = (0, 2000);
        for index in 0..n {
            let d = transform.draw(7, 0, index, 300, 200);
            let (top, left, h, w) = d.crop;
            let area = f64::from(h * w) / 60000.0;
            assert!((0.73..=1.0).contains(&area), "area {area}");
            assert!(top >= 0 && left >= 0 && top + i64::from(h) <= 200 && left + i64::from(w) <= 300);
            assert!(d.angle.abs() <= 45.0 && d.hue.abs() <= 0.2);
            horizontal += usize::from(d.flip_horizontal);
        }
        assert!((900..1100).contains(&horizontal), "{horizontal} of {n} flipped");
    }
}
