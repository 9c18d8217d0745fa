//! Whole-VM checkpoints in the vanilla flavour, run by the STAND-IN starter of `interrupt`
//! (no starter can run here): the launcher saves the VM every
//! `VM_CAPSULE_CHECKPOINT_INTERVAL` and exits with the checkpoint code; the next start is in
//! a fresh sandbox (another "node"), given what HTCondor gives it after a checkpoint: the
//! routed job's `TransferInput` plus the spooled checkpoint files and streams. The job goes
//! on where it was and ends as an uninterrupted run does; a checkpoint that cannot be
//! restored (another QEMU, another base image, a corrupt file) starts the job afresh and
//! still ends right.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use classad::eval::{evaluate_attr, string_attr};
use classad::Value;

use crate::interrupt::{pool, routed_job, StandInStarter};
use crate::router::Pool;

/// The checkpoint's file in the sandbox.
const CHECKPOINT: &str = "vm-capsule.checkpoint";

/// A counter that computes for about `secs` seconds of guest CPU under TCG (a shell loop of
/// about a second per step), printing each step and a running sum: any step lost or repeated
/// changes what it prints.
fn counter(secs: u32) -> String {
    format!(
        "i=0; sum=0\nwhile [ $i -lt {secs} ]; do i=$((i+1)); j=0; while [ $j -lt 35000 ]; do j=$((j+1)); sum=$(((sum*31+j)%1000003)); done; echo \"step $i $sum\"; done\necho \"total $sum\" > out.txt\ndate +%s > clock.txt\necho done"
    )
}

/// Wait for the launcher (within 300 s); its exit code and the CPU seconds (user + system)
/// it and everything it waited for (QEMU) used, read from its zombie before it is reaped.
fn wait_with_cpu(starter: &StandInStarter, child: &mut Child) -> (Option<i32>, f64) {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    let pid = rustix::process::Pid::from_child(child);
    let started = std::time::Instant::now();
    loop {
        let exited = waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG,
        )
        .unwrap();
        if exited.is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the launcher ran over 300 s: {}",
            starter.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stat = fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    // Fields after the command's closing parenthesis: state is the 3rd, utime the 14th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11..15]
        .iter()
        .map(|f| f.parse::<u64>().unwrap())
        .sum();
    let code = child.wait().unwrap().code();
    // USER_HZ is 100 on Linux.
    (code, ticks as f64 / 100.0)
}

/// A checkpointed routed job (the capsule ad asks for checkpoints).
fn checkpointed_job(pool: &Pool, name: &str, script: &str, cluster: i64) -> classad::ClassAd {
    let routed = routed_job(
        pool,
        name,
        script,
        "+VMCapsuleCheckpoint = true\ntransfer_output_files = out.txt, clock.txt",
        cluster,
    );
    assert_eq!(
        evaluate_attr(&routed, "VMCapsuleCheckpoint"),
        Value::Bool(true)
    );
    assert_eq!(
        evaluate_attr(&routed, "WantFTOnCheckpoint"),
        Value::Bool(true)
    );
    assert_eq!(
        string_attr(&routed, "TransferCheckpoint").as_deref(),
        Some(CHECKPOINT)
    );
    routed
}

/// What HTCondor gives the next start after a checkpoint exit in `from`: a new sandbox with
/// `TransferInput`, plus the checkpoint and the job's streams from the spool.
fn next_node(pool: &Pool, routed: &classad::ClassAd, from: &Path, name: &str) -> StandInStarter {
    let next = StandInStarter::new(pool, routed.clone(), name);
    for file in [CHECKPOINT, "_condor_stdout", "_condor_stderr"] {
        fs::copy(from.join(file), next.sandbox.join(file)).unwrap();
    }
    next
}

fn interval(secs: &str) -> [(&'static str, String); 1] {
    [("_CONDOR_VM_CAPSULE_CHECKPOINT_INTERVAL", secs.to_owned())]
}

fn knobs<'a>(k: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    k.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

/// A 60 s counter saved at about 20 s and 40 s and restored each time on another "node"
/// gives the same stdout and output as the same job run uninterrupted, for little more CPU.
#[test]
fn a_checkpointed_job_moves_between_nodes_and_ends_as_uninterrupted() {
    let pool = pool();
    let script = counter(60);
    let routed = checkpointed_job(&pool, "moving", &script, 2501);

    // Uninterrupted: the same routed job, with checkpoints only at eviction.
    let plain = StandInStarter::new(&pool, routed.clone(), "moving-plain");
    let mut launcher = plain.start_with(&knobs(&interval("0")));
    let (code, plain_cpu) = wait_with_cpu(&plain, &mut launcher);
    assert_eq!(code, Some(0), "{}", plain.stderr());
    assert!(!plain.sandbox.join(CHECKPOINT).exists());

    let mut starter = StandInStarter::new(&pool, routed.clone(), "moving-1");
    let mut cpu = 0.0;
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs <= 10, "more checkpoints than expected");
        let mut launcher = starter.start_with(&knobs(&interval("20")));
        let (code, used) = wait_with_cpu(&starter, &mut launcher);
        cpu += used;
        match code {
            Some(85) => {
                let size = fs::metadata(starter.sandbox.join(CHECKPOINT))
                    .unwrap()
                    .len();
                assert!(size > 0);
                // Nothing of the guest's run is taken for an output meanwhile.
                assert!(!starter.sandbox.join("out.txt").exists());
                starter = next_node(
                    &pool,
                    &routed,
                    &starter.sandbox,
                    &format!("moving-{}", runs + 1),
                );
                if runs == 1 {
                    // Away a while: the restored guest's clock must not lag by as much.
                    std::thread::sleep(Duration::from_secs(30));
                }
            }
            Some(0) => break,
            other => panic!("run {runs}: {other:?}: {}", starter.stderr()),
        }
    }
    for file in ["out.txt", "_condor_stdout", "_condor_stderr"] {
        assert_eq!(
            fs::read_to_string(starter.sandbox.join(file)).unwrap(),
            fs::read_to_string(plain.sandbox.join(file)).unwrap(),
            "{file}"
        );
    }
    // The guest's clock was set to the host's after each restore.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let clock: u64 = fs::read_to_string(starter.sandbox.join("clock.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Without the clock set, it would lag by the 30 s the job was away, and more.
    assert!(
        now.abs_diff(clock) < 20,
        "the guest's clock says {clock}, the host's {now}"
    );
    // Saved at least twice (at each interval of guest time since the last start).
    assert!(runs >= 3, "{runs} runs: {}", starter.stderr());
    assert!(!starter.sandbox.join(CHECKPOINT).exists());
    eprintln!("guest CPU: uninterrupted {plain_cpu:.1} s, checkpointed twice {cpu:.1} s");
    assert!(
        cpu < plain_cpu * 1.2,
        "checkpointed {cpu:.1} s of CPU vs {plain_cpu:.1} s uninterrupted"
    );
}

/// A checkpoint made by another QEMU (a STAND-IN: a wrapper reporting another version), for
/// another base image, or corrupted is not restored: the launcher says so and the job starts
/// afresh, with the right result all the same.
#[test]
fn a_checkpoint_that_cannot_be_restored_starts_the_job_afresh() {
    let pool = pool();
    let script = counter(12);
    let routed = checkpointed_job(&pool, "fallback", &script, 2502);
    let reference = StandInStarter::new(&pool, routed.clone(), "fallback-plain");
    let mut launcher = reference.start_with(&knobs(&interval("0")));
    assert_eq!(wait_with_cpu(&reference, &mut launcher).0, Some(0));

    // The STAND-IN for another QEMU build: the same QEMU, reporting another version.
    let other_qemu = pool.root.path().join("other-qemu");
    fs::write(
        &other_qemu,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'QEMU emulator version 99.0.0'; exit 0; fi\nexec qemu-system-x86_64 \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(&other_qemu, fs::Permissions::from_mode(0o755)).unwrap();

    let corrupt = |sandbox: &Path| {
        let path = sandbox.join(CHECKPOINT);
        let mut bytes = fs::read(&path).unwrap();
        bytes[4096] ^= 0x55;
        fs::write(&path, bytes).unwrap();
    };
    let other_base = |sandbox: &Path| {
        // Another initrd: one more (empty) cpio member, which boots the same.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(sandbox.join("initrd.img"))
            .unwrap();
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"").unwrap();
        f.write_all(&gz.finish().unwrap()).unwrap();
    };
    type Spoil<'a> = (
        &'a str,
        Box<dyn Fn(&Path) + 'a>,
        Vec<(&'static str, String)>,
    );
    let cases: Vec<Spoil<'_>> = vec![
        ("corrupt", Box::new(corrupt), interval("5").to_vec()),
        (
            "another QEMU",
            Box::new(|_: &Path| {}),
            vec![
                interval("5")[0].clone(),
                ("_CONDOR_VM_CAPSULE_QEMU", other_qemu.display().to_string()),
            ],
        ),
        (
            "another base image",
            Box::new(other_base),
            interval("5").to_vec(),
        ),
    ];
    for (what, spoil, node_knobs) in cases {
        let first = StandInStarter::new(&pool, routed.clone(), &format!("fallback-{what}-1"));
        let mut launcher = first.start_with(&knobs(&interval("5")));
        let (code, _) = wait_with_cpu(&first, &mut launcher);
        assert_eq!(code, Some(85), "{what}: {}", first.stderr());
        let second = next_node(
            &pool,
            &routed,
            &first.sandbox,
            &format!("fallback-{what}-2"),
        );
        spoil(&second.sandbox);
        let mut launcher = second.start_with(&knobs(&node_knobs));
        let (code, _) = wait_with_cpu(&second, &mut launcher);
        let stderr = second.stderr();
        assert!(
            stderr.contains("the VM checkpoint was not restored"),
            "{what}: {stderr}"
        );
        // Checkpointed again after its fresh start, or finished: either way, on to the end.
        let mut last = second;
        let mut code = code;
        let mut hop = 3;
        while code == Some(85) {
            last = next_node(
                &pool,
                &routed,
                &last.sandbox,
                &format!("fallback-{what}-{hop}"),
            );
            let mut launcher = last.start_with(&knobs(&interval("0")));
            code = wait_with_cpu(&last, &mut launcher).0;
            hop += 1;
        }
        assert_eq!(code, Some(0), "{what}: {}", last.stderr());
        for file in ["out.txt", "_condor_stdout"] {
            assert_eq!(
                fs::read_to_string(last.sandbox.join(file)).unwrap(),
                fs::read_to_string(reference.sandbox.join(file)).unwrap(),
                "{what}: {file}"
            );
        }
    }
}

/// An eviction (`condor_vacate_job`: the soft-kill signal to the launcher) of a job whose
/// files HTCondor transfers on eviction (`ON_EXIT_OR_EVICT` without an output list): the
/// launcher saves the VM instead of forwarding the signal, and the job, restored on another
/// "node", never saw it and ends as it does natively.
#[test]
fn an_evicted_job_is_saved_and_goes_on_elsewhere() {
    let pool = pool();
    let script = counter(25);
    let routed = routed_job(
        &pool,
        "evicted",
        &script,
        "+VMCapsuleCheckpoint = true\nwhen_to_transfer_output = ON_EXIT_OR_EVICT\njob_max_vacate_time = 120",
        2503,
    );
    let first = StandInStarter::new(&pool, routed.clone(), "evicted-1");
    let mut launcher = first.start_with(&knobs(&interval("0")));
    first.wait_for_the_job(&mut launcher);
    std::thread::sleep(Duration::from_secs(8));
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&launcher),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let (code, _) = wait_with_cpu(&first, &mut launcher);
    assert_eq!(code, Some(85), "{}", first.stderr());
    let stdout = fs::read_to_string(first.sandbox.join("_condor_stdout")).unwrap();
    assert!(stdout.starts_with("step 1 "), "{stdout}");
    assert!(!stdout.contains("done"), "{stdout}");
    let second = next_node(&pool, &routed, &first.sandbox, "evicted-2");
    let mut launcher = second.start_with(&knobs(&interval("0")));
    let (code, _) = wait_with_cpu(&second, &mut launcher);
    assert_eq!(code, Some(0), "{}", second.stderr());
    // The same script natively.
    let native = pool.root.path().join("evicted-native");
    fs::create_dir_all(&native).unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .current_dir(&native)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        fs::read_to_string(second.sandbox.join("_condor_stdout")).unwrap(),
        String::from_utf8(out.stdout).unwrap()
    );
    assert_eq!(
        fs::read_to_string(second.sandbox.join("out.txt")).unwrap(),
        fs::read_to_string(native.join("out.txt")).unwrap()
    );
    assert_eq!(second.stderr(), "");
}
