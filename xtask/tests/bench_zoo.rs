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
    std::fs::remove_dir_all(&out).unwrap();
}
