//! What the demo's images show: the source set's 16 shape x style classes, the three target
//! tasks' class signals (unlike the source's: lesions on skin, nuclei in tissue, bright regions in
//! a head), and the OOD sets' shifts.

use image::{Rgb, RgbImage};
use medxfer_data::synth::Painter;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Adds uniform noise of amplitude `amount` to every channel.
fn noise(image: &mut RgbImage, amount: i32, rng: &mut ChaCha8Rng) {
    for pixel in image.pixels_mut() {
        for c in pixel.0.iter_mut() {
            *c = (i32::from(*c) + rng.random_range(-amount..=amount)).clamp(0, 255) as u8;
        }
    }
}

fn blend(pixel: &mut Rgb<u8>, colour: [u8; 3], alpha: f32) {
    for (p, c) in pixel.0.iter_mut().zip(colour) {
        *p = (f32::from(*p) * (1.0 - alpha) + f32::from(c) * alpha).round() as u8;
    }
}

/// Paints a filled disc (soft edge) of `colour` at (cx, cy) with radius r.
fn disc(image: &mut RgbImage, cx: f32, cy: f32, r: f32, colour: [u8; 3]) {
    let (w, h) = image.dimensions();
    for y in 0..h {
        for x in 0..w {
            let d = ((x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2)).sqrt();
            let alpha = (r + 0.5 - d).clamp(0.0, 1.0);
            if alpha > 0.0 {
                blend(image.get_pixel_mut(x, y), colour, alpha);
            }
        }
    }
}

/// The source set: class = 4 * shape + style.
#[derive(Debug)]
pub struct SourcePainter;

impl SourcePainter {
    pub const CLASSES: u32 = 16;

    pub fn draw(class: u32, size: u32, rng: &mut ChaCha8Rng) -> RgbImage {
        let (shape, style) = (class / 4, class % 4);
        let grey = rng.random_range(90..150u8);
        let mut image = RgbImage::from_pixel(size, size, Rgb([grey, grey, grey]));
        let s = size as f32;
        let (cx, cy) = (s * rng.random_range(0.35..0.65), s * rng.random_range(0.35..0.65));
        let r = s * rng.random_range(0.2..0.32);
        let colours = [[220, 40, 40], [40, 200, 60], [50, 80, 230], [235, 215, 40]];
        let colour = colours[style as usize];
        for y in 0..size {
            for x in 0..size {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let inside = match shape {
                    0 => dx * dx + dy * dy <= r * r,
                    1 => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
                    2 => dy <= r * 0.8 && dy >= -r && dx.abs() <= (dy + r) * 0.6,
                    _ => (dx.abs() <= r * 0.3 && dy.abs() <= r) || (dy.abs() <= r * 0.3 && dx.abs() <= r),
                };
                // The style's texture: solid, stripes, dots, checks.
                let textured = match style {
                    0 => true,
                    1 => (x / 2) % 2 == 0,
                    2 => x % 3 == 0 && y % 3 == 0 || (x + 1) % 3 == 0 && (y + 1) % 3 == 0,
                    _ => ((x / 3) + (y / 3)) % 2 == 0,
                };
                if inside {
                    let pixel = image.get_pixel_mut(x, y);
                    if textured {
                        *pixel = Rgb(colour);
                    } else {
                        blend(pixel, colour, 0.35);
                    }
                }
            }
        }
        noise(&mut image, 18, rng);
        image
    }
}

/// How an OOD set differs from its task's training set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shift {
    None,
    /// A colour cast and brighter exposure (another camera): PAD-UFES-20's stand-in.
    Colour,
    /// Lower contrast and a blur (another scanner): BACH's.
    ContrastBlur,
    /// Heavy noise and lower contrast (another MRI protocol): NINS's.
    Noise,
}

/// A target task's images.
#[derive(Debug, Clone, Copy)]
pub struct TaskPainter {
    pub task: TaskKind,
    pub shift: Shift,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TaskKind {
    /// benign 0: a round even brown lesion; melanoma 1: an irregular lesion with dark and blue
    /// patches.
    Skin,
    /// benign 0: few large regular nuclei; malignant 1: many small dark irregular nuclei.
    Breast,
    /// no tumour 0, glioma 1 (irregular bright region inside), meningioma 2 (round bright region
    /// at the skull), pituitary 3 (small bright spot low in the middle).
    Brain,
}

impl Painter for TaskPainter {
    fn paint(&self, label: Option<u32>, width: u32, height: u32, rng: &mut ChaCha8Rng) -> RgbImage {
        // Classes the task drops still get images of their kind: a random one of the task's.
        let classes = match self.task {
            TaskKind::Skin | TaskKind::Breast => 2,
            TaskKind::Brain => 4,
        };
        let label = label.unwrap_or_else(|| rng.random_range(0..classes));
        let mut image = match self.task {
            TaskKind::Skin => skin(label, width, height, rng),
            TaskKind::Breast => breast(label, width, height, rng),
            TaskKind::Brain => brain(label, width, height, rng),
        };
        shift(&mut image, self.shift, rng);
        image
    }
}

fn skin(label: u32, w: u32, h: u32, rng: &mut ChaCha8Rng) -> RgbImage {
    let tone = [rng.random_range(200..235u8), rng.random_range(160..190u8), rng.random_range(130..160u8)];
    let mut image = RgbImage::from_pixel(w, h, Rgb(tone));
    let (cx, cy) = (w as f32 * rng.random_range(0.4..0.6), h as f32 * rng.random_range(0.4..0.6));
    let r = w.min(h) as f32 * rng.random_range(0.22..0.32);
    if label == 1 {
        for _ in 0..4 {
            let (ox, oy) = (rng.random_range(-0.5..0.5) * r, rng.random_range(-0.5..0.5) * r);
            disc(&mut image, cx + ox, cy + oy, r * rng.random_range(0.5..0.8), [90, 50, 35]);
        }
        disc(&mut image, cx + rng.random_range(-0.4..0.4) * r, cy, r * 0.35, [40, 25, 30]);
        disc(&mut image, cx, cy + rng.random_range(-0.4..0.4) * r, r * 0.25, [70, 80, 130]);
    } else {
        disc(&mut image, cx, cy, r, [150, 100, 70]);
    }
    noise(&mut image, 14, rng);
    image
}

fn breast(label: u32, w: u32, h: u32, rng: &mut ChaCha8Rng) -> RgbImage {
    let mut image = RgbImage::from_pixel(w, h, Rgb([235, 180, 210]));
    let (count, radius, colour) = if label == 1 { (14, 1.3, [80, 20, 90]) } else { (4, 2.6, [150, 90, 170]) };
    for _ in 0..count {
        let (x, y) = (rng.random_range(0.0..w as f32), rng.random_range(0.0..h as f32));
        disc(&mut image, x, y, radius * rng.random_range(0.8..1.25), colour);
    }
    noise(&mut image, 16, rng);
    image
}

fn brain(label: u32, w: u32, h: u32, rng: &mut ChaCha8Rng) -> RgbImage {
    let mut image = RgbImage::from_pixel(w, h, Rgb([5, 5, 5]));
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (rx, ry) = (w as f32 * 0.42, h as f32 * 0.46);
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = ((x as f32 + 0.5 - cx) / rx, (y as f32 + 0.5 - cy) / ry);
            if dx * dx + dy * dy <= 1.0 {
                let v = 110 + ((1.0 - dx * dx - dy * dy) * 40.0) as u8;
                *image.get_pixel_mut(x, y) = Rgb([v, v, v]);
            }
        }
    }
    let bright = [225, 225, 225];
    match label {
        1 => {
            let side = if rng.random_bool(0.5) { -0.35 } else { 0.35 };
            for _ in 0..3 {
                disc(
                    &mut image,
                    cx + side * rx + rng.random_range(-2.0..2.0),
                    cy + rng.random_range(-3.0..3.0),
                    rng.random_range(1.5..3.0),
                    bright,
                );
            }
        }
        2 => {
            let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
            disc(&mut image, cx + angle.cos() * rx * 0.8, cy + angle.sin() * ry * 0.8, w as f32 * 0.12, bright);
        }
        3 => disc(&mut image, cx + rng.random_range(-1.0..1.0), cy + ry * 0.45, w as f32 * 0.07, bright),
        _ => {}
    }
    noise(&mut image, 12, rng);
    image
}

fn shift(image: &mut RgbImage, shift: Shift, rng: &mut ChaCha8Rng) {
    match shift {
        Shift::None => {}
        Shift::Colour => {
            for pixel in image.pixels_mut() {
                let [r, g, b] = pixel.0;
                *pixel = Rgb([r.saturating_add(25), (f32::from(g) * 0.9) as u8, b.saturating_add(30)]);
            }
        }
        Shift::ContrastBlur => {
            for pixel in image.pixels_mut() {
                for c in pixel.0.iter_mut() {
                    *c = (128.0 + (f32::from(*c) - 128.0) * 0.8) as u8;
                }
            }
            gaussian_blur(image, 0.5);
        }
        Shift::Noise => {
            for pixel in image.pixels_mut() {
                for c in pixel.0.iter_mut() {
                    *c = (40.0 + f32::from(*c) * 0.7) as u8;
                }
            }
            noise(image, 45, rng);
        }
    }
}

/// A separable Gaussian blur of standard deviation `sigma` pixels, edges clamped. (image 0.25's
/// `imageops::blur` leaves the first row black, a signal of its own that the demo's OOD set
/// must not carry.)
fn gaussian_blur(image: &mut RgbImage, sigma: f32) {
    let radius = (3.0 * sigma).ceil() as i64;
    let weights: Vec<f32> = (-radius..=radius).map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = weights.iter().sum();
    let (w, h) = (i64::from(image.width()), i64::from(image.height()));
    let pass = |source: &RgbImage, horizontal: bool| {
        RgbImage::from_fn(source.width(), source.height(), |x, y| {
            let mut sum = [0.0f32; 3];
            for (k, weight) in weights.iter().enumerate() {
                let d = k as i64 - radius;
                let (sx, sy) = if horizontal {
                    ((i64::from(x) + d).clamp(0, w - 1), i64::from(y))
                } else {
                    (i64::from(x), (i64::from(y) + d).clamp(0, h - 1))
                };
                let pixel = source.get_pixel(sx as u32, sy as u32);
                for (s, &v) in sum.iter_mut().zip(&pixel.0) {
                    *s += weight * f32::from(v);
                }
            }
            Rgb(sum.map(|s| (s / total).round().clamp(0.0, 255.0) as u8))
        })
    };
    let horizontal = pass(image, true);
    *image = pass(&horizontal, false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_blur_keeps_a_flat_image_flat_and_an_impulse_symmetric() {
        let mut flat = RgbImage::from_pixel(32, 24, Rgb([200, 120, 40]));
        gaussian_blur(&mut flat, 0.9);
        assert!(flat.pixels().all(|p| p.0 == [200, 120, 40]), "edges included");
        let mut impulse = RgbImage::new(9, 9);
        impulse.put_pixel(4, 4, Rgb([255; 3]));
        gaussian_blur(&mut impulse, 0.8);
        let at = |x: u32, y: u32| impulse.get_pixel(x, y).0[0];
        assert!(at(4, 4) > at(3, 4) && at(3, 4) > at(2, 4) && at(3, 4) == at(5, 4) && at(4, 3) == at(4, 5));
    }

    /// Mean over images of the darkest pixel's grey level: the nuclei's darkness, what tells
    /// malignant (small, dark) from benign (large, pale).
    fn darkest(label: u32, shift: Shift) -> f64 {
        let painter = TaskPainter { task: TaskKind::Breast, shift };
        let mut rng = ChaCha8Rng::seed_from_u64(label.into());
        let images = 200;
        let total: f64 = (0..images)
            .map(|_| {
                let image = painter.paint(Some(label), 32, 24, &mut rng);
                image.pixels().map(|p| p.0.iter().map(|&c| f64::from(c)).sum::<f64>() / 3.0).fold(f64::INFINITY, f64::min)
            })
            .sum();
        total / f64::from(images)
    }

    #[test]
    fn the_breast_ood_shift_leaves_the_class_signal() {
        // Malignant tissue has many small dark nuclei, benign few large pale ones: after the
        // scanner shift (lower contrast, blur) the difference must stay large enough for the
        // fine-tuned models' OOD accuracies to differ (at contrast 0.55 and blur 0.9 every
        // backbone fell to 0.5).
        let plain = darkest(0, Shift::None) - darkest(1, Shift::None);
        let shifted = darkest(0, Shift::ContrastBlur) - darkest(1, Shift::ContrastBlur);
        assert!(plain > 40.0, "{plain}");
        assert!(shifted > 0.5 * plain, "shifted {shifted} vs plain {plain}");
    }
}
