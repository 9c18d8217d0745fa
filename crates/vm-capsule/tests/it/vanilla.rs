//! The vanilla flavour end to end: translate with a `TargetUniverse = 5` route ->
//! a stand-in execute node (see `router::vanilla_execute_node`) running the launcher, which
//! boots the capsule under QEMU (TCG) -> finalize. Each job's files and exit attributes must
//! equal what running the job natively gives and what the VM-universe flavour gives (run here
//! in host mode: capsule-init on the data disk, no boot).

use std::fs;
use std::path::{Path, PathBuf};

use classad::eval::evaluate_attr;
use classad::{ClassAd, Expr, Value};

use crate::cmd::assert_ok;
use crate::execute_node::{run_capsule, vanilla_execute_node, JobEnd};
use crate::router::{job_ads, print_ad, Pool};

pub fn template(cmdline: &'static str) -> impl Fn(&Path) {
    move |dir: &Path| crate::execute_node::test_guest_template(dir, cmdline)
}

/// A test job: its script, the submit lines after `executable`, and its input files.
pub struct Job {
    pub name: &'static str,
    pub script: &'static str,
    pub submit: &'static str,
    pub files: &'static [(&'static str, &'static str)],
}

pub const JOBS: &[Job] = &[
    Job {
        name: "args-env-exit7",
        script: "for a in \"$@\"; do printf '[%s]\\n' \"$a\"; done; echo \"G=$G\"; echo oops >&2; exit 7",
        submit: "arguments = \"one 'two words' '' x\"\nenvironment = \"G='spacey value' H=1\"\noutput = out.txt\nerror = err.txt",
        files: &[],
    },
    Job {
        name: "input-dir",
        script: "cat d/a.txt d/sub/b.txt > joined.txt",
        submit: "transfer_input_files = d\ntransfer_output_files = joined.txt",
        files: &[("d/a.txt", "A\n"), ("d/sub/b.txt", "B\n")],
    },
    Job {
        name: "remapped",
        script: "echo r1 > r1.out; echo r2 > r2.out",
        submit: "transfer_output_files = r1.out, r2.out\ntransfer_output_remaps = \"r1.out = res/one.txt; r2.out = two.txt\"",
        files: &[],
    },
    Job {
        name: "signal",
        script: "kill -TERM $$",
        submit: "",
        files: &[],
    },
    Job {
        name: "default-rule",
        script: "echo made > made.txt; echo more >> in.txt; exit 0",
        submit: "transfer_input_files = in.txt, keep.txt\noutput = out.txt",
        files: &[("in.txt", "in\n"), ("keep.txt", "keep\n")],
    },
];

/// Files under `dir` with contents, job.sh excluded.
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = crate::execute_node::files_under(dir);
    files.retain(|(rel, _)| rel != "job.sh");
    files
}

/// Every job set up in every flavour's directory under `root`, as `(flavour-name, submit
/// file, cluster)` for [`job_ads`], job by job, one cluster per job from `first_cluster` on.
pub fn submit_files(
    root: &Path,
    jobs: &[Job],
    flavours: &[&str],
    first_cluster: i64,
) -> Vec<(String, String, i64)> {
    let mut submits = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        for flavour in flavours {
            let iwd = setup_iwd(root, flavour, job);
            submits.push((
                format!("{flavour}-{}", job.name),
                format!(
                    "executable = {0}/job.sh\ninitialdir = {0}\n{1}\nqueue\n",
                    iwd.display(),
                    job.submit
                ),
                first_cluster + i64::try_from(i).unwrap(),
            ));
        }
    }
    submits
}

/// The job's directory `root/flavour/name`: its script and input files.
pub fn setup_iwd(root: &Path, flavour: &str, job: &Job) -> PathBuf {
    let iwd = root.join(flavour).join(job.name);
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), format!("#!/bin/sh\n{}\n", job.script)).unwrap();
    for (p, c) in job.files {
        let path = iwd.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, c).unwrap();
    }
    iwd
}

/// How the job ended, by the exit attributes of a finalize ad.
pub fn exit_of(attrs: &ClassAd) -> JobEnd {
    if evaluate_attr(attrs, "ExitBySignal") == Value::Bool(true) {
        JobEnd::Signaled(
            i32::try_from(evaluate_attr(attrs, "ExitSignal").as_integer().unwrap()).unwrap(),
        )
    } else {
        JobEnd::Exited(
            i32::try_from(evaluate_attr(attrs, "ExitCode").as_integer().unwrap()).unwrap(),
        )
    }
}

/// Run the job natively (no VM, no hooks): the reference.
pub fn native(iwd: &Path, ad: &ClassAd) -> JobEnd {
    let root = iwd
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("native-sandbox");
    // What a plain vanilla job sees: its inputs in a sandbox, run there, outputs back.
    let mut routed = ad.clone();
    routed.insert(
        "Cmd",
        Expr::string(iwd.join("job.sh").display().to_string()),
    );
    vanilla_execute_node(
        &routed,
        &root.join(iwd.file_name().unwrap()),
        &[("PATH".into(), "/usr/bin:/bin".into())],
    )
}

#[test]
fn vanilla_flavour_matches_native_and_vm_universe() {
    let pool = Pool::new(&template("console=ttyS0 quiet panic=-1"));
    let root = pool.root.path().join("users");
    let ads = job_ads(&submit_files(
        &root,
        JOBS,
        &["native", "vm", "vanilla"],
        200,
    ));
    for (k, job) in JOBS.iter().enumerate() {
        let [native_ad, vm_ad, vanilla_ad] = [&ads[3 * k], &ads[3 * k + 1], &ads[3 * k + 2]];

        // 1. Natively.
        let native_iwd = root.join("native").join(job.name);
        let native_end = native(&native_iwd, native_ad);

        // 2. VM-universe flavour, host mode.
        let routed = pool.translate(vm_ad).unwrap();
        let scratch = PathBuf::from(match evaluate_attr(&routed, "Iwd") {
            Value::String(s) => s,
            v => panic!("{v:?}"),
        });
        let disk = scratch.join("data.qcow2");
        assert_ok(
            run_capsule(&disk, &pool.root.path().join(format!("exec-{}", job.name))),
            format_args!("{}: capsule-init", job.name),
        );
        let (_, vm_attrs) = pool.finalize(vm_ad, &routed);
        pool.cleanup(&routed);

        // 3. Vanilla flavour: the launcher boots the capsule on the stand-in execute node.
        let stdin = format!(
            "[ Name = \"VMCapsuleVanilla\"; TargetUniverse = 5 ]\n------\n{}",
            print_ad(vanilla_ad)
        );
        let run = pool.run_hook("translate", &stdin);
        assert_eq!(run.code, 0, "{}", run.stderr);
        crate::router::assert_lines_parse_in_htcondor(&run.stdout);
        let routed = classad::parse_old_ad(&run.stdout).unwrap();
        assert_eq!(evaluate_attr(&routed, "JobUniverse"), Value::Integer(5));
        // The launcher that travels with the job is static (it must start on any
        // execute node): the shipped one
        // when a package is under test.
        let launcher = match evaluate_attr(&routed, "Cmd") {
            Value::String(s) => PathBuf::from(s),
            v => panic!("{v:?}"),
        };
        assert_eq!(
            vm_capsule_core::agent::linkage(&launcher).unwrap(),
            vm_capsule_core::agent::Linkage::Static,
            "{}",
            launcher.display()
        );
        if let Some(root) = crate::router::installed_root() {
            assert_eq!(
                launcher,
                crate::router::installed_libexec(&root).join("vm-capsule")
            );
        }
        let sandbox = pool.root.path().join("vanilla-sandbox").join(job.name);
        let env = vec![
            ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
            ("TMPDIR".to_owned(), pool.root.path().display().to_string()),
        ];
        let vanilla_end = vanilla_execute_node(&routed, &sandbox, &env);
        // The schedd applies what the launcher set through Chirp to the routed job; the
        // router mirrors its exit into the original, then runs finalize (the original, an
        // empty line, `------`, the routed ad).
        let mut routed_done = routed.clone();
        vanilla_end.set_in(&mut routed_done);
        let chirp = fs::read_to_string(
            sandbox
                .parent()
                .unwrap()
                .join(format!("{}.chirp", job.name)),
        )
        .unwrap();
        let published = classad::parse_old_ad(&chirp).unwrap();
        routed_done.update(&published);
        let mut original = vanilla_ad.clone();
        original.update(&routed_done);
        let stdin = format!(
            "{}\n------\n{}",
            print_ad(&original),
            print_ad(&routed_done)
        );
        let fin = pool.run_hook("finalize", &stdin);
        assert_eq!(fin.code, 0);
        // Only the job's own usage comes back: HTCondor placed the outputs and
        // the router mirrored the exit.
        let usage = classad::parse_old_ad(&fin.stdout).unwrap();
        assert_eq!(usage, published, "{}: {}", job.name, fin.stdout);
        assert_eq!(usage.iter().count(), 5, "{}", fin.stdout);
        pool.cleanup(&routed);

        assert_eq!(
            vanilla_end, native_end,
            "{}: exit differs from native",
            job.name
        );
        assert_eq!(
            exit_of(&vm_attrs),
            native_end,
            "{}: VM-universe exit differs from native",
            job.name
        );
        let native_files = tree(&native_iwd);
        assert_eq!(
            tree(&root.join("vanilla").join(job.name)),
            native_files,
            "{}: vanilla files",
            job.name
        );
        assert_eq!(
            tree(&root.join("vm").join(job.name)),
            native_files,
            "{}: VM-universe files",
            job.name
        );
        // Nothing of the capsule leaks into the sandbox's outputs.
        assert!(!root
            .join("vanilla")
            .join(job.name)
            .join("data.qcow2")
            .exists());
    }
}

/// A guest that never powers off: the launcher stops at its time limit with a clear message,
/// exits 125, and nothing is written outside its sandbox.
#[test]
fn vanilla_launcher_hung_guest() {
    let mut pool = Pool::new(&template(
        "console=ttyS0 quiet panic=-1 rdinit=/bin/busybox -- sleep 3600",
    ));
    pool.env
        .push(("_CONDOR_VM_CAPSULE_WALL_TIME_LIMIT".into(), "1".into()));
    pool.env
        .push(("_CONDOR_VM_CAPSULE_BOOT_TIMEOUT".into(), "14".into()));
    let iwd = pool.root.path().join("u");
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let submit = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\noutput = out.txt\nqueue\n",
        iwd.display()
    );
    let ad = job_ads(&[("hang".into(), submit, 3)]).remove(0);
    let routed = pool.translate_vanilla(&ad);
    let sandbox = pool.root.path().join("sandbox");
    let env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
    let started = std::time::Instant::now();
    let end = vanilla_execute_node(&routed, &sandbox, &env);
    assert!(started.elapsed().as_secs() < 60);
    assert_eq!(end, JobEnd::Exited(125));
    let err = fs::read_to_string(sandbox.join("_condor_stderr")).unwrap();
    assert!(err.contains("did not power off within 15 s"), "{err}");
    // Only out.txt (the stream) came back; the user's dir holds nothing else new.
    let mut names: Vec<_> = fs::read_dir(&iwd)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["job.sh", "out.txt"]);
}
