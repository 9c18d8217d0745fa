//! Read-only host paths (`VM_CAPSULE_HOST_PATHS`) in the vanilla flavour, with the busybox
//! test guest: a directory of the test's own STANDS IN for `/cvmfs`. The job reads it, sees its
//! tree, cannot write to it, and its links and `..` resolve in the guest, never on the host.

use std::fs;
use std::path::Path;

use classad::eval::evaluate_attr;
use classad::Value;

use crate::execute_node::{vanilla_execute_node, JobEnd};
use crate::router::{job_ads, Pool};
use crate::vanilla::template;

/// What the job does with the share `$HP`, as the guest's unprivileged job user; each probe
/// prints one tagged line (or block) to stdout.
const PROBES: &str = r#"
echo "file: $(cat "$HP/hello.txt")"
echo "tree: $(cd "$HP" && find tree | sort | tr '\n' ' ')"
if (echo x > "$HP/new.txt") 2> err; then echo "write: allowed"; else echo "write: $(cat err)"; fi
if mkdir "$HP/tree/made" 2> err; then echo "mkdir: allowed"; else echo "mkdir: $(cat err)"; fi
if umount "$HP" 2> err; then echo "umount: allowed"; else echo "umount: refused"; fi
if mount -o remount,rw "$HP" 2> err; then echo "remount: allowed"; else echo "remount: refused"; fi
echo "mount: $(grep " $HP " /proc/mounts)"
echo "link passwd:"; cat "$HP/etc-link/passwd"
echo "up passwd:"; cat "$HP/up/etc/passwd"
echo "dotdot passwd:"; cat "$HP/../../../../../../../../../../etc/passwd"
echo end
"#;

#[test]
fn a_host_path_is_read_only_and_its_links_stay_in_the_guest() {
    let mut pool = Pool::new(&template("console=ttyS0 quiet panic=-1"));
    // STAND-IN for /cvmfs on the execute node: a read-only directory with a file, a nested
    // tree, a link to /etc and a relative link that climbs far above the share's root.
    let share = pool.root.path().join("node").join("cvmfs-stand-in");
    fs::create_dir_all(share.join("tree/a/b")).unwrap();
    fs::write(share.join("hello.txt"), "hello from the node").unwrap();
    fs::write(share.join("tree/a/b/c.txt"), "c").unwrap();
    std::os::unix::fs::symlink("/etc", share.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../../..", share.join("up")).unwrap();
    let hp = share.display().to_string();
    pool.env
        .push(("_CONDOR_VM_CAPSULE_HOST_PATHS".into(), hp.clone()));

    let iwd = pool.root.path().join("u");
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), format!("#!/bin/sh\n{PROBES}")).unwrap();
    let submit = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\noutput = out.txt\nerror = err.txt\nenvironment = \"HP={hp}\"\n+VMCapsuleHostPaths = \"{hp}\"\nqueue\n",
        iwd.display()
    );
    let ad = job_ads(&[("host-path".into(), submit, 41)]).remove(0);
    let routed = pool.translate_vanilla(&ad);
    assert_eq!(
        evaluate_attr(&routed, "VMCapsuleHostPaths"),
        Value::String(hp.clone())
    );
    let req =
        classad::print::expr_to_string(routed.get("Requirements").unwrap(), classad::Syntax::New);
    assert!(req.contains(&format!("stringListMember(\"{hp}\"")), "{req}");

    // The launcher runs with the node's knob, as the starter runs it.
    let mut env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
    env.push(("_CONDOR_VM_CAPSULE_HOST_PATHS".into(), hp.clone()));
    let sandbox = pool.root.path().join("sandbox");
    let end = vanilla_execute_node(&routed, &sandbox, &env);
    let out = fs::read_to_string(iwd.join("out.txt")).unwrap_or_default();
    let err = fs::read_to_string(sandbox.join("_condor_stderr")).unwrap_or_default();
    assert_eq!(end, JobEnd::Exited(0), "{out}\n{err}");
    assert!(out.ends_with("end\n"), "{out}\n{err}");
    let line = |tag: &str| {
        out.lines()
            .find(|l| l.starts_with(tag))
            .unwrap_or_else(|| panic!("no {tag} in {out}"))
            .to_owned()
    };
    assert_eq!(line("file:"), "file: hello from the node");
    assert_eq!(line("tree:"), "tree: tree tree/a tree/a/b tree/a/b/c.txt ");
    assert!(line("write:").contains("Read-only file system"), "{out}");
    assert!(line("mkdir:").contains("Read-only file system"), "{out}");
    assert_eq!(line("umount:"), "umount: refused");
    assert_eq!(line("remount:"), "remount: refused");
    let mount = line("mount:");
    assert!(
        mount.contains(" 9p ro,") && mount.contains(",nosuid,nodev,"),
        "{mount}"
    );
    // Every way out of the share lands in the guest's own /etc (the busybox guest's passwd
    // has `condor` at uid 1000), never the host's (which has the test accounts).
    let guest_passwd = "condor:x:1000:1000:condor:/home/condor:/bin/sh";
    for (tag, next) in [
        ("link passwd:", "up passwd:"),
        ("up passwd:", "dotdot passwd:"),
        ("dotdot passwd:", "end"),
    ] {
        let block = out
            .split(tag)
            .nth(1)
            .and_then(|rest| rest.split(next).next())
            .unwrap();
        assert!(block.contains(guest_passwd), "{tag} {block}");
        assert!(
            !block.contains("vmcap-"),
            "{tag} shows the host's /etc: {block}"
        );
    }
    // Nothing was written into the host's directory.
    assert!(!share.join("new.txt").exists() && !share.join("tree/made").exists());
}

/// A host path the node lists that is a link or missing is never exported; a job that needs
/// it is refused at launch, before QEMU starts, with the knob, the path and the fix.
#[test]
fn a_host_path_that_is_a_link_is_refused_at_launch() {
    let pool = Pool::new(&template("console=ttyS0 quiet panic=-1"));
    let node = pool.root.path().join("node");
    fs::create_dir_all(node.join("real")).unwrap();
    std::os::unix::fs::symlink("/etc", node.join("cvmfs")).unwrap();
    let iwd = pool.root.path().join("u");
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    for (k, (listed, why)) in [
        ("cvmfs", "is a symbolic link"),
        ("missing", "does not exist"),
    ]
    .into_iter()
    .enumerate()
    {
        let listed = node.join(listed);
        let submit = format!(
            "executable = {0}/job.sh\ninitialdir = {0}\noutput = out.txt\n+VMCapsuleHostPaths = \"{1}\"\nqueue\n",
            iwd.display(),
            listed.display()
        );
        let ad = job_ads(&[("refused".into(), submit, 42 + i64::try_from(k).unwrap())]).remove(0);
        let routed = pool.translate_vanilla(&ad);
        let env = vec![
            ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
            (
                "_CONDOR_VM_CAPSULE_HOST_PATHS".to_owned(),
                format!("{}, {}", node.join("real").display(), listed.display()),
            ),
        ];
        let sandbox = pool.root.path().join(format!("sandbox-{why}"));
        let end = vanilla_execute_node(&routed, &sandbox, &env);
        assert_eq!(end, JobEnd::Exited(125));
        let err = fs::read_to_string(sandbox.join("_condor_stderr")).unwrap();
        assert!(
            err.contains(&format!(
                "VM_CAPSULE_HOST_PATHS lists {}, which {why}",
                listed.display()
            )) && err.contains("fix:"),
            "{err}"
        );
        assert!(
            !Path::new(&sandbox.join("console.log")).exists(),
            "QEMU started"
        );
    }
}

/// The probe, run as the startd runs it, advertises the listed paths that are real
/// directories, and says why it leaves out the others.
#[test]
fn the_probe_advertises_the_host_paths_the_node_can_share() {
    use std::os::unix::process::CommandExt;
    let node = tempfile::tempdir().unwrap();
    let node = node.path().canonicalize().unwrap();
    fs::create_dir(node.join("cvmfs")).unwrap();
    std::os::unix::fs::symlink("/etc", node.join("certs")).unwrap();
    let listed = format!("{0}/cvmfs, {0}/certs {0}/missing", node.display());
    let out = crate::cmd::run_ok(
        std::process::Command::new(crate::router::bin("vm-capsule"))
            .arg0("VMCAPSULE")
            .arg("probe")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CONDOR_CONFIG", "/dev/null")
            .env("_CONDOR_VM_CAPSULE_HOST_PATHS", &listed),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    crate::router::assert_lines_parse_in_htcondor(&text);
    let ad = classad::parse_old_ad(&text).unwrap();
    assert_eq!(
        evaluate_attr(&ad, "VMCapsuleHostPaths"),
        Value::String(format!("{}/cvmfs", node.display()))
    );
    let Value::String(why) = evaluate_attr(&ad, "VMCapsuleHostPathsReason") else {
        panic!("{text}");
    };
    assert!(why.contains("certs, which is a symbolic link"), "{why}");
    assert!(why.contains("missing, which does not exist"), "{why}");
}

/// A job whose `+VMCapsuleHostPaths` is not a list of absolute paths is the job's problem:
/// translate holds it with the reason, and routes nothing.
#[test]
fn a_malformed_host_path_request_holds_the_job() {
    let pool = Pool::new(&template("console=ttyS0 quiet panic=-1"));
    let iwd = pool.root.path().join("u");
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let submit = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\n+VMCapsuleHostPaths = \"cvmfs\"\nqueue\n",
        iwd.display()
    );
    let ad = job_ads(&[("bad-host-path".into(), submit, 45)]).remove(0);
    let run = pool.translate(&ad).unwrap_err();
    assert!(
        run.stderr.contains(
            "VMCapsuleHostPaths names \"cvmfs\", which is refused: it is not an absolute path"
        ) && run.stderr.contains("condor_hold"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}
