//! Real boots of the test guest (Debian kernel + busybox initramfs + static capsule-init) under
//! QEMU with TCG (KVM on these machines is a PVM layer that hangs stock kernels), always under a
//! timeout. Success is judged from result.json on the returned disk, never from QEMU's status.
//!
//! Each boot costs about 6-8 s, so there are three: vmdk/virtio and qcow2/IDE with the FAT read
//! in user space (`--device`), raw/virtio with the partition mounted (`--data-dir`, the seed's
//! way). The guest is built (and cached) by `scripts/build-test-guest.sh`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use capsule_disk::{Access, CreateOptions, DataDisk};
use capsule_manifest::{EntryKind, JobResult, Outcome, OutputEntry, OutputRule};

use crate::harness::{run_ok, script, Capsule};

/// Seconds QEMU may run before it is killed (a boot takes 6-8 s; slow CI machines more).
const BOOT_TIMEOUT_SECS: u32 = 180;

/// (vmlinuz, initrd.gz, static capsule-init), built once per test run.
fn guest() -> &'static (PathBuf, PathBuf, PathBuf) {
    static GUEST: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    GUEST.get_or_init(|| {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-guest.sh");
        let out = run_ok(Command::new("bash").arg(&script));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let mut paths = stdout.split_whitespace().map(PathBuf::from);
        (
            paths.next().unwrap(),
            paths.next().unwrap(),
            paths.next().unwrap(),
        )
    })
}

/// What came back from one boot.
struct Booted {
    result: JobResult,
    files: PathBuf,
    console: String,
    _capsule: Capsule,
}

impl Booted {
    fn text(&self, name: &str) -> String {
        fs::read_to_string(self.files.join(name)).unwrap()
    }

    fn tar_names(&self) -> Vec<String> {
        let bytes = fs::read(self.files.join("output.tar")).unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        ar.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }
}

/// `qemu-img convert` from `src` (`from` format) to `dst` (`to` format).
fn convert(from: &str, src: &Path, to: &str, dst: &Path) {
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", from, "-O", to])
            .arg(src)
            .arg(dst),
    );
}

/// Put the capsule on a data disk of `format`, boot it on `bus` with `mode`, read it back.
fn boot(c: Capsule, format: &str, bus: &str, mode: &str) -> Booted {
    let (kernel, initrd, agent) = guest();
    let dir = c.dir.path().to_owned();
    let staged = dir.join("staged");
    c.write_data_dir(&staged);
    let raw = dir.join("data.raw");
    let disk = DataDisk::create(&raw, &CreateOptions::new().size(32 << 20)).unwrap();
    for name in ["capsule.json", "input.tar"] {
        disk.put_file(name, &mut fs::File::open(staged.join(name)).unwrap())
            .unwrap();
    }
    // The agent travels on the data disk as the hooks ship it (the mounted mode runs it).
    disk.put_file("capsule-init", &mut fs::File::open(agent).unwrap())
        .unwrap();
    disk.finish().unwrap();
    // qemu-img makes the vmdk/qcow2 containers: QEMU itself is the judge of what it can boot.
    let image = dir.join(format!("data.{format}"));
    if format != "raw" {
        convert("raw", &raw, format, &image);
    }
    let drive = format!("file={},format={format},if={bus}", image.display());
    let out = Command::new("timeout")
        .arg(BOOT_TIMEOUT_SECS.to_string())
        .args([
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-smp",
            "1",
        ])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .args(["-display", "none", "-net", "none", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 quiet panic=-1 capsule.mode={mode}"))
        .args(["-drive", &drive])
        .output()
        .unwrap();
    let console =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let back = dir.join("back.raw");
    if format == "raw" {
        fs::copy(&image, &back).unwrap();
    } else {
        convert(format, &image, "raw", &back);
    }
    let files = dir.join("returned");
    fs::create_dir(&files).unwrap();
    let disk = DataDisk::open(&back, Access::ReadOnly).unwrap();
    for entry in disk.list("").unwrap() {
        let mut src = disk.open_file(&entry.name).unwrap();
        let mut dst = fs::File::create(files.join(&entry.name)).unwrap();
        std::io::copy(&mut src, &mut dst).unwrap();
    }
    // The finalize hook reads the container QEMU wrote to directly, in user space: it must
    // see the same files as qemu-img's conversion.
    if format != "raw" {
        let direct = DataDisk::open(&image, Access::ReadOnly).unwrap();
        for entry in disk.list("").unwrap() {
            let mut a = Vec::new();
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut disk.open_file(&entry.name).unwrap(), &mut a).unwrap();
            std::io::Read::read_to_end(&mut direct.open_file(&entry.name).unwrap(), &mut b)
                .unwrap();
            assert!(
                a == b,
                "{format}: {} differs when read from the container",
                entry.name
            );
        }
    }
    let json = fs::read(files.join("result.json")).unwrap_or_else(|e| {
        panic!("no result.json on the returned disk ({e}); console:\n{console}")
    });
    cross_check_with_fat_tools(&back, disk.info().unwrap().partition.start, &json);
    let result = JobResult::from_json(&json).unwrap();
    // The timing lines feed docs/PERFORMANCE.md (`cargo test -- --nocapture boot`).
    for line in console
        .lines()
        .filter(|l| l.contains("capsule-init [") || l.contains("test-guest ["))
    {
        eprintln!("{format}/{bus}/{mode}: {line}");
    }
    Booted {
        result,
        files,
        console,
        _capsule: c,
    }
}

/// What the guest wrote must also satisfy the reference FAT tools: `fsck.fat -n` finds no
/// error in the partition and `mtype` reads the same result.json.
fn cross_check_with_fat_tools(raw: &Path, offset: u64, json: &[u8]) {
    let part = raw.with_extension("part");
    let bytes = fs::read(raw).unwrap();
    fs::write(&part, &bytes[usize::try_from(offset).unwrap()..]).unwrap();
    run_ok(Command::new("fsck.fat").arg("-n").arg(&part));
    let mtype = run_ok(
        Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(format!("{}@@{offset}", raw.display()))
            .arg("::result.json"),
    );
    assert_eq!(mtype.stdout, json);
}

#[test]
fn boot_vmdk_virtio_device_mode() {
    let mut c = script(
        "setsid sleep 300 </dev/null >/dev/null 2>&1 & sleep 0.5; \
         printf '[%s]\\n' \"$@\"; id -u; id -g; echo \"$GREETING\"; echo err >&2; \
         mkdir -p res && echo r > res/r.txt; echo o > out.txt; echo x > ignored.txt; exit 7",
    );
    c.manifest.argv = vec!["job.sh".into(), "a b".into(), String::new()];
    c.manifest
        .env
        .insert("GREETING".into(), "hello = world".into());
    c.manifest.output = OutputRule::Explicit {
        paths: vec!["out.txt".parse().unwrap(), "res".parse().unwrap()],
    };
    let b = boot(c, "vmdk", "virtio", "device");
    assert_eq!(
        b.result.outcome,
        Outcome::Exited { code: 7 },
        "{}",
        b.console
    );
    assert_eq!(b.result.agent.user, "condor");
    assert_eq!(b.result.agent.uid, 1000);
    assert_eq!(b.text("stdout"), "[a b]\n[]\n1000\n1000\nhello = world\n");
    assert_eq!(b.text("stderr"), "err\n");
    assert_eq!(b.tar_names(), ["out.txt", "res/", "res/r.txt"]);
    // the daemon that left the process group with setsid was found and killed
    assert_eq!(
        b.result.warnings,
        ["killed 1 process(es) of uid 1000 that had left the job's process group"]
    );
    assert_eq!(
        b.result.outputs,
        [
            OutputEntry {
                path: "out.txt".parse().unwrap(),
                kind: EntryKind::File,
                size: 2
            },
            OutputEntry {
                path: "res".parse().unwrap(),
                kind: EntryKind::Dir,
                size: 2
            },
        ]
    );
    assert!(
        b.console.contains("overhead: start -> exec"),
        "{}",
        b.console
    );
    assert!(
        b.console.contains("overhead: job end -> poweroff call"),
        "{}",
        b.console
    );
}

#[test]
fn boot_qcow2_ide_device_mode() {
    let mut c = script("cat > copy.txt; echo done; exit 0");
    c.file("in.txt", "from stdin\n", 0o644);
    c.manifest.stdin = Some("in.txt".parse().unwrap());
    let b = boot(c, "qcow2", "ide", "device");
    assert_eq!(
        b.result.outcome,
        Outcome::Exited { code: 0 },
        "{}",
        b.console
    );
    assert_eq!(b.text("stdout"), "done\n");
    // default rule: the new file only, not the executable nor the unchanged input
    assert_eq!(b.tar_names(), ["copy.txt"]);
    assert_eq!(b.result.outputs[0].size, 11);
}

#[test]
fn boot_raw_virtio_mounted_data_dir() {
    let c = script("echo new > new.txt; id -un; exit 3");
    let b = boot(c, "raw", "virtio", "mount");
    assert_eq!(
        b.result.outcome,
        Outcome::Exited { code: 3 },
        "{}",
        b.console
    );
    assert_eq!(b.text("stdout"), "condor\n");
    assert!(
        b.console.contains("agent /condor-data/capsule-init"),
        "{}",
        b.console
    );
    assert_eq!(b.tar_names(), ["new.txt"]);
    assert!(b.result.problems.is_empty(), "{:?}", b.result.problems);
}
