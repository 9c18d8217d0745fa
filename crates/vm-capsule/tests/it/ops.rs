//! Deploying and operating vm-capsule as an HTCondor admin does: HTCondor's
//! tools outside PATH, hook logs, `install-hooks`, the startd probe, man pages and
//! completions, static programs, the configuration snippet read by HTCondor's own parser.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use capsule_disk::{Image, ImageFormat};
use classad::eval::evaluate_attr;
use classad::{ClassAd, Value};

use crate::cmd::{assert_ok, run_ok, run_ok_needs};
use crate::execute_node::capsule_init;
use crate::router::{bin, current_user, job_ads, print_ad, Pool};

/// A KVM template: an OS disk and a qcow2 data disk.
pub fn kvm_template(dir: &Path) {
    Image::create(&dir.join("os.qcow2"), ImageFormat::Qcow2, 64 << 20)
        .unwrap()
        .finish()
        .unwrap();
    crate::execute_node::qcow2_data_disk(dir);
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A job of the current user whose script is `script`, with `extra` submit lines.
pub fn job(root: &Path, name: &str, extra: &str, cluster: i64) -> ClassAd {
    let iwd = root.join("users").join(name);
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\necho hi\n").unwrap();
    let submit = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\n{extra}\nqueue\n",
        iwd.display()
    );
    job_ads(&[(name.to_owned(), submit, cluster)]).remove(0)
}

fn translate_stdin(ad: &ClassAd) -> String {
    format!(
        "[ Name = \"VMCapsule\"; TargetUniverse = 13 ]\n------\n{}",
        print_ad(ad)
    )
}

/// A fake "tarball install" of HTCondor under `<root>/condor`, outside PATH: `bin/` holds
/// STAND-INS for `condor_config_val` (HTCondor's own configuration reader, see
/// tests/condor_config_val.py) and `condor_hold` (records its arguments in `holds.log`);
/// `etc/condor_config` names `RELEASE_DIR` and holds `config`.
pub struct Tarball {
    pub prefix: PathBuf,
    pub config: PathBuf,
    pub holds: PathBuf,
}

impl Tarball {
    pub fn new(root: &Path, config: &str) -> Tarball {
        let prefix = root.join("condor");
        let bin_dir = prefix.join("bin");
        fs::create_dir_all(&bin_dir).unwrap();
        fs::create_dir_all(prefix.join("etc")).unwrap();
        // The router's PATH has no python with HTCondor's library: name the one that has it.
        let stand_in = fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/condor_config_val.py"
        ))
        .unwrap();
        let body = stand_in.split_once('\n').unwrap().1;
        fs::write(
            bin_dir.join("condor_config_val"),
            format!("#!{}\n{body}", python_with_htcondor().display()),
        )
        .unwrap();
        let holds = root.join("holds.log");
        fs::write(
            bin_dir.join("condor_hold"),
            format!(
                "#!/bin/sh\n# STAND-IN for condor_hold: records its arguments\nprintf '%s\\n' \"$*\" >> {}\necho \"Job $# held\"\n",
                holds.display()
            ),
        )
        .unwrap();
        chmod(&bin_dir.join("condor_config_val"), 0o755);
        chmod(&bin_dir.join("condor_hold"), 0o755);
        let config_file = prefix.join("etc/condor_config");
        fs::write(
            &config_file,
            format!(
                "RELEASE_DIR = {}\nBIN = $(RELEASE_DIR)/bin\n{config}",
                prefix.display()
            ),
        )
        .unwrap();
        Tarball {
            prefix,
            config: config_file,
            holds,
        }
    }
}

/// The python interpreter that has HTCondor's library (`python3` on the tests' PATH).
pub fn python_with_htcondor() -> PathBuf {
    let out = run_ok_needs(
        Command::new("python3")
            .args(["-c", "import htcondor, sys; print(sys.executable)"])
            .env("CONDOR_CONFIG", "/dev/null"),
        "python3 with HTCondor's library is needed (pip install 'htcondor==24.0.*')",
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The router's environment with knobs only from the configuration (no `_CONDOR_` ones).
fn router_env(pool: &mut Pool, condor_config: &Path) {
    pool.env.retain(|(k, _)| !k.starts_with("_CONDOR_"));
    pool.env.retain(|(k, _)| k != "CONDOR_CONFIG");
    pool.env
        .push(("CONDOR_CONFIG".into(), condor_config.display().to_string()));
}

/// The pool's `_CONDOR_` knobs as configuration lines.
pub fn knob_lines(pool: &Pool) -> String {
    let mut out = String::new();
    for (k, v) in &pool.env {
        if let Some(knob) = k.strip_prefix("_CONDOR_") {
            out.push_str(&format!("{knob} = {v}\n"));
        }
    }
    out
}

#[test]
fn tools_found_in_a_tarball_install_outside_path() {
    let mut pool = Pool::new(&kvm_template);
    let tarball = Tarball::new(pool.root.path(), &knob_lines(&pool));
    router_env(&mut pool, &tarball.config);
    assert_eq!(
        pool.env.iter().find(|(k, _)| k == "PATH").unwrap().1,
        "/usr/bin:/bin",
        "the router's PATH"
    );

    // Knobs come through the stand-in condor_config_val found from BIN, not PATH.
    let ad = job(pool.root.path(), "tarball-ok", "", 301);
    let routed = pool.translate(&ad).unwrap();
    assert_eq!(evaluate_attr(&routed, "JobUniverse"), Value::Integer(13));

    // A job problem is a hold, through the stand-in condor_hold.
    let ad = job(
        pool.root.path(),
        "tarball-missing",
        "transfer_input_files = nope.dat",
        302,
    );
    let run = pool.run_hook("translate", &translate_stdin(&ad));
    assert_ne!(run.code, 0);
    let holds = fs::read_to_string(&tarball.holds).unwrap();
    assert!(
        holds.contains("302.0") && holds.contains("nope.dat"),
        "{holds}"
    );

    // No BIN, no RELEASE_DIR, nothing on PATH: the error says exactly that.
    let ad = job(pool.root.path(), "tarball-none", "", 303);
    pool.env.retain(|(k, _)| k != "CONDOR_CONFIG");
    let bare = pool.root.path().join("bare_config");
    fs::write(&bare, "# nothing\n").unwrap();
    pool.env
        .push(("CONDOR_CONFIG".into(), bare.display().to_string()));
    let run = pool.run_hook("translate", &translate_stdin(&ad));
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("VM_CAPSULE_TEMPLATE is not set")
            && run.stderr.contains("condor_config_val not found")
            && run.stderr.contains("names no BIN or RELEASE_DIR")
            && run.stderr.contains("not on PATH (/usr/bin:/bin)"),
        "{}",
        run.stderr
    );
}

#[test]
fn tools_found_beside_the_daemon_that_started_the_hook() {
    // A stand-in "router": a copy of the shell named condor_job_router in <prefix>/sbin, with
    // the tools in <prefix>/bin; no configuration names them.
    let mut pool = Pool::new(&kvm_template);
    let prefix = pool.root.path().join("opt-condor");
    let tarball = Tarball::new(&prefix, &knob_lines(&pool));
    fs::create_dir_all(tarball.prefix.join("sbin")).unwrap();
    let router = tarball.prefix.join("sbin/condor_job_router");
    fs::copy(fs::canonicalize("/bin/sh").unwrap(), &router).unwrap();
    // CONDOR_CONFIG names the knobs but no BIN: only the daemon's dir finds the tools.
    let knobs_only = pool.root.path().join("knobs_only");
    fs::write(&knobs_only, knob_lines(&pool)).unwrap();
    router_env(&mut pool, &knobs_only);
    let ad = job(pool.root.path(), "beside", "", 304);
    let hook = pool.hooks_dir.join("vm-capsule-translate");
    let out = assert_ok(
        crate::router::output_with_stdin(
            Command::new(&router)
                .arg("-c")
                .arg(format!("{}; exit $?", hook.display()))
                .env_clear()
                .envs(pool.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .current_dir(&pool.cwd),
            translate_stdin(&ad).as_bytes(),
            "/bin/sh as the stand-in daemon",
        ),
        "the translate hook beside the daemon",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("JobUniverse = 13"));
}

#[test]
fn hook_logs_per_owner_with_levels_and_one_warning_when_unopenable() {
    let mut pool = Pool::new(&kvm_template);
    let logs = pool.root.path().join("logs");
    fs::create_dir(&logs).unwrap();
    chmod(&logs, 0o1777);
    let set = |pool: &mut Pool, knob: &str, value: String| {
        pool.env.retain(|(k, _)| k != &format!("_CONDOR_{knob}"));
        pool.env.push((format!("_CONDOR_{knob}"), value));
    };
    set(
        &mut pool,
        "VM_CAPSULE_TRANSLATE_LOG",
        logs.join("TranslateLog").display().to_string(),
    );
    set(&mut pool, "VM_CAPSULE_MAX_TRANSLATE_LOG", "600".into());

    // Success: nothing on stderr (the router logs every stderr line as a warning).
    for i in 0..4 {
        let ad = job(pool.root.path(), &format!("log-{i}"), "", 320 + i);
        let run = pool.run_hook("translate", &translate_stdin(&ad));
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(run.stderr, "", "info lines must not reach stderr");
    }
    let file = logs.join(format!("TranslateLog.{}", current_user()));
    let text = fs::read_to_string(&file).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("translating job"))
        .unwrap_or_else(|| panic!("{text}"));
    // 2026-11-28T14:03:07.123+01:00 INFO  translate[4242] 323.0: translating job ...
    let mut words = line.split_whitespace();
    let stamp = words.next().unwrap();
    assert!(
        stamp.len() == 29 && stamp.as_bytes()[10] == b'T' && stamp.contains('.'),
        "{line}"
    );
    assert_eq!(words.next(), Some("INFO"));
    assert!(words.next().unwrap().starts_with("translate["));
    assert!(words.next().unwrap().ends_with(".0:"), "{line}");
    // Rotation at 600 bytes keeps one old file.
    let old = logs.join(format!("TranslateLog.{}.old", current_user()));
    assert!(old.exists(), "no rotation: {} bytes", text.len());
    assert!(fs::metadata(&file).unwrap().len() < 1200);

    // A log that cannot be opened: one warning, the hook still works.
    let nowhere = pool.root.path().join("no-such-dir/TranslateLog");
    set(
        &mut pool,
        "VM_CAPSULE_TRANSLATE_LOG",
        nowhere.display().to_string(),
    );
    let ad = job(pool.root.path(), "log-nowhere", "", 330);
    let run = pool.run_hook("translate", &translate_stdin(&ad));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].contains("cannot open the hook log") && lines[0].contains("install -d -m 1777"),
        "{}",
        lines[0]
    );
}

#[test]
fn install_hooks_refuses_world_writable_and_writes_the_snippet() {
    let t = tempfile::tempdir().unwrap();
    let open = t.path().join("open");
    fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let out = Command::new(bin("vm-capsule"))
        .arg("install-hooks")
        .arg(&open)
        .arg("--print")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing") && err.contains("world-writable"),
        "{err}"
    );
    // Below a world-writable parent without the sticky bit, too.
    let out = Command::new(bin("vm-capsule"))
        .arg("install-hooks")
        .arg(open.join("hooks"))
        .arg("--print")
        .output()
        .unwrap();
    assert!(!out.status.success());

    // A good dir: links, and the snippet written where asked, with every knob; an earlier
    // version's probe link goes.
    let hooks = t.path().join("hooks");
    fs::create_dir(&hooks).unwrap();
    std::os::unix::fs::symlink(bin("vm-capsule"), hooks.join("vm-capsule-probe")).unwrap();
    let conf = t.path().join("50-vm-capsule.conf");
    let out = Command::new(bin("vm-capsule"))
        .arg("install-hooks")
        .arg(&hooks)
        .arg("--config-file")
        .arg(&conf)
        .args(["--agent", "/bin/bash"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: the guest agent") && err.contains("dynamically linked"),
        "{err}"
    );
    // The probe is the program itself with an argument (the startd cron's argv[0] is the
    // job's name): no link for it.
    assert!(!hooks.join("vm-capsule-probe").exists());
    for name in ["translate", "update", "finalize", "cleanup", "libvirt-xml"] {
        let link = hooks.join(format!("vm-capsule-{name}"));
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{name}"
        );
    }
    let text = fs::read_to_string(&conf).unwrap();
    for knob in vm_capsule_core::settings::KNOBS {
        assert!(
            text.contains(knob.name),
            "{} missing from the snippet",
            knob.name
        );
    }
    assert!(text.contains("JOB_ROUTER.PIPE_BUFFER_MAX = 1048576"));
    assert!(text.contains("VM_CAPSULE_INIT_SCRIPT_PATH = /bin/bash"));
    // An existing, different file is not overwritten without --force; a missing agent warns.
    let out = Command::new(bin("vm-capsule"))
        .arg("install-hooks")
        .arg(&hooks)
        .arg("--config-file")
        .arg(&conf)
        .args(["--agent", "/nonexistent/capsule-init"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("/nonexistent/capsule-init") && err.contains("--force"),
        "{err}"
    );
}

#[test]
fn the_snippet_reads_the_same_in_htcondor() {
    // HTCondor's own configuration reader (through the stand-in condor_config_val) on the
    // snippet install-hooks prints.
    let t = tempfile::tempdir().unwrap();
    let out = run_ok(
        Command::new(bin("vm-capsule"))
            .arg("install-hooks")
            .arg(t.path().join("hooks"))
            .arg("--print"),
    );
    let conf = t.path().join("condor_config");
    fs::write(&conf, &out.stdout).unwrap();
    let ask = |args: &[&str]| {
        let out = run_ok(
            Command::new("python3")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/condor_config_val.py"
                ))
                .args(args)
                .env("CONDOR_CONFIG", &conf),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        ask(&["VMCAPSULE_HOOK_JOB_FINALIZE"]),
        t.path()
            .join("hooks/vm-capsule-finalize")
            .display()
            .to_string()
    );
    assert_eq!(ask(&["JOB_ROUTER_ROUTE_NAMES"]), "VMCapsule_vanilla");
    assert!(ask(&["JOB_ROUTER_ROUTE_VMCapsule_vm"]).contains("UNIVERSE VM"));
    assert!(ask(&["JOB_ROUTER_ROUTE_VMCapsule_vanilla"]).contains("UNIVERSE VANILLA"));
    assert_eq!(
        ask(&["-subsystem", "JOB_ROUTER", "PIPE_BUFFER_MAX"]),
        "1048576"
    );
    assert!(ask(&["STARTD_CRON_JOBLIST"]).contains("VMCAPSULE"));
    let dump = ask(&["-dump", "VM_CAPSULE_"]);
    assert!(
        dump.contains("VM_CAPSULE_TEMPLATE = /var/lib/vm-capsule/template"),
        "{dump}"
    );
}

#[test]
fn probe_advertises_qemu_kvm_and_version() {
    let run = |extra: &[(&str, &str)]| {
        // As a startd cron job: argv[0] the job's name, the command from _ARGS.
        use std::os::unix::process::CommandExt;
        let out = run_ok(
            Command::new(bin("vm-capsule"))
                .arg0("VMCAPSULE")
                .arg("probe")
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("CONDOR_CONFIG", "/dev/null")
                .envs(extra.iter().copied()),
        );
        let text = String::from_utf8(out.stdout).unwrap();
        crate::router::assert_lines_parse_in_htcondor(&text);
        classad::parse_old_ad(&text).unwrap()
    };
    let ad = run(&[]);
    assert_eq!(
        evaluate_attr(&ad, "HasVMCapsuleQemu"),
        Value::Bool(true),
        "{}",
        print_ad(&ad)
    );
    assert_eq!(
        evaluate_attr(&ad, "VMCapsuleVersion"),
        Value::String(env!("CARGO_PKG_VERSION").into())
    );
    match evaluate_attr(&ad, "VMCapsuleKvm") {
        Value::Bool(true) => {}
        Value::Bool(false) => assert!(matches!(
            evaluate_attr(&ad, "VMCapsuleKvmReason"),
            Value::String(s) if !s.is_empty()
        )),
        v => panic!("VMCapsuleKvm = {v:?}"),
    }
    let ad = run(&[("_CONDOR_VM_CAPSULE_QEMU", "/nonexistent/qemu")]);
    assert_eq!(evaluate_attr(&ad, "HasVMCapsuleQemu"), Value::Bool(false));
    assert!(matches!(
        evaluate_attr(&ad, "VMCapsuleUnusableReason"),
        Value::String(s) if s.contains("VM_CAPSULE_QEMU = /nonexistent/qemu")
    ));
}

#[test]
fn shipped_programs_are_static() {
    for name in ["vm-capsule", "capsule-init"] {
        let path = bin(name);
        let out = Command::new("ldd").arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("statically linked") || text.contains("not a dynamic executable"),
            "{}: {text}",
            path.display()
        );
        assert_eq!(
            vm_capsule_core::agent::linkage(&path).unwrap(),
            vm_capsule_core::agent::Linkage::Static
        );
    }
    // Installed with dpkg -i: postinst made the directories every job owner writes.
    if crate::router::installed_root().as_deref() == Some(Path::new("/")) {
        use std::os::unix::fs::MetadataExt;
        for d in ["/var/log/vm-capsule", "/var/lib/vm-capsule/scratch"] {
            let m = fs::metadata(d).unwrap();
            assert_eq!((m.mode() & 0o7777, m.uid()), (0o1777, 0), "{d}");
        }
    }
    // The agent the hooks ship reports the hooks' version.
    assert_eq!(
        vm_capsule_core::agent::version(&capsule_init()).as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn translate_refuses_a_dynamic_agent() {
    let mut pool = Pool::new(&kvm_template);
    pool.env
        .retain(|(k, _)| k != "_CONDOR_VM_CAPSULE_INIT_SCRIPT_PATH");
    let sh = fs::canonicalize("/bin/sh").unwrap();
    pool.env.push((
        "_CONDOR_VM_CAPSULE_INIT_SCRIPT_PATH".into(),
        sh.display().to_string(),
    ));
    let ad = job(pool.root.path(), "dynamic-agent", "", 340);
    let run = pool.run_hook("translate", &translate_stdin(&ad));
    assert_ne!(run.code, 0);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr.contains("VM_CAPSULE_INIT_SCRIPT_PATH")
            && run.stderr.contains("dynamically linked"),
        "{}",
        run.stderr
    );
}

#[test]
fn man_pages_and_completions() {
    let t = tempfile::tempdir().unwrap();
    let (man, comp) = match crate::router::installed_root() {
        Some(root) => (
            root.join("usr/share/man/man1"),
            root.join("usr/share/bash-completion/completions"),
        ),
        None => {
            let t = t.path();
            run_ok(
                Command::new(bin("vm-capsule"))
                    .arg("generate")
                    .arg("--man-dir")
                    .arg(t.join("man"))
                    .arg("--completions-dir")
                    .arg(t.join("comp")),
            );
            (t.join("man"), t.join("comp"))
        }
    };
    let page = |name: &str| -> String {
        let plain = man.join(format!("{name}.1"));
        if plain.exists() {
            return fs::read_to_string(plain).unwrap();
        }
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(man.join(format!("{name}.1.gz")))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(page("vm-capsule").contains(".TH vm-capsule 1"));
    let doctor = page("vm-capsule-doctor");
    assert!(
        doctor.contains(".TH vm-capsule-doctor") && doctor.contains("json"),
        "{doctor}"
    );
    // Packaged as bash-completion wants it (`vm-capsule`), generated as `vm-capsule.bash`.
    let bash = ["vm-capsule", "vm-capsule.bash"]
        .iter()
        .map(|n| comp.join(n))
        .find(|p| p.exists())
        .unwrap();
    let bash = fs::read_to_string(bash).unwrap();
    assert!(bash.contains("install-hooks") && bash.contains("doctor"));
}

/// Issue 13.4: the pool's mistake (here a template that is gone) holds no job, and is said
/// loudly once per polling period, not once per job: the router runs translate for every
/// idle job each poll.
#[test]
fn an_admin_problem_holds_no_job_and_is_said_once_per_poll() {
    let mut pool = Pool::new(&kvm_template);
    let logs = pool.root.path().join("logs");
    fs::create_dir(&logs).unwrap();
    chmod(&logs, 0o1777);
    pool.env.retain(|(k, _)| {
        k != "_CONDOR_VM_CAPSULE_TRANSLATE_LOG" && k != "_CONDOR_VM_CAPSULE_TEMPLATE"
    });
    pool.env.push((
        "_CONDOR_VM_CAPSULE_TRANSLATE_LOG".into(),
        logs.join("TranslateLog").display().to_string(),
    ));
    pool.env.push((
        "_CONDOR_VM_CAPSULE_TEMPLATE".into(),
        pool.root.path().join("gone").display().to_string(),
    ));
    let mut loud = 0;
    for i in 0..5 {
        let ad = job(pool.root.path(), &format!("admin-{i}"), "", 340 + i);
        let run = pool.translate(&ad).unwrap_err();
        assert!(!run.stderr.contains("condor_hold"), "{}", run.stderr);
        if run.stderr.contains("template") {
            loud += 1;
        }
    }
    assert_eq!(loud, 1, "said on stderr once, not once per job");
    let text = fs::read_to_string(logs.join(format!("TranslateLog.{}", current_user()))).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.contains(" ERROR ")).count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("cannot be read (check VM_CAPSULE_TEMPLATE"),
        "{text}"
    );
}
