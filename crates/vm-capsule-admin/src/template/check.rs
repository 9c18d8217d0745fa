//! `vm-capsule template check`: boot a template once with a probe job, the way a routed job
//! would boot it (translate, then `vm-capsule run`), and say how far it got and how long each
//! stage took, from the serial console and the returned data disk.
//!
//! The console is followed while the VM runs, so a boot that can only end one way (the
//! firmware found nothing to boot, a login prompt came up but no agent) is stopped at once
//! instead of at the time limit.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_disk::{Access, DataDisk};
use capsule_manifest::Outcome;
use classad::eval::string_attr;
use thiserror::Error;

use crate::template::console::{self, Seen};
use vm_capsule_core::environment::Environment;
use vm_capsule_core::returned::read_result;
use vm_capsule_core::settings::{knobs, Settings};
use vm_capsule_execute::runner::{self, Accel, RunError, RunOptions};
use vm_capsule_submit::log::HookLog;
use vm_capsule_submit::translate::translate;

/// The probe job: what the job sees, one `name: value` per line.
pub const PROBE_SCRIPT: &str = r#"#!/bin/sh
echo "kernel: $(uname -r)"
if [ -r /etc/os-release ]; then . /etc/os-release; echo "distribution: ${PRETTY_NAME:-$NAME}"; else echo "distribution: unknown"; fi
echo "user: $(id -un 2>/dev/null || id -u)"
echo "working dir: $(pwd)"
echo "free disk: $(df -Pk . | awk 'NR==2 {print $4}') KiB"
"#;

/// A login prompt with no agent, or a result with no poweroff, is final after this long
/// (cloud-init starts the agent after the login prompt is up).
const SETTLE: Duration = Duration::from_secs(45);
/// The most of the console log read for the verdict (a probe boot prints well under 1 MiB).
const CONSOLE_MAX: u64 = 16 << 20;

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// `VM_CAPSULE_TEMPLATE`: the directory holding `condor_vm_capsule/`.
    pub template_root: PathBuf,
    /// The static agent to ship on the data disk.
    pub agent: PathBuf,
    /// Knob settings (`VM_CAPSULE_*` names) that apply on top of the configuration:
    /// `VM_CAPSULE_AGENT_START`, `VM_CAPSULE_DATA_DISK_LABEL`, the classad template.
    pub knobs: Vec<(String, String)>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Accelerator.
    pub accel: Accel,
    /// Work here and keep it (default: a temporary directory, removed).
    pub keep: Option<PathBuf>,
    /// The environment the check runs in: the configuration's `_CONDOR_` overrides, `PATH`
    /// for QEMU, the user who owns the probe job, the temp dir.
    pub env: Environment,
}

/// Seconds from QEMU's start at which each stage was seen on the console.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// The agent started.
    pub agent: Option<Duration>,
    /// The job started.
    pub job: Option<Duration>,
    /// The job ended.
    pub job_end: Option<Duration>,
    /// QEMU exited after the guest powered off.
    pub poweroff: Option<Duration>,
}

impl Timings {
    /// QEMU start to agent start.
    pub fn boot_to_agent(&self) -> Option<Duration> {
        self.agent
    }

    /// Agent start to job start.
    pub fn agent_to_job(&self) -> Option<Duration> {
        Some(self.job?.saturating_sub(self.agent?))
    }

    /// Job end to poweroff (QEMU gone).
    pub fn end_to_poweroff(&self) -> Option<Duration> {
        Some(self.poweroff?.saturating_sub(self.job_end?))
    }
}

/// What the probe job printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// `uname -r`.
    pub kernel: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub distribution: String,
    /// `id -un`.
    pub user: String,
    /// `pwd`.
    pub working_dir: String,
    /// Free space in the working dir, KiB.
    pub free_kib: Option<u64>,
}

impl Probe {
    fn parse(text: &str) -> Probe {
        let mut p = Probe::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(": ") else {
                continue;
            };
            let v = v.trim().to_owned();
            match k {
                "kernel" => p.kernel = v,
                "distribution" => p.distribution = v,
                "user" => p.user = v,
                "working dir" => p.working_dir = v,
                "free disk" => p.free_kib = v.trim_end_matches(" KiB").parse().ok(),
                _ => {}
            }
        }
        p
    }
}

/// How the check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Booted, ran the probe, powered off.
    Good,
    /// The firmware found no boot loader on the OS disk.
    NoBootableDisk,
    /// Nothing at all on the serial console.
    SilentConsole,
    /// The guest kernel panicked (the line).
    KernelPanic(String),
    /// The kernel booted, the agent never started (`true`: a login prompt came up).
    AgentNeverStarted(bool),
    /// The agent found no data disk (its message).
    DataDiskNotFound(String),
    /// The agent started but wrote no result (its last error, or the console tail).
    AgentFailed(String),
    /// The probe job did not run or did not exit 0 (why).
    JobFailed(String),
    /// The result was written but the guest never powered off.
    NoPoweroff,
    /// The time limit passed at this stage (a description).
    TimedOut(&'static str),
}

impl Verdict {
    /// True for [`Verdict::Good`].
    pub fn is_good(&self) -> bool {
        *self == Verdict::Good
    }

    /// One line for the admin: what failed and what to do.
    pub fn explain(&self) -> String {
        match self {
            Verdict::Good => "GOOD: the template boots, runs a job as the job user and powers off".to_owned(),
            Verdict::NoBootableDisk => "FAILED at boot: no bootable disk (the firmware found no boot loader on the OS disk); install GRUB on it, or boot a kernel directly (vmlinuz + initrd.img + cmdline in the template)".to_owned(),
            Verdict::SilentConsole => "FAILED at boot: nothing appeared on the serial console; the OS disk may not boot, or its kernel does not log to the serial port (add console=ttyS0 to its command line)".to_owned(),
            Verdict::KernelPanic(line) => format!("FAILED at boot: the guest kernel panicked ({line}); check root= and the initramfs"),
            Verdict::AgentNeverStarted(login) => format!(
                "FAILED: agent never started: the kernel booted{} but capsule-init did not run; put the agent and its unit in the image (vm-capsule template install-agent) or use VM_CAPSULE_AGENT_START = cloud-init for a cloud image",
                if *login { " to a login prompt" } else { "" }
            ),
            Verdict::DataDiskNotFound(msg) => format!("FAILED: data disk not found: {msg}"),
            Verdict::AgentFailed(why) => format!("FAILED: the agent started but wrote no result: {why}"),
            Verdict::JobFailed(why) => format!("FAILED: the probe job did not run cleanly: {why}"),
            Verdict::NoPoweroff => "FAILED: no poweroff: the job's result was written but the guest did not power off (the unit's SuccessAction/FailureAction, or cloud-init's power_state, is missing)".to_owned(),
            Verdict::TimedOut(stage) => format!("FAILED: time limit reached {stage}"),
        }
    }
}

/// What a check found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The verdict.
    pub verdict: Verdict,
    /// When each stage was seen.
    pub timings: Timings,
    /// What the probe job saw.
    pub probe: Option<Probe>,
    /// The console log.
    pub console: PathBuf,
    /// Its last lines.
    pub console_tail: Vec<String>,
    /// The account jobs are meant to run as (`VM_CAPSULE_JOB_USER`).
    pub job_user: String,
}

/// A check that could not even start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CheckError {
    /// Work files could not be made.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The template or the knobs cannot make a job.
    #[error("cannot make a probe job for this template: {0}")]
    Translate(String),
    /// QEMU could not be started.
    #[error(transparent)]
    Run(RunError),
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> CheckError {
    move |source| CheckError::Io { what, source }
}

/// The console log as text. The guest writes it: read a bounded amount, and non-UTF-8 bytes
/// must not hide the lines around them.
fn read_console(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(f) = fs::File::open(path) {
        let _ = f.take(CONSOLE_MAX).read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// How the check boots the capsule with `qemu`: in place, stopped early through `cancel`.
fn run_options(opts: &CheckOptions, qemu: PathBuf, cancel: Arc<AtomicBool>) -> RunOptions {
    RunOptions {
        timeout: Some(opts.timeout),
        accel: opts.accel,
        in_place: true,
        sandbox_parent: opts.env.temp_dir.clone(),
        sandbox: None,
        qemu,
        workdir: None,
        cancel: Some(cancel),
        tb_size_mib: knobs::TCG_TB_MIB.default_number().unwrap_or_default(),
        host_paths: Vec::new(),
    }
}

/// Boot the template once with the probe job.
///
/// # Errors
/// [`CheckError`] only when no boot could be attempted; a failed boot is a [`Verdict`].
pub fn check(
    opts: &CheckOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<CheckReport, CheckError> {
    let qemu = vm_capsule_execute::qemu::find_qemu(None, opts.env.path())
        .map_err(|e| CheckError::Run(RunError::from(e)))?;
    let temp;
    let work = match &opts.keep {
        Some(dir) => {
            fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("vm-capsule-check.")
                .tempdir_in(&opts.env.temp_dir)
                .map_err(io_err("cannot create a work directory".to_owned()))?;
            temp.path().to_owned()
        }
    };
    let (routed, job_user) = make_capsule(opts, &work)?;
    let scratch = PathBuf::from(string_attr(&routed, "Iwd").unwrap_or_default());
    let console_path = scratch.join(runner::CONSOLE_LOG);
    let cancel = Arc::new(AtomicBool::new(false));
    let run_opts = run_options(opts, qemu, Arc::clone(&cancel));
    progress(&format!(
        "booting {} (console {})",
        opts.template_root.display(),
        console_path.display()
    ));
    let start = Instant::now();
    let mut seen = Seen::default();
    let mut timings = Timings::default();
    let mut early: Option<Verdict> = None;
    let mut login_at: Option<Duration> = None;
    let outcome = std::thread::scope(|s| {
        let vm = s.spawn(|| runner::run(&routed, &run_opts, &mut |_| {}));
        let mut follower = Follower::default();
        while !vm.is_finished() {
            std::thread::sleep(Duration::from_millis(25));
            for line in follower.new_lines(&console_path) {
                seen.feed(&line);
                let now = start.elapsed();
                let stamp = |t: &mut Option<Duration>, reached: bool| {
                    if reached && t.is_none() {
                        *t = Some(now);
                    }
                };
                stamp(&mut timings.agent, seen.agent_started);
                stamp(&mut timings.job, seen.job_started);
                stamp(&mut timings.job_end, seen.job_ended);
                stamp(&mut login_at, seen.login_prompt);
            }
            if early.is_none() {
                early = settled(&seen, &timings, login_at, start.elapsed());
                if early.is_some() {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        }
        let result = vm.join().unwrap_or_else(|_| {
            Err(RunError::Crashed {
                why: "the run thread panicked".to_owned(),
                console: console_path.clone(),
            })
        });
        if result.is_ok() {
            timings.poweroff = Some(start.elapsed());
        }
        result
    });
    let text = read_console(&console_path);
    let mut all = Seen::default();
    all.feed_all(&text);
    let data = scratch.join(string_attr(&routed, "VMCapsuleDataDisk").unwrap_or_default());
    let (result, stdout) = read_disk(&data);
    let outcome = match outcome {
        Err(e @ RunError::NoQemu { .. }) => return Err(CheckError::Run(e)),
        other => other,
    };
    let verdict = match (&outcome, early) {
        (_, Some(v)) => v,
        (Ok(_), None) => judge_result(result.as_ref(), &all),
        (Err(RunError::Crashed { why, .. }), None) => {
            Verdict::KernelPanic(all.panic.clone().unwrap_or_else(|| why.clone()))
        }
        (Err(_), None) => judge_timeout(&all),
    };
    let probe = (verdict.is_good()).then(|| Probe::parse(&stdout));
    Ok(CheckReport {
        verdict,
        timings,
        probe,
        console: console_path,
        console_tail: console::tail(&text, 12),
        job_user,
    })
}

/// A verdict the console already makes final, so the VM can be stopped.
fn settled(seen: &Seen, t: &Timings, login_at: Option<Duration>, now: Duration) -> Option<Verdict> {
    if seen.no_bootable && !seen.kernel {
        return Some(Verdict::NoBootableDisk);
    }
    let waited = |at: Option<Duration>| at.is_some_and(|at| now.saturating_sub(at) > SETTLE);
    if !seen.agent_started && waited(login_at) {
        return Some(Verdict::AgentNeverStarted(true));
    }
    (seen.result_written && waited(t.job_end)).then_some(Verdict::NoPoweroff)
}

/// The guest powered off: judge by what it left on the data disk.
fn judge_result(result: Option<&capsule_manifest::JobResult>, seen: &Seen) -> Verdict {
    match result {
        Some(r) => match (&r.outcome, r.problem_text(|_| true)) {
            (Outcome::Exited { code: 0 }, None) => Verdict::Good,
            (outcome, problems) => Verdict::JobFailed(format!(
                "{outcome:?}{}",
                problems.map(|e| format!(": {e}")).unwrap_or_default()
            )),
        },
        None => match &seen.data_disk_missing {
            Some(msg) => Verdict::DataDiskNotFound(msg.clone()),
            None if !seen.agent_started && seen.kernel => {
                Verdict::AgentNeverStarted(seen.login_prompt)
            }
            None if !seen.agent_started => Verdict::SilentConsole,
            None => Verdict::AgentFailed(seen.agent_error.clone().unwrap_or_else(|| {
                "no result.json on the data disk; see the console log".to_owned()
            })),
        },
    }
}

/// The time limit passed: judge by the furthest stage the console shows.
fn judge_timeout(seen: &Seen) -> Verdict {
    use crate::template::console::Stage;
    match seen.stage() {
        Stage::Nothing => Verdict::SilentConsole,
        Stage::NoBootableDisk => Verdict::NoBootableDisk,
        Stage::Kernel => Verdict::AgentNeverStarted(seen.login_prompt),
        Stage::DataDiskNotFound => {
            Verdict::DataDiskNotFound(seen.data_disk_missing.clone().unwrap_or_default())
        }
        Stage::AgentStarted => Verdict::TimedOut("after the agent started, before the job did"),
        Stage::JobStarted => Verdict::TimedOut("while the probe job ran"),
        Stage::JobEnded => Verdict::TimedOut("while the agent wrote the results"),
        Stage::ResultWritten => Verdict::NoPoweroff,
    }
}

/// result.json and the job's stdout from the returned data disk, if there.
fn read_disk(path: &Path) -> (Option<capsule_manifest::JobResult>, String) {
    let Ok(disk) = DataDisk::open(path, Access::ReadOnly) else {
        return (None, String::new());
    };
    let result = read_result(&disk).ok();
    let mut stdout = String::new();
    if let Ok(r) = disk.open_file(capsule_manifest::DEFAULT_STDOUT) {
        let _ = r.take(64 << 10).read_to_string(&mut stdout);
    }
    (result, stdout)
}

/// Stage the probe job as the translate hook would for a routed VM job.
fn make_capsule(
    opts: &CheckOptions,
    work: &Path,
) -> Result<(classad::ClassAd, String), CheckError> {
    use std::os::unix::fs::PermissionsExt;
    let iwd = work.join("job");
    let scratch = work.join("scratch");
    for d in [&iwd, &scratch] {
        fs::create_dir_all(d).map_err(io_err(format!("cannot create {}", d.display())))?;
    }
    let probe = iwd.join("probe.sh");
    fs::write(&probe, PROBE_SCRIPT)
        .and_then(|()| fs::set_permissions(&probe, fs::Permissions::from_mode(0o755)))
        .map_err(io_err(format!("cannot write {}", probe.display())))?;
    let owner = opts.env.user.clone().unwrap_or_else(|| "root".to_owned());
    let job_ad = format!(
        "ClusterId = 1\nProcId = 0\nOwner = \"{owner}\"\nIwd = \"{iwd}\"\nCmd = \"{cmd}\"\n\
         JobUniverse = 5\nTransferExecutable = true\nShouldTransferFiles = \"YES\"\n\
         WhenToTransferOutput = \"ON_EXIT\"\nOut = \"probe.out\"\nErr = \"probe.err\"\n",
        iwd = iwd.display(),
        cmd = probe.display()
    );
    let stdin = format!("[ Name = \"template check\"; TargetUniverse = 13 ]\n------\n{job_ad}");
    // The admin's configuration, then what the check itself needs (later wins).
    let mut env = opts.env.clone();
    let ours = [
        (knobs::TEMPLATE, opts.template_root.display().to_string()),
        (knobs::SCRATCH_DIR_PREFIX, scratch.display().to_string()),
        (knobs::INIT_SCRIPT_PATH, opts.agent.display().to_string()),
        (knobs::ROUTED_UNIVERSE, "vm".to_owned()),
        // The template's own OS disk is booted, wherever the nodes keep theirs.
        (knobs::NODE_IMAGE_DIR, String::new()),
        (knobs::OUTPUT_HEADROOM_MB, "16".to_owned()),
        (knobs::TRANSLATE_LOG, String::new()),
    ];
    env.vars.extend(
        ours.into_iter()
            .map(|(k, v)| (k.name.to_owned(), v))
            .chain(opts.knobs.iter().cloned())
            .map(|(k, v)| (format!("_CONDOR_{k}"), v)),
    );
    let settings = Settings::load(None, &env).map_err(|e| CheckError::Translate(e.to_string()))?;
    let mut cfg = settings
        .translate()
        .map_err(|e| CheckError::Translate(e.to_string()))?;
    // The probe job belongs to whoever runs the check (root included): not a hook run for
    // another user, which is what the owner check guards.
    cfg.test_any_user = true;
    let mut log = HookLog::open("check", None).without_stderr();
    let translated =
        translate(&stdin, &cfg, &mut log).map_err(|e| CheckError::Translate(e.to_string()))?;
    Ok((translated.routed, cfg.job_user))
}

/// Reads the lines appended to a file since the last call.
#[derive(Debug, Default)]
struct Follower {
    offset: u64,
    partial: String,
}

impl Follower {
    fn new_lines(&mut self, path: &Path) -> Vec<String> {
        let Ok(mut f) = fs::File::open(path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        let Ok(n) = f.take(1 << 20).read_to_end(&mut bytes) else {
            return Vec::new();
        };
        self.offset += u64::try_from(n).unwrap_or(0);
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut lines: Vec<String> = Vec::new();
        while let Some(at) = self.partial.find('\n') {
            lines.push(self.partial[..at].to_owned());
            self.partial.drain(..=at);
        }
        // A prompt ends without a newline; look at it too (it is seen again, harmlessly).
        if self.partial.trim_end().ends_with("login:") {
            lines.push(self.partial.clone());
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_is_parsed() {
        let p = Probe::parse("kernel: 6.1.0-13-amd64\ndistribution: Debian GNU/Linux 12 (bookworm)\nuser: condor\nworking dir: /var/lib/capsule/work\nfree disk: 1834000 KiB\n");
        assert_eq!(p.kernel, "6.1.0-13-amd64");
        assert_eq!(p.user, "condor");
        assert_eq!(p.free_kib, Some(1_834_000));
    }

    #[test]
    fn verdicts_from_consoles() {
        let mut s = Seen::default();
        s.feed("[ 0.0] Linux version 6.1");
        assert_eq!(judge_timeout(&s), Verdict::AgentNeverStarted(false));
        assert_eq!(judge_result(None, &s), Verdict::AgentNeverStarted(false));
        s.feed("capsule-init [ 9.1]: started (pid 200)");
        s.feed("capsule-init [ 9.2]: error: no data disk labelled CONDORDATA after 120 s; block devices seen: vda (no FAT volume)");
        assert!(
            matches!(judge_result(None, &s), Verdict::DataDiskNotFound(m) if m.contains("vda (no FAT volume)"))
        );
        let t = Timings {
            agent: Some(Duration::from_secs(9)),
            job: Some(Duration::from_secs(10)),
            job_end: Some(Duration::from_secs(11)),
            poweroff: Some(Duration::from_secs(13)),
        };
        assert_eq!(t.agent_to_job(), Some(Duration::from_secs(1)));
        assert_eq!(t.end_to_poweroff(), Some(Duration::from_secs(2)));
        let mut done = Seen::default();
        done.feed("capsule-init [ 3.0]: result.json written: Exited { code: 0 }");
        assert_eq!(settled(&done, &t, None, Duration::from_secs(12)), None);
        assert_eq!(
            settled(&done, &t, None, Duration::from_secs(60)),
            Some(Verdict::NoPoweroff)
        );
        let mut login = Seen::default();
        login.feed("capsule login: ");
        let at = Some(Duration::from_secs(20));
        assert_eq!(
            settled(&login, &Timings::default(), at, Duration::from_secs(30)),
            None
        );
        assert_eq!(
            settled(&login, &Timings::default(), at, Duration::from_secs(70)),
            Some(Verdict::AgentNeverStarted(true))
        );
    }
}
