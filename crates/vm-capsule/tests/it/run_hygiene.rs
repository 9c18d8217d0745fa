//! `vm-capsule run` tells what went wrong and cleans up after itself: a disk
//! that does not boot, a routed ad whose scratch dir the cleanup hook removed, `--vanilla`
//! outside a slot. (Sandbox removal on success and keeping on failure: `boot::boot_job`.)

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use capsule_disk::{Image, ImageFormat};
use classad::eval::string_attr;

use crate::router::{bin, job_ads, print_ad, Pool};

/// How many `run` sandboxes are in `dir`.
pub fn sandboxes(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("vm-capsule-run.")
        })
        .count()
}

/// A raw OS disk with nothing on it, no kernel: nothing to boot.
fn unbootable_template(dir: &Path) {
    Image::create(&dir.join("os.img"), ImageFormat::Raw, 16 << 20)
        .unwrap()
        .finish()
        .unwrap();
    crate::execute_node::qcow2_data_disk(dir);
}

fn routed_ad_file(pool: &Pool, name: &str, cluster: i64) -> (std::path::PathBuf, classad::ClassAd) {
    let iwd = pool.root.path().join("users").join(name);
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let submit = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\nqueue\n",
        iwd.display()
    );
    let ad = job_ads(&[(name.to_owned(), submit, cluster)]).remove(0);
    let routed = pool.translate(&ad).unwrap();
    let file = pool.root.path().join(format!("{name}.routed.ad"));
    fs::write(&file, print_ad(&routed)).unwrap();
    (file, routed)
}

fn run(args: &[&std::ffi::OsStr], tmp: &Path, cwd: &Path) -> (bool, String) {
    let out = Command::new(bin("vm-capsule"))
        .arg("run")
        .args(args)
        .env("TMPDIR", tmp)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_disk_that_does_not_boot_is_named_with_the_firmware_output() {
    let pool = Pool::new(&unbootable_template);
    let (file, _) = routed_ad_file(&pool, "noboot", 501);
    let start = Instant::now();
    let (ok, err) = run(
        &[
            file.as_os_str(),
            "--accel".as_ref(),
            "tcg".as_ref(),
            "--timeout".as_ref(),
            "120".as_ref(),
        ],
        pool.root.path(),
        pool.root.path(),
    );
    assert!(!ok);
    // Found out from the firmware's own message, not by waiting for the timeout.
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    assert!(
        err.contains("no bootable device")
            && err.contains("no boot loader on os.")
            && err.contains("console log"),
        "{err}"
    );
    let sandbox = fs::read_dir(pool.root.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vm-capsule-run.")
        })
        .expect("the sandbox is kept after a failure");
    let console = fs::read_to_string(sandbox.join("console.log")).unwrap();
    assert!(console.contains("No bootable device"), "{console}");
}

#[test]
fn a_routed_ad_whose_scratch_dir_is_gone_names_the_file_and_where() {
    let pool = Pool::new(&crate::ops::kvm_template);
    let (file, routed) = routed_ad_file(&pool, "gone", 502);
    pool.cleanup(&routed);
    let iwd = string_attr(&routed, "Iwd").unwrap();
    let (ok, err) = run(&[file.as_os_str()], pool.root.path(), pool.root.path());
    assert!(!ok);
    assert!(
        err.contains("TransferInput")
            && err.contains(&iwd)
            && err.contains("translate the job again"),
        "{err}"
    );
    assert!(!err.contains("cp "), "no raw cp error: {err}");
    assert_eq!(
        sandboxes(pool.root.path()),
        0,
        "an empty sandbox is not left behind"
    );
}

#[test]
fn vanilla_outside_a_slot_says_what_is_missing() {
    let pool = Pool::new(&crate::ops::kvm_template);
    let (file, _) = routed_ad_file(&pool, "noslot", 503);
    let empty = pool.root.path().join("not-a-slot");
    fs::create_dir(&empty).unwrap();
    fs::copy(&file, empty.join("capsule.ad")).unwrap();
    let (ok, err) = run(
        &["--vanilla".as_ref(), "capsule.ad".as_ref()],
        pool.root.path(),
        &empty,
    );
    assert!(!ok);
    assert!(
        err.contains("os.overlay.qcow2")
            && err.contains("not in the working directory")
            && err.contains("launcher of a routed vanilla job")
            && err.contains("without --vanilla"),
        "{err}"
    );
    assert!(!err.contains("crashed"), "{err}");
}
