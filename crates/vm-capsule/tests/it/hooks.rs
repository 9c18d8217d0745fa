//! Host-mode end to end: real job ads from HTCondor -> translate -> capsule-init on
//! the data disk -> finalize -> cleanup, checked against what HTCondor's vanilla semantics
//! require of the user's files and exit attributes. KVM (qcow2 and raw data disks) and
//! VMware (vmdk data disk, with and without a snapshot delta over it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use capsule_disk::{CreateOptions, DataDisk, Image, ImageFormat};
use classad::eval::evaluate_attr;
use classad::{ClassAd, Value};

use crate::cmd::{assert_ok, run_ok};
use crate::execute_node::run_capsule;
use crate::router::{job_ads, Pool};

fn kvm_template(data: ImageFormat, os: ImageFormat) -> impl Fn(&Path) {
    move |dir: &Path| {
        let (os_name, data_name) = match (os, data) {
            (ImageFormat::Qcow2, ImageFormat::Qcow2) => ("os.qcow2", "data.qcow2"),
            (_, ImageFormat::Raw) => ("os.img", "data.img"),
            _ => ("os.img", "data.qcow2"),
        };
        Image::create(&dir.join(os_name), os, 64 << 20)
            .unwrap()
            .finish()
            .unwrap();
        let opts = CreateOptions::new().size(64 << 20).format(data);
        DataDisk::create(&dir.join(data_name), &opts)
            .unwrap()
            .finish()
            .unwrap();
    }
}

fn vmware_template(dir: &Path) {
    Image::create(&dir.join("os.vmdk"), ImageFormat::Vmdk, 64 << 20)
        .unwrap()
        .finish()
        .unwrap();
    let opts = CreateOptions::new()
        .size(64 << 20)
        .format(ImageFormat::Vmdk)
        .partition_offset(32256);
    DataDisk::create(&dir.join("data.vmdk"), &opts)
        .unwrap()
        .finish()
        .unwrap();
    fs::write(
        dir.join("capsule.vmx"),
        "config.version = \"8\"\nscsi0:0.fileName = \"os.vmdk\"\nscsi0:1.fileName = \"data.vmdk\"\nscsi0:1.mode = \"persistent\"\n",
    )
    .unwrap();
}

/// One job of the suite.
struct Case {
    name: &'static str,
    /// Submit lines besides executable/initialdir/queue.
    submit: String,
    /// The job's shell script.
    script: &'static str,
    /// Files to create in Iwd before submitting (path, content).
    files: Vec<(&'static str, &'static str)>,
}

/// What came back.
struct Done {
    iwd: PathBuf,
    /// The original job's ad after finalize's attributes were merged.
    attrs: ClassAd,
    translate_failure: Option<crate::router::HookRun>,
    scratch: Option<PathBuf>,
}

fn run_cases(pool: &Pool, cases: &[Case], delta: bool) -> Vec<Done> {
    let base = pool.root.path().join("users");
    let mut submits = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let iwd = base.join(case.name);
        fs::create_dir_all(&iwd).unwrap();
        let script = format!("#!/bin/sh\n{}\n", case.script);
        fs::write(iwd.join("job.sh"), script).unwrap();
        for (path, content) in &case.files {
            let p = iwd.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        // condor_submit resolves a relative executable against the submit dir, not
        // initialdir: name it absolutely.
        let submit = format!(
            "executable = {}/job.sh\ninitialdir = {}\n{}\nqueue\n",
            iwd.display(),
            iwd.display(),
            case.submit
        );
        submits.push((
            case.name.to_owned(),
            submit,
            100 + i64::try_from(i).unwrap(),
        ));
    }
    let ads = job_ads(&submits);
    let mut done = Vec::new();
    for (case, ad) in cases.iter().zip(ads) {
        let iwd = base.join(case.name);
        let mut ad = ad;
        if case.name == "env-v1" {
            // Old (7.2-era) ads carry Env/EnvDelim instead of Environment.
            ad.remove("Environment");
            ad.insert("Env", classad::Expr::string("A=1;B=two words;C=x=y"));
        }
        let routed = match pool.translate(&ad) {
            Ok(r) => r,
            Err(run) => {
                done.push(Done {
                    iwd,
                    attrs: ad,
                    translate_failure: Some(run),
                    scratch: None,
                });
                continue;
            }
        };
        let scratch = PathBuf::from(text(&routed, "Iwd"));
        let data = scratch.join(text(&routed, "VMCapsuleDataDisk"));
        let disk = if delta {
            // A VMware snapshot: writes land in a delta over the data disk.
            let delta = scratch.join("data-000001.vmdk");
            run_ok(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "vmdk", "-F", "vmdk", "-b"])
                    .arg(&data)
                    .arg(&delta),
            );
            delta
        } else {
            data.clone()
        };
        let work = pool.root.path().join(format!("exec-{}", case.name));
        assert_ok(
            run_capsule(&disk, &work),
            format_args!("{}: capsule-init", case.name),
        );
        let (_, attrs) = pool.finalize(&ad, &routed);
        done.push(Done {
            iwd,
            attrs,
            translate_failure: None,
            scratch: Some(scratch),
        });
        // Finalize is idempotent: a re-run after a crash gives the same files and output.
        let before = crate::execute_node::files_under(&base.join(case.name));
        let (_, again) = pool.finalize(&ad, &routed);
        assert_eq!(
            crate::execute_node::files_under(&base.join(case.name)),
            before,
            "{}: finalize re-run changed files",
            case.name
        );
        assert_eq!(
            evaluate_attr(&again, "ExitCode"),
            evaluate_attr(&done.last().unwrap().attrs, "ExitCode")
        );
        pool.cleanup(&routed);
    }
    done
}

fn text(ad: &ClassAd, name: &str) -> String {
    match evaluate_attr(ad, name) {
        Value::String(s) => s,
        other => panic!("{name} is {other:?}"),
    }
}

fn exit_code(d: &Done) -> Value {
    evaluate_attr(&d.attrs, "ExitCode")
}

fn read(d: &Done, rel: &str) -> String {
    fs::read_to_string(d.iwd.join(rel))
        .unwrap_or_else(|e| panic!("{}: {rel}: {e}", d.iwd.display()))
}

fn suite(abs_dir: &Path) -> Vec<Case> {
    fs::create_dir_all(abs_dir).unwrap();
    fs::write(abs_dir.join("data.bin"), "absolute input\n").unwrap();
    vec![
        Case {
            name: "v2-arguments",
            submit: "arguments = \"one \"\"two\"\" 'spacey ''quoted'' argument' ''\"\noutput = out.txt\nerror = err.txt".into(),
            script: "for a in \"$@\"; do printf '[%s]\\n' \"$a\"; done; echo to-stderr >&2",
            files: vec![],
        },
        Case {
            name: "v1-args",
            submit: "arguments = a b\\\"c  d\noutput = out.txt".into(),
            script: "for a in \"$@\"; do printf '[%s]\\n' \"$a\"; done",
            files: vec![],
        },
        Case {
            name: "env-v2",
            submit: "environment = \"one=1 two=\"\"2\"\" three='spacey ''quoted'' value' eq=a=b\"\noutput = out.txt".into(),
            script: "printf '%s|%s|%s|%s\\n' \"$one\" \"$two\" \"$three\" \"$eq\"",
            files: vec![],
        },
        Case {
            name: "env-v1",
            submit: "output = out.txt".into(),
            script: "printf '%s|%s|%s\\n' \"$A\" \"$B\" \"$C\"",
            files: vec![],
        },
        Case {
            name: "stdin",
            submit: "input = in.txt\noutput = out.txt".into(),
            script: "cat; echo done",
            files: vec![("in.txt", "hello stdin\n")],
        },
        Case {
            name: "input-dirs",
            submit: "transfer_input_files = d1, d2/\noutput = out.txt".into(),
            script: "cat d1/a.txt b.txt sub/c.txt",
            files: vec![("d1/a.txt", "A\n"), ("d2/b.txt", "B\n"), ("d2/sub/c.txt", "C\n")],
        },
        Case {
            name: "absolute-input",
            submit: format!(
                "transfer_input_files = {}/data.bin\noutput = out.txt",
                abs_dir.display()
            ),
            script: "cat data.bin",
            files: vec![],
        },
        Case {
            name: "remaps",
            submit: format!(
                "transfer_output_files = a.out, b.out\ntransfer_output_remaps = \"a.out = results/a.txt; b.out = {}/b.txt\"",
                abs_dir.display()
            ),
            script: "echo a > a.out; echo b > b.out",
            files: vec![],
        },
        Case {
            name: "default-outputs",
            submit: "transfer_input_files = mod.txt, keep.txt".into(),
            script: "echo new > new.txt; echo changed >> mod.txt; mkdir newdir; echo x > newdir/x",
            files: vec![("mod.txt", "orig\n"), ("keep.txt", "keep\n")],
        },
        Case {
            name: "explicit-dir",
            submit: "transfer_output_files = outdir".into(),
            script: "mkdir -p outdir/x; echo y > outdir/x/y.txt; echo not-returned > other.txt",
            files: vec![],
        },
        Case {
            name: "exit-3",
            submit: "output = out.txt".into(),
            script: "echo before; exit 3",
            files: vec![],
        },
        Case {
            name: "signal",
            submit: String::new(),
            script: "kill -SEGV $$",
            files: vec![],
        },
        Case {
            name: "missing-input",
            submit: "transfer_input_files = nope.txt".into(),
            script: "true",
            files: vec![],
        },
        Case {
            name: "too-big",
            submit: "request_disk = 1024".into(),
            script: "head -c 90000000 /dev/zero > big.bin",
            files: vec![],
        },
    ]
}

#[test]
fn kvm_qcow2_suite() {
    let pool = Pool::new(&kvm_template(ImageFormat::Qcow2, ImageFormat::Qcow2));
    let abs = pool.root.path().join("abs");
    let cases = suite(&abs);
    let done = run_cases(&pool, &cases, false);
    let by = |n: &str| &done[cases.iter().position(|c| c.name == n).unwrap()];

    let d = by("v2-arguments");
    assert_eq!(
        read(d, "out.txt"),
        "[one]\n[\"two\"]\n[spacey 'quoted' argument]\n[]\n"
    );
    assert_eq!(read(d, "err.txt"), "to-stderr\n");
    assert_eq!(exit_code(d), Value::Integer(0));
    assert_eq!(evaluate_attr(&d.attrs, "ExitBySignal"), Value::Bool(false));
    assert_eq!(read(by("v1-args"), "out.txt"), "[a]\n[b\"c]\n[d]\n");
    assert_eq!(
        read(by("env-v2"), "out.txt"),
        "1|\"2\"|spacey 'quoted' value|a=b\n"
    );
    assert_eq!(read(by("env-v1"), "out.txt"), "1|two words|x=y\n");
    assert_eq!(read(by("stdin"), "out.txt"), "hello stdin\ndone\n");
    assert_eq!(read(by("input-dirs"), "out.txt"), "A\nB\nC\n");
    assert_eq!(read(by("absolute-input"), "out.txt"), "absolute input\n");

    let d = by("remaps");
    assert_eq!(read(d, "results/a.txt"), "a\n");
    assert_eq!(fs::read_to_string(abs.join("b.txt")).unwrap(), "b\n");
    assert!(!d.iwd.join("a.out").exists() && !d.iwd.join("b.out").exists());

    let d = by("default-outputs");
    assert_eq!(read(d, "new.txt"), "new\n");
    assert_eq!(read(d, "mod.txt"), "orig\nchanged\n");
    assert_eq!(read(d, "keep.txt"), "keep\n");
    assert!(
        !d.iwd.join("newdir").exists(),
        "subdirectories are not returned by default"
    );

    let d = by("explicit-dir");
    assert_eq!(read(d, "outdir/x/y.txt"), "y\n");
    assert!(!d.iwd.join("other.txt").exists());

    let d = by("exit-3");
    assert_eq!(exit_code(d), Value::Integer(3));
    assert_eq!(read(d, "out.txt"), "before\n");

    let d = by("signal");
    assert_eq!(evaluate_attr(&d.attrs, "ExitBySignal"), Value::Bool(true));
    assert_eq!(evaluate_attr(&d.attrs, "ExitSignal"), Value::Integer(11));

    let d = by("missing-input");
    let run = d
        .translate_failure
        .as_ref()
        .expect("translate must refuse a missing input");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("nope.txt") && run.stderr.contains("cannot be read"),
        "{}",
        run.stderr
    );

    let d = by("too-big");
    assert_eq!(exit_code(d), Value::Integer(125), "{:?}", d.attrs);
    let why = text(&d.attrs, "VMCapsuleError");
    assert!(
        why.contains("did not fit on the data disk") && why.contains("request_disk"),
        "{why}"
    );
    assert_eq!(
        evaluate_attr(&d.attrs, "VMCapsuleJobExitCode"),
        Value::Integer(0)
    );
    assert!(
        d.scratch.as_ref().unwrap().exists(),
        "scratch is kept when something failed"
    );

    // Scratch dirs of successful jobs are gone after cleanup.
    assert!(!by("exit-3").scratch.as_ref().unwrap().exists());
    // The hooks logged to the configured files, one per job owner.
    let log = fs::read_to_string(
        pool.root
            .path()
            .join(format!("translate.log.{}", crate::router::current_user())),
    )
    .unwrap();
    assert!(log.contains("translating job"), "{log}");
}

#[test]
fn kvm_raw_data_disk() {
    let pool = Pool::new(&kvm_template(ImageFormat::Raw, ImageFormat::Raw));
    let abs = pool.root.path().join("abs");
    let cases: Vec<Case> = suite(&abs)
        .into_iter()
        .filter(|c| ["v2-arguments", "exit-3"].contains(&c.name))
        .collect();
    let done = run_cases(&pool, &cases, false);
    assert_eq!(
        read(&done[0], "out.txt"),
        "[one]\n[\"two\"]\n[spacey 'quoted' argument]\n[]\n"
    );
    assert_eq!(exit_code(&done[1]), Value::Integer(3));
}

#[test]
fn vmware_flavour_with_and_without_a_delta() {
    for delta in [false, true] {
        let pool = Pool::new(&vmware_template);
        let abs = pool.root.path().join("abs");
        let cases: Vec<Case> = suite(&abs)
            .into_iter()
            .filter(|c| ["remaps", "exit-3"].contains(&c.name))
            .collect();
        let done = run_cases(&pool, &cases, delta);
        assert_eq!(read(&done[0], "results/a.txt"), "a\n", "delta={delta}");
        assert_eq!(exit_code(&done[1]), Value::Integer(3), "delta={delta}");
    }
}

#[test]
fn routed_ad_is_a_complete_vm_job() {
    let pool = Pool::new(&kvm_template(ImageFormat::Qcow2, ImageFormat::Qcow2));
    let iwd = pool.root.path().join("u");
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let submit = format!(
        "executable = {}/job.sh\ninitialdir = {}\nrequest_memory = 1024\nrequest_cpus = 2\n+WantJobRouter = true\n+AccountingGroup = \"group_physics.alice\"\nqueue\n",
        iwd.display(),
        iwd.display()
    );
    let ads = job_ads(&[("j".into(), submit, 7)]);
    let routed = pool.translate(&ads[0]).unwrap();
    let int = |n: &str| evaluate_attr(&routed, n);
    assert_eq!(int("JobUniverse"), Value::Integer(13));
    assert_eq!(text(&routed, "JobVMType"), "kvm");
    assert_eq!(int("JobVMMemory"), Value::Integer(1088));
    assert_eq!(int("JobVM_VCPUS"), Value::Integer(2));
    assert_eq!(text(&routed, "ShouldTransferFiles"), "YES");
    assert_eq!(text(&routed, "WhenToTransferOutput"), "ON_EXIT");
    assert_eq!(int("TransferExecutable"), Value::Bool(false));
    assert_eq!(text(&routed, "AccountingGroup"), "group_physics.alice");
    assert_eq!(text(&routed, "Owner"), crate::router::current_user());
    assert!(
        !routed.contains("WantJobRouter"),
        "the routed job must not be routed again"
    );
    let disks = text(&routed, "VMPARAM_vm_Disk");
    assert_eq!(disks, "os.overlay.qcow2:vda:w:qcow2,data.qcow2:vdb:w:qcow2");
    let transfer = text(&routed, "TransferInput");
    assert_eq!(transfer, "os.qcow2,os.overlay.qcow2,data.qcow2");
    // The OS base is linked, not copied, and the overlay reads through it.
    let scratch = PathBuf::from(text(&routed, "Iwd"));
    use std::os::unix::fs::MetadataExt;
    let base = fs::metadata(scratch.join("os.qcow2")).unwrap();
    let template =
        fs::metadata(pool.root.path().join("template/condor_vm_capsule/os.qcow2")).unwrap();
    assert_eq!(base.ino(), template.ino());
    let overlay = fs::metadata(scratch.join("os.overlay.qcow2")).unwrap();
    assert_ne!(overlay.ino(), template.ino());
    run_ok(
        Command::new("qemu-img")
            .arg("check")
            .arg(scratch.join("os.overlay.qcow2")),
    );
    // Requirements as condor_submit writes them for VM jobs.
    let req =
        classad::print::expr_to_string(routed.get("Requirements").unwrap(), classad::Syntax::Old);
    assert!(
        req.contains("TARGET.HasVM =?= true") && req.contains("TARGET.VM_Type == MY.JobVMType"),
        "{req}"
    );
}
