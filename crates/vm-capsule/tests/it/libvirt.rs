//! `vm-capsule libvirt-xml`, the `LIBVIRT_XML_SCRIPT` for HTCondor's vm-gahp:
//! run by its path as root, fed what the vm-gahp writes on its stdin (its ad: the routed
//! job's attributes, `VM_WORKING_DIR`, `VMPARAM_VM_NAME`, then its appended lines), its XML
//! must pass libvirt's own schema (`virt-xml-validate`) for each template kind, and libvirt
//! must boot it: the domain runs the job on the data disk, its OS disk an overlay over the
//! node's own image, powers off, and finalize reads the result.
//!
//! The execute node's sandbox is a stand-in (no starter can run here): a directory owned by
//! an ordinary user holding the files HTCondor would have transferred. libvirt is its QEMU
//! driver embedded in the test (`qemu:///embed`: no daemon; DAC as `qemu:///system`, which
//! is what the vm-gahp's `qemu:///session` means for root).

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use classad::eval::{evaluate_attr, string_attr};
use classad::{ClassAd, Expr, Value};

use crate::cmd::run_ok;
use crate::router::{bin, installed_root, job_ads, output_with_stdin, print_ad, Pool};

/// The stand-in execute sandbox: the routed ad's `TransferInput` copied from its `Iwd` into
/// a fresh directory, owned by `nobody` when we are root (as the starter makes it).
fn execute_sandbox(routed: &ClassAd, parent: &Path) -> PathBuf {
    let iwd = PathBuf::from(string_attr(routed, "Iwd").unwrap());
    let dir = parent.join("dir_4242");
    fs::create_dir_all(&dir).unwrap();
    let mut files = vec![dir.clone()];
    for name in string_attr(routed, "TransferInput").unwrap().split(',') {
        let name = name.trim();
        run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(iwd.join(name))
                .arg(dir.join(name)),
        );
        files.push(dir.join(name));
    }
    // libvirt's QEMU runs as its own user: the path must be traversable.
    for p in [parent, &dir] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    if rustix::process::geteuid().is_root() {
        let nobody = Some(rustix::process::Uid::from_raw(65534));
        let nogroup = Some(rustix::process::Gid::from_raw(65534));
        for f in files {
            rustix::fs::chown(&f, nobody, nogroup).unwrap();
        }
    }
    dir
}

/// What the vm-gahp writes on the script's stdin (condor_vm-gahp/xen_type.linux.cpp,
/// `VirshType::CreateVirshConfigFile`): its ad in long form, then appended lines.
fn gahp_stdin(routed: &ClassAd, workdir: &Path, name: &str) -> String {
    let mut ad = routed.clone();
    ad.insert(
        "VM_WORKING_DIR",
        Expr::string(workdir.display().to_string()),
    );
    ad.insert("VMPARAM_VM_NAME", Expr::string(name));
    let mut text = print_ad(&ad);
    text.push_str("VMPARAM_Xen_Bootloader = \"\"\n");
    if !text.contains("VMPARAM_Xen_Initrd") {
        text.push_str("VMPARAM_Xen_Initrd = \"\"\n");
    }
    text.push_str("JobVMNetworkingType = \"\"\n");
    text
}

/// Run the script as the vm-gahp does (by its path, as root, the ad on stdin, with this
/// node's knobs in `env`); (exit code, stdout, stderr).
fn libvirt_xml(stdin: &str, args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut cmd = Command::new(script());
    cmd.args(args)
        .env("CONDOR_CONFIG", "/dev/null")
        .envs(env.iter().copied());
    let out = output_with_stdin(&mut cmd, stdin.as_bytes(), "the vm-capsule program");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `vm-capsule-libvirt-xml`, the link HTCondor's `LIBVIRT_XML_SCRIPT` names (made beside
/// the tests when they run cargo's build).
pub fn script() -> PathBuf {
    if installed_root().is_some() {
        return bin("vm-capsule-libvirt-xml");
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("libexec");
    fs::create_dir_all(&dir).unwrap();
    let link = dir.join("vm-capsule-libvirt-xml");
    match std::os::unix::fs::symlink(bin("vm-capsule"), &link) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => panic!("{e}"),
        _ => link,
    }
}

/// The knob naming the node's image directory, as the execute node's configuration sets it.
const NODE_IMAGES: &str = "_CONDOR_VM_CAPSULE_NODE_IMAGE_DIR";

/// A template whose OS disk (with its `.sha256`) is also staged "on the execute node" in
/// `images` (root's), with the direct-boot test guest when `boot` gives its command line:
/// its jobs ship a qcow2 overlay naming that image, and the data disk.
fn node_image_template<'a>(images: &'a Path, boot: Option<&'static str>) -> impl Fn(&Path) + 'a {
    move |dir: &Path| {
        if let Some(cmdline) = boot {
            crate::vanilla::template(cmdline)(dir);
        }
        crate::ops::kvm_template(dir);
        let sum = vm_capsule_core::digest::sha256_file(&dir.join("os.qcow2")).unwrap();
        fs::write(dir.join("os.qcow2.sha256"), format!("{sum}  os.qcow2\n")).unwrap();
        fs::create_dir_all(images).unwrap();
        fs::set_permissions(images, fs::Permissions::from_mode(0o755)).unwrap();
        for f in ["os.qcow2", "os.qcow2.sha256"] {
            fs::copy(dir.join(f), images.join(f)).unwrap();
        }
    }
}

/// A pool routing to the VM universe with the OS disk staged in `images` on the nodes.
fn node_image_pool(images: &Path, boot: Option<&'static str>) -> Pool {
    let mut pool = Pool::new(&node_image_template(images, boot));
    pool.env
        .push((NODE_IMAGES.into(), images.display().to_string()));
    if boot.is_some() {
        // The test guest takes the first disk for the data disk.
        let tpl = crate::direct_boot::classad_template(
            pool.root.path(),
            "universe = vm\nexecutable = capsule\nvm_type = kvm\nvm_memory = 256\nvm_disk = data.qcow2:vda:w,os.qcow2:vdb:w",
        );
        pool.env.push((
            "_CONDOR_VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE".into(),
            tpl.display().to_string(),
        ));
    }
    pool
}

/// libvirt's own schema check.
fn validate(xml: &str, dir: &Path) {
    let file = dir.join("domain.xml");
    fs::write(&file, xml).unwrap();
    let out = Command::new("virt-xml-validate")
        .arg(&file)
        .arg("domain")
        .output()
        .expect("virt-xml-validate is needed (Debian: libvirt-clients; scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "{}{}\n{xml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn job(pool: &Pool, name: &str, script: &str, cluster: i64) -> ClassAd {
    let iwd = pool.root.path().join("users").join(name);
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), format!("#!/bin/sh\n{script}\n")).unwrap();
    let submit = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\narguments = \"x 'y z'\"\noutput = out.txt\nqueue\n",
        iwd.display()
    );
    job_ads(&[(name.to_owned(), submit, cluster)]).remove(0)
}

/// libvirt's QEMU driver embedded in a private root: no daemon; DAC file ownership as
/// `qemu:///system`.
pub struct Embed {
    root: tempfile::TempDir,
}

impl Embed {
    pub fn new() -> Embed {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        fs::create_dir_all(&etc).unwrap();
        // No virtlogd: QEMU's output goes to a file.
        fs::write(etc.join("qemu.conf"), "stdio_handler = \"file\"\n").unwrap();
        Embed { root }
    }

    fn uri(&self) -> String {
        format!("qemu:///embed?root={}", self.root.path().display())
    }

    /// One virsh command.
    pub fn virsh(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("120")
            .arg("virsh")
            .arg("-c")
            .arg(self.uri())
            .args(args)
            .output()
            .expect("virsh is needed (Debian: libvirt-clients; scripts/install-deps.sh)")
    }

    fn qemu_pid(&self, name: &str) -> Option<u32> {
        let pid = fs::read_to_string(self.root.path().join(format!("run/qemu/{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// The regular files process `pid` holds open, with their owners.
    pub fn held_by(pid: u32) -> Vec<(PathBuf, u32)> {
        let mut open = Vec::new();
        if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                let (Ok(target), Ok(meta)) = (fs::read_link(fd.path()), fs::metadata(fd.path()))
                else {
                    continue;
                };
                if meta.is_file() {
                    open.push((target, meta.uid()));
                }
            }
        }
        open
    }

    /// Create `xml` as a transient domain named `name`; the regular files its QEMU holds
    /// open, with their owners; then destroy it.
    pub fn files_opened(&self, xml: &str, name: &str) -> Result<Vec<(PathBuf, u32)>, String> {
        let file = self.root.path().join("domain.xml");
        fs::write(&file, xml).unwrap();
        let created = self.virsh(&["create", file.to_str().unwrap()]);
        if !created.status.success() {
            return Err(String::from_utf8_lossy(&created.stderr).into_owned());
        }
        let open = self.qemu_pid(name).map(Self::held_by).unwrap_or_default();
        let _ = self.virsh(&["destroy", name]);
        Ok(open)
    }

    /// Boot `xml` (domain `name`) and wait until its guest powers off, libvirt's driver
    /// running all along (it gives the files back when QEMU ends, as libvirtd does): the
    /// files QEMU held while it ran.
    pub fn run(&self, xml: &str, name: &str, limit: Duration) -> Vec<PathBuf> {
        let file = self.root.path().join("domain.xml");
        fs::write(&file, xml).unwrap();
        let log = fs::File::create(self.root.path().join("virsh.out")).unwrap();
        let mut virsh = Command::new("virsh")
            .arg("-c")
            .arg(self.uri())
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("virsh is needed (Debian: libvirt-clients; scripts/install-deps.sh)");
        let mut input = virsh.stdin.take().unwrap();
        writeln!(input, "create {}", file.display()).unwrap();
        let said = || fs::read_to_string(self.root.path().join("virsh.out")).unwrap_or_default();
        let start = Instant::now();
        while !said().contains("created") {
            assert!(
                !said().contains("error") && start.elapsed() < Duration::from_secs(120),
                "libvirt did not create the domain: {}\n{xml}",
                said()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let pid = self.qemu_pid(name).expect("the domain's QEMU");
        let qemu_uid = fs::metadata(format!("/proc/{pid}")).map_or(0, |m| m.uid());
        let mut held: Vec<PathBuf> = Self::held_by(pid).into_iter().map(|(p, _)| p).collect();
        std::thread::sleep(Duration::from_secs(1));
        for (p, _) in Self::held_by(pid) {
            if !held.contains(&p) {
                held.push(p);
            }
        }
        // on_poweroff destroy: QEMU ends when the guest powers off.
        while Path::new(&format!("/proc/{pid}")).exists() {
            if start.elapsed() > limit {
                writeln!(input, "destroy {name}").unwrap();
                std::thread::sleep(Duration::from_secs(2));
                panic!("the domain did not power off within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        // The driver notices and gives the files back; then the session ends. The job's own
        // files stay the QEMU user's: vm-capsule's script gave them to it and told libvirt
        // not to relabel them.
        let given_back = || {
            held.iter()
                .filter(|p| !p.starts_with(self.root.path()))
                .filter(|p| !p.to_string_lossy().contains("/.vm-capsule-libvirt/"))
                .all(|p| fs::metadata(p).map_or(true, |m| m.uid() != qemu_uid))
        };
        let gone = Instant::now();
        writeln!(input, "list").unwrap();
        while !given_back() && gone.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            given_back(),
            "libvirt did not give back {held:?}: {}",
            said()
        );

        writeln!(input, "quit").unwrap();
        drop(input);
        let _ = virsh.wait();
        held
    }
}

/// The refusal HTCondor needs: exit 0 (never the built-in XML), a domain libvirt will not
/// create with the words that make the vm-gahp hold the job, one line naming the reason.
fn assert_refused(code: i32, xml: &str, err: &str, why: &str) {
    assert_eq!(code, 0, "{err}");
    assert!(
        xml.contains("image is not in qcow2 format") && !xml.contains("<disk"),
        "{xml}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(why), "{err}");
}

#[test]
fn domain_xml_validates_for_each_template_kind() {
    let exec = tempfile::tempdir().unwrap();
    let images = exec.path().join("images");
    let node = [(NODE_IMAGES, images.as_path())];
    // KVM booting its OS disk: a qcow2 overlay over the node's own image.
    let pool = node_image_pool(&images, None);
    let routed = pool.translate(&job(&pool, "disk", "true", 401)).unwrap();
    let dir = execute_sandbox(&routed, &exec.path().join("disk"));
    let (code, xml, err) = libvirt_xml(
        &gahp_stdin(&routed, &dir, "disk_vm"),
        &["--domain-type", "qemu"],
        &node,
    );
    assert_eq!(code, 0, "{err}");
    validate(&xml, exec.path());
    assert!(
        xml.contains("<boot dev='hd'/>") && !xml.contains("<kernel>"),
        "{xml}"
    );
    assert_eq!(xml.matches("<disk type='file'").count(), 2, "{xml}");
    assert_eq!(
        xml.matches("<driver name='qemu' type='qcow2'/>").count(),
        2,
        "{xml}"
    );
    assert!(
        xml.contains(&format!(
            "<format type='qcow2'/>\n        <source file='{}'><seclabel model='dac' relabel='no'/></source>\n        <backingStore/>",
            images.join("os.qcow2").display()
        )),
        "{xml}"
    );
    // The same OS disk travelling with the job: its overlay names a file of the sandbox,
    // which no image may do.
    let pool = Pool::new(&crate::ops::kvm_template);
    let routed = pool.translate(&job(&pool, "travel", "true", 405)).unwrap();
    let dir = execute_sandbox(&routed, &exec.path().join("travel"));
    let (code, xml, err) = libvirt_xml(
        &gahp_stdin(&routed, &dir, "travel_vm"),
        &["--domain-type", "qemu"],
        &node,
    );
    assert_refused(
        code,
        &xml,
        &err,
        "names the backing file os.qcow2: only the node's own base image (VM_CAPSULE_NODE_IMAGE_DIR)",
    );

    // KVM direct kernel boot, as a qemu and as a kvm domain.
    let pool = Pool::new(&crate::vanilla::template("console=ttyS0 quiet panic=-1"));
    let routed = pool.translate(&job(&pool, "kernel", "true", 402)).unwrap();
    for kind in ["qemu", "kvm"] {
        let dir = execute_sandbox(&routed, &exec.path().join(format!("kernel-{kind}")));
        let (code, xml, err) = libvirt_xml(
            &gahp_stdin(&routed, &dir, &format!("k_{kind}")),
            &["--domain-type", kind],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        validate(&xml, exec.path());
        assert!(xml.starts_with(&format!("<domain type='{kind}'>")), "{xml}");
        // The checked files, pinned beside the sandbox where its user cannot swap them.
        let pins = exec
            .path()
            .join(format!("kernel-{kind}/.vm-capsule-libvirt/k_{kind}."));
        assert!(
            xml.contains(&format!("<kernel>{}", pins.display()))
                && xml.contains("/vmlinuz</kernel>"),
            "{xml}"
        );
        assert!(
            xml.contains("<cmdline>console=ttyS0 quiet panic=-1</cmdline>"),
            "{xml}"
        );
        assert!(xml.contains("<console type='pty'>"), "{xml}");
        assert!(xml.contains("<on_reboot>destroy</on_reboot>"), "{xml}");
    }

    // Xen-style template from the admin's submit file (xen_kernel, xen_initrd, xen_root...).
    let mut pool = Pool::new(&crate::direct_boot::xen_template(false));
    let tpl =
        crate::direct_boot::classad_template(pool.root.path(), crate::direct_boot::XEN_SUBMIT);
    pool.env.push((
        "_CONDOR_VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE".into(),
        tpl.display().to_string(),
    ));
    let routed = pool.translate(&job(&pool, "xen", "true", 403)).unwrap();
    let dir = execute_sandbox(&routed, &exec.path().join("xen"));
    let (code, xml, err) = libvirt_xml(&gahp_stdin(&routed, &dir, "xen_vm"), &[], &[]);
    assert_eq!(code, 0, "{err}");
    validate(&xml, exec.path());
    assert!(
        xml.starts_with("<domain type='xen'>") && xml.contains("<type>linux</type>"),
        "{xml}"
    );
    assert!(
        xml.contains("<cmdline>root=/dev/ram0 console=ttyS0 quiet panic=-1</cmdline>"),
        "{xml}"
    );
    assert!(xml.contains("<target dev='xvdb' bus='xen'/>"), "{xml}");

    // Any other VM job is refused, unless the admin leaves it to HTCondor's built-in XML.
    let mut other = routed.clone();
    other.remove("VMCapsuleDataDisk");
    let (code, xml, err) = libvirt_xml(&gahp_stdin(&other, &dir, "other_vm"), &[], &[]);
    assert_refused(code, &xml, &err, "not a vm-capsule job");
    let builtin = [(
        "_CONDOR_VM_CAPSULE_LIBVIRT_OTHER_JOBS",
        Path::new("builtin"),
    )];
    let (code, xml, err) = libvirt_xml(&gahp_stdin(&other, &dir, "other_vm"), &[], &builtin);
    assert_eq!((code, xml.as_str()), (1, ""));
    assert!(err.contains("built-in domain XML applies"), "{err}");
}

#[test]
fn libvirt_boots_an_overlay_over_the_node_image_and_the_job_comes_back() {
    let exec = tempfile::tempdir().unwrap();
    // libvirt's QEMU user must reach the node image and the pinned files.
    fs::set_permissions(exec.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let images = exec.path().join("images");
    let pool = node_image_pool(&images, Some("console=ttyS0 quiet panic=-1"));
    let ad = job(
        &pool,
        "libvirt",
        "for a in \"$@\"; do echo \"[$a]\"; done; exit 7",
        404,
    );
    let routed = pool.translate(&ad).unwrap();
    let dir = execute_sandbox(&routed, &exec.path().join("execute"));
    let name = format!("vmcapsule-test-{}", std::process::id());
    let (code, xml, err) = libvirt_xml(
        &gahp_stdin(&routed, &dir, &name),
        &["--domain-type", "qemu"],
        &[(NODE_IMAGES, &images)],
    );
    assert_eq!(code, 0, "{err}");
    let base = images.join("os.qcow2");
    assert!(xml.contains(&base.display().to_string()), "{xml}");
    let held = Embed::new().run(&xml, &name, Duration::from_secs(240));
    assert!(
        held.contains(&base),
        "QEMU did not open the node image below the overlay: {held:?}"
    );
    // libvirt never made the admin's image its QEMU user's (which it would leave so).
    let meta = fs::metadata(&base).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o644));
    // HTCondor transfers the writable disks back as the job's user: libvirt gave them back
    // readable by the user's group.
    let data = string_attr(&routed, "VMCapsuleDataDisk").unwrap();
    let read = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "cat",
        ])
        .arg(dir.join(&data))
        .stdout(Stdio::null())
        .status()
        .expect("setpriv is needed (util-linux)");
    let meta = fs::metadata(dir.join(&data)).unwrap();
    assert!(
        read.success(),
        "the job's user cannot read its data disk after the VM: uid {} gid {} mode {:o}",
        meta.uid(),
        meta.gid(),
        meta.mode() & 0o7777
    );
    // Output transfer: the writable data disk goes back to the routed job's Iwd.
    let iwd = PathBuf::from(string_attr(&routed, "Iwd").unwrap());
    fs::copy(dir.join(&data), iwd.join(&data)).unwrap();
    let (_, attrs) = pool.finalize(&ad, &routed);
    assert_eq!(
        evaluate_attr(&attrs, "ExitCode"),
        Value::Integer(7),
        "{}",
        print_ad(&attrs)
    );
    let out = fs::read_to_string(pool.root.path().join("users/libvirt/out.txt")).unwrap();
    assert_eq!(out, "[x]\n[y z]\n");
    pool.cleanup(&routed);
}

/// The node's read-only host paths in the VM universe: the script shares each one
/// `<readonly/>` with the node settings in fw_cfg, libvirt's schema accepts it, and the job
/// in the booted domain reads a directory STANDING IN for `/cvmfs` but cannot write to it.
#[test]
fn libvirt_shares_a_host_path_read_only() {
    let exec = tempfile::tempdir().unwrap();
    fs::set_permissions(exec.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let share = exec.path().join("cvmfs-stand-in");
    fs::create_dir_all(share.join("sw")).unwrap();
    fs::write(share.join("sw/hello.txt"), "hello from the node\n").unwrap();
    std::os::unix::fs::symlink("/etc", share.join("etc-link")).unwrap();
    for d in [&share, &share.join("sw")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o555)).unwrap();
    }
    let hp = share.display().to_string();
    let images = exec.path().join("images");
    let pool = node_image_pool(&images, Some("console=ttyS0 quiet panic=-1"));
    let script = format!(
        "cat {hp}/sw/hello.txt; if (echo x > {hp}/new) 2>/dev/null; then echo writable; else echo read-only; fi; grep -c 'condor:x:1000' {hp}/etc-link/passwd; grep -c vmcap- {hp}/etc-link/passwd; exit 0"
    );
    let ad = job(&pool, "hostpath", &script, 406);
    let routed = pool.translate(&ad).unwrap();
    let dir = execute_sandbox(&routed, &exec.path().join("execute"));
    let name = format!("vmcapsule-hp-{}", std::process::id());
    let knob = Path::new(&hp);
    let (code, xml, err) = libvirt_xml(
        &gahp_stdin(&routed, &dir, &name),
        &["--domain-type", "qemu"],
        &[
            (NODE_IMAGES, &images),
            ("_CONDOR_VM_CAPSULE_HOST_PATHS", knob),
        ],
    );
    assert_eq!(code, 0, "{err}");
    validate(&xml, exec.path());
    assert!(
        xml.contains(&format!(
            "<source dir='{hp}'/><target dir='vmcap0'/><readonly/>"
        )),
        "{xml}"
    );
    Embed::new().run(&xml, &name, Duration::from_secs(240));
    let data = string_attr(&routed, "VMCapsuleDataDisk").unwrap();
    let iwd = PathBuf::from(string_attr(&routed, "Iwd").unwrap());
    fs::copy(dir.join(&data), iwd.join(&data)).unwrap();
    let (_, attrs) = pool.finalize(&ad, &routed);
    assert_eq!(
        evaluate_attr(&attrs, "ExitCode"),
        Value::Integer(0),
        "{}",
        print_ad(&attrs)
    );
    let out = fs::read_to_string(pool.root.path().join("users/hostpath/out.txt")).unwrap();
    // The guest's own /etc through the link (the test guest's `condor`), not the host's.
    assert_eq!(out, "hello from the node\nread-only\n1\n0\n");
    assert!(!share.join("new").exists());
    pool.cleanup(&routed);
}
