#![allow(clippy::unwrap_used)]
//! Splits: the reference's rules hand-counted, groups kept whole, the authors' CSVs re-rooted,
//! manifests written and read back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use medxfer_data::{
    Catalog, Entry, FaithfulSplit, ManifestInfo, Part, Record, Source, authors_split, authors_split_from_csvs, check_classes,
    faithful_split, files_checksum, grouped_split, leakage, ood_entries, read_manifest, scan_dataset, split_counts, split_task, synth,
    write_manifest,
};

fn records(name: &str, per_class: usize) -> (tempfile::TempDir, Vec<Record>) {
    let catalog = Catalog::load_default().unwrap();
    let dir = tempfile::tempdir().unwrap();
    synth::synthesize(catalog.dataset(name).unwrap(), dir.path(), per_class, 3).unwrap();
    let scan = scan_dataset(catalog.dataset(name).unwrap(), dir.path()).unwrap();
    (dir, scan.records)
}

fn counts(entries: &[Entry]) -> BTreeMap<(Part, u32), usize> {
    let mut counts = BTreeMap::new();
    for e in entries {
        *counts.entry((e.split, e.label)).or_default() += 1;
    }
    counts
}

#[test]
fn faithful_breast_takes_20_percent_test_then_15_percent_val_per_class() {
    let (_dir, records) = records("breakhis", 9);
    // benign: 5 slides x 9 = 45 -> test ceil(9.0) = 9, val ceil(0.15 * 36) = 6, train 30.
    // malignant: 3 slides x 9 = 27 -> test ceil(5.4) = 6, val ceil(0.15 * 21) = 4, train 17.
    let rule = FaithfulSplit::TestThenVal { val: 0.15, test: 0.2 };
    let entries = faithful_split(&records, &rule, 0).unwrap();
    for (label, expected) in [(0, (30, 6, 9)), (1, (17, 4, 6))] {
        let c = counts(&entries);
        assert_eq!((c[&(Part::Train, label)], c[&(Part::Val, label)], c[&(Part::Test, label)]), expected, "label {label}");
    }
    assert_eq!(entries, faithful_split(&records, &rule, 0).unwrap(), "deterministic by seed");
    assert_ne!(entries, faithful_split(&records, &rule, 1).unwrap(), "the seed matters");
    // Image-level: the reference's split leaks patients, and the report says so.
    assert!(leakage(&entries).groups_across_splits > 0);
}

#[test]
fn grouped_splits_keep_every_group_in_one_split() {
    for (name, rule) in [
        ("breakhis", FaithfulSplit::TestThenVal { val: 0.15, test: 0.2 }),
        ("isic2019", FaithfulSplit::Stratified { val: 0.1, test: 0.2 }),
        ("pad-ufes-20", FaithfulSplit::Stratified { val: 0.2, test: 0.2 }),
    ] {
        let (_dir, records) = records(name, 8);
        let entries = grouped_split(&records, &rule, 5).unwrap();
        assert_eq!(entries.len(), records.len(), "{name}");
        let leakage = leakage(&entries);
        assert_eq!((leakage.groups_across_splits, leakage.test_images_sharing_a_train_group), (0, 0), "{name}");
        let mut parts: BTreeMap<&str, BTreeSet<Part>> = BTreeMap::new();
        for e in &entries {
            parts.entry(&e.group).or_default().insert(e.split);
        }
        assert!(parts.values().all(|p| p.len() == 1), "{name}");
    }
}

/// Three patients of a class with 10, 1 and 1 images: sized in images, the large one fills
/// train past its share and the small ones test and train, leaving val none. Each part gets one
/// patient instead, for every seed (the shuffle decides which small one goes where); a class of
/// many small patients keeps its 70/10/20 in images.
#[test]
fn a_few_unequal_groups_still_give_every_part_one() {
    let record = |path: String, label: u32, group: &str| Record {
        group: group.to_string(),
        path,
        class: label.to_string(),
        label,
        origin: String::new(),
    };
    let mut records: Vec<Record> = (0..10).map(|i| record(format!("mel/big-{i}.png"), 0, "big")).collect();
    records.extend([record("mel/a.png".into(), 0, "a"), record("mel/b.png".into(), 0, "b")]);
    records.extend((0..40).map(|i| record(format!("nv/{i}.png"), 1, &format!("nv{i}"))));
    let rule = FaithfulSplit::Stratified { val: 0.1, test: 0.2 };
    for seed in 0..20 {
        let entries = grouped_split(&records, &rule, seed).unwrap();
        let mel_groups =
            |part: Part| entries.iter().filter(|e| e.label == 0 && e.split == part).map(|e| e.group.as_str()).collect::<BTreeSet<_>>();
        let groups: Vec<BTreeSet<&str>> = Part::ALL.into_iter().map(mel_groups).collect();
        assert!(groups.iter().all(|g| g.len() == 1), "seed {seed}: {groups:?}");
        assert_eq!(groups.iter().flatten().copied().collect::<BTreeSet<_>>(), BTreeSet::from(["a", "b", "big"]), "seed {seed}");
        let counts = counts(&entries);
        assert_eq!((counts[&(Part::Train, 1)], counts[&(Part::Val, 1)], counts[&(Part::Test, 1)]), (28, 4, 8), "seed {seed}");
    }
}

#[test]
fn brain_by_origin_tests_on_testing_and_grouped_drops_its_duplicates_of_training() {
    let (_dir, records) = records("brain-tumor-kaggle", 6);
    let rule = FaithfulSplit::ByOrigin { val: 0.15, train_origin: "Training".into(), test_origin: "Testing".into() };
    let faithful = faithful_split(&records, &rule, 0).unwrap();
    let testing: BTreeSet<&str> = records.iter().filter(|r| r.origin == "Testing").map(|r| r.path.as_str()).collect();
    let test: BTreeSet<&str> = faithful.iter().filter(|e| e.split == Part::Test).map(|e| e.path.as_str()).collect();
    assert_eq!(test, testing);
    // Training per class: 8 (+1 duplicate for glioma): val = ceil(0.15 * 8) = 2.
    assert_eq!(counts(&faithful)[&(Part::Val, 0)], 2);
    // The Training/Testing duplicate pair spans splits (test and train or val).
    assert!(leakage(&faithful).groups_across_splits >= 1);
    let grouped = grouped_split(&records, &rule, 0).unwrap();
    assert!(!grouped.iter().any(|e| e.path == "Testing/no_tumor/1 (dup).jpg"));
    assert_eq!(grouped.iter().filter(|e| e.split == Part::Test).count(), testing.len() - 1);
    assert_eq!(leakage(&grouped).groups_across_splits, 0);
}

#[test]
fn authors_csvs_are_re_rooted_by_path_suffix_and_checked() {
    let catalog = Catalog::load_default().unwrap();
    let spec = catalog.dataset("pad-ufes-20").unwrap();
    let (dir, records) = records("pad-ufes-20", 3);
    // The authors flattened imgs_part_* into /pad-ufes-20/images/.
    let csv = dir.path().join("pad_test.csv");
    let mut text = String::from("image,label,old_image\n");
    for r in &records {
        let name = r.path.rsplit('/').next().unwrap();
        text.push_str(&format!("/pad-ufes-20/images/{name},{},{name}\n", r.label));
    }
    std::fs::write(&csv, &text).unwrap();
    let (entries, problems) = authors_split_from_csvs(&records, spec, &[(Part::Test, csv.as_path())]).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(entries.len(), records.len());
    assert!(entries.iter().zip(&records).all(|(e, r)| e.path == r.path && e.label == r.label));

    // A wrong label and an unknown file are problems naming the CSV line.
    let first = records[0].path.rsplit('/').next().unwrap();
    std::fs::write(
        &csv,
        format!("image,label\n/pad-ufes-20/images/{first},{}\n/pad-ufes-20/images/PAT_0_0_0.png,0\n", 1 - records[0].label),
    )
    .unwrap();
    let (_, problems) = authors_split_from_csvs(&records, spec, &[(Part::Test, csv.as_path())]).unwrap();
    assert_eq!(problems.len(), 2);
    assert!(problems[0].problem.starts_with("line 2:") && problems[0].problem.contains("label map gives"));
    assert!(problems[1].problem.starts_with("line 3:") && problems[1].problem.contains("not among the scanned images"));
    std::fs::write(&csv, "path,class\nx,1\n").unwrap();
    let error = authors_split_from_csvs(&records, spec, &[(Part::Test, csv.as_path())]).unwrap_err().to_string();
    assert!(error.contains("pad_test.csv") && error.contains("expected columns image and label"), "{error}");
}

/// An image listed twice (in two parts, it is tested on what it trained on) and a second CSV of
/// one part (a copy saved beside it) are refused, naming the rows and the files: both were read as
/// more images (seen: a manifest of 321 rows from 192 images).
#[test]
fn authors_csvs_listing_an_image_twice_or_twice_one_part_are_refused() {
    let catalog = Catalog::load_default().unwrap();
    let spec = catalog.dataset("pad-ufes-20").unwrap();
    let (dir, records) = records("pad-ufes-20", 3);
    let authors = dir.path().join("authors");
    std::fs::create_dir_all(&authors).unwrap();
    let row = |r: &Record| format!("/pad-ufes-20/images/{},{}\n", r.path.rsplit('/').next().unwrap(), r.label);
    let train: Vec<&Record> = records.iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, r)| r).collect();
    let test: Vec<&Record> = records.iter().enumerate().filter(|(i, _)| i % 3 == 0).map(|(_, r)| r).collect();
    let csv = |rows: &[&Record]| format!("image,label\n{}", rows.iter().map(|r| row(r)).collect::<String>());
    std::fs::write(authors.join("pad_train.csv"), csv(&train)).unwrap();
    std::fs::write(authors.join("pad_test.csv"), csv(&test)).unwrap();
    let entries = authors_split(&records, spec, &authors).unwrap();
    assert_eq!(entries.len(), records.len());
    assert_eq!(entries.iter().filter(|e| e.split == Part::Test).count(), test.len());

    // The first training image listed in the test CSV too, as its last row.
    std::fs::write(authors.join("pad_test.csv"), format!("{}{}", csv(&test), row(train[0]))).unwrap();
    let error = authors_split(&records, spec, &authors).unwrap_err().to_string();
    let repeated = format!("pad_test.csv: line {}: /pad-ufes-20/images/", test.len() + 2);
    assert!(error.contains(&repeated) && error.contains("listed again (first at pad_train.csv line 2)"), "{error}");

    std::fs::write(authors.join("pad_test.csv"), csv(&test)).unwrap();
    std::fs::write(authors.join("pad_train (copy).csv"), csv(&train)).unwrap();
    let error = authors_split(&records, spec, &authors).unwrap_err().to_string();
    assert!(error.contains("2 CSVs for the train part (pad_train (copy).csv, pad_train.csv)"), "{error}");
}

/// Cheng's set standing in for the brain task's ID set: split by its own rule (the task's needs the
/// Kaggle set's Training/ and Testing/ folders, and refused it: "images outside Training/ and
/// Testing/"), and checked over the classes it has (it has no scan without a tumour).
#[test]
fn an_alternative_id_set_is_split_by_its_own_rule_over_its_own_classes() {
    let catalog = Catalog::load_default().unwrap();
    let (cheng, brain) = (catalog.dataset("cheng").unwrap(), catalog.task("brain").unwrap());
    assert_eq!(cheng.split, Some(FaithfulSplit::Stratified { val: 0.1, test: 0.2 }));
    let (_dir, cheng_records) = records("cheng", 10);
    for source in [Source::Faithful, Source::Grouped] {
        let (entries, leakage) = split_task(&cheng_records, cheng, brain, source, None, 0).unwrap();
        assert_eq!(entries.len(), cheng_records.len(), "{source:?}");
        let c = counts(&entries);
        for part in Part::ALL {
            let labels: BTreeSet<u32> = c.keys().filter(|(p, _)| *p == part).map(|(_, label)| *label).collect();
            assert_eq!(labels, BTreeSet::from([1, 2, 3]), "{source:?} {part:?}");
        }
        if source == Source::Grouped {
            assert_eq!(leakage.groups_across_splits, 0, "no patient in two parts");
        }
    }
    // The faithful rule is the stratified 70/10/20 by hand: of 10 per class, test ceil(2) = 2,
    // val ceil(1) = 1, train 7.
    let (faithful, _) = split_task(&cheng_records, cheng, brain, Source::Faithful, None, 0).unwrap();
    assert!((1..=3).all(|label| counts(&faithful)[&(Part::Train, label)] == 7), "{:?}", counts(&faithful));
    // The task's ID set still needs all four classes.
    let kaggle = catalog.dataset("brain-tumor-kaggle").unwrap();
    let (_kaggle_dir, kaggle_records) = records("brain-tumor-kaggle", 6);
    let without_no_tumour: Vec<Record> = kaggle_records.into_iter().filter(|r| r.label != 0).collect();
    let error = split_task(&without_no_tumour, kaggle, brain, Source::Faithful, None, 0).unwrap_err().to_string();
    assert!(error.contains("no image of class 0 (no_tumor)"), "{error}");
}

/// An alternative ID set's TOML without its rule is refused when the catalog loads, not when a
/// split is asked of it.
#[test]
fn an_alternative_id_set_without_its_split_rule_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for item in std::fs::read_dir(Catalog::default_dir()).unwrap() {
        let path = item.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    Catalog::load(dir.path()).unwrap();
    let toml = std::fs::read_to_string(dir.path().join("cheng.toml")).unwrap();
    let without: String = toml.lines().filter(|line| !line.starts_with("split = ")).map(|line| format!("{line}\n")).collect();
    assert!(without.len() < toml.len());
    std::fs::write(dir.path().join("cheng.toml"), without).unwrap();
    let error = Catalog::load(dir.path()).unwrap_err().to_string();
    assert!(error.contains("cheng.toml is an alternative ID set without `split`"), "{error}");
}

#[test]
fn a_split_without_a_class_is_refused() {
    let catalog = Catalog::load_default().unwrap();
    let (_dir, records) = records("breakhis", 3);
    let benign_only: Vec<Record> = records.into_iter().filter(|r| r.label == 0).collect();
    let entries = faithful_split(&benign_only, &FaithfulSplit::TestThenVal { val: 0.15, test: 0.2 }, 0).unwrap();
    let error = check_classes(&entries, catalog.task("breast").unwrap()).unwrap_err().to_string();
    assert!(error.contains("no image of class 1 (malignant)"), "{error}");
}

#[test]
fn manifests_round_trip_and_their_checksum_follows_the_files() {
    let (dir, records) = records("nins", 3);
    let entries = ood_entries(&records);
    let checksum = files_checksum(dir.path(), &entries).unwrap();
    let info = ManifestInfo {
        dataset: "nins".into(),
        task: "brain".into(),
        source: Source::Faithful,
        seed: 0,
        images: entries.len(),
        counts: split_counts(&entries),
        files_checksum: checksum.clone(),
        leakage: None,
    };
    let out = dir.path().join("results/split");
    let (csv_path, json_path) = write_manifest(&out, &entries, &info).unwrap();
    assert_eq!(read_manifest(&csv_path).unwrap(), entries);
    let stored: ManifestInfo = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(stored, info);
    let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.ends_with(".partial")), "a temporary file was left: {names:?}");
    // Appending a byte to one image changes the checksum.
    let first = Path::new(dir.path()).join(&entries[0].path);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes.push(0);
    std::fs::write(&first, bytes).unwrap();
    assert_ne!(files_checksum(dir.path(), &entries).unwrap(), checksum);
}
