//! Direct kernel boot named by the classad template: an admin's Xen/KVM submit file
//! with `xen_kernel`, `xen_initrd`, `xen_root`, `xen_kernel_params`, turned into a job ad by
//! HTCondor itself (`htcondor.Submit(...).jobs()`, the same ad `condor_submit -dump` prints),
//! is the classad template. Translate ships exactly the files it names, the routed ad names
//! exactly what it ships, and both flavours boot it.

use std::fs;
use std::path::{Path, PathBuf};

use classad::eval::{evaluate_attr, string_attr};
use classad::{ClassAd, Expr, Value};

use crate::cmd::run_ok;
use crate::execute_node::{vanilla_execute_node, JobEnd};
use crate::router::{job_ads, print_ad, Pool};

/// The admin's VM submit file, as HTCondor turns it into an ad: the classad template.
pub fn classad_template(dir: &Path, submit: &str) -> PathBuf {
    let ad = job_ads(&[("vm-template".into(), format!("{submit}\nqueue\n"), 9)]).remove(0);
    let path = dir.join("vm-template.ad");
    fs::write(&path, classad::print::ad_to_old_string(&ad).unwrap()).unwrap();
    path
}

pub const XEN_SUBMIT: &str =
    "universe = vm\nexecutable = capsule\nvm_type = xen\nvm_memory = 256\n\
    xen_kernel = vmlinuz\nxen_initrd = initrd.gz\nxen_root = /dev/ram0\n\
    xen_kernel_params = console=ttyS0 quiet panic=-1\nvm_disk = data.qcow2:xvdb:w";

/// A test-guest template whose initrd is `initrd.gz`; `decoy` also puts the fixed default
/// names there (a different initrd.img), which must not be shipped.
pub fn xen_template(decoy: bool) -> impl Fn(&Path) {
    move |dir: &Path| {
        let guest = crate::execute_node::test_guest();
        fs::copy(guest.join("vmlinuz"), dir.join("vmlinuz")).unwrap();
        fs::copy(guest.join("initrd.gz"), dir.join("initrd.gz")).unwrap();
        if decoy {
            fs::write(dir.join("initrd.img"), b"not the initrd").unwrap();
        }
        crate::execute_node::qcow2_data_disk(dir);
    }
}

fn pool_with(template: &dyn Fn(&Path), submit: &str) -> Pool {
    let mut pool = Pool::new(template);
    let path = classad_template(pool.root.path(), submit);
    pool.env.push((
        "_CONDOR_VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE".into(),
        path.display().to_string(),
    ));
    pool
}

fn job(pool: &Pool, name: &str, script: &str, cluster: i64) -> (PathBuf, ClassAd) {
    let iwd = pool.root.path().join("users").join(name);
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), format!("#!/bin/sh\n{script}\n")).unwrap();
    let submit = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\narguments = \"a 'b c'\"\noutput = out.txt\n\
         transfer_output_files = result.txt\nqueue\n",
        iwd.display()
    );
    (
        iwd,
        job_ads(&[(name.to_owned(), submit, cluster)]).remove(0),
    )
}

fn text(ad: &ClassAd, name: &str) -> String {
    string_attr(ad, name).unwrap_or_else(|| panic!("{name} missing in {}", print_ad(ad)))
}

fn transfer_list(ad: &ClassAd) -> Vec<String> {
    text(ad, "TransferInput")
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect()
}

#[test]
fn routed_ad_names_exactly_the_boot_files_it_ships() {
    let pool = pool_with(&xen_template(true), XEN_SUBMIT);
    let (_, ad) = job(&pool, "names", "true", 51);
    let routed = pool.translate(&ad).unwrap();
    let scratch = PathBuf::from(text(&routed, "Iwd"));
    let shipped = transfer_list(&routed);
    assert!(shipped.contains(&"vmlinuz".to_owned()), "{shipped:?}");
    assert!(shipped.contains(&"initrd.gz".to_owned()), "{shipped:?}");
    assert!(
        !shipped.iter().any(|f| f == "initrd.img"),
        "the default-named decoy travelled: {shipped:?}"
    );
    for f in &shipped {
        assert!(scratch.join(f).is_file(), "{f} is shipped but not staged");
    }
    assert_eq!(text(&routed, "JobVMType"), "xen");
    assert_eq!(text(&routed, "VMPARAM_Xen_Kernel"), "vmlinuz");
    assert_eq!(text(&routed, "VMPARAM_Xen_Initrd"), "initrd.gz");
    assert_eq!(text(&routed, "VMPARAM_Xen_Root"), "/dev/ram0");
    assert_eq!(
        text(&routed, "VMPARAM_Xen_Kernel_Params"),
        "console=ttyS0 quiet panic=-1"
    );
    assert_eq!(text(&routed, "VMCapsuleInitrd"), "initrd.gz");
    assert_eq!(
        text(&routed, "VMCapsuleKernelArgs"),
        "root=/dev/ram0 console=ttyS0 quiet panic=-1"
    );
    // The vanilla flavour ships the same files (by absolute path in scratch).
    let vanilla = pool.translate_vanilla(&job(&pool, "names-vanilla", "true", 52).1);
    let names: Vec<String> = transfer_list(&vanilla)
        .iter()
        .map(|p| {
            Path::new(p)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(names.contains(&"initrd.gz".to_owned()), "{names:?}");
    assert!(!names.contains(&"initrd.img".to_owned()), "{names:?}");
}

#[test]
fn included_kernel_boots_from_the_os_disk_and_ships_no_kernel() {
    let template = |dir: &Path| {
        xen_template(true)(dir);
        // An OS disk (contents do not matter to translate).
        fs::write(dir.join("os.img"), vec![0u8; 1 << 20]).unwrap();
    };
    let pool = pool_with(
        &template,
        "universe = vm\nexecutable = c\nvm_type = xen\nvm_memory = 256\nxen_kernel = included\n\
         vm_disk = os.img:xvda:w,data.qcow2:xvdb:w",
    );
    let (_, ad) = job(&pool, "included", "true", 53);
    let routed = pool.translate(&ad).unwrap();
    let shipped = transfer_list(&routed);
    assert!(
        !shipped
            .iter()
            .any(|f| f.starts_with("vmlinuz") || f.starts_with("initrd")),
        "{shipped:?}"
    );
    assert_eq!(text(&routed, "VMPARAM_Xen_Kernel"), "included");
    assert!(routed.get("VMCapsuleKernel").is_none());
}

#[test]
fn a_boot_file_the_template_lacks_is_named_in_the_error() {
    let pool = pool_with(
        &xen_template(false),
        &XEN_SUBMIT.replace("initrd.gz", "initrd-6.1.gz"),
    );
    let (_, ad) = job(&pool, "missing", "true", 54);
    let run = pool.translate(&ad).unwrap_err();
    assert!(
        run.stderr.contains("VMPARAM_Xen_Initrd") && run.stderr.contains("initrd-6.1.gz"),
        "{}",
        run.stderr
    );
}

/// Both flavours boot the Xen-style template (root, params, initrd.gz) and give the job's
/// own exit code and files.
#[test]
fn xen_style_template_boots_in_both_flavours() {
    let pool = pool_with(&xen_template(true), XEN_SUBMIT);
    let script = "printf '%s|' \"$@\" > result.txt; grep -o 'root=[^ ]*' /proc/cmdline >> result.txt; exit 3";
    let expected = "a|b c|root=/dev/ram0\n";

    // VM-universe flavour through `vm-capsule run`.
    let (iwd, ad) = job(&pool, "xen-vm", script, 55);
    let routed = pool.translate(&ad).unwrap();
    let ad_file = pool.root.path().join("xen-vm.routed.ad");
    fs::write(&ad_file, print_ad(&routed)).unwrap();
    run_ok(
        std::process::Command::new(crate::router::bin("vm-capsule"))
            .arg("run")
            .arg(&ad_file)
            .args(["--accel", "tcg", "--timeout", "120"])
            .env("TMPDIR", pool.root.path()),
    );
    let (_, attrs) = pool.finalize(&ad, &routed);
    pool.cleanup(&routed);
    assert_eq!(evaluate_attr(&attrs, "ExitCode"), Value::Integer(3));
    assert_eq!(
        fs::read_to_string(iwd.join("result.txt")).unwrap(),
        expected
    );

    // Vanilla flavour: the launcher on the stand-in execute node.
    let (iwd, ad) = job(&pool, "xen-vanilla", script, 56);
    let routed = pool.translate_vanilla(&ad);
    let env = vec![
        ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
        ("TMPDIR".to_owned(), pool.root.path().display().to_string()),
    ];
    let end = vanilla_execute_node(&routed, &pool.root.path().join("xen-sandbox"), &env);
    assert_eq!(end, JobEnd::Exited(3));
    assert_eq!(
        fs::read_to_string(iwd.join("result.txt")).unwrap(),
        expected
    );
    let mut done = routed.clone();
    done.insert("ExitCode", Expr::integer(3));
    pool.cleanup(&done);
}
