//! Crashes and full disks: nothing half-done is left or placed, and a re-run converges.

use super::*;
use crate::cmd::run_ok_needs;

/// 11.7: scratch full while packing inputs: passing, said as such, nothing left, no hold.
#[test]
fn item_07_scratch_full_is_transient() {
    let mut pool = Pool::new(&template(ImageFormat::Raw));
    let prefix = pool.root.path().join("small-scratch");
    fs::create_dir(&prefix).unwrap();
    run_ok_needs(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=6m,mode=1777", "tmpfs"])
            .arg(&prefix),
        "mounting a small tmpfs needs root (CI runs as root)",
    );
    let _unmount = Unmount(prefix.clone());
    pool.env.push((
        "_CONDOR_VM_CAPSULE_SCRATCH_DIR_PREFIX".into(),
        prefix.display().to_string(),
    ));
    let j = job(&pool, "full", "transfer_input_files = big.dat", 1107);
    let data: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(j.iwd.join("big.dat"), &data).unwrap();
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(
        run.stderr.contains("scratch file system full"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("condor_hold"), "{}", run.stderr);
    let owner_dir = prefix.join(crate::router::current_user());
    assert_eq!(
        fs::read_dir(&owner_dir)
            .unwrap()
            .filter(|e| !e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".vm-capsule"))
            .count(),
        0
    );
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// 11.8: `kill -9` in the middle of finalize, then a re-run: the same tree as one run, no
/// temporary files left.
#[test]
fn item_08_finalize_killed_and_rerun_converges() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "killed", "transfer_output_files = o", 1108);
    let names: Vec<String> = (0..300).map(|i| format!("o/f{i:03}")).collect();
    let blob = vec![7u8; 64 << 10];
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &blob[..])).collect();
    let routed = pool.translate(&j.ad).unwrap();
    let disk = scratch_of(&routed).join("data.qcow2");
    forge(
        &disk,
        &result_json(0, &["o"], None),
        Some(&tar_of(&entries)),
    );
    let mut src = j.ad.clone();
    src.insert("JobStatus", Expr::integer(4));
    let stdin = format!("{}\n------\n{}", print_ad(&src), print_ad(&routed));
    for delay_ms in [5, 20, 60] {
        pool.run_hook_killed("finalize", &stdin, delay_ms);
    }
    let (_, attrs) = pool.finalize(&j.ad, &routed);
    assert_eq!(attr(&attrs, "ExitCode"), Value::Integer(0));
    let files = listing(&j.iwd);
    assert_eq!(files.len(), 301, "{:?}", &files[..files.len().min(5)]);
    assert!(
        files.iter().all(|f| !f.contains(".vm-capsule.")),
        "leftover temp files"
    );
}

/// 11.9: a killed translate's dir is reclaimed by a later translate; a refused job stages
/// nothing; kept failed dirs are bounded.
#[test]
fn item_09_stale_and_failed_dirs_are_reclaimed() {
    let mut pool = Pool::new(&template(ImageFormat::Qcow2));
    pool.env
        .push(("_CONDOR_VM_CAPSULE_KEEP_FAILED".into(), "1".into()));
    let owner_dir = pool
        .root
        .path()
        .join("scratch")
        .join(crate::router::current_user());
    // A refused job (missing input) leaves no dir at all.
    let missing = job(&pool, "missing", "transfer_input_files = nope.dat", 1109);
    pool.translate(&missing.ad).unwrap_err();
    assert!(!owner_dir.exists() || fs::read_dir(&owner_dir).unwrap().count() == 0);
    // A translate killed while staging leaves `.staging`; an hour later it is reclaimed.
    let slow = job(&pool, "slow", "transfer_input_files = big.dat", 1119);
    fs::write(slow.iwd.join("big.dat"), vec![1u8; 200 << 20]).unwrap();
    let stdin = format!(
        "[ Name = \"VM capsule\"; TargetUniverse = 13 ]\n------\n{}",
        print_ad(&slow.ad)
    );
    let staging_dirs = || -> Vec<PathBuf> {
        fs::read_dir(&owner_dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().path())
                    .filter(|p| p.to_string_lossy().ends_with(".staging"))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Killed while staging: as soon as its staging dir exists.
    let killed = pool.run_hook_killed_when("translate", &stdin, &|| !staging_dirs().is_empty());
    assert!(killed, "translate ended before it was killed");
    let staging = staging_dirs();
    assert_eq!(staging.len(), 1);
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7 * 3600);
    fs::File::open(&staging[0])
        .unwrap()
        .set_modified(old)
        .unwrap();
    let _ = fs::remove_file(owner_dir.join(".vm-capsule-swept"));
    let ok = job(&pool, "ok", "", 1129);
    let routed = pool.translate(&ok.ad).unwrap();
    assert!(!staging[0].exists());
    // Failed finalizes keep their dirs, at most VM_CAPSULE_KEEP_FAILED of them.
    let mut kept = Vec::new();
    for (i, name) in ["f1", "f2", "f3"].iter().enumerate() {
        let f = job(&pool, name, "", 1140 + i64::try_from(i).unwrap());
        let routed = pool.translate(&f.ad).unwrap();
        pool.finalize(&f.ad, &routed); // never ran: no result
        pool.cleanup(&routed);
        kept.push(scratch_of(&routed));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(kept.iter().filter(|d| d.exists()).count(), 1);
    assert!(kept[2].exists(), "the newest failed dir is the one kept");
    pool.cleanup(&routed);
}

/// Finalize's watchdog ends the hook in the middle of writing a large output: the output's
/// temporary file is removed before the hook exits, not left in the user's Iwd. The hook is
/// stopped (SIGSTOP) while it writes, until its time is up, then let go. (Before: a
/// `.vm-capsule.<job>.<hash>.tmp` of the output's size stayed in Iwd.)
#[test]
fn finalize_out_of_time_mid_output_leaves_no_temporary_file() {
    use rustix::process::{kill_process, Pid, Signal};
    let mut pool = Pool::new(&template(ImageFormat::Qcow2));
    pool.env
        .push(("_CONDOR_VM_CAPSULE_HOOK_TIMEOUT".into(), "3".into()));
    let j = job(
        &pool,
        "slow-output",
        "transfer_output_files = big.dat\nrequest_disk = 400000",
        2071,
    );
    let routed = pool.translate(&j.ad).unwrap();
    let disk = scratch_of(&routed).join("data.qcow2");
    let blob = vec![0x5au8; 192 << 20];
    forge(
        &disk,
        &result_json(0, &["big.dat"], None),
        Some(&tar_of(&[("big.dat", &blob[..])])),
    );
    drop(blob);
    let (stdin, _) = Pool::finalize_stdin(&j.ad, &routed);
    let temp = || {
        fs::read_dir(&j.iwd)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().ends_with(".tmp"))
    };
    let started = std::time::Instant::now();
    let mut child = pool.spawn_hook("finalize", &stdin);
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    // Stop it as soon as it writes the output, early in the file.
    let writing = loop {
        if let Some(t) = temp() {
            kill_process(pid, Signal::STOP).unwrap();
            break t;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finalize ended before it wrote the output"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let written = fs::metadata(&writing).unwrap().len();
    assert!(
        written < 96 << 20,
        "caught too late: {written} bytes written"
    );
    // Past its time limit, then let go: the watchdog fires while the copy goes on.
    std::thread::sleep(std::time::Duration::from_secs(4).saturating_sub(started.elapsed()));
    kill_process(pid, Signal::CONT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "finalize exits 0");
    let attrs = classad::parse_old_ad(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(attr(&attrs, "ExitCode"), Value::Integer(125));
    assert!(
        string_attr(&attrs, "VMCapsuleError")
            .unwrap()
            .contains("did not finish within 3 s"),
        "{attrs:?}"
    );
    assert_eq!(temp(), None, "the temporary output was left in Iwd");
    assert!(
        !j.iwd.join("big.dat").exists(),
        "a partial output was placed"
    );
}

/// A knob finalize reads, set to a value of the wrong form: finalize says so in the job's
/// attributes (exiting 0, as it must), places nothing, and cleanup keeps the scratch dir, which
/// holds the job's only copy of its outputs, until the configuration is fixed.
#[test]
fn a_bad_knob_fails_finalize_loudly_and_cleanup_keeps_the_outputs() {
    let mut pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "badknob", "", 1301);
    let routed = pool.translate(&j.ad).unwrap();
    let scratch = scratch_of(&routed);
    let good = pool.env.clone();
    pool.env
        .push(("_CONDOR_VM_CAPSULE_MAX_DATA_DISK_MB".into(), "lots".into()));
    let (_, original) = pool.finalize(&j.ad, &routed);
    assert_eq!(attr(&original, "ExitCode"), Value::Integer(125));
    let why = string_attr(&original, "VMCapsuleError").unwrap();
    assert!(
        why.contains("VM_CAPSULE_MAX_DATA_DISK_MB = \"lots\" is not a whole number of MiB"),
        "{why}"
    );
    pool.cleanup(&routed);
    assert!(scratch.is_dir(), "cleanup removed the job's outputs");
    pool.env = good;
    pool.cleanup(&routed);
    assert!(!scratch.exists(), "cleanup kept the dir after the fix");
}
