//! The `medxfer-zoo` binary end to end.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use candle_core::{Device, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn zoo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_medxfer-zoo")).args(args).output().unwrap()
}

#[test]
fn list_shows_the_ten_backbones_with_timms_parameter_counts() {
    let output = zoo(&["list"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let study: Vec<&str> = text.lines().skip(2).take_while(|l| !l.starts_with('#')).collect();
    assert_eq!(study.len(), 10, "{text}");
    // The foundation models follow as a group, with timm's counts (full_size.json).
    assert!(text.contains("# group foundation"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("virchow2 ") && l.contains("631239424") && l.contains("2560")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("resnet50 ") && l.contains("25557032") && l.contains("timm/resnet50.a1_in1k")), "{text}");
}

/// UNI's layout (a ViT published without a classifier), small: the registry entry of
/// `fixtures/vit/uni_like.safetensors`.
const TINY_UNI: &str = include_str!("fixtures/vit/uni_like.toml");

const TINY_ENTRY: &str = r#"name = "resnet_basic_min"
paper_name = "test"
hub = "timm/resnet_basic_min.test"
feature_dim = 32
head = "fc"
num_classes = 10

[architecture]
family = "resnet"
block = "basic"
layers = [1, 1, 1, 1]
channels = [64, 8, 16, 32]

[preprocessing]
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
resize = 72
crop = 64
interpolation = "bilinear"
"#;

#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    // `medxfer-zoo list | head -3`: the reader goes before the table is written. It panicked
    // ("failed printing to stdout: Broken pipe", exit 101).
    let output = medxfer_cli::output_with_stdout_closed(Command::new(env!("CARGO_BIN_EXE_medxfer-zoo")).arg("list")).unwrap();
    assert_eq!(output.status.code(), Some(i32::from(medxfer_cli::CLOSED_OUTPUT_STATUS)), "{output:?}");
    assert!(output.stderr.is_empty(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn run_writes_timms_features_and_logits() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY_ENTRY).unwrap();
    let out = dir.path().join("out.safetensors");
    let weights = fixtures().join("resnet_basic_min.safetensors");
    let input = fixtures().join("resnet_basic_min_ref.safetensors");
    let models = dir.path().to_str().unwrap();
    let output = zoo(&[
        "--models",
        models,
        "run",
        "--model",
        "resnet_basic_min",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let ours = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let reference = candle_core::safetensors::load(&input, &Device::Cpu).unwrap();
    for key in ["features", "logits"] {
        let difference = common::max_abs_difference(&ours[key], &reference[key]);
        assert!(difference < 1e-4, "{key}: {difference}");
    }

    let output = zoo(&["--models", models, "inspect", "resnet_basic_min", "--weights", weights.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && text.contains("parameters: 107802") && text.contains("every model tensor present"), "{text}");

    let output = zoo(&[
        "--models",
        models,
        "run",
        "--model",
        "resnet_basic_min",
        "--weights",
        "/nonexistent.safetensors",
        "--input",
        "x",
        "--output",
        "y",
    ]);
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && message.contains("/nonexistent.safetensors") && !message.contains("panicked"), "{message}");

    // Grey images and a missing batch dimension are refused naming the file and the shape
    // expected (a grey batch reached the stem's kernel and panicked).
    for shape in [vec![2usize, 1, 32, 32], vec![3, 32, 32]] {
        let bad = dir.path().join("bad.safetensors");
        let zeros = Tensor::zeros(shape.as_slice(), candle_core::DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&std::collections::HashMap::from([("input".to_string(), zeros)]), &bad).unwrap();
        let args = ["--models", models, "run", "--model", "resnet_basic_min", "--weights", weights.to_str().unwrap()];
        let output = zoo(&[&args[..], &["--input", bad.to_str().unwrap(), "--output", out.to_str().unwrap()]].concat());
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && message.contains("bad.safetensors") && message.contains("B x 3 x H x W"),
            "{shape:?}: {message}"
        );
    }
    // A NaN in the input is refused, naming where (it went through to every feature and logit,
    // unsaid); pixels in 0..255 that were never normalised are warned of, the run goes on.
    let reference = candle_core::safetensors::load(&input, &Device::Cpu).unwrap();
    let good = reference["input"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let dims = reference["input"].dims().to_vec();
    for (position, value, refused) in [(good.len() - 5, f32::NAN, true), (7, 254.0, false)] {
        let mut values = good.clone();
        values[position] = value;
        let bad = dir.path().join("odd.safetensors");
        let tensor = Tensor::from_vec(values, dims.as_slice(), &Device::Cpu).unwrap();
        candle_core::safetensors::save(&std::collections::HashMap::from([("input".to_string(), tensor)]), &bad).unwrap();
        let args = ["--models", models, "run", "--model", "resnet_basic_min", "--weights", weights.to_str().unwrap()];
        let output = zoo(&[&args[..], &["--input", bad.to_str().unwrap(), "--output", out.to_str().unwrap()]].concat());
        let message = String::from_utf8_lossy(&output.stderr);
        let per_image = good.len() / dims[0];
        if refused {
            let at = format!("'input' holds NaN (image {}, value {} of {per_image})", position / per_image, position % per_image);
            assert!(!output.status.success() && message.contains(&at), "{message}");
        } else {
            assert!(
                output.status.success() && message.contains("'input' reaches 254") && message.contains("pixels in 0..255?"),
                "{message}"
            );
        }
    }
    // The outputs written over the weights or the inputs are refused, and those kept (the
    // weights file became the features). On copies: the fixtures are committed.
    let (weights, input) = (dir.path().join("weights.safetensors"), dir.path().join("input.safetensors"));
    std::fs::copy(fixtures().join("resnet_basic_min.safetensors"), &weights).unwrap();
    std::fs::copy(fixtures().join("resnet_basic_min_ref.safetensors"), &input).unwrap();
    let (kept_weights, kept_input) = (std::fs::read(&weights).unwrap(), std::fs::read(&input).unwrap());
    for (over, option) in [(&weights, "--weights"), (&input, "--input")] {
        let args = ["--models", models, "run", "--model", "resnet_basic_min", "--weights", weights.to_str().unwrap()];
        let output = zoo(&[&args[..], &["--input", input.to_str().unwrap(), "--output", over.to_str().unwrap()]].concat());
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && message.contains(&format!("is the {option} file")), "{option}: {message}");
    }
    assert_eq!((std::fs::read(&weights).unwrap(), std::fs::read(&input).unwrap()), (kept_weights, kept_input));
}

#[test]
fn classify_preprocesses_as_torchvision_and_ranks_as_timm() {
    let reference = candle_core::safetensors::load(fixtures().join("classify_ref.safetensors"), &Device::Cpu).unwrap();
    let preprocessing = medxfer_zoo::Preprocessing {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        resize: 72,
        crop: 64,
        interpolation: "bilinear".into(),
    };
    // fast_image_resize and PIL round differently by at most a grey level here and there.
    let ours = medxfer_zoo::eval_tensor(&fixtures().join("classify.png"), &preprocessing, &Device::Cpu).unwrap();
    let difference = (&ours - &reference["input"]).unwrap().abs().unwrap();
    let worst = common::max_abs(&difference);
    let mean = difference.mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(worst <= 2.5 / 255.0 / 0.224 && mean < 0.005, "worst {worst}, mean {mean}");

    // A bicubic backbone (25 of the registry's) resizes with PIL's bicubic (Catmull-Rom); it was
    // resized bilinearly. The truth: PIL's own bicubic resize (make_classify_bicubic.py).
    let bicubic_reference = candle_core::safetensors::load(fixtures().join("classify_bicubic_ref.safetensors"), &Device::Cpu).unwrap();
    let bicubic = medxfer_zoo::Preprocessing { interpolation: "bicubic".into(), ..preprocessing.clone() };
    let ours_bicubic = medxfer_zoo::eval_tensor(&fixtures().join("classify.png"), &bicubic, &Device::Cpu).unwrap();
    let error = |a: &Tensor, b: &Tensor| {
        let difference = (a - b).unwrap().abs().unwrap();
        (common::max_abs(&difference), difference.mean_all().unwrap().to_scalar::<f32>().unwrap())
    };
    let (worst, mean) = error(&ours_bicubic, &bicubic_reference["input"]);
    let (_, mean_to_bilinear) = error(&ours_bicubic, &reference["input"]);
    assert!(
        worst <= 2.5 / 255.0 / 0.224 && mean < 0.002 && mean_to_bilinear > 3.0 * mean,
        "worst {worst}, mean {mean}, to bilinear {mean_to_bilinear}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY_ENTRY).unwrap();
    let names: Vec<String> = (0..10).map(|i| format!("class_{i}")).collect();
    std::fs::write(dir.path().join("classes.txt"), names.join("\n")).unwrap();
    let weights = fixtures().join("resnet_basic_min.safetensors");
    let image = fixtures().join("classify.png");
    // `classify MODEL` on the image with its weights and `extra` arguments.
    let classify_with = |model: &str, weights: &std::path::Path, extra: &[&str]| {
        let args = ["--models", dir.path().to_str().unwrap(), "classify", model, image.to_str().unwrap()];
        zoo(&[&args[..], &["--weights", weights.to_str().unwrap()], extra].concat())
    };
    let classify = |extra: &[&str]| classify_with("resnet_basic_min", &weights, extra);
    let output = classify(&["--classes", dir.path().join("classes.txt").to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let probs: Vec<f32> = reference["probs"].to_vec1().unwrap();
    let mut order: Vec<usize> = (0..10).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let printed: Vec<String> = text.lines().skip(1).map(|l| l.split_whitespace().last().unwrap().to_string()).collect();
    let expected: Vec<String> = order.iter().take(5).map(|i| format!("class_{i}")).collect();
    assert_eq!(printed, expected, "{text}");
    // Without --classes, a head of other than ImageNet's 1000 classes shows its indices (it
    // looked for imagenet_classes.txt in --models and failed).
    let output = classify(&[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let printed: Vec<String> = text.lines().skip(1).map(|l| l.split_whitespace().nth(1).unwrap().to_string()).collect();
    assert_eq!(printed, order.iter().take(5).map(|i| i.to_string()).collect::<Vec<_>>(), "{text}");
    assert!(text.lines().skip(1).all(|l| l.ends_with(&format!("class {}", l.split_whitespace().nth(1).unwrap()))), "{text}");
    // A --classes file of another length is refused.
    std::fs::write(dir.path().join("two.txt"), "a\nb\n").unwrap();
    let output = classify(&["--classes", dir.path().join("two.txt").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("holds 2 class names but resnet_basic_min has 10 classes"), "{stderr}");

    // A backbone published without a classifier (UNI's layout) has no classes to rank: said so,
    // where the class-name check said to pass --classes.
    std::fs::write(dir.path().join("uni_tiny.toml"), TINY_UNI).unwrap();
    let uni_weights = fixtures().join("vit/uni_like.safetensors");
    let output = classify_with("uni_tiny", &uni_weights, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("uni_tiny was published without a classifier"), "{stderr}");

    // A folder is every image in it and below it, by path (it was read as one undecodable image);
    // what is not an image, and what is hidden, is passed over; a folder without one is refused.
    let folder = dir.path().join("images");
    std::fs::create_dir_all(&folder).unwrap();
    for name in ["b.PNG", "a.png"] {
        std::fs::copy(&image, folder.join(name)).unwrap();
    }
    std::fs::write(folder.join("notes.txt"), "not an image").unwrap();
    // A Mac's AppleDouble file beside an image is no image (it stopped the folder: "cannot decode").
    std::fs::write(folder.join("._a.png"), b"\x00\x05\x16\x07").unwrap();
    std::fs::create_dir_all(folder.join("ward 2/day 1")).unwrap();
    std::fs::copy(&image, folder.join("ward 2/day 1/c.jpg.png")).unwrap();
    std::fs::create_dir_all(folder.join(".thumbnails")).unwrap();
    std::fs::write(folder.join(".thumbnails/a.png"), b"not a png").unwrap();
    let args = ["--models", dir.path().to_str().unwrap(), "classify", "resnet_basic_min", folder.to_str().unwrap()];
    let output = zoo(&[&args[..], &["--weights", weights.to_str().unwrap()]].concat());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let named: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    let nested = folder.join("ward 2/day 1/c.jpg.png");
    assert_eq!(named, [folder.join("a.png").to_str().unwrap(), folder.join("b.PNG").to_str().unwrap(), nested.to_str().unwrap()], "{text}");
    let ranked = |image: usize| {
        text.lines().skip(1 + image * 6).take(5).map(|l| l.split_whitespace().nth(1).unwrap().to_string()).collect::<Vec<_>>()
    };
    let expected: Vec<String> = order.iter().take(5).map(|i| i.to_string()).collect();
    assert_eq!([ranked(0), ranked(1), ranked(2)], [expected.clone(), expected.clone(), expected], "{text}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let output = zoo(&["--models", dir.path().to_str().unwrap(), "classify", "resnet_basic_min", empty.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("a folder without JPEG, PNG, TIFF or BMP files in it or below it"), "{stderr}");
}
