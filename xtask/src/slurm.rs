//! `cargo xtask slurm`: the study as a Slurm job array. Each array task runs `reproduce --shard
//! $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT` against the shared results directory; a job
//! that depends on the whole array (afterok) runs `reproduce` unsharded, which does what the
//! shards left (OOD steps of searches finished last) and writes the tables and the report.
//! With `--keep-going` an array task that had a unit fail still exits non-zero, so the final
//! job waits for the array's end whatever it was (afterany): otherwise it would never start.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser};

use crate::study::args::ReproduceArgs;

#[derive(Debug, Clone, Args)]
pub struct SlurmArgs {
    /// The shared results directory (passed on to reproduce); the scripts go to OUT/slurm/.
    #[arg(long)]
    pub out: PathBuf,
    /// Array tasks (shards) sharing the study.
    #[arg(long, default_value_t = 4)]
    pub shards: usize,
    /// Partition of every job (the cluster's default when not given).
    #[arg(long)]
    pub partition: Option<String>,
    /// GPUs per array task (--gres=gpu:N); the study then needs `--device cuda:0` after `--`.
    #[arg(long)]
    pub gpus: Option<usize>,
    /// Time limit of each array task.
    #[arg(long, default_value = "2-00:00:00")]
    pub time: String,
    /// Time limit of the final job.
    #[arg(long, default_value = "01:00:00")]
    pub finish_time: String,
    /// CPUs per task.
    #[arg(long, default_value_t = 4)]
    pub cpus: usize,
    /// Memory per task (Slurm syntax, e.g. 32G); the cluster's default when not given.
    #[arg(long)]
    pub mem: Option<String>,
    /// Extra #SBATCH lines (e.g. --account=abc), repeatable.
    #[arg(long = "sbatch", allow_hyphen_values = true)]
    pub extra: Vec<String>,
    /// The xtask binary the jobs run (this one by default; build it with --release).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Submit now (runs OUT/slurm/submit.sh).
    #[arg(long)]
    pub submit: bool,
    /// reproduce's arguments, after `--` (e.g. -- --data /scratch/data --device cuda:0).
    #[arg(last = true)]
    pub reproduce: Vec<String>,
}

/// The reproduce subcommand alone, to check the passed-through arguments now, not in a job.
#[derive(Debug, Parser)]
struct ReproduceOnly {
    #[command(flatten)]
    args: ReproduceArgs,
}

/// Quotes `text` for bash.
fn quote(text: &str) -> String {
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c)) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A path as the value of an #SBATCH file option: '%' doubled (Slurm expands `%x`, `%A` ... in
/// file names), and where it has a space, a '"', a backslash or a '#', in double quotes with those
/// escaped: sbatch ends an unquoted value at a space and the line at an unescaped '#' (seen
/// against a real Slurm: "Invalid directive found in batch script: going" for a folder "keep going").
fn sbatch_path(path: &str) -> String {
    let path = path.replace('%', "%%");
    if !path.contains(|c: char| c.is_whitespace() || "\"\\#".contains(c)) {
        return path;
    }
    let mut quoted = String::from("\"");
    for c in path.chars() {
        if "\"\\#".contains(c) {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() { Ok(path.to_path_buf()) } else { Ok(std::env::current_dir()?.join(path)) }
}

/// Refuses a time limit sbatch would reject ("2days"), in each job's script, at submission:
/// minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
/// days-hours:minutes:seconds, or UNLIMITED/INFINITE.
fn check_time(option: &str, text: &str) -> Result<()> {
    let numbers = |part: &str, most: usize| {
        let fields: Vec<&str> = part.split(':').collect();
        fields.len() <= most && fields.iter().all(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()))
    };
    let valid = ["unlimited", "infinite"].contains(&text.to_ascii_lowercase().as_str())
        || match text.split_once('-') {
            Some((days, rest)) => numbers(days, 1) && numbers(rest, 3),
            None => numbers(text, 3),
        };
    if !valid {
        bail!("{option} {text:?}: not a Slurm time limit; give minutes, HH:MM:SS or D-HH:MM:SS (e.g. 2-00:00:00)");
    }
    Ok(())
}

/// Refuses what would break or void an #SBATCH line: a line break or a space in a value (the
/// rest of the line is not read), memory without a unit below 1 GB (Slurm reads a bare number
/// as MB: `--mem 32` asks for 32 MB).
fn check_directives(args: &SlurmArgs) -> Result<()> {
    check_time("--time", &args.time)?;
    check_time("--finish-time", &args.finish_time)?;
    let values = [("--partition", args.partition.as_deref()), ("--mem", args.mem.as_deref())];
    for (option, value) in
        values.into_iter().filter_map(|(o, v)| v.map(|v| (o, v))).chain(args.extra.iter().map(|e| ("--sbatch", e.as_str())))
    {
        if value.is_empty() || value.contains(['\n', '\r']) || (option != "--sbatch" && value.contains(char::is_whitespace)) {
            bail!("{option} {value:?}: an #SBATCH value is one word on one line");
        }
    }
    if let Some(mem) = &args.mem {
        let digits = mem.trim_end_matches(|c: char| "KMGTkmgt".contains(c));
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || mem.len() - digits.len() > 1 {
            bail!("--mem {mem:?}: give a number and a unit, e.g. 32G");
        }
        if digits.len() == mem.len() && digits.parse::<u64>().is_ok_and(|mb| mb < 1024) {
            bail!("--mem {mem}: Slurm reads a number without a unit as MB, too little for the study; {mem}G?");
        }
    }
    Ok(())
}

/// The files written.
#[derive(Debug)]
pub struct Scripts {
    pub array: PathBuf,
    pub finish: PathBuf,
    pub submit: PathBuf,
}

/// Writes OUT/slurm/{array.sbatch, finish.sbatch, submit.sh}.
pub fn write(args: &SlurmArgs) -> Result<Scripts> {
    if args.shards == 0 {
        bail!("--shards must be at least 1");
    }
    if args
        .reproduce
        .iter()
        .any(|a| a == "--shard" || a.starts_with("--shard=") || a == "--out" || a.starts_with("--out=") || a == "--plan")
    {
        bail!("give --out to `slurm` itself, and no --shard or --plan after `--`: the scripts set them");
    }
    let out = absolute(&args.out)?;
    let mut reproduce = args.reproduce.clone();
    reproduce.extend(["--out".to_string(), out.display().to_string()]);
    let parsed = ReproduceOnly::try_parse_from(std::iter::once("reproduce".to_string()).chain(reproduce.iter().cloned()))
        .map_err(|e| anyhow::anyhow!("the arguments after `--` are not valid for reproduce:\n{e}"))?;
    if args.gpus.is_some_and(|g| g > 0) && !parsed.args.device_is_gpu() {
        bail!("--gpus asks for GPUs but the study runs on {}; add `--device cuda:0` after `--`", parsed.args.device);
    }
    if args.cpus == 0 {
        bail!("--cpus 0: each task needs at least 1 CPU");
    }
    check_directives(args)?;
    let binary = match &args.binary {
        Some(path) if !path.is_file() => bail!("--binary {}: no such file; build it with `cargo build --release -p xtask`", path.display()),
        Some(path) => absolute(path)?,
        None => std::env::current_exe().context("cannot find this program's path; give --binary")?,
    };
    parsed.args.check().context("the arguments after `--` would fail in every job")?;
    let workdir = std::env::current_dir()?;
    let dir = out.join("slurm");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let command = |extra: &str| {
        let mut line = quote(&binary.display().to_string());
        line.push_str(" reproduce");
        for arg in &reproduce {
            line.push(' ');
            line.push_str(&quote(arg));
        }
        line.push_str(extra);
        line
    };
    // One sbatch script: the shared directives, the job's own, a comment, then the command.
    let script = |name: &str, time: &str, directives: &[String], comment: &str, extra: &str| {
        let mut text = String::from("#!/bin/bash\n");
        let _ = writeln!(text, "#SBATCH --job-name={name}");
        let _ = writeln!(text, "#SBATCH --time={time}");
        let _ = writeln!(text, "#SBATCH --cpus-per-task={}", args.cpus);
        if let Some(partition) = &args.partition {
            let _ = writeln!(text, "#SBATCH --partition={partition}");
        }
        if let Some(gpus) = args.gpus.filter(|&g| g > 0) {
            let _ = writeln!(text, "#SBATCH --gres=gpu:{gpus}");
        }
        if let Some(mem) = &args.mem {
            let _ = writeln!(text, "#SBATCH --mem={mem}");
        }
        for directive in args.extra.iter().chain(directives) {
            let _ = writeln!(text, "#SBATCH {directive}");
        }
        let _ = writeln!(text, "{comment}\nset -euo pipefail\ncd {}\n{}", quote(&workdir.display().to_string()), command(extra));
        text
    };
    let array = script(
        "medxfer-study",
        &args.time,
        &[format!("--array=0-{}", args.shards - 1), format!("--output={}/%x-%A_%a.out", sbatch_path(&logs.display().to_string()))],
        "# One shard of the study: units i, i+n, ... and trials i, i+n, ... of every search; a rerun\n# of the same array (after a failure or a time limit) continues where it stopped.",
        " --shard \"$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT\"",
    );
    let finish = script(
        "medxfer-report",
        &args.finish_time,
        &[format!("--output={}/%x-%j.out", sbatch_path(&logs.display().to_string()))],
        "# After every shard: what they left (the OOD steps of searches finished last), the\n# tables, the figures and the report.",
        "",
    );
    let (dependency, when) = if parsed.args.keep_going {
        ("afterany", "once every array task ended (succeeded or not: --keep-going)")
    } else {
        ("afterok", "once every array task succeeded")
    };
    let submit = format!(
        "#!/bin/bash\n# Submits the array, then the final job {when}.\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\narray=$(sbatch --parsable array.sbatch)\narray=${{array%%;*}}\nfinish=$(sbatch --parsable --dependency={dependency}:$array finish.sbatch)\nfinish=${{finish%%;*}}\necho \"submitted array job $array ({} tasks) and the final job $finish\"\necho \"$array $finish\" > jobs\n",
        args.shards
    );
    let scripts = Scripts { array: dir.join("array.sbatch"), finish: dir.join("finish.sbatch"), submit: dir.join("submit.sh") };
    for (path, text) in [(&scripts.array, &array), (&scripts.finish, &finish), (&scripts.submit, &submit)] {
        medxfer_durable::write_atomic(path, text.as_bytes())?;
        set_executable(path)?;
    }
    Ok(scripts)
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = std::fs::metadata(path)?.permissions();
    permissions.set_mode(0o755);
    Ok(std::fs::set_permissions(path, permissions)?)
}

/// `cargo xtask slurm`.
pub fn run(args: &SlurmArgs) -> Result<()> {
    let scripts = write(args)?;
    println!("wrote {}, {} and {}", scripts.array.display(), scripts.finish.display(), scripts.submit.display());
    if args.submit {
        // Asked only after a failure, where it tells the two apart: no Slurm here, or Slurm's
        // own refusal (its message above; "is sbatch on PATH?" misled there).
        let sbatch_here =
            || std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("sbatch").is_file()));
        let status = std::process::Command::new("bash").arg(&scripts.submit).status().context("cannot run bash")?;
        if !status.success() {
            let why = if sbatch_here() {
                "sbatch's own message is above (submit.sh stops at the first refusal: check `squeue --me` for a job it did submit)"
            } else {
                "sbatch is not on PATH: submit from a Slurm login node"
            };
            bail!(
                "{} failed ({status}): {why}; the scripts are written, run `bash {}` once that is mended",
                scripts.submit.display(),
                quote(&scripts.submit.display().to_string())
            );
        }
    } else {
        println!("submit with: bash {}", quote(&scripts.submit.display().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// By hand, from sbatch's reading of an #SBATCH line (a '"' toggles quoting, a backslash
    /// takes the next character as it is, an unquoted space ends the value, an unescaped '#'
    /// the line) and its file-name patterns ('%%' is a '%'); a real Slurm reads the quoted form
    /// in the Slurm test.
    #[test]
    fn an_output_folder_is_written_as_sbatch_reads_it() {
        assert_eq!(sbatch_path("/scratch/me/results/slurm/logs"), "/scratch/me/results/slurm/logs");
        assert_eq!(sbatch_path("/scratch/50%/logs"), "/scratch/50%%/logs");
        assert_eq!(sbatch_path("/scratch/keep going #2/logs"), r#""/scratch/keep going \#2/logs""#);
        assert_eq!(sbatch_path(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
    }

    #[test]
    fn quoting_survives_bash() {
        for text in ["plain/path-1.txt", "it's", "two words", "$HOME", ""] {
            let output = std::process::Command::new("bash").arg("-c").arg(format!("printf %s {}", quote(text))).output().unwrap();
            assert_eq!(String::from_utf8(output.stdout).unwrap(), text);
        }
    }

    /// Arguments that would fail in every job are refused at submission, naming the problem,
    /// and nothing is written.
    #[test]
    fn arguments_every_job_would_fail_on_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("study");
        let args = |reproduce: &[&str]| SlurmArgs {
            out: out.clone(),
            shards: 2,
            partition: None,
            gpus: None,
            time: "01:00:00".into(),
            finish_time: "01:00:00".into(),
            cpus: 2,
            mem: None,
            extra: Vec::new(),
            binary: Some("/bin/true".into()),
            submit: false,
            reproduce: reproduce.iter().map(|a| a.to_string()).collect(),
        };
        let cases = [
            (SlurmArgs { shards: 0, ..args(&[]) }, "--shards must be at least 1"),
            (SlurmArgs { cpus: 0, ..args(&[]) }, "--cpus 0"),
            (SlurmArgs { gpus: Some(1), ..args(&[]) }, "add `--device cuda:0`"),
            (args(&["--shard", "0/2"]), "the scripts set them"),
            (args(&["--epochs", "0"]), "--epochs 0: a run needs at least 1 epoch"),
            (args(&["--trials", "0"]), "--trials 0"),
            (args(&["--crop", "0"]), "the crop is 0"),
            (args(&["--tasks", "lung"]), "unknown task"),
            (args(&["--splits", "random"]), "expected faithful, grouped or authors:DIR"),
            (args(&["--dtype", "bf16"]), "--dtype bf16 needs a GPU"),
            (args(&["--no-such-option"]), "not valid for reproduce"),
            (SlurmArgs { time: "2days".into(), ..args(&[]) }, "--time \"2days\": not a Slurm time limit"),
            (SlurmArgs { finish_time: "1:2:3:4".into(), ..args(&[]) }, "--finish-time \"1:2:3:4\": not a Slurm time limit"),
            (SlurmArgs { time: "1-".into(), ..args(&[]) }, "not a Slurm time limit"),
            (SlurmArgs { partition: Some("gpu a100".into()), ..args(&[]) }, "--partition \"gpu a100\": an #SBATCH value is one word"),
            (SlurmArgs { extra: vec!["--account=abc\n#SBATCH --x".into()], ..args(&[]) }, "--sbatch"),
            (SlurmArgs { mem: Some("32".into()), ..args(&[]) }, "--mem 32: Slurm reads a number without a unit as MB"),
            (SlurmArgs { mem: Some("32GB".into()), ..args(&[]) }, "--mem \"32GB\": give a number and a unit"),
            (SlurmArgs { binary: Some(dir.path().join("no-xtask")), ..args(&[]) }, "no-xtask: no such file"),
            (args(&["--tasks", "breast", "--data", "/no/data"]), "--data /no/data: no folder /no/data/breakhis (task breast's ID set)"),
            // A --weights folder without a backbone's file, found by name alone (a hub id is not
            // looked up): every array task refused it at its start, after its wait in the queue.
            (
                args(&["--demo", "--backbones", "tiny_vit_a,timm/resnet50.tv_in1k", "--weights", "/no/weights"]),
                "--weights /no/weights: no /no/weights/tiny_vit_a.safetensors, /no/weights/timm--resnet50.tv_in1k.safetensors",
            ),
        ];
        for (case, expected) in cases {
            let message = format!("{:#}", write(&case).unwrap_err());
            assert!(message.contains(expected), "{:?}: {message}", case.reproduce);
            assert!(!out.exists(), "{:?}: wrote {}", case.reproduce, out.display());
        }
        // Every form sbatch takes passes.
        for time in ["90", "90:30", "12:00:00", "2-12", "2-12:30", "2-00:00:00", "UNLIMITED"] {
            check_time("--time", time).unwrap();
        }
        for mem in ["32G", "4096", "500m", "1T"] {
            check_directives(&SlurmArgs { mem: Some(mem.into()), ..args(&[]) }).unwrap();
        }
        // The same arguments, mended, are written.
        let data = dir.path().join("data");
        for dataset in ["breakhis", "bach"] {
            std::fs::create_dir_all(data.join(dataset)).unwrap();
        }
        let scripts = write(&args(&["--epochs", "2", "--tasks", "breast", "--data", data.to_str().unwrap()])).unwrap();
        let expected = format!("reproduce --epochs 2 --tasks breast --data {} --out", data.display());
        assert!(std::fs::read_to_string(scripts.array).unwrap().contains(&expected));
        let weights = dir.path().join("weights");
        std::fs::create_dir_all(&weights).unwrap();
        for file in ["tiny_vit_a.safetensors", "timm--resnet50.tv_in1k.safetensors"] {
            std::fs::write(weights.join(file), b"weights").unwrap();
        }
        let weights_args = ["--demo", "--backbones", "tiny_vit_a,timm/resnet50.tv_in1k", "--weights", weights.to_str().unwrap()];
        write(&args(&weights_args)).unwrap();
    }
}
