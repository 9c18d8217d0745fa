//! The job's owner against root's libvirt: `vm-capsule libvirt-xml` runs as root under the
//! vm-gahp, and the owner controls every byte of every disk image that travels with the job
//! (and, on the execute node, any process running as the sandbox's user). A disk that names
//! another file, or a file swapped or rewritten after the check, must never reach libvirt.
//!
//! A refusal is judged the way HTCondor sees it: exit 0 (a non-zero exit makes the vm-gahp
//! fall back to its built-in XML, which would boot the same image), a domain libvirt refuses
//! with the words that make the vm-gahp hold the job, and one line on stderr for its log.
//! When the script hands libvirt a real domain instead, the test boots it through libvirt's
//! embedded QEMU driver (no daemon; DAC as `qemu:///system`) and reports what QEMU opened.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::cmd::run_ok_needs;
use crate::libvirt::{script, Embed};
use crate::router::output_with_stdin;

/// The sandbox user of the stand-in execute node (the starter's `nobody` fallback).
const SANDBOX_UID: u32 = 65534;
/// Another job's user.
const OTHER_UID: u32 = 1001;

/// The words HTCondor's vm-gahp looks for in libvirt's error to hold the job
/// (condor_vm-gahp/xen_type.linux.cpp, `VirshType::Start`).
const HOLD_WORDS: &str = "image is not in qcow2 format";

fn root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A stand-in execute node: `EXECUTE` (root, 0755) holding the job's sandbox `dir_4242`
/// (the sandbox user's), and a root-only directory for host secrets.
struct Node {
    top: tempfile::TempDir,
    sandbox: PathBuf,
}

impl Node {
    /// The node with a job's sandbox holding `data.qcow2` and `vmlinuz`.
    fn new() -> Node {
        let top = tempfile::tempdir().unwrap();
        fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let execute = top.path().join("execute");
        let sandbox = execute.join("dir_4242");
        fs::create_dir_all(&sandbox).unwrap();
        fs::set_permissions(&execute, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&sandbox, fs::Permissions::from_mode(0o755)).unwrap();
        chown(&sandbox, SANDBOX_UID);
        fs::write(sandbox.join("vmlinuz"), b"not really a kernel").unwrap();
        let node = Node { top, sandbox };
        node.qemu_img(&["create", "-q", "-f", "qcow2", "data.qcow2", "16M"]);
        node
    }

    /// A file in the sandbox, the sandbox user's.
    fn sandbox_file(&self, name: &str) -> PathBuf {
        self.sandbox.join(name)
    }

    /// Run `qemu-img` in the sandbox and give what it made to the sandbox user.
    fn qemu_img(&self, args: &[&str]) {
        run_ok_needs(
            Command::new("qemu-img")
                .args(args)
                .current_dir(&self.sandbox),
            "qemu-img is needed (Debian: qemu-utils)",
        );
        for entry in fs::read_dir(&self.sandbox).unwrap() {
            lchown(&entry.unwrap().path(), SANDBOX_UID);
        }
    }

    /// A root-only (0600) host file holding `marker`, as `/etc/shadow` would be.
    fn host_secret(&self, marker: &str) -> PathBuf {
        let dir = self.top.path().join("root-only");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.join("secret");
        fs::write(&secret, marker.repeat(4096)).unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        secret
    }

    /// `evil.qcow2` in the sandbox: a qcow2 whose backing file is a root-only host file;
    /// returns that file.
    fn evil_qcow2_over_a_host_secret(&self) -> PathBuf {
        let secret = self.host_secret("ROOT-ONLY-SECRET");
        let backing = secret.display().to_string();
        self.qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-F",
            "raw",
            "-b",
            &backing,
            "evil.qcow2",
            "16M",
        ]);
        secret
    }

    /// The disk of another job whose VM runs on this node: libvirt has made it its QEMU
    /// user's (0600) for that VM.
    fn other_jobs_disk(&self) -> PathBuf {
        let dir = self.top.path().join("execute").join("dir_5555");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        chown(&dir, OTHER_UID);
        let disk = dir.join("data.raw");
        fs::write(&disk, "OTHER-JOBS-DATA ".repeat(65536)).unwrap();
        fs::set_permissions(&disk, fs::Permissions::from_mode(0o600)).unwrap();
        chown(&disk, qemu_uid());
        disk
    }

    /// What the vm-gahp writes on the script's stdin for this job with disks `disks`.
    fn gahp_stdin(&self, name: &str, disks: &str) -> String {
        format!(
            "ClusterId = 77\nProcId = 0\nOwner = \"mallory\"\nJobVMType = \"kvm\"\nJobVMMemory = 128\nVMCapsuleDataDisk = \"data.qcow2\"\nVMPARAM_vm_Disk = \"{disks}\"\nVM_WORKING_DIR = \"{}\"\nVMPARAM_VM_NAME = \"{name}\"\nVMPARAM_Xen_Bootloader = \"\"\nVMPARAM_Xen_Initrd = \"\"\nJobVMNetworkingType = \"\"\n",
            self.sandbox.display()
        )
    }
}

/// The user libvirt runs QEMU as (Debian: `libvirt-qemu`).
fn qemu_uid() -> u32 {
    nix::unistd::User::from_name("libvirt-qemu")
        .ok()
        .flatten()
        .map_or(OTHER_UID, |u| u.uid.as_raw())
}

fn chown(path: &Path, uid: u32) {
    let id = Some(rustix::process::Uid::from_raw(uid));
    let gid = Some(rustix::process::Gid::from_raw(uid));
    rustix::fs::chown(path, id, gid).unwrap();
}

fn lchown(path: &Path, uid: u32) {
    let id = Some(rustix::process::Uid::from_raw(uid));
    let gid = Some(rustix::process::Gid::from_raw(uid));
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        id,
        gid,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Run the script as the vm-gahp does: by its path, as root, the ad on stdin.
fn libvirt_xml(stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(script());
    cmd.env("CONDOR_CONFIG", "/dev/null")
        .args(["--domain-type", "qemu"])
        .envs(env.iter().copied());
    output_with_stdin(&mut cmd, stdin.as_bytes(), "the vm-capsule program")
}

/// The script must have refused the job as HTCondor needs it to; if it handed libvirt a
/// domain instead, boot it and say which of `watched` QEMU opened.
fn assert_refused(out: &Output, name: &str, disk: &str, why: &str, watched: &[&Path]) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && stdout.contains("<disk") {
        let watched_before: Vec<u32> = watched
            .iter()
            .map(|p| fs::metadata(p).map_or(u32::MAX, |m| m.uid()))
            .collect();
        let evidence = match Embed::new().files_opened(&stdout, name) {
            Ok(open) => {
                let hit: Vec<String> = open
                    .iter()
                    .filter(|(p, _)| watched.iter().any(|w| p == w))
                    .map(|(p, uid)| format!("{} (owner now uid {uid})", p.display()))
                    .collect();
                format!("booted through libvirt, QEMU held open {hit:?} (owners before: {watched_before:?}); every file it held: {open:?}")
            }
            Err(e) => format!("libvirt refused it: {e}"),
        };
        panic!("libvirt-xml handed libvirt a domain with the hostile disk {disk}; {evidence}\n{stdout}");
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "a refusal must exit 0, or the vm-gahp boots the image with its built-in XML: {stderr}"
    );
    assert!(
        stdout.contains(HOLD_WORDS) && !stdout.contains("<disk"),
        "{stdout}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line for the vm-gahp's log: {stderr}");
    for part in ["job 77.0", disk, why] {
        assert!(lines[0].contains(part), "{part:?} missing from: {stderr}");
    }
}

#[test]
fn libvirt_01_a_backing_file_naming_a_root_only_host_file_is_refused() {
    if !root() {
        eprintln!("skipped: libvirt-xml runs as root under the vm-gahp");
        return;
    }
    let node = Node::new();
    let secret = node.evil_qcow2_over_a_host_secret();
    let name = format!("vmcap-h01-{}", std::process::id());
    let out = libvirt_xml(
        &node.gahp_stdin(&name, "data.qcow2:vda:w:qcow2,evil.qcow2:vdb:w:qcow2"),
        &[],
    );
    assert_refused(&out, &name, "evil.qcow2", "backing file", &[&secret]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&*secret.to_string_lossy()));
    assert_eq!(
        fs::metadata(&secret).unwrap().uid(),
        0,
        "the host file changed hands"
    );
    // The refusal is a domain libvirt will not create, with the words that hold the job.
    let doc = String::from_utf8_lossy(&out.stdout);
    let err = Embed::new()
        .files_opened(&doc, &name)
        .expect_err("libvirt created the refusal");
    assert!(err.contains(HOLD_WORDS), "{err}");
}

#[test]
fn libvirt_02_an_external_data_file_naming_another_jobs_disk_is_refused() {
    if !root() {
        eprintln!("skipped: libvirt-xml runs as root under the vm-gahp");
        return;
    }
    let node = Node::new();
    let victim = node.other_jobs_disk();
    // qemu-img makes the data file itself: make the image over a copy, then point it at the
    // other job's disk (same name length, so the header extension only changes its bytes).
    let copy = node.sandbox_file("d");
    fs::write(&copy, b"").unwrap();
    node.qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=d,data_file_raw=on",
        "evil.qcow2",
        "1M",
    ]);
    fs::remove_file(&copy).unwrap();
    let image = node.sandbox_file("evil.qcow2");
    let mut bytes = fs::read(&image).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == 0x4441_5441u32.to_be_bytes())
        .expect("a data-file header extension");
    // Rewrite the extension: the absolute name of the other job's disk.
    let target = victim.display().to_string();
    let len = u32::try_from(target.len()).unwrap();
    bytes[at + 4..at + 8].copy_from_slice(&len.to_be_bytes());
    let padded = target.len().div_ceil(8) * 8;
    bytes[at + 8..at + 8 + padded].fill(0);
    bytes[at + 8..at + 8 + target.len()].copy_from_slice(target.as_bytes());
    bytes[at + 8 + padded..at + 16 + padded].fill(0);
    fs::write(&image, &bytes).unwrap();
    let info = Command::new("qemu-img")
        .args(["info", "-U"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&info.stdout).contains(&target),
        "{info:?}"
    );
    let name = format!("vmcap-h02-{}", std::process::id());
    let out = libvirt_xml(
        &node.gahp_stdin(&name, "data.qcow2:vda:w:qcow2,evil.qcow2:vdb:w:qcow2"),
        &[],
    );
    assert_refused(&out, &name, "evil.qcow2", "external data file", &[&victim]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&target));
}

#[test]
fn libvirt_03_a_vmdk_extent_linking_out_of_the_sandbox_is_refused() {
    if !root() {
        eprintln!("skipped: libvirt-xml runs as root under the vm-gahp");
        return;
    }
    let node = Node::new();
    let victim = node.other_jobs_disk();
    fs::write(
        node.sandbox_file("evil.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 2048 FLAT \"evil-flat.img\" 0\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&victim, node.sandbox_file("evil-flat.img")).unwrap();
    for f in ["evil.vmdk", "evil-flat.img"] {
        lchown(&node.sandbox_file(f), SANDBOX_UID);
    }
    let name = format!("vmcap-h03-{}", std::process::id());
    let out = libvirt_xml(
        &node.gahp_stdin(&name, "data.qcow2:vda:w:qcow2,evil.vmdk:vdb:r:vmdk"),
        &[],
    );
    assert_refused(&out, &name, "evil.vmdk", "evil-flat.img", &[&victim]);
}

/// Run `script` with `sh` as the sandbox user, in the sandbox.
fn as_sandbox_user(node: &Node, script: &str) -> Output {
    Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["sh", "-c", script])
        .current_dir(&node.sandbox)
        .output()
        .expect("setpriv is needed (util-linux)")
}

/// Every file a domain XML names (`<source file>`, `<kernel>`, `<initrd>`).
fn files_named(xml: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in xml.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("<source file='") {
            out.extend(rest.split('\'').next().map(PathBuf::from));
        }
        for tag in ["kernel", "initrd"] {
            if let Some(rest) = line.strip_prefix(&format!("<{tag}>")) {
                out.extend(rest.split('<').next().map(PathBuf::from));
            }
        }
    }
    out
}

/// A clean job: its data disk and a kernel, checked and accepted; the domain XML.
fn accepted(node: &Node, name: &str) -> String {
    let stdin = node
        .gahp_stdin(name, "data.qcow2:vda:w:qcow2")
        .replace("JobVMType", "VMCapsuleKernel = \"vmlinuz\"\nJobVMType");
    let out = libvirt_xml(&stdin, &[]);
    let xml = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success() && xml.contains("<disk"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    xml
}

#[test]
fn libvirt_04_a_file_swapped_for_a_link_after_the_check_is_not_what_libvirt_opens() {
    if !root() {
        eprintln!("skipped: libvirt-xml runs as root under the vm-gahp");
        return;
    }
    let node = Node::new();
    let secret = node.host_secret("ROOT-ONLY-SECRET");
    let checked: Vec<(String, (u64, u64))> = ["data.qcow2", "vmlinuz"]
        .iter()
        .map(|f| {
            let m = fs::metadata(node.sandbox_file(f)).ok();
            ((*f).to_owned(), m.map_or((0, 0), |m| (m.dev(), m.ino())))
        })
        .collect();
    let xml = accepted(&node, &format!("vmcap-h04-{}", std::process::id()));
    let named = files_named(&xml);
    assert_eq!(named.len(), 2, "{xml}");
    // Between the script's exit and libvirt's open, the sandbox's user replaces every file
    // the XML names (and the originals) with a link to the host file.
    for path in named.iter().map(|p| p.display().to_string()).chain(
        ["data.qcow2", "vmlinuz"]
            .iter()
            .map(|f| node.sandbox_file(f).display().to_string()),
    ) {
        let _ = as_sandbox_user(
            &node,
            &format!(
                "mv -f '{path}' '{path}.moved' && ln -s '{}' '{path}'",
                secret.display()
            ),
        );
    }
    for path in &named {
        let lst = fs::symlink_metadata(path)
            .unwrap_or_else(|e| panic!("{} was taken away after the check: {e}", path.display()));
        assert!(
            lst.is_file(),
            "{} is now a link: libvirt would open {} in its place",
            path.display(),
            fs::read_link(path).unwrap_or_default().display()
        );
        let same = checked.iter().any(|(_, id)| *id == (lst.dev(), lst.ino()));
        assert!(same, "{} is not a file that was checked", path.display());
    }
}

#[test]
fn libvirt_05_the_sandbox_user_cannot_rewrite_a_checked_image() {
    if !root() {
        eprintln!("skipped: libvirt-xml runs as root under the vm-gahp");
        return;
    }
    let node = Node::new();
    let xml = accepted(&node, &format!("vmcap-h05-{}", std::process::id()));
    // A qcow2 header rewritten after the check (an external data file set) would make
    // QEMU open what it names: no way to write a checked file may remain open to the user.
    for path in files_named(&xml)
        .into_iter()
        .chain([node.sandbox_file("data.qcow2")])
    {
        let out = as_sandbox_user(&node, &format!("exec 3<>'{}'", path.display()));
        assert!(
            !out.status.success(),
            "the sandbox user can still open {} for writing",
            path.display()
        );
    }
}

#[test]
fn libvirt_06_an_image_someone_holds_open_for_writing_is_refused() {
    if !root() {
        eprintln!("skipped: libvirt-xml runs as root under the vm-gahp");
        return;
    }
    let node = Node::new();
    // The sandbox's user opened the disk for writing before the check, to rewrite it after.
    let mut holder = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["sh", "-c", "exec 3<>data.qcow2; exec sleep 120"])
        .current_dir(&node.sandbox)
        .spawn()
        .unwrap();
    // Wait until the shell holds the disk on descriptor 3.
    let fd3 = format!("/proc/{}/fd/3", holder.id());
    let start = std::time::Instant::now();
    while !fs::read_link(&fd3).is_ok_and(|t| t.ends_with("data.qcow2"))
        && start.elapsed().as_secs() < 30
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let name = format!("vmcap-h06-{}", std::process::id());
    let out = libvirt_xml(&node.gahp_stdin(&name, "data.qcow2:vda:w:qcow2"), &[]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_refused(&out, &name, "data.qcow2", "open for writing", &[]);
}

/// HTCondor's built-in KVM domain for these disks, as the vm-gahp writes it
/// (condor_vm-gahp/xen_type.linux.cpp, `KVMType::CreateVirshConfigFile`,
/// `VirshType::makeVirshDiskString`).
fn builtin_xml(name: &str, disks: &[(&Path, &str, &str)]) -> String {
    let mut x = format!("<domain type='qemu'><name>{name}</name><memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os><devices><console type='pty'><source path='/dev/ptmx'/></console>");
    for (file, dev, format) in disks {
        x.push_str(&format!(
            "<disk type='file'><driver name='qemu' type='{format}'/><source file='{}'/><target dev='{dev}'/></disk>",
            file.display()
        ));
    }
    x.push_str("</devices></domain>");
    x
}

#[test]
fn libvirt_07_other_vm_jobs_get_no_built_in_xml_unless_the_admin_allows_it() {
    if !root() {
        eprintln!("skipped: libvirt-xml runs as root under the vm-gahp");
        return;
    }
    let node = Node::new();
    let secret = node.evil_qcow2_over_a_host_secret();
    // What the built-in XML does with such an image: libvirt follows the backing file the
    // image names, makes it its QEMU user's, and QEMU opens it.
    let name = format!("vmcap-h07-{}", std::process::id());
    let builtin = builtin_xml(&name, &[(&node.sandbox_file("evil.qcow2"), "vda", "qcow2")]);
    let open = Embed::new().files_opened(&builtin, &name).unwrap();
    assert!(
        open.iter().any(|(p, uid)| *p == secret && *uid != 0),
        "the built-in XML no longer opens the backing file: {open:?}"
    );
    chown(&secret, 0);
    // A VM job that is not a vm-capsule job: refused unless the admin lets HTCondor's
    // built-in XML boot it.
    let stdin = node
        .gahp_stdin(&name, "evil.qcow2:vda:w:qcow2")
        .replace("VMCapsuleDataDisk = \"data.qcow2\"\n", "");
    let out = libvirt_xml(&stdin, &[]);
    assert_refused(&out, &name, "job 77.0", "not a vm-capsule job", &[]);
    let out = libvirt_xml(
        &stdin,
        &[("_CONDOR_VM_CAPSULE_LIBVIRT_OTHER_JOBS", "builtin")],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
}
