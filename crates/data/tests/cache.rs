#![allow(clippy::unwrap_used)]
//! The decoded-image cache and the batch loader.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use medxfer_data::{
    Augment, Catalog, DECODE_REVISION, DicomFrame, Entry, ImageCache, LoaderConfig, Order, Part, Rendering, batches, epoch_order,
    load_image_frame, load_rgb8, ood_entries, scan_dataset, synth,
    transform::{self, Normalization, TrainTransform},
};

fn replica(name: &str, per_class: usize) -> (tempfile::TempDir, Vec<Entry>) {
    let catalog = Catalog::load_default().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = catalog.dataset(name).unwrap();
    synth::synthesize(spec, &dir.path().join("data"), per_class, 11).unwrap();
    let scan = scan_dataset(spec, &dir.path().join("data")).unwrap();
    (dir, ood_entries(&scan.records))
}

/// A cine loop's cache holds the frame chosen, under a key of its own: the middle frame's images
/// are never read back as the first's; nor a CT slice's through a window of one's own as its own.
#[test]
fn a_cache_of_dicom_frames_is_keyed_by_the_frame_chosen() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom");
    let dir = tempfile::tempdir().unwrap();
    let entries = [Entry { path: "us_cine.dcm".into(), label: 0, group: "a".into(), split: Part::Train, frame: None }];
    let error = ImageCache::open_or_build(dir.path(), "cine", &fixtures, &entries, 16, false).unwrap_err().to_string();
    assert!(error.contains("holds 3 frames"), "{error}");
    let mut keys = BTreeSet::new();
    for (frame, named) in [(DicomFrame::First, "-ffirst-"), (DicomFrame::Middle, "-fmiddle-"), (DicomFrame::Number(3), "-f3-")] {
        let cache =
            ImageCache::open_or_build_frame(dir.path(), "cine", &fixtures, &entries, (16, frame, Rendering::default()), false).unwrap();
        assert!(cache.key().starts_with(&format!("cine-s16-d{DECODE_REVISION}{named}")), "{}", cache.key());
        let expected = transform::resize_shorter(&load_image_frame(&fixtures.join("us_cine.dcm"), frame).unwrap().image, 16).unwrap();
        assert_eq!(cache.read(0).unwrap(), expected, "{frame}");
        keys.insert(cache.key().to_string());
    }
    assert_eq!(keys.len(), 3);
    // A window of one's own: another key, the images through it.
    let window: medxfer_data::Window = "40,80".parse().unwrap();
    let ct = [Entry { path: "ct_window.dcm".into(), label: 0, group: "a".into(), split: Part::Train, frame: None }];
    let own = ImageCache::open_or_build(dir.path(), "ct", &fixtures, &ct, 16, false).unwrap();
    let windowed = ImageCache::open_or_build_frame(
        dir.path(),
        "ct",
        &fixtures,
        &ct,
        (16, DicomFrame::Only, Rendering { window: Some(window), ..Rendering::default() }),
        false,
    )
    .unwrap();
    assert!(windowed.key().starts_with(&format!("ct-s16-d{DECODE_REVISION}-w40,80-")), "{}", windowed.key());
    assert_ne!(own.key(), windowed.key());
    let through = medxfer_data::load_image_frames(
        &fixtures.join("ct_window.dcm"),
        &[DicomFrame::Only],
        Rendering { window: Some(window), ..Rendering::default() },
    )
    .unwrap();
    let expected = transform::resize_shorter(&through[0].as_ref().unwrap().image, 16).unwrap();
    assert_eq!(windowed.read(0).unwrap(), expected);
    assert_ne!(own.read(0).unwrap(), expected);
}

#[test]
fn the_cache_holds_each_image_decoded_and_resized_and_is_reused() {
    let (dir, entries) = replica("pad-ufes-20", 3);
    let (root, cache_dir) = (dir.path().join("data"), dir.path().join("cache"));
    let cache = ImageCache::open_or_build(&cache_dir, "pad-ufes-20", &root, &entries, 16, false).unwrap();
    assert_eq!(cache.len(), entries.len());
    // Keyed by the decoder's revision too: a cache an earlier decoder made (other pixels for some
    // file) has another name and is not read.
    assert!(cache.key().starts_with(&format!("pad-ufes-20-s16-d{DECODE_REVISION}-")), "{}", cache.key());
    for (i, entry) in entries.iter().enumerate() {
        let expected = transform::resize_shorter(&load_rgb8(&root.join(&entry.path)).unwrap(), 16).unwrap();
        assert_eq!(cache.read(i).unwrap(), expected, "{}", entry.path);
    }
    let files =
        |dir: &Path| std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect::<BTreeSet<_>>();
    let before = files(&cache_dir);
    assert_eq!(before.len(), 2, "{before:?}");
    let data_file = cache_dir.join(before.iter().find(|f| f.ends_with(".rgb8")).unwrap());
    let written = std::fs::metadata(&data_file).unwrap().modified().unwrap();
    // Opening again reuses the file.
    ImageCache::open_or_build(&cache_dir, "pad-ufes-20", &root, &entries, 16, false).unwrap();
    assert_eq!(std::fs::metadata(&data_file).unwrap().modified().unwrap(), written);
    // A changed image gives a new key and a new cache; a truncated data file is rebuilt.
    let first = root.join(&entries[0].path);
    image::RgbImage::new(9, 7).save(&first).unwrap();
    let rebuilt = ImageCache::open_or_build(&cache_dir, "pad-ufes-20", &root, &entries, 16, false).unwrap();
    assert_eq!(rebuilt.read(0).unwrap().dimensions(), (20, 16));
    assert_eq!(files(&cache_dir).len(), 4);
    std::fs::write(&data_file, b"short").unwrap();
    let again = ImageCache::open_or_build(&cache_dir, "pad-ufes-20", &root, &entries[1..], 16, false).unwrap();
    assert_eq!(again.len(), entries.len() - 1);
    assert!(!files(&cache_dir).iter().any(|f| f.ends_with(".partial")));
    // A corrupt image stops the build and names the file.
    std::fs::write(root.join(&entries[1].path), b"not a png").unwrap();
    let error = ImageCache::open_or_build(&cache_dir, "pad-ufes-20", &root, &entries, 16, false).unwrap_err().to_string();
    assert!(error.contains(&entries[1].path), "{error}");
    // A shorter side no image can have is one error, before any image is read (it was one per
    // image: "cannot resize a 35x23 image to 0x0 ... and 172 more").
    for side in [0, transform::MAX_SIDE + 1] {
        let error = ImageCache::open_or_build(&cache_dir, "pad-ufes-20", &root, &entries, side, false).unwrap_err().to_string();
        assert!(error.contains(&format!("a shorter side of {side} px; expected 1 to 16384")) && !error.contains(".png"), "{error}");
    }
}

/// Class-balanced epochs (PyTorch's `WeightedRandomSampler` with weights 1 / class count): as
/// many draws as images, each class a third of them though one holds 90 of 105 images, each image
/// of a class alike, within four standard deviations of the binomial counts over 40 epochs;
/// deterministic by (seed, epoch). An image drawn twice in an epoch is augmented twice.
#[test]
fn class_balanced_epochs_draw_each_class_alike() {
    let labels: Vec<u32> = (0..105)
        .map(|i| {
            if i < 90 {
                0
            } else if i < 100 {
                1
            } else {
                2
            }
        })
        .collect();
    let normalization = Normalization::IMAGENET;
    let config =
        LoaderConfig { batch_size: 8, order: Order::ClassBalanced, seed: 5, epoch: 0, augment: Augment::Eval { crop: 8 }, normalization };
    let mut per_class = [0f64; 3];
    let mut per_image = vec![0f64; labels.len()];
    for epoch in 0..40 {
        let order = epoch_order(&labels, &LoaderConfig { epoch, ..config });
        assert_eq!(order.len(), labels.len());
        assert_eq!(order, epoch_order(&labels, &LoaderConfig { epoch, ..config }));
        for &index in &order {
            per_class[labels[index] as usize] += 1.0;
            per_image[index] += 1.0;
        }
    }
    let draws = 40.0 * labels.len() as f64;
    let within = |count: f64, p: f64, n: f64| (count - n * p).abs() <= 4.0 * (n * p * (1.0 - p)).sqrt();
    for (class, &count) in per_class.iter().enumerate() {
        assert!(within(count, 1.0 / 3.0, draws), "class {class}: {count} of {draws}");
    }
    for (class, members) in [(0, 0..90), (1, 90..100), (2, 100..105)] {
        let n = per_class[class];
        for index in members.clone() {
            assert!(within(per_image[index], 1.0 / members.len() as f64, n), "image {index}: {} of {n}", per_image[index]);
        }
    }
    assert_ne!(epoch_order(&labels, &config), epoch_order(&labels, &LoaderConfig { seed: 6, ..config }));

    // Through the loader with the train transform: an image drawn twice, two augmentations.
    let (dir, entries) = replica("nins", 3);
    let cache =
        Arc::new(ImageCache::open_or_build(&dir.path().join("cache"), "nins", &dir.path().join("data"), &entries, 24, false).unwrap());
    let labels = Arc::new(entries.iter().map(|e| e.label).collect::<Vec<u32>>());
    let train = LoaderConfig { augment: Augment::Train(TrainTransform { size: 16, ..TrainTransform::default() }), ..config };
    let epoch: Vec<_> = batches(cache, labels.clone(), train).unwrap().map(Result::unwrap).collect();
    let images: Vec<(usize, Vec<f32>)> = epoch
        .iter()
        .flat_map(|batch| {
            batch
                .indices
                .iter()
                .enumerate()
                .map(|(k, &i)| (i, batch.images.get(k).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        })
        .collect();
    assert_eq!(images.len(), labels.len());
    let twice =
        images.iter().enumerate().find_map(|(a, (i, _))| images.iter().skip(a + 1).position(|(j, _)| j == i).map(|b| (a, a + 1 + b)));
    let (a, b) = twice.expect("no image drawn twice in the epoch");
    assert_ne!(images[a].1, images[b].1, "image {} drawn twice, augmented alike", images[a].0);
}

#[test]
fn batches_cover_the_epoch_once_in_a_seeded_order_with_the_last_partial_batch() {
    let (dir, entries) = replica("nins", 3);
    let root = dir.path().join("data");
    let cache = Arc::new(ImageCache::open_or_build(&dir.path().join("cache"), "nins", &root, &entries, 24, false).unwrap());
    let labels = Arc::new(entries.iter().map(|e| e.label).collect::<Vec<u32>>());
    let normalization = Normalization::study(Normalization::IMAGENET.mean, Normalization::IMAGENET.std, false);
    let config =
        LoaderConfig { batch_size: 4, order: Order::Shuffled, seed: 3, epoch: 0, augment: Augment::Eval { crop: 20 }, normalization };
    let epoch: Vec<_> = batches(cache.clone(), labels.clone(), config).unwrap().map(Result::unwrap).collect();
    // 19 images (six folders x 3 + the `_1` duplicate) in batches of 4: the last holds 3.
    let n = entries.len();
    assert_eq!(epoch.len(), n.div_ceil(4));
    assert_eq!(epoch.last().unwrap().indices.len(), if n % 4 == 0 { 4 } else { n % 4 });
    let order: Vec<usize> = epoch.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(order.iter().copied().collect::<BTreeSet<_>>().len(), n);
    assert_eq!(order, epoch_order(&labels, &config));
    assert_ne!(order, epoch_order(&labels, &LoaderConfig { epoch: 1, ..config }));
    // Batch contents: the eval transform of the cached image, and its label.
    let first = &epoch[0];
    assert_eq!(first.images.dims(), &[4, 3, 20, 20]);
    let expected = transform::to_normalized_chw(&transform::center_crop(&cache.read(first.indices[1]).unwrap(), 20), &normalization);
    assert_eq!(first.images.get(1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), expected);
    assert_eq!(first.labels.to_vec1::<u32>().unwrap(), first.indices.iter().map(|&i| labels[i]).collect::<Vec<_>>());

    // Train batches are reproducible for a (seed, epoch) and change with the epoch.
    let train = LoaderConfig { augment: Augment::Train(TrainTransform { size: 16, ..TrainTransform::default() }), ..config };
    let take = |config: LoaderConfig| batches(cache.clone(), labels.clone(), config).unwrap().next().unwrap().unwrap().images;
    let (a, b) = (take(train), take(train));
    assert_eq!(a.dims(), &[4, 3, 16, 16]);
    assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let c = take(LoaderConfig { epoch: 5, ..train });
    assert_ne!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), c.flatten_all().unwrap().to_vec1::<f32>().unwrap());
}

#[test]
fn an_image_rewritten_at_the_same_size_is_not_answered_from_the_cache() {
    // BACH's TIFFs are uncompressed: new pixels, the same byte size.
    let (dir, entries) = replica("bach", 2);
    let (root, cache_dir) = (dir.path().join("data"), dir.path().join("cache"));
    let cache = ImageCache::open_or_build(&cache_dir, "bach", &root, &entries, 24, false).unwrap();
    let first = root.join(&entries[0].path);
    let before = std::fs::metadata(&first).unwrap();
    // The same picture inverted, at the file's own bit depth (the replica writes some at 16).
    let inverted = match image::open(&first).unwrap() {
        image::DynamicImage::ImageRgb16(wide) => {
            image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(wide.width(), wide.height(), |x, y| {
                image::Rgb(wide.get_pixel(x, y).0.map(|v| u16::MAX - v))
            }))
        }
        other => {
            let mut rgb = other.to_rgb8();
            rgb.pixels_mut().for_each(|p| p.0 = p.0.map(|v| 255 - v));
            image::DynamicImage::ImageRgb8(rgb)
        }
    };
    let mut bytes = Vec::new();
    inverted.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Tiff).unwrap();
    assert_eq!(bytes.len() as u64, before.len(), "the rewrite keeps the size");
    std::fs::write(&first, &bytes).unwrap();
    // A later modification time, as any rewrite gives (set explicitly: coarse clocks).
    let later = before.modified().unwrap() + std::time::Duration::from_secs(5);
    std::fs::File::options().write(true).open(&first).unwrap().set_modified(later).unwrap();
    let rebuilt = ImageCache::open_or_build(&cache_dir, "bach", &root, &entries, 24, false).unwrap();
    let expected = transform::resize_shorter(&load_rgb8(&first).unwrap(), 24).unwrap();
    assert_eq!(rebuilt.read(0).unwrap(), expected);
    assert_ne!(cache.read(0).unwrap(), expected, "the old cache held the old pixels");
}

#[test]
fn sixteen_bit_images_keep_their_high_byte_and_twelve_bit_ones_are_named_faint() {
    use image::{ImageBuffer, Luma, Rgb};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    // 12-bit samples (a DICOM export), full 16-bit ones, 12-bit RGB, 8-bit gray.
    let twelve_bit = ImageBuffer::<Luma<u16>, _>::from_fn(8, 8, |x, y| Luma([((x * 8 + y) * 64).min(4095) as u16]));
    twelve_bit.save(root.join("mri.png")).unwrap();
    ImageBuffer::<Luma<u16>, _>::from_fn(8, 8, |x, y| Luma([(x * 8 + y) as u16 * 1024 + 1023])).save(root.join("full.png")).unwrap();
    ImageBuffer::<Rgb<u16>, _>::from_fn(8, 8, |x, _| Rgb([x as u16 * 500, 4095, 0])).save(root.join("rgb12.png")).unwrap();
    ImageBuffer::<Luma<u8>, _>::from_fn(8, 8, |x, _| Luma([x as u8])).save(root.join("gray8.png")).unwrap();
    let entries: Vec<Entry> = ["mri.png", "full.png", "rgb12.png", "gray8.png"]
        .iter()
        .map(|path| Entry { path: (*path).to_string(), label: 0, group: (*path).to_string(), split: Part::Train, frame: None })
        .collect();
    let cache_dir = dir.path().join("cache");
    let cache = ImageCache::open_or_build(&cache_dir, "radiographs", &root, &entries, 8, false).unwrap();
    assert_eq!(cache.faint_images(), ["mri.png", "rgb12.png"]);
    // The high byte, by hand: 4095 >> 8 = 15 at most, the full-range image's top row 1023 >> 8 = 3.
    let mri = cache.read(0).unwrap();
    assert_eq!(mri.get_pixel(7, 7).0, [15, 15, 15]);
    assert_eq!(mri.get_pixel(1, 0).0, [(512u16 >> 8) as u8; 3]);
    assert_eq!(cache.read(1).unwrap().get_pixel(7, 7).0, [((63 * 1024 + 1023) >> 8) as u8; 3]);
    assert_eq!(cache.read(2).unwrap().get_pixel(7, 0).0, [(3500u16 >> 8) as u8, 15, 0]);
    // Reopened, the cache still says which images came out faint.
    let reopened = ImageCache::open_or_build(&cache_dir, "radiographs", &root, &entries, 8, false).unwrap();
    assert_eq!(reopened.faint_images(), ["mri.png", "rgb12.png"]);
}
