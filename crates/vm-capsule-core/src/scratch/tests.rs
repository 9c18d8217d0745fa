#![allow(clippy::unwrap_used)]
use std::os::unix::fs::PermissionsExt;

use super::owner::is_job_dir_name;
use super::*;

fn prefix() -> (tempfile::TempDir, ScratchPrefix) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let p = ScratchPrefix::new(dir.path());
    (dir, p)
}

#[test]
fn names_of_job_dirs() {
    assert!(is_job_dir_name("12.0.aB3dE9"));
    for bad in [
        "..",
        "12.0",
        "12.0.aB3dE9.staging",
        "x.0.aB3dE9",
        "12.0.ab/cd1",
        "12.0.aB3dE",
    ] {
        assert!(!is_job_dir_name(bad), "{bad}");
    }
}

#[test]
fn a_missing_prefix_is_never_created() {
    let (dir, _) = prefix();
    let missing = ScratchPrefix::new(&dir.path().join("nope"));
    let err = missing.owner_dir("alice", true).unwrap_err();
    assert!(matches!(err, ScratchError::PrefixMissing { .. }), "{err}");
    assert!(err.to_string().contains("install -d -m 1777 -o root"));
    assert!(!dir.path().join("nope").exists());
}

#[test]
fn a_squatted_or_open_owner_dir_is_refused_and_not_chmodded() {
    let (dir, p) = prefix();
    std::fs::create_dir(dir.path().join("alice")).unwrap();
    std::fs::set_permissions(
        dir.path().join("alice"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let err = p.owner_dir("alice", true).unwrap_err();
    assert!(
        matches!(
            err,
            ScratchError::NotPrivate {
                why: DirProblem::NotPrivateMode { mode: 0o777 },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "scratch dir {}/alice has mode 777, not 0700; refusing to use it (another user may have created it: remove it as root)",
            dir.path().display()
        )
    );
    assert_eq!(err.whose(), Whose::Admin);
    let mode = std::fs::metadata(dir.path().join("alice"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o777, "the squat was modified");
    let target = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(target.path(), dir.path().join("bob")).unwrap();
    assert!(matches!(
        p.owner_dir("bob", true).unwrap_err(),
        ScratchError::NotPrivate {
            why: DirProblem::LinkOrNotDir,
            ..
        }
    ));
}

#[test]
fn directory_problems_read_as_they_always_have() {
    let cases = [
        (DirProblem::NotAbsolute, "is not an absolute path"),
        (DirProblem::DotDot, "contains '..'"),
        (
            DirProblem::NotDirOrRootLink,
            "is not a directory or a root-owned link",
        ),
        (DirProblem::LinkOrNotDir, "is a link or not a directory"),
        (
            DirProblem::SharedNotOurs { uid: 1001 },
            "is owned by uid 1001, neither root nor us",
        ),
        (
            DirProblem::SharedWritable { mode: 0o777 },
            "has mode 777: others can write it but it is not a root-owned sticky directory",
        ),
        (
            DirProblem::NotOurs { uid: 1001, me: 0 },
            "is owned by uid 1001, not by us (uid 0)",
        ),
        (
            DirProblem::OwnNotOurs { uid: 1001, me: 0 },
            "is owned by uid 1001, not by us (uid 0); another user may have made it",
        ),
        (
            DirProblem::NotPrivateMode { mode: 0o755 },
            "has mode 755, not 0700",
        ),
        (
            DirProblem::OthersCanWrite { mode: 0o1777 },
            "has mode 1777: others can write it",
        ),
        (
            DirProblem::CannotCreate(Errno::ACCESS),
            "cannot be created: Permission denied (os error 13)",
        ),
        (
            DirProblem::Unreachable(Errno::NOENT),
            "No such file or directory (os error 2)",
        ),
    ];
    for (problem, text) in cases {
        assert_eq!(problem.to_string(), text);
    }
    let unsafe_prefix = ScratchError::PrefixUnsafe {
        prefix: "/s".into(),
        path: "/s".into(),
        why: DirProblem::SharedNotOurs { uid: 7 },
    };
    assert_eq!(
        unsafe_prefix.to_string(),
        "VM_CAPSULE_SCRATCH_DIR_PREFIX /s is not safe: /s is owned by uid 7, neither root nor us; make it root-owned mode 1777 (install -d -m 1777 -o root /s)"
    );
}

#[test]
fn job_dirs_are_created_committed_found_and_nothing_else_is() {
    let (_dir, p) = prefix();
    let owner = p.owner_dir("carol", true).unwrap();
    let staged = owner.create_job_dir("7.2").unwrap();
    assert!(staged.is_staging());
    let job = staged.commit(&owner).unwrap();
    assert!(is_job_dir_name(job.name()));
    let again = owner.open_job_dir(job.path()).unwrap();
    assert_eq!(again.path(), job.path());
    for bad in [
        owner.path().join(".."),
        owner.path().join("7.2.abcdef/.."),
        owner.path().to_owned(),
        p.path().join("dave").join(job.name()),
    ] {
        assert!(owner.open_job_dir(&bad).is_err(), "{}", bad.display());
    }
    owner.remove_job_dir(again).unwrap();
    assert!(!job.path().exists());
}

#[test]
fn a_job_dir_named_beforehand_is_made_once() {
    let (_dir, p) = prefix();
    let owner = p.owner_dir("frank", true).unwrap();
    let name = super::new_job_dir_name("3.1");
    assert!(is_job_dir_name(&name), "{name}");
    let staged = owner.create_named_job_dir(&name).unwrap();
    assert_eq!(staged.name(), format!("{name}{STAGING_SUFFIX}"));
    assert!(owner.create_named_job_dir(&name).unwrap_err().is_exists());
    let job = staged.commit(&owner).unwrap();
    assert_eq!(job.path(), owner.path().join(&name));
}

#[test]
fn sweep_removes_stale_staging_and_old_failures_only() {
    let (_dir, p) = prefix();
    let owner = p.owner_dir("erin", true).unwrap();
    let stale = owner.create_job_dir("1.0").unwrap();
    let fresh = owner.create_job_dir("2.0").unwrap();
    let mut failed = Vec::new();
    for i in 0..4 {
        let d = owner
            .create_job_dir(&format!("3.{i}"))
            .unwrap()
            .commit(&owner)
            .unwrap();
        std::fs::write(d.path().join(FAILED_MARKER), "x").unwrap();
        failed.push(d);
    }
    let old = SystemTime::now() - Duration::from_secs(7200);
    let touch = |p: &Path| std::fs::File::open(p).unwrap().set_modified(old).unwrap();
    touch(stale.path());
    touch(failed[0].path());
    let removed = owner.sweep_now(Duration::from_secs(3600), 2);
    assert_eq!(removed, 3);
    assert!(!stale.path().exists());
    assert!(fresh.path().exists());
    assert!(!failed[0].path().exists());
    assert_eq!(failed.iter().filter(|d| d.path().exists()).count(), 2);
}
