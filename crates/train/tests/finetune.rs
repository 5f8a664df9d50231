#![allow(clippy::unwrap_used)]
//! Fine-tuning a small timm ResNet (the zoo's fixture checkpoint) on a separable synthetic task:
//! it learns, and a run killed and resumed, even from a truncated checkpoint, ends exactly as an
//! uninterrupted one.

use std::path::Path;

use candle_core::Device;
use medxfer_data::{
    Entry, Part,
    transform::{Normalization, TrainTransform},
};
use medxfer_train::{
    ClassWeights, EpochRecord, ExtractSettings, Halving, RunData, RunOutcome, RunSettings, Sampler, SearchSettings, Shard, SplitData,
    TrialPoint, fine_tune, finished, history, search, select_best, trial_dir,
};
use medxfer_zoo::{Architecture, Backbone, BlockKind, ResNetConfig};
use rand::{Rng, SeedableRng};

/// Class 1: a bright centre on a dark ground; class 0: the reverse. Noise everywhere.
/// `n` 32-px images of the task, cached with their shorter side at `side` px.
fn write_split(dir: &Path, name: &str, n: usize, seed: u64, side: u32) -> SplitData {
    let labels: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
    write_labelled(dir, name, &labels, seed, side)
}

/// [`write_split`]'s images, one of each of `labels`.
fn write_labelled(dir: &Path, name: &str, labels: &[u32], seed: u64, side: u32) -> SplitData {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let mut entries = Vec::new();
    for (i, &label) in labels.iter().enumerate() {
        let image = image::RgbImage::from_fn(32, 32, |x, y| {
            let centre = (8..24).contains(&x) && (8..24).contains(&y);
            let bright = centre == (label == 1);
            let base: i32 = if bright { 190 } else { 60 };
            image::Rgb([0, 1, 2].map(|_| (base + rng.random_range(-40..40)).clamp(0, 255) as u8))
        });
        let path = format!("{name}/{i:03}.png");
        image.save(dir.join(&path)).unwrap();
        entries.push(Entry { path, label, group: i.to_string(), split: Part::Train, frame: None });
    }
    SplitData::cached(&dir.join("cache"), name, dir, &entries, side, false).unwrap()
}

fn data(dir: &Path) -> RunData {
    data_at(dir, 32)
}

/// The task with its images cached at `side` px: the eval transform centre-crops the cache, so
/// a crop larger than 32 px needs a cache that large.
fn data_at(dir: &Path, side: u32) -> RunData {
    RunData {
        train: write_split(dir, "train", 48, 1, side),
        val: write_split(dir, "val", 16, 2, side),
        test: Some(write_split(dir, "test", 20, 3, side)),
        ood: None,
        classes: 2,
    }
}

/// The CPU, or `MEDXFER_TEST_DEVICE=cuda:N` with a `--features cuda` build on a GPU machine.
fn device() -> Device {
    medxfer_train::parse_device(&std::env::var("MEDXFER_TEST_DEVICE").unwrap_or_else(|_| "cpu".into())).unwrap()
}

fn model() -> Backbone {
    model_on(&device())
}

fn model_on(device: &Device) -> Backbone {
    let architecture =
        Architecture::ResNet(ResNetConfig { channels: [64, 8, 16, 32], ..ResNetConfig::plain(BlockKind::Basic, [1, 1, 1, 1]) });
    let mut model = Backbone::new("resnet_basic_min", &architecture, 10, device).unwrap();
    let weights = concat!(env!("CARGO_MANIFEST_DIR"), "/../zoo/tests/fixtures/resnet_basic_min.safetensors");
    model.load_weights(Path::new(weights), true).unwrap();
    model.replace_head(2, 7).unwrap();
    model
}

fn settings(epochs: usize) -> RunSettings {
    RunSettings {
        epochs,
        batch_size: 16,
        crop: 32,
        train_transform: TrainTransform { size: 32, ..TrainTransform::default() },
        ..RunSettings::reference(0.02, 1e-4, Normalization::study(Normalization::IMAGENET.mean, Normalization::IMAGENET.std, false))
    }
}

#[test]
fn a_small_resnet_learns_a_separable_task() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let mut epochs = Vec::new();
    let outcome = fine_tune(&model(), &data, &settings(6), &dir.path().join("run"), &mut |r: &EpochRecord| epochs.push(r.clone())).unwrap();
    assert_eq!(epochs.len(), 6);
    let test = outcome.test.unwrap();
    assert!(test.balanced_accuracy > 0.9, "test balanced accuracy {}: {epochs:?}", test.balanced_accuracy);
    // The kept epoch is the one with the lowest validation loss.
    let lowest = epochs.iter().min_by(|a, b| a.val_loss.total_cmp(&b.val_loss)).unwrap();
    assert_eq!(outcome.best_epoch, lowest.epoch);
    // A finished run is not redone.
    let again = fine_tune(&model(), &data, &settings(6), &dir.path().join("run"), &mut |_: &EpochRecord| panic!("rerun")).unwrap();
    assert_eq!(again, finished(&dir.path().join("run")).unwrap());
}

/// On a GPU (`MEDXFER_TEST_DEVICE=cuda:N`): the first epochs of a run follow the CPU run's
/// history within f32 rounding (the same batches and augmentations, which the host draws; cuDNN
/// convolutions and our kernels against the CPU kernels). On the CPU there is no second device
/// to compare with, and the test says so.
///
/// The run trains three epochs (the cosine schedule is the three-epoch one) and the first two
/// are held to 1e-3. Rounding differences grow by two to three orders of magnitude per epoch at
/// this learning rate, and the validation loss is about a hundred times more sensitive to them
/// than the training loss: on an H200 (2026-12-04) the relative differences were 1.6e-8, 6.2e-6
/// and 3.6e-5 for the training loss and 1.4e-6, 6.6e-4 and 2.7e-3 for the validation loss,
/// where the run before, whose only difference in this model was the order in which the max
/// pooling's backward pass summed (the last bits), had kept all three epochs under 1e-3. So the
/// third epoch is printed, not held: held, it tests the chaos, not the kernels.
#[test]
fn a_gpu_run_follows_the_cpu_runs_history() {
    let gpu = device();
    if gpu.is_cpu() {
        eprintln!("no GPU given (MEDXFER_TEST_DEVICE): nothing to compare the CPU run with");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let mut histories = Vec::new();
    for (name, device) in [("cpu", Device::Cpu), ("gpu", gpu)] {
        let mut epochs = Vec::new();
        fine_tune(&model_on(&device), &data, &settings(3), &dir.path().join(name), &mut |r: &EpochRecord| epochs.push(r.clone())).unwrap();
        histories.push(epochs);
    }
    for (cpu, gpu) in histories[0].iter().zip(&histories[1]) {
        for (what, a, b) in [("train loss", cpu.train_loss, gpu.train_loss), ("val loss", cpu.val_loss, gpu.val_loss)] {
            let relative = (a - b).abs() / a.abs().max(1e-3);
            eprintln!("epoch {} {what}: cpu {a} gpu {b} (relative {relative:.1e})", cpu.epoch);
            assert!(cpu.epoch > 2 || relative < 1e-3, "epoch {} {what}: cpu {a}, gpu {b}", cpu.epoch);
        }
    }
    assert_eq!(histories[1].len(), 3);
}

#[test]
fn a_run_whose_loss_explodes_says_it_diverged() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let settings = RunSettings { learning_rate: 1e12, ..settings(2) };
    match fine_tune(&model(), &data, &settings, &dir.path().join("run"), &mut |_: &EpochRecord| {}) {
        Err(medxfer_train::Error::Diverged { epoch, learning_rate, loss }) => {
            assert!((1..=2).contains(&epoch), "diverged in epoch {epoch}");
            assert!(learning_rate > 0.0 && learning_rate <= 1e12, "{learning_rate}");
            assert!(!loss.is_finite());
        }
        other => panic!("expected a diverged run, got {other:?}"),
    }
}

/// A negative or non-finite learning rate or weight decay is refused before anything is
/// written (torch.optim.SGD refuses negative ones; a NaN one would pass for a diverged run).
#[test]
fn a_learning_rate_or_weight_decay_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let cases = [
        (-0.01, 1e-4, "learning rate"),
        (f64::NAN, 1e-4, "learning rate"),
        (0.01, -1e-4, "weight decay"),
        (0.01, f64::INFINITY, "weight decay"),
    ];
    for (learning_rate, weight_decay, named) in cases {
        let settings = RunSettings { learning_rate, weight_decay, ..settings(1) };
        let run = dir.path().join("refused");
        match fine_tune(&model(), &data, &settings, &run, &mut |_: &EpochRecord| panic!("trained")) {
            Err(medxfer_train::Error::Config(message)) => assert!(message.contains(named), "{message}"),
            other => panic!("lr {learning_rate}, wd {weight_decay}: expected a refusal, got {other:?}"),
        }
        assert!(!run.exists(), "a refused run left {}", run.display());
    }
    // A rate of 0 (a frozen model, a baseline) is a run.
    let settings = RunSettings { learning_rate: 0.0, weight_decay: 0.0, ..settings(1) };
    fine_tune(&model(), &data, &settings, &dir.path().join("zero"), &mut |_: &EpochRecord| {}).unwrap();
}

#[test]
fn a_killed_run_resumes_to_the_same_result_even_from_a_truncated_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let straight = fine_tune(&model(), &data, &settings(4), &dir.path().join("straight"), &mut |_: &EpochRecord| {}).unwrap();

    // Killed after its third epoch's checkpoint was written.
    let run_dir = dir.path().join("killed");
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fine_tune(&model(), &data, &settings(4), &run_dir, &mut |r: &EpochRecord| assert!(r.epoch < 3, "killed"))
    }));
    assert!(killed.is_err());
    assert!(finished(&run_dir).is_none());
    // ... and the kill also truncated that checkpoint and left a half-written file.
    let newest = run_dir.join("epoch-0003.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(run_dir.join("epoch-0004.partial"), b"half").unwrap();

    let mut resumed_epochs = Vec::new();
    let resumed = fine_tune(&model(), &data, &settings(4), &run_dir, &mut |r: &EpochRecord| resumed_epochs.push(r.epoch)).unwrap();
    // Epoch 2's checkpoint was the newest good one: epochs 3 and 4 ran again.
    assert_eq!(resumed_epochs, vec![3, 4]);
    let strip = |mut o: RunOutcome| {
        o.best.seconds = 0.0;
        o
    };
    assert_eq!(strip(resumed.clone()).test, strip(straight.clone()).test);
    assert_eq!(resumed.best_epoch, straight.best_epoch);
    let losses = |dir: &Path| -> Vec<(u64, u64)> {
        std::fs::read_to_string(dir.join("history.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["train_loss"].as_f64().unwrap().to_bits(), v["val_loss"].as_f64().unwrap().to_bits())
            })
            .collect()
    };
    assert_eq!(losses(&run_dir), losses(&dir.path().join("straight")), "bit-identical losses");
}

#[test]
fn successive_halving_promotes_the_best_continues_them_exactly_and_trains_less() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let (full_dir, halving_dir) = (dir.path().join("full"), dir.path().join("halving"));
    let base = settings(4);
    let make = || Ok(model());
    let quiet = &mut |_: &TrialPoint, _: &EpochRecord| {};
    let full =
        search(&make, &data, &SearchSettings { model: "resnet_basic_min", base, trials: 6, shard: Shard::ALL }, &full_dir, quiet).unwrap();
    let halving = Halving::new(2, 1).unwrap();
    let halved = medxfer_train::search_with_halving(
        &make,
        &data,
        &SearchSettings { model: "resnet_basic_min", base, trials: 6, shard: Shard::ALL },
        halving,
        &halving_dir,
        quiet,
    )
    .unwrap();

    // Rungs at epochs 1, 2, 4 keeping 6, 3, 2 trials.
    let rungs: Vec<(usize, usize)> = halved.rungs.iter().map(|r| (r.epochs, r.trials.len())).collect();
    assert_eq!(rungs, vec![(1, 6), (2, 3), (4, 2)]);
    // Each promotion is the best half by the kept (lowest validation loss) epoch's validation
    // balanced accuracy so far, then its loss: ranked here from the full search's histories.
    let full_history = |i: usize| history(&trial_dir(&full_dir, i));
    for pair in halved.rungs.windows(2) {
        let mut ranked: Vec<(usize, f64, f64)> = pair[0]
            .trials
            .iter()
            .map(|&i| {
                let history = full_history(i);
                let mut kept = &history[0];
                for record in &history[..pair[0].epochs] {
                    if record.val_loss < kept.val_loss {
                        kept = record;
                    }
                }
                (i, kept.val_balanced_accuracy, kept.val_loss)
            })
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.total_cmp(&b.2)).then(a.0.cmp(&b.0)));
        let mut expected: Vec<usize> = ranked.iter().take(pair[1].trials.len()).map(|r| r.0).collect();
        expected.sort_unstable();
        assert_eq!(pair[1].trials, expected, "promotion to epoch {}", pair[1].epochs);
    }
    // A paused and promoted trial continues exactly: every history is a prefix of the
    // uninterrupted one, and the finalists' are equal to it, with the same outcome.
    for trial in 0..6 {
        let (ours, theirs) = (history(&trial_dir(&halving_dir, trial)), full_history(trial));
        let losses = |h: &[EpochRecord]| h.iter().map(|r| (r.train_loss, r.val_loss)).collect::<Vec<_>>();
        assert_eq!(losses(&ours), losses(&theirs[..ours.len()]), "trial {trial}");
    }
    for finalist in &halved.search.finished {
        let theirs = full.finished.iter().find(|t| t.index == finalist.index).unwrap();
        let record = |r: &EpochRecord| (r.epoch, r.train_loss, r.val_loss, r.val_balanced_accuracy);
        assert_eq!(record(&finalist.outcome.best), record(&theirs.outcome.best));
        assert_eq!(finalist.outcome.test, theirs.outcome.test);
    }
    assert_eq!(halved.search.finished.len(), 2);
    // 6 trials x 1 epoch, 3 continue to 2 (1 more each), 2 continue to 4 (2 more each).
    assert_eq!(halved.epochs_trained, 6 + 3 + 2 * 2);
    assert_eq!(halved.epochs_full_search, 24);
    assert_eq!(halved.search.best.as_ref(), select_best(&halved.search.finished));
    // A rerun trains nothing; other settings in the same directory are refused.
    let again = medxfer_train::search_with_halving(
        &make,
        &data,
        &SearchSettings { model: "resnet_basic_min", base, trials: 6, shard: Shard::ALL },
        halving,
        &halving_dir,
        &mut |_: &TrialPoint, _: &EpochRecord| panic!("trained again"),
    )
    .unwrap();
    assert_eq!(again, halved);
    let other = Halving::new(3, 1).unwrap();
    let error = medxfer_train::search_with_halving(
        &make,
        &data,
        &SearchSettings { model: "resnet_basic_min", base, trials: 6, shard: Shard::ALL },
        other,
        &halving_dir,
        quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("halving.json") && error.contains("started with --halving 2 --halving-min-epochs 1 --epochs 4 --trials 6, not --halving 3 --halving-min-epochs 1 --epochs 4 --trials 6"), "{error}");
}

#[test]
fn a_search_shared_by_two_shards_runs_each_trial_once_and_selects_a_opt() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let search_dir = dir.path().join("search");
    let base = settings(1);
    let make = || Ok(model());
    // A live worker (this process, this host) holds trial 2: shard 0 skips it.
    std::fs::create_dir_all(trial_dir(&search_dir, 2)).unwrap();
    let live = serde_json::json!({"host": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(), "pid": std::process::id()});
    std::fs::write(trial_dir(&search_dir, 2).join("lock"), live.to_string()).unwrap();
    let mut ran = Vec::new();
    let summary = search(
        &make,
        &data,
        &SearchSettings { model: "resnet_basic_min", base, trials: 4, shard: Shard::parse("0/2").unwrap() },
        &search_dir,
        &mut |p: &TrialPoint, _: &EpochRecord| ran.push(p.index),
    )
    .unwrap();
    assert_eq!(ran, vec![0]);
    assert_eq!(summary.pending, vec![1, 2, 3]);
    assert!(summary.best.is_none());
    // A lock of a process that no longer exists is stale: shard 0 takes trial 2 over.
    std::fs::write(trial_dir(&search_dir, 2).join("lock"), serde_json::json!({"host": live["host"], "pid": u32::MAX}).to_string()).unwrap();
    ran.clear();
    search(
        &make,
        &data,
        &SearchSettings { model: "resnet_basic_min", base, trials: 4, shard: Shard::parse("0/2").unwrap() },
        &search_dir,
        &mut |p: &TrialPoint, _: &EpochRecord| ran.push(p.index),
    )
    .unwrap();
    assert_eq!(ran, vec![2]);
    assert!(!trial_dir(&search_dir, 2).join("lock").exists());
    ran.clear();
    let summary = search(
        &make,
        &data,
        &SearchSettings { model: "resnet_basic_min", base, trials: 4, shard: Shard::parse("1/2").unwrap() },
        &search_dir,
        &mut |p: &TrialPoint, _: &EpochRecord| ran.push(p.index),
    )
    .unwrap();
    assert_eq!(ran, vec![1, 3]);
    assert!(summary.pending.is_empty());
    let best = summary.best.unwrap();
    assert_eq!(Some(&best), select_best(&summary.finished));
    assert!(summary.finished.iter().all(|t| t.outcome.best.val_balanced_accuracy <= best.outcome.best.val_balanced_accuracy));
    // Trial i ran at the i-th Halton point.
    let points = medxfer_train::halton_points(4);
    assert!(summary.finished.iter().all(|t| t.outcome.learning_rate == points[t.index].learning_rate));
    assert!(search_dir.join("search.json").exists());
    // The finished trials are not passed off as those of a search with other settings.
    let longer = SearchSettings { model: "resnet_basic_min", base: settings(2), trials: 4, shard: Shard::ALL };
    let error = search(&make, &data, &longer, &search_dir, &mut |_: &TrialPoint, _: &EpochRecord| panic!("trained")).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("trial-000") && message.contains("epochs was 1, this run asks for 2 (--epochs)"), "{message}");
}

/// A task of 32 train images of class 0 and 8 of class 1, and 12 and 6 to validate on (their
/// labels returned).
fn imbalanced(dir: &Path) -> (RunData, Vec<u32>) {
    let train: Vec<u32> = (0..40).map(|i| u32::from(i % 5 == 0)).collect();
    let val: Vec<u32> = (0..18).map(|i| u32::from(i % 3 == 0)).collect();
    let data = RunData {
        train: write_labelled(dir, "train", &train, 1, 32),
        val: write_labelled(dir, "val", &val, 2, 32),
        test: None,
        ood: None,
        classes: 2,
    };
    (data, val)
}

/// `--class-weights balanced` on 32 images of class 0 and 8 of class 1: weights 40 / (2 * 32)
/// and 40 / (2 * 8), as scikit-learn's "balanced"; each epoch's validation loss is the kept
/// model's weighted cross-entropy over the whole validation part (PyTorch's weighted mean),
/// recomputed here from its logits, not the plain mean; the record names the setting.
#[test]
fn a_class_weighted_run_keeps_the_weighted_validation_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (data, val) = imbalanced(dir.path());
    let settings = RunSettings { class_weights: ClassWeights::Balanced, ..settings(1) };
    let (model, run) = (model(), dir.path().join("run"));
    let mut epochs = Vec::new();
    fine_tune(&model, &data, &settings, &run, &mut |r: &EpochRecord| epochs.push(r.clone())).unwrap();
    // The model now holds the kept epoch, the only one.
    let logits = medxfer_train::logits_split(&model, &data.val, &settings, &mut |_, _| {}).unwrap();
    let weights = [40.0 / 64.0, 40.0 / 16.0];
    let (mut weighted, mut weight, mut plain) = (0.0, 0.0, 0.0);
    for (row, &label) in logits.iter().zip(&val) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let log_sum = max + row.iter().map(|&v| (f64::from(v) - max).exp()).sum::<f64>().ln();
        let loss = log_sum - f64::from(row[label as usize]);
        weighted += weights[label as usize] * loss;
        weight += weights[label as usize];
        plain += loss / val.len() as f64;
    }
    let val_loss = epochs[0].val_loss;
    assert!((val_loss - weighted / weight).abs() < 1e-5 * val_loss, "val loss {val_loss}, weighted {}", weighted / weight);
    assert!((val_loss - plain).abs() > 1e-3, "the weighted loss {val_loss} should not be the plain one {plain}");
    let record = std::fs::read_to_string(run.join(medxfer_train::RUN_SETTINGS_FILE)).unwrap();
    assert!(record.contains("\"class_weights\": \"balanced\""), "{record}");
    // A class without train images has no weight.
    let data = RunData { train: write_labelled(dir.path(), "one-class", &[0; 4], 3, 32), ..data };
    let error = fine_tune(&model, &data, &settings, &dir.path().join("other"), &mut |_: &EpochRecord| {}).unwrap_err();
    assert!(error.to_string().contains("class 1 has none"), "{error}");
}

/// `--sampler balanced` on 32 images of class 0 and 8 of class 1: each epoch's batches are the
/// loader's class-balanced draws (not the shuffled epoch's: another history), the record names
/// it, and a run stopped after its first epoch and resumed ends bit for bit as the straight one
/// (the draws are the seed's and the epoch's).
#[test]
fn a_class_balanced_run_resumes_as_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = imbalanced(dir.path());
    let balanced = RunSettings { sampler: Sampler::Balanced, ..settings(2) };
    let losses = |dir: &Path| -> Vec<(u64, u64)> { history(dir).iter().map(|r| (r.train_loss.to_bits(), r.val_loss.to_bits())).collect() };
    let quiet = &mut |_: &EpochRecord| {};
    let (straight, shuffled, resumed) = (dir.path().join("straight"), dir.path().join("shuffled"), dir.path().join("resumed"));
    fine_tune(&model(), &data, &balanced, &straight, quiet).unwrap();
    fine_tune(&model(), &data, &settings(2), &shuffled, quiet).unwrap();
    assert!(medxfer_train::fine_tune_until(&model(), &data, &balanced, &resumed, 1, quiet).unwrap().is_none());
    fine_tune(&model(), &data, &balanced, &resumed, quiet).unwrap();
    assert_eq!(losses(&resumed), losses(&straight));
    assert_ne!(losses(&straight)[0], losses(&shuffled)[0]);
    let record = std::fs::read_to_string(straight.join(medxfer_train::RUN_SETTINGS_FILE)).unwrap();
    assert!(record.contains("\"sampler\": \"balanced\""), "{record}");
}

/// A run continued or read back with other settings than it was made with is refused, naming
/// each one, where it would have resumed under the new ones (a history of two schedules) or
/// passed off the old outcome as the new run's.
#[test]
fn a_run_continued_with_other_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let run = dir.path().join("run");
    let quiet = &mut |_: &EpochRecord| {};
    assert!(medxfer_train::fine_tune_until(&model(), &data, &settings(2), &run, 1, quiet).unwrap().is_none());
    let refused = |other: &RunSettings, named: &[&str]| {
        let error = fine_tune(&model(), &data, other, &run, &mut |_: &EpochRecord| panic!("trained")).unwrap_err();
        assert!(matches!(error, medxfer_train::Error::OtherSettings { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&run.display().to_string()) && named.iter().all(|n| message.contains(n)), "{message}");
    };
    refused(&settings(3), &["epochs was 2, this run asks for 3"]);
    refused(&RunSettings { learning_rate: 0.05, batch_size: 8, ..settings(2) }, &["learning_rate was 0.02", "batch_size was 16"]);
    assert_eq!(history(&run).len(), 1);
    let outcome = fine_tune(&model(), &data, &settings(2), &run, quiet).unwrap();
    assert_eq!(outcome.epochs_run, 2);
    refused(&RunSettings { weight_decay: 0.0, ..settings(2) }, &["weight_decay was 0.0001, this run asks for 0.0 (--wd)"]);
    assert_eq!(fine_tune(&model(), &data, &settings(2), &run, quiet).unwrap(), outcome);
}

#[test]
fn extraction_writes_the_feature_file_the_scores_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let model = model();
    let ids: Vec<String> = (0..data.val.labels.len()).map(|i| format!("val/{i:03}.png")).collect();
    let normalization = settings(1).normalization;
    let out = dir.path().join("val.safetensors");
    let settings = ExtractSettings { normalization, crop: 32, batch_size: 5 };
    medxfer_train::extract(&model, &data.val, &ids, &settings, &out, &mut |_, _| {}).unwrap();
    // medxfer-scores reads it; features are the model's own, probabilities its softmax.
    let input = medxfer_scores::read_feature_file(&out).unwrap();
    assert_eq!(input.labels(), data.val.labels.iter().map(|&l| l as usize).collect::<Vec<_>>());
    assert_eq!((input.features().nrows(), input.features().ncols()), (16, 32));
    let images = medxfer_data::batches(
        data.val.cache.clone(),
        data.val.labels.clone(),
        medxfer_data::LoaderConfig {
            batch_size: 16,
            order: medxfer_data::Order::Stored,
            seed: 0,
            epoch: 0,
            augment: medxfer_data::Augment::Eval { crop: 32 },
            normalization,
        },
    )
    .unwrap()
    .next()
    .unwrap()
    .unwrap()
    .images;
    let (features, _) = model.features_and_logits(&images.to_device(&device()).unwrap(), false).unwrap();
    let features = features.to_vec2::<f32>().unwrap();
    for (i, row) in features.iter().enumerate() {
        for (j, value) in row.iter().enumerate() {
            assert!((input.features()[(i, j)] - f64::from(*value)).abs() < 1e-5, "feature ({i}, {j})");
        }
    }
    let probs = input.source_probs().unwrap();
    assert_eq!(probs.shape(), (16, 2));
    let (_, metadata) = medxfer_train::read_tensors(&out, &Device::Cpu).unwrap();
    let stored: Vec<String> = serde_json::from_str(&metadata[medxfer_train::IDS_KEY]).unwrap();
    assert_eq!(stored, ids);
}

#[test]
fn a_kill_between_the_checkpoint_and_the_history_file_leaves_nothing_inconsistent() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let straight = dir.path().join("straight");
    fine_tune(&model(), &data, &settings(3), &straight, &mut |_: &EpochRecord| {}).unwrap();

    // Two of three epochs, then the state a SIGKILL right after epoch 2's checkpoint was renamed
    // into place leaves: history.jsonl still holds epoch 1 only.
    let run_dir = dir.path().join("killed");
    let stopped = medxfer_train::fine_tune_until(&model(), &data, &settings(3), &run_dir, 2, &mut |_: &EpochRecord| {}).unwrap();
    assert!(stopped.is_none());
    let file = std::fs::read_to_string(run_dir.join("history.jsonl")).unwrap();
    assert_eq!(file.lines().count(), 2);
    std::fs::write(run_dir.join("history.jsonl"), format!("{}\n", file.lines().next().unwrap())).unwrap();
    // Readers (the halving promotions, --plan) see what the newest checkpoint holds.
    let seen = history(&run_dir);
    assert_eq!(seen.iter().map(|r| r.epoch).collect::<Vec<_>>(), [1, 2]);
    let values =
        |records: &[EpochRecord]| -> Vec<(u64, u64)> { records.iter().map(|r| (r.train_loss.to_bits(), r.val_loss.to_bits())).collect() };
    assert_eq!(values(&seen), values(&history(&straight)[..2]));
    // A damaged newest checkpoint is not what a resume would use: readers fall back with it.
    let newest = run_dir.join("epoch-0002.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() - 1]).unwrap();
    assert_eq!(history(&run_dir).len(), 1);
    std::fs::write(&newest, &bytes).unwrap();

    // The resumed run rewrites the file from the checkpoint and ends as the straight one.
    let mut ran = Vec::new();
    fine_tune(&model(), &data, &settings(3), &run_dir, &mut |r: &EpochRecord| ran.push(r.epoch)).unwrap();
    assert_eq!(ran, [3]);
    let file_records = |dir: &Path| -> Vec<EpochRecord> {
        std::fs::read_to_string(dir.join("history.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    assert_eq!(values(&file_records(&run_dir)), values(&file_records(&straight)));
    assert_eq!(file_records(&run_dir), history(&run_dir));
}

/// The families beyond the paper's ten go through the same loop (issue 17: `rank --finetune-top`
/// and `reproduce --backbones` fine-tune them): the timm fixtures' RegNet-Y, SE-ResNeXt-D and
/// ConvNeXt, each built from the config.json its hub would publish, with a fresh head, learn the
/// separable task. The random ConvNeXt gets a learning rate of 0.002 and no augmentation: trained
/// by PyTorch at this test's 0.02 it falls to chance on this task too, and at 0.002 without
/// augmentation it separates it there as here.
#[test]
fn the_families_beyond_the_paper_fine_tune_too() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../zoo/tests/fixtures/convnet");
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures.join("cases.json")).unwrap()).unwrap();
    let plain = TrainTransform { size: 32, scale: (1.0, 1.0), ratio: (1.0, 1.0), degrees: 0.0, hue: 0.0 };
    // EfficientNetV2 and Swin at 64 px: at 32 px EfficientNetV2's last stages are 1x1 and its
    // BatchNorm statistics too noisy to generalise; Swin takes its img_size (64) only.
    // EfficientNetV2 at lr 0.005 for 8 epochs: at 0.02 its running statistics lag the weights and
    // the validation loss spikes to 10-40 before it recovers. timm's model, trained in PyTorch
    // from the same weights on a replica of this task, does the same at 0.02 (4 seeds).
    let at_64 = |learning_rate: f64, epochs: usize| RunSettings {
        learning_rate,
        crop: 64,
        train_transform: TrainTransform { size: 64, ..plain },
        ..settings(epochs)
    };
    for (name, settings) in [
        ("regnety_like", settings(6)),
        ("seresnext26d_like", settings(6)),
        ("convnext_like", RunSettings { learning_rate: 0.002, train_transform: plain, ..settings(6) }),
        ("tf_efficientnetv2_like", at_64(0.005, 8)),
        ("swin_pad_like", at_64(0.002, 6)),
    ] {
        let config = &cases[name]["config_json"];
        let architecture = medxfer_zoo::architecture_from_timm(config["architecture"].as_str().unwrap(), config.get("model_args")).unwrap();
        let mut model = Backbone::load(name, &architecture, 10, &fixtures.join(format!("{name}.safetensors")), &device()).unwrap();
        model.replace_head(2, 7).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = data_at(dir.path(), settings.crop);
        let mut epochs = Vec::new();
        let outcome = fine_tune(&model, &data, &settings, &dir.path().join("run"), &mut |r: &EpochRecord| epochs.push(r.clone())).unwrap();
        let accuracy = outcome.test.unwrap().balanced_accuracy;
        assert!(accuracy > 0.9, "{name}: test balanced accuracy {accuracy}: {epochs:?}");
    }
}
