//! What the original job and its owner see of a routed job, as a real HTCondor 24.0 pool
//! showed it (issue 21): hold reasons, the job's own usage, jobs too big for the data disk,
//! what the routed job asks for, and removal.

use std::fs;
use std::path::Path;

use classad::eval::{evaluate_attr, string_attr};
use classad::{ClassAd, Expr, Value};

use crate::ops::{job, knob_lines, kvm_template, Tarball};
use crate::router::{print_ad, Pool};

/// The pool's knobs read from a tarball install's configuration, as the router's hooks read
/// them; `condor_hold` is the tarball's stand-in, which records its arguments.
fn tarball_pool(template: &dyn Fn(&Path)) -> (Pool, Tarball) {
    let mut pool = Pool::new(template);
    let tarball = Tarball::new(pool.root.path(), &knob_lines(&pool));
    pool.env
        .retain(|(k, _)| !k.starts_with("_CONDOR_") && k != "CONDOR_CONFIG");
    pool.env
        .push(("CONDOR_CONFIG".into(), tarball.config.display().to_string()));
    (pool, tarball)
}

/// Issue 21: a hold reason, the router's log line (the hook's stderr) and the hook log name
/// the job exactly once.
#[test]
fn a_hold_names_the_job_once_issue_21() {
    let (pool, tarball) = tarball_pool(&kvm_template);
    for (universe, cluster) in [(13, 401), (5, 402)] {
        let ad = job(
            pool.root.path(),
            &format!("hold-{universe}"),
            "transfer_input_files = nope.dat",
            cluster,
        );
        let iwd = pool.root.path().join(format!("users/hold-{universe}"));
        let stdin = format!(
            "[ Name = \"R\"; TargetUniverse = {universe} ]\n------\n{}",
            print_ad(&ad)
        );
        let run = pool.run_hook("translate", &stdin);
        assert_ne!(run.code, 0);
        assert_eq!(run.stdout, "");
        let what = format!(
            "input {}/nope.dat (transfer_input_files) cannot be read (No such file or directory (os error 2)); fix the path or create it",
            iwd.display()
        );
        // condor_hold's arguments, exactly: the reason, the subcode, the job.
        let holds = fs::read_to_string(&tarball.holds).unwrap();
        assert_eq!(
            holds.lines().last().unwrap(),
            format!("-reason vm-capsule: job {cluster}.0: {what} -subcode 1 {cluster}.0"),
            "route universe {universe}"
        );
        // The router copies each stderr line into its log.
        assert_eq!(
            run.stderr,
            format!("vm-capsule translate: error: job {cluster}.0: {what}\n"),
            "route universe {universe}"
        );
    }
}

/// The router hands finalize the original ad, an empty line, `------` and the routed ad
/// (observed on a 24.0 pool); the original then takes what finalize prints.
fn finalize_stdin(original: &ClassAd, routed: &ClassAd) -> String {
    format!("{}\n------\n{}", print_ad(original), print_ad(routed))
}

/// A vanilla-flavour job routed and "run": the routed ad with what the launcher published
/// through Chirp (`published`, as `set_job_attr` values) and the mirrored exit.
fn routed_vanilla_done(pool: &Pool, ad: &ClassAd, published: &[(&str, &str)]) -> ClassAd {
    let run = pool.run_hook(
        "translate",
        &format!(
            "[ Name = \"V\"; TargetUniverse = 5 ]\n------\n{}",
            print_ad(ad)
        ),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut routed = classad::parse_old_ad(&run.stdout).unwrap();
    for (name, value) in published {
        routed.insert(
            *name,
            classad::parse_expr(value, classad::Syntax::Old).unwrap(),
        );
    }
    routed.insert("JobStatus", Expr::integer(4));
    routed.insert("ExitCode", Expr::integer(3));
    routed.insert("ExitBySignal", Expr::boolean(false));
    routed
}

/// Issue 21.2: the job's own usage, published on the routed vanilla job, reaches the
/// original through finalize, under the names docs/ADMIN.md gives.
#[test]
fn finalize_copies_the_guest_usage_to_the_original_issue_21_2() {
    let pool = Pool::new(&crate::vanilla::template("console=ttyS0"));
    let ad = job(pool.root.path(), "usage", "", 410);
    let published = [
        ("VMCapsuleJobUserCpu", "0.012"),
        ("VMCapsuleJobSysCpu", "0.034"),
        ("VMCapsuleJobWallTime", "1.250"),
        ("VMCapsulePeakRssKiB", "1664"),
        ("VMCapsuleResult", "\"exited with code 3\""),
    ];
    let routed = routed_vanilla_done(&pool, &ad, &published);
    let mut original = ad.clone();
    original.update(&routed);
    let run = pool.run_hook("finalize", &finalize_stdin(&original, &routed));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "");
    crate::router::assert_lines_parse_in_htcondor(&run.stdout);
    let attrs = classad::parse_old_ad(&run.stdout).unwrap();
    let mut names: Vec<&str> = attrs.iter().map(|(n, _)| n).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "VMCapsuleJobSysCpu",
            "VMCapsuleJobUserCpu",
            "VMCapsuleJobWallTime",
            "VMCapsulePeakRssKiB",
            "VMCapsuleResult"
        ],
        "finalize sets the usage and nothing else (the exit is the router's): {}",
        run.stdout
    );
    assert_eq!(
        evaluate_attr(&attrs, "VMCapsuleJobUserCpu"),
        Value::Real(0.012)
    );
    assert_eq!(
        evaluate_attr(&attrs, "VMCapsuleJobSysCpu"),
        Value::Real(0.034)
    );
    assert_eq!(
        evaluate_attr(&attrs, "VMCapsuleJobWallTime"),
        Value::Real(1.25)
    );
    assert_eq!(
        evaluate_attr(&attrs, "VMCapsulePeakRssKiB"),
        Value::Integer(1664)
    );
    assert_eq!(
        string_attr(&attrs, "VMCapsuleResult").as_deref(),
        Some("exited with code 3")
    );
    pool.cleanup(&routed);
}

/// Issue 21.2: the routed job is its owner's to edit; what finalize copies back is checked:
/// expressions, wrong types and numbers out of bounds stay behind, text is made safe, and
/// the router's log hears why.
#[test]
fn finalize_copies_only_sane_usage_issue_21_2() {
    let pool = Pool::new(&crate::vanilla::template("console=ttyS0"));
    let ad = job(pool.root.path(), "edited", "", 411);
    let routed = routed_vanilla_done(
        &pool,
        &ad,
        &[
            ("VMCapsuleJobUserCpu", "RemoteUserCpu * 1000"),
            ("VMCapsuleJobSysCpu", "-5.0"),
            ("VMCapsuleJobWallTime", "1e308"),
            ("VMCapsulePeakRssKiB", "\"lots\""),
            (
                "VMCapsuleResult",
                "\"exited with code 0\u{202e}gnp.exe\u{7}\"",
            ),
        ],
    );
    let run = pool.run_hook("finalize", &finalize_stdin(&ad, &routed));
    assert_eq!(run.code, 0, "{}", run.stderr);
    crate::router::assert_lines_parse_in_htcondor(&run.stdout);
    let attrs = classad::parse_old_ad(&run.stdout).unwrap();
    for name in [
        "VMCapsuleJobUserCpu",
        "VMCapsuleJobSysCpu",
        "VMCapsuleJobWallTime",
        "VMCapsulePeakRssKiB",
    ] {
        assert!(attrs.get(name).is_none(), "{name} copied: {}", run.stdout);
        assert!(run.stderr.contains(name), "{}", run.stderr);
    }
    assert_eq!(
        string_attr(&attrs, "VMCapsuleResult").as_deref(),
        Some("exited with code 0?gnp.exe?")
    );
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    pool.cleanup(&routed);
}

/// Issue 21.3: a job asking for more disk than any data disk may have is held with the reason
/// by both routes; the vanilla route used to route it with twice the request, and it sat idle
/// for ever.
#[test]
fn a_job_too_big_for_any_data_disk_is_held_by_both_routes_issue_21_3() {
    let (pool, tarball) = tarball_pool(&crate::vanilla::template("console=ttyS0"));
    for (universe, cluster) in [(13, 420), (5, 421)] {
        let ad = job(
            pool.root.path(),
            &format!("big-{universe}"),
            "request_disk = 100GB",
            cluster,
        );
        let stdin = format!(
            "[ Name = \"R\"; TargetUniverse = {universe} ]\n------\n{}",
            print_ad(&ad)
        );
        let run = pool.run_hook("translate", &stdin);
        assert_ne!(run.code, 0, "route universe {universe}: {}", run.stdout);
        assert_eq!(run.stdout, "");
        let holds = fs::read_to_string(&tarball.holds).unwrap_or_default();
        let hold = holds.lines().last().unwrap_or_default();
        assert!(
            hold.starts_with(&format!("-reason vm-capsule: job {cluster}.0: "))
                && hold.ends_with(&format!("-subcode 1 {cluster}.0"))
                && hold
                    .contains("more than VM_CAPSULE_MAX_DATA_DISK_MB = 65536; lower request_disk"),
            "route universe {universe}: {hold}"
        );
    }
}

/// The bytes of `path`.
fn size(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// Issue 21.4: the vanilla route asks for what the job asked plus what the capsule adds on
/// the node (launcher, agent twice, boot files, the data disk's tables), twice the job's own
/// bytes (inputs and outputs are in the sandbox and on the data disk), and not the data
/// disk's unwritten room.
#[test]
fn request_disk_is_the_request_plus_what_the_capsule_adds_issue_21_4() {
    let pool = Pool::new(&crate::vanilla::template("console=ttyS0"));
    let template = pool.root.path().join("template/condor_vm_capsule");
    let fixed = size(&crate::router::bin("vm-capsule"))
        + 2 * size(&crate::execute_node::capsule_init())
        + size(&template.join("vmlinuz"))
        + size(&template.join("initrd.img"));
    for (extra, cluster, asked_kib) in [("", 430, None), ("request_disk = 1GB", 431, Some(1 << 20))]
    {
        let ad = job(pool.root.path(), &format!("req-{cluster}"), extra, cluster);
        let job_kib = evaluate_attr(&ad, "RequestDisk").as_integer().unwrap();
        if let Some(kib) = asked_kib {
            assert_eq!(job_kib, kib);
        }
        let routed = routed_vanilla_done(&pool, &ad, &[]);
        let request = u64::try_from(evaluate_attr(&routed, "RequestDisk").as_integer().unwrap())
            .unwrap()
            * 1024;
        let job_bytes = u64::try_from(job_kib).unwrap() * 1024;
        let least = fixed + 2 * job_bytes;
        // The tables of a data disk holding the job's bytes, the description, the console.
        let most = least + job_bytes / 16 + (8 << 20);
        assert!(
            (least..=most).contains(&request),
            "{extra:?}: RequestDisk {request} bytes, expected {least}..={most}"
        );
        pool.cleanup(&routed);
    }
}

/// Issue 21.5: `condor_rm` of an original whose routed copy runs. The router gives up on the
/// routed job at once, runs cleanup, then removes the copy and lets the original go; cleanup
/// records on the original, if it is removed, the SIGTERM a native job dies by. A routed job
/// that was not running leaves the original alone.
#[test]
fn cleanup_marks_an_original_removed_while_running_as_killed_issue_21_5() {
    let (pool, tarball) = tarball_pool(&kvm_template);
    let edits = pool.root.path().join("qedits.log");
    let qedit = tarball.prefix.join("bin/condor_qedit");
    fs::write(
        &qedit,
        format!(
            "#!/bin/sh\n# STAND-IN for condor_qedit: records its arguments, one per line\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done >> {0}\necho --- >> {0}\n",
            edits.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&qedit, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for (status, cluster) in [(2, 450), (4, 451), (1, 452)] {
        let ad = job(pool.root.path(), &format!("rm-{cluster}"), "", cluster);
        let mut routed = pool.translate(&ad).unwrap();
        routed.insert("JobStatus", Expr::integer(status));
        let scratch = string_attr(&routed, "VMCapsuleScratch").unwrap();
        let run = pool.cleanup(&routed);
        assert_eq!(run.stderr, "", "JobStatus {status}");
        assert!(!Path::new(&scratch).exists(), "JobStatus {status}");
    }
    // One edit, for the job that was running, exactly these arguments.
    let constraint = "ClusterId == 450 && ProcId == 0 && JobStatus == 3";
    assert_eq!(
        fs::read_to_string(&edits).unwrap(),
        format!("-constraint\n{constraint}\nExitBySignal\ntrue\nExitSignal\n15\n---\n")
    );
    // HTCondor's own parser takes the constraint.
    crate::router::assert_lines_parse_in_htcondor(&format!("Requirements = {constraint}\n"));
}

/// Issue 21, bytes per job: with `VM_CAPSULE_NODE_LAUNCHER` the routed job runs the launcher
/// installed on the node (the same release: the probe advertises its version), ships neither
/// it nor the agent, and asks for that much less disk.
#[test]
fn the_node_launcher_and_agent_do_not_travel() {
    let mut pool = Pool::new(&crate::vanilla::template("console=ttyS0"));
    let ad = job(pool.root.path(), "node", "", 460);
    let shipped = routed_vanilla_done(&pool, &ad, &[]);
    pool.env.push((
        "_CONDOR_VM_CAPSULE_NODE_LAUNCHER".into(),
        "/usr/libexec/vm-capsule/vm-capsule".into(),
    ));
    let ad = job(pool.root.path(), "node2", "", 461);
    let routed = routed_vanilla_done(&pool, &ad, &[]);
    assert_eq!(
        string_attr(&routed, "Cmd").as_deref(),
        Some("/usr/libexec/vm-capsule/vm-capsule")
    );
    assert_eq!(
        evaluate_attr(&routed, "TransferExecutable"),
        Value::Bool(false)
    );
    let transfer = string_attr(&routed, "TransferInput").unwrap();
    assert!(!transfer.contains("capsule-init"), "{transfer}");
    let requirements =
        classad::print::expr_to_string(routed.get("Requirements").unwrap(), classad::Syntax::Old);
    assert!(
        requirements.contains(&format!(
            "TARGET.VMCapsuleVersion =?= \"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{requirements}"
    );
    // The capsule ad tells the launcher to take the agent beside it.
    let scratch = Path::new(&string_attr(&routed, "VMCapsuleScratch").unwrap()).to_owned();
    let capsule =
        classad::parse_old_ad(&fs::read_to_string(scratch.join("vm-capsule.ad")).unwrap()).unwrap();
    assert_eq!(
        evaluate_attr(&capsule, "VMCapsuleAgentOnNode"),
        Value::Bool(true)
    );
    assert!(capsule.get("VMCapsuleAgent").is_none());
    // RequestDisk: less by the launcher and the agent's sandbox copy.
    let kib = |ad: &ClassAd| evaluate_attr(ad, "RequestDisk").as_integer().unwrap();
    let saved = (size(&crate::router::bin("vm-capsule"))
        + size(&crate::execute_node::capsule_init()))
        / 1024;
    let diff = u64::try_from(kib(&shipped) - kib(&routed)).unwrap();
    assert!(
        diff.abs_diff(saved) <= 8,
        "saved {diff} KiB, expected {saved}"
    );
    pool.cleanup(&shipped);
    pool.cleanup(&routed);
}
