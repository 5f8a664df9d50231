//! Times each train-transform operation on a cached-size image (341 x 256 -> 224 x 224), to say
//! which one bounds the loader. `cargo run --release -p medxfer-data --example transform_timing`.

use std::time::Instant;

use medxfer_data::{Normalization, TrainTransform, transform};

fn time(name: &str, runs: u32, mut work: impl FnMut()) {
    work();
    let start = Instant::now();
    for _ in 0..runs {
        work();
    }
    println!("{name:<28} {:8.1} us", start.elapsed().as_secs_f64() * 1e6 / f64::from(runs));
}

fn main() -> anyhow::Result<()> {
    let image = image::RgbImage::from_fn(341, 256, |x, y| image::Rgb([(x * 7 % 256) as u8, (y * 3 % 256) as u8, ((x ^ y) % 256) as u8]));
    let transform = TrainTransform::default();
    let draw = transform.draw(0, 0, 0, 341, 256);
    let (top, left, height, width) = draw.crop;
    let cropped = transform::resized_crop(&image, top, left, height, width, 224)?;
    let normalization = Normalization::IMAGENET;
    time("flips (clone + 2 in place)", 200, || {
        let mut copy = image.clone();
        image::imageops::flip_horizontal_in_place(&mut copy);
        image::imageops::flip_vertical_in_place(&mut copy);
    });
    time("resized crop", 200, || drop(transform::resized_crop(&image, top, left, height, width, 224)));
    time("rotate (nearest)", 200, || drop(transform::rotate_nearest(&cropped, draw.angle)));
    time("hue", 200, || drop(transform::adjust_hue(&cropped, 0.13)));
    time("normalise to CHW", 200, || drop(transform::to_normalized_chw(&cropped, &normalization)));
    time("the whole train transform", 200, || drop(transform.apply(&image, &draw)));
    Ok(())
}
