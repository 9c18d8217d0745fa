//! Whole-VM checkpoints on the submit side: the real translate hook, run as the JobRouter runs
//! it, on job ads made by HTCondor's own `condor_submit` code, makes the vanilla routed job a
//! self-checkpointing one, tells the launcher in the capsule ad, and ties a checkpointed job to
//! the QEMU that wrote its checkpoint (checked with HTCondor's ClassAd library). No VM boots.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use classad::eval::{evaluate_attr, string_attr};
use classad::{ClassAd, Expr, Value};
use serde_json::json;

use crate::router::{
    assert_lines_parse_in_htcondor, job_ads, output_with_stdin, print_ad, HookRun, Pool,
};
use crate::vanilla::template;

/// A pool with a test template, and a job script for the submit descriptions.
fn pool(extra_env: &[(&str, &str)]) -> (Pool, PathBuf) {
    let mut pool = Pool::new(&template("console=ttyS0 quiet panic=-1"));
    pool.env.extend(
        extra_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let iwd = pool.root.path().join("t");
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    (pool, iwd)
}

/// The job ad condor_submit makes of `job.sh` with `extra` submit lines.
fn job_ad(iwd: &std::path::Path, name: &str, extra: &str) -> ClassAd {
    let submit = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\n{extra}queue\n",
        iwd.display()
    );
    job_ads(&[(name.into(), submit, 21)]).remove(0)
}

/// Translate `job` by the route of `universe` (5 or 13), as the JobRouter runs the hook.
fn translate(pool: &Pool, job: &ClassAd, universe: i64) -> HookRun {
    pool.run_hook(
        "translate",
        &format!(
            "[ Name = \"V\"; TargetUniverse = {universe} ]\n------\n{}",
            print_ad(job)
        ),
    )
}

/// The vanilla routed ad (its lines checked with HTCondor's parser) and the capsule ad the
/// launcher reads.
fn routed_and_capsule(pool: &Pool, job: &ClassAd) -> (ClassAd, ClassAd) {
    let run = translate(pool, job, 5);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_lines_parse_in_htcondor(&run.stdout);
    let routed = classad::parse_old_ad(&run.stdout).unwrap();
    let scratch = string_attr(&routed, "VMCapsuleScratch").unwrap();
    let capsule = fs::read_to_string(PathBuf::from(scratch).join("vm-capsule.ad")).unwrap();
    (routed, classad::parse_old_ad(&capsule).unwrap())
}

/// Whether the job ad's `Requirements` hold against each machine ad, in HTCondor's library.
fn matches_in_htcondor(job: &ClassAd, machines: &[&str]) -> Vec<bool> {
    const SCRIPT: &str = r#"
import json, os, sys
os.environ.setdefault("CONDOR_CONFIG", "/dev/null")
import htcondor, classad
req = json.load(sys.stdin)
job = classad.parseOne(req["job"], classad.Parser.Old)
out = []
for text in req["machines"]:
    machine = classad.parseOne(text, classad.Parser.Old)
    machine["Requirements"] = True
    # a.matches(b): b's Requirements with b as MY and a as TARGET.
    out.append(bool(machine.matches(job)))
json.dump(out, sys.stdout)
"#;
    let input = json!({"job": print_ad(job), "machines": machines});
    let out = output_with_stdin(
        Command::new("python3")
            .args(["-c", SCRIPT])
            .env("CONDOR_CONFIG", "/dev/null"),
        input.to_string().as_bytes(),
        "python3 with HTCondor's library is needed (pip install 'htcondor==24.0.*')",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn int(ad: &ClassAd, name: &str) -> Value {
    evaluate_attr(ad, name)
}

/// A job that asks, with its own `checkpoint_exit_code` and `transfer_checkpoint_files`:
/// its code stays, our file joins its list, the launcher is told in the capsule ad; a plain
/// job gets code 85 and only our file; a job that does not ask gets neither.
#[test]
fn translate_makes_a_job_that_asks_self_checkpointing_with_the_vm_file() {
    let (pool, iwd) = pool(&[]);
    let own = job_ad(
        &iwd,
        "own",
        "+VMCapsuleCheckpoint = true\ncheckpoint_exit_code = 77\ntransfer_checkpoint_files = ckpt.dat\n",
    );
    // HTCondor's submit code made it self-checkpointing.
    assert_eq!(evaluate_attr(&own, "WantFTOnCheckpoint"), Value::Bool(true));
    let (routed, capsule) = routed_and_capsule(&pool, &own);
    assert_eq!(
        evaluate_attr(&routed, "VMCapsuleCheckpoint"),
        Value::Bool(true)
    );
    assert_eq!(
        evaluate_attr(&capsule, "VMCapsuleCheckpoint"),
        Value::Bool(true)
    );
    assert_eq!(
        evaluate_attr(&routed, "WantFTOnCheckpoint"),
        Value::Bool(true)
    );
    assert_eq!(
        int(&routed, "SuccessCheckpointExitCode"),
        Value::Integer(77)
    );
    // The launcher learns the job's own code; a plain job has none (its exit 85 is its own).
    assert_eq!(
        int(&capsule, "VMCapsuleJobCheckpointExitCode"),
        Value::Integer(77)
    );
    assert_eq!(
        string_attr(&routed, "TransferCheckpoint").as_deref(),
        Some("ckpt.dat,vm-capsule.checkpoint")
    );

    let plain = job_ad(&iwd, "plain", "+VMCapsuleCheckpoint = true\n");
    let (routed, capsule) = routed_and_capsule(&pool, &plain);
    assert_eq!(
        evaluate_attr(&capsule, "VMCapsuleCheckpoint"),
        Value::Bool(true)
    );
    assert_eq!(
        int(&routed, "SuccessCheckpointExitCode"),
        Value::Integer(85)
    );
    assert!(!capsule.contains("VMCapsuleJobCheckpointExitCode"));
    assert_eq!(
        string_attr(&routed, "TransferCheckpoint").as_deref(),
        Some("vm-capsule.checkpoint")
    );

    let quiet = job_ad(&iwd, "quiet", "");
    let (routed, capsule) = routed_and_capsule(&pool, &quiet);
    for ad in [&routed, &capsule] {
        assert!(!ad.contains("VMCapsuleCheckpoint"));
    }
    assert!(!routed.contains("WantFTOnCheckpoint"));
    assert!(!routed.contains("TransferCheckpoint"));
}

/// The route knob checkpoints every vanilla job that does not say no; a job routed to the VM
/// universe that asks is refused with the reason (held), and the knob alone changes nothing
/// there; a value that is not a boolean is refused naming the attribute.
#[test]
fn the_route_knob_the_vm_universe_and_a_bad_value() {
    let (pool, iwd) = pool(&[("_CONDOR_VM_CAPSULE_CHECKPOINT", "true")]);
    let quiet = job_ad(&iwd, "quiet", "");
    let (routed, capsule) = routed_and_capsule(&pool, &quiet);
    assert_eq!(
        evaluate_attr(&routed, "VMCapsuleCheckpoint"),
        Value::Bool(true)
    );
    assert_eq!(
        evaluate_attr(&capsule, "VMCapsuleCheckpoint"),
        Value::Bool(true)
    );
    let no = job_ad(&iwd, "no", "+VMCapsuleCheckpoint = false\n");
    let (routed, capsule) = routed_and_capsule(&pool, &no);
    assert!(!routed.contains("TransferCheckpoint"));
    assert!(!capsule.contains("VMCapsuleCheckpoint"));

    let vm = pool.translate(&quiet).unwrap();
    assert_eq!(evaluate_attr(&vm, "JobVMCheckpoint"), Value::Bool(false));
    assert!(!vm.contains("VMCapsuleCheckpoint"));
    let asks = job_ad(&iwd, "asks", "+VMCapsuleCheckpoint = true\n");
    let refused = pool.translate(&asks).unwrap_err();
    assert_ne!(refused.code, 0);
    for needed in ["+VMCapsuleCheckpoint = true", "VM universe", "vanilla"] {
        assert!(refused.stderr.contains(needed), "{}", refused.stderr);
    }

    let odd = job_ad(&iwd, "odd", "+VMCapsuleCheckpoint = \"yes\"\n");
    let run = translate(&pool, &odd, 5);
    assert_ne!(run.code, 0);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr.contains("VMCapsuleCheckpoint") && run.stderr.contains("not true or false"),
        "{}",
        run.stderr
    );
}

/// Once the launcher has recorded the QEMU that wrote the checkpoint
/// (`VMCapsuleCheckpointQemu`, over Chirp), the routed job matches only nodes whose probe
/// advertises that `VMCapsuleQemuVersion`; before, any node; a job that does not checkpoint
/// is never restricted.
#[test]
fn a_checkpointed_job_matches_only_its_qemu_in_htcondor() {
    let (pool, iwd) = pool(&[]);
    let (fresh, _) = routed_and_capsule(
        &pool,
        &job_ad(&iwd, "asks", "+VMCapsuleCheckpoint = true\n"),
    );
    let mut restarted = fresh.clone();
    restarted.insert("VMCapsuleCheckpointQemu", Expr::string("7.2.19"));
    let (quiet, _) = routed_and_capsule(&pool, &job_ad(&iwd, "quiet", ""));
    let mut quiet_marked = quiet.clone();
    quiet_marked.insert("VMCapsuleCheckpointQemu", Expr::string("7.2.19"));
    let node = |version: &str| {
        format!(
            "HasVMCapsuleQemu = true\nHasSelfCheckpointTransfers = true\nArch = \"X86_64\"\nOpSys = \"LINUX\"\nMemory = 1000000\nDisk = 1000000000\nCpus = 64\nHasFileTransfer = true\n{version}"
        )
    };
    let machines = [
        node("VMCapsuleQemuVersion = \"7.2.19\"\n"),
        node("VMCapsuleQemuVersion = \"8.2.2\"\n"),
        node(""),
    ];
    let machines: Vec<&str> = machines.iter().map(String::as_str).collect();
    let requirements = |ad: &ClassAd| {
        classad::print::expr_to_string(ad.get("Requirements").unwrap(), classad::Syntax::New)
    };
    assert_eq!(
        matches_in_htcondor(&fresh, &machines),
        [true, true, true],
        "{}",
        requirements(&fresh)
    );
    assert_eq!(
        matches_in_htcondor(&restarted, &machines),
        [true, false, false],
        "{}",
        requirements(&restarted)
    );
    assert_eq!(
        matches_in_htcondor(&quiet_marked, &machines),
        [true, true, true],
        "{}",
        requirements(&quiet_marked)
    );
}

/// An input the job brings as `vm-capsule.checkpoint` would pose as the VM's checkpoint to a
/// launcher that restores: translate refuses it (the job is held), whether or not the job asks
/// for checkpoints.
#[test]
fn an_input_cannot_pose_as_the_vm_checkpoint() {
    let (pool, iwd) = pool(&[]);
    fs::write(iwd.join("vm-capsule.checkpoint"), "not a VM\n").unwrap();
    for (name, extra) in [("plain", ""), ("asks", "+VMCapsuleCheckpoint = true\n")] {
        let job = job_ad(
            &iwd,
            name,
            &format!("transfer_input_files = vm-capsule.checkpoint\n{extra}"),
        );
        let run = translate(&pool, &job, 5);
        assert_ne!(run.code, 0, "{name}: {}", run.stdout);
        assert!(run.stdout.is_empty());
        assert!(
            run.stderr.contains("vm-capsule.checkpoint")
                && run.stderr.contains("a name the VM capsule uses there"),
            "{name}: {}",
            run.stderr
        );
    }
}

/// The node policy runs the job as the native vanilla job it is, which HTCondor does not treat
/// as self-checkpointing: a launcher exiting with a checkpoint code would end the job with it.
/// So `+VMCapsuleCheckpoint = true` asks nothing of the node's launcher: the capsule ad that
/// `node-run` stages says no checkpoint (a stand-in QEMU keeps a copy and fails; no boot).
#[test]
fn the_node_policy_never_asks_its_launcher_for_checkpoints() {
    use std::os::unix::fs::PermissionsExt;
    let (pool, iwd) = pool(&[]);
    let sandbox = pool.root.path().join("sandbox");
    fs::create_dir(&sandbox).unwrap();
    fs::copy(iwd.join("job.sh"), sandbox.join("job.sh")).unwrap();
    let mut job = job_ad(&iwd, "asks", "+VMCapsuleCheckpoint = true\n");
    job.insert("Iwd", Expr::string(sandbox.display().to_string()));
    fs::write(sandbox.join(".job.ad"), print_ad(&job)).unwrap();
    let seen = pool.root.path().join("seen.ad");
    let qemu = pool.root.path().join("qemu-stand-in");
    fs::write(
        &qemu,
        format!(
            "#!/bin/sh\n# A STAND-IN QEMU: keeps the capsule ad it was started for, boots nothing.\ncp {}/vm-capsule.ad {} 2>/dev/null\nexit 1\n",
            sandbox.display(),
            seen.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)).unwrap();
    // As the node policy's hook passes them: the node's knobs as arguments.
    let mut knobs: Vec<String> = pool
        .env
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("_CONDOR_").map(|k| format!("{k}={v}")))
        .collect();
    knobs.push(format!("VM_CAPSULE_QEMU={}", qemu.display()));
    knobs.push("VM_CAPSULE_CHECKPOINT=true".to_owned());
    let out = Command::new(crate::router::bin("vm-capsule"))
        .arg("node-run")
        .args(&knobs)
        .current_dir(&sandbox)
        .env_clear()
        .env("_CONDOR_JOB_AD", sandbox.join(".job.ad"))
        .env("_CONDOR_SCRATCH_DIR", &sandbox)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let staged = fs::read_to_string(&seen)
        .unwrap_or_else(|e| panic!("the stand-in QEMU was not started ({e}): {stderr}"));
    let capsule = classad::parse_old_ad(&staged).unwrap();
    assert!(capsule.contains("VMCapsuleDataDiskLabel"), "{staged}");
    assert!(!capsule.contains("VMCapsuleCheckpoint"), "{staged}");
}
