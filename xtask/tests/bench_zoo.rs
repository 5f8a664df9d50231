#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `cargo xtask bench-zoo` when one backbone's worker fails: the others are still measured and
//! reported, the report names the failure, and the command fails. A GPU is lent for minutes, and
//! one failing backbone must not cost the rest of the table.

use std::process::Command;

#[test]
fn a_failing_backbone_leaves_the_others_rows_and_fails_the_command() {
    let out = std::env::temp_dir().join(format!("medxfer-bench-zoo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bench-zoo", "--models", "no_such_backbone,resnet18", "--batch", "1", "--size", "32", "--repeats", "1"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the command succeeded with a failing backbone:\n{stderr}");
    assert!(stderr.contains("1 of 2 backbones failed"), "stderr does not count the failure:\n{stderr}");

    let report = std::fs::read_to_string(out.join("zoo.md")).unwrap();
    assert!(report.contains("| no_such_backbone | failed (below) |"), "no failed row:\n{report}");
    assert!(report.contains("- no_such_backbone: ") && report.contains("neither in the registry nor a timm name"), "{report}");
    let row = report.lines().find(|line| line.starts_with("| resnet18 |")).unwrap_or_else(|| panic!("no resnet18 row:\n{report}"));
    let rate: f64 = row.split('|').nth(2).unwrap().trim().parse().unwrap();
    assert!(rate > 0.0, "resnet18's rate: {row}");

    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("zoo.json")).unwrap()).unwrap();
    let models: Vec<&str> = raw.as_array().unwrap().iter().map(|m| m["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["resnet18"]);
    assert!(raw[0]["medxfer"]["issue_seconds"].as_f64().unwrap() > 0.0);
    // What the rates are is recorded, and `reproduce --rates` refuses eval rates as training
    // rates (the plan's hours came out about three times too few).
    assert_eq!(
        (&raw[0]["train"], &raw[0]["batch"], &raw[0]["size"], &raw[0]["device"]),
        (&false.into(), &1.into(), &32.into(), &"cpu".into())
    );
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["reproduce", "--demo", "--plan", "--rates"])
        .arg(out.join("zoo.json"))
        .arg("--out")
        .arg(out.join("study"))
        .arg("--demo-cache")
        .arg(out.join("demo-cache"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("eval rates (bench-zoo without --train)"), "{stderr}");
    std::fs::remove_dir_all(&out).unwrap();

    // A device no worker can open fails once, before any worker (each backbone's worker
    // failed on it in turn).
    let device = if cfg!(feature = "cuda") { "gpu" } else { "cuda:0" };
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bench-zoo", "--models", "resnet18,resnet34", "--device", device, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.matches(&format!("--device {device}")).count() == 1, "{stderr}");
    assert!(!stderr.contains("worker") && !out.exists(), "{stderr}");
}

/// A backbone published without a classifier (the foundation models, `num_classes = 0`): the
/// worker measures its extraction, and its training step with a fresh head as fine-tuning gives
/// it, where it used to divide by the zero classes and panic.
#[test]
fn a_headless_backbone_is_measured_in_eval_and_training() {
    let models = std::env::temp_dir().join(format!("medxfer-bench-headless-{}", std::process::id()));
    std::fs::create_dir_all(&models).unwrap();
    // A ViT as UNI's entry describes one (LayerScale, the class token), a thousandth of its size.
    let entry = r#"
name = "tiny_headless"
paper_name = "a headless ViT"
hub = "example/tiny-headless"
feature_dim = 16
head = "head"
num_classes = 0

[architecture]
family = "vit"
img_size = 32
patch_size = 16
embed_dim = 16
depth = 1
num_heads = 2
init_values = 1e-5
embedding = "class_token"

[preprocessing]
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
resize = 32
crop = 32
interpolation = "bilinear"
"#;
    std::fs::write(models.join("tiny_headless.toml"), entry).unwrap();
    for train in [false, true] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command.env("MEDXFER_MODELS", &models).args([
            "bench-zoo-worker",
            "tiny_headless",
            "--batch",
            "3",
            "--size",
            "32",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
        ]);
        if train {
            command.arg("--train");
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "train {train}: the worker failed:\n{stderr}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or_else(|| panic!("train {train}: no output; stderr:\n{stderr}"));
        let result: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(result["images_per_second"].as_f64().unwrap() > 0.0, "train {train}: {result}");
        // Training records what its graph held; extraction has no graph.
        assert_eq!(result["graph_bytes"].as_u64().is_some_and(|bytes| bytes > 0), train, "train {train}: {result}");
    }
    std::fs::remove_dir_all(&models).unwrap();
}
