//! What the original job and its owner see of a routed job, as a real HTCondor 24.0 pool
//! showed it (issue 21): hold reasons, the job's own usage, jobs too big for the data disk,
//! what the routed job asks for, and removal.

use std::fs;
use std::path::Path;

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

