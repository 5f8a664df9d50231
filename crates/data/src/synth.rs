//! Small synthetic replicas of each real layout (DATASETS.md, "Synthetic replica"), written the
//! way the real archives are laid out, pitfalls included: ISIC's `_downsampled` stems, float
//! one-hot and empty lesion ids; PAD's 26 columns, split image folders and reused lesion
//! numbers; BreakHis's double-nested root and slide-suffix pairs; BACH's 16-bit TIFFs; the
//! Kaggle MRI set's spaced names and exact duplicates across Training/Testing; Cheng's
//! MATLAB v7.3 files (512-byte header, transposed int16, u16 PID, one chunked+deflated); NINS's
//! ignored folders. The tests, the demo and `medxfer-data synth` use this one generator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::catalog::{DatasetSpec, LayoutKind};
use crate::error::{Error, Result};

/// What a replica holds, for the tests to compare a scan with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replica {
    /// Task label -> images the task uses.
    pub per_label: BTreeMap<u32, usize>,
    /// Images of deliberately dropped classes.
    pub dropped: usize,
}

/// What a replica's images show. Without one, images are gradients and noise with no class
/// signal (enough for layout tests); the demo paints each image from its task label so that a
/// network can learn the task.
pub trait Painter: Sync {
    /// An image of `width` x `height` for an image of the dataset's class `label` (None for a
    /// class the task drops).
    fn paint(&self, label: Option<u32>, width: u32, height: u32, rng: &mut ChaCha8Rng) -> RgbImage;
}

struct Writer<'a> {
    root: PathBuf,
    rng: ChaCha8Rng,
    replica: Replica,
    spec: &'a DatasetSpec,
    painter: Option<&'a dyn Painter>,
}

impl Writer<'_> {
    fn image(&mut self, class: &str, width: u32, height: u32) -> RgbImage {
        if let Some(painter) = self.painter {
            return painter.paint(self.spec.label_of(class), width, height, &mut self.rng);
        }
        // Smooth gradients plus noise: content a resize or a transposition visibly changes.
        let (a, b): (u8, u8) = (self.rng.random(), self.rng.random());
        let noise: Vec<u8> = (0..width * height).map(|_| self.rng.random_range(0..40)).collect();
        ImageBuffer::from_fn(width, height, |x, y| {
            let n = noise[(y * width + x) as usize];
            Rgb([a.wrapping_add((x * 9) as u8).wrapping_add(n), b.wrapping_add((y * 7) as u8), ((x + y) * 5) as u8 ^ n])
        })
    }

    fn path(&self, relative: &str) -> Result<PathBuf> {
        let path = self.root.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        Ok(path)
    }

    fn write_image(&mut self, relative: &str, class: &str, width: u32, height: u32) -> Result<()> {
        let image = self.image(class, width, height);
        save_image(&self.path(relative)?, DynamicImage::ImageRgb8(image))
    }

    fn text(&self, relative: &str, text: &str) -> Result<()> {
        Ok(medxfer_durable::write_atomic(&self.path(relative)?, text.as_bytes())?)
    }

    fn count(&mut self, spec: &DatasetSpec, class: &str) {
        match spec.label_of(class) {
            Some(label) => *self.replica.per_label.entry(label).or_default() += 1,
            None => self.replica.dropped += 1,
        }
    }
}

/// Writes a replica of `spec`'s layout under `out` with about `per_class` images per class.
pub fn synthesize(spec: &DatasetSpec, out: &Path, per_class: usize, seed: u64) -> Result<Replica> {
    write_replica(spec, out, per_class, seed, None)
}

/// [`synthesize`] with images drawn by `painter` from their labels.
pub fn synthesize_painted(spec: &DatasetSpec, out: &Path, per_class: usize, seed: u64, painter: &dyn Painter) -> Result<Replica> {
    write_replica(spec, out, per_class, seed, Some(painter))
}

fn write_replica(spec: &DatasetSpec, out: &Path, per_class: usize, seed: u64, painter: Option<&dyn Painter>) -> Result<Replica> {
    let per_class = per_class.max(3);
    let mut w = Writer { root: out.to_path_buf(), rng: ChaCha8Rng::seed_from_u64(seed), replica: Replica::default(), spec, painter };
    match spec.layout {
        LayoutKind::Isic2019 => isic(&mut w, spec, per_class)?,
        LayoutKind::PadUfes20 => pad(&mut w, spec, per_class)?,
        LayoutKind::Breakhis => breakhis(&mut w, spec, per_class)?,
        LayoutKind::Bach => bach(&mut w, spec, per_class)?,
        LayoutKind::BrainTumorKaggle => brain_kaggle(&mut w, spec, per_class)?,
        LayoutKind::Cheng => cheng(&mut w, spec, per_class)?,
        LayoutKind::Nins => nins(&mut w, spec, per_class)?,
    }
    Ok(w.replica)
}

fn isic(w: &mut Writer<'_>, spec: &DatasetSpec, per_class: usize) -> Result<()> {
    use crate::layouts::ISIC_CLASSES as columns;
    let mut truth = format!("{}\n", ["image"].iter().chain(columns.iter()).copied().collect::<Vec<_>>().join(","));
    let mut metadata = String::from("image,age_approx,anatom_site_general,lesion_id,sex\n");
    let mut id = 0;
    for class in ["MEL", "NV", "BKL", "AK", "DF", "VASC", "BCC", "SCC"] {
        for k in 0..per_class {
            // The second image of all is a `_downsampled` one.
            let stem = if id == 1 { format!("ISIC_{id:07}_downsampled") } else { format!("ISIC_{id:07}") };
            w.write_image(&format!("ISIC_2019_Training_Input/{stem}.jpg"), class, 24 + (id % 3) as u32 * 4, 18)?;
            let one_hot: Vec<&str> = columns.iter().map(|c| if *c == class { "1.0" } else { "0.0" }).collect();
            truth.push_str(&format!("{stem},{}\n", one_hot.join(",")));
            // The first image of a class has no lesion id; the second and third share one.
            let lesion = match k {
                0 => String::new(),
                1 | 2 => format!("HAM_{class}_shared"),
                _ => format!("BCN_{id:07}"),
            };
            metadata.push_str(&format!("{stem},{},anterior torso,{lesion},{}\n", 30 + k * 5, if k % 2 == 0 { "male" } else { "" }));
            w.count(spec, class);
            id += 1;
        }
    }
    w.text(crate::layouts::ISIC_GROUND_TRUTH, &truth)?;
    w.text(crate::layouts::ISIC_METADATA, &metadata)
}

fn pad(w: &mut Writer<'_>, spec: &DatasetSpec, per_class: usize) -> Result<()> {
    let mut metadata = format!("{}\n", crate::layouts::PAD_COLUMNS.join(","));
    let mut image_id = 0;
    for (c, class) in ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"].into_iter().enumerate() {
        for k in 0..per_class {
            // Two images per patient; lesion number 1867 reused by two patients (as in the real file).
            let patient = 100 + c * 50 + k / 2;
            let lesion = if k / 2 == 0 && (class == "ACK" || class == "MEL") { 1867 } else { 2000 + c * 50 + k / 2 };
            let name = format!("PAT_{patient}_{lesion}_{image_id}.png");
            w.write_image(&format!("images/imgs_part_{}/{name}", 1 + image_id % 2), class, 20, 20 + (k as u32 % 2) * 6)?;
            // One row with the socio-economic fields empty, one with UNK symptoms (as in the real file).
            let socio = if image_id == 0 { ["", "", "", ""] } else { ["False", "True", "POMERANIA", "GERMANY"] };
            let symptoms = if image_id == 1 { ["UNK"; 6] } else { ["False", "True", "False", "True", "False", "True"] };
            let age = (40 + k).to_string();
            let (patient_id, lesion_id) = (format!("PAT_{patient}"), lesion.to_string());
            let row: Vec<&str> = [&patient_id, &lesion_id]
                .into_iter()
                .map(String::as_str)
                .chain(socio)
                .chain([age.as_str(), "False", "MALE", "True", "False", "True", "True", "2.0", "FACE", "6.0", "5.0", class])
                .chain(symptoms)
                .chain([name.as_str(), "True"])
                .collect();
            metadata.push_str(&format!("{}\n", row.join(",")));
            w.count(spec, class);
            image_id += 1;
        }
    }
    w.text(crate::layouts::PAD_METADATA, &metadata)
}

fn breakhis(w: &mut Writer<'_>, spec: &DatasetSpec, per_class: usize) -> Result<()> {
    // (class folder, subtype folder, type code, year, id+suffix): a suffix pair of one patient.
    let slides = [
        ("benign", "adenosis", "A", "14", "22549AB"),
        ("benign", "adenosis", "A", "14", "22549CD"),
        ("benign", "fibroadenoma", "F", "14", "29960AB"),
        ("benign", "phyllodes_tumor", "PT", "14", "21998CD"),
        ("benign", "tubular_adenoma", "TA", "15", "3411"),
        ("malignant", "ductal_carcinoma", "DC", "14", "13412"),
        ("malignant", "lobular_carcinoma", "LC", "15", "1234"),
        ("malignant", "papillary_carcinoma", "PC", "14", "9146"),
    ];
    let b_or_m = |class: &str| if class == "benign" { "B" } else { "M" };
    for (class, subtype, code, year, id) in slides {
        let slide = format!("SOB_{}_{code}_{year}-{id}", b_or_m(class));
        for k in 0..per_class {
            let magnification = [40, 100, 200, 400][k % 4];
            let file = format!("SOB_{}_{code}-{year}-{id}-{magnification}-{:03}.png", b_or_m(class), k + 1);
            w.write_image(
                &format!("BreaKHis_v1/BreaKHis_v1/histology_slides/breast/{class}/SOB/{subtype}/{slide}/{magnification}X/{file}"),
                class,
                35,
                23,
            )?;
            w.count(spec, class);
        }
    }
    Ok(())
}

fn bach(w: &mut Writer<'_>, spec: &DatasetSpec, per_class: usize) -> Result<()> {
    let mut truth = String::new();
    for (class, prefix) in [("Benign", "b"), ("InSitu", "is"), ("Invasive", "iv"), ("Normal", "n")] {
        for k in 0..per_class {
            let name = format!("{prefix}{:03}.tif", k + 1);
            let path = w.path(&format!("ICIAR2018_BACH_Challenge/Photos/{class}/{name}"))?;
            let image = w.image(class, 32, 24);
            // Every other file 16 bits per sample, as most real BACH files appear to be.
            if k % 2 == 1 {
                let wide: ImageBuffer<Rgb<u16>, Vec<u16>> =
                    ImageBuffer::from_fn(32, 24, |x, y| Rgb(image.get_pixel(x, y).0.map(|v| u16::from(v) * 256 + (x as u16 % 7) * 30)));
                save_image(&path, DynamicImage::ImageRgb16(wide))?;
            } else {
                save_image(&path, DynamicImage::ImageRgb8(image))?;
            }
            truth.push_str(&format!("{name},{class}\n"));
            w.count(spec, class);
        }
    }
    w.text("ICIAR2018_BACH_Challenge/Photos/microscopy_ground_truth.csv", &truth)
}

fn brain_kaggle(w: &mut Writer<'_>, spec: &DatasetSpec, per_class: usize) -> Result<()> {
    let names = |class: &str, k: usize| match class {
        "glioma_tumor" => format!("gg ({}).jpg", k + 1),
        "meningioma_tumor" => format!("m{} (x).jpg", k + 1),
        "no_tumor" => format!("{}.jpg", k + 1),
        _ => format!("image({}).jpg", k + 1),
    };
    for origin in ["Training", "Testing"] {
        for class in ["no_tumor", "glioma_tumor", "meningioma_tumor", "pituitary_tumor"] {
            let count = if origin == "Training" { per_class + 2 } else { per_class };
            for k in 0..count {
                w.write_image(&format!("{origin}/{class}/{}", names(class, k)), class, 22, 22)?;
                w.count(spec, class);
            }
        }
    }
    // Exact duplicates: one within Training, one across Training/Testing.
    let copy = |from: &str, to: &str| -> Result<()> {
        let (from, to) = (w.root.join(from), w.root.join(to));
        let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
        Ok(medxfer_durable::write_atomic(&to, &bytes)?)
    };
    copy("Training/glioma_tumor/gg (1).jpg", "Training/glioma_tumor/gg (copy).jpg")?;
    copy("Training/no_tumor/1.jpg", "Testing/no_tumor/1 (dup).jpg")?;
    w.count(spec, "glioma_tumor");
    w.count(spec, "no_tumor");
    Ok(())
}

/// MATLAB v7.3's 128-byte header text, padded to the 512-byte userblock.
fn matlab_header() -> Vec<u8> {
    let mut header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .".to_vec();
    header.resize(116, b' ');
    header.extend_from_slice(&[0; 8]);
    header.extend_from_slice(&[0x00, 0x02, b'I', b'M']);
    header.resize(512, 0);
    header
}

/// Writes one Cheng-style .mat file: `image` given row-major as MATLAB sees it (rows x cols).
pub fn write_cheng_file(path: &Path, image: &[i16], rows: usize, columns: usize, label: u32, patient: &str, chunked: bool) -> Result<()> {
    use hdf5_pure::AttrValue;
    let mut file = hdf5_pure::FileBuilder::new();
    file.with_userblock(512).with_userblock_content(&matlab_header());
    let mut group = file.create_group("cjdata");
    group.set_attr("MATLAB_class", AttrValue::AsciiString("struct".into()));
    // HDF5 holds the transpose: h5[c][r] = MATLAB(r, c).
    let transposed: Vec<i16> = (0..columns).flat_map(|c| (0..rows).map(move |r| (r, c))).map(|(r, c)| image[r * columns + c]).collect();
    let dataset = group.create_dataset("image");
    dataset
        .with_i16_data(&transposed)
        .with_shape(&[columns as u64, rows as u64])
        .set_attr("MATLAB_class", AttrValue::AsciiString("int16".into()));
    if chunked {
        dataset.with_chunks(&[columns.div_ceil(2) as u64, rows as u64]).with_deflate(4);
    }
    group
        .create_dataset("label")
        .with_f64_data(&[f64::from(label)])
        .with_shape(&[1, 1])
        .set_attr("MATLAB_class", AttrValue::AsciiString("double".into()));
    let pid: Vec<u16> = patient.encode_utf16().collect();
    group
        .create_dataset("PID")
        .with_u16_data(&pid)
        .with_shape(&[pid.len() as u64, 1])
        .set_attr("MATLAB_class", AttrValue::AsciiString("char".into()))
        .set_attr("MATLAB_int_decode", AttrValue::I32(2));
    group.create_dataset("tumorBorder").with_f64_data(&[1.0, 2.0, 3.0, 4.0]).with_shape(&[1, 4]);
    file.add_group(group.finish());
    let pending = medxfer_durable::PendingFile::new(path)?;
    file.write(pending.path()).map_err(|e| Error::io(path, e))?;
    Ok(pending.commit()?)
}

/// Encodes `image` in the format `path`'s extension names and writes it atomically.
fn save_image(path: &Path, image: DynamicImage) -> Result<()> {
    let format = ImageFormat::from_path(path).map_err(|e| Error::io(path, e))?;
    Ok(medxfer_durable::write_atomic_with(path, |writer| image.write_to(writer, format).map_err(std::io::Error::other))?)
}

fn cheng(w: &mut Writer<'_>, spec: &DatasetSpec, per_class: usize) -> Result<()> {
    let mut n = 1;
    for (code, class) in [(1, "meningioma"), (2, "glioma"), (3, "pituitary")] {
        for k in 0..per_class {
            let (rows, columns) = (12, 10);
            let image: Vec<i16> = (0..rows * columns).map(|i| (i as i16) * 37 - 900 + w.rng.random_range(0..50)).collect();
            let folder = if n <= 6 { "brainTumorDataPublic_1-766" } else { "brainTumorDataPublic_767-1532" };
            let path = w.path(&format!("{folder}/{n}.mat"))?;
            // Two slices per patient.
            write_cheng_file(&path, &image, rows, columns, code, &format!("{}", 100000 + code * 100 + k as u32 / 2), n == 2)?;
            w.count(spec, class);
            n += 1;
        }
    }
    Ok(())
}

fn nins(w: &mut Writer<'_>, spec: &DatasetSpec, per_class: usize) -> Result<()> {
    let folders = [
        "Normal",
        "Glioma",
        "Brain tumor (Astrocytoma Ganglioglioma)",
        "meningioma",
        "small meningioma",
        "pituitary tumor",
        "Stroke(infarct)",
    ];
    let mut number = 46110917;
    for folder in folders {
        for _ in 0..per_class {
            w.write_image(&format!("NINS_Dataset/NINS_Dataset/{folder}/{number}.jpg"), folder, 20, 20)?;
            w.count(spec, folder);
            number += 16;
        }
    }
    // A probable duplicate, `<n>_1.jpg`, in Normal.
    w.write_image(&format!("NINS_Dataset/NINS_Dataset/Normal/{}_1.jpg", 46110917), "Normal", 20, 20)?;
    w.count(spec, "Normal");
    Ok(())
}
