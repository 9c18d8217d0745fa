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
    let iwd = pool.root.path().join("users").join(name);
    fs::create_dir_all(&iwd).unwrap();
    fs::set_permissions(
        pool.root.path().join("users"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    for p in [&iwd, &iwd.join("job.sh")] {
        std::os::unix::fs::chown(p, Some(alice.0), Some(alice.1)).unwrap();
    }
    let text = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\n{submit}\nqueue\n",
        iwd.display()
    );
    let ad = job_ads_of("vmcap-alice", &[(name.to_owned(), text, cluster)]).remove(0);
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
