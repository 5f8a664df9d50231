#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `cargo xtask rank` end to end on a synthetic image folder with three tiny timm backbones (the
//! zoo's fixture checkpoints, described by a registry the test writes): the table's ranks and
//! consensus follow from its values, the features are the folder's images with its labels, a
//! rerun reuses them, and --finetune-top tunes only the shortlist.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{Rng, SeedableRng};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/zoo/tests/fixtures");

/// (name, architecture table, feature dim, head)
const MODELS: [(&str, &str, usize, &str); 3] = [
    ("resnet_basic_min", "family = \"resnet\"\nblock = \"basic\"\nlayers = [1, 1, 1, 1]\nchannels = [64, 8, 16, 32]", 32, "fc"),
    ("densenet_min", "family = \"densenet\"\ngrowth_rate = 2\nblock_config = [2, 1, 1, 1]", 0, "classifier"),
    ("vit_min", "family = \"vit\"\nimg_size = 64\npatch_size = 16\nembed_dim = 24\ndepth = 2\nnum_heads = 3", 24, "head"),
];

/// A registry of the three fixtures (DIR/models) and their checkpoints (DIR/weights).
fn registry(dir: &Path) {
    let (models, weights) = (dir.join("models"), dir.join("weights"));
    std::fs::create_dir_all(&models).unwrap();
    std::fs::create_dir_all(&weights).unwrap();
    for (name, architecture, dim, head) in MODELS {
        // The DenseNet fixture's width: 2 * growth (stem) + 2 per dense layer, halved by each
        // transition: ((4 + 4) / 2 + 2) / 2 + 2 = 5, then (5 / 2 + 2) = 4 ... as timm computes it.
        let dim = if dim == 0 { densenet_min_features() } else { dim };
        let toml = format!(
            "name = \"{name}\"\npaper_name = \"{name}\"\nhub = \"test/{name}\"\nfeature_dim = {dim}\nhead = \"{head}\"\nnum_classes = 10\n\n[architecture]\n{architecture}\n\n\
             [preprocessing]\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\nresize = 72\ncrop = 64\ninterpolation = \"bilinear\"\n"
        );
        std::fs::write(models.join(format!("{name}.toml")), toml).unwrap();
        std::fs::copy(Path::new(FIXTURES).join(format!("{name}.safetensors")), weights.join(format!("{name}.safetensors"))).unwrap();
    }
}

/// timm's DenseNet feature count for growth 2, blocks (2, 1, 1, 1): stem 2 * growth = 4; a block
/// adds growth per layer; each transition halves (floor).
fn densenet_min_features() -> usize {
    let (growth, blocks) = (2, [2, 1, 1, 1]);
    let mut features = 2 * growth;
    for (i, layers) in blocks.iter().enumerate() {
        features += layers * growth;
        if i + 1 < blocks.len() {
            features /= 2;
        }
    }
    features
}

/// Two classes: a bright centre on a dark ground (lesion), the reverse (clear); noise everywhere.
fn image_folder(dir: &Path, per_class: usize) -> PathBuf {
    let root = dir.join("my images");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for (label, class) in ["clear", "lesion"].iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..per_class {
            let image = image::RgbImage::from_fn(48, 40, |x, y| {
                let centre = (14..34).contains(&x) && (10..30).contains(&y);
                let base: i32 = if centre == (label == 1) { 190 } else { 60 };
                image::Rgb([0, 1, 2].map(|_| (base + rng.random_range(-40..40)).clamp(0, 255) as u8))
            });
            image.save(root.join(class).join(format!("{i:02}.png"))).unwrap();
        }
    }
    root
}

/// `xtask rank` on `images` with the registry `registry` wrote in `dir`, at 72/64 px, trusting
/// `results` (the paper's Table 2 where None: run in `dir`, which has no ./results), and `extra`
/// arguments, succeeding or not.
fn rank_output(dir: &Path, images: &Path, out: &Path, results: Option<&Path>, extra: &[&str]) -> Output {
    let results: Vec<&OsStr> = results.map(|r| vec!["--results".as_ref(), r.as_os_str()]).unwrap_or_default();
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(dir)
        .arg("rank")
        .args(["--images".as_ref(), images.as_os_str(), "--out".as_ref(), out.as_os_str()])
        .args(results)
        .args(["--models".as_ref(), dir.join("models").as_os_str(), "--weights".as_ref(), dir.join("weights").as_os_str()])
        .args(["--resize", "72", "--crop", "64"])
        .args(extra)
        .output()
        .unwrap()
}

/// [`rank_output`], which must succeed.
fn rank(dir: &Path, images: &Path, out: &Path, results: Option<&Path>, extra: &[&str]) -> Output {
    let output = rank_output(dir, images, out, results, extra);
    assert!(output.status.success(), "{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    output
}

/// The files of `dir` named `<name>-<16 hex digits of the weights' checksum>.<extension>`.
fn keyed(dir: &Path, name: &str, extension: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let file = p.file_name().unwrap().to_string_lossy();
            let Some(rest) = file.strip_prefix(&format!("{name}-")).and_then(|r| r.strip_suffix(&format!(".{extension}"))) else {
                return false;
            };
            rest.len() == 16 && rest.chars().all(|c| c.is_ascii_hexdigit())
        })
        .collect();
    found.sort();
    found
}

fn read_csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    csv::Reader::from_path(path).unwrap().deserialize().map(|r| r.unwrap()).collect()
}

#[test]
fn rank_scores_every_candidate_caches_them_and_tunes_only_the_shortlist() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let images = image_folder(dir.path(), 20);
    let out = dir.path().join("ranked");
    let first = String::from_utf8(rank(dir.path(), &images, &out, None, &[]).stdout).unwrap();
    let rows = read_csv(&out.join("ranking.csv"));
    assert_eq!(rows.len(), 3);
    // Ranks follow the values (1 = highest, ties averaged) and the consensus is their mean;
    // rows are in consensus order.
    let metrics = ["h_score", "nce", "leep", "n_leep", "logme", "reg_h_score", "gbc"];
    let value = |row: &BTreeMap<String, String>, column: &str| row[column].parse::<f64>().unwrap();
    for metric in metrics {
        for a in &rows {
            let higher = rows.iter().filter(|b| value(b, metric) > value(a, metric)).count() as f64;
            let equal = rows.iter().filter(|b| value(b, metric) == value(a, metric)).count() as f64;
            assert_eq!(value(a, &format!("{metric}_rank")), higher + (equal + 1.0) / 2.0, "{metric}: {a:?}");
        }
    }
    for row in &rows {
        let mean = metrics.iter().map(|m| value(row, &format!("{m}_rank"))).sum::<f64>() / 7.0;
        assert!((value(row, "consensus") - mean).abs() < 1e-12);
    }
    assert!(rows.windows(2).all(|w| value(&w[0], "consensus") <= value(&w[1], "consensus")));
    assert_eq!(rows.iter().map(|r| r["test_balanced_accuracy"].as_str()).collect::<Vec<_>>(), ["", "", ""]);
    assert!(first.contains("from the paper (Chaves et al. 2023"), "{first}");
    for file in ["ranking.md", "ranking.svg", "ranking.png"] {
        assert!(out.join(file).exists(), "{file}");
    }

    // The features are the folder's 40 images with labels in class-folder order; the source
    // probabilities are the fixtures' 10-class heads.
    let features_dir = std::fs::read_dir(out.join("features")).unwrap().next().unwrap().unwrap().path();
    let vit_files = keyed(&features_dir, "vit_min", "safetensors");
    assert_eq!(vit_files.len(), 1);
    let bytes = std::fs::read(&vit_files[0]).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("features").unwrap().shape(), [40, 24]);
    assert_eq!(file.tensor("probs").unwrap().shape(), [40, 10]);
    let labels: Vec<i64> =
        file.tensor("labels").unwrap().data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(labels, [vec![0; 20], vec![1; 20]].concat());

    // A rerun extracts nothing again.
    let modified = std::fs::metadata(&vit_files[0]).unwrap().modified().unwrap();
    rank(dir.path(), &images, &out, None, &[]);
    assert_eq!(std::fs::metadata(&vit_files[0]).unwrap().modified().unwrap(), modified);
    // Other weights under the same name are another backbone: extracted and scored anew, the
    // first result kept under its own weights' key.
    let weights = dir.path().join("weights/vit_min.safetensors");
    let original = std::fs::read(&weights).unwrap();
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let bias = tensors["head.bias"].clone();
    tensors.insert("head.bias".into(), (bias + 1.0).unwrap());
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let swapped = read_csv(&{
        rank(dir.path(), &images, &out, None, &[]);
        out.join("ranking.csv")
    });
    assert_eq!(keyed(&features_dir, "vit_min", "safetensors").len(), 2);
    let leep = |rows: &[BTreeMap<String, String>]| rows.iter().find(|r| r["backbone"] == "vit_min").unwrap()["leep"].clone();
    assert_ne!(leep(&swapped), leep(&rows), "the swapped weights were scored, not the cached result");
    std::fs::write(&weights, original).unwrap();

    // The same files relabelled (a CSV of labels corrected) are scored anew: their cached scores,
    // keyed by the files alone, were taken.
    let labels_csv = dir.path().join("labels.csv");
    let listing = |relabelled: usize| -> String {
        let mut text = String::from("path,label\n");
        for (label, class) in ["clear", "lesion"].iter().enumerate() {
            for i in 0..20 {
                let label = if i < relabelled { 1 - label } else { label };
                text.push_str(&format!("my images/{class}/{i:02}.png,{}\n", ["clear", "lesion"][label]));
            }
        }
        text
    };
    let (csv_out, fresh_out) = (dir.path().join("from-csv"), dir.path().join("fresh"));
    std::fs::write(&labels_csv, listing(0)).unwrap();
    rank(dir.path(), &labels_csv, &csv_out, None, &[]);
    let as_labelled = read_csv(&csv_out.join("ranking.csv"));
    std::fs::write(&labels_csv, listing(6)).unwrap();
    rank(dir.path(), &labels_csv, &csv_out, None, &[]);
    rank(dir.path(), &labels_csv, &fresh_out, None, &[]);
    let (relabelled, fresh) = (read_csv(&csv_out.join("ranking.csv")), read_csv(&fresh_out.join("ranking.csv")));
    assert_ne!(leep(&relabelled), leep(&as_labelled), "the relabelled images were scored, not the cached result");
    let scores = |rows: &[BTreeMap<String, String>]| {
        rows.iter().map(|r| (r["backbone"].clone(), r["leep"].clone(), r["logme"].clone())).collect::<Vec<_>>()
    };
    assert_eq!(scores(&relabelled), scores(&fresh));

    // Images edited in place at the same size (uncompressed BMPs) are scored anew too: keyed by
    // paths and sizes, the scores of the old pixels were taken.
    let bmps = dir.path().join("bmp images");
    for class in ["clear", "lesion"] {
        std::fs::create_dir_all(bmps.join(class)).unwrap();
        for i in 0..20 {
            let image = image::open(images.join(class).join(format!("{i:02}.png"))).unwrap();
            image.save(bmps.join(class).join(format!("{i:02}.bmp"))).unwrap();
        }
    }
    let (bmp_out, bmp_fresh) = (dir.path().join("bmp-ranked"), dir.path().join("bmp-fresh"));
    rank(dir.path(), &bmps, &bmp_out, None, &[]);
    let before = read_csv(&bmp_out.join("ranking.csv"));
    for i in 0..10 {
        let path = bmps.join("clear").join(format!("{i:02}.bmp"));
        let (length, mut image) = (std::fs::metadata(&path).unwrap().len(), image::open(&path).unwrap().to_rgb8());
        image::imageops::invert(&mut image);
        image.save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), length, "the same size");
    }
    rank(dir.path(), &bmps, &bmp_out, None, &[]);
    rank(dir.path(), &bmps, &bmp_fresh, None, &[]);
    let (edited, fresh) = (read_csv(&bmp_out.join("ranking.csv")), read_csv(&bmp_fresh.join("ranking.csv")));
    assert_ne!(scores(&edited), scores(&before), "the edited images were scored, not the cached result");
    assert_eq!(scores(&edited), scores(&fresh));

    // The shortlist: only the consensus winner is tuned (on a 70/10/20 split, scored on its
    // train part), and the saving is stated.
    let tuned_out = dir.path().join("tuned");
    let tuned = rank(dir.path(), &images, &tuned_out, None, &["--finetune-top", "1", "--trials", "2", "--epochs", "2", "--batch", "8"]);
    let tuned = String::from_utf8(tuned.stdout).unwrap();
    let rows = read_csv(&tuned_out.join("ranking.csv"));
    let accuracy: f64 = rows[0]["test_balanced_accuracy"].parse().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    assert_eq!(rows[1]["test_balanced_accuracy"], "");
    let runs: Vec<String> =
        std::fs::read_dir(tuned_out.join("runs")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].starts_with(&format!("{}-", rows[0]["backbone"])), "{runs:?}");
    assert!(
        tuned.contains("Fine-tuned the top 1 of 3 candidates (2 Halton points x 2 epochs each")
            && tuned.contains("4 of 12 epochs, 67% of tuning them all saved"),
        "{tuned}"
    );
    let tuned_features = std::fs::read_dir(tuned_out.join("features")).unwrap().next().unwrap().unwrap().path();
    let bytes = std::fs::read(&keyed(&tuned_features, "vit_min", "safetensors")[0]).unwrap();
    assert_eq!(safetensors::SafeTensors::deserialize(&bytes).unwrap().tensor("features").unwrap().shape(), [28, 24], "70% of 40");

    // Class-weighted, then class-balanced draws: each another search beside those before (never
    // their runs answered from the cache), each run recording its setting, and ranking.md saying
    // so (and nothing of the other).
    let (weighed, drawn) = ("Each image weighed in the loss by its class", "Each epoch's train images drawn class-balanced");
    assert!(!tuned.contains(weighed) && !tuned.contains(drawn), "{tuned}");
    for (option, setting, (says, not), recorded) in [
        ("--class-weights", "class_weights", (weighed, drawn), ["balanced", "none"].as_slice()),
        ("--sampler", "sampler", (drawn, weighed), ["balanced", "shuffle", "shuffle"].as_slice()),
    ] {
        let output = rank(
            dir.path(),
            &images,
            &tuned_out,
            None,
            &["--finetune-top", "1", "--trials", "2", "--epochs", "2", "--batch", "8", option, "balanced"],
        );
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.contains(&format!("{says} ({option} balanced")) && !text.contains(not), "{text}");
        let mut values: Vec<String> = std::fs::read_dir(tuned_out.join("runs"))
            .unwrap()
            .map(|run| {
                let record = std::fs::read(run.unwrap().path().join("trial-000").join("run-settings.json")).unwrap();
                serde_json::from_slice::<serde_json::Value>(&record).unwrap()[setting].as_str().unwrap().to_string()
            })
            .collect();
        values.sort();
        assert_eq!(values, recorded, "{option}");
    }
}

#[test]
fn the_trust_statement_reads_a_study_s_table2_when_there_is_one() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let images = image_folder(dir.path(), 6);
    let study = dir.path().join("study");
    std::fs::create_dir_all(&study).unwrap();
    std::fs::write(
        study.join("table2.csv"),
        "task,setting,metric,n,tau_b,p_value,weighted_tau\nskin,id,logme,10,0.5,0.04,0.6\nbrain,id,logme,10,0.1,0.7,0.2\nskin,ood,logme,10,-0.2,0.4,\n",
    )
    .unwrap();
    let output = rank(dir.path(), &images, &dir.path().join("out"), Some(&study), &["--backbones", "resnet_basic_min,vit_min"]);
    let text = String::from_utf8(output.stdout).unwrap();
    // A table2.csv from before the interval columns still reads.
    assert!(text.contains(&format!("from the study in {}", study.display())), "{text}");
    assert!(text.contains("| logme | 0.30 | -0.20 |"), "mean of 0.5 and 0.1:\n{text}");
    let ranking = read_csv(&dir.path().join("out/ranking.csv"));
    assert_eq!(ranking.len(), 2);
    // The newer scores rank too, PACTran's bounds lowest first; the consensus is the paper's seven.
    let bound: Vec<f64> = ranking.iter().map(|r| r["pactran_gauss"].parse().unwrap()).collect();
    let bound_rank: Vec<f64> = ranking.iter().map(|r| r["pactran_gauss_rank"].parse().unwrap()).collect();
    assert_eq!(bound_rank[0] < bound_rank[1], bound[0] < bound[1], "{ranking:?}");
    assert!(text.contains("pactran_gauss † ↓") && text.contains("mean rank over the paper's seven scores"), "{text}");

    // The current table2.csv; every score in the consensus; two bootstrap resamples of the images.
    std::fs::write(
        study.join("table2.csv"),
        "task,setting,metric,scope,n,tau_b,p_value,p_permutation,ci_low,ci_high,weighted_tau\nskin,id,sfda,beyond,10,0.4,0.1,0.1,0.1,0.7,0.5\n",
    )
    .unwrap();
    let output = rank(
        dir.path(),
        &images,
        &dir.path().join("out"),
        Some(&study),
        &["--backbones", "resnet_basic_min,vit_min", "--consensus", "all", "--bootstrap", "2"],
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("| sfda | 0.40 | – |") && text.contains("mean rank over every score"), "{text}");
    let shares =
        text.split("How often each candidate comes first when the images are resampled").nth(1).unwrap_or_else(|| panic!("{text}"));
    // Each score's shares over the two candidates add to at least 100% (ties count for both).
    let rows: Vec<Vec<f64>> = shares
        .lines()
        .filter(|l| l.starts_with("| resnet_basic_min") || l.starts_with("| vit_min"))
        .map(|l| l.split('|').skip(2).filter_map(|c| c.trim().strip_suffix('%')).map(|c| c.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{shares}");
    for column in 0..rows[0].len() {
        assert!(rows[0][column] + rows[1][column] >= 100.0, "{shares}");
    }

    // Without --results, ./results is the study where it holds a table2.csv.
    std::fs::rename(&study, dir.path().join("results")).unwrap();
    let output = rank(dir.path(), &images, &dir.path().join("out"), None, &["--backbones", "resnet_basic_min,vit_min"]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("from the study in results") && text.contains("| sfda | 0.40 | – |"), "{text}");
    // A --results folder without one (a typo) is refused before any image is read; it used
    // to fall back to the paper's numbers after the extraction.
    let elsewhere = dir.path().join("elsewhere");
    let output = rank_output(dir.path(), &images, &elsewhere, Some(&study), &["--backbones", "resnet_basic_min,vit_min"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains(&format!("--results {}: no table2.csv there", study.display())), "{stderr}");
    assert!(!elsewhere.exists(), "rank went on to extract");
}

#[test]
fn a_truncated_image_in_the_folder_stops_rank_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let images = image_folder(dir.path(), 4);
    // A partial download: the first half of a JPEG.
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(48, 40, image::Rgb([120, 60, 30]))
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
        .unwrap();
    std::fs::write(images.join("lesion/partial.jpg"), &bytes[..bytes.len() / 2]).unwrap();
    let output = rank_output(dir.path(), &images, &dir.path().join("out"), None, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("partial.jpg") && stderr.contains("image file is truncated"), "{stderr}");
}

/// A metadata CSV as published (HAM10000's: lesion_id,image_id,dx, image ids without an
/// extension, the images in a folder of their own) is read as it is with --csv-columns and
/// --images-root, and --finetune-top's split keeps each lesion in one part (finetune_split.csv).
#[test]
fn a_published_metadata_csv_is_ranked_with_its_groups_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let folder = image_folder(dir.path(), 12);
    let images = dir.path().join("HAM10000_images");
    std::fs::create_dir_all(&images).unwrap();
    let mut csv = String::from("lesion_id,image_id,dx\n");
    for (class, dx) in [("clear", "nv"), ("lesion", "mel")] {
        for i in 0..12 {
            let id = format!("ISIC_{dx}{i:02}");
            std::fs::copy(folder.join(class).join(format!("{i:02}.png")), images.join(format!("{id}.png"))).unwrap();
            // Three images per lesion.
            csv.push_str(&format!("HAM_{dx}{},{id},{dx}\n", i / 3));
        }
    }
    let metadata = dir.path().join("metadata").join("HAM10000_metadata.csv");
    std::fs::create_dir_all(metadata.parent().unwrap()).unwrap();
    std::fs::write(&metadata, &csv).unwrap();
    let out = dir.path().join("out");
    let columns = ["--csv-columns", "image_id,dx,lesion_id", "--images-root", images.to_str().unwrap()];
    let tuning = ["--backbones", "resnet_basic_min,vit_min", "--finetune-top", "1", "--trials", "1", "--epochs", "1", "--batch", "8"];
    // Three epochs: the tuned model's test AUROC then lies strictly between 0 and 1 (checked below).
    let longer = ["--backbones", "resnet_basic_min,vit_min", "--finetune-top", "1", "--trials", "1", "--epochs", "3", "--batch", "8"];
    let output = rank(dir.path(), &metadata, &out, None, &[&columns[..], &longer, &["--bootstrap", "3"]].concat());
    assert!(String::from_utf8_lossy(&output.stderr).contains("24 images, {\"mel\": 12, \"nv\": 12}"));
    let split = read_csv(&out.join("finetune_split.csv"));
    assert_eq!(split.len(), 24);
    // Each label is the image's class by name, as the metadata's dx column gives it.
    let dx: BTreeMap<String, String> =
        csv.lines().skip(1).map(|line| line.split(',').collect::<Vec<_>>()).map(|f| (format!("{}.png", f[1]), f[2].to_string())).collect();
    assert!(split.iter().all(|row| dx.get(&row["path"]) == Some(&row["label"])), "{split:?} {dx:?}");
    let mut parts: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for row in &split {
        assert!(row["path"].ends_with(".png") && images.join(&row["path"]).is_file(), "{row:?}");
        parts.entry(row["group"].as_str()).or_default().insert(row["split"].as_str());
    }
    assert_eq!(parts.len(), 8, "{parts:?}");
    assert!(parts.values().all(|p| p.len() == 1), "a lesion in two parts: {parts:?}");
    // One lesion of each class in the test part: its AUROC's interval, drawn a lesion at a time,
    // is that AUROC alone (every resample is the test part itself), where drawn image by image it
    // would spread.
    let test_lesions: std::collections::BTreeSet<&str> =
        split.iter().filter(|r| r["split"] == "test").map(|r| r["group"].as_str()).collect();
    assert_eq!(test_lesions.len(), 2, "{test_lesions:?}");
    let ranking_md = std::fs::read_to_string(out.join("ranking.md")).unwrap();
    let tuned = ranking_md.lines().skip_while(|l| !l.starts_with("| backbone | mel | nv |")).nth(2).unwrap();
    let cells: Vec<&str> = tuned.split(" | ").collect();
    let auroc = cells[cells.len() - 2];
    assert!(auroc != "0.000" && auroc != "1.000", "drawn image by image, it would not spread either: {tuned}");
    assert_eq!(cells[cells.len() - 1], format!("[{auroc}, {auroc}] |"), "{tuned}");
    // The bootstrap resamples the scored (train) part's lesions, not its images.
    let train_lesions = parts.values().filter(|p| p.contains("train")).count();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains(&format!("when the {train_lesions} groups are resampled, each with all its images (3 stratified")), "{text}");
    // That split (path,label,group,split, as a study's manifests) read back: its group column
    // is taken unasked, and the bootstrap draws its 8 lesions.
    let again = dir.path().join("again");
    let output = rank(
        dir.path(),
        &out.join("finetune_split.csv"),
        &again,
        None,
        &["--images-root", images.to_str().unwrap(), "--backbones", "vit_min", "--bootstrap", "2"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("finetune_split.csv: 8 groups by its \"group\" column"), "{stderr}");
    assert!(stderr.contains("24 images, {\"mel\": 12, \"nv\": 12}"), "the classes by name: {stderr}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("when the 8 groups are resampled"), "{text}");
    // The same images as a folder of patients' subfolders (CLASS/<lesion>/<image>), grouped by
    // --group-by-subfolder: the split keeps each lesion whole, and the bootstrap draws lesions.
    let nested = dir.path().join("nested");
    for (class, dx) in [("clear", "nv"), ("lesion", "mel")] {
        for i in 0..12 {
            let target = nested.join(class).join(format!("HAM_{dx}{}", i / 3)).join(format!("{i:02}.png"));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(folder.join(class).join(format!("{i:02}.png")), target).unwrap();
        }
    }
    let nested_out = dir.path().join("nested-out");
    let output = rank(dir.path(), &nested, &nested_out, None, &[&["--group-by-subfolder", "--bootstrap", "2"][..], &tuning].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nested: 8 groups by the subfolders of its class folders"), "{stderr}");
    let mut nested_parts: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for row in read_csv(&nested_out.join("finetune_split.csv")) {
        assert_eq!(row["group"], row["path"].split('/').nth(1).unwrap(), "{row:?}");
        nested_parts.entry(row["group"].clone()).or_default().insert(row["split"].clone());
    }
    assert!(nested_parts.len() == 8 && nested_parts.values().all(|p| p.len() == 1), "{nested_parts:?}");
    let train_lesions = nested_parts.values().filter(|p| p.contains("train")).count();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains(&format!("when the {train_lesions} groups are resampled")), "{text}");
    // Two lesions of a class cannot fill three parts: said in lesions, not images.
    let two_lesions = metadata.with_file_name("two_lesions.csv");
    std::fs::write(&two_lesions, csv.replace("HAM_mel2", "HAM_mel0").replace("HAM_mel3", "HAM_mel1")).unwrap();
    let output = rank_output(dir.path(), &two_lesions, &dir.path().join("refused"), None, &[&columns[..], &tuning].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("class 'mel' has 2 group(s)") && stderr.contains("at least 3 groups"), "{stderr}");
    // Three lesions, one of ten images and two of one: sized in images the large one would fill
    // train past its share and leave val none; each part gets one lesion instead.
    let mut unequal = String::from("lesion_id,image_id,dx\n");
    for line in csv.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let index: usize = fields[1][fields[1].len() - 2..].parse().unwrap();
        let lesion = if fields[2] == "mel" { ["HAM_mel_big", "HAM_mel_a", "HAM_mel_b"][index.saturating_sub(9)] } else { fields[0] };
        unequal.push_str(&format!("{lesion},{},{}\n", fields[1], fields[2]));
    }
    let unequal_csv = metadata.with_file_name("unequal.csv");
    std::fs::write(&unequal_csv, unequal).unwrap();
    let unequal_out = dir.path().join("unequal");
    rank(dir.path(), &unequal_csv, &unequal_out, None, &[&columns[..], &tuning].concat());
    let split = read_csv(&unequal_out.join("finetune_split.csv"));
    let lesions = |part: &str| -> std::collections::BTreeSet<String> {
        split.iter().filter(|r| r["split"] == part && r["group"].starts_with("HAM_mel")).map(|r| r["group"].clone()).collect()
    };
    assert!(["train", "val", "test"].iter().all(|part| lesions(part).len() == 1), "{split:?}");
    // Given with a folder of class subfolders, which they do not read: refused.
    let output = rank_output(dir.path(), &folder, &dir.path().join("refused"), None, &columns);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--csv-columns and --images-root read a CSV"), "{stderr}");
    // Without --csv-columns, the header is named with the option that reads it.
    let output = rank_output(dir.path(), &metadata, &dir.path().join("refused"), None, &["--backbones", "vit_min"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("expected columns path and label (or name yours with --csv-columns"), "{stderr}");
}

/// A candidate's entry edited after its features were cached (its std corrected, another
/// embedding): extracted again, where the cached features were reused; unedited, not.
#[test]
fn an_entry_edited_since_its_features_were_cached_is_extracted_again() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let images = image_folder(dir.path(), 4);
    let out = dir.path().join("out");
    let extract = &["--backbones", "resnet_basic_min,vit_min"];
    rank(dir.path(), &images, &out, None, extract);
    let features_dir = std::fs::read_dir(out.join("features")).unwrap().next().unwrap().unwrap().path();
    let file = keyed(&features_dir, "resnet_basic_min", "safetensors").remove(0);
    let before = std::fs::read(&file).unwrap();
    let output = rank(dir.path(), &images, &out, None, extract);
    assert!(!String::from_utf8_lossy(&output.stderr).contains("extracting again"), "{}", String::from_utf8_lossy(&output.stderr));
    let toml = dir.path().join("models/resnet_basic_min.toml");
    std::fs::write(&toml, std::fs::read_to_string(&toml).unwrap().replace("std = [0.229, 0.224, 0.225]", "std = [0.5, 0.5, 0.5]")).unwrap();
    let output = rank(dir.path(), &images, &out, None, extract);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("resnet_basic_min: its entry's normalisation or architecture changed") && !stderr.contains("vit_min: its"),
        "{stderr}"
    );
    assert_ne!(std::fs::read(&file).unwrap(), before, "the features of the old normalisation were kept");
}

/// Radiographs exported from DICOM: 12-bit data in 16-bit PNGs reach the backbones near black
/// (their high byte, 0..15 of 255). The ranking still runs, and says so on stderr and in
/// ranking.md, counting them; the 8-bit and full-range 16-bit images are not counted. Ranked
/// through a window on their stored values (`--window 2048,4096`), none is near black.
#[test]
fn twelve_bit_radiographs_are_ranked_with_a_near_black_note() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let images = image_folder(dir.path(), 4);
    for (class, name, top) in [("clear", "dicom-a.png", 4095u32), ("lesion", "dicom-b.png", 3000), ("lesion", "full.png", 65535)] {
        let image =
            image::ImageBuffer::<image::Luma<u16>, _>::from_fn(48, 40, |x, y| image::Luma([((x * 40 + y) * top / (48 * 40)) as u16]));
        image.save(images.join(class).join(name)).unwrap();
    }
    let out = dir.path().join("out");
    let output = rank(dir.path(), &images, &out, None, &["--backbones", "resnet_basic_min"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("2 of 11 images hold 16-bit samples all under 4096"), "{stderr}");
    let ranking = std::fs::read_to_string(out.join("ranking.md")).unwrap();
    assert!(ranking.contains("Near-black images: 2 of the 11 scored images"), "{ranking}");
    assert!(ranking.contains("clear/dicom-a.png"), "{ranking}");
    assert!(ranking.contains("--window 2048,4096"), "{ranking}");

    let windowed = dir.path().join("windowed");
    let output = rank(dir.path(), &images, &windowed, None, &["--backbones", "resnet_basic_min", "--window", "2048,4096"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("16-bit samples"), "{stderr}");
    let ranking = std::fs::read_to_string(windowed.join("ranking.md")).unwrap();
    assert!(!ranking.contains("Near-black"), "{ranking}");
    assert!(ranking.contains("window 2048,4096 (--window)"), "{ranking}");
}

/// A folder of cine loops (each image the middle of three frames, the others its negative and
/// noise) ranked with `--dicom-frame middle` is ranked on those images: the scores of the same
/// images as PNGs; its fine-tuned model's card keeps the choice for `predict`. Without the option
/// the loops are refused, naming it.
#[test]
fn a_folder_of_cine_loops_is_ranked_on_the_frame_chosen() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let images = image_folder(dir.path(), 4);
    let loops = dir.path().join("loops");
    for class in ["clear", "lesion"] {
        for i in 0..4 {
            write_rgb_dicom_frames(&loops.join(class).join(format!("{i:02}.dcm")), &between_negative_and_noise(&images, class, i));
        }
    }
    let backbones = ["--backbones", "resnet_basic_min,vit_min"];
    rank(dir.path(), &images, &dir.path().join("pngs"), None, &backbones);
    let mut extra = backbones.to_vec();
    extra.extend(["--dicom-frame", "middle"]);
    rank(dir.path(), &loops, &dir.path().join("frames"), None, &extra);
    assert_eq!(logme_and_h_scores(&dir.path().join("frames")), logme_and_h_scores(&dir.path().join("pngs")));
    extra.extend(["--finetune-top", "1", "--trials", "1", "--epochs", "1"]);
    rank(dir.path(), &loops, &dir.path().join("frames"), None, &extra);
    let cards = std::fs::read_dir(dir.path().join("frames").join("models")).unwrap().map(|entry| entry.unwrap().path()).collect::<Vec<_>>();
    assert_eq!(cards.len(), 1, "{cards:?}");
    let card: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cards[0]).unwrap()).unwrap();
    assert_eq!(card["dicom_frame"], "middle");
    let output = rank_output(dir.path(), &loops, &dir.path().join("refused"), None, &backbones);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("holds 3 frames") && stderr.contains("--dicom-frame"), "{stderr}");
}

/// A folder of NIfTI volumes (RGB24, as written below; the data crate's tests read grayscale,
/// scaled and windowed ones against nibabel) ranked on their middle slices (`--slice middle`) is
/// ranked on those images: the scores of the same images as PNGs. Each slice an image (`--slice
/// all`), a volume gives three. Without the option the volumes are refused, naming it.
#[test]
fn a_folder_of_nifti_volumes_is_ranked_on_the_slice_chosen() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let images = image_folder(dir.path(), 4);
    let volumes = dir.path().join("volumes");
    for class in ["clear", "lesion"] {
        for i in 0..4 {
            // One volume's header says its slices are sagittal, the others' axial.
            let third_axis = if (class, i) == ("lesion", 2) { 0 } else { 2 };
            write_rgb_nifti(&volumes.join(class).join(format!("{i:02}.nii")), &between_negative_and_noise(&images, class, i), third_axis);
        }
    }
    let backbones = ["--backbones", "resnet_basic_min,vit_min"];
    rank(dir.path(), &images, &dir.path().join("pngs"), None, &backbones);
    let output = rank(dir.path(), &volumes, &dir.path().join("middle"), None, &[&backbones[..], &["--slice", "middle"]].concat());
    assert_eq!(logme_and_h_scores(&dir.path().join("middle")), logme_and_h_scores(&dir.path().join("pngs")));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the NIfTI volumes are sliced in different planes (7 axial, 1 sagittal)")
            && stderr.contains("Not axial: lesion/02.nii (sagittal)"),
        "{stderr}"
    );
    // Fine-tuned on those slices, the model's card keeps the choice, and predict reads new volumes
    // so: a row a volume, and the saliency page shows each.
    let tuned = dir.path().join("tuned");
    rank(
        dir.path(),
        &volumes,
        &tuned,
        None,
        &[
            "--backbones",
            "resnet_basic_min",
            "--slice",
            "middle",
            "--window",
            "-600,1500",
            "--finetune-top",
            "1",
            "--trials",
            "1",
            "--epochs",
            "1",
        ],
    );
    let cards = std::fs::read_dir(tuned.join("models")).unwrap().map(|entry| entry.unwrap().path()).collect::<Vec<_>>();
    let card: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cards[0]).unwrap()).unwrap();
    assert_eq!((&card["dicom_frame"], &card["window"]), (&"middle".into(), &"-600,1500".into()));
    // The images were decoded through the window: the caches are keyed by it.
    let caches: Vec<String> =
        std::fs::read_dir(tuned.join("cache")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(caches.iter().filter(|name| name.ends_with(".rgb8")).all(|name| name.contains("-w-600,1500-")), "{caches:?}");
    let predictions = dir.path().join("volume predictions.csv");
    let saliency = dir.path().join("saliency");
    let output = predict(dir.path(), &tuned, &volumes, &["--out", predictions.to_str().unwrap(), "--saliency", saliency.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let rows = read_csv(&predictions);
    assert!(rows.len() == 8 && rows.iter().all(|row| row["path"].ends_with(".nii")), "{rows:?}");
    assert!(saliency.join("index.html").is_file() && saliency.join("lesion/03.nii.png").is_file());
    let predict_caches: Vec<String> = std::fs::read_dir(tuned.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("predict") && name.ends_with(".rgb8"))
        .collect();
    assert!(!predict_caches.is_empty() && predict_caches.iter().all(|name| name.contains("-w-600,1500-")), "{predict_caches:?}");
    // Another window and orientation than rank's are said.
    let extra = ["--out", predictions.to_str().unwrap(), "--window", "40,80+80,200+600,2800", "--reorient", "canonical"];
    let output = predict(dir.path(), &tuned, &volumes, &extra);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success()
            && stderr.contains("--window 40,80+80,200+600,2800: the model was fine-tuned on rank's images read through -600,1500")
            && stderr.contains("--reorient canonical: the model was fine-tuned on rank's volumes read stored"),
        "{stderr}"
    );
    let output = rank(dir.path(), &volumes, &dir.path().join("all"), None, &["--backbones", "resnet_basic_min", "--slice", "all"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("8 files of several frames give 24 frames"), "{stderr}");
    // Reoriented (RAS+), every volume's slices are axial: the sagittal one's are its rows (as
    // many as an image's height), and no planes differ.
    let reoriented = dir.path().join("reoriented");
    let output =
        rank(dir.path(), &volumes, &reoriented, None, &["--backbones", "resnet_basic_min", "--slice", "all", "--reorient", "canonical"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let rows = between_negative_and_noise(&images, "lesion", 2)[0].height();
    assert!(
        stderr.contains(&format!("8 files of several frames give {} frames", 21 + rows)) && !stderr.contains("different planes"),
        "{stderr}"
    );
    let caches: Vec<String> =
        std::fs::read_dir(reoriented.join("cache")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(caches.iter().filter(|name| name.ends_with(".rgb8")).all(|name| name.contains("-ocanonical-")), "{caches:?}");
    // ranking.md says how the images were read; read as the files give them, it says nothing.
    let read = std::fs::read_to_string(reoriented.join("ranking.md")).unwrap();
    assert!(
        read.contains("Images read with frame or slice all of each file of several (--slice); NIfTI volumes reoriented canonical"),
        "{read}"
    );
    assert!(!std::fs::read_to_string(dir.path().join("pngs").join("ranking.md")).unwrap().contains("Images read with"));
    // 2.5-D reads gray frames: these RGB volumes are refused, each named, with the fix.
    let extra = ["--backbones", "resnet_basic_min", "--slice", "middle", "--adjacent-slices"];
    let output = rank_output(dir.path(), &volumes, &dir.path().join("adjacent"), None, &extra);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("lesion/02.nii")
            && stderr.contains("read it without --adjacent-slices")
            && !stderr.contains("hold one frame"),
        "{stderr}"
    );
    // Files of one frame have no neighbours: said before anything is read.
    let output = rank_output(dir.path(), &images, &dir.path().join("adjacent pngs"), None, &extra);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--adjacent-slices: 8 of 8 files hold one frame and are not slices of a DICOM series"), "{stderr}");
    // A DICOM series stored a file a slice (a class's folder): its slices have neighbours; a
    // slice alone in its series, or without one, has none.
    let series = dir.path().join("series");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/data/tests/fixtures/series/scan");
    for (class, files) in [
        ("clear", &["IM000001", "IM000002", "IM000003", "IM000004", "IM000005", "scout.dcm"][..]),
        ("lesion", &["mr_a.dcm", "mr_b.dcm", "mr_c.dcm", "no_series.dcm"][..]),
    ] {
        std::fs::create_dir_all(series.join(class)).unwrap();
        for file in files {
            std::fs::copy(fixtures.join(file), series.join(class).join(file)).unwrap();
        }
    }
    let output = rank(dir.path(), &series, &dir.path().join("adjacent series"), None, &extra);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--adjacent-slices: 2 of 4 files hold one frame and are not slices")
            && stderr.contains("clear/scout.dcm")
            && stderr.contains("lesion/no_series.dcm"),
        "{stderr}"
    );
    // Each series' slices one group, the others their own.
    assert!(
        stderr.contains("4 groups by the DICOM series of its files (Series Instance UID) (2 of them images without one, each a group"),
        "{stderr}"
    );
    // --slice every:2: of each series its slices 1, 3, 5 in the series' order; the lone slices
    // stay.
    let output =
        rank(dir.path(), &series, &dir.path().join("every second slice"), None, &["--backbones", "resnet_basic_min", "--slice", "every:2"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--slice every:2: 3 of 10 files left out, slices of DICOM series"), "{stderr}");
    // Predicted from all their slices, each series is one row, named by its first slice along the
    // normal (the CT's IM000004; the MR's by Instance Number, mr_b.dcm), its map on a slice of it.
    let output = predict(
        dir.path(),
        &tuned,
        &series,
        &["--slice", "all", "--out", predictions.to_str().unwrap(), "--saliency", saliency.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.contains("--slice all: 8 slices of 2 DICOM series predicted, each series a row"), "{stderr}");
    let paths: Vec<String> = read_csv(&predictions).iter().map(|row| row["path"].clone()).collect();
    assert_eq!(paths, ["clear/IM000004", "clear/scout.dcm", "lesion/mr_b.dcm", "lesion/no_series.dcm"]);
    let page = std::fs::read_to_string(saliency.join("index.html")).unwrap();
    assert!(page.contains("<td>clear/IM000004 (slice IM00000") && page.contains("<td>clear/scout.dcm</td>"), "{page}");
    // An axial slice among the sagittal series' (a localizer, say): the planes differ, said with
    // the fix for DICOM.
    std::fs::copy(fixtures.join("../stacks/loc_axial.dcm"), series.join("clear/axial.dcm")).unwrap();
    let output = rank(dir.path(), &series, &dir.path().join("planes"), None, &["--backbones", "resnet_basic_min"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the images are slices in different planes (1 axial, 5 sagittal)")
            && stderr.contains("DICOM slices are read as stored")
            && stderr.contains("Not sagittal: clear/axial.dcm (axial)"),
        "{stderr}"
    );
    // A localizer's three planes in one series (a PACS export's folder holds one): each plane a
    // stack of its own, its one slice kept by --slice middle, as the CT series' middle slice.
    for plane in ["coronal", "sagittal"] {
        std::fs::copy(fixtures.join(format!("../stacks/loc_{plane}.dcm")), series.join(format!("clear/{plane}.dcm"))).unwrap();
    }
    let output = rank(dir.path(), &series, &dir.path().join("localizer"), None, &["--backbones", "resnet_basic_min", "--slice", "middle"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The planes of the images kept: the CT series' middle slice and the localizer's three.
    assert!(
        output.status.success()
            && stderr.contains("--slice middle: 6 of 13 files left out")
            && stderr.contains("slices in different planes (1 axial, 1 coronal, 2 sagittal)")
            && stderr.contains("Not sagittal: clear/axial.dcm (axial), clear/coronal.dcm (coronal)"),
        "{stderr}"
    );
    // 2.5-D: the localizer's planes, each alone in its stack, have no neighbours, said so.
    let extra = ["--backbones", "resnet_basic_min", "--slice", "middle", "--adjacent-slices"];
    let output = rank(dir.path(), &series, &dir.path().join("localizer adjacent"), None, &extra);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--adjacent-slices: 5 of 7 files hold one frame") && stderr.contains("clear/axial.dcm, clear/coronal.dcm"),
        "{stderr}"
    );
    // --dicom-where: the MR files left out (each field's values said both ways); a class left
    // without images refused; predict keeps new images by the card's conditions, or those given.
    let output =
        rank(dir.path(), &series, &dir.path().join("not mr"), None, &["--backbones", "resnet_basic_min", "--dicom-where", "Modality!=MR"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--dicom-where Modality!=MR: 10 of 13 files kept")
            && stderr.contains(r#"Modality of the files kept: "CT" 5, "OT" 5; of those left out: "MR" 3"#)
            && stderr.contains(r#"10 images, {"clear": 9, "lesion": 1}"#)
            && String::from_utf8_lossy(&output.stdout).contains("only the DICOM files whose header meets Modality!=MR (--dicom-where)"),
        "{stderr}"
    );
    // A field the headers lack: `!=` keeps them, said as absent.
    let extra = ["--backbones", "resnet_basic_min", "--dicom-where", "SeriesDescription!=*LOCALIZER*"];
    let output = rank(dir.path(), &series, &dir.path().join("no description"), None, &extra);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SeriesDescription of the files kept: (absent) 13; of those left out: none"), "{stderr}");
    // Refused: a keyword in the wrong case; a class (clear) left without images.
    for (condition, says) in
        [("modality=mr", "is not a DICOM keyword or tag"), ("Modality=mr", "no image of class clear meets --dicom-where Modality=mr")]
    {
        let extra = ["--backbones", "resnet_basic_min", "--dicom-where", condition];
        let output = rank_output(dir.path(), &series, &dir.path().join("only mr"), None, &extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(says), "{condition}: {stderr}");
    }
    let output = predict(dir.path(), &tuned, &series, &["--out", predictions.to_str().unwrap(), "--dicom-where", "(0008,0060)=CT"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.contains("--dicom-where (0008,0060)=CT: 5 of 13 files kept"), "{stderr}");
    assert!(stderr.contains("the model was fine-tuned on rank's images kept by every image; these by (0008,0060)=CT"), "{stderr}");
    // The card's --slice middle: the CT series' one row, its middle slice along the normal.
    let paths: Vec<String> = read_csv(&predictions).iter().map(|row| row["path"].clone()).collect();
    assert_eq!(paths, ["clear/IM000005"]);
    let output = predict(dir.path(), &tuned, &series, &["--out", predictions.to_str().unwrap(), "--dicom-where", "any"]);
    assert!(output.status.success() && !String::from_utf8_lossy(&output.stderr).contains("--dicom-where"), "{output:?}");
    let output = predict(dir.path(), &tuned, &series, &["--out", predictions.to_str().unwrap(), "--dicom-where", "Modality"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--dicom-where 'Modality' is not a condition"), "{stderr}");
    let output = rank_output(dir.path(), &volumes, &dir.path().join("refused"), None, &backbones);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("holds 3 slices") && stderr.contains("--slice"), "{stderr}");
}

/// `--dicom-frame all`: each frame of a loop an image of the loop's class, the loop their group.
/// The scores are those of the same frames as PNG files, and --bootstrap's first places those of
/// the PNGs drawn a loop at a time (a CSV's group column naming each one's loop); `every:2` keeps
/// frames 1 and 3. --finetune-top splits the loops (finetune_split.csv a row a loop, each in one
/// part) and the card says all.
#[test]
fn every_frame_of_a_folder_of_cine_loops_is_ranked_with_its_loop_as_group() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let images = image_folder(dir.path(), 4);
    let (loops, pngs) = (dir.path().join("loops"), dir.path().join("frames as pngs"));
    let mut csv = String::from("path,label,group\n");
    for class in ["clear", "lesion"] {
        std::fs::create_dir_all(pngs.join(class)).unwrap();
        for i in 0..4 {
            let frames = between_negative_and_noise(&images, class, i);
            write_rgb_dicom_frames(&loops.join(class).join(format!("{i:02}.dcm")), &frames);
            for (k, frame) in frames.iter().enumerate() {
                let name = format!("{class}/{i:02}-{}.png", k + 1);
                frame.save(pngs.join(&name)).unwrap();
                csv.push_str(&format!("{name},{class},{class}/{i:02}\n"));
            }
        }
    }
    std::fs::write(pngs.join("frames.csv"), csv).unwrap();
    let ranked = |out: &Path| -> (Vec<BTreeMap<String, String>>, Vec<String>) {
        let mut rows = read_csv(&out.join("ranking.csv"));
        rows.iter_mut().for_each(|row| assert!(row.remove("extraction_seconds").is_some()));
        let text = std::fs::read_to_string(out.join("ranking.md")).unwrap();
        let firsts = text.split("How often each candidate comes first").nth(1).unwrap();
        let table = firsts.lines().take_while(|line| !line.starts_with("A tie")).filter(|line| line.starts_with("| ")).map(String::from);
        (rows, table.collect())
    };
    let extra = ["--backbones", "resnet_basic_min,vit_min", "--bootstrap", "20"];
    rank(dir.path(), &pngs.join("frames.csv"), &dir.path().join("pngs"), None, &extra);
    let (png_rows, png_firsts) = ranked(&dir.path().join("pngs"));
    let output = rank(dir.path(), &loops, &dir.path().join("all"), None, &[&extra[..], &["--dicom-frame", "all"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("8 files of several frames give 24 frames") && stderr.contains("24 images in all"), "{stderr}");
    let (rows, firsts) = ranked(&dir.path().join("all"));
    assert_eq!(rows, png_rows);
    assert!(firsts.len() == 3 && firsts == png_firsts, "{firsts:?} against {png_firsts:?}");
    // The loops' group: drawn as images, the PNGs come first in other shares.
    rank(
        dir.path(),
        &pngs.join("frames.csv"),
        &dir.path().join("ungrouped"),
        None,
        &[&extra[..], &["--csv-columns", "path,label"]].concat(),
    );
    assert_ne!(ranked(&dir.path().join("ungrouped")).1, firsts);

    let output =
        rank(dir.path(), &loops, &dir.path().join("every2"), None, &["--backbones", "resnet_basic_min", "--dicom-frame", "every:2"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("8 files of several frames give 16 frames"), "{output:?}");

    let out = dir.path().join("tuned");
    rank(
        dir.path(),
        &loops,
        &out,
        None,
        &["--backbones", "resnet_basic_min", "--dicom-frame", "all", "--finetune-top", "1", "--trials", "1", "--epochs", "1"],
    );
    let split = read_csv(&out.join("finetune_split.csv"));
    let paths: std::collections::BTreeSet<&str> = split.iter().map(|row| row["path"].as_str()).collect();
    assert!(split.len() == 8 && paths.len() == 8 && paths.iter().all(|p| p.ends_with(".dcm")), "{split:?}");
    let cards = std::fs::read_dir(out.join("models")).unwrap().map(|entry| entry.unwrap().path()).collect::<Vec<_>>();
    let card: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cards[0]).unwrap()).unwrap();
    assert_eq!(card["dicom_frame"], "all");
    // ranking.md's balanced accuracy per file of the test part: predict's on the same loops,
    // each predicted as the mean of its frames (the test rows of finetune_split.csv).
    let ranking = std::fs::read_to_string(out.join("ranking.md")).unwrap();
    let per_file = ranking.split("Per file on the test part").nth(1).unwrap_or_else(|| panic!("{ranking}"));
    let tested: Vec<&BTreeMap<String, String>> = split.iter().filter(|row| row["split"] == "test").collect();
    assert!(per_file.starts_with(&format!(" ({} files, {} images", tested.len(), 3 * tested.len())), "{per_file}");
    let line = per_file.lines().find(|line| line.starts_with("| resnet_basic_min |")).unwrap();
    let test_csv = dir.path().join("test loops.csv");
    let rows: String = tested.iter().map(|row| format!("{},{}\n", row["path"], row["label"])).collect();
    std::fs::write(&test_csv, format!("path,label\n{rows}")).unwrap();
    let predictions = dir.path().join("loop predictions.csv");
    let output = predict(
        dir.path(),
        &out,
        &test_csv,
        &["--images-root", loops.to_str().unwrap(), "--csv-columns", "path,label", "--out", predictions.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let accuracy = line.trim_end_matches(" |").rsplit("| ").next().unwrap();
    assert!(output.status.success() && stdout.contains(&format!("balanced accuracy {accuracy}")), "{line}\n{stdout}{output:?}");
    assert_eq!(read_csv(&predictions).len(), tested.len());
}

/// Options rank cannot run with are refused before the images are read or cached (the
/// extraction after takes minutes to hours), each naming the option.
#[test]
fn options_rank_cannot_run_with_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let images = image_folder(dir.path(), 4);
    let out = dir.path().join("out");
    for (options, expected) in [
        (&["--consensus", "logme,hscore"][..], "--consensus"),
        (&["--bootstrap", "0"], "--bootstrap 0"),
        (&["--dtype", "bf16"], "--dtype bf16 needs a GPU"),
        (&["--finetune-top", "0"], "--finetune-top 0"),
        (&["--finetune-top", "2", "--epochs", "0"], "--epochs 0"),
        (&["--finetune-top", "2", "--batch", "0"], "--batch 0"),
        (&["--finetune-top", "2", "--trials", "0"], "--trials 0"),
        (&["--group-by-subfolder", "0"], "0 is not in 1.."),
        (&["--group-by-subfolder"], "--group-by-subfolder 1, but no image is in a subfolder that deep"),
    ] {
        let output = rank_output(dir.path(), &images, &out, None, options);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{options:?}: {stderr}");
        assert!(!out.exists(), "{options:?}: wrote {}", out.display());
    }
    // An --out inside the image folder (whose ranking.png the next run read as a class of its
    // own) is refused, also through `..`.
    for inside in [images.join("rank"), images.join("x/../ranked")] {
        let output = rank_output(dir.path(), &images, &inside, None, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains("is inside --images"), "{}: {stderr}", inside.display());
        assert!(!images.join("rank").exists() && !images.join("ranked").exists());
    }
    // The study's results folder as --out (the ranking's features/, cache/ and runs/ among the
    // study's): refused, given as --results or found as ./results.
    let study = dir.path().join("results");
    std::fs::create_dir_all(&study).unwrap();
    std::fs::write(study.join("table2.csv"), "task,setting,metric,scope,n,tau_b,p_value,p_permutation,ci_low,ci_high,weighted_tau\n")
        .unwrap();
    for results in [Some(study.as_path()), None] {
        let output = rank_output(dir.path(), &images, &study, results, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains("is the study's results folder"), "{results:?}: {stderr}");
        assert_eq!(std::fs::read_dir(&study).unwrap().count(), 1, "{results:?}: wrote into the study");
    }
    std::fs::remove_dir_all(&study).unwrap();
    // A device this build cannot open is refused before a hub id among the candidates is
    // looked up (an unreachable hub here: asking it would retry for a minute).
    let device = if cfg!(feature = "cuda") { "gpu" } else { "cuda:0" };
    let started = std::time::Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(dir.path())
        .env("HF_HOME", dir.path().join("empty-hub"))
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .arg("rank")
        .args(["--images".as_ref(), images.as_os_str(), "--out".as_ref(), out.as_os_str()])
        .args(["--backbones", "timm/resnet18.a1_in1k", "--device", device])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains(&format!("--device {device}")), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5) && !out.exists(), "asked the hub first: {stderr}");
    // A class of two images gets none to train on from --finetune-top's 70/10/20 split (it was
    // found by the scores after the extraction); three are enough.
    for name in ["02.png", "03.png"] {
        std::fs::remove_file(images.join("lesion").join(name)).unwrap();
    }
    let output = rank_output(dir.path(), &images, &out, None, &["--finetune-top", "1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("class 'lesion' has 2 image(s)") && stderr.contains("none of in train"),
        "{stderr}"
    );
    assert!(!out.exists(), "wrote {}", out.display());
    std::fs::copy(images.join("lesion/00.png"), images.join("lesion/02.png")).unwrap();
    rank(
        dir.path(),
        &images,
        &out,
        None,
        &["--backbones", "resnet_basic_min", "--finetune-top", "1", "--trials", "1", "--epochs", "1", "--batch", "2"],
    );
}

/// A candidate whose weights cannot be had (here: its checkpoint file is missing; in use, a gated
/// repo whose terms were not accepted) leaves the others ranked: the table and ranking.csv hold
/// them, the table names it with its error, and the command fails saying so. Once mended, a rerun
/// ranks all three.
#[test]
fn a_candidate_without_weights_leaves_the_others_ranked() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let images = image_folder(dir.path(), 4);
    let out = dir.path().join("out");
    let checkpoint = dir.path().join("weights/densenet_min.safetensors");
    let kept = dir.path().join("densenet_min.safetensors");
    std::fs::rename(&checkpoint, &kept).unwrap();
    let output = rank_output(dir.path(), &images, &out, None, &[]);
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "the command succeeded:\n{stdout}");
    assert!(stderr.contains("1 of 3 candidates could not be ranked (densenet_min)"), "{stderr}");
    let not_ranked = stdout.split("Not ranked").nth(1).unwrap_or_else(|| panic!("no Not ranked section:\n{stdout}"));
    assert!(not_ranked.contains("- densenet_min: ") && not_ranked.contains("densenet_min.safetensors"), "{not_ranked}");
    let ranked: Vec<String> = read_csv(&out.join("ranking.csv")).iter().map(|row| row["backbone"].clone()).collect();
    assert_eq!(ranked.len(), 2, "{ranked:?}");
    assert!(ranked.contains(&"resnet_basic_min".to_string()) && ranked.contains(&"vit_min".to_string()), "{ranked:?}");

    std::fs::rename(&kept, &checkpoint).unwrap();
    rank(dir.path(), &images, &out, None, &[]);
    assert_eq!(read_csv(&out.join("ranking.csv")).len(), 3);
}

/// A foundation model as published: no classifier, registers, a packed SwiGLU its config does
/// not state, and its authors' embedding (Virchow's class token and patch mean): rank extracts
/// its 2 x 32 features at the folder's 64 px (its positions resampled from 28 px), scores what
/// needs no source classifier, says why LEEP and NCE are missing, and tunes it with a fresh head.
#[test]
fn a_headless_foundation_model_is_ranked_and_tuned() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let toml = "name = \"virchow2_like\"\npaper_name = \"Virchow2-like\"\nhub = \"test/virchow2_like\"\nfeature_dim = 64\nhead = \"head\"\nnum_classes = 0\n\n\
                [architecture]\nfamily = \"vit\"\nimg_size = 28\npatch_size = 7\nembed_dim = 32\ndepth = 2\nnum_heads = 4\nmlp_ratio = 5.3375\n\
                init_values = 1e-5\nreg_tokens = 4\nglobal_pool = \"none\"\ndynamic_img_size = true\nembedding = \"class_token_and_patch_mean\"\n\n\
                [preprocessing]\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\nresize = 72\ncrop = 64\ninterpolation = \"bicubic\"\n";
    std::fs::write(dir.path().join("models/virchow2_like.toml"), toml).unwrap();
    std::fs::copy(Path::new(FIXTURES).join("vit/virchow2_like.safetensors"), dir.path().join("weights/virchow2_like.safetensors")).unwrap();
    let images = image_folder(dir.path(), 10);
    let out = dir.path().join("ranked");
    let output = rank(
        dir.path(),
        &images,
        &out,
        None,
        &["--backbones", "virchow2_like,vit_min", "--finetune-top", "2", "--trials", "1", "--epochs", "1", "--batch", "8"],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // The features of the tuning split's train part, read before the run below adds those of all
    // 20 images in a second folder (which of the two `read_dir` gave first varied by run).
    let features_dir = std::fs::read_dir(out.join("features")).unwrap().next().unwrap().unwrap().path();
    let bytes = std::fs::read(&keyed(&features_dir, "virchow2_like", "safetensors")[0]).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("features").unwrap().shape(), [14, 64], "70% of 20 images, the class token and the patch mean");
    assert!(file.tensor("probs").is_err(), "no source probabilities");
    let rows = read_csv(&out.join("ranking.csv"));
    let row = rows.iter().find(|r| r["backbone"] == "virchow2_like").unwrap();
    // LEEP and NCE need the source classifier's probabilities; the ranking leaves them out and
    // says so.
    assert_eq!((row["leep"].as_str(), row["nce"].as_str()), ("", ""), "no source classifier: {row:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs the source model's probabilities"));
    // ranking.md, the file that is kept, says so too: the columns were gone, unsaid (seen).
    let ranking = std::fs::read_to_string(out.join("ranking.md")).unwrap();
    for metric in ["nce", "leep"] {
        let line = format!("- {metric} (in the consensus): failed on virchow2_like (");
        assert!(ranking.contains(&line) && ranking.contains("needs the source model's probabilities"), "{metric}: {ranking}");
    }
    // Its authors resize bicubically, the ranking (as the study) bilinearly: said, of it alone.
    let note = "shorter side 72 (bilinear) and centre crop 64, each normalised with its own mean and std";
    assert!(ranking.contains(note) && ranking.contains("differs for virchow2_like (72 / 64, bicubic)."), "{ranking}");
    // A consensus of those two alone ranks nothing: refused (the table and the shortlist went by
    // name, every consensus NaN).
    let output = rank_output(dir.path(), &images, &out, None, &["--backbones", "virchow2_like,vit_min", "--consensus", "nce,leep"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("none of nce, leep ranks every candidate"), "{stderr}");
    for metric in ["h_score", "n_leep", "logme", "reg_h_score", "gbc"] {
        assert!(row[metric].parse::<f64>().unwrap().is_finite(), "{metric}: {row:?}");
    }
    let accuracy: f64 = row["test_balanced_accuracy"].parse().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "tuned with a fresh head: {row:?}");

    // Half precision extraction: features of their own (keyed by the precision), scores close to
    // f32's; bf16 needs a GPU and says so.
    let half = dir.path().join("half");
    let output = rank(dir.path(), &images, &half, None, &["--backbones", "virchow2_like,vit_min", "--dtype", "f16"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let half_dir = std::fs::read_dir(half.join("features")).unwrap().next().unwrap().unwrap().path();
    let names: Vec<String> = std::fs::read_dir(&half_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|n| n.starts_with("virchow2_like-") && n.ends_with("-f16.safetensors")), "{names:?}");
    let half_rows = read_csv(&half.join("ranking.csv"));
    let half_row = half_rows.iter().find(|r| r["backbone"] == "virchow2_like").unwrap();
    let (f32_logme, f16_logme) = (row["logme"].parse::<f64>().unwrap(), half_row["logme"].parse::<f64>().unwrap());
    assert!(f16_logme.is_finite() && f32_logme.is_finite(), "{f32_logme} {f16_logme}");
    let output = rank_output(dir.path(), &images, &dir.path().join("bf16"), None, &["--backbones", "vit_min", "--dtype", "bf16"]);
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("bf16 needs a GPU"));
}

/// Another set of images ranked and tuned into the same OUT (here the folder less two images)
/// leaves one decoded set per part in OUT/cache, this run's: the earlier set's are removed.
#[test]
fn ranking_other_images_into_the_same_out_keeps_their_caches_only() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let images = image_folder(dir.path(), 10);
    let out = dir.path().join("ranked");
    let tuning = ["--backbones", "resnet_basic_min", "--finetune-top", "1", "--trials", "1", "--epochs", "1", "--batch", "8"];
    let cached = || {
        let mut names: Vec<String> =
            std::fs::read_dir(out.join("cache")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };
    rank(dir.path(), &images, &out, None, &tuning);
    let first = cached();
    std::fs::remove_file(images.join("clear/00.png")).unwrap();
    std::fs::remove_file(images.join("lesion/00.png")).unwrap();
    rank(dir.path(), &images, &out, None, &tuning);
    let second = cached();
    for part in ["train-", "val-", "test-", "saliency-"] {
        let of_part = |names: &[String]| names.iter().filter(|name| name.starts_with(part)).cloned().collect::<Vec<_>>();
        let (before, after) = (of_part(&first), of_part(&second));
        assert_eq!(after.len(), 2, "{part}: {second:?}");
        assert!(after.iter().any(|name| name.ends_with(".json")) && after.iter().any(|name| name.ends_with(".rgb8")), "{after:?}");
        assert!(before.len() == 2 && before != after, "{part}: {first:?} then {second:?}");
    }
}

/// Image `i` of `class` in `images` (image_folder's) as the middle of three frames: its negative
/// before it, noise after it.
fn between_negative_and_noise(images: &Path, class: &str, i: u32) -> [image::RgbImage; 3] {
    let image = image::open(images.join(class).join(format!("{i:02}.png"))).unwrap().to_rgb8();
    let mut negative = image.clone();
    negative.pixels_mut().for_each(|p| p.0 = p.0.map(|v| 255 - v));
    let noise = image::RgbImage::from_fn(48, 40, |x, y| image::Rgb([(x * 5 + y * 3) as u8, (x * y) as u8, (i * 60) as u8]));
    [negative, image, noise]
}

/// Each candidate's LogME and H-score in OUT/ranking.csv, as written.
fn logme_and_h_scores(out: &Path) -> Vec<(String, String)> {
    read_csv(&out.join("ranking.csv")).iter().map(|row| (row["logme"].clone(), row["h_score"].clone())).collect()
}

/// `image` as an uncompressed 8-bit RGB DICOM file (explicit VR little endian) at `path`.
fn write_rgb_dicom(path: &Path, image: &image::RgbImage) {
    write_rgb_dicom_frames(path, std::slice::from_ref(image));
}

/// `frames` (of one size) as an uncompressed 8-bit RGB DICOM file at `path`: a cine loop where
/// there are several.
fn write_rgb_dicom_frames(path: &Path, frames: &[image::RgbImage]) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    let (width, height) = frames[0].dimensions();
    let us = |tag, value: u32| DataElement::new(tag, VR::US, PrimitiveValue::from(value as u16));
    let pixels: Vec<u8> = frames.iter().flat_map(|frame| frame.as_raw().iter().copied()).collect();
    let mut object = dicom_object::InMemDicomObject::from_element_iter([
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uids::SECONDARY_CAPTURE_IMAGE_STORAGE)),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.826.0.1.3680043.1")),
        us(tags::SAMPLES_PER_PIXEL, 3),
        DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, PrimitiveValue::from("RGB")),
        us(tags::PLANAR_CONFIGURATION, 0),
        us(tags::ROWS, height),
        us(tags::COLUMNS, width),
        us(tags::BITS_ALLOCATED, 8),
        us(tags::BITS_STORED, 8),
        us(tags::HIGH_BIT, 7),
        us(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pixels)),
    ]);
    if frames.len() > 1 {
        object.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from(frames.len().to_string())));
    }
    let meta = dicom_object::FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(uids::SECONDARY_CAPTURE_IMAGE_STORAGE)
        .media_storage_sop_instance_uid("1.2.826.0.1.3680043.1");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    object.with_meta(meta).unwrap().write_to_file(path).unwrap();
}

/// A folder of 4-D NIfTI files of two volumes (as the Medical Segmentation Decathlon stores its
/// modalities), the second's middle slice the images and the first's their negative: ranked with
/// `--volume 2 --slice middle`, on those images (the PNGs' scores), said in ranking.md and keyed
/// in the caches. Without `--volume` the files are refused, naming it. Fine-tuned, the card keeps
/// the volume and predict reads new files' so, saying where it is told another.
#[test]
fn a_folder_of_4d_nifti_files_is_ranked_on_the_volume_chosen() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let images = image_folder(dir.path(), 4);
    let files = dir.path().join("four_d");
    for class in ["clear", "lesion"] {
        for i in 0..4 {
            let [negative, image, noise] = between_negative_and_noise(&images, class, i);
            let first = [image.clone(), negative.clone(), noise.clone()];
            let second = [negative, image, noise];
            write_rgb_nifti_volumes(&files.join(class).join(format!("{i:02}.nii")), &[&first, &second], 2);
        }
    }
    let backbone = ["--backbones", "resnet_basic_min"];
    rank(dir.path(), &images, &dir.path().join("pngs"), None, &backbone);
    let chosen = dir.path().join("chosen");
    rank(dir.path(), &files, &chosen, None, &[&backbone[..], &["--slice", "middle", "--volume", "2"]].concat());
    assert_eq!(logme_and_h_scores(&chosen), logme_and_h_scores(&dir.path().join("pngs")));
    let read = std::fs::read_to_string(chosen.join("ranking.md")).unwrap();
    assert!(read.contains("volume 2 of each 4-D NIfTI file (--volume)"), "{read}");
    let caches: Vec<String> =
        std::fs::read_dir(chosen.join("cache")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(caches.iter().filter(|name| name.ends_with(".rgb8")).all(|name| name.contains("-v2-")), "{caches:?}");
    let output = rank_output(dir.path(), &files, &dir.path().join("refused"), None, &[&backbone[..], &["--slice", "middle"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("a 4-D NIfTI file of 2 volumes") && stderr.contains("--volume N (1 to 2)"),
        "{stderr}"
    );
    // Three volumes make the channels of gray ones: these RGB volumes are refused.
    let extra = ["--slice", "middle", "--volume", "1+2+2"];
    let output = rank_output(dir.path(), &files, &dir.path().join("channels"), None, &[&backbone[..], &extra].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("cannot be one channel of three"), "{stderr}");

    let tuned = dir.path().join("tuned");
    let tuning = ["--slice", "middle", "--volume", "2", "--finetune-top", "1", "--trials", "1", "--epochs", "1"];
    rank(dir.path(), &files, &tuned, None, &[&backbone[..], &tuning].concat());
    let cards = std::fs::read_dir(tuned.join("models")).unwrap().map(|entry| entry.unwrap().path()).collect::<Vec<_>>();
    let card: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cards[0]).unwrap()).unwrap();
    assert_eq!(card["volume"], "2");
    let predictions = dir.path().join("predictions.csv");
    let output = predict(dir.path(), &tuned, &files, &["--out", predictions.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(read_csv(&predictions).len(), 8);
    let predict_caches: Vec<String> = std::fs::read_dir(tuned.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("predict") && name.ends_with(".rgb8"))
        .collect();
    assert!(!predict_caches.is_empty() && predict_caches.iter().all(|name| name.contains("-v2-")), "{predict_caches:?}");
    let output = predict(dir.path(), &tuned, &files, &["--out", predictions.to_str().unwrap(), "--volume", "1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.contains("--volume 1: the model was fine-tuned on rank's 4-D files' volume 2"), "{stderr}");
}

/// `slices` (of one size) as an uncompressed RGB24 NIfTI-1 volume at `path`, each slice's voxel
/// (i, j) the image's pixel (i, height - 1 - j): shown as np.rot90 shows a slice, each is the
/// image. Its sform sends the third voxel axis along the patient axis `third_axis` (0 x, left to
/// right: sagittal slices; 2 z: axial), the first two along the others in order. The header
/// written field by field (NIfTI-1's nifti1.h), the others zero.
fn write_rgb_nifti(path: &Path, slices: &[image::RgbImage], third_axis: usize) {
    write_rgb_nifti_volumes(path, &[slices], third_axis);
}

/// `volumes` (each the same number of slices of one size) as [`write_rgb_nifti`] writes one: a
/// 4-D file where there are several, the volumes one after another.
fn write_rgb_nifti_volumes(path: &Path, volumes: &[&[image::RgbImage]], third_axis: usize) {
    let slices: Vec<&image::RgbImage> = volumes.iter().flat_map(|volume| volume.iter()).collect();
    let (width, height) = slices[0].dimensions();
    let rank = if volumes.len() > 1 { 4 } else { 3 };
    let mut header = vec![0u8; 352];
    let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &348i32.to_le_bytes()); // sizeof_hdr
    let dims = [rank, width as i16, height as i16, volumes[0].len() as i16, volumes.len() as i16, 1, 1, 1];
    for (k, dim) in dims.into_iter().enumerate() {
        put(40 + 2 * k, &i16::to_le_bytes(dim)); // dim
    }
    put(70, &128i16.to_le_bytes()); // datatype: RGB24
    put(72, &24i16.to_le_bytes()); // bitpix
    for k in 0..8 {
        put(76 + 4 * k, &1f32.to_le_bytes()); // pixdim
    }
    put(108, &352f32.to_le_bytes()); // vox_offset
    put(254, &1i16.to_le_bytes()); // sform_code: scanner coordinates
    let mut world_axes = (0..3).filter(|&axis| axis != third_axis);
    let voxel_axis_of = [world_axes.next().unwrap(), world_axes.next().unwrap(), third_axis];
    for row in 0..3 {
        // srow_x, srow_y, srow_z: world coordinate `row` of each voxel axis (and no offset).
        for (voxel_axis, &world) in voxel_axis_of.iter().enumerate() {
            put(280 + 16 * row + 4 * voxel_axis, &(if world == row { 1f32 } else { 0f32 }).to_le_bytes());
        }
    }
    put(344, b"n+1\0"); // magic: a single file
    let voxels = slices
        .into_iter()
        .flat_map(|slice| (0..height).flat_map(move |j| (0..width).flat_map(move |i| slice.get_pixel(i, height - 1 - j).0)));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, header.into_iter().chain(voxels).collect::<Vec<u8>>()).unwrap();
}

/// `xtask predict --ranking OUT --images IMAGES` and `extra`, run in `dir`.
fn predict(dir: &Path, out: &Path, images: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(dir)
        .arg("predict")
        .args(["--ranking".as_ref(), out.as_os_str(), "--images".as_ref(), images.as_os_str()])
        .args(extra)
        .output()
        .unwrap()
}

/// Whether `part` appears in `image` at some place, pixel for pixel.
fn contains(image: &image::RgbImage, part: &image::RgbImage) -> bool {
    let (width, height) = part.dimensions();
    (0..=image.height().saturating_sub(height)).any(|y| {
        (0..=image.width().saturating_sub(width))
            .any(|x| (0..height).all(|dy| (0..width).all(|dx| image.get_pixel(x + dx, y + dy) == part.get_pixel(dx, dy))))
    })
}

/// The share of each class's images predicted as it, averaged over the classes (written out
/// here, apart from medxfer-train's metrics).
fn balanced_accuracy(truth: &[&str], predicted: &[&str]) -> f64 {
    let classes: std::collections::BTreeSet<&str> = truth.iter().copied().collect();
    let recalls: Vec<f64> = classes
        .iter()
        .map(|class| {
            let of_class: Vec<usize> = (0..truth.len()).filter(|&i| truth[i] == *class).collect();
            of_class.iter().filter(|&&i| predicted[i] == *class).count() as f64 / of_class.len() as f64
        })
        .collect();
    recalls.iter().sum::<f64>() / recalls.len() as f64
}

/// Each tensor's dtype and shape, by name.
type TensorShapes = BTreeMap<String, (String, Vec<u64>)>;

/// A safetensors file's tensors and metadata, read from its JSON header.
fn safetensors_header(path: &Path) -> (TensorShapes, BTreeMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, value) in header {
        if name == "__metadata__" {
            metadata = value.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect();
        } else {
            let shape = value["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
            tensors.insert(name, (value["dtype"].as_str().unwrap().to_string(), shape));
        }
    }
    (tensors, metadata)
}

/// Softmax of two logits.
fn softmax2(logits: [f64; 2]) -> [f64; 2] {
    let max = logits[0].max(logits[1]);
    let e = [(logits[0] - max).exp(), (logits[1] - max).exp()];
    [e[0] / (e[0] + e[1]), e[1] / (e[0] + e[1])]
}

/// The 15-bin ECE (Guo et al.'s (lower, upper] bins), mean NLL and Brier score of two-class
/// probabilities, written out here as their definitions read.
fn calibration_of(probabilities: &[[f64; 2]], labels: &[usize]) -> (f64, f64, f64) {
    let n = labels.len() as f64;
    let mut bins = vec![(0.0, 0.0, 0usize); 15];
    let (mut nll, mut brier) = (0.0, 0.0);
    for (p, &y) in probabilities.iter().zip(labels) {
        let predicted = usize::from(p[1] > p[0]);
        let confidence = p[predicted];
        let bin = (0..15).find(|&b| confidence <= (b + 1) as f64 / 15.0).unwrap();
        bins[bin].0 += confidence;
        bins[bin].1 += if predicted == y { 1.0 } else { 0.0 };
        bins[bin].2 += 1;
        nll -= p[y].ln();
        brier += (1.0 - p[y]).powi(2) + p[1 - y].powi(2);
    }
    let ece = bins.iter().map(|(confidence, right, _)| (right - confidence).abs() / n).sum();
    (ece, nll / n, brier / n)
}

/// `predict` applies the fine-tuned shortlist to new images. On the test part of rank's own split
/// it gives the test balanced accuracy the search measured (the same model, images and
/// preprocessing, reached another way: predict's softmax, not the search's evaluation); each
/// row's probabilities sum to 1, the predicted class their largest; a folder is read at any
/// depth; and what it cannot do is refused with the fix.
#[test]
fn predict_applies_the_best_fine_tuned_backbone_to_new_images() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let images = image_folder(dir.path(), 20);
    let out = dir.path().join("ranked");
    let two = ["--backbones", "resnet_basic_min,vit_min"];
    rank(dir.path(), &images, &out, None, &two);
    let output = predict(dir.path(), &out, &images, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("no fine-tuned backbone") && stderr.contains("--finetune-top K"), "{stderr}");

    let tuning = ["--finetune-top", "2", "--trials", "2", "--epochs", "2", "--batch", "8"];
    let ranked = String::from_utf8(rank(dir.path(), &images, &out, None, &[&two[..], &tuning[..]].concat()).stdout).unwrap();
    assert!(ranked.contains("`cargo xtask predict --ranking"), "{ranked}");
    let accuracies: BTreeMap<String, f64> =
        read_csv(&out.join("ranking.csv")).iter().map(|r| (r["backbone"].clone(), r["test_balanced_accuracy"].parse().unwrap())).collect();
    // The best by validation balanced accuracy (the kept epoch's, as history.jsonl has it), then
    // by test; of equal ones the first by name. Its card's test accuracy is ranking.csv's.
    let mut merits: Vec<(f64, f64, String)> = Vec::new();
    for (backbone, &test_accuracy) in &accuracies {
        let card: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("models").join(format!("{backbone}.json"))).unwrap()).unwrap();
        assert_eq!(card["test_balanced_accuracy"].as_f64(), Some(test_accuracy), "{card}");
        let run = out.join(card["checkpoint"].as_str().unwrap()).parent().unwrap().to_path_buf();
        let best_epoch = std::fs::read_to_string(run.join("history.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .min_by(|a, b| a["val_loss"].as_f64().unwrap().total_cmp(&b["val_loss"].as_f64().unwrap()))
            .unwrap();
        assert_eq!(card["val_balanced_accuracy"], best_epoch["val_balanced_accuracy"], "the kept (lowest val loss) epoch's: {card}");
        merits.push((card["val_balanced_accuracy"].as_f64().unwrap(), test_accuracy, backbone.clone()));
    }
    let (_, accuracy, best) = merits.iter().fold(merits[0].clone(), |best, m| if (m.0, m.1) > (best.0, best.1) { m.clone() } else { best });
    let best = &best;
    let test: Vec<String> =
        read_csv(&out.join("finetune_split.csv")).into_iter().filter(|r| r["split"] == "test").map(|r| r["path"].clone()).collect();
    let test_csv = dir.path().join("test.csv");
    std::fs::write(&test_csv, format!("path\n{}\n", test.join("\n"))).unwrap();
    let predictions_csv = dir.path().join("predictions.csv");
    let root_and_out = ["--images-root", images.to_str().unwrap(), "--out", predictions_csv.to_str().unwrap()];
    let output = predict(dir.path(), &out, &test_csv, &root_and_out);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("{} images predicted by {best}", test.len())), "{stdout}");
    assert!(stdout.contains(&format!("balanced accuracy {accuracy:.3}")), "{accuracy}: {stdout}");
    let rows = read_csv(&predictions_csv);
    assert_eq!(rows.iter().map(|r| r["path"].clone()).collect::<Vec<_>>(), test);
    for row in &rows {
        let p = |class: &str| row[&format!("p_{class}")].parse::<f64>().unwrap();
        assert!((p("clear") + p("lesion") - 1.0).abs() < 1e-5, "{row:?}");
        let largest = if p("lesion") > p("clear") { "lesion" } else { "clear" };
        assert_eq!((row["predicted"].as_str(), row["probability"].parse::<f64>().unwrap()), (largest, p(largest)), "{row:?}");
    }
    let truth: Vec<&str> = test.iter().map(|path| path.split('/').next().unwrap()).collect();
    let predicted: Vec<&str> = rows.iter().map(|r| r["predicted"].as_str()).collect();
    assert!((balanced_accuracy(&truth, &predicted) - accuracy).abs() < 1e-12, "{truth:?} {predicted:?}: {accuracy}");
    // ranking.md's recall of each class for that backbone is the share of its test images
    // predicted as it.
    let recall = |class: &str| {
        let of_class: Vec<usize> = (0..truth.len()).filter(|&i| truth[i] == class).collect();
        of_class.iter().filter(|&&i| predicted[i] == class).count() as f64 / of_class.len() as f64
    };
    let row = format!("| {best} | {:.2} | {:.2} | {accuracy:.3} |", recall("clear"), recall("lesion"));
    let ranking_md = std::fs::read_to_string(out.join("ranking.md")).unwrap();
    assert!(ranking_md.contains("| backbone | clear | lesion | balanced accuracy |") && ranking_md.contains(&row), "{row}: {ranking_md}");

    // --tta flip / dihedral: each image's probabilities are the softmax of its logits averaged over
    // the views, which are those the model gives each view's image written to disk and predicted
    // alone (the mean of log-probabilities differs from the mean of the logits by a constant per
    // view, which the softmax drops).
    type Turn = fn(&image::DynamicImage) -> image::DynamicImage;
    let turns: [Turn; 8] = [
        |i| i.clone(),
        |i| i.fliph(),
        |i| i.rotate90(),
        |i| i.rotate90().fliph(),
        |i| i.rotate180(),
        |i| i.rotate180().fliph(),
        |i| i.rotate270(),
        |i| i.rotate270().fliph(),
    ];
    let mut log_probabilities: Vec<Vec<[f64; 2]>> = Vec::new();
    for (k, turn) in turns.iter().enumerate() {
        let folder = dir.path().join(format!("view-{k}"));
        for path in &test {
            std::fs::create_dir_all(folder.join(path).parent().unwrap()).unwrap();
            turn(&image::open(images.join(path)).unwrap()).save(folder.join(path)).unwrap();
        }
        let file = dir.path().join(format!("view-{k}.csv"));
        let output = predict(dir.path(), &out, &folder, &["--out", file.to_str().unwrap()]);
        assert!(output.status.success(), "{output:?}");
        let by_path: BTreeMap<String, [f64; 2]> = read_csv(&file)
            .into_iter()
            .map(|r| (r["path"].clone(), [r["p_clear"].parse::<f64>().unwrap().ln(), r["p_lesion"].parse::<f64>().unwrap().ln()]))
            .collect();
        log_probabilities.push(test.iter().map(|path| by_path[path]).collect());
    }
    for (tta, count) in [("flip", 2), ("dihedral", 8)] {
        let file = dir.path().join(format!("tta-{tta}.csv"));
        let output = predict(
            dir.path(),
            &out,
            &test_csv,
            &["--images-root", images.to_str().unwrap(), "--out", file.to_str().unwrap(), "--tta", tta],
        );
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stderr).contains(&format!("averaged over {count} views")),
            "{output:?}"
        );
        for (i, row) in read_csv(&file).iter().enumerate() {
            let mean = |class: usize| log_probabilities[..count].iter().map(|view| view[i][class]).sum::<f64>() / count as f64;
            let expected = softmax2([mean(0), mean(1)]);
            let p_clear: f64 = row["p_clear"].parse().unwrap();
            assert!((p_clear - expected[0]).abs() < 1e-4, "{tta}: {}: {p_clear} against {}", row["path"], expected[0]);
        }
    }

    // A folder of DICOM files (the test images as 8-bit RGB DICOMs, named as PACS exports name
    // them: without extension, by UID, or .dcm) is read at any depth and predicted as the same
    // images as PNGs are: the same probabilities.
    let scans = dir.path().join("scans");
    let mut dicom_names = Vec::new();
    for (i, path) in test.iter().enumerate() {
        let name = match i % 3 {
            0 => format!("IM{i:06}"),
            1 => format!("series 1/1.2.826.0.1.3680043.{i}"),
            _ => format!("{}.dcm", path.replace('/', "-")),
        };
        write_rgb_dicom(&scans.join(&name), &image::open(images.join(path)).unwrap().to_rgb8());
        dicom_names.push(name);
    }
    let file = dir.path().join("scans.csv");
    let output = predict(dir.path(), &out, &scans, &["--out", file.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let from_dicom: BTreeMap<String, String> = read_csv(&file).into_iter().map(|r| (r["path"].clone(), r["p_clear"].clone())).collect();
    assert_eq!(from_dicom.len(), test.len(), "{from_dicom:?}");
    for (name, row) in dicom_names.iter().zip(&rows) {
        assert_eq!(from_dicom.get(name), Some(&row["p_clear"]), "{name}: {}", row["path"]);
    }

    // Cine loops of the test images (each the middle of three frames): refused as the model's
    // card says (rank read no such files), predicted as the PNGs with --dicom-frame middle, and
    // so again without it once the card says rank read the middle frame.
    let loops = dir.path().join("loops");
    for (i, path) in test.iter().enumerate() {
        let image = image::open(images.join(path)).unwrap().to_rgb8();
        let other =
            image::RgbImage::from_fn(image.width(), image.height(), |x, y| image::Rgb([(x * 7) as u8, (y * 11) as u8, (i * 40) as u8]));
        write_rgb_dicom_frames(&loops.join(format!("{i:02}.dcm")), &[other.clone(), image, other]);
    }
    let file = dir.path().join("loops.csv");
    let output = predict(dir.path(), &out, &loops, &["--out", file.to_str().unwrap()]);
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("--dicom-frame"), "{output:?}");
    let card_file = out.join("models").join(format!("{best}.json"));
    let card_text = std::fs::read_to_string(&card_file).unwrap();
    assert!(card_text.contains("\"dicom_frame\": \"only\""), "{card_text}");
    let from_loops = |extra: &[&str]| -> Vec<String> {
        let output = predict(dir.path(), &out, &loops, &[&["--out", file.to_str().unwrap()], extra].concat());
        assert!(output.status.success(), "{output:?}");
        read_csv(&file).into_iter().map(|r| r["p_clear"].clone()).collect()
    };
    let expected: Vec<String> = rows.iter().map(|row| row["p_clear"].clone()).collect();
    assert_eq!(from_loops(&["--dicom-frame", "middle"]), expected);
    std::fs::write(&card_file, card_text.replace("\"dicom_frame\": \"only\"", "\"dicom_frame\": \"middle\"")).unwrap();
    assert_eq!(from_loops(&[]), expected);
    std::fs::write(&card_file, &card_text).unwrap();
    // Every frame (--dicom-frame all, or a card saying so): one row a loop, its probabilities the
    // mean of its frames' (those of the same frames as PNGs, predicted one by one); every:2 reads
    // frames 1 and 3, the loop's two others. (--saliency on loops: below.)
    let others = dir.path().join("others");
    let middles = dir.path().join("middles");
    std::fs::create_dir_all(&others).unwrap();
    std::fs::create_dir_all(&middles).unwrap();
    for (i, path) in test.iter().enumerate() {
        let image = image::open(images.join(path)).unwrap().to_rgb8();
        let other =
            image::RgbImage::from_fn(image.width(), image.height(), |x, y| image::Rgb([(x * 7) as u8, (y * 11) as u8, (i * 40) as u8]));
        other.save(others.join(format!("{i:02}.png"))).unwrap();
        image.save(middles.join(format!("{i:02}.png"))).unwrap();
    }
    let output = predict(dir.path(), &out, &others, &["--out", file.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let other_p: Vec<f64> = read_csv(&file).iter().map(|r| r["p_clear"].parse().unwrap()).collect();
    let image_p: Vec<f64> = expected.iter().map(|p| p.parse().unwrap()).collect();
    let pooled = |extra: &[&str]| -> Vec<f64> { from_loops(extra).iter().map(|p| p.parse().unwrap()).collect() };
    let close = |ours: &[f64], truth: &[f64], case: &str| {
        assert_eq!(ours.len(), truth.len(), "{case}");
        for (a, b) in ours.iter().zip(truth) {
            assert!((a - b).abs() < 2e-6, "{case}: {ours:?} against {truth:?}");
        }
    };
    let mean_of_three: Vec<f64> = other_p.iter().zip(&image_p).map(|(o, i)| (2.0 * o + i) / 3.0).collect();
    close(&pooled(&["--dicom-frame", "all"]), &mean_of_three, "all");
    close(&pooled(&["--dicom-frame", "every:2"]), &other_p, "every:2");
    std::fs::write(&card_file, card_text.replace("\"dicom_frame\": \"only\"", "\"dicom_frame\": \"all\"")).unwrap();
    close(&pooled(&[]), &mean_of_three, "a card saying all");
    // Calibrated (a temperature of 2 written in the card): the mean of the frames' calibrated
    // probabilities.
    let mut card: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&card_file).unwrap()).unwrap();
    card["temperature"] = serde_json::json!(2.0);
    std::fs::write(&card_file, serde_json::to_string(&card).unwrap()).unwrap();
    let calibrated_of = |folder: &Path| -> Vec<f64> {
        let output = predict(dir.path(), &out, folder, &["--out", file.to_str().unwrap(), "--calibrated"]);
        assert!(output.status.success(), "{output:?}");
        read_csv(&file).iter().map(|r| r["p_clear"].parse().unwrap()).collect()
    };
    let (other_t, image_t) = (calibrated_of(&others), calibrated_of(&middles));
    assert!(other_t.iter().zip(&other_p).all(|(t, p)| (t - p).abs() > 1e-3), "a temperature of 2 changes nothing: {other_t:?}");
    let mean_calibrated: Vec<f64> = other_t.iter().zip(&image_t).map(|(o, i)| (2.0 * o + i) / 3.0).collect();
    close(&pooled(&["--calibrated"]), &mean_calibrated, "all, calibrated");
    // A loop cut inside its last frame, with --skip-unreadable: listed, the others pooled as
    // before (an unreadable frame makes its loop unreadable, not a loop of fewer frames).
    let cut_loops = dir.path().join("cut loops");
    std::fs::create_dir_all(&cut_loops).unwrap();
    for i in 0..test.len() {
        let bytes = std::fs::read(loops.join(format!("{i:02}.dcm"))).unwrap();
        let kept = if i == 1 { bytes.len() - 100 } else { bytes.len() };
        std::fs::write(cut_loops.join(format!("{i:02}.dcm")), &bytes[..kept]).unwrap();
    }
    let output = predict(dir.path(), &out, &cut_loops, &["--out", file.to_str().unwrap(), "--skip-unreadable", "--calibrated"]);
    assert!(output.status.success(), "{output:?}");
    let cut_rows = read_csv(&file);
    assert_eq!(
        cut_rows.iter().map(|r| r["path"].as_str()).collect::<Vec<_>>(),
        (0..test.len()).filter(|&i| i != 1).map(|i| format!("{i:02}.dcm")).collect::<Vec<_>>()
    );
    let kept: Vec<f64> = mean_calibrated.iter().enumerate().filter(|&(i, _)| i != 1).map(|(_, p)| *p).collect();
    close(&cut_rows.iter().map(|r| r["p_clear"].parse().unwrap()).collect::<Vec<f64>>(), &kept, "a cut loop left out");
    let listed = read_csv(&dir.path().join("loops-unreadable.csv"));
    assert!(listed.len() == 1 && listed[0]["path"] == "01.dcm", "{listed:?}");
    // --saliency: each loop's map drawn on its frame of largest probability of the class drawn,
    // the map of that frame as a PNG byte for byte, the review page naming the frame. For clear,
    // then lesion, each loop's image frame and its other frame take turns (frames 1 and 3 are
    // equal: the first is shown).
    for class in ["clear", "lesion"] {
        let maps = |folder: &Path, name: &str, extension: &str| -> (Vec<Vec<u8>>, String) {
            let saliency = dir.path().join(format!("{name}-{class}"));
            let args = ["--out", file.to_str().unwrap(), "--saliency", saliency.to_str().unwrap(), "--saliency-class", class];
            let output = predict(dir.path(), &out, folder, &args);
            assert!(output.status.success(), "{output:?}");
            let maps = (0..test.len()).map(|i| std::fs::read(saliency.join(format!("{i:02}.{extension}.png"))).unwrap()).collect();
            (maps, std::fs::read_to_string(saliency.join("index.html")).unwrap())
        };
        let (loop_maps, page) = maps(&loops, "loop-maps", "dcm");
        let (other_maps, _) = maps(&others, "other-maps", "png");
        let (image_maps, _) = maps(&middles, "image-maps", "png");
        for i in 0..test.len() {
            let image_tells = if class == "clear" { image_p[i] > other_p[i] } else { image_p[i] < other_p[i] };
            let (expected, frame) = if image_tells { (&image_maps[i], 2) } else { (&other_maps[i], 1) };
            assert!(loop_maps[i] == *expected, "{class}: loop {i}: not the map of frame {frame}");
            assert!(page.contains(&format!("<td>{i:02}.dcm (frame {frame})</td>")), "{class}: loop {i}, frame {frame}: {page}");
        }
    }
    std::fs::write(&card_file, &card_text).unwrap();

    // --saliency DIR: an overlay per image, of the crop's size, at the image's path under DIR
    // with .png appended. --saliency-class C draws the evidence for C instead of the predicted
    // class: the same file, byte for byte, for each image predicted as C, and another for some
    // image predicted as the other class (in batches of 3, so across batches too: each image's
    // map is of its own class). A class the model lacks is refused before any work.
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("models").join(format!("{best}.json"))).unwrap()).unwrap();
    let crop = card["crop"].as_u64().unwrap() as u32;
    let drawn = |name: &str, extra: &[&str]| {
        let folder = dir.path().join(name);
        let args = [&root_and_out[..], &["--batch", "3", "--saliency", folder.to_str().unwrap()], extra].concat();
        let output = predict(dir.path(), &out, &test_csv, &args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && stdout.contains(&format!("{} saliency map(s)", test.len())), "{stdout}{output:?}");
        test.iter().map(|path| std::fs::read(folder.join(format!("{path}.png"))).unwrap()).collect::<Vec<_>>()
    };
    let own = drawn("saliency", &[]);
    // Its index.html lists every image with its overlay, the least sure first.
    let page = std::fs::read_to_string(dir.path().join("saliency").join("index.html")).unwrap();
    let mut least_sure_first: Vec<&BTreeMap<String, String>> = rows.iter().collect();
    least_sure_first.sort_by(|a, b| a["probability"].parse::<f64>().unwrap().total_cmp(&b["probability"].parse().unwrap()));
    let places: Vec<usize> = least_sure_first
        .iter()
        .map(|row| page.find(&format!("<img src=\"{}.png\"", row["path"])).unwrap_or_else(|| panic!("{}: {page}", row["path"])))
        .collect();
    assert!(places.is_sorted(), "{places:?}");
    for png in &own {
        let overlay = image::load_from_memory(png).unwrap();
        assert_eq!((overlay.width(), overlay.height()), (crop, crop));
    }
    let of_lesion = drawn("saliency-lesion", &["--saliency-class", "lesion"]);
    let (mut same, mut other) = (0, 0);
    for ((row, own), lesion) in rows.iter().zip(&own).zip(&of_lesion) {
        if row["predicted"] == "lesion" {
            assert!(own == lesion, "{}: predicted lesion, yet its map for lesion differs", row["path"]);
            same += 1;
        } else if own != lesion {
            other += 1;
        }
    }
    assert!(same > 0 && other > 0, "{same} images predicted lesion, {other} others drawn apart");
    // rank's ranking_saliency.png holds, for each tuned backbone, the overlay predict draws of
    // each of six test images (the first of each class, then the second of each, ...), enlarged
    // by a whole factor to at least 128 px: each is found in it, pixel for pixel.
    assert!(ranking_md.contains("Where each looks: ranking_saliency.png draws"), "{ranking_md}");
    let figure = image::open(out.join("ranking_saliency.png")).unwrap().to_rgb8();
    let mut chosen = Vec::new();
    for round in 0.. {
        let before = chosen.len();
        for class in ["clear", "lesion"] {
            if let Some(index) = (0..test.len()).filter(|&i| truth[i] == class).nth(round) {
                chosen.push(index);
            }
        }
        if chosen.len() == before || chosen.len() >= 6 {
            break;
        }
    }
    chosen.truncate(6);
    let other_backbone = accuracies.keys().find(|name| *name != best).unwrap();
    let of_other = drawn("saliency-other", &["--backbone", other_backbone]);
    let factor = 128u32.div_ceil(crop);
    for (backbone, overlays) in [(best, &own), (other_backbone, &of_other)] {
        for &index in &chosen {
            let overlay = image::load_from_memory(&overlays[index]).unwrap().to_rgb8();
            let enlarged = image::imageops::resize(&overlay, crop * factor, crop * factor, image::imageops::FilterType::Nearest);
            assert!(contains(&figure, &enlarged), "{backbone}: {}'s overlay is not in ranking_saliency.png", test[index]);
        }
    }
    let output = predict(dir.path(), &out, &test_csv, &[&root_and_out[..], &["--saliency", "x", "--saliency-class", "nevus"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("--saliency-class \"nevus\": not one of the model's classes (clear, lesion)"),
        "{stderr}"
    );
    assert!(!dir.path().join("x").exists());
    // Overlays inside the images' folder would be read as images by the next run on it.
    let inside = images.join("maps");
    let output = predict(dir.path(), &out, &images, &["--saliency", inside.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("inside --images") && stderr.contains("outside it"), "{stderr}");
    assert!(!inside.exists());

    // --refer-below P: the images whose largest probability is below P are marked for review,
    // and the others measured alone. P between the middle two of these probabilities.
    let mut largest: Vec<f64> = rows.iter().map(|r| r["probability"].parse().unwrap()).collect();
    largest.sort_by(f64::total_cmp);
    let threshold = (largest[largest.len() / 2 - 1] + largest[largest.len() / 2]) / 2.0;
    let referred_csv = dir.path().join("referred.csv");
    let refer_args = ["--images-root", images.to_str().unwrap(), "--out", referred_csv.to_str().unwrap()];
    let output = predict(dir.path(), &out, &test_csv, &[&refer_args[..], &["--refer-below", &threshold.to_string()]].concat());
    let refer_rows = read_csv(&referred_csv);
    let refer: Vec<bool> = refer_rows.iter().map(|r| r["refer"] == "yes").collect();
    for (row, &referred) in refer_rows.iter().zip(&refer) {
        assert_eq!(referred, row["probability"].parse::<f64>().unwrap() < threshold, "{row:?} at {threshold}");
    }
    let kept = |values: &[&str]| -> Vec<String> { values.iter().zip(&refer).filter(|(_, r)| !**r).map(|(v, _)| v.to_string()).collect() };
    let predicted_here: Vec<&str> = refer_rows.iter().map(|r| r["predicted"].as_str()).collect();
    let (kept_truth, kept_predicted) = (kept(&truth), kept(&predicted_here));
    let summary = format!(
        "Referred for review (largest probability below {threshold}): {} of {}; on the others, balanced accuracy {:.3}",
        refer.iter().filter(|r| **r).count(),
        test.len(),
        balanced_accuracy(
            &kept_truth.iter().map(String::as_str).collect::<Vec<_>>(),
            &kept_predicted.iter().map(String::as_str).collect::<Vec<_>>()
        )
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(&summary), "{summary}: {output:?}");
    let output = predict(dir.path(), &out, &test_csv, &[&refer_args[..], &["--refer-below", "1.5"]].concat());
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected a probability between 0 and 1"), "{output:?}");

    // Its AUROC there: the share of (lesion, clear) pairs of test images where the lesion image
    // has the higher p_lesion, ties half (both classes' one-vs-rest AUROC, so their mean too).
    let p_lesion = |class: &str| -> Vec<f64> {
        rows.iter().zip(&truth).filter(|(_, t)| **t == class).map(|(r, _)| r["p_lesion"].parse().unwrap()).collect()
    };
    let (lesions, clears) = (p_lesion("lesion"), p_lesion("clear"));
    let pairs: f64 = lesions
        .iter()
        .flat_map(|l| {
            clears.iter().map(move |c| {
                if l > c {
                    1.0
                } else if l == c {
                    0.5
                } else {
                    0.0
                }
            })
        })
        .sum();
    let auroc = pairs / (lesions.len() * clears.len()) as f64;
    let best_line = ranking_md.lines().find(|line| line.starts_with(&row)).unwrap();
    assert!(best_line.contains(&format!("] | {auroc:.3} | [")), "{auroc}: {best_line}");
    assert!(stdout.contains(&format!("AUROC {auroc:.3}")), "{auroc}: {stdout}");

    // ranking.md's calibration row for it: the ECE, NLL and Brier score of these probabilities.
    let of_truth = |row: &BTreeMap<String, String>, class: &str| row[&format!("p_{class}")].parse::<f64>().unwrap();
    let probabilities: Vec<[f64; 2]> = rows.iter().map(|r| [of_truth(r, "clear"), of_truth(r, "lesion")]).collect();
    let labels: Vec<usize> = truth.iter().map(|class| usize::from(*class == "lesion")).collect();
    let row = format!("| {best} | ");
    let calibration_row = ranking_md.lines().skip_while(|l| !l.starts_with("| backbone | temperature |")).find(|l| l.starts_with(&row));
    let cells: Vec<&str> = calibration_row.unwrap_or_else(|| panic!("{ranking_md}")).split(" | ").collect();
    let (ece, nll, brier) = calibration_of(&probabilities, &labels);
    assert_eq!(cells[2..5], [format!("{ece:.3}"), format!("{nll:.3}"), format!("{brier:.3}")], "{ranking_md}");
    // Its reliability diagram's panel, with that ECE; one panel per fine-tuned backbone.
    let diagram = std::fs::read_to_string(out.join("ranking_calibration.svg")).unwrap();
    assert!(diagram.contains(&format!("{best}: ECE {ece:.3}")), "{diagram}");
    assert!(accuracies.keys().all(|backbone| diagram.contains(&format!("{backbone}: ECE "))));
    assert!(out.join("ranking_calibration.png").is_file());
    // Each card's temperature minimises the likelihood of the val part's labels under its
    // probabilities divided by it (here recomputed from predict's uncalibrated probabilities on
    // the val images), or the card says why there is none.
    let val: Vec<String> =
        read_csv(&out.join("finetune_split.csv")).into_iter().filter(|r| r["split"] == "val").map(|r| r["path"].clone()).collect();
    let val_csv = dir.path().join("val.csv");
    std::fs::write(&val_csv, format!("path\n{}\n", val.join("\n"))).unwrap();
    let val_labels: Vec<usize> = val.iter().map(|path| usize::from(path.starts_with("lesion/"))).collect();
    let mut fitted = 0;
    for backbone in accuracies.keys() {
        let card: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("models").join(format!("{backbone}.json"))).unwrap()).unwrap();
        let val_out = dir.path().join(format!("val-{backbone}.csv"));
        let output = predict(
            dir.path(),
            &out,
            &val_csv,
            &["--images-root", images.to_str().unwrap(), "--out", val_out.to_str().unwrap(), "--backbone", backbone],
        );
        assert!(output.status.success(), "{output:?}");
        let log_p: Vec<[f64; 2]> = read_csv(&val_out).iter().map(|r| [of_truth(r, "clear").ln(), of_truth(r, "lesion").ln()]).collect();
        let tempered_nll = |t: f64| {
            let tempered: Vec<[f64; 2]> = log_p.iter().map(|l| softmax2([l[0] / t, l[1] / t])).collect();
            calibration_of(&tempered, &val_labels).1
        };
        // --calibrated: the same classes, the probabilities the temperature gives; refused with
        // the reason where the card has none.
        let calibrated_csv = dir.path().join(format!("calibrated-{backbone}.csv"));
        let calibrated_args =
            ["--images-root", images.to_str().unwrap(), "--out", calibrated_csv.to_str().unwrap(), "--backbone", backbone];
        let output = predict(dir.path(), &out, &val_csv, &[&calibrated_args[..], &["--calibrated"]].concat());
        match card["temperature"].as_f64() {
            Some(t) => {
                fitted += 1;
                // The likelihood's minimum by golden-section search over [0.05, 20].
                let (mut low, mut high) = (0.05_f64, 20.0_f64);
                let golden = (5.0_f64.sqrt() - 1.0) / 2.0;
                for _ in 0..200 {
                    let (a, b) = (high - golden * (high - low), low + golden * (high - low));
                    if tempered_nll(a) < tempered_nll(b) { high = b } else { low = a }
                }
                assert!((t - (low + high) / 2.0).abs() < 1e-4 * t, "{backbone}: {t}, the val part's minimum at {low}");
                let stdout = String::from_utf8_lossy(&output.stdout);
                assert!(output.status.success() && stdout.contains(&format!("at temperature {t:.3}")), "{output:?}");
                for (raw, calibrated) in read_csv(&val_out).iter().zip(read_csv(&calibrated_csv)) {
                    let expected = softmax2([of_truth(raw, "clear").ln() / t, of_truth(raw, "lesion").ln() / t]);
                    assert!((of_truth(&calibrated, "clear") - expected[0]).abs() < 1e-5, "{raw:?} {calibrated:?} at {t}");
                    assert_eq!(calibrated["predicted"], raw["predicted"]);
                }
            }
            None => {
                let because = card["uncalibrated_because"].as_str().unwrap();
                let all_right = log_p.iter().zip(&val_labels).all(|(l, &y)| l[y] >= l[1 - y]);
                assert!(all_right == because.contains("is classified right"), "{backbone}: {because}");
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert!(!output.status.success() && stderr.contains("--calibrated: rank fitted no temperature"), "{stderr}");
                // The other one has a temperature, and the error names it.
                let other = accuracies.keys().find(|name| *name != backbone).unwrap();
                assert!(stderr.contains(&format!("--backbone one that has one ({other})")), "{stderr}");
            }
        }
    }
    // The two backbones here: one has a temperature, the other a val part all classified right.
    assert_eq!(fitted, 1);

    // Measured against a label column --csv-columns names (here each image's other class), not
    // the folders; a label the model lacks is refused, naming the line.
    let flip = |class: &str| if class == "clear" { "lesion" } else { "clear" };
    let flipped: Vec<&str> = truth.iter().map(|class| flip(class)).collect();
    let labelled_csv = dir.path().join("labelled.csv");
    let lines: Vec<String> = test.iter().zip(&flipped).map(|(path, class)| format!("{path},{class}")).collect();
    std::fs::write(&labelled_csv, format!("file,diagnosis\n{}\n", lines.join("\n"))).unwrap();
    let columns = ["--csv-columns", "file,diagnosis", "--images-root", images.to_str().unwrap()];
    let output = predict(dir.path(), &out, &labelled_csv, &columns);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let against_labels = format!("Against the CSV's label column: balanced accuracy {:.3}", balanced_accuracy(&flipped, &predicted));
    assert!(stdout.contains(&against_labels), "{against_labels}: {stdout}");
    std::fs::write(&labelled_csv, format!("file,diagnosis\n{}\n{},nevus\n", lines.join("\n"), test[0])).unwrap();
    let output = predict(dir.path(), &out, &labelled_csv, &columns);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = test.len() + 2;
    assert!(
        !output.status.success()
            && stderr.contains(&format!("line {line}: label \"nevus\" is not one of the model's classes (clear, lesion)")),
        "{stderr}"
    );

    // rank's split names each image's class in its label column: measured against it, the
    // whole split scores as against its class folders.
    let split_csv = out.join("finetune_split.csv");
    let root = ["--images-root", images.to_str().unwrap()];
    let by_folder = String::from_utf8(predict(dir.path(), &out, &split_csv, &root).stdout).unwrap();
    let by_label =
        String::from_utf8(predict(dir.path(), &out, &split_csv, &[&root[..], &["--csv-columns", "path,label"]].concat()).stdout).unwrap();
    let accuracy_of = |text: &str, against: &str| text.split(against).nth(1).map(|rest| rest.lines().next().unwrap_or("").to_string());
    let folder_accuracy = accuracy_of(&by_folder, "Against the class folders the images sit in");
    assert!(
        folder_accuracy.is_some() && folder_accuracy == accuracy_of(&by_label, "Against the CSV's label column"),
        "{by_folder}\n{by_label}"
    );

    // A folder, its images two levels down (not in class folders: no accuracy), gets the same
    // probabilities image for image; --backbone names the other fine-tuned one.
    let nested = dir.path().join("new scans");
    std::fs::create_dir_all(nested.join("ward a/day 1")).unwrap();
    for path in &test {
        std::fs::copy(images.join(path), nested.join("ward a/day 1").join(path.replace('/', "-"))).unwrap();
    }
    let output = predict(dir.path(), &out, &nested, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && !stdout.contains("Against the class folders"), "{stdout}");
    let from_folder = read_csv(&out.join("predictions.csv"));
    for row in &rows {
        let copied = format!("ward a/day 1/{}", row["path"].replace('/', "-"));
        let same = from_folder.iter().find(|r| r["path"] == copied).unwrap_or_else(|| panic!("{copied}: {from_folder:?}"));
        assert_eq!((&same["p_clear"], &same["p_lesion"]), (&row["p_clear"], &row["p_lesion"]));
    }
    // One image alone: the probabilities it has in the folder (to f32 rounding: a batch of one
    // takes another GEMM blocking than a batch of eight).
    let single = dir.path().join("single.csv");
    let one = &from_folder[0];
    let output = predict(dir.path(), &out, &nested.join(&one["path"]), &["--out", single.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let alone = read_csv(&single);
    assert_eq!(alone.len(), 1);
    for class in ["p_clear", "p_lesion"] {
        let (a, b): (f64, f64) = (alone[0][class].parse().unwrap(), one[class].parse().unwrap());
        assert!((a - b).abs() < 1e-5, "{class}: {a} alone, {b} in the folder");
    }
    let other = accuracies.keys().find(|name| *name != best).unwrap();
    let output = predict(dir.path(), &out, &nested, &["--backbone", other]);
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("predicted by {other}")), "{output:?}");
    // Of the decoded images of every set predicted above, the cache keeps the last set's only
    // (the nested folder's, here reused by --backbone); rank's own parts stay.
    let mut cached: Vec<String> =
        std::fs::read_dir(out.join("cache")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    cached.sort();
    let predicted_sets: Vec<&String> = cached.iter().filter(|name| name.starts_with("predict-")).collect();
    assert_eq!(predicted_sets.len(), 2, "{cached:?}");
    for part in ["train-", "val-", "test-"] {
        assert!(cached.iter().filter(|name| name.starts_with(part)).count() >= 2, "{part}: {cached:?}");
    }

    // An unreadable image (not an image; a truncated PNG) stops the run naming each, unless
    // --skip-unreadable: the others get the probabilities they have beside it, and the two are
    // listed with their errors beside the predictions. Mended, the list goes.
    let mixed = dir.path().join("incoming");
    std::fs::create_dir_all(&mixed).unwrap();
    // Both classes: the first two images by name (clear) and the last (lesion).
    for row in from_folder.iter().take(2).chain(from_folder.last()) {
        std::fs::copy(nested.join(&row["path"]), mixed.join(row["path"].rsplit('/').next().unwrap())).unwrap();
    }
    std::fs::write(mixed.join("notes.png"), b"not an image").unwrap();
    let whole = std::fs::read(nested.join(&from_folder[0]["path"])).unwrap();
    std::fs::write(mixed.join("cut.png"), &whole[..whole.len() / 2]).unwrap();
    let mixed_csv = dir.path().join("mixed.csv");
    let output = predict(dir.path(), &out, &mixed, &["--out", mixed_csv.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("2 of 5 image(s) could not be read")
            && stderr.contains("notes.png")
            && stderr.contains("cut.png")
            && stderr.contains("--skip-unreadable"),
        "{stderr}"
    );
    let output = predict(dir.path(), &out, &mixed, &["--out", mixed_csv.to_str().unwrap(), "--skip-unreadable"]);
    let listing = dir.path().join("mixed-unreadable.csv");
    assert!(String::from_utf8_lossy(&output.stdout).contains("2 unreadable image(s) left out"), "{output:?}");
    let predicted_mixed = read_csv(&mixed_csv);
    assert_eq!(predicted_mixed.len(), 3);
    for row in &predicted_mixed {
        let same = from_folder.iter().find(|r| r["path"].ends_with(&format!("/{}", row["path"]))).unwrap();
        // To f32 rounding: a batch of three blocks its GEMMs otherwise.
        let (a, b): (f64, f64) = (same["p_clear"].parse().unwrap(), row["p_clear"].parse().unwrap());
        assert!((a - b).abs() < 1e-5 && same["predicted"] == row["predicted"], "{same:?} {row:?}");
    }
    let unreadable = read_csv(&listing);
    let listed: Vec<&str> = unreadable.iter().map(|r| r["path"].as_str()).collect();
    assert_eq!(listed, ["cut.png", "notes.png"]);
    assert!(unreadable.iter().all(|r| r["error"].contains(&r["path"])), "{unreadable:?}");
    // The same images in a CSV with labels: measured against the readable ones' labels; a label
    // the model lacks is refused before any image is read, naming the CSV's own line.
    let class_of = |name: &str| name.split('-').next().unwrap().to_string();
    let mut lines: Vec<String> = predicted_mixed.iter().map(|r| format!("{},{}", r["path"], class_of(&r["path"]))).collect();
    lines.insert(0, "cut.png,clear".into());
    lines.insert(2, "notes.png,lesion".into());
    let labelled_mixed = dir.path().join("mixed-labelled.csv");
    std::fs::write(&labelled_mixed, format!("file,diagnosis\n{}\n", lines.join("\n"))).unwrap();
    let columns = ["--csv-columns", "file,diagnosis", "--images-root", mixed.to_str().unwrap(), "--out", mixed_csv.to_str().unwrap()];
    let output = predict(dir.path(), &out, &labelled_mixed, &[&columns[..], &["--skip-unreadable"]].concat());
    let truth: Vec<String> = predicted_mixed.iter().map(|r| class_of(&r["path"])).collect();
    let truth: Vec<&str> = truth.iter().map(String::as_str).collect();
    let predicted: Vec<&str> = predicted_mixed.iter().map(|r| r["predicted"].as_str()).collect();
    let against = format!("Against the CSV's label column: balanced accuracy {:.3}", balanced_accuracy(&truth, &predicted));
    assert!(output.status.success() && String::from_utf8_lossy(&output.stdout).contains(&against), "{against}: {output:?}");
    std::fs::write(&labelled_mixed, format!("file,diagnosis\n{}\n{},nevus\n", lines.join("\n"), predicted_mixed[0]["path"])).unwrap();
    let output = predict(dir.path(), &out, &labelled_mixed, &columns);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("line 7: label \"nevus\" is not one of the model's classes"), "{stderr}");
    std::fs::remove_file(mixed.join("notes.png")).unwrap();
    std::fs::remove_file(mixed.join("cut.png")).unwrap();
    assert!(predict(dir.path(), &out, &mixed, &["--out", mixed_csv.to_str().unwrap()]).status.success());
    assert!(!listing.exists());

    // export: each fine-tuned model as a PyTorch state dict timm loads strictly. Its tensors are
    // those of timm's own state dict (the fixture, written by timm), same names, shapes and
    // dtypes, num_batches_tracked included, but the head's, which has 2 classes where timm's
    // has 10; the classes are in the metadata.
    for backbone in accuracies.keys() {
        let exported = dir.path().join(format!("{backbone}-export.safetensors"));
        let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .current_dir(dir.path())
            .args(["export", "--ranking", out.to_str().unwrap(), "--backbone", backbone, "--out", exported.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("model.load_state_dict(load_file("), "{output:?}");
        let (ours, metadata) = safetensors_header(&exported);
        let (timm, _) = safetensors_header(&Path::new(FIXTURES).join(format!("{backbone}.safetensors")));
        assert_eq!(ours.keys().collect::<Vec<_>>(), timm.keys().collect::<Vec<_>>(), "{backbone}");
        let head = if backbone == "vit_min" { "head." } else { "fc." };
        for (name, (dtype, shape)) in &timm {
            let expected = if name.starts_with(head) { [&[2][..], &shape[1..]].concat() } else { shape.clone() };
            assert_eq!(ours[name], (dtype.clone(), expected), "{backbone}: {name}");
        }
        assert_eq!(metadata["medxfer.classes"], "[\"clear\",\"lesion\"]");
        let card: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("models").join(format!("{backbone}.json"))).unwrap()).unwrap();
        let preprocessing: serde_json::Value = serde_json::from_str(&metadata["medxfer.preprocessing"]).unwrap();
        for key in ["resize", "crop", "mean", "std", "temperature", "dicom_frame", "reorient", "volume", "adjacent_slices"] {
            assert_eq!(preprocessing[key], card[key], "{backbone}: {key}");
        }
        assert_eq!((&preprocessing["dicom_frame"], &preprocessing["reorient"]), (&"only".into(), &"stored".into()));
        assert_eq!(preprocessing["dicom_where"], serde_json::json!([]));
    }

    // What it cannot do, refused with the fix.
    let output = predict(dir.path(), &dir.path().join("nowhere"), &nested, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("nowhere: no such folder; give the --out folder of `cargo xtask rank"), "{stderr}");
    let output = predict(dir.path(), &out, &nested, &["--backbone", "densenet_min"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("--backbone densenet_min: not fine-tuned") && stderr.contains(best.as_str()),
        "{stderr}"
    );
    let no_path = dir.path().join("names.csv");
    std::fs::write(&no_path, "file\nclear/00.png\n").unwrap();
    let output = predict(dir.path(), &out, &no_path, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("the header is `file`; expected a column named path"), "{stderr}");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("models").join(format!("{best}.json"))).unwrap()).unwrap();
    std::fs::remove_file(out.join(card["checkpoint"].as_str().unwrap())).unwrap();
    let output = predict(dir.path(), &out, &nested, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("fine-tuned model is not there") && stderr.contains("--finetune-top K"),
        "{stderr}"
    );

    // A shorter shortlist tuned later leaves only its own card: the earlier ones would be taken
    // for this ranking's.
    // The best's kept model is gone (removed above): its card, if it is the one tuned, says so
    // in place of a temperature, and rank still writes the ranking.
    let output = rank(
        dir.path(),
        &images,
        &out,
        None,
        &[&two[..], &["--finetune-top", "1", "--trials", "2", "--epochs", "2", "--batch", "8"]].concat(),
    );
    let cards: Vec<_> = std::fs::read_dir(out.join("models")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(cards.len(), 1);
    let card: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cards[0]).unwrap()).unwrap();
    if card["backbone"] == best.as_str() {
        let because = card["uncalibrated_because"].as_str().unwrap_or_default();
        assert!(card["temperature"].is_null() && because.contains("its kept model could not be read"), "{card}");
        assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("warning: {best}: no calibration")), "{output:?}");
    }
}

/// A candidate of the same weights, architecture and normalisation as an earlier one (one file
/// under two names) is left out, said on stderr and in ranking.md: it would tie with it under
/// every score. With another normalisation its features differ, and it is ranked.
#[test]
fn the_same_model_under_two_names_is_ranked_once() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let (models, weights) = (dir.path().join("models"), dir.path().join("weights"));
    let entry = std::fs::read_to_string(models.join("resnet_basic_min.toml")).unwrap();
    for (name, toml) in [
        ("resnet_twin", entry.replace("resnet_basic_min", "resnet_twin")),
        (
            "resnet_other_norm",
            entry.replace("resnet_basic_min", "resnet_other_norm").replace("mean = [0.485, 0.456, 0.406]", "mean = [0.5, 0.5, 0.5]"),
        ),
    ] {
        assert_ne!(toml, entry);
        std::fs::write(models.join(format!("{name}.toml")), toml).unwrap();
        std::fs::copy(weights.join("resnet_basic_min.safetensors"), weights.join(format!("{name}.safetensors"))).unwrap();
    }
    let images = image_folder(dir.path(), 6);
    let out = dir.path().join("out");
    let output = rank(dir.path(), &images, &out, None, &["--backbones", "resnet_basic_min,resnet_twin,resnet_other_norm,vit_min"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("resnet_twin: the same weights, architecture and normalisation as resnet_basic_min: left out"), "{stderr}");
    let ranked: std::collections::BTreeSet<String> =
        read_csv(&out.join("ranking.csv")).into_iter().map(|r| r["backbone"].clone()).collect();
    assert_eq!(ranked, ["resnet_basic_min", "resnet_other_norm", "vit_min"].map(String::from).into());
    let ranking_md = std::fs::read_to_string(out.join("ranking.md")).unwrap();
    assert!(
        ranking_md.contains("Left out as the same model as a candidate above") && ranking_md.contains("resnet_twin (as resnet_basic_min)"),
        "{ranking_md}"
    );
}
