#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `cargo xtask reproduce` end to end on a small demo (three backbones, two trials of one
//! epoch): every file of the results contract, each number checked against what the test
//! recomputes from the lower-level files; a rerun that does nothing; a run killed halfway and
//! resumed, and three concurrent shards plus a final pass, that both end with the same tables as
//! one uninterrupted process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BACKBONES: &str = "tiny_resnet_basic,tiny_densenet_b,tiny_vit_b";
const TASKS: [&str; 3] = ["skin", "breast", "brain"];
const TRIALS: usize = 2;

fn xtask() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
}

/// The demo's arguments for `out`, sharing one pretrained-backbone cache and one data folder.
fn demo_args(shared: &Path, out: &Path) -> Vec<String> {
    [
        "reproduce",
        "--demo",
        "--backbones",
        BACKBONES,
        "--trials",
        &TRIALS.to_string(),
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--demo-cache",
        shared.join("cache").to_str().unwrap(),
        "--data",
        shared.join("data").to_str().unwrap(),
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn check(output: Output) -> Output {
    assert!(output.status.success(), "failed:\n{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    output
}

/// One uninterrupted run, shared by the tests (the first test to need it makes it).
fn reference() -> &'static (PathBuf, PathBuf) {
    static RUN: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let shared = tempfile::tempdir().unwrap().keep();
        let out = shared.join("single");
        check(xtask().args(demo_args(&shared, &out)).output().unwrap());
        (shared, out)
    })
}

fn read_csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    reader.deserialize().map(|r| r.unwrap()).collect()
}

fn number(row: &BTreeMap<String, String>, column: &str) -> f64 {
    row[column].parse().unwrap_or_else(|_| panic!("{column} = {:?}", row[column]))
}

/// Tensors of a safetensors file as f64 vectors with their shapes.
fn tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => data.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap()))).collect(),
                safetensors::Dtype::I64 => data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
                other => panic!("{name}: unexpected {other:?}"),
            };
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// Mean per-class recall, counted by hand.
fn balanced_accuracy(truth: &[usize], predicted: &[usize]) -> f64 {
    let mut per_class: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for (&t, &p) in truth.iter().zip(predicted) {
        let entry = per_class.entry(t).or_default();
        entry.0 += usize::from(t == p);
        entry.1 += 1;
    }
    per_class.values().map(|(hit, all)| *hit as f64 / *all as f64).sum::<f64>() / per_class.len() as f64
}

/// Kendall's tau-b from its definition: (concordant - discordant) / sqrt((n0 - n1)(n0 - n2)).
fn tau_b(x: &[f64], y: &[f64]) -> Option<f64> {
    let (mut s, mut tx, mut ty, mut n0) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..x.len() {
        for j in i + 1..x.len() {
            n0 += 1;
            let (dx, dy) =
                ((x[i] - x[j]).signum() as i64 * i64::from(x[i] != x[j]), (y[i] - y[j]).signum() as i64 * i64::from(y[i] != y[j]));
            s += dx * dy;
            tx += i64::from(dx == 0);
            ty += i64::from(dy == 0);
        }
    }
    let denominator = (((n0 - tx) * (n0 - ty)) as f64).sqrt();
    (denominator > 0.0).then(|| s as f64 / denominator)
}

#[test]
fn the_demo_writes_every_result_and_each_number_agrees_with_its_source() {
    let (_, out) = reference();
    for file in [
        "scores.csv",
        "performance.csv",
        "table2.csv",
        "table2.md",
        "fig3.svg",
        "fig3.png",
        "fig3_ood.svg",
        "fig3_ood.png",
        "report.md",
        "study.json",
        "reproduce.log",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    for task in TASKS {
        for part in ["train", "val", "test", "ood"] {
            let rows = read_csv(&out.join(format!("splits/{task}/{part}.csv")));
            assert!(!rows.is_empty(), "{task} {part} is empty");
        }
    }
    let scores = read_csv(&out.join("scores.csv"));
    let performance = read_csv(&out.join("performance.csv"));
    let backbones: Vec<&str> = BACKBONES.split(',').collect();
    let paper = ["h_score", "nce", "leep", "n_leep", "logme", "reg_h_score", "gbc"];
    let of_the_paper = scores.iter().filter(|r| paper.contains(&r["metric"].as_str())).count();
    assert_eq!(of_the_paper, TASKS.len() * 2 * backbones.len() * 7, "one row per task, setting, backbone and paper score");
    // Every newer per-model score too, or the reason it could not be computed in the unit's file.
    for task in TASKS {
        for backbone in &backbones {
            for setting in ["id", "ood"] {
                let unit: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(out.join(format!("features/{task}/{backbone}/{setting}.scores.json"))).unwrap())
                        .unwrap();
                for metric in ["transrate", "transrate_official", "sfda", "pactran_dir", "pactran_gam", "pactran_gauss"] {
                    let row = scores
                        .iter()
                        .find(|r| r["task"] == task && r["setting"] == setting && r["backbone"] == *backbone && r["metric"] == metric);
                    assert!(row.is_some() || unit["errors"][metric].is_string(), "{task} {backbone} {setting} {metric}: {unit}");
                }
            }
        }
    }
    assert_eq!(performance.len(), TASKS.len() * 2 * backbones.len());

    for task in TASKS {
        let train_labels: Vec<f64> = read_csv(&out.join(format!("splits/{task}/train.csv"))).iter().map(|r| number(r, "label")).collect();
        let ood_labels: Vec<f64> = read_csv(&out.join(format!("splits/{task}/ood.csv"))).iter().map(|r| number(r, "label")).collect();
        for backbone in &backbones {
            // The pretrained feature file covers the train split in manifest order; the demo's
            // source head has 16 classes.
            let id = tensors(&out.join(format!("features/{task}/{backbone}/id.safetensors")));
            assert_eq!(id["labels"].1, train_labels);
            assert_eq!(id["probs"].0, [train_labels.len(), 16]);

            // A_opt: the best validation balanced accuracy, ties by validation loss, then index.
            let outcomes: Vec<serde_json::Value> = (0..TRIALS)
                .map(|t| {
                    serde_json::from_slice(&std::fs::read(out.join(format!("runs/{task}/{backbone}/trial-{t:03}/outcome.json"))).unwrap())
                        .unwrap()
                })
                .collect();
            let best = (0..TRIALS)
                .min_by(|&a, &b| {
                    let key = |t: usize| {
                        (-outcomes[t]["best"]["val_balanced_accuracy"].as_f64().unwrap(), outcomes[t]["best"]["val_loss"].as_f64().unwrap())
                    };
                    key(a).partial_cmp(&key(b)).unwrap().then(a.cmp(&b))
                })
                .unwrap();
            let row = |setting: &str| {
                performance.iter().find(|r| r["task"] == task && r["setting"] == setting && r["backbone"] == *backbone).unwrap()
            };
            let id_row = row("id");
            assert_eq!(number(id_row, "trial") as usize, best);
            assert_eq!(number(id_row, "test_balanced_accuracy"), outcomes[best]["test"]["balanced_accuracy"].as_f64().unwrap());
            assert_eq!(number(id_row, "lr"), outcomes[best]["learning_rate"].as_f64().unwrap());

            // P_ood: A_opt's own head on the OOD set, its argmax against the labels.
            let ood = tensors(&out.join(format!("features/{task}/{backbone}/ood.safetensors")));
            assert_eq!(ood["labels"].1, ood_labels);
            let classes = ood["probs"].0[1];
            assert_eq!(classes, if task == "brain" { 4 } else { 2 });
            let predicted: Vec<usize> = ood["probs"]
                .1
                .chunks_exact(classes)
                .map(|p| (0..classes).fold(0, |best, c| if p[c] > p[best] { c } else { best }))
                .collect();
            let truth: Vec<usize> = ood_labels.iter().map(|&l| l as usize).collect();
            let ood_row = row("ood");
            assert!((number(ood_row, "test_balanced_accuracy") - balanced_accuracy(&truth, &predicted)).abs() < 1e-12);
            assert_eq!(number(ood_row, "trial") as usize, best);
        }
    }

    // Table 2: tau-b recomputed from the two tables.
    let table = read_csv(&out.join("table2.csv"));
    assert_eq!(table.iter().filter(|r| r["scope"] == "paper").count(), TASKS.len() * 2 * 7);
    assert!(table.iter().any(|r| r["scope"] == "beyond"), "the newer scores are in Table 2");
    for row in &table {
        // PACTran's bounds (lower is better) are negated before the correlation.
        let sign = if row["metric"].starts_with("pactran") { -1.0 } else { 1.0 };
        let (x, y): (Vec<f64>, Vec<f64>) = backbones
            .iter()
            .map(|b| {
                let score = scores
                    .iter()
                    .find(|s| {
                        s["task"] == row["task"] && s["setting"] == row["setting"] && s["backbone"] == *b && s["metric"] == row["metric"]
                    })
                    .unwrap();
                let accuracy =
                    performance.iter().find(|p| p["task"] == row["task"] && p["setting"] == row["setting"] && p["backbone"] == *b).unwrap();
                (sign * number(score, "value"), number(accuracy, "test_balanced_accuracy"))
            })
            .unzip();
        assert_eq!(number(row, "n") as usize, backbones.len());
        match tau_b(&x, &y) {
            Some(tau) => assert!((number(row, "tau_b") - tau).abs() < 1e-12, "{row:?}: expected {tau}"),
            None => assert_eq!(row["tau_b"], "", "{row:?}: undefined"),
        }
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("**Demo data.**") && report.contains("trials 2 instead of the reference's 75"), "{report}");
}

/// image-bootstrap on a copy of the demo study: each score on the full images is the one
/// reproduce wrote to scores.csv, its interval holds values of that score, the same seed gives
/// the same files, and the report then carries the intervals and Fig. 3's error bars.
#[test]
fn the_image_bootstrap_recomputes_the_study_s_scores_and_the_report_shows_them() {
    let (_, reference_out) = reference();
    let (dir, out) = copy_of_reference();
    let command = || {
        let mut command = xtask();
        command.args(["image-bootstrap", "--results", out.to_str().unwrap(), "--resamples", "12", "--metrics", "h_score,leep,pactran_dir"]);
        command
    };
    let run = || String::from_utf8(check(command().output().unwrap()).stderr).unwrap();
    run();
    let first = std::fs::read(out.join("image_bootstrap_scores.csv")).unwrap();
    // tau-b's intervals without the time each resample took.
    let taus_but_time = || {
        let mut rows = read_csv(&out.join("image_bootstrap_tau.csv"));
        rows.iter_mut().for_each(|row| _ = row.remove("seconds_per_resample"));
        rows
    };
    let first_taus = taus_but_time();
    // Each (task, setting) is kept as it finishes: the same command again takes every one.
    let cells = out.join("image_bootstrap");
    let again = run();
    assert_eq!(again.matches("resampled before with these settings").count(), TASKS.len() * 2, "{again}");
    assert_eq!(std::fs::read(out.join("image_bootstrap_scores.csv")).unwrap(), first);
    std::fs::remove_dir_all(&cells).unwrap();
    run();
    assert_eq!(std::fs::read(out.join("image_bootstrap_scores.csv")).unwrap(), first, "the same seed, the same draws");
    assert_eq!(taus_but_time(), first_taus);
    // Killed after its first cell (and before writing the files), a rerun resamples only the
    // others, and the files are the uninterrupted run's.
    std::fs::remove_dir_all(&cells).unwrap();
    for file in ["image_bootstrap_scores.csv", "image_bootstrap_tau.csv"] {
        std::fs::remove_file(out.join(file)).unwrap();
    }
    let mut child = command().stderr(Stdio::null()).spawn().unwrap();
    let done =
        || std::fs::read_dir(&cells).map(|d| d.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json")).count());
    while done().unwrap_or(0) == 0 {
        assert!(child.try_wait().unwrap().is_none(), "image-bootstrap ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = done().unwrap();
    assert!(kept < TASKS.len() * 2 && !out.join("image_bootstrap_scores.csv").exists(), "killed after {kept} cells");
    let resumed = run();
    assert_eq!(resumed.matches("resampled before with these settings").count(), kept, "{resumed}");
    assert_eq!(std::fs::read(out.join("image_bootstrap_scores.csv")).unwrap(), first);
    assert_eq!(taus_but_time(), first_taus);
    let intervals = read_csv(&out.join("image_bootstrap_scores.csv"));
    let scores = read_csv(&out.join("scores.csv"));
    assert_eq!(intervals.len(), TASKS.len() * 2 * BACKBONES.split(',').count() * 3);
    for row in &intervals {
        let stored = scores
            .iter()
            .find(|s| {
                s["task"] == row["task"]
                    && s["setting"] == row["setting"]
                    && s["backbone"] == row["backbone"]
                    && s["metric"] == row["metric"]
            })
            .unwrap();
        let (value, expected) = (number(row, "value"), number(stored, "value"));
        assert!((value - expected).abs() <= 1e-9 * expected.abs().max(1.0), "{row:?}: {expected}");
        assert!(number(row, "low") <= number(row, "high"), "{row:?}");
    }
    let taus = read_csv(&out.join("image_bootstrap_tau.csv"));
    assert_eq!(taus.len(), TASKS.len() * 2 * 3);
    // Each draw took a group of the split (a patient, a lesion) with all its images: each row
    // says how many images and groups, as the split's CSV of the part has them.
    let mut drawn = BTreeMap::new();
    for tau in &taus {
        let part = if tau["setting"] == "id" { "train" } else { "ood" };
        let split = read_csv(&out.join("splits").join(&tau["task"]).join(format!("{part}.csv")));
        let groups: std::collections::BTreeSet<&str> = split.iter().map(|r| r["group"].as_str()).collect();
        assert_eq!((tau["images"].parse().unwrap(), tau["groups"].parse().unwrap()), (split.len(), groups.len()), "{tau:?}");
        drawn.insert(format!("| {} · {} | {} |", tau["task"], tau["setting"], tau["metric"]), (split.len(), groups.len()));
    }
    assert!(drawn.values().any(|(images, groups)| groups < images), "the demo's breast patients hold several images each: {drawn:?}");
    check(xtask().args(["report", "--results", out.to_str().unwrap()]).output().unwrap());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## How much comes from the sample of images") && report.contains("| brain · id | leep |"), "{report}");
    // Score intervals wholly on one side of the full-image score (a resample's repeated images
    // move some scores) are counted in the report, as the intervals file has them.
    let one_sided = intervals.iter().filter(|r| number(r, "value") < number(r, "low") || number(r, "value") > number(r, "high")).count();
    let said = format!("{one_sided} of {} score intervals lie wholly on one side", intervals.len());
    assert_eq!(report.contains(&said), one_sided > 0, "{said}: {report}");
    assert_eq!(report.contains("lie wholly on one side"), one_sided > 0, "{report}");
    for (row, (images, groups)) in &drawn {
        let said = if groups < images { format!("| {groups} groups of {images} images |") } else { format!("| {images} images |") };
        assert!(report.lines().any(|l| l.starts_with(row.as_str()) && l.contains(&said)), "{row} {said}: {report}");
    }
    let svg = std::fs::read_to_string(out.join("fig3.svg")).unwrap();
    let reference_svg = std::fs::read_to_string(reference_out.join("fig3.svg")).unwrap();
    assert!(svg.len() > reference_svg.len(), "error bars drawn");

    // Bias-corrected, over the same draws (the same seed and groups), each cell is resampled
    // again and each score interval moves the way its resamples lie off the value: down where
    // the percentile interval lay wholly above it, up where below; the tau-b file and the report
    // say how the intervals were read.
    let mut corrected_command = command();
    let stderr = String::from_utf8(check(corrected_command.args(["--interval", "bias-corrected"]).output().unwrap()).stderr).unwrap();
    assert!(!stderr.contains("resampled before"), "{stderr}");
    let corrected = read_csv(&out.join("image_bootstrap_scores.csv"));
    assert_eq!(corrected.len(), intervals.len());
    let mut moved = 0;
    for (percentile, corrected) in intervals.iter().zip(&corrected) {
        let key = |row: &BTreeMap<String, String>| ["task", "setting", "metric", "backbone", "value"].map(|c| row[c].clone());
        assert_eq!(key(percentile), key(corrected));
        let (value, low, high) = (number(percentile, "value"), number(percentile, "low"), number(percentile, "high"));
        let (corrected_low, corrected_high) = (number(corrected, "low"), number(corrected, "high"));
        if value < low {
            assert!(corrected_low <= low && corrected_high <= high, "{percentile:?} {corrected:?}");
        } else if value > high {
            assert!(corrected_low >= low && corrected_high >= high, "{percentile:?} {corrected:?}");
        }
        moved += usize::from((value < low || value > high) && (corrected_low, corrected_high) != (low, high));
    }
    assert!(moved > 0, "some one-sided interval moved: {corrected:?}");
    assert!(read_csv(&out.join("image_bootstrap_tau.csv")).iter().all(|r| r["interval"] == "bias-corrected"));
    check(xtask().args(["report", "--results", out.to_str().unwrap()]).output().unwrap());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("each 95% interval bias-corrected (`--interval bias-corrected`"), "{report}");
    // Back to percentile intervals, the same as before (but for the time each resample took).
    run();
    assert_eq!(read_csv(&out.join("image_bootstrap_scores.csv")), intervals);
    let taus = read_csv(&out.join("image_bootstrap_tau.csv"));
    assert!(taus.iter().all(|r| r["interval"] == "percentile"), "{taus:?}");

    // A score added later joins the intervals already there, which stay as they were (named
    // twice, it is computed once: its rows twice would be refused by `report`).
    let bootstrap = |args: &[&str]| xtask().args(["image-bootstrap", "--results", out.to_str().unwrap()]).args(args).output().unwrap();
    check(bootstrap(&["--resamples", "12", "--metrics", "gbc,gbc"]));
    let merged = read_csv(&out.join("image_bootstrap_scores.csv"));
    assert_eq!(merged.len(), intervals.len() / 3 * 4);
    let without_gbc: Vec<_> = merged.iter().filter(|r| r["metric"] != "gbc").cloned().collect();
    assert_eq!(without_gbc, intervals, "the earlier intervals kept, in their order");
    let merged_taus = read_csv(&out.join("image_bootstrap_tau.csv"));
    assert_eq!(merged_taus.iter().filter(|r| r["metric"] != "gbc").cloned().collect::<Vec<_>>(), taus);
    assert_eq!(merged_taus.iter().filter(|r| r["metric"] == "gbc").count(), TASKS.len() * 2);
    // No resamples, or a damaged earlier file, is refused before any work and changes nothing.
    let kept = std::fs::read(out.join("image_bootstrap_scores.csv")).unwrap();
    let output = bootstrap(&["--resamples", "0"]);
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("--resamples 0"));
    let kept_taus = std::fs::read(out.join("image_bootstrap_tau.csv")).unwrap();
    std::fs::write(out.join("image_bootstrap_tau.csv"), "task,setting\n").unwrap();
    let output = bootstrap(&["--resamples", "12", "--metrics", "gbc"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("image_bootstrap_tau.csv") && stderr.contains("start afresh"), "{stderr}");
    assert_eq!(std::fs::read(out.join("image_bootstrap_scores.csv")).unwrap(), kept);
    std::fs::write(out.join("image_bootstrap_tau.csv"), kept_taus).unwrap();

    // Intervals of another study state are not shown as this one's: with a backbone's accuracies
    // gone (Table 2 then has one backbone fewer), each tau-b interval over images is marked
    // stale, and a score interval around another value than scores.csv's is left out.
    check(bootstrap(&["--resamples", "12", "--metrics", "h_score,leep,pactran_dir,gbc"]));
    let dropped = BACKBONES.split(',').next().unwrap();
    let performance = std::fs::read_to_string(out.join("performance.csv")).unwrap();
    let fewer: String = performance.lines().filter(|l| !l.contains(&format!(",{dropped},"))).map(|l| format!("{l}\n")).collect();
    assert!(fewer.len() < performance.len());
    std::fs::write(out.join("performance.csv"), fewer).unwrap();
    let output = check(xtask().args(["report", "--results", out.to_str().unwrap()]).output().unwrap());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("score interval"), "per-model scores did not change");
    // The backbone's scores, now without accuracies, are named as in no correlation.
    let unmatched = TASKS.len() * 2;
    assert!(stderr.contains(&format!("warning: {unmatched} row(s) of one file have no counterpart")), "{stderr}");
    assert!(stderr.contains(&format!("{} id {dropped}: not in performance.csv", TASKS[0])), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let table = read_csv(&out.join("table2.csv"));
    let defined = table.iter().filter(|r| !r["tau_b"].is_empty()).count();
    let (cells, undefined) = (table.len(), table.len() - defined);
    // Two backbones left: a tie in either column leaves a cell undefined.
    let counted = match undefined {
        0 => format!("{defined} of {cells} correlations defined;"),
        _ => format!("{defined} of {cells} correlations defined ({undefined} undefined: fewer than two backbones, or every value equal)"),
    };
    assert!(stdout.contains(&counted), "{counted}: {stdout}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let stale = format!("stale: over {} backbones, the table has {}", BACKBONES.split(',').count(), BACKBONES.split(',').count() - 1);
    let image_rows: Vec<&str> = report.lines().filter(|l| l.starts_with("| brain · id |") && l.contains("leep")).collect();
    assert!(!image_rows.is_empty() && image_rows.iter().all(|l| l.contains(&stale)), "{image_rows:?}");
    std::fs::write(out.join("performance.csv"), performance).unwrap();
    let scores_text = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    let (line, rest) = scores_text.split_once('\n').unwrap();
    let changed_row = rest.lines().position(|l| l.contains(",h_score,")).unwrap();
    let changed: String = std::iter::once(line.to_string())
        .chain(
            rest.lines()
                .enumerate()
                .map(|(i, l)| if i == changed_row { format!("{},12345", l.rsplit_once(',').unwrap().0) } else { l.to_string() }),
        )
        .map(|l| l + "\n")
        .collect();
    std::fs::write(out.join("scores.csv"), changed).unwrap();
    let output = check(xtask().args(["report", "--results", out.to_str().unwrap()]).output().unwrap());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("warning: 1 score interval(s)"), "{stderr}");

    // Drawn image by image, each cell is resampled again (the draws are others), every image
    // its own group, and where patients hold several images the score intervals differ.
    let score_intervals = |task: &str| -> Vec<(String, String)> {
        let rows = read_csv(&out.join("image_bootstrap_scores.csv"));
        rows.iter()
            .filter(|r| r["task"] == task && r["setting"] == "id" && r["metric"] == "h_score")
            .map(|r| (r["low"].clone(), r["high"].clone()))
            .collect()
    };
    // The task whose patients hold the most images each.
    let several =
        drawn.iter().filter(|(row, _)| row.contains(" · id | h_score")).min_by_key(|(_, (images, groups))| groups * 1000 / images).unwrap();
    let task = several.0.trim_start_matches("| ").split(' ').next().unwrap().to_string();
    let grouped = score_intervals(&task);
    let four = ["--resamples", "12", "--metrics", "h_score,leep,pactran_dir,gbc"];
    let stderr = String::from_utf8(check(bootstrap(&[&four[..], &["--resample-by", "images"]].concat())).stderr).unwrap();
    assert!(!stderr.contains("resampled before"), "{stderr}");
    let by_images = read_csv(&out.join("image_bootstrap_tau.csv"));
    assert!(by_images.iter().all(|r| r["groups"] == r["images"]), "{by_images:?}");
    let (intervals_by_images, backbones) = (score_intervals(&task), BACKBONES.split(',').count());
    assert_eq!((grouped.len(), intervals_by_images.len()), (backbones, backbones), "{task}");
    assert!(grouped.iter().zip(&intervals_by_images).all(|(g, i)| g != i), "{task} {several:?}: {grouped:?} {intervals_by_images:?}");
    // A tau-b file written before the interval was a choice is read as percentile intervals,
    // and one written before the images and groups were recorded says nothing of what was drawn.
    let text = std::fs::read_to_string(out.join("image_bootstrap_tau.csv")).unwrap();
    let without =
        |columns: usize| -> String { text.lines().map(|l| format!("{}\n", l.rsplitn(columns + 1, ',').nth(columns).unwrap())).collect() };
    std::fs::write(out.join("image_bootstrap_tau.csv"), without(1)).unwrap();
    check(xtask().args(["report", "--results", out.to_str().unwrap()]).output().unwrap());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("each 95% interval the resamples' 2.5% and 97.5% quantiles (image_bootstrap_tau.csv"), "{report}");
    let older = without(3);
    assert!(older.starts_with("task,setting,metric,n,resamples,low,high,seconds_per_resample\n"), "{older}");
    std::fs::write(out.join("image_bootstrap_tau.csv"), older).unwrap();
    check(xtask().args(["report", "--results", out.to_str().unwrap()]).output().unwrap());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let rows: Vec<&str> = report.lines().filter(|l| drawn.keys().any(|row| l.starts_with(row.as_str()))).collect();
    assert_eq!(rows.len(), drawn.len(), "{report}");
    assert!(rows.iter().all(|l| l.split('|').nth(6) == Some(" – ")), "{rows:?}");
    // Without the study's splits/ (the CSVs and features copied alone), drawing groups is
    // refused with the fix; drawing images needs no split.
    std::fs::rename(out.join("splits"), dir.path().join("splits-away")).unwrap();
    let output = bootstrap(&four);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("copy the study's splits/ folder too, or pass --resample-by images"), "{stderr}");
    check(bootstrap(&[&four[..], &["--resample-by", "images"]].concat()));
    std::fs::rename(dir.path().join("splits-away"), out.join("splits")).unwrap();
    // A split whose labels are not the features' (edited, or another study's) is refused, naming
    // the line.
    let train_csv = out.join("splits").join(&task).join("train.csv");
    let kept_split = std::fs::read_to_string(&train_csv).unwrap();
    let mut lines: Vec<String> = kept_split.lines().map(String::from).collect();
    let mut fields: Vec<String> = lines[1].split(',').map(String::from).collect();
    fields[1] = if fields[1] == "0" { "1".into() } else { "0".into() };
    lines[1] = fields.join(",");
    std::fs::write(&train_csv, lines.join("\n") + "\n").unwrap();
    let output = bootstrap(&["--resamples", "5", "--metrics", "h_score"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("train.csv: line 2 has label") && stderr.contains("another split"), "{stderr}");
    std::fs::write(&train_csv, kept_split).unwrap();

    // A backbone's feature file gone: the others are resampled, with a warning. The study's CSV
    // files without its features/ folder (copied from another machine): refused, naming what is
    // missing; it used to write no interval and say it had.
    let held_back = out.join("features").join(TASKS[0]).join(BACKBONES.split(',').next().unwrap()).join("id.safetensors");
    std::fs::rename(&held_back, dir.path().join("held-back.safetensors")).unwrap();
    let stderr = String::from_utf8(check(bootstrap(&["--resamples", "2", "--metrics", "h_score"])).stderr).unwrap();
    let count = BACKBONES.split(',').count();
    assert!(stderr.contains(&format!("warning: {} id: 1 of {count} backbones have no feature file", TASKS[0])), "{stderr}");
    std::fs::remove_dir_all(out.join("features")).unwrap();
    let kept = std::fs::read(out.join("image_bootstrap_scores.csv")).unwrap();
    let output = bootstrap(&["--resamples", "2", "--metrics", "h_score"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("no task has the feature files of two backbones") && stderr.contains("features/"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(out.join("image_bootstrap_scores.csv")).unwrap(), kept, "nothing written");
}

#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    // `cargo xtask reproduce --plan | head -3`: the reader goes before the plan is written. It
    // panicked ("failed printing to stdout: Broken pipe"); --plan starts and writes nothing.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let output = medxfer_cli::output_with_stdout_closed(xtask().env("MEDXFER_CACHE", dir.path().join("cache")).args([
        "reproduce".as_ref(),
        "--demo".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
        "--plan".as_ref(),
    ]))
    .unwrap();
    assert_eq!(output.status.code(), Some(i32::from(medxfer_cli::CLOSED_OUTPUT_STATUS)), "{output:?}");
    assert!(output.stderr.is_empty(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!out.exists());
}

#[test]
fn a_finished_study_reruns_without_training_and_plans_nothing() {
    let (shared, out) = reference();
    let log_before = std::fs::read_to_string(out.join("reproduce.log")).unwrap();
    let checkpoint = out.join("runs/brain/tiny_vit_b/trial-001/best.safetensors");
    let modified = std::fs::metadata(&checkpoint).unwrap().modified().unwrap();
    let scores = std::fs::read(out.join("scores.csv")).unwrap();
    check(xtask().args(demo_args(shared, out)).output().unwrap());
    assert_eq!(std::fs::metadata(&checkpoint).unwrap().modified().unwrap(), modified);
    assert_eq!(std::fs::read(out.join("scores.csv")).unwrap(), scores);
    let log_after = std::fs::read_to_string(out.join("reproduce.log")).unwrap();
    let new_lines: Vec<&str> = log_after[log_before.len()..].lines().collect();
    assert_eq!(new_lines.len(), 1, "a rerun only reports: {new_lines:?}");
    assert!(new_lines[0].contains("report: 9 of 9 units complete"), "{new_lines:?}");

    let mut args = demo_args(shared, out);
    args.push("--plan".into());
    let plan = String::from_utf8(check(xtask().args(&args).output().unwrap()).stdout).unwrap();
    assert!(plan.contains("0 trial(s) and 0 epoch(s) left"), "{plan}");
    assert_eq!(plan.lines().filter(|l| l.contains(" done ") && l.ends_with(" 0 s")).count(), 9, "{plan}");
}

/// A rerun naming fewer tasks or backbones than the folder holds writes the tables over those
/// alone, and says so, naming the others and the fix (the full tables were replaced unsaid).
#[test]
fn a_rerun_over_fewer_backbones_says_its_tables_cover_only_those() {
    let (shared, _) = reference();
    let (_dir, out) = copy_of_reference();
    let args = with_option(demo_args(shared, &out), "--backbones", "tiny_resnet_basic,tiny_vit_b");
    let output = check(xtask().args(&args).output().unwrap());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("also holds results of --backbones tiny_densenet_b, which this run does not name"), "{stderr}");
    let backbones: std::collections::BTreeSet<String> =
        read_csv(&out.join("performance.csv")).into_iter().map(|row| row["backbone"].clone()).collect();
    assert_eq!(backbones.len(), 2, "the tables are this run's: {backbones:?}");
    let mut args = demo_args(shared, &out);
    args.extend(["--tasks", "breast"].map(String::from));
    let stderr = String::from_utf8_lossy(&check(xtask().args(&args).output().unwrap()).stderr).into_owned();
    assert!(stderr.contains("also holds results of --tasks brain,skin, which"), "{stderr}");
    // Named again, all of them: the full tables, and no warning.
    let output = check(xtask().args(demo_args(shared, &out)).output().unwrap());
    assert!(!String::from_utf8_lossy(&output.stderr).contains("also holds"));
    assert_eq!(read_csv(&out.join("performance.csv")).len(), 18);
}

/// A feature file lost or damaged since (a disk, a hand) is extracted and scored again by the
/// next run, to the byte: the unit was called complete without it, and image-bootstrap, which
/// reads it, said to run the extraction again, which nothing did.
#[test]
fn a_lost_or_damaged_feature_file_is_made_again() {
    let (shared, reference_out) = reference();
    let (_dir, out) = copy_of_reference();
    let (lost, damaged) = ("features/skin/tiny_vit_b/id.safetensors", "features/brain/tiny_resnet_basic/ood.safetensors");
    std::fs::remove_file(out.join(lost)).unwrap();
    let bytes = std::fs::read(out.join(damaged)).unwrap();
    std::fs::write(out.join(damaged), &bytes[..bytes.len() / 2]).unwrap();
    // --plan shows them to do (it said done).
    let plan = String::from_utf8(check(xtask().args(demo_args(shared, &out)).arg("--plan").output().unwrap()).stdout).unwrap();
    let row = |task: &str, backbone: &str| {
        plan.lines().find(|l| l.split_whitespace().take(2).eq([task, backbone])).unwrap_or_else(|| panic!("{plan}")).to_string()
    };
    // task, backbone, S_id, trials, epochs left, OOD, ...
    let columns = |task: &str, backbone: &str| row(task, backbone).split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!((columns("skin", "tiny_vit_b")[2].as_str(), columns("skin", "tiny_vit_b")[6].as_str()), ("to", "done"), "{plan}");
    assert_eq!(
        (columns("brain", "tiny_resnet_basic")[2].as_str(), columns("brain", "tiny_resnet_basic")[5].as_str()),
        ("done", "to"),
        "{plan}"
    );
    let stderr = String::from_utf8(check(xtask().args(demo_args(shared, &out)).output().unwrap()).stderr).unwrap();
    assert!(
        stderr.contains("skin tiny_vit_b: id features missing") && stderr.contains("brain tiny_resnet_basic: ood features damaged"),
        "{stderr}"
    );
    for file in [lost, damaged] {
        assert!(std::fs::read(out.join(file)).unwrap() == std::fs::read(reference_out.join(file)).unwrap(), "{file} differs");
    }
    assert_eq!(results_of(&out), results_of(reference_out));
    // Whole again: the next run leaves them be.
    let stderr = String::from_utf8(check(xtask().args(demo_args(shared, &out)).output().unwrap()).stderr).unwrap();
    assert!(!stderr.contains("extracted and scored again"), "{stderr}");
}

/// The tables a run ends with, and the trial results (outcome.json) it left.
fn results_of(out: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let read = |name: &str| std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{}: {e}", out.join(name).display()));
    (read("scores.csv"), read("performance.csv"), read("table2.csv"))
}

#[test]
fn a_killed_study_resumes_to_the_same_tables() {
    let (shared, single) = reference();
    let out = shared.join("killed");
    let mut child = xtask().args(demo_args(shared, &out)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Kill it once the second task's searches have begun.
    let start = Instant::now();
    while !out.join("runs/breast").exists() {
        assert!(start.elapsed() < Duration::from_secs(300), "the study never reached the breast task");
        assert!(child.try_wait().unwrap().is_none(), "the study ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.join("scores.csv").exists(), "killed before the tables");
    check(xtask().args(demo_args(shared, &out)).output().unwrap());
    assert_eq!(results_of(&out), results_of(single));
}

#[test]
fn three_concurrent_shards_and_a_final_pass_equal_one_process() {
    let (shared, single) = reference();
    let out = shared.join("sharded");
    let children: Vec<_> = (0..3)
        .map(|i| {
            let mut args = demo_args(shared, &out);
            args.extend(["--shard".to_string(), format!("{i}/3")]);
            xtask().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(|c| check(c.wait_with_output().unwrap())).collect();
    for output in &outputs {
        assert!(String::from_utf8_lossy(&output.stdout).contains("without --shard"), "a shard tells how to finish");
    }
    assert!(!out.join("report.md").exists(), "shards leave the report to the final pass");
    // Every trial's first (and only) epoch ran exactly once across the three workers.
    let epochs: usize =
        outputs.iter().map(|o| String::from_utf8_lossy(&o.stderr).lines().filter(|l| l.contains("epoch   1 ")).count()).sum();
    assert_eq!(epochs, TASKS.len() * 3 * TRIALS);
    let log = std::fs::read_to_string(out.join("reproduce.log")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("pretrained features")).count(), 9, "each unit extracted once:\n{log}");
    check(xtask().args(demo_args(shared, &out)).output().unwrap());
    assert_eq!(results_of(&out), results_of(single));
}

/// `--keep-going`: a unit that fails (here its backbone's weights are missing, as from a gated hub
/// repository whose terms were not accepted) is named at the end and the other units run, the
/// report covering them; a rerun once mended finishes the study to the uninterrupted run's
/// tables. Without it a `--weights` folder without a backbone's file is refused before any work
/// (the study stopped at that backbone's first unit).
#[test]
fn keep_going_runs_the_other_units_and_a_rerun_finishes_the_study() {
    let (shared, single) = reference();
    let weights = shared.join("keep-going-weights");
    copy_tree(&shared.join("cache/weights"), &weights);
    let (held_back, aside) = (weights.join("tiny_vit_b.safetensors"), shared.join("tiny_vit_b.aside"));
    std::fs::rename(&held_back, &aside).unwrap();
    let out = shared.join("keep-going");
    let args = [demo_args(shared, &out), vec!["--weights".into(), weights.to_str().unwrap().into()]].concat();
    let output = xtask().args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let missing = format!("--weights {}: no {}", weights.display(), held_back.display());
    assert!(!output.status.success() && stderr.contains(&missing), "{stderr}");
    assert!(!out.join("runs").exists(), "the study started");

    let output = xtask().args(&args).arg("--keep-going").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("3 failed (the rest ran"), "{stderr}");
    assert!(stderr.contains(&format!("warning: {missing}")), "{stderr}");
    for task in TASKS {
        assert!(stderr.contains(&format!("  {task} · tiny_vit_b: ")), "{task}: {stderr}");
    }
    let performance = read_csv(&out.join("performance.csv"));
    assert_eq!(performance.len(), TASKS.len() * 2 * 2, "the two other backbones of every task, ID and OOD");
    assert!(performance.iter().all(|r| r["backbone"] != "tiny_vit_b"));
    assert!(out.join("report.md").exists());
    let log = std::fs::read_to_string(out.join("reproduce.log")).unwrap();
    assert_eq!(log.lines().filter(|l| l.split_once(' ').is_some_and(|(_, text)| text.starts_with("failed: "))).count(), 3, "{log}");

    std::fs::rename(&aside, &held_back).unwrap();
    check(xtask().args(&args).output().unwrap());
    assert_eq!(results_of(&out), results_of(single));
}

#[test]
fn missing_data_is_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let output = xtask()
        .args([
            "reproduce",
            "--data",
            dir.path().join("nowhere").to_str().unwrap(),
            "--tasks",
            "breast",
            "--backbones",
            "resnet18,resnet34",
        ])
        .args(["--out", dir.path().join("out").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Every missing folder at once, before any work (each task found its own on reaching it).
    for missing in ["nowhere/breakhis (task breast's ID set)", "nowhere/bach (task breast's OOD set)"] {
        assert!(stderr.contains(missing) && stderr.contains("--data"), "{missing}: {stderr}");
    }
    assert!(!dir.path().join("out").exists(), "refused before writing");
    // An --out inside a dataset's folder (its figures were read as BreakHis images next time),
    // however it is spelled.
    let data = dir.path().join("data");
    for name in ["breakhis", "bach"] {
        std::fs::create_dir_all(data.join(name)).unwrap();
    }
    for out in [data.join("bach/results"), data.join("breakhis/../bach/./results"), data.join("bach")] {
        let output = xtask()
            .args(["reproduce".as_ref(), "--data".as_ref(), data.as_os_str(), "--tasks".as_ref(), "breast".as_ref()])
            .args(["--backbones", "resnet18,resnet34"])
            .args(["--out".as_ref(), out.as_os_str()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let expected = format!("is inside the dataset folder {}", data.join("bach").display());
        assert!(!output.status.success() && stderr.contains(&expected), "{}: {stderr}", out.display());
    }
    assert_eq!(std::fs::read_dir(data.join("bach")).unwrap().count(), 0, "refused before writing");
    // A dataset folder named as its download names it (BreakHis, not breakhis) is pointed at.
    let renamed = dir.path().join("renamed");
    std::fs::create_dir_all(renamed.join("BreakHis")).unwrap();
    std::fs::create_dir_all(renamed.join("bach")).unwrap();
    let output = xtask()
        .args(["reproduce".as_ref(), "--data".as_ref(), renamed.as_os_str(), "--tasks".as_ref(), "breast".as_ref()])
        .args(["--backbones", "resnet18,resnet34", "--out", dir.path().join("out").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected =
        format!("no folder {} (task breast's ID set; BreakHis is there: rename it breakhis)", renamed.join("breakhis").display());
    assert!(!output.status.success() && stderr.contains(&expected), "{stderr}");
    let output = xtask().args(["reproduce", "--splits", "authors", "--out", dir.path().join("out").to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected faithful, grouped or authors:DIR"));
}

/// Also trained with class weights (one study for both options, as CI's time is counted): each
/// trial records them, and the report lists both deviations.
#[test]
fn a_halving_study_chooses_a_opt_among_the_last_rung_and_says_so() {
    let (shared, _) = reference();
    let out = shared.join("halving");
    let mut args = demo_args(shared, &out);
    let trials = args.iter().position(|a| a == "--trials").unwrap();
    args[trials + 1] = "4".into();
    let epochs = args.iter().position(|a| a == "--epochs").unwrap();
    args[epochs + 1] = "2".into();
    args.extend(["--halving", "2", "--halving-min-epochs", "1", "--class-weights", "balanced", "--sampler", "balanced"].map(String::from));
    check(xtask().args(&args).output().unwrap());
    let performance = read_csv(&out.join("performance.csv"));
    assert_eq!(performance.len(), 18);
    for row in performance.iter().filter(|r| r["setting"] == "id") {
        let search: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("runs/{}/{}/search.json", row["task"], row["backbone"]))).unwrap())
                .unwrap();
        // Rungs: 4 trials to epoch 1, the best 2 to epoch 2; 6 of 8 epochs trained.
        let last: Vec<u64> = search["rungs"][1]["trials"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
        assert_eq!((last.len(), search["epochs_trained"].as_u64(), search["epochs_full_search"].as_u64()), (2, Some(6), Some(8)));
        let trial = number(row, "trial") as u64;
        assert!(last.contains(&trial), "A_opt {trial} is not a finalist {last:?}");
        assert_eq!(search["search"]["best"]["index"].as_u64(), Some(trial));
        let run = out.join(format!("runs/{}/{}/trial-{trial:03}/run-settings.json", row["task"], row["backbone"]));
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&run).unwrap()).unwrap();
        assert_eq!((&record["class_weights"], &record["sampler"]), (&"balanced".into(), &"balanced".into()), "{}", run.display());
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("successive halving (eta 2, first rung 1 epochs)"), "{report}");
    assert!(report.contains("class-weighted cross-entropy (--class-weights balanced)"), "{report}");
    assert!(report.contains("class-balanced sampling (--sampler balanced)"), "{report}");
}

/// The reference study copied into a fresh temporary folder (kept alive by the first value).
fn copy_of_reference() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy");
    copy_tree(&reference().1, &out);
    (dir, out)
}

/// A copy of a results folder (files only; the copy is what a user would move elsewhere).
fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from).into_iter().map(Result::unwrap) {
        let target = to.join(entry.path().strip_prefix(from).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn with_option(mut args: Vec<String>, option: &str, value: &str) -> Vec<String> {
    match args.iter().position(|a| a == option) {
        Some(i) => args[i + 1] = value.into(),
        None => args.extend([option.to_string(), value.to_string()]),
    }
    args
}

fn refused(args: &[String]) -> String {
    let output = xtask().args(args).output().unwrap();
    assert!(!output.status.success(), "not refused: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_change_of_settings_is_refused_by_name_and_extend_grows_the_searches() {
    let (shared, single) = reference();
    let out = shared.join("extended");
    copy_tree(single, &out);
    let before = results_of(&out);
    let args = demo_args(shared, &out);

    // Every setting that shapes a result, changed: refused before any work, naming it and the fix.
    for (option, value, setting) in [
        ("--epochs", "4", "epochs: made with 1, this run asks for 4"),
        ("--batch", "16", "batch: made with 32, this run asks for 16"),
        ("--seed", "3", "--seed"),
        ("--crop", "28", "crop: made with 32, this run asks for 28"),
        ("--resize", "40", "resize: made with 36, this run asks for 40"),
        ("--patience", "2", "patience: made with none, this run asks for 2"),
        ("--class-weights", "balanced", "class_weights: made with none, this run asks for balanced"),
        ("--sampler", "balanced", "sampler: made with shuffle, this run asks for balanced"),
        ("--select", "val-balanced-accuracy", "selection: made with ValLoss"),
        ("--splits", "grouped", "--splits"),
        ("--dtype", "f16", "dtype: made with f32, this run asks for f16"),
    ] {
        let message = refused(&with_option(args.clone(), option, value));
        assert!(message.contains(setting), "{option} {value}: {message}");
        assert!(message.contains("new --out") || message.contains("another --out"), "{option}: {message}");
    }
    // A backbone's models/ entry edited since (another [architecture] over the same weights, which
    // their checksum cannot tell): refused, naming it. The same entries from another folder are
    // the same backbones: the plan has nothing to refuse.
    let models = shared.join("edited-models");
    copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/models"), &models);
    let mut edited = args.clone();
    edited.extend(["--models".to_string(), models.to_str().unwrap().to_string()]);
    let plan = String::from_utf8(check(xtask().args(&edited).arg("--plan").output().unwrap()).stdout).unwrap();
    assert!(!plan.contains("would refuse"), "{plan}");
    let vit = models.join("tiny_vit_b.toml");
    let toml = std::fs::read_to_string(&vit).unwrap();
    assert_eq!(toml.matches("num_heads = 2").count(), 1);
    std::fs::write(&vit, toml.replace("num_heads = 2", "num_heads = 4")).unwrap();
    let message = refused(&edited);
    let said = ["architecture: num_heads: made with 2, the entry now gives 4 (", "tiny_vit_b", "restore its [architecture]"];
    assert!(said.iter().all(|s| message.contains(s)), "{message}");
    assert!(!message.contains("tiny_resnet_basic"), "only the edited entry: {message}");
    // Halving with a first rung of 4 epochs in a study of 1 would stop nothing: refused as such
    // before the record is compared.
    let message = refused(&with_option(args.clone(), "--halving", "2"));
    assert!(message.contains("--halving-min-epochs 4 is not below --epochs 1"), "{message}");
    let mut fix_std = args.clone();
    fix_std.push("--fix-std".into());
    assert!(refused(&fix_std).contains("normalization: made with mean"));
    let message = refused(&with_option(args.clone(), "--trials", "3"));
    assert!(message.contains("trials: made with 2, this run asks for 3") && message.contains("--extend"), "{message}");
    assert_eq!(results_of(&out), before, "a refused run changes nothing");
    // --plan says so without refusing.
    let mut plan = with_option(args.clone(), "--epochs", "4");
    plan.push("--plan".into());
    let plan = String::from_utf8(check(xtask().args(&plan).output().unwrap()).stdout).unwrap();
    assert!(plan.contains("settings recorded in") && plan.contains("epochs 1") && plan.contains("would refuse"), "{plan}");

    // --extend: one more Halton point per search; A_opt over three trials, OOD redone where it moved.
    let mut extend = with_option(args.clone(), "--trials", "3");
    extend.push("--extend".into());
    let run = check(xtask().args(&extend).output().unwrap());
    let epochs = String::from_utf8_lossy(&run.stderr).lines().filter(|l| l.contains("epoch   1 ")).count();
    assert_eq!(epochs, TASKS.len() * 3, "only the new trial of each search trains");
    for row in read_csv(&out.join("performance.csv")) {
        let dir = out.join(format!("runs/{}/{}", row["task"], row["backbone"]));
        let settings: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("settings.json")).unwrap()).unwrap();
        assert_eq!(settings["settings"]["trials"], "3");
        // A_opt recomputed from the three outcomes: best val balanced accuracy, then val loss.
        let outcomes: Vec<serde_json::Value> = (0..3)
            .map(|t| serde_json::from_slice(&std::fs::read(dir.join(format!("trial-{t:03}/outcome.json"))).unwrap()).unwrap())
            .collect();
        let key = |o: &serde_json::Value| (o["best"]["val_balanced_accuracy"].as_f64().unwrap(), -o["best"]["val_loss"].as_f64().unwrap());
        let best = (0..3).fold(0, |b, t| if key(&outcomes[t]) > key(&outcomes[b]) { t } else { b });
        assert_eq!(number(&row, "trial") as usize, best, "{row:?}");
        let ood: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join(format!("features/{}/{}/ood.scores.json", row["task"], row["backbone"]))).unwrap(),
        )
        .unwrap();
        assert_eq!(ood["trial"].as_u64(), Some(best as u64), "the OOD step follows A_opt");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Settings recorded with the results") && report.contains("trials 3"), "{report}");

    // The weights are the unit's identity: other bytes under a backbone's name are refused...
    let weights = shared.join("cache/weights");
    let swapped = shared.join("swapped-weights");
    copy_tree(&weights, &swapped);
    let mut with_weights = with_option(with_option(args.clone(), "--trials", "3"), "--weights", swapped.to_str().unwrap());
    check(xtask().args(&with_weights).output().unwrap());
    std::fs::copy(weights.join("tiny_densenet_b.safetensors"), swapped.join("tiny_vit_b.safetensors")).unwrap();
    let message = refused(&with_weights);
    assert!(message.contains("tiny_vit_b") && message.contains("other weights") && message.contains("blake3:"), "{message}");
    // ... and the same bytes found elsewhere are the same weights.
    with_weights = with_option(with_weights, "--weights", weights.to_str().unwrap());
    check(xtask().args(&with_weights).output().unwrap());
}

#[test]
fn half_precision_pretrained_features_are_recorded_listed_and_close_to_f32_ones() {
    let (shared, single) = reference();
    let out = shared.join("half");
    copy_tree(single, &out);
    // Every feature made anew, the searches kept: the pretrained ones in f16, the OOD ones in f32.
    std::fs::remove_dir_all(out.join("features")).unwrap();
    let args = with_option(demo_args(shared, &out), "--dtype", "f16");
    let run = check(xtask().args(&args).output().unwrap());
    assert!(!String::from_utf8_lossy(&run.stderr).contains("epoch   1 "), "nothing trains again");
    for task in TASKS {
        for backbone in BACKBONES.split(',') {
            let dir = format!("features/{task}/{backbone}");
            let record: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(&dir).join("settings.json")).unwrap()).unwrap();
            assert_eq!(record["settings"]["dtype"], "f16", "{dir}");
            let (half, full) = (tensors(&out.join(&dir).join("id.safetensors")), tensors(&single.join(&dir).join("id.safetensors")));
            let (half, full) = (&half["features"].1, &full["features"].1);
            let scale = full.iter().fold(0f64, |m, v| m.max(v.abs()));
            let error = half.iter().zip(full).fold(0f64, |m, (h, f)| m.max((h - f).abs()));
            // f16 keeps 11 significant bits: rounded, so not equal, but within a few of its ulps.
            assert!(error > 0.0 && error <= 1e-2 * scale, "{dir}: max error {error} at scale {scale}");
            assert_eq!(
                tensors(&out.join(&dir).join("ood.safetensors")),
                tensors(&single.join(&dir).join("ood.safetensors")),
                "{dir}: the fine-tuned model's OOD features stay f32"
            );
        }
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("pretrained features extracted in f16 (--dtype f16)"), "{report}");
    // The record holds: a rerun in f32 is refused, naming the option that continues.
    let message = refused(&demo_args(shared, &out));
    assert!(message.contains("dtype: made with f16, this run asks for f32") && message.contains("--dtype f16"), "{message}");
}

/// A hub cache holding only `config.json` of `repo` (HF_HOME/hub/models--org--name/...).
fn fake_hub_config(home: &Path, repo: &str, config: &str) {
    let folder = home.join("hub").join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs/main"), "0123abcd").unwrap();
    let snapshot = folder.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(snapshot.join("config.json"), config).unwrap();
}

#[test]
fn two_checkpoints_of_one_architecture_keep_their_own_folders_and_rows() {
    let (shared, _) = reference();
    let out = shared.join("two-checkpoints");
    // A hub id whose timm config.json describes the demo's tiny ResNet architecture.
    let home = shared.join("hf-home");
    let repo = "someone/resnet18.tiny_demo";
    fake_hub_config(
        &home,
        repo,
        r#"{"architecture": "resnet18", "model_args": {"layers": [1, 1, 1, 1], "channels": [64, 16, 32, 64]}, "num_classes": 16,
            "num_features": 64, "pretrained_cfg": {"input_size": [3, 32, 32], "crop_pct": 0.8889, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}}"#,
    );
    // Its weights: another checkpoint of the same architecture (the demo's, its head's bias
    // moved, so the two checkpoints' source probabilities and scores differ).
    let weights = shared.join("two-weights");
    copy_tree(&shared.join("cache/weights"), &weights);
    let mut tensors = candle_core::safetensors::load(weights.join("tiny_resnet_basic.safetensors"), &candle_core::Device::Cpu).unwrap();
    let bias = tensors["fc.bias"].clone();
    tensors.insert("fc.bias".into(), (bias + 0.25).unwrap());
    candle_core::safetensors::save(&tensors, weights.join("someone--resnet18.tiny_demo.safetensors")).unwrap();
    let mut args = with_option(demo_args(shared, &out), "--backbones", &format!("tiny_resnet_basic,{repo}"));
    args = with_option(with_option(args, "--tasks", "breast"), "--trials", "1");
    args = with_option(args, "--weights", weights.to_str().unwrap());
    check(xtask().args(&args).env("HF_HOME", &home).env("HF_HUB_OFFLINE", "1").output().unwrap());
    let backbones: std::collections::BTreeSet<String> =
        read_csv(&out.join("performance.csv")).into_iter().map(|r| r["backbone"].clone()).collect();
    assert_eq!(backbones.into_iter().collect::<Vec<_>>(), [repo.to_string(), "tiny_resnet_basic".to_string()]);
    for folder in
        ["features/breast/tiny_resnet_basic", "features/breast/someone--resnet18.tiny_demo", "runs/breast/someone--resnet18.tiny_demo"]
    {
        assert!(out.join(folder).join("settings.json").exists(), "{folder}");
    }
    let checksum = |folder: &str| {
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(folder).join("settings.json")).unwrap()).unwrap();
        record["settings"]["weights"].as_str().unwrap().to_string()
    };
    assert_ne!(checksum("features/breast/tiny_resnet_basic"), checksum("features/breast/someone--resnet18.tiny_demo"));
    let scores = read_csv(&out.join("scores.csv"));
    let leep = |backbone: &str| {
        scores.iter().find(|r| r["backbone"] == backbone && r["metric"] == "leep" && r["setting"] == "id").unwrap()["value"].clone()
    };
    assert_ne!(leep("tiny_resnet_basic"), leep(repo), "each checkpoint scored from its own features");
}

#[test]
fn sizes_from_the_command_line_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    for (sizes, expected) in [
        (["--crop", "0", "--resize", "256"], "the crop is 0"),
        (["--crop", "224", "--resize", "100"], "the resize (100) is smaller than the crop (224)"),
        (["--crop", "224", "--resize", "4000000"], "the resize is 4000000"),
    ] {
        let output = xtask().args(["reproduce", "--out", out.to_str().unwrap()]).args(sizes).output().unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--resize/--crop") && stderr.contains(expected), "{stderr}");
        assert!(!out.exists(), "nothing written");
    }
    let output = xtask().args(["rank", "--images", dir.path().to_str().unwrap(), "--crop", "0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("the crop is 0"));
    // So is a budget no run can train with (it would stop the study at its first search, after
    // the extraction), in the demo too, before its pretraining.
    let demo_cache = dir.path().join("demo-cache");
    for (budget, expected) in [
        (&["--epochs", "0"][..], "--epochs 0: a run needs at least 1 epoch"),
        (&["--batch", "0"], "--batch 0"),
        (&["--trials", "0"], "--trials 0: a search needs at least 1 trial"),
        (&["--patience", "0"], "--patience 0"),
        (&["--halving", "1"], "eta must be at least 2"),
        (&["--halving", "3", "--halving-min-epochs", "0"], "the first rung at least 1 epoch"),
        (&["--demo", "--demo-cache", demo_cache.to_str().unwrap(), "--trials", "0"], "--trials 0"),
    ] {
        let output = xtask().args(["reproduce", "--out", out.to_str().unwrap()]).args(budget).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{budget:?}: {stderr}");
        assert!(!out.exists() && !demo_cache.exists(), "nothing written");
    }
    // So is a precision the device cannot run.
    let output = xtask().args(["reproduce", "--out", out.to_str().unwrap(), "--dtype", "bf16"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--dtype bf16 needs a GPU") && stderr.contains("--dtype f16"), "{stderr}");
    assert!(!out.exists(), "nothing written");
    // And GPU arithmetic on the CPU, which would change nothing.
    for gpu in [&["--precision", "tf32"][..], &["--matmul-tf32"], &["--conv-algorithms", "benchmark"]] {
        let output = xtask().args(["reproduce", "--out", out.to_str().unwrap()]).args(gpu).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(gpu[0]) && stderr.contains("--device cuda:N"), "{gpu:?}: {stderr}");
        assert!(!out.exists(), "nothing written");
    }
    // And a device this build cannot open, before the demo's pretraining (it came after).
    let mut devices = vec![("gpu", "expected cpu, cuda or cuda:N")];
    if !cfg!(feature = "cuda") {
        devices.push(("cuda:0", "built without CUDA"));
    }
    for (device, expected) in devices {
        let demo = ["--demo", "--demo-cache", demo_cache.to_str().unwrap(), "--device", device];
        let output = xtask().args(["reproduce", "--out", out.to_str().unwrap()]).args(demo).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{device}: {stderr}");
        assert!(!out.exists() && !demo_cache.exists(), "{device}: pretrained or wrote");
    }
    // And the authors' split CSVs that are not there (found on reaching the task, after the
    // demo's pretraining).
    let authors = dir.path().join("authors");
    std::fs::create_dir_all(authors.join("brain")).unwrap();
    let missing_folder = format!("authors:{}", dir.path().join("no-such-folder").display());
    let missing_task = format!("authors:{}", authors.display());
    for (splits, expected) in
        [(missing_folder.as_str(), "no-such-folder: no such folder"), (missing_task.as_str(), "task brain's CSVs go in")]
    {
        let demo = ["--demo", "--demo-cache", demo_cache.to_str().unwrap(), "--tasks", "brain", "--splits", splits];
        let output = xtask().args(["reproduce", "--out", out.to_str().unwrap()]).args(demo).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{splits}: {stderr}");
        assert!(!out.exists() && !demo_cache.exists(), "{splits}: pretrained or wrote");
    }
}

#[test]
fn two_studies_starting_on_an_empty_demo_cache_pretrain_each_backbone_once() {
    let (shared, _) = reference();
    let fresh = shared.join("fresh-cache");
    let children: Vec<_> = (0..2)
        .map(|i| {
            let mut args = demo_args(shared, &shared.join(format!("racing-{i}")));
            args = with_option(args, "--demo-cache", fresh.to_str().unwrap());
            args = with_option(with_option(args, "--tasks", "brain"), "--trials", "1");
            xtask().args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let stderr: String =
        children.into_iter().map(|c| String::from_utf8_lossy(&check(c.wait_with_output().unwrap()).stderr).into_owned()).collect();
    let pretrained: Vec<&str> = stderr.lines().filter(|l| l.starts_with("demo: pretrained")).collect();
    assert_eq!(pretrained.len(), 3, "each backbone pretrained once: {pretrained:?}");
    // And both studies used the same weights.
    let weights = |i: usize| -> Vec<String> {
        std::fs::read_dir(shared.join(format!("racing-{i}/runs/brain")))
            .unwrap()
            .map(|e| {
                let record: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(e.unwrap().path().join("settings.json")).unwrap()).unwrap();
                record["settings"]["weights"].as_str().unwrap().to_string()
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    assert_eq!(weights(0), weights(1));
}
