//! `cargo xtask`: the workspace's own commands: the study (`reproduce`, `report`, `slurm`),
//! `rank`, and the benchmarks (`bench` and its areas).

mod bench;
mod clock;
mod demo;
mod export;
mod features;
use medxfer_train::gpu_arithmetic;
mod predict;
mod rank;
mod recorded;
mod report;
mod results;
mod saliency;
mod slurm;
mod study;
mod weights;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// mimalloc keeps freed pages for reuse. With the system allocator every large tensor is a fresh
/// mmap (page faults on first touch) and an munmap (TLB shootdowns across cores) — 20-40% of a
/// CPU forward pass was spent in the kernel. `Cap` (no limit) counts the live heap bytes, from which
/// the zoo benchmark measures what a training step's graph keeps on the CPU
/// (`bench::machine::live_heap_bytes`). Its high-water mark says little: faer's products reserve
/// a buffer of twice the L3 cache per thread (this 2-core VM reports 480 MiB of L3),
/// uninitialised and mostly never touched.
#[global_allocator]
static ALLOCATOR: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

#[derive(Debug, Parser)]
#[command(about = "medxfer's workspace commands", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// The subcommands are named as typed (`bench-scores`, `bench-zoo`).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Every speed claim beside the Python stack in one run: the scores, the zoo's eval and
    /// training throughput, the data path; one markdown table (OUT/bench.md) of medians with
    /// their spread, and the machine's facts. The Python side runs in target/pybench, made from
    /// PyPI the first time (python/requirements*.txt), unless --python is given.
    Bench {
        /// A reduced set (a few minutes).
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Python with numpy, scipy, scikit-learn, torch, timm, torchvision and Pillow.
        #[arg(long)]
        python: Option<PathBuf>,
        /// Measured runs per figure.
        #[arg(long, default_value_t = 3, value_parser = at_least_one())]
        repeats: usize,
        /// cpu (the CPU benchmarks above), or cuda:N (xtask built with `--features cuda`): a
        /// training step at batch 128 for six backbones in f32 and with TF32 convolutions, and
        /// extraction for the paper's ten, each beside PyTorch with peak GPU memory, and the full
        /// protocol's GPU-hours at those rates (OUT/bench-gpu.md).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Time the seven scores on N x D synthetic features against the Python reference code.
    ///
    /// Writes a markdown table (ours, theirs, ratio, the arithmetic floor, peak memory) to
    /// OUT/scores.md and prints it. The Python side runs in a virtual environment made from
    /// python/requirements.txt the first time (target/pyref).
    BenchScores {
        /// Samples.
        #[arg(long, default_value_t = 10_000, value_parser = at_least_one())]
        n: usize,
        /// Feature dimension.
        #[arg(long, default_value_t = 2048, value_parser = at_least_one())]
        d: usize,
        /// Target class counts, one benchmark each.
        #[arg(long, value_delimiter = ',', default_values_t = [2, 4])]
        classes: Vec<usize>,
        /// Runs per measurement; the median is reported.
        #[arg(long, default_value_t = 3, value_parser = at_least_one())]
        repeats: usize,
        /// Python interpreter with the reference stack; made in target/pyref if not given.
        #[arg(long)]
        python: Option<PathBuf>,
        /// Skip the Python side (ours and the floor only).
        #[arg(long)]
        no_python: bool,
        /// Keep the generated feature files in OUT (to rerun a side by hand).
        #[arg(long)]
        keep_data: bool,
        /// Where the table and raw JSON go.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Eval throughput and peak memory of the registry backbones beside timm/PyTorch.
    ///
    /// Writes OUT/zoo.md. The PyTorch side needs an interpreter with torch and timm
    /// (python/requirements-torch.txt); without --python only medxfer is measured.
    BenchZoo {
        #[arg(long, default_value_t = 32, value_parser = at_least_one())]
        batch: usize,
        #[arg(long, default_value_t = 224, value_parser = at_least_one())]
        size: usize,
        #[arg(long, default_value_t = 3, value_parser = at_least_one())]
        repeats: usize,
        /// Run each side this many times, alternately, and pool the runs (a machine whose
        /// speed drifts then affects both sides alike).
        #[arg(long, default_value_t = 1, value_parser = at_least_one())]
        rounds: usize,
        /// Comma-separated registry names (all by default).
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Python interpreter with torch and timm.
        #[arg(long)]
        python: Option<PathBuf>,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Time a training step (train-mode forward, cross-entropy, backward, Nesterov SGD)
        /// instead of the eval forward; writes OUT/zoo-train.md.
        #[arg(long)]
        train: bool,
        /// cpu, or cuda:N for a GPU (`cuda` is cuda:0; xtask built with `--features cuda`); GPU results go to
        /// OUT/zoo-gpu.md or OUT/zoo-train-gpu.md.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Each step's images start on the host, as in a training loop: ours move through
        /// `Upload` (page-locked, queued one step ahead; `MEDXFER_CUDA_UPLOAD=candle`: candle's
        /// `to_device`), PyTorch's from pinned memory with `non_blocking=True`.
        #[arg(long)]
        host_batches: bool,
        /// The GPU's arithmetic, the same on both sides.
        #[command(flatten)]
        gpu: gpu_arithmetic::GpuArithmetic,
    },
    /// Decode + resize throughput (building the image cache) and batch throughput from the
    /// cache, beside the reference's PIL + torchvision DataLoader.
    ///
    /// Writes OUT/data.md. The Python side needs torch, torchvision and Pillow
    /// (python/requirements-torch.txt); without --python only medxfer is measured.
    BenchData {
        /// JPEGs to generate (kept in OUT/data-images between runs).
        #[arg(long, default_value_t = 512, value_parser = at_least_one())]
        n: usize,
        #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..))]
        width: u32,
        #[arg(long, default_value_t = 450, value_parser = clap::value_parser!(u32).range(1..))]
        height: u32,
        #[arg(long, default_value_t = 128, value_parser = at_least_one())]
        batch: usize,
        /// Measurements of each side (the table shows the median).
        #[arg(long, default_value_t = 1, value_parser = at_least_one())]
        repeats: usize,
        #[arg(long)]
        python: Option<PathBuf>,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// The whole study: splits, pretrained features, the seven scores, the Halton searches, OOD,
    /// correlations, Table 2, Fig. 3 and report.md. Resumable (rerun to continue), shardable
    /// (--shard i/n, then one unsharded run), --plan to see what is left. `--demo` runs it on
    /// synthetic data and small backbones in minutes, with no data or network.
    Reproduce {
        #[command(flatten)]
        args: Box<study::args::ReproduceArgs>,
    },
    /// Writes (and with --submit, submits) a Slurm job array for the study: each array task runs
    /// `reproduce --shard i/n` against the shared results directory, then a dependent job runs
    /// `reproduce` unsharded for the tables and the report. reproduce's own arguments go after
    /// `--`.
    Slurm {
        #[command(flatten)]
        args: slurm::SlurmArgs,
    },
    /// Which backbone for your images? Every candidate's pretrained features (cached), the seven
    /// scores, a ranked table with a consensus (mean rank); --finetune-top K then fine-tunes only
    /// the shortlist. Writes OUT/ranking.csv, ranking.md and ranking.svg/.png.
    Rank {
        #[command(flatten)]
        args: Box<rank::RankArgs>,
    },
    /// Applies the backbone `rank --finetune-top` fine-tuned best (or --backbone's) to new
    /// images: each image's predicted class and every class's probability, as a CSV
    /// (RANKING/predictions.csv by default).
    Predict {
        #[command(flatten)]
        args: predict::PredictArgs,
    },
    /// Writes a backbone `rank --finetune-top` fine-tuned (by default the one predict applies) as
    /// a PyTorch state dict in safetensors, timm's key names, the classes and preprocessing in its
    /// metadata: for a PyTorch pipeline.
    Export {
        #[command(flatten)]
        args: export::ExportArgs,
    },
    /// Table 2, Fig. 3 and report.md from a results folder's scores.csv and performance.csv
    /// alone (results from another machine, or published numbers, tabulate the same way).
    ///
    /// Writes table2.csv, table2.md, fig3.svg/.png, fig3_ood.svg/.png and report.md into it.
    Report {
        /// The results folder (reproduce's --out).
        #[arg(long)]
        results: PathBuf,
    },
    /// How much of each tau-b's spread comes from the sample of images: resamples the images
    /// of every task (within each class, with replacement; a patient's images together),
    /// recomputes the scores on each backbone's stored features, keeps the fine-tuned
    /// accuracies fixed, and writes
    /// image_bootstrap_scores.csv and image_bootstrap_tau.csv into the results folder; `report`
    /// then draws Fig. 3's error bars and sets the intervals beside those over backbones.
    ImageBootstrap {
        /// The results folder (reproduce's --out, with its features/).
        #[arg(long)]
        results: PathBuf,
        #[arg(long, default_value_t = 200)]
        resamples: usize,
        /// Comma-separated scores; by default the cheap ones (all but n_leep,
        /// transrate_official and pactran_gauss; etran and ncti recombined over the backbones on
        /// each resample).
        #[arg(long, value_delimiter = ',')]
        metrics: Option<Vec<String>>,
        /// The seed; study.json's bootstrap seed by default.
        #[arg(long)]
        seed: Option<u64>,
        /// What one draw takes: a group of the split (a patient, a lesion, a slide) with all its
        /// images, or each image on its own (a dataset without groups draws images either way).
        #[arg(long, value_enum, default_value = "groups")]
        resample_by: report::image_bootstrap::ResampleBy,
        /// How each 95% interval is read off the resamples: their 2.5% and 97.5% quantiles, or
        /// those quantiles bias-corrected (Efron's BC) for scores that rise on the images a
        /// resample repeats.
        #[arg(long, value_enum, default_value = "percentile")]
        interval: report::image_bootstrap::Interval,
    },
    /// One zoo measurement in a fresh process (run by bench-zoo).
    #[command(hide = true)]
    BenchZooWorker {
        model: String,
        #[arg(long, value_parser = at_least_one())]
        batch: usize,
        #[arg(long, value_parser = at_least_one())]
        size: usize,
        #[arg(long, value_parser = at_least_one())]
        repeats: usize,
        /// Untimed steps first (a profiler that should see one step sets 0).
        #[arg(long, default_value_t = bench::zoo::WARMUP_STEPS)]
        warmup: usize,
        #[arg(long)]
        train: bool,
        #[arg(long)]
        host_batches: bool,
        #[arg(long)]
        device: String,
        #[command(flatten)]
        gpu: gpu_arithmetic::GpuArithmetic,
    },
    /// One measurement in a fresh process (run by bench-scores).
    #[command(hide = true)]
    BenchScoresWorker {
        file: PathBuf,
        #[arg(long)]
        repeats: usize,
        /// Only load and run the suite once, then report peak memory.
        #[arg(long)]
        memory_only: bool,
    },
}

/// A count or size of at least 1: a benchmark of no images, runs or features measures nothing
/// (and divided by zero).
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

fn main() -> Result<()> {
    medxfer_cli::keep_freed_memory();
    medxfer_cli::stop_quietly_when_output_closes();
    match Cli::parse().command {
        Command::BenchScores { n, d, classes, repeats, python, no_python, keep_data, out } => {
            bench::scores::run(&bench::scores::Settings { n, d, classes, repeats, python, no_python, keep_data, out }).map(|_| ())
        }
        Command::BenchScoresWorker { file, repeats, memory_only } => bench::scores::worker(&file, repeats, memory_only),
        Command::BenchZoo { batch, size, repeats, rounds, models, python, out, train, device, host_batches, gpu } => {
            python.as_deref().map(bench::python_env::check_starts).transpose()?;
            let settings = bench::zoo::Settings { batch, size, repeats, rounds, models, python, out, train, device, host_batches, gpu };
            bench::zoo::run(&settings).map(|_| ())
        }
        Command::BenchData { n, width, height, batch, repeats, python, out } => {
            python.as_deref().map(bench::python_env::check_starts).transpose()?;
            bench::data::run(&bench::data::Settings { n, width, height, batch, repeats, python, out }).map(|_| ())
        }
        Command::Bench { quick, out, python, repeats, device } => {
            bench::run(&bench::Settings { quick, out, python, repeats, device }).map(|_| ())
        }
        Command::Reproduce { args } => reproduce(&args),
        Command::Slurm { args } => slurm::run(&args),
        Command::Rank { args } => rank::run(&args).map(|_| ()),
        Command::Export { args } => {
            let exported = export::run(&args)?;
            println!(
                "{}: {} fine-tuned, {} tensors, {} classes; in Python:\n{}",
                exported.file.display(),
                exported.backbone,
                exported.tensors,
                exported.classes,
                export::python_hint(&exported, &exported.file)
            );
            Ok(())
        }
        Command::Predict { args } => {
            predict::run(&args)?.say(&args);
            Ok(())
        }
        Command::Report { results } => {
            let written = report::run(&results, report::NothingToCorrelate::Refuse)?;
            // A cell of fewer than two backbones, or with a constant side, has no tau-b.
            let defined = written.table.iter().filter(|row| row.tau_b.is_some()).count();
            let undefined = match written.table.len() - defined {
                0 => String::new(),
                n => format!(" ({n} undefined: fewer than two backbones, or every value equal)"),
            };
            println!(
                "{}: {defined} of {} correlations defined{undefined}; wrote {}",
                results.display(),
                written.table.len(),
                written.files.join(", ")
            );
            Ok(())
        }
        Command::ImageBootstrap { results, resamples, metrics, seed, resample_by, interval } => {
            image_bootstrap(results, resamples, metrics, (seed, resample_by, interval))
        }
        Command::BenchZooWorker { model, batch, size, repeats, warmup, train, host_batches, device, gpu } => {
            bench::zoo::worker(&model, bench::zoo::Steps { batch, size, warmup, repeats, host_batches }, train, &device, gpu)
        }
    }
}

/// `cargo xtask image-bootstrap`: the intervals of `metrics` (by default the cheap scores) over
/// `resamples` resamples of `results`' images, said on stdout.
fn image_bootstrap(
    results: PathBuf,
    resamples: usize,
    metrics: Option<Vec<String>>,
    (seed, resample_by, interval): (Option<u64>, report::image_bootstrap::ResampleBy, report::image_bootstrap::Interval),
) -> Result<()> {
    let mut metrics = match metrics {
        Some(names) => names.iter().map(|n| n.parse::<medxfer_scores::Metric>()).collect::<Result<Vec<_>, _>>()?,
        None => report::image_bootstrap::CHEAP.to_vec(),
    };
    // Once each: a score named twice would write its rows twice, which `report` refuses.
    let mut seen = std::collections::BTreeSet::new();
    metrics.retain(|m| seen.insert(*m));
    let names: Vec<&str> = metrics.iter().map(|m| m.as_str()).collect();
    let (scores, taus) = report::image_bootstrap::run(&report::image_bootstrap::Settings {
        results: results.clone(),
        resamples,
        metrics: metrics.clone(),
        seed,
        resample_by,
        interval,
    })?;
    // The rows kept from an earlier run carry that run's cost.
    let cost = taus.iter().find(|t| names.contains(&t.metric.as_str())).map_or(0.0, |t| t.seconds_per_resample);
    println!(
        "{}: {} score intervals, {} tau-b intervals ({cost:.2} s per resample of the first task); run `cargo xtask report --results {}` to draw them",
        results.display(),
        scores.len(),
        taus.iter().filter(|t| t.low.is_some()).count(),
        results.display()
    );
    Ok(())
}

fn reproduce(args: &study::args::ReproduceArgs) -> Result<()> {
    let command = std::iter::once("cargo xtask".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
    let study = args.study(command)?;
    if args.plan {
        return study::plan::print(&study);
    }
    let start = std::time::Instant::now();
    let outcome = study::run(&study)?;
    println!(
        "{}: {} of {} units complete ({:.0} s)",
        study.layout.out.display(),
        outcome.complete,
        outcome.units,
        start.elapsed().as_secs_f64()
    );
    if outcome.reported {
        println!("wrote scores.csv, performance.csv, table2.csv/.md, fig3*.svg/.png and report.md in {}", study.layout.out.display());
    } else {
        println!(
            "shard {}/{} done; run `cargo xtask reproduce` without --shard (same --out) to finish the tables and the report",
            study.shard.index, study.shard.count
        );
    }
    if !outcome.failed.is_empty() {
        anyhow::bail!(
            "{} failed (the rest ran; mend these and run the same command again, which does only what is left):
  {}",
            outcome.failed.len(),
            outcome.failed.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A benchmark of no images, runs, features or rounds is refused when the command is parsed
    /// (bench-zoo --batch 0 divided by zero after loading the model).
    #[test]
    fn benchmark_counts_of_zero_are_refused_by_the_parser() {
        for args in [
            &["bench-zoo", "--batch", "0"][..],
            &["bench-zoo", "--size", "0"],
            &["bench-zoo", "--repeats", "0"],
            &["bench-zoo", "--rounds", "0"],
            &["bench-scores", "--d", "0"],
            &["bench-data", "--width", "0"],
            &["bench-data", "--batch", "0"],
            &["bench", "--repeats", "0"],
            &["bench-zoo-worker", "resnet18", "--batch", "0", "--size", "8", "--repeats", "1", "--device", "cpu"],
        ] {
            let error = Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied())).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains("invalid value '0'") && error.contains("0 is not in 1.."), "{args:?}: {error}");
        }
        assert!(Cli::try_parse_from(["xtask", "bench-zoo", "--batch", "1", "--rounds", "2"]).is_ok());
    }

    /// An option that only means something beside another is refused without it (each was
    /// ignored: the study ran without halving, the demo's cache option on a real study, a
    /// ranking without fine-tuning).
    #[test]
    fn an_option_without_the_one_it_belongs_to_is_refused_by_the_parser() {
        for (args, needed) in [
            (&["reproduce", "--halving-min-epochs", "2"][..], "--halving <ETA>"),
            (&["reproduce", "--demo-cache", "cache"], "--demo"),
            (&["rank", "--images", "x", "--epochs", "3"], "--finetune-top <K>"),
            (&["rank", "--images", "x", "--trials", "3"], "--finetune-top <K>"),
            (&["rank", "--images", "x", "--batch", "3"], "--finetune-top <K>"),
        ] {
            let error = Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied())).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains("required arguments were not provided") && error.contains(needed), "{args:?}: {error}");
        }
        for args in [
            &["reproduce", "--halving", "3", "--halving-min-epochs", "2"][..],
            &["reproduce", "--demo", "--demo-cache", "cache"],
            &["rank", "--images", "x", "--finetune-top", "2", "--epochs", "3", "--trials", "2", "--batch", "4"],
        ] {
            assert!(Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied())).is_ok(), "{args:?}");
        }
    }

    /// `slurm --sbatch --account=abc`, as its help shows it, is an #SBATCH line (clap read
    /// --account as an option of its own and refused it), and reproduce's arguments still go
    /// after `--`.
    #[test]
    fn an_sbatch_line_may_start_with_dashes() {
        let cli = Cli::try_parse_from([
            "xtask",
            "slurm",
            "--out",
            "o",
            "--sbatch",
            "--account=abc",
            "--sbatch",
            "--qos=high",
            "--",
            "--epochs",
            "2",
        ])
        .unwrap();
        let Command::Slurm { args } = cli.command else { panic!("not slurm") };
        assert_eq!(
            (args.extra, args.reproduce),
            (vec!["--account=abc".to_string(), "--qos=high".into()], vec!["--epochs".to_string(), "2".into()])
        );
    }
}
