//! Interrupted vanilla-flavour jobs: a STAND-IN starter (no starter can run here) runs the
//! launcher as HTCondor's starter does (argv from `Cmd` and `Arguments`, the sandbox as cwd,
//! `_CONDOR_JOB_AD` naming the job ad it wrote there, its own process group) and interrupts
//! it as the starter does (`OsProc::ShutdownGraceful`, `VanillaProc::Suspend`/`ShutdownFast`):
//! the soft-kill signal to the top process, SIGSTOP/SIGCONT and SIGKILL to the whole family,
//! and a restart in the same sandbox after a checkpoint exit. Each test boots the test guest
//! under TCG; seven boots in all.

use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use classad::eval::{evaluate_attr, string_attr};
use classad::{ClassAd, Value};
use rustix::process::{kill_process, kill_process_group, Pid, Signal};

use crate::router::{job_ads, print_ad, Pool};
use crate::vanilla::template;

/// Longest a launcher may run in these tests (a boot is 7-10 s, more on a busy machine).
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// The STAND-IN starter's view of one job: its routed ad and sandbox.
pub(crate) struct StandInStarter {
    routed: ClassAd,
    pub(crate) sandbox: PathBuf,
    /// The launcher's TMPDIR: must stay empty.
    tmp: PathBuf,
}

impl StandInStarter {
    /// A fresh sandbox with what HTCondor's transfer puts there: the executable (`Cmd`), the
    /// `TransferInput` entries by base name, and the job ad the starter writes (`.job.ad`).
    pub(crate) fn new(pool: &Pool, routed: ClassAd, name: &str) -> StandInStarter {
        let sandbox = pool.root.path().join(name);
        let tmp = pool.root.path().join(format!("{name}.tmp"));
        fs::create_dir_all(&sandbox).unwrap();
        fs::create_dir_all(&tmp).unwrap();
        let cmd = PathBuf::from(string_attr(&routed, "Cmd").unwrap());
        fs::copy(&cmd, sandbox.join(cmd.file_name().unwrap())).unwrap();
        let iwd = PathBuf::from(string_attr(&routed, "Iwd").unwrap());
        for entry in string_attr(&routed, "TransferInput").unwrap().split(',') {
            let src = iwd.join(entry.trim());
            let status = Command::new("cp")
                .arg("-r")
                .arg(&src)
                .arg(sandbox.join(src.file_name().unwrap()))
                .status()
                .unwrap();
            assert!(status.success(), "{}", src.display());
        }
        fs::write(sandbox.join(".job.ad"), print_ad(&routed)).unwrap();
        StandInStarter {
            routed,
            sandbox,
            tmp,
        }
    }

    /// Start the launcher as `OsProc::StartJob` does, in a process group of its own (the
    /// starter makes it a session leader); the streams append, as across in-place restarts.
    pub(crate) fn start(&self) -> Child {
        self.start_with(&[])
    }

    /// [`Self::start`] with the node's knobs (`_CONDOR_...`) in the launcher's environment.
    pub(crate) fn start_with(&self, knobs: &[(&str, &str)]) -> Child {
        let cmd = PathBuf::from(string_attr(&self.routed, "Cmd").unwrap());
        let exe = self.sandbox.join(cmd.file_name().unwrap());
        let args = vm_capsule_core::job::args::split_v2(
            &string_attr(&self.routed, "Arguments").unwrap_or_default(),
            "Arguments",
        )
        .unwrap();
        let stream = |name: &str| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.sandbox.join(name))
                .unwrap()
        };
        Command::new(&exe)
            .arg0(&exe)
            .args(&args)
            .current_dir(&self.sandbox)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("TMPDIR", &self.tmp)
            .env("_CONDOR_JOB_AD", self.sandbox.join(".job.ad"))
            .env("_CONDOR_SCRATCH_DIR", &self.sandbox)
            .envs(knobs.iter().copied())
            .stdin(Stdio::null())
            .stdout(stream("_condor_stdout"))
            .stderr(stream("_condor_stderr"))
            .process_group(0)
            .spawn()
            .unwrap()
    }

    /// Wait until the agent in the guest has started the job (its console line), then a
    /// little more for the job to set itself up.
    pub(crate) fn wait_for_the_job(&self, child: &mut Child) {
        let started = Instant::now();
        loop {
            let console = fs::read_to_string(self.sandbox.join("console.log")).unwrap_or_default();
            if console.contains("]: starting ") {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the launcher ended before the job started: {}",
                self.stderr()
            );
            assert!(
                started.elapsed() < RUN_LIMIT,
                "no job after {RUN_LIMIT:?}: {console}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
    }

    pub(crate) fn stderr(&self) -> String {
        fs::read_to_string(self.sandbox.join("_condor_stderr")).unwrap_or_default()
    }

    /// The launcher's end, within [`RUN_LIMIT`] (the group is killed after it).
    pub(crate) fn finish(&self, child: &mut Child) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > RUN_LIMIT {
                let _ = kill_process_group(pid(child), Signal::KILL);
                panic!("the launcher ran over {RUN_LIMIT:?}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The launcher's TMPDIR holds nothing.
    fn assert_nothing_left_in_tmp(&self) {
        let left: Vec<_> = fs::read_dir(&self.tmp).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

pub(crate) fn pid(child: &Child) -> Pid {
    Pid::from_child(child)
}

/// A vanilla-flavour job of `script`, routed.
pub(crate) fn routed_job(
    pool: &Pool,
    name: &str,
    script: &str,
    submit: &str,
    cluster: i64,
) -> ClassAd {
    let iwd = pool.root.path().join("users").join(name);
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), format!("#!/bin/sh\n{script}\n")).unwrap();
    let submit = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\n{submit}\nqueue\n",
        iwd.display()
    );
    let ad = job_ads(&[(name.into(), submit, cluster)]).remove(0);
    pool.translate_vanilla(&ad)
}

pub(crate) fn pool() -> Pool {
    Pool::new(&template("console=ttyS0 quiet panic=-1"))
}

/// A soft kill (`condor_vacate_job`): SIGTERM to the launcher reaches the job in the guest,
/// whose TERM trap writes `partial.txt` and exits 3; the file is in the sandbox for
/// ON_EXIT_OR_EVICT, and the launcher exits 3 as the job did. (Before: SIGTERM killed the
/// launcher by signal 15, the trap never ran and the sandbox held no partial.txt.)
#[test]
fn a_soft_kill_reaches_the_job_and_its_files_come_back() {
    let pool = pool();
    let routed = routed_job(
        &pool,
        "soft",
        "trap 'echo \"partial after $n s\" > partial.txt; exit 3' TERM\nn=0\nwhile :; do n=$((n+1)); sleep 1; done",
        "when_to_transfer_output = ON_EXIT_OR_EVICT\njob_max_vacate_time = 40",
        2401,
    );
    // What the starter reads to interrupt the job travels to the routed job.
    assert_eq!(
        string_attr(&routed, "WhenToTransferOutput").as_deref(),
        Some("ON_EXIT_OR_EVICT")
    );
    assert_eq!(
        evaluate_attr(&routed, "JobMaxVacateTime"),
        Value::Integer(40)
    );
    let starter = StandInStarter::new(&pool, routed, "soft-sandbox");
    let mut launcher = starter.start();
    starter.wait_for_the_job(&mut launcher);
    // OsProc::ShutdownGraceful: kill(JobPid, soft_kill_sig), the top pid only.
    kill_process(pid(&launcher), Signal::TERM).unwrap();
    let status = starter.finish(&mut launcher);
    assert_eq!(status.code(), Some(3), "{status:?}: {}", starter.stderr());
    let partial = fs::read_to_string(starter.sandbox.join("partial.txt")).unwrap();
    assert!(partial.starts_with("partial after "), "{partial}");
    // The capsule's files are gone, so HTCondor does not take them for outputs.
    assert!(!starter.sandbox.join("vm-capsule.ad").exists());
    assert!(!starter.sandbox.join("data.qcow2").exists());
    starter.assert_nothing_left_in_tmp();
}

/// A job that ignores its soft-kill signal and keeps running after it wrote a file: as the
/// vacate time runs out the launcher has the agent SIGKILL the job and write its results
/// before the VM is powered off, so the file is in the sandbox for ON_EXIT_OR_EVICT, as a
/// native job's would be after the starter's SIGKILL. The stand-in starter SIGKILLs the
/// family when the vacate time is up, as `OsProc` does. (Before: the VM was powered off with
/// the job, and what it wrote in this run was lost.)
#[test]
fn a_job_that_ignores_the_soft_kill_keeps_its_files() {
    const VACATE: Duration = Duration::from_secs(12);
    let pool = pool();
    let routed = routed_job(
        &pool,
        "stubborn",
        "trap '' TERM\necho \"written before the kill\" > partial.txt\nwhile :; do sleep 1; done",
        "when_to_transfer_output = ON_EXIT_OR_EVICT\njob_max_vacate_time = 12",
        2405,
    );
    let starter = StandInStarter::new(&pool, routed, "stubborn-sandbox");
    let mut launcher = starter.start();
    starter.wait_for_the_job(&mut launcher);
    kill_process(pid(&launcher), Signal::TERM).unwrap();
    let sent = Instant::now();
    let status = loop {
        if let Some(status) = launcher.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() >= VACATE {
            // The starter's hard kill: the launcher did not end within the vacate time.
            let _ = kill_process_group(pid(&launcher), Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let ended = sent.elapsed();
    assert!(
        ended < VACATE,
        "ended {ended:?} after SIGTERM: {}",
        starter.stderr()
    );
    // The job died by SIGKILL in the guest, and the launcher as it did.
    assert_eq!(status.signal(), Some(9), "{status:?}: {}", starter.stderr());
    assert_eq!(
        fs::read_to_string(starter.sandbox.join("partial.txt")).unwrap_or_default(),
        "written before the kill\n",
        "{}",
        starter.stderr()
    );
    assert!(!starter.sandbox.join("data.qcow2").exists());
    starter.assert_nothing_left_in_tmp();
}

/// `condor_rm` after the vacate time: SIGKILL to the whole family leaves no QEMU, and nothing
/// outside the sandbox (the control channel is a socketpair, the PVH kernel a memfd).
#[test]
fn a_hard_kill_of_the_family_leaves_nothing_behind() {
    let pool = pool();
    let routed = routed_job(&pool, "hard", "sleep 600", "", 2402);
    let starter = StandInStarter::new(&pool, routed, "hard-sandbox");
    let mut launcher = starter.start();
    starter.wait_for_the_job(&mut launcher);
    let group = pid(&launcher);
    kill_process_group(group, Signal::KILL).unwrap();
    let status = starter.finish(&mut launcher);
    assert_eq!(status.signal(), Some(9));
    // The whole group is gone within a moment (QEMU included).
    let started = Instant::now();
    while rustix::process::test_kill_process_group(group).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a process of the launcher's group survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    starter.assert_nothing_left_in_tmp();
    // No QEMU of this sandbox is left anywhere.
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    let sandbox = starter.sandbox.display().to_string();
    assert!(
        !ps.lines()
            .any(|l| l.contains("qemu") && l.contains(&sandbox)),
        "{ps}"
    );
}

/// A self-checkpointing job (`checkpoint_exit_code = 85`): it counts in `ckpt.dat`, logs each
/// step and exits 85 twice before it finishes. The stand-in starter restarts the launcher in
/// the same sandbox after each 85, as `VanillaProc::restartCheckpointedJob` does; the first
/// run is also suspended (SIGSTOP/SIGCONT to the whole family) for 5 s. Run 1 removes its
/// input `old.txt` and writes `scratch.dat`, run 2 removes that: neither is back in a later
/// run, as natively. The files and stdout HTCondor transfers at the end equal a native run's.
/// (Before: the first 85 removed the capsule's files and the restart could not start; then
/// the removed files came back at the restart, from the sandbox.)
#[test]
fn a_self_checkpointing_job_restarts_in_place_and_ends_as_natively() {
    const SCRIPT: &str = "n=$(cat ckpt.dat 2>/dev/null || echo 0)\nn=$((n+1))\necho \"step $n\" >> log.txt\necho \"step $n\"\n[ $n -gt 1 ] && [ -e old.txt ] && echo \"old.txt is back in run $n\"\n[ $n -gt 2 ] && [ -e scratch.dat ] && echo \"scratch.dat is back in run $n\"\n[ $n = 1 ] && rm old.txt && echo x > scratch.dat\n[ $n = 2 ] && rm scratch.dat\n[ $n = 1 ] && sleep 4\necho $n > ckpt.dat\n[ $n -lt 3 ] && exit 85\necho \"done after $n\" > out.txt\nexit 0";
    let pool = pool();
    let iwd = pool.root.path().join("users").join("ckpt");
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("old.txt"), "an input the job removes\n").unwrap();
    let routed = routed_job(
        &pool,
        "ckpt",
        SCRIPT,
        "checkpoint_exit_code = 85\ntransfer_input_files = old.txt\ntransfer_output_files = out.txt, log.txt",
        2403,
    );
    assert_eq!(
        evaluate_attr(&routed, "SuccessCheckpointExitCode"),
        Value::Integer(85)
    );
    assert_eq!(
        evaluate_attr(&routed, "WantFTOnCheckpoint"),
        Value::Bool(true)
    );
    let starter = StandInStarter::new(&pool, routed, "ckpt-sandbox");
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs <= 3, "more runs than the job checkpoints");
        let mut launcher = starter.start();
        if runs == 1 {
            starter.wait_for_the_job(&mut launcher);
            // VanillaProc::Suspend / Continue: every process of the family.
            kill_process_group(pid(&launcher), Signal::STOP).unwrap();
            std::thread::sleep(Duration::from_secs(5));
            kill_process_group(pid(&launcher), Signal::CONT).unwrap();
        }
        let status = starter.finish(&mut launcher);
        match status.code() {
            Some(85) => {
                // In place for the restart: HTCondor's capsule files; what the launcher made
                // goes (and is made again).
                for kept in ["vm-capsule.ad", "vm-capsule.json", "vmlinuz", "initrd.img"] {
                    assert!(
                        starter.sandbox.join(kept).exists(),
                        "{kept} removed after run {runs}"
                    );
                }
                assert!(!starter.sandbox.join("data.qcow2").exists());
                assert_eq!(
                    fs::read_to_string(starter.sandbox.join("ckpt.dat")).unwrap(),
                    format!("{runs}\n")
                );
                // What the job removed is not there for the restart.
                assert!(!starter.sandbox.join("old.txt").exists(), "run {runs}");
                assert_eq!(starter.sandbox.join("scratch.dat").exists(), runs == 1);
            }
            Some(0) => break,
            _ => panic!("run {runs}: {status:?}: {}", starter.stderr()),
        }
    }
    assert_eq!(runs, 3);
    starter.assert_nothing_left_in_tmp();

    // The same job natively, restarted by the same rule.
    let native = pool.root.path().join("ckpt-native");
    fs::create_dir_all(&native).unwrap();
    fs::write(native.join("job.sh"), format!("#!/bin/sh\n{SCRIPT}\n")).unwrap();
    fs::copy(iwd.join("old.txt"), native.join("old.txt")).unwrap();
    let stdout = native.join("_condor_stdout");
    loop {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stdout)
            .unwrap();
        let status = Command::new("sh")
            .arg("job.sh")
            .current_dir(&native)
            .stdout(out)
            .status()
            .unwrap();
        if status.code() != Some(85) {
            assert!(status.success());
            break;
        }
    }
    // What HTCondor transfers at the end: the outputs and the job's stdout of every run.
    for file in ["log.txt", "out.txt", "_condor_stdout"] {
        assert_eq!(
            fs::read_to_string(starter.sandbox.join(file)).unwrap(),
            fs::read_to_string(native.join(file)).unwrap(),
            "{file}"
        );
    }
}

/// A job that checkpoints by a signal (`SuccessCheckpointExitSignal` with
/// `SuccessCheckpointExitBySignal`, as `VanillaProc::JobReaper` reads them): it writes
/// `ckpt.dat` and kills itself with SIGUSR1. The launcher dies by SIGUSR1 as the job did, so
/// the starter restarts it in place, and leaves HTCondor's capsule files and the job's
/// checkpoint in the sandbox. (Before: the capsule's files were removed as after any end.)
#[test]
fn a_job_that_checkpoints_by_a_signal_is_restartable_in_place() {
    let pool = pool();
    let routed = routed_job(
        &pool,
        "sigckpt",
        "echo 1 > ckpt.dat\nkill -USR1 $$\nsleep 60",
        "+WantFTOnCheckpoint = true\n+SuccessCheckpointExitBySignal = true\n+SuccessCheckpointExitSignal = 10",
        2404,
    );
    let starter = StandInStarter::new(&pool, routed, "sigckpt-sandbox");
    let mut launcher = starter.start();
    let status = starter.finish(&mut launcher);
    assert_eq!(
        status.signal(),
        Some(10),
        "{status:?}: {}",
        starter.stderr()
    );
    assert!(!status.core_dumped());
    for kept in ["vm-capsule.ad", "vm-capsule.json", "vmlinuz", "initrd.img"] {
        assert!(starter.sandbox.join(kept).exists(), "{kept} removed");
    }
    assert!(!starter.sandbox.join("data.qcow2").exists());
    assert_eq!(
        fs::read_to_string(starter.sandbox.join("ckpt.dat")).unwrap(),
        "1\n"
    );
    starter.assert_nothing_left_in_tmp();
}
