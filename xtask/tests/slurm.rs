#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `cargo xtask slurm` against a real Slurm: a single-node cluster (Debian's slurm-wlm and
//! munge) started by the test as root without systemd — munged as the munge user with a
//! generated key, slurmctld and slurmd with a slurm.conf naming this host (CPUs=2,
//! proctrack/linuxproc, task/none, cons_tres) — the generated script submitted for a small
//! demo with three array tasks, and the merged results compared with one process's; then again
//! with `--keep-going` and one backbone's weights missing, whose final job must still run. `.ci/run`
//! installs the packages and sets MEDXFER_REQUIRE_SLURM=1, so there the test cannot skip.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BACKBONES: &str = "tiny_resnet_basic,tiny_densenet_b,tiny_vit_b";

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(command: &mut Command) -> String {
    String::from_utf8(run(command).stdout).unwrap().trim().to_string()
}

/// A running single-node cluster; dropping it stops the daemons it started.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    pid_files: Vec<PathBuf>,
}

impl Cluster {
    /// None (with a message) where Slurm is not installed or this is not root, unless
    /// MEDXFER_REQUIRE_SLURM is set.
    fn start(dir: &Path) -> Option<Self> {
        let missing: Vec<&str> = ["munged", "slurmctld", "slurmd", "sbatch", "scontrol", "runuser"]
            .into_iter()
            .filter(|tool| {
                !Command::new("sh")
                    .arg("-c")
                    .arg(format!("command -v {tool} || test -x /usr/sbin/{tool}"))
                    .output()
                    .unwrap()
                    .status
                    .success()
            })
            .collect();
        let root = stdout(Command::new("id").arg("-u")) == "0";
        if !missing.is_empty() || !root {
            let why = format!("missing {missing:?}, root: {root}; `apt-get install slurm-wlm munge` as root");
            assert!(std::env::var_os("MEDXFER_REQUIRE_SLURM").is_none(), "MEDXFER_REQUIRE_SLURM is set but Slurm cannot run: {why}");
            eprintln!("skipping the Slurm test: {why}");
            return None;
        }
        let sbin = |tool: &str| if Path::new("/usr/sbin").join(tool).exists() { format!("/usr/sbin/{tool}") } else { tool.to_string() };
        // The daemons (munged as the munge user) must reach their files: the test's temporary
        // folder is private to root otherwise.
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new("chmod").arg("755").arg(dir).arg(dir.parent().unwrap()));
        let munge = dir.join("munge");
        let (etc, socket_dir) = (munge.join("etc"), munge.join("run"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&socket_dir).unwrap();
        let mut key = vec![0u8; 1024];
        std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut key).unwrap();
        std::fs::write(etc.join("munge.key"), key).unwrap();
        run(Command::new("chmod").args(["755", munge.to_str().unwrap(), socket_dir.to_str().unwrap()]));
        run(Command::new("chmod").args(["700", etc.to_str().unwrap()]));
        run(Command::new("chmod").args(["400", etc.join("munge.key").to_str().unwrap()]));
        run(Command::new("chown").args(["-R", "munge:munge", munge.to_str().unwrap()]));
        let socket = socket_dir.join("munge.socket");
        let munged_pid = socket_dir.join("munged.pid");
        run(Command::new("runuser").args(["-u", "munge", "--", &sbin("munged")]).args([
            format!("--key-file={}", etc.join("munge.key").display()),
            format!("--socket={}", socket.display()),
            format!("--pid-file={}", munged_pid.display()),
            format!("--log-file={}", etc.join("munged.log").display()),
            format!("--seed-file={}", etc.join("seed").display()),
        ]));
        let mut cluster = Self { dir: dir.to_path_buf(), conf: dir.join("slurm.conf"), pid_files: vec![munged_pid] };

        let host = stdout(Command::new("hostname").arg("-s"));
        let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (ctld_port, slurmd_port) = (free_port(), free_port());
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let d = dir.display();
        let conf = format!(
            "ClusterName=medxfer\nSlurmctldHost={host}\nSlurmUser=root\nSlurmdUser=root\nSlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n\
             AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={socket}\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
             SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\nSlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
             SchedulerType=sched/backfill\nReturnToService=2\nMpiDefault=none\nJobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\nSwitchType=switch/none\nMinJobAge=3600\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN\nPartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            socket = socket.display()
        );
        std::fs::write(&cluster.conf, conf).unwrap();
        for daemon in ["slurmctld", "slurmd"] {
            run(Command::new(sbin(daemon)).arg("-f").arg(&cluster.conf));
            cluster.pid_files.push(dir.join(format!("{daemon}.pid")));
        }
        let start = Instant::now();
        loop {
            let state = cluster.command("sinfo").args(["-h", "-o", "%t"]).output().unwrap();
            if String::from_utf8_lossy(&state.stdout).trim() == "idle" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the node never became idle:\n{}", cluster.logs());
            std::thread::sleep(Duration::from_millis(250));
        }
        Some(cluster)
    }

    /// A Slurm client command for this cluster.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", &self.conf);
        command
    }

    fn job_state(&self, job: &str) -> String {
        self.job_field(job, "JobState")
    }

    fn job_field(&self, job: &str, field: &str) -> String {
        let text = stdout(self.command("scontrol").args(["show", "job", job]));
        let prefix = format!("{field}=");
        text.split_whitespace().find_map(|f| f.strip_prefix(prefix.as_str())).unwrap_or("?").to_string()
    }

    /// Waits for the final job of the study in `out` to end; its state (COMPLETED, FAILED, ...).
    /// A final job that can never start (its dependency cannot be met) fails the test.
    fn wait_for_final_job(&self, out: &Path, finish: &str) -> String {
        let start = Instant::now();
        loop {
            let state = self.job_state(finish);
            let logs = || {
                let dir = out.join("slurm/logs");
                let jobs: String = std::fs::read_dir(&dir)
                    .map(|d| d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default();
                format!("{jobs}\n{}", self.logs())
            };
            if !["PENDING", "CONFIGURING", "RUNNING", "COMPLETING"].contains(&state.as_str()) {
                return state;
            }
            let reason = self.job_field(finish, "Reason");
            assert!(reason != "DependencyNeverSatisfied", "the final job can never start ({reason}):\n{}", logs());
            assert!(start.elapsed() < Duration::from_secs(600), "not done after 10 minutes (final job {state}):\n{}", logs());
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn logs(&self) -> String {
        ["log/slurmctld.log", "log/slurmd.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn pids(&self) -> Vec<String> {
        self.pid_files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).map(|p| p.trim().to_string()).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for pid in self.pids().iter().rev() {
            let _ = Command::new("kill").arg(pid).status();
        }
    }
}

fn demo_args(shared: &Path) -> Vec<String> {
    ["--demo", "--backbones", BACKBONES, "--trials", "2", "--epochs", "1"]
        .into_iter()
        .map(String::from)
        .chain([
            "--demo-cache".to_string(),
            shared.join("cache").display().to_string(),
            "--data".to_string(),
            shared.join("data").display().to_string(),
        ])
        .collect()
}

/// The log of job `name` (e.g. medxfer-report-12) of the study in `out`; empty if none.
fn log_of(out: &Path, name: &str) -> String {
    std::fs::read_to_string(out.join(format!("slurm/logs/{name}.out"))).unwrap_or_default()
}

fn tables(out: &Path) -> Vec<Vec<u8>> {
    ["scores.csv", "performance.csv", "table2.csv"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")))
        .collect()
}

#[test]
fn the_generated_job_array_runs_on_a_real_slurm_and_equals_one_process_and_keeps_going_past_a_failure() {
    let shared = tempfile::tempdir().unwrap();
    let Some(cluster) = Cluster::start(&shared.path().join("cluster")) else { return };
    let xtask = env!("CARGO_BIN_EXE_xtask");

    let single = shared.path().join("single");
    run(Command::new(xtask).arg("reproduce").args(demo_args(shared.path())).arg("--out").arg(&single));

    let out = shared.path().join("sharded");
    let submitted = stdout(
        cluster
            .command(xtask)
            .args(["slurm", "--out", out.to_str().unwrap(), "--shards", "3", "--cpus", "1", "--time", "00:30:00", "--submit", "--"])
            .args(demo_args(shared.path())),
    );
    assert!(submitted.contains("submitted array job"), "{submitted}");
    let jobs = std::fs::read_to_string(out.join("slurm/jobs")).unwrap();
    let (array, finish) = jobs.trim().split_once(' ').unwrap();
    let state = cluster.wait_for_final_job(&out, finish);
    assert_eq!(state, "COMPLETED", "{}", log_of(&out, &format!("medxfer-report-{finish}")));
    for task in 0..3 {
        assert_eq!(cluster.job_state(&format!("{array}_{task}")), "COMPLETED");
    }

    // Each array task wrote its own log, and every trial's one epoch ran exactly once.
    let logs: Vec<String> = (0..3).map(|t| log_of(&out, &format!("medxfer-study-{array}_{t}"))).collect();
    for (t, log) in logs.iter().enumerate() {
        assert!(log.contains(&format!("shard {t}/3 done")), "array task {t}:\n{log}");
    }
    let epochs: usize = logs.iter().map(|l| l.lines().filter(|line| line.contains("epoch   1 ")).count()).sum();
    assert_eq!(epochs, 3 * 3 * 2, "3 tasks x 3 backbones x 2 trials, each once:\n{}", logs.join("\n"));
    let finish_log = log_of(&out, &format!("medxfer-report-{finish}"));
    assert!(finish_log.contains("9 of 9 units complete"), "{finish_log}");
    assert_eq!(tables(&out), tables(&single), "the merged results differ from one process's");

    // With --keep-going, a backbone whose weights cannot be had fails its array task, but the
    // final job still runs: it tries that backbone's units again, writes the report from the
    // others and fails naming each one.
    let weights = shared.path().join("weights-but-one");
    std::fs::create_dir_all(&weights).unwrap();
    for entry in std::fs::read_dir(shared.path().join("cache/weights")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "tiny_vit_b.safetensors" {
            std::fs::copy(&path, weights.join(path.file_name().unwrap())).unwrap();
        }
    }
    // A results folder whose name has a space, a '#' and a '%' (each broke the #SBATCH --output
    // line: the space and the '#' end its value, Slurm expands the '%').
    let out = shared.path().join("keep going #2 50%");
    run(cluster
        .command(xtask)
        .args(["slurm", "--out", out.to_str().unwrap(), "--shards", "3", "--cpus", "1", "--time", "00:30:00", "--submit", "--"])
        .args(demo_args(shared.path()))
        .args(["--keep-going", "--weights", weights.to_str().unwrap()]));
    let jobs = std::fs::read_to_string(out.join("slurm/jobs")).unwrap();
    let (array, finish) = jobs.trim().split_once(' ').unwrap();
    let state = cluster.wait_for_final_job(&out, finish);
    let finish_log = log_of(&out, &format!("medxfer-report-{finish}"));
    assert_eq!(state, "FAILED", "{finish_log}");
    assert!(finish_log.contains("3 failed (the rest ran"), "{finish_log}");
    let failed: Vec<usize> = (0..3).filter(|t| cluster.job_state(&format!("{array}_{t}")) == "FAILED").collect();
    assert!(!failed.is_empty(), "no array task failed");
    for t in &failed {
        let log = log_of(&out, &format!("medxfer-study-{array}_{t}"));
        assert!(log.contains("tiny_vit_b"), "array task {t}:\n{log}");
    }
    let performance = std::fs::read_to_string(out.join("performance.csv")).unwrap();
    assert_eq!(performance.lines().count(), 1 + 3 * 2 * 2, "the two other backbones of every task, ID and OOD:\n{performance}");
    assert!(!performance.contains("tiny_vit_b"), "{performance}");
    assert!(out.join("report.md").exists());

    let pids = cluster.pids();
    drop(cluster);
    // Gone, or a zombie (exited; nothing reaps daemons in some containers).
    let running = |pid: &String| {
        std::fs::read_to_string(Path::new("/proc").join(pid).join("stat"))
            .is_ok_and(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"))
    };
    let start = Instant::now();
    while pids.iter().any(running) && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!pids.iter().any(running), "daemons still running: {pids:?}");
}

/// `--submit` where sbatch fails says which failure it is: no sbatch on PATH, or sbatch's own
/// refusal (printed above it), where it asked "is sbatch on PATH?" of both. Against stand-ins on
/// a PATH of the test's own: bash and dirname, then a refusing sbatch.
#[test]
fn a_failed_submission_says_whether_sbatch_is_missing_or_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["bash", "dirname"] {
        let found = ["/bin", "/usr/bin"].iter().map(|d| Path::new(d).join(tool)).find(|p| p.is_file()).expect(tool);
        std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
    }
    let submit = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .env("PATH", &bin)
            .args(["slurm", "--out", dir.path().join(out).to_str().unwrap(), "--shards", "2", "--submit", "--", "--demo"])
            .output()
            .unwrap()
    };
    let output = submit("no-slurm");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("sbatch is not on PATH: submit from a Slurm login node"), "{stderr}");
    let sbatch = bin.join("sbatch");
    std::fs::write(&sbatch, "#!/bin/bash\necho 'sbatch: error: Batch job submission failed: Invalid account' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&sbatch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = submit("refused");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("Invalid account") && stderr.contains("sbatch's own message is above"), "{stderr}");
    assert!(dir.path().join("refused/slurm/submit.sh").is_file(), "the scripts are kept for a later submission");
}
