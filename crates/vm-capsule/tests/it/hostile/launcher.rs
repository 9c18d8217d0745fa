//! The vanilla flavour's launcher trusts nothing in the capsule ad: the routed job, its
//! `TransferInput` and the capsule files in the owner's scratch dir are the owner's to edit.
//! The launcher runs as HTCondor starts it (`run vm-capsule.ad --vanilla` in the slot's
//! sandbox); a stand-in QEMU records what it would have booted.

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::router::bin;

/// A stand-in QEMU: logs `qemu-img info` of every drive it is given, then fails.
const FAKE_QEMU: &str = r#"#!/bin/sh
for a in "$@"; do
  case "$a" in
    file=*) f=${a#file=}; f=${f%%,*}; echo "drive $f" >> "$FAKE_QEMU_LOG"
            qemu-img info -U --output=json "$f" >> "$FAKE_QEMU_LOG" 2>&1 ;;
  esac
done
exit 1
"#;

/// A pool whose OS disk is staged "on the execute node" (`VM_CAPSULE_NODE_IMAGE_DIR`), a
/// vanilla-flavour job of it, and the node's image.
fn node_image_job(name: &str, cluster: i64) -> (Pool, ClassAd, PathBuf) {
    let mut pool = Pool::new(&template(ImageFormat::Qcow2));
    let node = pool.root.path().join("node-images");
    fs::create_dir(&node).unwrap();
    let os = pool.root.path().join("template/condor_vm_capsule/os.qcow2");
    let sum = vm_capsule_core::digest::sha256_file(&os).unwrap();
    fs::write(
        os.with_extension("qcow2.sha256"),
        format!("{sum}  os.qcow2\n"),
    )
    .unwrap();
    fs::copy(&os, node.join("os.qcow2")).unwrap();
    fs::write(node.join("os.qcow2.sha256"), format!("{sum}  os.qcow2\n")).unwrap();
    pool.env.push((
        "_CONDOR_VM_CAPSULE_NODE_IMAGE_DIR".into(),
        node.display().to_string(),
    ));
    let j = job(&pool, name, "", cluster);
    let routed = pool.translate_vanilla(&j.ad);
    (pool, routed, node.join("os.qcow2"))
}

/// A fresh slot sandbox `name`: every local file the routed job transfers, by base name, as
/// HTCondor's transfer puts them; `edit` changes the capsule ad first.
fn slot(pool: &Pool, routed: &ClassAd, name: &str, edit: &dyn Fn(&mut ClassAd)) -> PathBuf {
    let dir = pool.root.path().join(name);
    fs::create_dir(&dir).unwrap();
    for entry in string_attr(routed, "TransferInput").unwrap().split(',') {
        let src = Path::new(entry.trim());
        fs::copy(src, dir.join(src.file_name().unwrap())).unwrap();
    }
    let capsule = dir.join("vm-capsule.ad");
    let mut ad = classad::parse_ads(&fs::read_to_string(&capsule).unwrap())
        .unwrap()
        .pop()
        .unwrap();
    edit(&mut ad);
    fs::write(&capsule, print_ad(&ad)).unwrap();
    dir
}

/// Run the launcher in `slot` with the stand-in QEMU: its stderr and the QEMU log.
fn launch(pool: &Pool, slot: &Path) -> (String, String) {
    let qemu = pool.root.path().join("fake-qemu");
    if !qemu.exists() {
        fs::write(&qemu, FAKE_QEMU).unwrap();
        fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let log = slot.with_extension("qemu.log");
    let out = Command::new(bin("vm-capsule"))
        .args([
            "run",
            "vm-capsule.ad",
            "--vanilla",
            "--accel",
            "tcg",
            "--qemu",
        ])
        .arg(&qemu)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("FAKE_QEMU_LOG", &log)
        .env("TMPDIR", pool.root.path())
        .current_dir(slot)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the stand-in QEMU fails");
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        fs::read_to_string(&log).unwrap_or_default(),
    )
}

/// A file named like the node-image overlay among the transferred files is not booted: the
/// launcher always makes the overlay, over the node's checked image. (Before: the job's own
/// qcow2 of that name was booted, its backing file any file the slot user could read.)
#[test]
fn the_launcher_makes_the_node_image_overlay_itself() {
    let (pool, routed, base) = node_image_job("overlay", 2051);
    assert_eq!(
        string_attr(&routed, "VMCapsuleOverlay").as_deref(),
        Some("os.overlay.qcow2")
    );
    // The owner's own image, and an overlay over it under the overlay's name.
    let scratch = scratch_of(&routed);
    let theirs = pool.root.path().join("theirs.raw");
    fs::File::create(&theirs).unwrap().set_len(1 << 20).unwrap();
    let planted = scratch.join("os.overlay.qcow2");
    let _ = fs::remove_file(&planted);
    vm_capsule_core::template::overlay::create_overlay(
        &planted,
        &theirs.display().to_string(),
        "raw",
        1 << 20,
    )
    .unwrap();
    let mut hostile = routed.clone();
    let transfer = string_attr(&routed, "TransferInput").unwrap();
    hostile.insert(
        "TransferInput",
        Expr::string(format!("{transfer},{}", planted.display())),
    );
    let sandbox = slot(&pool, &hostile, "slot-overlay", &|_| {});
    let (err, log) = launch(&pool, &sandbox);
    let overlay = log
        .split("drive ")
        .find(|d| d.contains("os.overlay.qcow2"))
        .unwrap_or_else(|| panic!("no overlay booted: {log}\n{err}"));
    assert!(
        overlay.contains(&format!("\"backing-filename\": \"{}\"", base.display())),
        "{overlay}"
    );
    assert!(!overlay.contains("theirs.raw"), "{overlay}");
}

/// Names in the capsule ad are plain names in the sandbox: an agent, a kernel or a data disk
/// named by absolute path is refused, not read from outside; `VMCapsuleOriginalJob` must be a
/// job id (it goes into the cloud-init meta-data). (Before: all were used as given.)
#[test]
fn the_launcher_takes_only_plain_names_and_a_job_id_from_the_capsule_ad() {
    let (pool, routed, _) = node_image_job("names", 2052);
    let outside = pool.root.path().join("outside.bin");
    fs::write(&outside, b"NOT-FROM-THE-SANDBOX").unwrap();
    let abs = outside.display().to_string();
    let plain = ["plain file name"];
    let cases: [(&str, &str, &[&str]); 4] = [
        ("VMCapsuleAgent", &abs, &plain),
        ("VMCapsuleKernel", &abs, &plain),
        ("VMCapsuleDataDisk", &abs, &plain),
        (
            "VMCapsuleOriginalJob",
            "1.0 local-hostname: evil",
            &["<cluster>.<proc>"],
        ),
    ];
    for (i, (attr, value, expected)) in cases.into_iter().enumerate() {
        let sandbox = slot(&pool, &routed, &format!("slot-{i}"), &|ad| {
            ad.insert(attr, Expr::string(value));
        });
        let (err, log) = launch(&pool, &sandbox);
        assert!(
            err.contains(attr) && expected.iter().all(|e| err.contains(e)),
            "{attr}: {err}"
        );
        assert!(log.is_empty(), "{attr}: QEMU was started: {log}");
    }
    assert_eq!(fs::read(&outside).unwrap(), b"NOT-FROM-THE-SANDBOX");
}

/// The capsule ad in the slot is the owner's file: a FIFO (which would hold the launcher
/// forever in `open`), a link to a file elsewhere, or a huge file is refused at once with its
/// name, and QEMU is never started. (Before: the FIFO hung the launcher, the link was read.)
#[test]
fn the_launcher_reads_the_capsule_ad_only_as_a_bounded_regular_file() {
    let (pool, routed, _) = node_image_job("adfile", 2053);
    let elsewhere = pool.root.path().join("elsewhere.ad");
    type MakeAdFile<'a> = &'a dyn Fn(&Path);
    let cases: [(&str, MakeAdFile); 3] = [
        ("fifo", &|p: &Path| {
            rustix::fs::mkfifoat(rustix::fs::CWD, p, rustix::fs::Mode::from_raw_mode(0o600))
                .unwrap();
        }),
        ("link", &|p: &Path| {
            fs::copy(p.with_file_name("vm-capsule.ad.orig"), &elsewhere).unwrap();
            std::os::unix::fs::symlink(&elsewhere, p).unwrap();
        }),
        ("huge", &|p: &Path| {
            let mut text = fs::read_to_string(p.with_file_name("vm-capsule.ad.orig")).unwrap();
            text.push_str(&format!("Padding = \"{}\"\n", "x".repeat(5 << 20)));
            fs::write(p, text).unwrap();
        }),
    ];
    for (name, make) in cases {
        let sandbox = slot(&pool, &routed, &format!("slot-{name}"), &|_| {});
        let ad = sandbox.join("vm-capsule.ad");
        fs::rename(&ad, sandbox.join("vm-capsule.ad.orig")).unwrap();
        make(&ad);
        let (tx, rx) = std::sync::mpsc::channel();
        let (p, s) = (&pool, sandbox.clone());
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let _ = tx.send(launch(p, &s));
            });
            let got = rx.recv_timeout(std::time::Duration::from_secs(20));
            if got.is_err() {
                // Unblock a launcher stuck in open(2) on the FIFO so the test can end.
                let _ = fs::OpenOptions::new().write(true).open(&ad);
            }
            let (err, log) = got.unwrap_or_else(|_| panic!("{name}: the launcher hung"));
            assert!(err.contains("vm-capsule.ad"), "{name}: {err}");
            assert!(log.is_empty(), "{name}: QEMU was started: {log}");
        });
    }
}
