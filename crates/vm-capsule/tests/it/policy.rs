//! The node policy (`VM_CAPSULE_JOB`, no router): a STAND-IN starter (no starter can run
//! here) transfers the job's inputs into a sandbox, writes `.job.ad` and `.machine.ad` there,
//! runs the prepare-job hook as `HookClientMgr::spawn` does (argv[0] the configured path, no
//! arguments, the sandbox as cwd, the job ad on stdin, the hook's environment as observed on a
//! 24.0 pool), merges its stdout into the job ad and runs what that ad says, as the job's
//! environment has it (no PATH). Jobs the policy picks boot the test guest under TCG: four
//! boots in all.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use classad::eval::{evaluate_attr, string_attr};
use classad::{ClassAd, Expr, Value};

use crate::execute_node::{execute_node_with, JobEnd};
use crate::router::{job_ads, output_with_stdin, print_ad, Pool};
use crate::vanilla::{native, setup_iwd, submit_files, template, tree, Job, JOBS};

/// The slot ad the startd gives the starter, with the node's expression in `VMCapsuleJob`
/// (`STARTD_ATTRS`).
fn machine_ad(expr: Option<&str>) -> String {
    let mut ad =
        "Name = \"slot1_1@node\"\nMemory = 2048\nCpus = 1\nMachineMaxVacateTime = 10 * 60\n"
            .to_owned();
    if let Some(e) = expr {
        ad.push_str(&format!("VMCapsuleJob = {e}\n"));
    }
    ad
}

/// What one run of the hook printed.
struct HookRun {
    stdout: String,
    stderr: String,
    code: Option<i32>,
}

/// The STAND-IN starter's prepare-job step: `.job.ad` and `.machine.ad` in the sandbox, then
/// the hook, as the starter runs it.
fn run_hook(
    pool: &Pool,
    sandbox: &Path,
    job: &ClassAd,
    slot: &str,
    knobs: &[(&str, &str)],
) -> HookRun {
    run_hook_as(pool, sandbox, job, slot, knobs, None)
}

/// [`run_hook`] as the job's owner `(uid, gid)`, as the starter runs it (`PRIV_USER_FINAL`).
fn run_hook_as(
    pool: &Pool,
    sandbox: &Path,
    job: &ClassAd,
    slot: &str,
    knobs: &[(&str, &str)],
    owner: Option<(u32, u32)>,
) -> HookRun {
    let mut job = job.clone();
    // The starter's copy names the sandbox as the job's Iwd.
    job.insert("Iwd", Expr::string(sandbox.display().to_string()));
    fs::write(sandbox.join(".job.ad"), print_ad(&job)).unwrap();
    fs::write(sandbox.join(".machine.ad"), slot).unwrap();
    let hook = pool.hooks_dir.join("vm-capsule-prepare-job");
    let mut cmd = Command::new(&hook);
    cmd.arg0(&hook)
        .current_dir(sandbox)
        .env_clear()
        // The hook's environment on the 24.0 pool: HOME, PATH, CONDOR_CONFIG and the
        // starter's _CONDOR_* (its daemon session key, CONDOR_PRIVATE_INHERIT, stands in
        // here as a secret the hook must never print).
        .env("HOME", "/root")
        .env("PATH", "/usr/bin:/bin")
        .env("CONDOR_PRIVATE_INHERIT", "SessionKey=not-for-the-job")
        .env("_CONDOR_JOB_AD", sandbox.join(".job.ad"))
        .env("_CONDOR_MACHINE_AD", sandbox.join(".machine.ad"))
        .env("_CONDOR_SCRATCH_DIR", sandbox);
    for (k, v) in &pool.env {
        if k == "CONDOR_CONFIG" || k.starts_with("_CONDOR_VM_CAPSULE_") {
            cmd.env(k, v);
        }
    }
    for (k, v) in knobs {
        cmd.env(format!("_CONDOR_{k}"), v);
    }
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    let out = output_with_stdin(&mut cmd, print_ad(&job).as_bytes(), "the hook link");
    let run = HookRun {
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
        code: out.status.code(),
    };
    assert!(
        !run.stdout.contains("not-for-the-job") && !run.stderr.contains("not-for-the-job"),
        "the hook printed its environment"
    );
    run
}

/// `HookPrepareJobClient::hookExited`: the stdout ad merged into the job ad.
fn merged(job: &ClassAd, stdout: &str) -> ClassAd {
    let mut job = job.clone();
    if !stdout.is_empty() {
        crate::router::assert_lines_parse_in_htcondor(stdout);
        job.update(&classad::parse_old_ad(stdout).unwrap());
    }
    job
}

/// The job's environment as the starter sets it (no PATH, no HOME): the ads and scratch.
fn job_env(sandbox: &Path) -> Vec<(String, String)> {
    vec![
        (
            "_CONDOR_JOB_AD".into(),
            sandbox.join(".job.ad").display().to_string(),
        ),
        (
            "_CONDOR_MACHINE_AD".into(),
            sandbox.join(".machine.ad").display().to_string(),
        ),
        ("_CONDOR_SCRATCH_DIR".into(), sandbox.display().to_string()),
    ]
}

/// Run `ad` on the stand-in node with the policy `expr`; the hook's stdout and the job's end.
fn run_with_policy(pool: &Pool, ad: &ClassAd, sandbox: &Path, expr: &str) -> (String, JobEnd) {
    let printed = std::cell::RefCell::new(String::new());
    let slot = machine_ad(Some(expr));
    let hook = |dir: &Path, job: &ClassAd| {
        let run = run_hook(pool, dir, job, &slot, &[]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        printed.borrow_mut().push_str(&run.stdout);
        merged(job, &run.stdout)
    };
    let end = execute_node_with(ad, sandbox, &job_env(sandbox), Some(&hook));
    (printed.into_inner(), end)
}

/// The suite's job set: natively, with the policy false (the hook prints nothing, the job runs
/// as it is) and with the policy true (the hook rewrites the job to the node's launcher, which
/// boots it): the same exit code or signal, the same output files and streams every time.
#[test]
fn policy_true_and_false_match_native() {
    let pool = Pool::new(&template("console=ttyS0 quiet panic=-1"));
    let root = pool.root.path().join("users");
    // Output remaps are HTCondor's own file transfer's, untouched by the policy: left out to
    // keep the boots to four.
    let jobs: Vec<&Job> = JOBS.iter().filter(|j| j.name != "remapped").collect();
    let flavours = ["native", "false", "true"];
    let owned: Vec<Job> = jobs
        .iter()
        .map(|j| Job {
            name: j.name,
            script: j.script,
            submit: j.submit,
            files: j.files,
        })
        .collect();
    let ads = job_ads(&submit_files(&root, &owned, &flavours, 2500));
    for (k, job) in owned.iter().enumerate() {
        let [native_ad, false_ad, true_ad] = [&ads[3 * k], &ads[3 * k + 1], &ads[3 * k + 2]];
        let native_end = native(&root.join("native").join(job.name), native_ad);
        let sandboxes = pool.root.path().join("sandboxes");

        let (said, false_end) = run_with_policy(
            &pool,
            false_ad,
            &sandboxes.join(format!("false-{}", job.name)),
            "TARGET.Owner =?= \"nobody-here\"",
        );
        assert_eq!(
            said, "",
            "{}: the policy is false, the hook prints nothing",
            job.name
        );

        let sandbox = sandboxes.join(format!("true-{}", job.name));
        let (said, true_end) = run_with_policy(&pool, true_ad, &sandbox, "TARGET.JobUniverse == 5");
        let rewritten = classad::parse_old_ad(&said).unwrap();
        assert_eq!(
            evaluate_attr(&rewritten, "TransferExecutable"),
            Value::Bool(false),
            "{said}"
        );
        assert!(
            string_attr(&rewritten, "Arguments")
                .unwrap()
                .starts_with("node-run "),
            "{said}"
        );
        let console = fs::read_to_string(sandbox.join("_condor_stderr")).unwrap_or_default();
        // The job ran in the guest: the launcher published what the guest measured of it,
        // as delayed updates (the job has no WantIOProxy, and the starter set its proxy up
        // before the hook).
        let chirp = fs::read_to_string(sandboxes.join(format!("true-{}.chirp", job.name)))
            .unwrap_or_default();
        let usage = classad::parse_old_ad(&chirp).unwrap();
        assert!(
            matches!(
                evaluate_attr(&usage, "ChirpVMCapsuleJobWallTime"),
                Value::Integer(_) | Value::Real(_)
            ),
            "{}: no usage from the guest: {chirp}",
            job.name
        );
        let native_chirp = fs::read_to_string(sandboxes.join(format!("false-{}.chirp", job.name)))
            .unwrap_or_default();
        assert_eq!(native_chirp, "", "{}", job.name);

        assert_eq!(
            false_end, native_end,
            "{}: policy false vs native",
            job.name
        );
        assert_eq!(
            true_end, native_end,
            "{}: policy true vs native: {console}",
            job.name
        );
        let native_files = tree(&root.join("native").join(job.name));
        assert_eq!(
            tree(&root.join("false").join(job.name)),
            native_files,
            "{}",
            job.name
        );
        assert_eq!(
            tree(&root.join("true").join(job.name)),
            native_files,
            "{}",
            job.name
        );
        // Nothing of the capsule is left in the sandbox for HTCondor to take for an output.
        for staged in [
            "vm-capsule.ad",
            "vm-capsule.json",
            "vm-capsule.job.ad",
            "data.qcow2",
            "vmlinuz",
        ] {
            assert!(
                !sandbox.join(staged).exists(),
                "{}: {staged} left",
                job.name
            );
        }
    }
}

/// A sandbox as the input transfer leaves it, with `job.sh` and the job ad's `.job.ad`.
fn sandbox_for(pool: &Pool, name: &str, job: &Job, cluster: i64) -> (PathBuf, ClassAd) {
    let root = pool.root.path().join("users");
    let iwd = setup_iwd(&root, "unfit", job);
    let submit = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\n{1}\nqueue\n",
        iwd.display(),
        job.submit
    );
    let ad = job_ads(&[(name.into(), submit, cluster)]).remove(0);
    let sandbox = pool.root.path().join("sb").join(name);
    fs::create_dir_all(&sandbox).unwrap();
    fs::copy(iwd.join("job.sh"), sandbox.join("job.sh")).unwrap();
    for (p, _) in job.files {
        let dest = sandbox.join(p);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(iwd.join(p), dest).unwrap();
    }
    (sandbox, ad)
}

const PLAIN: Job = Job {
    name: "plain",
    script: "echo hi",
    submit: "",
    files: &[],
};

/// No `VMCapsuleJob` in the slot ad (the node advertises no policy), or a job of another
/// universe: nothing printed, native.
#[test]
fn no_policy_or_not_a_plain_vanilla_job_runs_natively() {
    let pool = Pool::new(&template("console=ttyS0 quiet panic=-1"));
    let (sandbox, ad) = sandbox_for(&pool, "noslot", &PLAIN, 2601);
    let run = run_hook(&pool, &sandbox, &ad, &machine_ad(None), &[]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (Some(0), ""),
        "{}",
        run.stderr
    );
    let mut other = ad.clone();
    other.insert("JobUniverse", Expr::Literal(classad::Literal::Integer(13)));
    let run = run_hook(&pool, &sandbox, &other, &machine_ad(Some("true")), &[]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (Some(0), ""),
        "{}",
        run.stderr
    );
}

/// The job's owner writes its ad: attributes that look like a routed vm-capsule job's
/// (`+VMCapsuleFlavour`, `+VMCapsuleScratch`) or a container job's (`+SingularityImage`,
/// `+ContainerImage`) must not take a job the policy picks out of the VM. (Before: the hook
/// printed nothing for them and the job ran natively.)
#[test]
fn attributes_the_owner_sets_do_not_take_a_job_out_of_the_vm() {
    let pool = Pool::new(&template("console=ttyS0 quiet panic=-1"));
    let (sandbox, ad) = sandbox_for(&pool, "faker", &PLAIN, 2606);
    let node_launcher = fs::canonicalize(pool.hooks_dir.join("vm-capsule-prepare-job")).unwrap();
    let node_launcher = node_launcher.display().to_string();
    for (attr, value) in [
        ("VMCapsuleFlavour", "vanilla"),
        ("VMCapsuleScratch", "/tmp/x"),
        // vm-capsule itself as the job, which could be told to run the owner's QEMU.
        ("Cmd", node_launcher.as_str()),
        ("SingularityImage", "/cvmfs/x.sif"),
        ("ContainerImage", "x.sif"),
    ] {
        let mut faked = ad.clone();
        faked.insert(attr, Expr::string(value));
        if attr == "Cmd" {
            faked.insert(
                "TransferExecutable",
                Expr::Literal(classad::Literal::Bool(false)),
            );
        }
        let run = run_hook(&pool, &sandbox, &faked, &machine_ad(Some("true")), &[]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert!(!run.stdout.is_empty(), "{attr}: the job would run natively");
        let out = classad::parse_old_ad(&run.stdout).unwrap();
        let in_vm = string_attr(&out, "Arguments").is_some_and(|a| a.starts_with("node-run"));
        let held = evaluate_attr(&out, "HookStatusCode") == Value::Integer(100);
        assert!(in_vm || held, "{attr}: {}", run.stdout);
    }
}

/// A job the policy picks but the VM cannot run: an executable for another architecture, an
/// input under a name the capsule stages, a disk request over the template's largest data
/// disk. Held with the reason (`HookStatusCode` 1-299), or run natively with the reason in its
/// event log (`HookStatusCode = 0` and a message) when `VM_CAPSULE_JOB_UNFIT = native`.
#[test]
fn a_job_the_vm_cannot_run_is_held_or_runs_natively_with_the_reason() {
    let pool = Pool::new(&template("console=ttyS0 quiet panic=-1"));
    let slot = machine_ad(Some("true"));
    let (arm, arm_ad) = sandbox_for(&pool, "arm", &PLAIN, 2602);
    let mut elf = fs::read(std::env::current_exe().unwrap()).unwrap();
    elf.truncate(4096);
    elf[18] = 183; // EM_AARCH64
    fs::write(arm.join("job.sh"), &elf).unwrap();
    let collide = Job {
        name: "collide",
        script: "cat vm-capsule.json",
        submit: "transfer_input_files = vm-capsule.json",
        files: &[("vm-capsule.json", "{}")],
    };
    let (coll, coll_ad) = sandbox_for(&pool, "collide", &collide, 2603);
    let big = Job {
        name: "big",
        script: "true",
        submit: "request_disk = 10GB",
        files: &[],
    };
    let (bigsb, big_ad) = sandbox_for(&pool, "big", &big, 2604);
    let cases = [
        (&arm, &arm_ad, "x86_64"),
        (&coll, &coll_ad, "vm-capsule.json"),
        (&bigsb, &big_ad, "VM_CAPSULE_MAX_DATA_DISK_MB"),
    ];
    for (sandbox, ad, why) in cases {
        let run = run_hook(
            &pool,
            sandbox,
            ad,
            &slot,
            &[("VM_CAPSULE_MAX_DATA_DISK_MB", "1024")],
        );
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let out = classad::parse_old_ad(&run.stdout).unwrap();
        assert_eq!(
            evaluate_attr(&out, "HookStatusCode"),
            Value::Integer(100),
            "{}",
            run.stdout
        );
        let msg = string_attr(&out, "HookStatusMessage").unwrap();
        assert!(msg.contains(why) && msg.contains("VM"), "{msg}");
        assert!(out.get("Cmd").is_none(), "{}", run.stdout);

        let run = run_hook(
            &pool,
            sandbox,
            ad,
            &slot,
            &[
                ("VM_CAPSULE_MAX_DATA_DISK_MB", "1024"),
                ("VM_CAPSULE_JOB_UNFIT", "native"),
            ],
        );
        let out = classad::parse_old_ad(&run.stdout).unwrap();
        assert_eq!(
            evaluate_attr(&out, "HookStatusCode"),
            Value::Integer(0),
            "{}",
            run.stdout
        );
        let msg = string_attr(&out, "HookStatusMessage").unwrap();
        assert!(msg.contains(why) && msg.contains("natively"), "{msg}");
        assert!(out.get("Cmd").is_none(), "{}", run.stdout);
    }
}

/// The hook trusts nothing in the sandbox: a `.machine.ad` that is a FIFO or a link to
/// another file is not read (the job ran nothing yet, but the sandbox is the owner's); the
/// job goes back to idle with the reason, never runs unchecked.
#[test]
fn a_slot_ad_that_is_a_fifo_or_a_link_is_refused() {
    let pool = Pool::new(&template("console=ttyS0 quiet panic=-1"));
    let (sandbox, ad) = sandbox_for(&pool, "fifo", &PLAIN, 2605);
    let hook = pool.hooks_dir.join("vm-capsule-prepare-job");
    for kind in ["fifo", "link"] {
        let slot = sandbox.join(format!("slot.{kind}"));
        match kind {
            "fifo" => rustix::fs::mkfifoat(
                rustix::fs::CWD,
                &slot,
                rustix::fs::Mode::from_raw_mode(0o644),
            )
            .unwrap(),
            _ => std::os::unix::fs::symlink("/etc/passwd", &slot).unwrap(),
        }
        let mut cmd = Command::new(&hook);
        cmd.arg0(&hook)
            .current_dir(&sandbox)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("_CONDOR_MACHINE_AD", &slot);
        let started = std::time::Instant::now();
        // The hook may exit before reading its stdin: the starter ignores a closed pipe.
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let _ =
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), print_ad(&ad).as_bytes());
        let out = child.wait_with_output().unwrap();
        assert!(started.elapsed().as_secs() < 10, "{kind}: the hook blocked");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let status = classad::parse_old_ad(&stdout).unwrap();
        assert_eq!(
            evaluate_attr(&status, "HookStatusCode"),
            Value::Integer(300),
            "{kind}: {stdout}"
        );
    }
}

/// The hook as the starter runs it, as the job's owner (a real unprivileged account) in their
/// 0700 sandbox: it decides, writes nothing there, and leaves the starter's files alone.
#[test]
fn the_hook_runs_as_the_job_s_owner_and_writes_nothing() {
    use std::os::unix::fs::{chown, PermissionsExt};
    let user = nix::unistd::User::from_name("vmcap-alice")
        .unwrap()
        .expect("user vmcap-alice is missing: .ci/run creates it (useradd -M vmcap-alice)");
    let owner = (user.uid.as_raw(), user.gid.as_raw());
    let pool = Pool::new(&template("console=ttyS0 quiet panic=-1"));
    // The template and the programs are readable by every user, as installed.
    fs::set_permissions(pool.root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (sandbox, ad) = sandbox_for(&pool, "owned", &PLAIN, 2607);
    let mut ad = ad;
    ad.insert("Owner", Expr::string("vmcap-alice"));
    fs::set_permissions(
        pool.root.path().join("sb"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // Written by the stand-in starter (root) before the hook, then handed to the owner.
    let job = {
        let mut j = ad.clone();
        j.insert("Iwd", Expr::string(sandbox.display().to_string()));
        j
    };
    fs::write(sandbox.join(".job.ad"), print_ad(&job)).unwrap();
    fs::write(sandbox.join(".machine.ad"), machine_ad(Some("true"))).unwrap();
    for entry in fs::read_dir(&sandbox).unwrap() {
        chown(entry.unwrap().path(), Some(owner.0), Some(owner.1)).unwrap();
    }
    chown(&sandbox, Some(owner.0), Some(owner.1)).unwrap();
    fs::set_permissions(&sandbox, fs::Permissions::from_mode(0o700)).unwrap();
    let before = crate::execute_node::files_under(&sandbox);
    let run = run_hook_as(
        &pool,
        &sandbox,
        &ad,
        &machine_ad(Some("true")),
        &[],
        Some(owner),
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = classad::parse_old_ad(&run.stdout).unwrap();
    assert!(
        string_attr(&out, "Arguments").is_some_and(|a| a.starts_with("node-run ")),
        "{}{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(crate::execute_node::files_under(&sandbox), before);
}
