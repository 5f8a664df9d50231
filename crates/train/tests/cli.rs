#![allow(clippy::unwrap_used)]
//! The medxfer-train binary end to end on a synthetic BreakHis replica and the zoo's small timm
//! ResNet (registered through MEDXFER_MODELS): split, a two-trial search, an interrupted and
//! resumed search, extraction that medxfer-scores reads, evaluation.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TINY_RESNET: &str = r#"
name = "resnet_tiny"
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
resize = 256
crop = 224
interpolation = "bilinear"
"#;

/// UNI's entry at the size of the zoo's `uni_like` fixture (timm's ViT-L layout, `num_classes` 0).
const TINY_UNI: &str = include_str!("../../zoo/tests/fixtures/vit/uni_like.toml");

fn weights() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../zoo/tests/fixtures/resnet_basic_min.safetensors").to_string()
}

/// The tiny model registered in `dir/models`, and a synthetic BreakHis replica with a faithful
/// split manifest in `dir/split`: (models, root, split, cache, entries).
fn setup(dir: &Path, per_class: usize, seed: u64) -> (PathBuf, PathBuf, PathBuf, PathBuf, Vec<medxfer_data::Entry>) {
    let (models, root, split, cache) = (dir.join("models"), dir.join("breakhis"), dir.join("split"), dir.join("cache"));
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("resnet_tiny.toml"), TINY_RESNET).unwrap();
    let catalog = medxfer_data::Catalog::load_default().unwrap();
    let spec = catalog.dataset("breakhis").unwrap();
    medxfer_data::synth::synthesize(spec, &root, per_class, seed).unwrap();
    let scan = medxfer_data::scan_dataset(spec, &root).unwrap();
    let entries = medxfer_data::faithful_split(&scan.records, &catalog.task("breast").unwrap().faithful, 0).unwrap();
    let info = medxfer_data::ManifestInfo {
        dataset: "breakhis".into(),
        task: "breast".into(),
        source: medxfer_data::Source::Faithful,
        seed: 0,
        images: entries.len(),
        counts: medxfer_data::split_counts(&entries),
        files_checksum: medxfer_data::files_checksum(&root, &entries).unwrap(),
        leakage: None,
    };
    medxfer_data::write_manifest(&split, &entries, &info).unwrap();
    (models, root, split, cache, entries)
}

fn train(models: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medxfer-train")).env("MEDXFER_MODELS", models).args(args).output().unwrap()
}

fn ok(output: &Output) -> String {
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn search_extract_and_evaluate_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (models, root, split, cache, entries) = setup(dir.path(), 6, 1);
    let search = dir.path().join("search");

    let (root_s, split_s, cache_s, search_s, weights) =
        (root.to_str().unwrap(), split.to_str().unwrap(), cache.to_str().unwrap(), search.to_str().unwrap(), weights());
    let common = [
        "--model",
        "resnet_tiny",
        "--weights",
        &weights,
        "--task",
        "breast",
        "--root",
        root_s,
        "--split",
        split_s,
        "--cache",
        cache_s,
        "--resize",
        "40",
        "--crop",
        "32",
        "--epochs",
        "2",
        "--batch",
        "8",
    ];
    let search_args = |shard: &'static str| [&["search"][..], &common, &["--trials", "2", "--shard", shard, "--out", search_s]].concat();
    // Shard 1/2 first: trial 1 only, the search is not complete.
    let stdout = ok(&train(&models, &search_args("1/2")));
    assert!(stdout.contains("1 of 2 trials finished") && !stdout.contains("A_opt"), "{stdout}");
    let stdout = ok(&train(&models, &search_args("0/2")));
    assert!(stdout.contains("2 of 2 trials finished") && stdout.contains("A_opt: trial"), "{stdout}");
    // Nothing left to do: a rerun trains nothing.
    let output = train(&models, &search_args("0/1"));
    assert!(ok(&output).contains("2 of 2 trials finished"));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("epoch "), "a finished search retrained");
    // Its summary printed into a pipe whose reader has gone (`| head` that ended): the command
    // stops quietly with the status of a process SIGPIPE ended; it panicked ("failed printing to
    // stdout: Broken pipe").
    let closed = medxfer_cli::output_with_stdout_closed(
        Command::new(env!("CARGO_BIN_EXE_medxfer-train")).env("MEDXFER_MODELS", &models).args(search_args("0/1")),
    )
    .unwrap();
    assert_eq!(closed.status.code(), Some(i32::from(medxfer_cli::CLOSED_OUTPUT_STATUS)), "{closed:?}");
    assert!(!String::from_utf8_lossy(&closed.stderr).contains("panicked"), "{closed:?}");
    // The split's manifest.csv given as --split reads as its folder; a folder without one is
    // named (it was "<root>/manifest.csv: No such file", or "Not a directory").
    let manifest_file = split.join("manifest.csv");
    let as_file: Vec<&str> =
        search_args("0/1").into_iter().map(|a| if a == split_s { manifest_file.to_str().unwrap() } else { a }).collect();
    assert!(ok(&train(&models, &as_file)).contains("2 of 2 trials finished"));
    let no_split: Vec<&str> = search_args("0/1").into_iter().map(|a| if a == split_s { root_s } else { a }).collect();
    let stderr = String::from_utf8_lossy(&train(&models, &no_split).stderr).into_owned();
    assert!(stderr.contains("no manifest.csv there; give the folder `medxfer-data split --out` wrote"), "{stderr}");
    // A shorter search over the folder reads its first trials, and says the folder holds more;
    // the full one again reads them all.
    let mut shorter = search_args("0/1");
    let trials = shorter.iter().position(|a| *a == "--trials").unwrap() + 1;
    shorter[trials] = "1";
    let stdout = ok(&train(&models, &shorter));
    assert!(stdout.contains("1 of 1 trials finished") && stdout.contains("also holds trials up to 1 of a longer search"), "{stdout}");
    assert!(stdout.contains("give --trials 2 to read them all"), "{stdout}");
    let stdout = ok(&train(&models, &search_args("0/1")));
    assert!(stdout.contains("2 of 2 trials finished") && !stdout.contains("longer search"), "{stdout}");
    // Another backbone, or images decoded to another size, into the same --out: the finished
    // trials were read back as theirs.
    std::fs::write(models.join("resnet_other.toml"), TINY_RESNET.replace("\"resnet_tiny\"", "\"resnet_other\"")).unwrap();
    let other_model: Vec<&str> = search_args("0/1").into_iter().map(|a| if a == "resnet_tiny" { "resnet_other" } else { a }).collect();
    let other_resize: Vec<&str> = search_args("0/1").into_iter().map(|a| if a == "40" { "48" } else { a }).collect();
    for (args, difference) in [
        (other_model, "model was resnet_tiny, this run asks for resnet_other (--model)"),
        (other_resize, "resize was 40, this run asks for 48 (--resize)"),
    ] {
        let output = train(&models, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(difference), "{stderr}");
    }

    // Successive halving over the same two trials: both for one epoch, the better one to two;
    // compared with the full search above.
    let halving = dir.path().join("halving");
    let halving_args =
        [&["search"][..], &common, &["--trials", "2", "--halving", "2", "--halving-min-epochs", "1", "--compare-with", search_s, "--out"]]
            .concat();
    let stdout = ok(&train(&models, &[&halving_args[..], &[halving.to_str().unwrap()]].concat()));
    for line in ["rung 1: 2 trials to epoch 1", "rung 2: 1 trials to epoch 2", "trained 3 of the full search's 4 epochs (75.0%)"] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    let best = |dir: &Path, key: &str| {
        let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("search.json")).unwrap()).unwrap();
        let best = if key.is_empty() { &summary["best"] } else { &summary[key]["best"] };
        best["index"].as_u64().unwrap()
    };
    let (full_best, halving_best) = (best(&search, ""), best(&halving, "search"));
    let verdict = if full_best == halving_best { format!("A_opt unchanged: trial {full_best}") } else { "A_opt changed".to_string() };
    assert!(stdout.contains(&verdict), "{verdict}: {stdout}");

    // Extraction with the pretrained ImageNet head, then with trial 0's kept model.
    let features = dir.path().join("train.safetensors");
    let manifest = split.join("manifest.csv");
    let image_args = [
        "--dataset",
        "breakhis",
        "--root",
        root_s,
        "--manifest",
        manifest.to_str().unwrap(),
        "--cache",
        cache_s,
        "--resize",
        "40",
        "--crop",
        "32",
    ];
    let extract =
        [&["extract", "--model", "resnet_tiny", "--weights", &weights][..], &image_args, &["--out", features.to_str().unwrap()]].concat();
    ok(&train(&models, &extract));
    let input = medxfer_scores::read_feature_file(&features).unwrap();
    assert_eq!(input.source_probs().unwrap().shape().1, 10, "the pretrained head's classes");
    assert_eq!(input.num_samples(), entries.iter().filter(|e| e.split == medxfer_data::Part::Train).count());
    let best = search.join("trial-000/best.safetensors");
    let evaluate = [
        &["evaluate", "--model", "resnet_tiny", "--weights", &weights][..],
        &image_args,
        &["--part", "test", "--checkpoint", best.to_str().unwrap(), "--classes", "2"],
    ]
    .concat();
    let report: serde_json::Value = serde_json::from_str(&ok(&train(&models, &evaluate))).unwrap();
    let outcome: serde_json::Value = serde_json::from_slice(&std::fs::read(search.join("trial-000/outcome.json")).unwrap()).unwrap();
    assert_eq!(report["balanced_accuracy"], outcome["test"]["balanced_accuracy"], "evaluate reproduces the run's own test evaluation");

    // Bad input names the problem.
    let output = train(&models, &[&["search"][..], &common, &["--shard", "2/2", "--out", search_s]].concat());
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected i/n"));
    // Without --classes the head's size is read off the checkpoint; an epoch checkpoint (its
    // optimizer state beside the model) evaluates as the model of that epoch.
    let evaluate_checkpoint = |checkpoint: &Path, classes: &[&str]| {
        let args = [
            &["evaluate", "--model", "resnet_tiny", "--weights", &weights][..],
            &image_args,
            &["--part", "test", "--checkpoint", checkpoint.to_str().unwrap()],
            classes,
        ]
        .concat();
        train(&models, &args)
    };
    let kept_epoch = outcome["best_epoch"].as_u64().unwrap();
    let epoch_file = search.join(format!("trial-000/epoch-{kept_epoch:04}.safetensors"));
    for checkpoint in [&best, &epoch_file] {
        let without: serde_json::Value = serde_json::from_str(&ok(&evaluate_checkpoint(checkpoint, &[]))).unwrap();
        for key in ["balanced_accuracy", "accuracy", "recall", "confusion"] {
            assert_eq!(without[key], outcome["test"][key], "{}: {key}", checkpoint.display());
        }
    }
    // Without --resize and --crop, the run's (40/32, in its run-settings.json), not the
    // protocol's 256/224: evaluated at those it scored otherwise, unsaid.
    let trained_sizes = &image_args[..image_args.len() - 4];
    assert_eq!(image_args[image_args.len() - 4..], ["--resize", "40", "--crop", "32"]);
    let args = [
        &["evaluate", "--model", "resnet_tiny", "--weights", &weights][..],
        trained_sizes,
        &["--part", "test", "--checkpoint", best.to_str().unwrap()],
    ]
    .concat();
    let output = train(&models, &args);
    let report: serde_json::Value = serde_json::from_str(&ok(&output)).unwrap();
    assert_eq!(report["confusion"], outcome["test"]["confusion"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("as its run trained: resize 40, crop 32"));
    // The checkpoint of another backbone, even one of the same architecture, is refused.
    std::fs::write(models.join("resnet_twin.toml"), TINY_RESNET.replace("\"resnet_tiny\"", "\"resnet_twin\"")).unwrap();
    let twin: Vec<&str> = args.iter().map(|a| if *a == "resnet_tiny" { "resnet_twin" } else { a }).collect();
    let output = train(&models, &twin);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("was fine-tuned from resnet_tiny") && stderr.contains("give --model resnet_tiny"),
        "{stderr}"
    );
    std::fs::remove_file(models.join("resnet_twin.toml")).unwrap();
    let output = evaluate_checkpoint(&best, &["--classes", "3"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("its head has 2 classes, not 3"), "{stderr}");
    // A manifest of another dataset (the BreakHis split with --dataset bach) is named as such;
    // it failed on its first image, under the wrong root.
    let other_dataset: Vec<&str> = image_args.iter().map(|a| if *a == "breakhis" { "bach" } else { a }).collect();
    let output = train(&models, &[&["evaluate", "--model", "resnet_tiny", "--weights", &weights][..], &other_dataset].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("this is a manifest of breakhis (task breast), not of bach"), "{stderr}");
    // The features written over the model they come from are refused, and the model kept.
    let kept = std::fs::read(&best).unwrap();
    let output = train(
        &models,
        &[
            &["extract", "--model", "resnet_tiny", "--weights", &weights][..],
            &image_args,
            &["--checkpoint", best.to_str().unwrap()],
            &["--out", best.to_str().unwrap()],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("is the --checkpoint file"), "{stderr}");
    assert_eq!(std::fs::read(&best).unwrap(), kept);
    // Pretrained weights given as the checkpoint are named as such.
    let output = evaluate_checkpoint(Path::new(&weights), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("is a PyTorch state dict"), "{stderr}");
    // --classes alone was ignored: the pretrained model evaluated as if it were the checkpoint.
    let output =
        train(&models, &[&["evaluate", "--model", "resnet_tiny", "--weights", &weights][..], &image_args, &["--classes", "2"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--classes 2 is the head size of a fine-tuned --checkpoint"), "{stderr}");
    // A part the manifest has no image of is named (an empty extraction or evaluation was a
    // bare tensor error).
    let without_test = dir.path().join("without-test.csv");
    let kept: String =
        std::fs::read_to_string(&manifest).unwrap().lines().filter(|l| !l.ends_with(",test")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&without_test, kept).unwrap();
    let empty_part: Vec<&str> =
        image_args.iter().map(|a| if *a == manifest.to_str().unwrap() { without_test.to_str().unwrap() } else { a }).collect();
    // And --part without --manifest: there are no parts, and every image of the dataset was read
    // as the part asked for (seen: "--part val" extracted all 192 images of a BreakHis replica).
    let no_manifest: Vec<&str> = image_args.iter().copied().filter(|a| *a != "--manifest" && *a != manifest.to_str().unwrap()).collect();
    for (images, part, message) in
        [(&empty_part, "test", "without-test.csv: no test images in this manifest"), (&no_manifest, "val", "--manifest <MANIFEST>")]
    {
        for command in ["extract", "evaluate"] {
            let out = dir.path().join("refused.safetensors");
            let extra = if command == "extract" { vec!["--out", out.to_str().unwrap()] } else { vec![] };
            let output = train(
                &models,
                &[&[command, "--model", "resnet_tiny", "--weights", &weights][..], images, &["--part", part], &extra].concat(),
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success() && stderr.contains(message), "{command} --part {part}: {stderr}");
            assert!(!out.exists());
        }
    }
    // A foundation model published without a classifier (UNI's layout, small) has no predictions.
    std::fs::write(models.join("uni_tiny.toml"), TINY_UNI).unwrap();
    let uni_weights = concat!(env!("CARGO_MANIFEST_DIR"), "/../zoo/tests/fixtures/vit/uni_like.safetensors");
    let output = train(&models, &[&["evaluate", "--model", "uni_tiny", "--weights", uni_weights][..], &image_args].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("uni_tiny was published without a classifier"), "{stderr}");
    // A budget no run can train with, or a rate out of range, is refused before the images are
    // cached (minutes for a real dataset) and before anything is written.
    let (fresh_cache, refused) = (dir.path().join("fresh-cache"), dir.path().join("refused"));
    let fresh_cache_s = fresh_cache.to_str().unwrap();
    let data_args: Vec<&str> = common[..common.len() - 4].iter().map(|a| if *a == cache_s { fresh_cache_s } else { a }).collect();
    let cases: [(&[&str], &str); 11] = [
        (&["search", "--trials", "0", "--epochs", "2", "--batch", "8"], "--trials 0: a search needs at least 1 trial"),
        (&["search", "--epochs", "0", "--batch", "8"], "--epochs 0: a run needs at least 1 epoch"),
        (&["search", "--epochs", "2", "--batch", "0"], "--batch 0"),
        (&["search", "--epochs", "2", "--batch", "8", "--patience", "0"], "--patience 0: early stopping would end every run"),
        (&["search", "--epochs", "2", "--batch", "8", "--halving", "1"], "eta must be at least 2"),
        (&["search", "--epochs", "2", "--batch", "8", "--halving-min-epochs", "2"], "--halving <ETA>"),
        (
            &["search", "--epochs", "2", "--batch", "8", "--halving", "2", "--halving-min-epochs", "1", "--compare-with", "no-such-search"],
            "--compare-with no-such-search: no such folder",
        ),
        (
            &["search", "--epochs", "2", "--batch", "8", "--halving", "2", "--halving-min-epochs", "1", "--compare-with", split_s],
            "split: no search.json, so not a search",
        ),
        (&["search", "--epochs", "2", "--batch", "8", "--halving", "2"], "--halving-min-epochs 4 is not below --epochs 2"),
        (&["finetune", "--epochs", "2", "--batch", "8", "--lr=-0.1", "--wd", "0"], "the learning rate is -0.1"),
        (&["finetune", "--epochs", "2", "--batch", "8", "--lr", "0.1", "--wd", "NaN"], "the weight decay is NaN"),
    ];
    for (options, message) in cases {
        let output = train(&models, &[&options[..1], &data_args, &options[1..], &["--out", refused.to_str().unwrap()]].concat());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(message), "{options:?}: {stderr}");
        assert!(!fresh_cache.exists() && !refused.exists(), "{options:?}: the refused command cached images or wrote its --out");
    }
    // An --out that is a file failed after the images were cached ("run-settings.json: Not a
    // directory").
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, "kept").unwrap();
    for options in
        [&["finetune", "--epochs", "2", "--batch", "8", "--lr", "0.1", "--wd", "0"][..], &["search", "--epochs", "2", "--batch", "8"]]
    {
        let output = train(&models, &[&options[..1], &data_args, &options[1..], &["--out", a_file.to_str().unwrap()]].concat());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains("is a file; a run writes a folder"), "{options:?}: {stderr}");
        assert!(!fresh_cache.exists() && std::fs::read_to_string(&a_file).unwrap() == "kept", "{options:?}");
    }
    // A --root without the split's images (another dataset's folder) is named as such before any
    // image is cached (caching failed on the first file it lacked).
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let other_root: Vec<&str> = data_args.iter().map(|a| if *a == root_s { elsewhere.to_str().unwrap() } else { a }).collect();
    let output =
        train(&models, &[&["search"][..], &other_root, &["--epochs", "2", "--batch", "8", "--out", refused.to_str().unwrap()]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("{} of the split's {} images are not there", entries.len(), entries.len());
    assert!(!output.status.success() && stderr.contains(&expected) && stderr.contains("the folder of breakhis"), "{stderr}");
    assert!(!fresh_cache.exists() && !refused.exists());
    // A split of another task is refused before anything is cached or trained: by its
    // manifest.json, or without one by a label the task does not have.
    let other_task: Vec<&str> = data_args.iter().map(|a| if *a == "breast" { "brain" } else { a }).collect();
    let output =
        train(&models, &[&["search"][..], &other_task, &["--epochs", "2", "--batch", "8", "--out", refused.to_str().unwrap()]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("this is a split of task breast, not of --task brain"), "{stderr}");
    let relabelled = dir.path().join("relabelled");
    std::fs::create_dir_all(&relabelled).unwrap();
    let text = std::fs::read_to_string(split.join("manifest.csv")).unwrap();
    let (header, rows) = text.split_once('\n').unwrap();
    let (first, rest) = rows.split_once('\n').unwrap();
    let (path, after) = first.split_once(',').unwrap();
    let (_, after) = after.split_once(',').unwrap();
    std::fs::write(relabelled.join("manifest.csv"), format!("{header}\n{path},7,{after}\n{rest}")).unwrap();
    let relabelled_args: Vec<&str> = data_args.iter().map(|a| if *a == split_s { relabelled.to_str().unwrap() } else { a }).collect();
    let output = train(
        &models,
        &[&["search"][..], &relabelled_args, &["--epochs", "2", "--batch", "8", "--out", refused.to_str().unwrap()]].concat(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(&format!("{path} has label 7, but task breast has 2 classes (benign, malignant)")),
        "{stderr}"
    );
    assert!(!fresh_cache.exists() && !refused.exists());
    // So is evaluating a model on labels its head does not have.
    let relabelled_manifest = relabelled.join("manifest.csv");
    let relabelled_images: Vec<&str> =
        image_args.iter().map(|a| if *a == manifest.to_str().unwrap() { relabelled_manifest.to_str().unwrap() } else { a }).collect();
    let part = first.rsplit(',').next().unwrap();
    let output = train(
        &models,
        &[
            &["evaluate", "--model", "resnet_tiny", "--weights", &weights][..],
            &relabelled_images,
            &["--part", part, "--checkpoint", best.to_str().unwrap(), "--classes", "2"],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("the images have label 7, but the model has 2 classes"), "{stderr}");
    // The GPU arithmetic options are refused on the CPU, before anything is written.
    for options in [&["--precision", "tf32"][..], &["--matmul-tf32"], &["--conv-algorithms", "benchmark"]] {
        let output = train(&models, &[&["search"][..], &common, options, &["--out", refused.to_str().unwrap()]].concat());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(&options.join(" ")) && stderr.contains("cuda:N"), "{options:?}: {stderr}");
        assert!(!refused.exists(), "{options:?}: the refused search wrote {}", refused.display());
    }
    // A device this build cannot open is refused before the model's weights are looked for on
    // the hub (an unreachable one here: asking it would retry for a minute).
    let device = if cfg!(feature = "cuda") { "gpu" } else { "cuda:0" };
    let extract = ["--dataset", "breakhis", "--root", "nowhere", "--cache", fresh_cache_s];
    assert_eq!(data_args[..4], ["--model", "resnet_tiny", "--weights", weights.as_str()]);
    for (command, arguments) in [("search", &data_args[4..]), ("extract", &extract[..])] {
        let started = std::time::Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_medxfer-train"))
            .env("MEDXFER_MODELS", &models)
            .env("HF_HOME", dir.path().join("empty-hub"))
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .args([command, "--model", "resnet_tiny", "--device", device])
            .args(arguments)
            .args(["--out", refused.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(&format!("--device {device}")), "{command}: {stderr}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{command}: asked the hub first ({stderr})");
    }
}

/// The split's images replaced under their names since the split (a copy of the data resized or
/// recompressed in place): extraction runs on the files as they are, and says the split was made
/// from others; on the files it was made from, it says nothing.
#[test]
fn a_split_whose_images_changed_since_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let (models, root, split, cache, entries) = setup(dir.path(), 3, 1);
    let (weights, manifest) = (weights(), split.join("manifest.csv"));
    let (root_s, split_s, cache_s, manifest_s) =
        (root.to_str().unwrap(), split.to_str().unwrap(), cache.to_str().unwrap(), manifest.to_str().unwrap());
    let sizes = ["--cache", cache_s, "--resize", "40", "--crop", "32"];
    let extract = |out: &str| {
        let images = ["--dataset", "breakhis", "--root", root_s, "--manifest", manifest_s, "--part", "val", "--out", out];
        let output = train(&models, &[&["extract", "--model", "resnet_tiny", "--weights", &weights][..], &images, &sizes].concat());
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let warning = format!("--root {}: the split's {} images are not the files it was made from", root.display(), entries.len());
    let stderr = extract(dir.path().join("a.safetensors").to_str().unwrap());
    assert!(!stderr.contains("not the files it was made from"), "{stderr}");
    let image = root.join(&entries[0].path);
    let (width, height) = image::image_dimensions(&image).unwrap();
    image::RgbImage::from_pixel(width, height, image::Rgb([90, 40, 140])).save(&image).unwrap();
    let stderr = extract(dir.path().join("b.safetensors").to_str().unwrap());
    assert!(stderr.contains(&warning), "{stderr}");
    // Fine-tuning on the split's folder says so too.
    let run = dir.path().join("run");
    let data = ["--task", "breast", "--root", root_s, "--split", split_s, "--epochs", "1", "--batch", "8", "--lr", "0.01", "--wd", "0"];
    let output = train(
        &models,
        &[&["finetune", "--model", "resnet_tiny", "--weights", &weights][..], &data, &sizes, &["--out", run.to_str().unwrap()]].concat(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.contains(&warning), "{stderr}");
}

#[test]
fn a_finetune_killed_mid_run_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let (models, root, split, cache, _) = setup(dir.path(), 8, 2);
    let weights = weights();
    let args = |out: &Path| -> Vec<String> {
        [
            "finetune",
            "--model",
            "resnet_tiny",
            "--weights",
            &weights,
            "--task",
            "breast",
            "--root",
            root.to_str().unwrap(),
            "--split",
            split.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
            "--resize",
            "40",
            "--crop",
            "32",
            "--epochs",
            "8",
            "--batch",
            "8",
            "--lr",
            "0.01",
            "--wd",
            "1e-4",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let straight = dir.path().join("straight");
    ok(&train(&models, &args(&straight).iter().map(String::as_str).collect::<Vec<_>>()));

    // The same run, killed (SIGKILL) as soon as its second checkpoint exists.
    let killed = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_medxfer-train"))
        .env("MEDXFER_MODELS", &models)
        .args(args(&killed))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !killed.join("epoch-0002.safetensors").exists() {
        assert!(start.elapsed().as_secs() < 120, "no second checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // The binary re-executed itself (same pid) to keep mimalloc from returning freed memory
    // to the OS between steps (medxfer_zoo::allocator).
    let environment = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    assert!(environment.split(|&b| b == 0).any(|v| v == b"MIMALLOC_PURGE_DELAY=-1"), "no MIMALLOC_PURGE_DELAY=-1 in the child");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!killed.join("outcome.json").exists(), "the run finished before the kill");
    ok(&train(&models, &args(&killed).iter().map(String::as_str).collect::<Vec<_>>()));

    let read = |dir: &Path, file: &str| -> serde_json::Value { serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap() };
    let (a, b) = (read(&straight, "outcome.json"), read(&killed, "outcome.json"));
    assert_eq!(a["best_epoch"], b["best_epoch"]);
    assert_eq!(a["test"], b["test"]);
    let losses = |dir: &Path| -> Vec<(String, String)> {
        std::fs::read_to_string(dir.join("history.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["train_loss"].to_string(), v["val_loss"].to_string())
            })
            .collect()
    };
    assert_eq!(losses(&straight), losses(&killed), "bit-identical history after the kill");

    // Two processes running the same run into one folder at once (a trial given to two
    // machines by hand): every temporary file (checkpoints, best, history, outcome) is per
    // process, so both finish and the folder holds one whole result, the uninterrupted one.
    let twins = dir.path().join("twins");
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_medxfer-train"))
                .env("MEDXFER_MODELS", &models)
                .args(args(&twins))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let c = read(&twins, "outcome.json");
    assert_eq!((&c["best_epoch"], &c["test"]), (&a["best_epoch"], &a["test"]));
    assert_eq!(losses(&twins), losses(&straight));
    let left: Vec<String> = std::fs::read_dir(&twins)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".partial"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");

    // Killed at many instants, the folder always says what its newest checkpoint holds: the
    // history readers see has as many epochs as that checkpoint.
    let many = dir.path().join("many-kills");
    for pause in [30u64, 70, 110, 150, 190] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_medxfer-train"))
            .env("MEDXFER_MODELS", &models)
            .args(args(&many))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(pause * 10));
        child.kill().unwrap();
        child.wait().unwrap();
        let newest = std::fs::read_dir(&many)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("epoch-")?.strip_suffix(".safetensors")?.parse::<usize>().ok())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        assert_eq!(medxfer_train::history(&many).len(), newest, "after a kill at {} ms", pause * 10);
    }
    ok(&train(&models, &args(&many).iter().map(String::as_str).collect::<Vec<_>>()));
    assert_eq!(losses(&many), losses(&straight));
}
