//! Real guests: a Debian bookworm template made by `vm-capsule template build`,
//! booted from its own OS disk (BIOS, GRUB, systemd, the shipped unit) under TCG, and the same
//! Debian made into a plain cloud image (cloud-init, no agent) run unchanged in NoCloud mode.
//! The same jobs must leave the same files and exit attributes as a native run and as the
//! busybox test guest, in the VM flavour (`vm-capsule run`) and the vanilla flavour (the
//! stand-in execute node running the launcher).
//!
//! Boots: 3 (busybox) + 6 (systemd) + 6 (cloud-init) + 2 (`template check`), and 1 (systemd)
//! in `guests_world`. The templates
//! are built once and cached in `.cache/templates/`, keyed by what makes them (the agent, the
//! unit, the builder's source); the root file systems and packages in `.cache/template-build/`.
//! Building needs root (CI runs as root) and Debian's mmdebstrap, grub-pc-bin, e2fsprogs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use classad::eval::string_attr;
use classad::{ClassAd, Expr};

use crate::cmd::{assert_ok, run_ok, run_ok_needs};
use crate::execute_node::{vanilla_execute_node, JobEnd};
use crate::router::{job_ads, print_ad, repo, Pool};
use crate::vanilla::{exit_of, submit_files, tree, Job};

/// Seconds a guest may take from QEMU start to poweroff (a cloud image under TCG on a busy
/// 2-core machine has taken 80 s).
const RUN_TIMEOUT: &str = "400";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `template build`: systemd + capsule-init.service.
    Systemd,
    /// `template build --cloud-init`: a plain cloud image.
    Cloud,
}

/// The static agent the test guest script builds (also what goes in the systemd image).
fn static_agent() -> PathBuf {
    crate::execute_node::test_guest().join("capsule-init")
}

/// sha256 hex of `bytes` (through the library the builder uses).
fn sha(bytes: &[u8]) -> String {
    vm_capsule_core::digest::sha256_hex(bytes)
}

/// The built template of `kind` (its directory, holding `condor_vm_capsule/`), from the
/// cache when its inputs have not changed.
pub(crate) fn template(kind: Kind) -> &'static Path {
    static SYSTEMD: OnceLock<PathBuf> = OnceLock::new();
    static CLOUD: OnceLock<PathBuf> = OnceLock::new();
    let cell = match kind {
        Kind::Systemd => &SYSTEMD,
        Kind::Cloud => &CLOUD,
    };
    cell.get_or_init(|| build_template(kind))
}

fn build_template(kind: Kind) -> PathBuf {
    let agent = static_agent();
    let mut key = format!("{kind:?}\n");
    for part in [
        fs::read(&agent).unwrap(),
        vm_capsule_admin::template::build::UNIT_FILE
            .as_bytes()
            .to_vec(),
        include_bytes!("../../../vm-capsule-admin/src/template/build/mod.rs").to_vec(),
        include_bytes!("../../../vm-capsule-admin/src/template/build/rootfs.rs").to_vec(),
        include_bytes!("../../../vm-capsule-admin/src/template/build/bootdisk.rs").to_vec(),
        include_bytes!("../../../vm-capsule-admin/src/template/build/initramfs.rs").to_vec(),
    ] {
        key.push_str(&sha(&part));
    }
    let key = sha(key.as_bytes());
    let cache = repo().join(".cache/templates");
    fs::create_dir_all(&cache).unwrap();
    let name = format!("{}-{}", format!("{kind:?}").to_lowercase(), &key[..16]);
    let out = cache.join(&name);
    // One builder at a time, across test processes too.
    let lock = cache.join(format!("{}.lock", format!("{kind:?}").to_lowercase()));
    let script = format!(
        "if [ ! -f '{out}/.complete' ]; then rm -rf '{out}.partial' && \"$0\" template build --debian bookworm '{out}.partial' --agent '{agent}' --cache '{cache}' {flag} >/dev/null && rm -rf '{out}' && mv '{out}.partial' '{out}' && touch '{out}/.complete'; fi",
        out = out.display(),
        agent = agent.display(),
        cache = repo().join(".cache/template-build").display(),
        flag = if kind == Kind::Cloud { "--cloud-init" } else { "" },
    );
    run_ok_needs(
        Command::new("flock")
            .arg(&lock)
            .args(["sh", "-c", &script])
            .arg(crate::router::bin("vm-capsule")),
        "template build needs root, mmdebstrap, grub-pc-bin, e2fsprogs: scripts/install-deps.sh test",
    );
    // Older builds of this kind are of no more use.
    for e in fs::read_dir(&cache).unwrap().filter_map(Result::ok) {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("{}-", format!("{kind:?}").to_lowercase())) && n != name {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    out
}

/// A test pool for `template`, shipping the static agent (as a real installation does).
fn pool(template: &dyn Fn(&Path)) -> Pool {
    let mut pool = Pool::new(template);
    pool.env.push((
        "_CONDOR_VM_CAPSULE_INIT_SCRIPT_PATH".to_owned(),
        static_agent().display().to_string(),
    ));
    pool
}

/// Hard-link (or copy) the files of a built template into a test pool's template dir.
fn link_template(from: &Path) -> impl Fn(&Path) + '_ {
    move |dir: &Path| {
        for e in fs::read_dir(from.join("condor_vm_capsule")).unwrap() {
            let e = e.unwrap();
            let dest = dir.join(e.file_name());
            if fs::hard_link(e.path(), &dest).is_err() {
                fs::copy(e.path(), &dest).unwrap();
            }
        }
    }
}

/// The busybox test guest as a template (direct kernel boot).
fn busybox_template(dir: &Path) {
    crate::execute_node::test_guest_template(dir, "console=ttyS0 quiet panic=-1");
}

const JOBS: &[Job] = &[
    Job {
        name: "args-env-exit7",
        script: "for a in \"$@\"; do printf '[%s]\\n' \"$a\"; done; echo \"G=$G H=$H\"; echo to-stderr >&2; exit 7",
        submit: "arguments = \"one 'two words' '' x\"\nenvironment = \"G='spacey value' H=1\"\noutput = out.txt\nerror = err.txt",
        files: &[],
    },
    Job {
        name: "signal",
        script: "echo before; kill -TERM $$",
        submit: "output = out.txt",
        files: &[],
    },
    Job {
        name: "outputs",
        script: "mkdir -p res/sub; cat d/a.txt d/sub/b.txt > res/sub/joined.txt; echo r1 > r1.out; echo kept > kept.txt",
        submit: "transfer_input_files = d\ntransfer_output_files = res, r1.out, kept.txt\ntransfer_output_remaps = \"r1.out = renamed/one.txt\"",
        files: &[("d/a.txt", "A\n"), ("d/sub/b.txt", "B\n")],
    },
];

/// What one flavour of one job gave.
#[derive(Debug, PartialEq)]
struct Outcome {
    end: JobEnd,
    files: Vec<(String, Vec<u8>)>,
}

/// Jobs submitted in every flavour asked for, with their ads made by HTCondor's library.
struct Jobs {
    root: PathBuf,
    ads: Vec<(String, ClassAd)>,
}

fn submit(pool: &Pool, flavours: &[&str]) -> Jobs {
    let root = pool.root.path().join("users");
    let submits = submit_files(&root, JOBS, flavours, 300);
    let ads = job_ads(&submits);
    Jobs {
        root,
        ads: submits.into_iter().map(|(n, _, _)| n).zip(ads).collect(),
    }
}

impl Jobs {
    fn ad(&self, flavour: &str, job: &Job) -> &ClassAd {
        let name = format!("{flavour}-{}", job.name);
        &self.ads.iter().find(|(n, _)| *n == name).unwrap().1
    }

    fn iwd(&self, flavour: &str, job: &Job) -> PathBuf {
        self.root.join(flavour).join(job.name)
    }
}

/// Run the job natively (no VM, no hooks): the reference.
fn native(jobs: &Jobs, pool: &Pool, job: &Job) -> Outcome {
    let iwd = jobs.iwd("native", job);
    let mut ad = jobs.ad("native", job).clone();
    ad.insert(
        "Cmd",
        Expr::string(iwd.join("job.sh").display().to_string()),
    );
    let sandbox = pool.root.path().join("native-sandbox").join(job.name);
    let end = vanilla_execute_node(&ad, &sandbox, &[("PATH".into(), "/usr/bin:/bin".into())]);
    Outcome {
        end,
        files: tree(&iwd),
    }
}

/// VM flavour: translate, `vm-capsule run` (a real boot), finalize, cleanup. Returns the
/// outcome and the routed ad.
fn vm_flavour(jobs: &Jobs, pool: &Pool, flavour: &str, job: &Job) -> (Outcome, ClassAd) {
    let ad = jobs.ad(flavour, job);
    let routed = pool
        .translate(ad)
        .unwrap_or_else(|r| panic!("{}: {}", job.name, r.stderr));
    let ad_file = pool
        .root
        .path()
        .join(format!("{flavour}-{}.routed.ad", job.name));
    fs::write(&ad_file, print_ad(&routed)).unwrap();
    let run = Command::new(crate::router::bin("vm-capsule"))
        .arg("run")
        .arg(&ad_file)
        .args(["--accel", "tcg", "--timeout", RUN_TIMEOUT])
        .output()
        .unwrap();
    let (_, attrs) = pool.finalize(ad, &routed);
    pool.cleanup(&routed);
    assert_ok(run, format_args!("{flavour} {}: vm-capsule run", job.name));
    (
        Outcome {
            end: exit_of(&attrs),
            files: tree(&jobs.iwd(flavour, job)),
        },
        routed,
    )
}

/// Vanilla flavour: translate with a `TargetUniverse = 5` route, the stand-in execute node
/// runs the launcher (a real boot), finalize must add nothing. Returns the routed ad too.
fn vanilla_flavour(jobs: &Jobs, pool: &Pool, flavour: &str, job: &Job) -> (Outcome, ClassAd) {
    let ad = jobs.ad(flavour, job);
    let routed = pool.translate_vanilla(ad);
    let sandbox = pool
        .root
        .path()
        .join("execute")
        .join(flavour)
        .join(job.name);
    let env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
    let end = vanilla_execute_node(&routed, &sandbox, &env);
    let mut done = routed.clone();
    end.set_in(&mut done);
    let mut original = ad.clone();
    original.update(&done);
    let fin = pool.run_hook(
        "finalize",
        &format!("{}\n------\n{}", print_ad(&original), print_ad(&done)),
    );
    assert_eq!(fin.code, 0);
    assert_eq!(
        fin.stdout, "",
        "finalize must not disturb what HTCondor placed"
    );
    pool.cleanup(&routed);
    if end == JobEnd::Exited(125) {
        let err = fs::read_to_string(sandbox.join("_condor_stderr")).unwrap_or_default();
        panic!("{flavour} {}: the launcher failed: {err}", job.name);
    }
    (
        Outcome {
            end,
            files: tree(&jobs.iwd(flavour, job)),
        },
        routed,
    )
}

fn transfer_names(ad: &ClassAd) -> Vec<String> {
    string_attr(ad, "TransferInput")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|p| {
            Path::new(p.trim())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The busybox guest's outcomes (VM flavour) next to the native ones, computed once.
fn references() -> &'static Vec<(Outcome, Outcome)> {
    static REFS: OnceLock<Vec<(Outcome, Outcome)>> = OnceLock::new();
    REFS.get_or_init(|| {
        let pool = pool(&busybox_template);
        let jobs = submit(&pool, &["native", "busybox"]);
        JOBS.iter()
            .map(|job| {
                let native = native(&jobs, &pool, job);
                let (busybox, _) = vm_flavour(&jobs, &pool, "busybox", job);
                (native, busybox)
            })
            .collect()
    })
}

fn assert_same(job: &Job, what: &str, got: &Outcome, refs: &(Outcome, Outcome)) {
    assert_eq!(
        got, &refs.0,
        "{}: {what} differs from the native run",
        job.name
    );
    assert_eq!(
        got, &refs.1,
        "{}: {what} differs from the busybox guest",
        job.name
    );
}

/// A test pool for the systemd template, its OS disk staged in the pool's `node-images`
/// (returned) as VM_CAPSULE_NODE_IMAGE_DIR.
pub(crate) fn systemd_pool() -> (Pool, PathBuf) {
    let built = template(Kind::Systemd);
    let mut pool = pool(&link_template(built));
    // The "execute node's" copy, with its checksum, somewhere else.
    let node = pool.root.path().join("node-images");
    fs::create_dir(&node).unwrap();
    for f in ["os.qcow2", "os.qcow2.sha256"] {
        fs::hard_link(built.join("condor_vm_capsule").join(f), node.join(f)).unwrap();
    }
    pool.env.extend([
        (
            "_CONDOR_VM_CAPSULE_CONDOR_CLASSAD_TEMPLATE".to_owned(),
            built.join("classad-template.ad").display().to_string(),
        ),
        (
            "_CONDOR_VM_CAPSULE_NODE_IMAGE_DIR".to_owned(),
            node.display().to_string(),
        ),
    ]);
    (pool, node)
}

/// The systemd template, its OS disk staged "on the execute node" (VM_CAPSULE_NODE_IMAGE_DIR):
/// both flavours boot it behind an overlay, nothing but the data disk (and in the VM universe
/// a 256 KiB overlay) travels.
#[test]
fn systemd_template_runs_jobs_like_native_and_busybox() {
    let (pool, node) = systemd_pool();
    let before = fs::read_to_string(node.join("os.qcow2.sha256")).unwrap();
    let jobs = submit(&pool, &["vm", "vanilla"]);
    for (job, refs) in JOBS.iter().zip(references()) {
        let (vm, routed) = vm_flavour(&jobs, &pool, "vm", job);
        assert_same(job, "systemd guest, VM flavour", &vm, refs);
        let shipped = transfer_names(&routed);
        assert!(
            !shipped.iter().any(|f| f == "os.qcow2"),
            "the OS disk travelled: {shipped:?}"
        );
        assert_eq!(
            string_attr(&routed, "VMCapsuleBaseImage").unwrap(),
            node.join("os.qcow2").display().to_string()
        );
        let (vanilla, routed) = vanilla_flavour(&jobs, &pool, "vanilla", job);
        assert_same(job, "systemd guest, vanilla flavour", &vanilla, refs);
        let shipped = transfer_names(&routed);
        assert!(
            shipped
                .iter()
                .all(|f| f != "os.qcow2" && f != "os.overlay.qcow2"),
            "the vanilla flavour ships the data disk only: {shipped:?}"
        );
    }
    assert_eq!(
        vm_capsule_core::digest::sha256_file(&node.join("os.qcow2")).unwrap(),
        before.split_whitespace().next().unwrap(),
        "the node's OS image changed"
    );
}

/// A plain Debian cloud image (cloud-init, no agent), left byte-identical: the data disk is
/// its NoCloud seed and cloud-init runs the agent shipped on it.
#[test]
fn cloud_image_in_nocloud_mode_runs_jobs_like_native_and_busybox() {
    let built = template(Kind::Cloud);
    let image = built.join("condor_vm_capsule/os.qcow2");
    let before = vm_capsule_core::digest::sha256_file(&image).unwrap();
    let mut pool = pool(&link_template(built));
    pool.env.push((
        "_CONDOR_VM_CAPSULE_AGENT_START".to_owned(),
        "cloud-init".to_owned(),
    ));
    let jobs = submit(&pool, &["vm", "vanilla"]);
    for (job, refs) in JOBS.iter().zip(references()) {
        let (vm, routed) = vm_flavour(&jobs, &pool, "vm", job);
        assert_same(job, "cloud image, VM flavour", &vm, refs);
        assert!(transfer_names(&routed).contains(&"os.qcow2".to_owned()));
        let (vanilla, _) = vanilla_flavour(&jobs, &pool, "vanilla", job);
        assert_same(job, "cloud image, vanilla flavour", &vanilla, refs);
    }
    assert_eq!(
        vm_capsule_core::digest::sha256_file(&image).unwrap(),
        before,
        "the cloud image changed"
    );
}

fn check(dir: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(crate::router::bin("vm-capsule"))
        .args(["template", "check"])
        .arg(dir)
        .arg("--agent")
        .arg(static_agent())
        .args(["--accel", "tcg", "--timeout", RUN_TIMEOUT])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `template check`: a good template (the cloud image given the agent by `install-agent`),
/// one without the agent (the same cloud image as it is), one whose disk does not boot.
#[test]
fn template_check_tells_good_from_no_agent_from_no_boot() {
    let built = template(Kind::Cloud);
    let dir = tempfile::tempdir().unwrap();
    let with_agent = dir.path().join("with-agent");
    fs::create_dir_all(with_agent.join("condor_vm_capsule")).unwrap();
    for f in ["os.qcow2", "data.qcow2"] {
        fs::copy(
            built.join("condor_vm_capsule").join(f),
            with_agent.join("condor_vm_capsule").join(f),
        )
        .unwrap();
    }
    run_ok_needs(
        Command::new(crate::router::bin("vm-capsule"))
            .args(["template", "install-agent"])
            .arg(with_agent.join("condor_vm_capsule/os.qcow2"))
            .arg("--agent")
            .arg(static_agent()),
        "install-agent failed (libguestfs-tools and a kernel in /boot are needed)",
    );
    let (ok, out) = check(&with_agent, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("verdict: GOOD"), "{out}");
    assert!(
        out.contains("distribution Debian GNU/Linux 12 (bookworm)"),
        "{out}"
    );
    // A stock cloud image has no `condor` account: the agent falls back to nobody, and says so.
    assert!(
        out.contains("user nobody (the image has no account condor"),
        "{out}"
    );
    assert!(out.contains("working dir /var/lib/capsule/work"), "{out}");

    let (ok, out) = check(built, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("verdict: FAILED: agent never started: the kernel booted to a login prompt"),
        "{out}"
    );

    let blank = dir.path().join("blank");
    fs::create_dir_all(blank.join("condor_vm_capsule")).unwrap();
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(blank.join("condor_vm_capsule/os.qcow2"))
            .arg("1G"),
    );
    fs::copy(
        built.join("condor_vm_capsule/data.qcow2"),
        blank.join("condor_vm_capsule/data.qcow2"),
    )
    .unwrap();
    let (ok, out) = check(&blank, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("verdict: FAILED at boot: no bootable disk"),
        "{out}"
    );
    assert!(out.contains("No bootable device"), "{out}");
}
