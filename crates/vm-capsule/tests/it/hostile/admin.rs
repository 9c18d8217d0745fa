//! The admin tools on what other users control: `vm-capsule run` on a routed ad (a routed job's
//! ad and its scratch dir are its owner's to edit), run as root the way docs/ADMIN.md tells an
//! admin to debug a job.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;

use super::local_user::{account, alice_job, alice_pool};
use super::*;
use crate::cmd::run_ok;
use crate::router::bin;

/// `vm-capsule run <ad> <args>` as `user` (root when `None`), sandboxes in `tmp`; whether it
/// succeeded, and its stderr.
fn run_as(user: Option<(u32, u32)>, ad: &Path, args: &[&str], tmp: &Path) -> (bool, String) {
    let mut cmd = Command::new(bin("vm-capsule"));
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let out = cmd
        .arg("run")
        .arg(ad)
        .args(["--accel", "tcg", "--timeout", "10", "--qemu", "/bin/false"])
        .args(args)
        .env("TMPDIR", tmp)
        .current_dir(tmp)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if meta.is_file()
            && fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

fn append(ad: &mut ClassAd, name: &str, more: &str) {
    let old = string_attr(ad, name).unwrap();
    ad.insert(name, Expr::string(format!("{old},{more}")));
}

/// As root, `run` on a routed ad whose Iwd is another user's is refused unless the admin
/// passes `--as-owner`, and then runs with that user's rights: the names stay plain names in
/// the job dir, and a file the owner links or names there is read only if the owner could
/// read it. A root-owned directory that is not a job dir is never run. (Before: root staged a
/// root-only file the owner linked in as a writable disk, and booted a kernel and initrd
/// named by absolute paths.)
#[test]
fn run_as_root_on_another_users_routed_ad() {
    let (pool, alice) = alice_pool();
    let j = alice_job(&pool, alice, "foreign", "", 2021);
    let routed = pool.translate(&j.ad).unwrap();
    let scratch = scratch_of(&routed);
    assert_eq!(fs::metadata(&scratch).unwrap().uid(), alice.0);
    // Root's own file, outside any job dir.
    let vault = pool.root.path().join("vault");
    fs::create_dir(&vault).unwrap();
    fs::set_permissions(&vault, fs::Permissions::from_mode(0o700)).unwrap();
    let precious = vault.join("precious.img");
    let mut secret = b"ROOT-ONLY-BYTES".to_vec();
    secret.resize(1 << 20, 0);
    fs::write(&precious, &secret).unwrap();
    fs::set_permissions(&precious, fs::Permissions::from_mode(0o600)).unwrap();
    let tmp = pool.root.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
    let ad_file = pool.root.path().join("foreign.routed.ad");

    // What alice can do: link root's file into her job dir as a writable disk, and name a
    // kernel and an initrd by absolute path.
    let victim = scratch.join("victim.img");
    std::os::unix::fs::symlink(&precious, &victim).unwrap();
    std::os::unix::fs::lchown(&victim, Some(alice.0), Some(alice.1)).unwrap();
    let mut hostile = routed.clone();
    append(&mut hostile, "VMPARAM_vm_Disk", "victim.img:vdc:w:raw");
    append(&mut hostile, "TransferInput", "victim.img");
    let abs = precious.display().to_string();
    hostile.insert("VMCapsuleKernel", Expr::string(abs.clone()));
    hostile.insert("VMCapsuleInitrd", Expr::string(abs));
    fs::write(&ad_file, print_ad(&hostile)).unwrap();

    let (ok, err) = run_as(None, &ad_file, &[], &tmp);
    assert!(!ok);
    assert!(
        err.contains("belongs to vmcap-alice")
            && err.contains("--as-owner")
            && err.contains("runuser -u vmcap-alice -- vm-capsule run"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "nothing staged");

    // Said explicitly: the names must still be plain names in the job dir...
    let (ok, err) = run_as(None, &ad_file, &["--as-owner"], &tmp);
    assert!(!ok);
    assert!(
        err.contains("running as vmcap-alice")
            && err.contains("VMCapsuleKernel names")
            && err.contains("plain file name"),
        "{err}"
    );
    // ...and a link alice made to root's file is read with her rights: not at all.
    hostile.remove("VMCapsuleKernel");
    hostile.remove("VMCapsuleInitrd");
    fs::write(&ad_file, print_ad(&hostile)).unwrap();
    let (ok, err) = run_as(None, &ad_file, &["--as-owner"], &tmp);
    assert!(!ok);
    assert!(
        err.contains("victim.img") && err.contains("ermission denied"),
        "{err}"
    );
    // The same for a hard link (alice can make one where fs.protected_hardlinks = 0).
    fs::remove_file(&victim).unwrap();
    fs::hard_link(&precious, &victim).unwrap();
    let (ok, err) = run_as(None, &ad_file, &["--as-owner"], &tmp);
    assert!(!ok);
    assert!(
        err.contains("victim.img") && err.contains("ermission denied"),
        "{err}"
    );
    fs::remove_file(&victim).unwrap();
    assert_eq!(fs::read(&precious).unwrap(), secret);
    assert_eq!(
        files_holding(&tmp, b"ROOT-ONLY-BYTES"),
        Vec::<PathBuf>::new()
    );
    // What was staged before the refusal is alice's, not root's.
    for sandbox in fs::read_dir(&tmp).unwrap() {
        assert_eq!(sandbox.unwrap().metadata().unwrap().uid(), alice.0);
    }

    // An Iwd that is root's but not a job dir (/boot, /etc...) is never run.
    let mut rooted = routed.clone();
    rooted.insert("Iwd", Expr::string(vault.display().to_string()));
    fs::write(&ad_file, print_ad(&rooted)).unwrap();
    for args in [&[][..], &["--as-owner"][..]] {
        let (ok, err) = run_as(None, &ad_file, args, &tmp);
        assert!(!ok);
        assert!(err.contains("not a vm-capsule job dir"), "{err}");
    }

    // Alice on her own routed ad: everything checks out and QEMU starts (a stand-in that
    // fails, here).
    fs::write(&ad_file, print_ad(&routed)).unwrap();
    let (ok, err) = run_as(Some(alice), &ad_file, &[], &tmp);
    assert!(!ok);
    assert!(err.contains("QEMU exited with"), "{err}");
    // Another user on alice's ad is refused (they cannot even reach her job dir).
    let (ok, err) = run_as(Some(account("vmcap-mallory")), &ad_file, &[], &tmp);
    assert!(!ok);
    assert!(
        err.contains("cannot be reached") && err.contains("--as-owner"),
        "{err}"
    );
}

/// The name `template build` gives the cached root file system of its default recipe
/// (bookworm, the agent's unit, the default epoch): predictable, which is the point.
fn default_rootfs_tar_name() -> String {
    use vm_capsule_admin::template::build::{rootfs::Recipe, AgentStart};
    use vm_capsule_core::digest::sha256_hex;
    let h = sha256_hex(b"root bookworm Image");
    let uuid = format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    );
    let recipe = Recipe {
        suite: "bookworm".into(),
        mirror: None,
        start: AgentStart::Image,
        root_uuid: uuid,
        epoch: 1_700_000_000,
    };
    format!("rootfs-bookworm-{}.tar", &recipe.key()[..16])
}

/// `template build` as root with an environment of its own: `env -i`, so only `env`.
fn template_build(out: &Path, env: &[(&str, &Path)], args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("vm-capsule"))
        .args(["template", "build"])
        .arg(out)
        .arg("--agent")
        .arg(crate::execute_node::capsule_init())
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `template build` never keeps its cache where another user can write: with neither HOME
/// nor XDG_CACHE_HOME it refuses instead of falling back to the temp dir, and a cache another
/// user made (a planted root file system, a log name linked to a root file) is refused.
/// (Before: root took mallory's tarball as the template's root file system and wrote the
/// mmdebstrap log through her link.)
#[test]
fn template_build_never_uses_a_cache_other_users_can_write() {
    let root = tempfile::tempdir().unwrap();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mallory = account("vmcap-mallory");
    let shared = root.path().join("tmp");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    // What mallory leaves in the temp dir, at the names a build would use.
    let planted = shared.join("vm-capsule/template-build");
    fs::create_dir_all(&planted).unwrap();
    let tar_name = default_rootfs_tar_name();
    let content = root.path().join("content");
    fs::create_dir(&content).unwrap();
    fs::create_dir(content.join("boot")).unwrap();
    fs::write(content.join("MALLORY-WAS-HERE"), "x").unwrap();
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(planted.join(&tar_name))
            .arg("-C")
            .arg(&content)
            .arg("."),
    );
    let victim = root.path().join("victim");
    fs::write(&victim, "precious\n").unwrap();
    let log = planted.join(tar_name.replace(".tar", ".log"));
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    for p in [shared.join("vm-capsule"), planted.clone()] {
        std::os::unix::fs::chown(&p, Some(mallory.0), Some(mallory.1)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).unwrap();
    }
    for p in [planted.join(&tar_name), log.clone()] {
        std::os::unix::fs::lchown(&p, Some(mallory.0), Some(mallory.1)).unwrap();
    }
    let out = root.path().join("template");

    let refused = |env: &[(&str, &Path)], args: &[&str], expected: &[&str]| {
        let (ok, err) = template_build(&out, env, args);
        assert!(!ok);
        for e in expected {
            assert!(err.contains(e), "{env:?} {args:?}: {err}");
        }
        assert!(!err.contains("root file system"), "{err}");
    };
    // No HOME, no XDG_CACHE_HOME: no fallback to the temp dir.
    refused(
        &[("TMPDIR", &shared)],
        &[],
        &["neither XDG_CACHE_HOME nor HOME is set", "--cache DIR"],
    );
    // Named, or derived from XDG_CACHE_HOME: a directory mallory made is not ours.
    let owned_by = format!("owned by uid {}", mallory.0);
    let named = planted.display().to_string();
    refused(&[], &["--cache", &named], &[&owned_by, "--cache DIR"]);
    refused(&[("XDG_CACHE_HOME", &shared)], &[], &[&owned_by]);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");

    // A cache of root's own is used (its cached root file system, here without a kernel).
    let home = root.path().join("root-home");
    let cache = home.join(".cache/vm-capsule/template-build");
    fs::create_dir_all(&cache).unwrap();
    fs::rename(planted.join(&tar_name), cache.join(&tar_name)).unwrap();
    std::os::unix::fs::lchown(cache.join(&tar_name), Some(0), Some(0)).unwrap();
    let (ok, err) = template_build(&out, &[("HOME", &home)], &[]);
    assert!(!ok);
    assert!(
        err.contains("root file system: cached") && err.contains("expected exactly one kernel"),
        "{err}"
    );
    assert_eq!(
        fs::metadata(out.join("condor_vm_capsule"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755,
        "the template is readable by the hooks"
    );
}
