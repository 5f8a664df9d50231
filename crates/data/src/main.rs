//! `medxfer-data`: list the datasets and tasks, check a dataset folder, write a split, write a
//! synthetic replica.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use medxfer_data::manifest::{self, ManifestInfo};
use medxfer_data::split::{self, Source};
use medxfer_data::{Catalog, Role, layouts, synth};

#[derive(Parser)]
#[command(name = "medxfer-data", about = "The study's medical datasets: check, split, synthesize.")]
struct Cli {
    /// The dataset catalog directory (default: the workspace's datasets/, or MEDXFER_DATASETS).
    #[arg(long, global = true)]
    datasets: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The known datasets and tasks.
    List,
    /// Reads a dataset folder: counts per task label against the known totals, and every
    /// problem (missing, corrupt, unknown class) at once.
    Check {
        dataset: String,
        #[arg(long)]
        root: PathBuf,
        /// Also decode every image (finds corrupt files; slower).
        #[arg(long)]
        decode: bool,
        /// Also hash every file and count exact duplicates (reported, not problems: the real
        /// Kaggle MRI set has 237).
        #[arg(long)]
        duplicates: bool,
        #[arg(long)]
        json: bool,
    },
    /// Splits a task's ID dataset into train/val/test and writes manifest.csv + manifest.json;
    /// also writes the OOD set's manifest under OUT/ood.
    Split {
        task: String,
        /// The ID dataset's root (the OOD set is not needed for the split).
        #[arg(long)]
        root: PathBuf,
        #[arg(long, value_enum, default_value = "faithful")]
        source: Source,
        /// The folder of the authors' split CSVs (file names containing train, val and test).
        #[arg(long)]
        authors_dir: Option<PathBuf>,
        /// Use this dataset instead of the task's ID set (an alternative such as cheng).
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Decodes and resizes a dataset's images once into the image cache (all cores, progress
    /// bar); later runs with the same files reuse it.
    Cache {
        dataset: String,
        #[arg(long)]
        root: PathBuf,
        /// A manifest.csv from `split`: cache its images in its order (default: every image the
        /// task uses, in path order).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// The cache folder.
        #[arg(long)]
        out: PathBuf,
        /// Shorter side of the cached images (256 for the 224 crops of the study).
        #[arg(long, default_value_t = 256)]
        short_side: u32,
    },
    /// Writes a small synthetic replica of a dataset's real layout.
    Synth {
        dataset: String,
        #[arg(long)]
        out: PathBuf,
        /// Images per class (at least 3).
        #[arg(long, default_value_t = 4)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let catalog = Catalog::load(&cli.datasets.unwrap_or_else(Catalog::default_dir))?;
    match cli.command {
        Command::List => {
            println!("{:<20} {:<8} {:<15} {:>7}  title", "dataset", "task", "role", "images");
            for d in &catalog.datasets {
                println!(
                    "{:<20} {:<8} {:<15} {:>7}  {}",
                    d.name,
                    d.task,
                    format!("{:?}", d.role).to_lowercase(),
                    d.expected.images,
                    d.title
                );
            }
            println!();
            for t in &catalog.tasks {
                println!(
                    "task {:<8} classes {:?}; ID {}, OOD {}{}",
                    t.name,
                    t.classes,
                    t.id,
                    t.ood,
                    if t.alternatives.is_empty() { String::new() } else { format!(", alternatives {}", t.alternatives.join(", ")) }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { dataset, root, decode, duplicates, json } => check(&catalog, &dataset, &root, decode, duplicates, json),
        Command::Split { task, root, source, authors_dir, dataset, seed, out } => {
            split_task(&catalog, &task, &root, source, authors_dir.as_deref(), dataset.as_deref(), seed, &out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache { dataset, root, manifest, out, short_side } => {
            let spec = catalog.dataset(&dataset)?;
            let entries = match manifest {
                Some(path) => manifest::read_entries(&path)?,
                None => split::ood(&layouts::scan(spec, &root)?.records),
            };
            let start = std::time::Instant::now();
            let cache = medxfer_data::cache::ImageCache::open_or_build(&out, &spec.name, &root, &entries, short_side, true)?;
            println!("{} images cached in {} ({:.1} s)", cache.len(), out.display(), start.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        Command::Synth { dataset, out, n, seed } => {
            let spec = catalog.dataset(&dataset)?;
            let replica = synth::synthesize(spec, &out, n, seed)?;
            println!(
                "wrote a {} replica to {}: {:?} images per task label, {} of dropped classes",
                spec.name,
                out.display(),
                replica.per_label,
                replica.dropped
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check(catalog: &Catalog, dataset: &str, root: &Path, decode: bool, duplicates: bool, json: bool) -> Result<ExitCode> {
    let spec = catalog.dataset(dataset)?;
    let mut scan = layouts::scan(spec, root)?;
    if decode {
        use rayon::prelude::*;
        let corrupt: Vec<(String, String)> = scan
            .records
            .par_iter()
            .filter_map(|r| medxfer_data::decode::load_rgb8(&root.join(&r.path)).err().map(|e| (r.path.clone(), e.to_string())))
            .collect();
        for (path, problem) in corrupt {
            scan.problems.push(medxfer_data::Problem { path: path.into(), problem });
        }
    }
    // Exact duplicates: files beyond the first of each content hash.
    let duplicate_count = if duplicates {
        use rayon::prelude::*;
        let hashes: Vec<Option<String>> = scan
            .records
            .par_iter()
            .map(|r| std::fs::read(root.join(&r.path)).ok().map(|b| blake3::hash(&b).to_hex().to_string()))
            .collect();
        let mut groups: BTreeMap<String, usize> = BTreeMap::new();
        for hash in hashes.into_iter().flatten() {
            *groups.entry(hash).or_default() += 1;
        }
        Some((groups.values().map(|n| n - 1).sum::<usize>(), groups.values().filter(|&&n| n > 1).count()))
    } else {
        None
    };
    let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
    for record in &scan.records {
        *per_label.entry(record.label.to_string()).or_default() += 1;
    }
    if json {
        let problems: Vec<String> = scan.problems.iter().map(|p| format!("{}: {}", p.path.display(), p.problem)).collect();
        let mut value = serde_json::json!({"dataset": spec.name, "images": scan.records.len(), "per_label": per_label, "dropped": scan.dropped, "problems": problems});
        if let Some((files, groups)) = duplicate_count {
            value["duplicate_files"] = files.into();
            value["duplicate_groups"] = groups.into();
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{} under {}: {} images used, {} of dropped classes", spec.name, root.display(), scan.records.len(), scan.dropped);
        println!("{:<6} {:>8} {:>10}", "label", "found", "expected");
        for (label, expected) in &spec.expected.per_label {
            println!("{label:<6} {:>8} {expected:>10}", per_label.get(label).copied().unwrap_or(0));
        }
        println!("{:<6} {:>8} {:>10}", "all", scan.records.len(), spec.expected.images);
        if let Some((files, groups)) = duplicate_count {
            println!("exact duplicates: {files} file(s) repeat another, in {groups} group(s)");
        }
        if scan.problems.is_empty() {
            println!("no problems");
        } else {
            println!("{} problem(s):", scan.problems.len());
            for problem in &scan.problems {
                println!("  {}: {}", problem.path.display(), problem.problem);
            }
        }
    }
    Ok(if scan.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[allow(clippy::too_many_arguments)]
fn split_task(
    catalog: &Catalog,
    task_name: &str,
    root: &Path,
    source: Source,
    authors_dir: Option<&Path>,
    dataset: Option<&str>,
    seed: u64,
    out: &Path,
) -> Result<()> {
    let task = catalog.task(task_name)?;
    let spec = catalog.dataset(dataset.unwrap_or(&task.id))?;
    if spec.task != task.name || spec.role == Role::Ood {
        bail!("{} is not an in-distribution dataset of task {}", spec.name, task.name);
    }
    let scan = layouts::scan(spec, root)?;
    if !scan.problems.is_empty() {
        bail!(
            "{} has {} problem(s), the first: {}: {}; run `medxfer-data check {} --root {}`",
            spec.name,
            scan.problems.len(),
            scan.problems[0].path.display(),
            scan.problems[0].problem,
            spec.name,
            root.display()
        );
    }
    let entries = match source {
        Source::Faithful => split::faithful(&scan.records, &task.faithful, seed)?,
        Source::Grouped => split::grouped(&scan.records, &task.faithful, seed)?,
        Source::Authors => {
            let dir = authors_dir.context("--source authors needs --authors-dir, the folder of the authors' split CSVs")?;
            split::authors_from_dir(&scan.records, spec, dir)?
        }
    };
    split::check_classes(&entries, task)?;
    let leakage = split::leakage(&entries);
    let info = ManifestInfo {
        dataset: spec.name.clone(),
        task: task.name.clone(),
        source,
        seed,
        images: entries.len(),
        counts: manifest::counts(&entries),
        files_checksum: manifest::files_checksum(root, &entries)?,
        leakage: Some(leakage.clone().into()),
    };
    let (csv_path, _) = manifest::write(out, &entries, &info)?;
    println!("{}: {} images, {:?}", csv_path.display(), entries.len(), info.counts);
    println!(
        "leakage by {}: {} of {} groups span splits; {} val and {} test images share a group with train",
        spec.group_key,
        leakage.groups_across_splits,
        leakage.groups,
        leakage.val_images_sharing_a_train_group,
        leakage.test_images_sharing_a_train_group
    );
    Ok(())
}
