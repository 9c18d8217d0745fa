#![allow(clippy::unwrap_used)]
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use capsule_disk::{Image, ImageFormat};

use super::*;
use vm_capsule_core::node_image::{NodeBase, BASE_ATTR, OVERLAY_ATTR, SHA_ATTR};

fn root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A stand-in execute node: `<top>/execute` (root, 0755) and the job's sandbox in it, owned
/// by an ordinary user as the starter makes it (when we are root).
struct Node {
    top: tempfile::TempDir,
    sandbox: PathBuf,
}

impl Node {
    fn new(files: &[&str]) -> Node {
        let top = tempfile::tempdir().unwrap();
        let sandbox = top.path().join("execute/dir_1");
        fs::create_dir_all(&sandbox).unwrap();
        for f in files {
            let path = sandbox.join(f);
            if f.ends_with(".qcow2") {
                Image::create(&path, ImageFormat::Qcow2, 1 << 20)
                    .unwrap()
                    .finish()
                    .unwrap();
            } else {
                fs::write(&path, b"x").unwrap();
            }
        }
        give(&sandbox);
        Node { top, sandbox }
    }

    fn pins(&self) -> PathBuf {
        self.top.path().join("execute").join(pin::PIN_DIR)
    }
}

/// Give `dir` and everything in it to `nobody` (when we are root).
fn give(dir: &Path) {
    if root() {
        let nobody = Some(rustix::process::Uid::from_raw(65534));
        let all = std::iter::once(dir.to_owned())
            .chain(fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()));
        for e in all {
            rustix::fs::chownat(
                rustix::fs::CWD,
                &e,
                nobody,
                None,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
        }
    }
}

fn node_config(dir: Option<&Path>) -> NodeConfig {
    NodeConfig {
        domain: DomainType::Qemu,
        node_image_dir: dir.map(Path::to_owned),
        other_jobs: OtherJobs::Refuse,
        condor_uid: None,
        host_paths: Vec::new(),
    }
}

fn ad(dir: &Path, extra: &str) -> ClassAd {
    let text = format!(
        "ClusterId = 5\nProcId = 1\nVM_WORKING_DIR = \"{}\"\nVMPARAM_VM_NAME = \"slot1_alice\"\nJobVMType = \"kvm\"\nJobVMMemory = 512\nJobVM_VCPUS = 2\nVMCapsuleDataDisk = \"data.qcow2\"\nVMPARAM_vm_Disk = \"os.qcow2:vda:w:qcow2,data.qcow2:vdb:w:qcow2\"\n{extra}",
        dir.display()
    );
    classad::parse_old_ad(&text).unwrap()
}

fn xml(outcome: Outcome) -> String {
    match outcome {
        Outcome::Domain(x) => x,
        other => panic!("{other:?}"),
    }
}

fn refused(outcome: Outcome) -> String {
    match outcome {
        Outcome::Refused(line) => line,
        other => panic!("{other:?}"),
    }
}

#[test]
fn direct_kernel_boot_qemu_domain() {
    let n = Node::new(&["os.qcow2", "data.qcow2", "vmlinuz", "initrd.gz"]);
    let a = ad(
        &n.sandbox,
        "VMCapsuleKernel = \"vmlinuz\"\nVMCapsuleInitrd = \"initrd.gz\"\nVMCapsuleKernelArgs = \"root=/dev/ram0 console=ttyS0 a<b\"\n",
    );
    let x = xml(decide(&a, &node_config(None)));
    assert!(x.starts_with("<domain type='qemu'>\n"), "{x}");
    // As root the files are handed over pinned beside the sandbox; else as they are.
    let dir = if root() {
        let pins: Vec<PathBuf> = fs::read_dir(n.pins())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(pins.len(), 1, "{pins:?}");
        assert!(pins[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("slot1_alice."));
        pins[0].clone()
    } else {
        n.sandbox.clone()
    };
    let dir = dir.display();
    assert!(
        x.contains(&format!("<kernel>{dir}/vmlinuz</kernel>")),
        "{x}"
    );
    assert!(
        x.contains(&format!("<initrd>{dir}/initrd.gz</initrd>")),
        "{x}"
    );
    assert!(
        x.contains("<cmdline>root=/dev/ram0 console=ttyS0 a&lt;b</cmdline>"),
        "{x}"
    );
    assert!(x.contains("<memory unit='MiB'>512</memory>") && x.contains("<vcpu>2</vcpu>"));
    assert!(x.contains("<target dev='vdb' bus='virtio'/>"));
    assert_eq!(x.matches("<backingStore/>").count(), 2, "{x}");
    assert_eq!(
        x.matches("<driver name='qemu' type='qcow2'/>").count(),
        2,
        "{x}"
    );
    assert!(x.contains("<console type='pty'>") && !x.contains("<console type='file'"));
    for e in ["on_poweroff", "on_reboot", "on_crash"] {
        assert!(x.contains(&format!("<{e}>destroy</{e}>")), "{e}");
    }
    assert!(
        !x.contains("host-passthrough"),
        "TCG has no host CPU to pass through"
    );
    if root() {
        // The job's user can no longer write what was checked; the group still reads it.
        let m = fs::metadata(n.sandbox.join("data.qcow2")).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o777, m.nlink()),
            (super::sandbox::qemu_user(), 0o640, 2)
        );
    }
    let n = Node::new(&["os.qcow2", "data.qcow2"]);
    let mut kvm = node_config(None);
    kvm.domain = DomainType::Kvm;
    let x = xml(decide(&ad(&n.sandbox, ""), &kvm));
    assert!(x.starts_with("<domain type='kvm'>") && x.contains("host-passthrough"));
}

#[test]
fn others_jobs_and_escapes_are_refused() {
    let n = Node::new(&["os.qcow2", "data.qcow2"]);
    let mut a = ad(&n.sandbox, "");
    a.remove(DATA_DISK_ATTR);
    let line = refused(decide(&a, &node_config(None)));
    assert!(
        line.starts_with("job 5.1: refused: not a vm-capsule job"),
        "{line}"
    );
    let mut builtin = node_config(None);
    builtin.other_jobs = OtherJobs::Builtin;
    assert!(
        matches!(decide(&a, &builtin), Outcome::Builtin(l) if l.contains("built-in domain XML applies"))
    );
    for kernel in ["/etc/shadow", "../x", "missing"] {
        let n = Node::new(&["os.qcow2", "data.qcow2"]);
        let a = ad(&n.sandbox, &format!("VMCapsuleKernel = \"{kernel}\"\n"));
        let line = refused(decide(&a, &node_config(None)));
        assert!(
            line.starts_with("job 5.1: refused: VMCapsuleKernel names "),
            "{line}"
        );
    }
    // Names from the ad reach the log on one line.
    let n = Node::new(&["os.qcow2", "data.qcow2"]);
    let a = ad(&n.sandbox, "VMCapsuleKernel = \"two\tlines\u{202e}\"\n");
    let line = refused(decide(&a, &node_config(None)));
    assert!(line.contains("names two?lines?, which"), "{line}");
    let n = Node::new(&["os.qcow2", "data.qcow2"]);
    std::os::unix::fs::symlink("/etc/hostname", n.sandbox.join("link")).unwrap();
    let a = ad(&n.sandbox, "VMCapsuleKernel = \"link\"\n");
    let line = refused(decide(&a, &node_config(None)));
    assert!(line.contains("it is a symbolic link"), "{line}");
    // A disk whose content is not what the ad says.
    let n = Node::new(&["os.qcow2", "data.qcow2", "plain.img"]);
    let a = ad(
        &n.sandbox,
        "VMPARAM_vm_Disk = \"plain.img:vda:w:qcow2,data.qcow2:vdb:w:qcow2\"\n",
    );
    let line = refused(decide(&a, &node_config(None)));
    assert!(
        line.contains("said to be qcow2, but the image is raw"),
        "{line}"
    );
    if root() {
        // A file of another user (root's own), and a working dir that is root's.
        let n = Node::new(&["os.qcow2", "data.qcow2"]);
        fs::write(n.sandbox.join("roots"), b"x").unwrap();
        let a = ad(&n.sandbox, "VMCapsuleKernel = \"roots\"\n");
        let line = refused(decide(&a, &node_config(None)));
        assert!(line.contains("belongs to uid 0"), "{line}");
        let line = refused(decide(&ad(Path::new("/etc"), ""), &node_config(None)));
        assert!(line.contains("belongs to root"), "{line}");
    }
}

/// A node image in `<top>/images` (root's, 0755) with its recorded sum, and an overlay over
/// it in the sandbox as translate makes it; the routed ad's pairing.
fn overlay_over_node_image(n: &Node, images: &Path) -> String {
    fs::create_dir_all(images).unwrap();
    fs::set_permissions(images, fs::Permissions::from_mode(0o755)).unwrap();
    let base = images.join("os.raw");
    fs::File::create(&base).unwrap().set_len(4 << 20).unwrap();
    let sum = vm_capsule_core::digest::sha256_file(&base).unwrap();
    fs::write(images.join("os.raw.sha256"), format!("{sum}  os.raw\n")).unwrap();
    vm_capsule_core::template::overlay::create_overlay(
        &n.sandbox.join("os.overlay.qcow2"),
        &base.display().to_string(),
        "raw",
        4 << 20,
    )
    .unwrap();
    give(&n.sandbox);
    let mut pairing = ClassAd::new();
    vm_capsule_core::node_image::write_to(
        &mut pairing,
        &[NodeBase {
            path: base,
            sha256: sum,
            overlay: "os.overlay.qcow2".into(),
        }],
    );
    [BASE_ATTR, SHA_ATTR, OVERLAY_ATTR]
        .iter()
        .map(|a| {
            format!(
                "{a} = \"{}\"\n",
                classad::eval::string_attr(&pairing, a).unwrap()
            )
        })
        .collect::<String>()
        + "VMPARAM_vm_Disk = \"os.overlay.qcow2:vda:w:qcow2,data.qcow2:vdb:w:qcow2\"\n"
}

#[test]
fn an_overlay_gets_the_node_image_below_it_and_nothing_else() {
    if !root() {
        return;
    }
    let n = Node::new(&["data.qcow2"]);
    let images = n.top.path().join("images");
    let extra = overlay_over_node_image(&n, &images);
    let base = images.join("os.raw");
    let x = xml(decide(&ad(&n.sandbox, &extra), &node_config(Some(&images))));
    let chain = format!(
        "      <backingStore type='file'>\n        <format type='raw'/>\n        <source file='{}'><seclabel model='dac' relabel='no'/></source>\n        <backingStore/>\n      </backingStore>\n",
        base.display()
    );
    assert!(x.contains(&chain), "{x}");
    assert_eq!(x.matches("<backingStore/>").count(), 2, "{x}");

    // This node has no node image directory, or another one, or another image.
    let n = Node::new(&["data.qcow2"]);
    let extra = overlay_over_node_image(&n, &images);
    let line = refused(decide(&ad(&n.sandbox, &extra), &node_config(None)));
    assert!(
        line.contains("this execute node has no VM_CAPSULE_NODE_IMAGE_DIR"),
        "{line}"
    );
    let n = Node::new(&["data.qcow2"]);
    let extra = overlay_over_node_image(&n, &images);
    let elsewhere = n.top.path().join("elsewhere");
    let line = refused(decide(
        &ad(&n.sandbox, &extra),
        &node_config(Some(&elsewhere)),
    ));
    assert!(
        line.contains("the overlay must name the node image"),
        "{line}"
    );
    let n = Node::new(&["data.qcow2"]);
    let extra = overlay_over_node_image(&n, &images).replace(
        &vm_capsule_core::digest::sha256_file(&base).unwrap(),
        &"0".repeat(64),
    );
    let line = refused(decide(&ad(&n.sandbox, &extra), &node_config(Some(&images))));
    assert!(line.contains("the job needs 0000"), "{line}");

    // The node image changed after its sum was recorded by someone other than root: the sum
    // is not believed, the image is hashed.
    let n = Node::new(&["data.qcow2"]);
    let extra = overlay_over_node_image(&n, &images);
    let sum = fs::read_to_string(images.join("os.raw.sha256")).unwrap();
    fs::write(&base, b"changed").unwrap();
    fs::File::options()
        .write(true)
        .open(&base)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    fs::write(images.join("os.raw.sha256"), &sum).unwrap();
    rustix::fs::chown(
        images.join("os.raw.sha256"),
        Some(rustix::process::Uid::from_raw(65534)),
        None,
    )
    .unwrap();
    let line = refused(decide(&ad(&n.sandbox, &extra), &node_config(Some(&images))));
    assert!(line.contains("has sha256"), "{line}");
    // A node image that is not root's alone.
    let n = Node::new(&["data.qcow2"]);
    let extra = overlay_over_node_image(&n, &images);
    rustix::fs::chown(&base, Some(rustix::process::Uid::from_raw(65534)), None).unwrap();
    let line = refused(decide(&ad(&n.sandbox, &extra), &node_config(Some(&images))));
    assert!(
        line.contains("must be root's and writable by no one else"),
        "{line}"
    );

    // An overlay the ad does not pair with a node image may name nothing: here the OS disk
    // travelled with the job, as translate makes it without VM_CAPSULE_NODE_IMAGE_DIR.
    let n = Node::new(&["data.qcow2", "os.qcow2"]);
    vm_capsule_core::template::overlay::create_overlay(
        &n.sandbox.join("os.overlay.qcow2"),
        "os.qcow2",
        "qcow2",
        1 << 20,
    )
    .unwrap();
    give(&n.sandbox);
    let a = ad(
        &n.sandbox,
        "VMPARAM_vm_Disk = \"os.overlay.qcow2:vda:w:qcow2,data.qcow2:vdb:w:qcow2\"\n",
    );
    let line = refused(decide(&a, &node_config(Some(&images))));
    assert!(
        line.contains("names the backing file os.qcow2: only the node's own base image"),
        "{line}"
    );
}

#[test]
fn pins_of_gone_sandboxes_are_swept() {
    if !root() {
        return;
    }
    let n = Node::new(&["os.qcow2", "data.qcow2"]);
    xml(decide(&ad(&n.sandbox, ""), &node_config(None)));
    assert_eq!(fs::read_dir(n.pins()).unwrap().count(), 1);
    // The starter removes the sandbox; the next job's run removes the pins.
    fs::remove_dir_all(&n.sandbox).unwrap();
    let next = n.top.path().join("execute/dir_2");
    fs::create_dir(&next).unwrap();
    for f in ["os.qcow2", "data.qcow2"] {
        Image::create(&next.join(f), ImageFormat::Qcow2, 1 << 20)
            .unwrap()
            .finish()
            .unwrap();
    }
    give(&next);
    xml(decide(&ad(&next, ""), &node_config(None)));
    assert_eq!(
        fs::read_dir(n.pins()).unwrap().count(),
        1,
        "the old pins stayed"
    );
}

#[test]
fn shared_writable_mappings_are_read_from_maps_lines() {
    let line = "7f1c2a000000-7f1c2a100000 rw-s 00000000 fd:01 1234567 /var/lib/x/disk.qcow2";
    assert_eq!(
        sandbox_writable(line),
        Some((rustix::fs::makedev(0xfd, 1), 1_234_567))
    );
    assert_eq!(sandbox_writable("7f-80 r--s 0 fd:01 12 /x"), None);
    assert_eq!(sandbox_writable("7f-80 rw-p 0 fd:01 12 /x"), None);
    assert_eq!(sandbox_writable("7f-80 rw-s 0 00:00 0"), None);
    assert_eq!(sandbox_writable("garbage"), None);
}

fn sandbox_writable(line: &str) -> Option<(u64, u64)> {
    sandbox::shared_writable_mapping(line)
}

#[test]
fn knob_values() {
    assert_eq!(DomainType::parse("KVM").unwrap(), DomainType::Kvm);
    assert_eq!(DomainType::parse("qemu").unwrap(), DomainType::Qemu);
    assert!(DomainType::parse("xen")
        .unwrap_err()
        .contains(DOMAIN_TYPE_KNOB));
    assert_ne!(DomainType::Auto.resolve(), DomainType::Auto);
    assert_eq!(OtherJobs::parse("").unwrap(), OtherJobs::Refuse);
    assert_eq!(OtherJobs::parse("BuiltIn").unwrap(), OtherJobs::Builtin);
    assert!(OtherJobs::parse("yes")
        .unwrap_err()
        .contains(OTHER_JOBS_KNOB));
    assert!(refusal_document().contains(HOLD_WORDS));
}

#[test]
fn host_paths_are_shared_read_only_with_the_node_settings() {
    let node_dir = tempfile::tempdir().unwrap();
    let share = node_dir.path().canonicalize().unwrap().join("cvmfs");
    fs::create_dir(&share).unwrap();
    let n = Node::new(&["os.qcow2", "data.qcow2"]);
    let mut node = node_config(None);
    node.host_paths = vec![share.display().to_string()];
    let x = xml(decide(&ad(&n.sandbox, ""), &node));
    assert!(
        x.contains(&format!(
            "<filesystem type='mount' accessmode='squash'><source dir='{}'/><target dir='vmcap0'/><readonly/></filesystem>",
            share.display()
        )),
        "{x}"
    );
    assert!(
        x.contains(&format!(
            "<sysinfo type='fwcfg'><entry name='opt/org.vm-capsule/node'>vm-capsule-node 1&#10;host-path 9p vmcap0 {}&#10;</entry></sysinfo>",
            share.display()
        )),
        "{x}"
    );
    // Each element on one line: the vm-gahp joins the lines without newlines.
    assert!(x
        .lines()
        .all(|l| !l.contains("<entry") || l.contains("</entry>")));

    // A link where the node lists a path: never shared; a job that needs it is refused.
    let link = node_dir.path().canonicalize().unwrap().join("certs");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let n = Node::new(&["os.qcow2", "data.qcow2"]);
    node.host_paths = vec![link.display().to_string()];
    let x = xml(decide(&ad(&n.sandbox, ""), &node));
    assert!(!x.contains("<filesystem") && !x.contains("fwcfg"), "{x}");
    let n = Node::new(&["os.qcow2", "data.qcow2"]);
    let needs = format!("VMCapsuleHostPaths = \"{}\"\n", link.display());
    let why = refused(decide(&ad(&n.sandbox, &needs), &node));
    assert!(why.contains("certs, which is a symbolic link"), "{why}");
    // Nothing of the job was taken.
    assert!(!n.pins().exists());
}
