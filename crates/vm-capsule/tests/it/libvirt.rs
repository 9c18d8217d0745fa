//! `vm-capsule libvirt-xml`, the `LIBVIRT_XML_SCRIPT` for HTCondor's vm-gahp (issue 14.7):
//! fed what the vm-gahp writes on its stdin (its ad: the routed job's attributes,
//! `VM_WORKING_DIR`, `VMPARAM_VM_NAME`, then its appended lines), its XML must pass libvirt's
//! own schema (`virt-xml-validate`) for each template kind, and libvirt must boot it: the
//! domain runs the job on the data disk, powers off, and finalize reads the result.
//!
//! The execute node's sandbox is a stand-in (no starter can run here): a directory owned by
//! an ordinary user holding the files HTCondor would have transferred.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use classad::eval::{evaluate_attr, string_attr};
use classad::{ClassAd, Expr, Value};

use crate::router::{bin, job_ads, output_with_stdin, print_ad, Pool};

/// The stand-in execute sandbox: the routed ad's `TransferInput` copied from its `Iwd` into
/// a fresh directory, owned by `nobody` when we are root (as the starter makes it).
fn execute_sandbox(routed: &ClassAd, parent: &Path) -> PathBuf {
    let iwd = PathBuf::from(string_attr(routed, "Iwd").unwrap());
    let dir = parent.join("dir_4242");
    fs::create_dir_all(&dir).unwrap();
    let mut files = vec![dir.clone()];
    for name in string_attr(routed, "TransferInput").unwrap().split(',') {
        let name = name.trim();
        let out = Command::new("cp")
            .arg("--sparse=always")
            .arg(iwd.join(name))
            .arg(dir.join(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}");
        files.push(dir.join(name));
    }
    // libvirt's QEMU runs as its own user: the path must be traversable.
    for p in [parent, &dir] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    if rustix::process::geteuid().is_root() {
        let nobody = Some(rustix::process::Uid::from_raw(65534));
        for f in files {
            rustix::fs::chown(&f, nobody, None).unwrap();
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

/// Run the script as the vm-gahp does (by path, the ad on stdin); (exit code, stdout, stderr).
fn libvirt_xml(stdin: &str, args: &[&str]) -> (i32, String, String) {
    let out = output_with_stdin(
        Command::new(bin("vm-capsule"))
            .arg("libvirt-xml")
            .args(args)
            .env("CONDOR_CONFIG", "/dev/null"),
        stdin.as_bytes(),
        "the vm-capsule program",
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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

#[test]
fn domain_xml_validates_for_each_template_kind() {
    let exec = tempfile::tempdir().unwrap();
    // KVM booting its OS disk.
    let pool = Pool::new(&crate::ops::kvm_template);
    let routed = pool.translate(&job(&pool, "disk", "true", 401)).unwrap();
    let dir = execute_sandbox(&routed, &exec.path().join("disk"));
    let (code, xml, err) = libvirt_xml(
        &gahp_stdin(&routed, &dir, "disk_vm"),
        &["--domain-type", "qemu"],
    );
    assert_eq!(code, 0, "{err}");
    validate(&xml, exec.path());
    assert!(
        xml.contains("<boot dev='hd'/>") && !xml.contains("<kernel>"),
        "{xml}"
    );
    assert_eq!(xml.matches("<disk type='file'").count(), 2, "{xml}");
    assert!(
        xml.contains("<readonly/>")
            || xml.matches("<driver name='qemu' type='qcow2'/>").count() == 2
    );

    // KVM direct kernel boot, as a qemu and as a kvm domain.
    let pool = Pool::new(&crate::vanilla::template("console=ttyS0 quiet panic=-1"));
    let routed = pool.translate(&job(&pool, "kernel", "true", 402)).unwrap();
    let dir = execute_sandbox(&routed, &exec.path().join("kernel"));
    for kind in ["qemu", "kvm"] {
        let (code, xml, err) =
            libvirt_xml(&gahp_stdin(&routed, &dir, "k_vm"), &["--domain-type", kind]);
        assert_eq!(code, 0, "{err}");
        validate(&xml, exec.path());
        assert!(xml.starts_with(&format!("<domain type='{kind}'>")), "{xml}");
        assert!(
            xml.contains(&format!("<kernel>{}/vmlinuz</kernel>", dir.display())),
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
    let (code, xml, err) = libvirt_xml(&gahp_stdin(&routed, &dir, "xen_vm"), &[]);
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

    // Any other VM job gets HTCondor's built-in XML: exit 1, one line saying why.
    let mut other = routed.clone();
    other.remove("VMCapsuleDataDisk");
    let (code, xml, err) = libvirt_xml(&gahp_stdin(&other, &dir, "other_vm"), &[]);
    assert_eq!((code, xml.as_str()), (1, ""));
    assert!(err.contains("built-in domain XML applies"), "{err}");
}

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("virsh is needed (Debian: libvirt-clients; scripts/install-deps.sh)")
}

#[test]
fn libvirt_boots_the_domain_and_the_job_comes_back() {
    let version = virsh(&["version"]);
    assert!(
        version.status.success(),
        "libvirtd is not reachable at qemu:///system (scripts/test.sh starts it): {}",
        String::from_utf8_lossy(&version.stderr)
    );
    let pool = Pool::new(&crate::vanilla::template("console=ttyS0 quiet panic=-1"));
    let ad = job(
        &pool,
        "libvirt",
        "for a in \"$@\"; do echo \"[$a]\"; done; exit 7",
        404,
    );
    let routed = pool.translate(&ad).unwrap();
    let exec = tempfile::tempdir().unwrap();
    let dir = execute_sandbox(&routed, exec.path());
    let name = format!("vmcapsule-test-{}", std::process::id());
    let (code, xml, err) = libvirt_xml(
        &gahp_stdin(&routed, &dir, &name),
        &["--domain-type", "qemu"],
    );
    assert_eq!(code, 0, "{err}");
    let file = exec.path().join("domain.xml");
    fs::write(&file, &xml).unwrap();
    let created = virsh(&["create", file.to_str().unwrap()]);
    assert!(
        created.status.success(),
        "{}\n{xml}",
        String::from_utf8_lossy(&created.stderr)
    );
    // on_poweroff destroy: a transient domain disappears when the guest powers off.
    let start = Instant::now();
    while virsh(&["domstate", &name]).status.success() {
        if start.elapsed() > Duration::from_secs(240) {
            let _ = virsh(&["destroy", &name]);
            panic!("the domain did not power off within 240 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Output transfer: the writable data disk goes back to the routed job's Iwd.
    let data = string_attr(&routed, "VMCapsuleDataDisk").unwrap();
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
