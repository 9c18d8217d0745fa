//! Other local users: the shared scratch prefix and who may run the hooks.

use super::*;

/// Real unprivileged accounts for the attacks that need two users.
pub(super) fn account(name: &str) -> (u32, u32) {
    let user = nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap_or_else(|| {
            panic!("user {name} is missing: .ci/run creates it (useradd -M {name})")
        });
    (user.uid.as_raw(), user.gid.as_raw())
}

/// A pool whose hooks run as `vmcap-alice`, without the test knob; Iwds belong to alice.
pub(super) fn alice_pool() -> (Pool, (u32, u32)) {
    let alice = account("vmcap-alice");
    let mut pool = Pool::new(&template(ImageFormat::Qcow2));
    pool.env
        .retain(|(k, _)| k != "_CONDOR_VM_CAPSULE_TEST_ANY_USER");
    pool.run_as = Some(alice);
    fs::set_permissions(pool.root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    (pool, alice)
}

pub(super) fn alice_job(
    pool: &Pool,
    alice: (u32, u32),
    name: &str,
    submit: &str,
    cluster: i64,
) -> Job {
    user_job(pool, "vmcap-alice", alice, name, submit, cluster)
}

/// A job of `user` (`ids`), its Iwd theirs.
fn user_job(
    pool: &Pool,
    user: &str,
    ids: (u32, u32),
    name: &str,
    submit: &str,
    cluster: i64,
) -> Job {
    let iwd = pool.root.path().join("users").join(name);
    fs::create_dir_all(&iwd).unwrap();
    fs::set_permissions(
        pool.root.path().join("users"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    for p in [&iwd, &iwd.join("job.sh")] {
        std::os::unix::fs::chown(p, Some(ids.0), Some(ids.1)).unwrap();
    }
    let text = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\n{submit}\nqueue\n",
        iwd.display()
    );
    let ad = job_ads_of(user, &[(name.to_owned(), text, cluster)]).remove(0);
    Job { iwd, ad }
}

/// 11.2: another user's squat on `<prefix>/<owner>` (an open dir, or a link to their own)
/// is refused and left as it was; the victim's job waits (no hold) with a clear reason.
#[test]
fn item_02_scratch_squatting_is_refused() {
    let (pool, alice) = alice_pool();
    let mallory = account("vmcap-mallory");
    let owner_dir = pool.root.path().join("scratch").join("vmcap-alice");
    fs::create_dir(&owner_dir).unwrap();
    std::os::unix::fs::chown(&owner_dir, Some(mallory.0), Some(mallory.1)).unwrap();
    fs::set_permissions(&owner_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let j = alice_job(&pool, alice, "squat", "", 1102);
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(run.stderr.contains("refusing to use it"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("condor_hold"),
        "an admin problem holds no job: {}",
        run.stderr
    );
    let meta = fs::metadata(&owner_dir).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o777);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), mallory.0);
    assert_eq!(fs::read_dir(&owner_dir).unwrap().count(), 0);
    // A link to mallory's own dir is no better.
    fs::remove_dir(&owner_dir).unwrap();
    let theirs = pool.root.path().join("mallory-dir");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::symlink(&theirs, &owner_dir).unwrap();
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(run.stderr.contains("is a link"), "{}", run.stderr);
    assert_eq!(fs::read_dir(&theirs).unwrap().count(), 0);
}

/// 11.3: hooks never create the prefix: every user's jobs would then depend on the first one.
#[test]
fn item_03_a_missing_prefix_is_the_admins_to_create() {
    let (mut pool, alice) = alice_pool();
    // Under a /tmp-like dir where the first submitter could create it.
    let shared = pool.root.path().join("tmp");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let missing = shared.join("no-such-prefix");
    pool.env.push((
        "_CONDOR_VM_CAPSULE_SCRATCH_DIR_PREFIX".into(),
        missing.display().to_string(),
    ));
    let j = alice_job(&pool, alice, "noprefix", "", 1103);
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(
        run.stderr.contains("install -d -m 1777 -o root"),
        "{}",
        run.stderr
    );
    assert!(!missing.exists());
}

/// 11.10: cleanup removes only a job dir of ours, never `<prefix>/<owner>/..`.
#[test]
fn item_10_cleanup_guard() {
    let (pool, alice) = alice_pool();
    let j = alice_job(&pool, alice, "cleanup", "", 1110);
    let mut routed = pool.translate(&j.ad).unwrap();
    let prefix = pool.root.path().join("scratch");
    for bad in [
        prefix.join("vmcap-alice").join(".."),
        prefix.join("vmcap-alice"),
        prefix.clone(),
        j.iwd.clone(),
    ] {
        routed.insert("VMCapsuleScratch", Expr::string(bad.display().to_string()));
        pool.cleanup(&routed);
        assert!(prefix.join("vmcap-alice").is_dir(), "{}", bad.display());
        assert!(j.iwd.join("job.sh").exists());
    }
}

/// 11.12: a hook running as root, or as a user other than the job's owner, refuses.
#[test]
fn item_12_hooks_run_only_as_the_owner() {
    let (mut pool, alice) = alice_pool();
    let j = alice_job(&pool, alice, "identity", "", 1112);
    pool.run_as = None; // root
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(
        run.stderr.contains("refusing to run as root"),
        "{}",
        run.stderr
    );
    pool.run_as = Some(account("vmcap-mallory"));
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(
        run.stderr.contains("the job's Owner vmcap-alice is uid"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("condor_hold"));
}

/// 11.18: an input the owner cannot read is named in the hold reason.
#[test]
fn item_18_messages_name_the_file() {
    let (pool, alice) = alice_pool();
    let j = alice_job(
        &pool,
        alice,
        "unreadable",
        "transfer_input_files = secret.dat",
        1118,
    );
    let secret = j.iwd.join("secret.dat");
    fs::write(&secret, "root only").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(
        run.stderr.contains(&secret.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("ermission denied"), "{}", run.stderr);
}

/// Hook logs of every owner share one root-owned 1777 directory: another owner's alarm stamp
/// does not silence this owner's pool-problem error, and a `<log>.<owner>.old` another user
/// owns (so the rotation cannot rename) does not let the log grow past its limit. (Before:
/// one `TranslateLog.alarm` served every owner, and a blocked rotation failed silently: a
/// 2,000-byte limit let a log reach 17,100 bytes.)
#[test]
fn hook_logs_of_one_owner_are_not_anothers() {
    let (mut pool, alice) = alice_pool();
    let mallory = account("vmcap-mallory");
    let logs = pool.root.path().join("logs");
    fs::create_dir(&logs).unwrap();
    fs::set_permissions(&logs, fs::Permissions::from_mode(0o1777)).unwrap();
    let set = |pool: &mut Pool, knob: &str, value: String| {
        pool.env.retain(|(k, _)| k != &format!("_CONDOR_{knob}"));
        pool.env.push((format!("_CONDOR_{knob}"), value));
    };
    let base = logs.join("TranslateLog").display().to_string();
    set(&mut pool, "VM_CAPSULE_TRANSLATE_LOG", base);
    set(&mut pool, "VM_CAPSULE_MAX_TRANSLATE_LOG", "2000".into());
    let template = string_attr_env(&pool, "_CONDOR_VM_CAPSULE_TEMPLATE");
    let gone = pool.root.path().join("gone").display().to_string();
    set(&mut pool, "VM_CAPSULE_TEMPLATE", gone);
    let j = alice_job(&pool, alice, "logs", "", 2041);
    let theirs = user_job(&pool, "vmcap-mallory", mallory, "logs-m", "", 2042);
    let loud = |pool: &Pool, j: &Job| {
        let run = pool.translate(&j.ad).unwrap_err();
        assert!(!run.stderr.contains("condor_hold"), "{}", run.stderr);
        run.stderr.contains("VM_CAPSULE_TEMPLATE")
    };
    // The pool's problem: said by mallory's hook, then still said by alice's.
    pool.run_as = Some(mallory);
    assert!(loud(&pool, &theirs));
    pool.run_as = Some(alice);
    assert!(
        loud(&pool, &j),
        "mallory's alarm stamp silenced alice's error"
    );
    assert!(!loud(&pool, &j), "once per polling period for one owner");

    // Mallory owns the name alice's log rotates to.
    let old = logs.join("TranslateLog.vmcap-alice.old");
    fs::write(&old, "mallory's\n").unwrap();
    std::os::unix::fs::chown(&old, Some(mallory.0), Some(mallory.1)).unwrap();
    set(&mut pool, "VM_CAPSULE_TEMPLATE", template);
    let mut warned = 0;
    let runs = 30;
    for _ in 0..runs {
        let run = pool.run_hook(
            "translate",
            &format!(
                "[ Name = \"VM capsule\"; TargetUniverse = 13 ]\n------\n{}",
                print_ad(&j.ad)
            ),
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        if run.stderr.contains("cannot rotate") {
            assert!(run.stderr.contains("truncated in place"), "{}", run.stderr);
            warned += 1;
        }
    }
    let log = logs.join("TranslateLog.vmcap-alice");
    let size = fs::metadata(&log).unwrap().len();
    assert!(
        size <= 3000,
        "the 2000-byte limit let the log reach {size} bytes"
    );
    assert!(
        warned >= 1 && warned < runs,
        "warned in {warned} of {runs} runs"
    );
    assert_eq!(fs::read_to_string(&old).unwrap(), "mallory's\n");
}

fn string_attr_env(pool: &Pool, key: &str) -> String {
    pool.env
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap()
}
