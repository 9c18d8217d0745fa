//! End to end on a booted VM: real job ads -> translate -> `vm-capsule run` (a real
//! QEMU boot of the test guest, TCG) -> finalize -> cleanup. Also a guest that crashes, a guest
//! that never powers off, and the demo itself. Each boot costs several seconds: the jobs below
//! combine features rather than boot once per feature.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use capsule_disk::{CreateOptions, DataDisk, ImageFormat};
use classad::eval::evaluate_attr;
use classad::{ClassAd, Value};

use crate::cmd::run_ok;
use crate::router::{job_ads, print_ad, Pool};

/// A template booting the test guest directly, with a data disk of `format`.
fn guest_template(
    format: ImageFormat,
    cmdline: &'static str,
    initrd: Option<PathBuf>,
) -> impl Fn(&Path) {
    move |dir: &Path| {
        let guest = crate::execute_node::test_guest();
        fs::copy(guest.join("vmlinuz"), dir.join("vmlinuz")).unwrap();
        fs::copy(
            initrd.clone().unwrap_or_else(|| guest.join("initrd.gz")),
            dir.join("initrd.img"),
        )
        .unwrap();
        fs::write(dir.join("cmdline"), cmdline).unwrap();
        let name = match format {
            ImageFormat::Qcow2 => "data.qcow2",
            ImageFormat::Vmdk => "data.vmdk",
            _ => "data.img",
        };
        DataDisk::create(
            &dir.join(name),
            &CreateOptions::new().size(64 << 20).format(format),
        )
        .unwrap()
        .finish()
        .unwrap();
    }
}

const CMDLINE: &str = "console=ttyS0 quiet panic=-1";

struct Booted {
    iwd: PathBuf,
    attrs: ClassAd,
    run_ok: bool,
    run_stderr: String,
    scratch: PathBuf,
}

/// Submit, translate, boot with `vm-capsule run`, finalize, clean up.
fn boot_job(
    pool: &Pool,
    name: &str,
    script: &str,
    submit: &str,
    files: &[(&str, &[u8])],
) -> Booted {
    let iwd = pool.root.path().join("users").join(name);
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), format!("#!/bin/sh\n{script}\n")).unwrap();
    for (p, content) in files {
        let path = iwd.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    let submit = format!(
        "executable = {}/job.sh\ninitialdir = {}\n{submit}\nqueue\n",
        iwd.display(),
        iwd.display()
    );
    let ad = job_ads(&[(name.to_owned(), submit, 42)]).remove(0);
    let routed = pool
        .translate(&ad)
        .unwrap_or_else(|r| panic!("{name}: translate failed: {}", r.stderr));
    let scratch = PathBuf::from(match evaluate_attr(&routed, "Iwd") {
        Value::String(s) => s,
        v => panic!("Iwd {v:?}"),
    });
    let ad_file = pool.root.path().join(format!("{name}.routed.ad"));
    fs::write(&ad_file, print_ad(&routed)).unwrap();
    let before = crate::run_hygiene::sandboxes(pool.root.path());
    let run = Command::new(crate::router::bin("vm-capsule"))
        .arg("run")
        .arg(&ad_file)
        .args(["--accel", "tcg", "--timeout", "120"])
        .env("TMPDIR", pool.root.path())
        .output()
        .unwrap();
    // Issue 13.7: the sandbox goes on success, stays on failure, and `run` says which.
    let after = crate::run_hygiene::sandboxes(pool.root.path());
    let err = String::from_utf8_lossy(&run.stderr);
    if run.status.success() {
        assert_eq!(after, before, "{err}");
        assert!(err.contains("sandbox removed (--keep keeps it)"), "{err}");
    } else {
        assert_eq!(after, before + 1, "{err}");
        assert!(err.contains("the sandbox is kept for inspection"), "{err}");
    }
    let (_, attrs) = pool.finalize(&ad, &routed);
    pool.cleanup(&routed);
    Booted {
        iwd,
        attrs,
        run_ok: run.status.success(),
        run_stderr: String::from_utf8_lossy(&run.stderr).into_owned(),
        scratch,
    }
}

fn read(b: &Booted, rel: &str) -> String {
    fs::read_to_string(b.iwd.join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}; run: {}", b.run_stderr))
}

fn attr(b: &Booted, name: &str) -> Value {
    evaluate_attr(&b.attrs, name)
}

#[test]
fn boot_arguments_environment_and_exit_7() {
    let pool = Pool::new(&guest_template(ImageFormat::Qcow2, CMDLINE, None));
    let b = boot_job(
        &pool,
        "args-env",
        "for a in \"$@\"; do printf '[%s]\\n' \"$a\"; done; echo \"GREETING=$GREETING\"; echo \"user=$(id -un)\"; exit 7",
        "arguments = \"one 'two words' ''\"\nenvironment = \"GREETING='hello there' X=1\"\noutput = out.txt\nerror = err.txt",
        &[],
    );
    assert!(b.run_ok, "{}", b.run_stderr);
    assert_eq!(
        read(&b, "out.txt"),
        "[one]\n[two words]\n[]\nGREETING=hello there\nuser=condor\n"
    );
    assert_eq!(attr(&b, "ExitCode"), Value::Integer(7));
    assert_eq!(attr(&b, "ExitBySignal"), Value::Bool(false));
}

#[test]
fn boot_stdin_input_dir_and_remap() {
    let pool = Pool::new(&guest_template(ImageFormat::Raw, CMDLINE, None));
    let b = boot_job(
        &pool,
        "io",
        "cat > from-stdin.txt; cat data/a.txt data/sub/b.txt > joined.txt",
        "input = in.txt\ntransfer_input_files = data\ntransfer_output_files = joined.txt, from-stdin.txt\ntransfer_output_remaps = \"joined.txt = results/joined-remapped.txt\"",
        &[("in.txt", b"via stdin\n"), ("data/a.txt", b"A\n"), ("data/sub/b.txt", b"B\n")],
    );
    assert!(b.run_ok, "{}", b.run_stderr);
    assert_eq!(read(&b, "results/joined-remapped.txt"), "A\nB\n");
    assert_eq!(read(&b, "from-stdin.txt"), "via stdin\n");
    assert!(!b.iwd.join("joined.txt").exists());
    assert_eq!(attr(&b, "ExitCode"), Value::Integer(0));
}

#[test]
fn boot_death_by_signal() {
    let pool = Pool::new(&guest_template(ImageFormat::Qcow2, CMDLINE, None));
    let b = boot_job(&pool, "signal", "kill -TERM $$", "", &[]);
    assert!(b.run_ok, "{}", b.run_stderr);
    assert_eq!(attr(&b, "ExitBySignal"), Value::Bool(true));
    assert_eq!(attr(&b, "ExitSignal"), Value::Integer(15));
}

#[test]
fn boot_time_limit_kills_the_job() {
    let mut pool = Pool::new(&guest_template(ImageFormat::Qcow2, CMDLINE, None));
    pool.env
        .push(("_CONDOR_VM_CAPSULE_WALL_TIME_LIMIT".into(), "3".into()));
    let b = boot_job(
        &pool,
        "slow",
        "sleep 300 & sleep 300",
        "output = out.txt",
        &[],
    );
    assert!(b.run_ok, "{}", b.run_stderr);
    assert_eq!(attr(&b, "ExitBySignal"), Value::Bool(true));
    assert_eq!(attr(&b, "ExitSignal"), Value::Integer(9));
    assert_eq!(attr(&b, "VMCapsuleTimedOut"), Value::Bool(true));
}

#[test]
fn boot_100_mib_in_and_out() {
    let pool = Pool::new(&guest_template(ImageFormat::Qcow2, CMDLINE, None));
    let input: Vec<u8> = (0..100u32 << 20)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();
    let b = boot_job(
        &pool,
        "big",
        "cp big.in big.out; md5sum big.in | cut -d' ' -f1 > sum.txt",
        "transfer_input_files = big.in\ntransfer_output_files = big.out, sum.txt\nrequest_disk = 409600\nrequest_memory = 768",
        &[("big.in", &input)],
    );
    assert!(b.run_ok, "{}", b.run_stderr);
    let out = fs::read(b.iwd.join("big.out"))
        .unwrap_or_else(|e| panic!("big.out: {e}; attrs {:?}; run {}", b.attrs, b.run_stderr));
    assert!(out == input, "big.out differs from big.in");
    assert_eq!(attr(&b, "ExitCode"), Value::Integer(0));
}

#[test]
fn boot_vmware_flavour_vmdk_data_disk() {
    let template = |dir: &Path| {
        guest_template(ImageFormat::Vmdk, CMDLINE, None)(dir);
        fs::write(
            dir.join("guest.vmx"),
            "config.version = \"8\"\nscsi0:0.fileName = \"data.vmdk\"\n",
        )
        .unwrap();
    };
    let pool = Pool::new(&template);
    let b = boot_job(
        &pool,
        "vmware",
        "echo from vmware > o.txt; exit 5",
        "transfer_output_files = o.txt",
        &[],
    );
    assert!(b.run_ok, "{}", b.run_stderr);
    assert_eq!(read(&b, "o.txt"), "from vmware\n");
    assert_eq!(attr(&b, "ExitCode"), Value::Integer(5));
}

/// An empty initrd: the kernel finds no init and panics. `run` fails clearly, finalize tells
/// the user the VM died, and nothing in the user's directory changes.
#[test]
fn boot_crashing_guest() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("empty-initrd.gz");
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "cpio -o -H newc < /dev/null 2>/dev/null | gzip > {}",
        initrd.display()
    )));
    let pool = Pool::new(&guest_template(ImageFormat::Qcow2, CMDLINE, Some(initrd)));
    let b = boot_job(&pool, "crash", "echo never", "output = out.txt", &[]);
    assert!(!b.run_ok);
    assert!(b.run_stderr.contains("the VM crashed"), "{}", b.run_stderr);
    assert!(b.run_stderr.contains("Kernel panic"), "{}", b.run_stderr);
    assert_eq!(attr(&b, "ExitCode"), Value::Integer(125));
    let why = match attr(&b, "VMCapsuleError") {
        Value::String(s) => s,
        v => panic!("{v:?}"),
    };
    assert!(why.contains("the VM ended without a result"), "{why}");
    let left: Vec<_> = fs::read_dir(&b.iwd)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("job.sh")],
        "the user's Iwd changed"
    );
    assert!(b.scratch.exists(), "scratch is kept for inspection");
}

/// init is `sleep`: the guest never powers off and `run` kills it at its timeout.
#[test]
fn boot_guest_that_never_powers_off() {
    let pool = Pool::new(&guest_template(
        ImageFormat::Qcow2,
        "console=ttyS0 quiet panic=-1 rdinit=/bin/busybox -- sleep 3600",
        None,
    ));
    let iwd = pool.root.path().join("u");
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let submit = format!(
        "executable = {}/job.sh\ninitialdir = {}\nqueue\n",
        iwd.display(),
        iwd.display()
    );
    let ad = job_ads(&[("hang".into(), submit, 9)]).remove(0);
    let routed = pool.translate(&ad).unwrap();
    let ad_file = pool.root.path().join("hang.ad");
    fs::write(&ad_file, print_ad(&routed)).unwrap();
    let run = Command::new(crate::router::bin("vm-capsule"))
        .arg("run")
        .arg(&ad_file)
        .args(["--accel", "tcg", "--timeout", "15"])
        .env("TMPDIR", pool.root.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("did not power off within 15 s"), "{err}");
    let (_, attrs) = pool.finalize(&ad, &routed);
    assert_eq!(evaluate_attr(&attrs, "ExitCode"), Value::Integer(125));
}

/// The front door: `vm-capsule demo` runs and tells the truth.
#[test]
fn boot_demo() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(
        Command::new(crate::router::bin("vm-capsule"))
            .arg("demo")
            .arg("--dir")
            .arg(dir.path().join("demo")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "translate: VM-universe ad",
        "run: guest powered off",
        "ExitCode = 3",
        "arguments: --mode fast hello world",
        "DEMO_GREETING=from-the-submit-file",
        "user: condor",
        "sum of numbers.txt: 15",
        "cleanup: scratch dir removed",
    ] {
        assert!(
            stdout.contains(expected),
            "demo output lacks {expected:?}:\n{stdout}"
        );
    }
}
