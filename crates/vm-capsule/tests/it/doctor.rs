//! `vm-capsule doctor` against a good and a deliberately broken configuration:
//! the findings, the exit code, the JSON. The good one is read the way a pool reads it,
//! through condor_config_val (the stand-in built on HTCondor's configuration reader) found
//! in a fake tarball install outside PATH; the broken one with `--config FILE`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value as Json;

use crate::cmd::run_ok;
use crate::execute_node::capsule_init;
use crate::ops::{kvm_template, Tarball};
use crate::router::{bin, Pool};

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn snippet(hooks: &Path) -> String {
    let out = run_ok(
        Command::new(bin("vm-capsule"))
            .arg("install-hooks")
            .arg(hooks)
            .arg("--print"),
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run doctor with `args` and this environment; (exit code, JSON findings, text report).
fn doctor(args: &[&str], env: &[(&str, String)]) -> (i32, Json, String) {
    let run = |json: bool| {
        let mut cmd = Command::new(bin("vm-capsule"));
        cmd.arg("doctor")
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    let out = run(true);
    let json: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let text = run(false);
    assert_eq!(text.status.code(), out.status.code());
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&text.stdout).into_owned(),
    )
}

fn finding<'a>(json: &'a Json, check: &str) -> &'a Json {
    json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no finding {check} in {json:#}"))
}

fn status(json: &Json, check: &str) -> String {
    finding(json, check)["status"].as_str().unwrap().to_owned()
}

fn detail(json: &Json, check: &str) -> String {
    finding(json, check)["detail"].as_str().unwrap().to_owned()
}

/// A directory every job owner may write, made as the docs say (root-owned 1777 when we are
/// root, as CI is).
fn shared_dir(p: &Path) {
    fs::create_dir_all(p).unwrap();
    chmod(p, 0o1777);
}

#[test]
fn doctor_passes_a_good_submit_configuration() {
    let pool = Pool::new(&kvm_template);
    let root = pool.root.path();
    let scratch = root.join("scratch");
    shared_dir(&scratch);
    let logs = root.join("logs");
    shared_dir(&logs);
    let knobs = format!(
        "{}\nDAEMON_LIST = MASTER SCHEDD JOB_ROUTER\nVM_CAPSULE_TEMPLATE = {}\nVM_CAPSULE_SCRATCH_DIR_PREFIX = {}\nVM_CAPSULE_TRANSLATE_LOG = {}/TranslateLog\nVM_CAPSULE_EXIT_LOG = {}/ExitLog\nVM_CAPSULE_INIT_SCRIPT_PATH = {}\n",
        snippet(&pool.hooks_dir),
        root.join("template").display(),
        scratch.display(),
        logs.display(),
        logs.display(),
        capsule_init().display()
    );
    let tarball = Tarball::new(root, &knobs);
    let env = [("CONDOR_CONFIG", tarball.config.display().to_string())];
    let (code, json, text) = doctor(&["submit"], &env);
    let root_user = rustix::process::geteuid().is_root();
    if root_user {
        assert_eq!(code, 0, "{text}");
        assert_eq!(json["ok"], true);
        assert!(text.contains("ready: 0 problem(s)"), "{text}");
        assert_eq!(status(&json, "VM_CAPSULE_SCRATCH_DIR_PREFIX"), "ok");
    } else {
        // Only root can make the prefix root-owned; doctor says so.
        assert!(detail(&json, "VM_CAPSULE_SCRATCH_DIR_PREFIX").contains("not root"));
    }
    assert!(
        detail(&json, "configuration").contains("condor_config_val"),
        "read through the tool found in the tarball's BIN: {json:#}"
    );
    for check in [
        "knobs",
        "VMCAPSULE_HOOK_TRANSLATE_JOB",
        "VMCAPSULE_HOOK_JOB_FINALIZE",
        "VM_CAPSULE_INIT_SCRIPT_PATH",
        "VM_CAPSULE_TEMPLATE",
        "VM_CAPSULE_FLAVOUR",
        "JOB_ROUTER_ROUTE_VMCapsule_vanilla",
        "PIPE_BUFFER_MAX",
        "DAEMON_LIST",
        "condor_hold",
    ] {
        assert_eq!(status(&json, check), "ok", "{check}: {json:#}");
    }
    assert!(detail(&json, "VM_CAPSULE_INIT_SCRIPT_PATH").contains("static"));
    assert!(detail(&json, "VM_CAPSULE_TEMPLATE").contains("kvm template"));
}

#[test]
fn doctor_names_each_mistake_of_a_broken_submit_configuration() {
    let pool = Pool::new(&kvm_template);
    let root = pool.root.path();
    // Hooks in a world-writable directory (HTCondor refuses them).
    let open = root.join("open-hooks");
    fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let exe = fs::canonicalize(bin("vm-capsule")).unwrap();
    std::os::unix::fs::symlink(&exe, open.join("vm-capsule-translate")).unwrap();
    let scratch = root.join("scratch-0755");
    fs::create_dir(&scratch).unwrap();
    chmod(&scratch, 0o755);
    let sh = fs::canonicalize("/bin/sh").unwrap();
    let config = root.join("broken_config");
    let tarball = Tarball::new(&root.join("t"), "");
    fs::write(
        &config,
        format!(
            "RELEASE_DIR = {}\nJOB_ROUTER_HOOK_KEYWORD = VMCAPSULE\n\
             VMCAPSULE_HOOK_TRANSLATE_JOB = {}/vm-capsule-translate\n\
             VMCAPSULE_HOOK_JOB_FINALIZE = {}/vm-capsule-finalize\n\
             JOB_ROUTER_ROUTE_NAMES = Mine\nJOB_ROUTER_ROUTE_Mine @=rt\n  REQUIREMENTS WantJobRouter is true\n@rt\n\
             VM_CAPSULE_TEMPLATE = {}/no-such-template\nVM_CAPSULE_SCRATCH_DIR_PREFIX = {}\n\
             VM_CAPSULE_INIT_SCRIPT_PATH = {}\nVM_CAPSULE_BOGUS = 1\nVM_CAPSULE_MAX_EXIT_LOG = lots\n",
            tarball.prefix.display(),
            open.display(),
            root.join("nowhere").display(),
            root.display(),
            scratch.display(),
            sh.display()
        ),
    )
    .unwrap();
    let env = [("CONDOR_CONFIG", config.display().to_string())];
    let (code, json, text) = doctor(&["submit", "--config", config.to_str().unwrap()], &env);
    assert_eq!(code, 1, "{text}");
    assert_eq!(json["ok"], false);
    assert!(text.contains("NOT READY"), "{text}");
    let expect = [
        ("VM_CAPSULE_TEMPLATE", "fail", "no-such-template"),
        ("VM_CAPSULE_SCRATCH_DIR_PREFIX", "fail", "mode 755"),
        ("VMCAPSULE_HOOK_TRANSLATE_JOB", "fail", "world-writable"),
        ("VMCAPSULE_HOOK_JOB_FINALIZE", "fail", "nowhere"),
        ("VMCAPSULE_HOOK_JOB_CLEANUP", "warn", "not set"),
        ("JOB_ROUTER_ROUTE_Mine", "fail", "no UNIVERSE line"),
        ("PIPE_BUFFER_MAX", "fail", "10240"),
        ("VM_CAPSULE_INIT_SCRIPT_PATH", "fail", "dynamically linked"),
        ("knobs", "warn", "VM_CAPSULE_BOGUS"),
        ("VM_CAPSULE_MAX_EXIT_LOG", "fail", "lots"),
        ("DAEMON_LIST", "warn", "JOB_ROUTER is not in DAEMON_LIST"),
    ];
    for (check, want, text) in expect {
        assert_eq!(status(&json, check), want, "{check}: {json:#}");
        assert!(
            detail(&json, check).contains(text),
            "{check}: {}",
            detail(&json, check)
        );
        assert!(
            !finding(&json, check)["fix"].is_null(),
            "{check} has no fix"
        );
    }
}

#[test]
fn doctor_checks_the_execute_side() {
    let t = tempfile::tempdir().unwrap();
    let config = t.path().join("condor_config");
    fs::write(&config, "VM_TYPE = kvm\nVM_STATUS_INTERVAL = 60\n").unwrap();
    let env = [("CONDOR_CONFIG", "/dev/null".to_owned())];
    let args = ["execute", "--config", config.to_str().unwrap()];
    let (_, json, text) = doctor(&args, &env);
    assert_eq!(status(&json, "QEMU"), "ok", "{text}");
    assert!(detail(&json, "QEMU").contains("version"));
    assert!(["ok", "warn"].contains(&status(&json, "KVM").as_str()));
    assert_eq!(status(&json, "startd probe"), "warn");
    assert!(detail(&json, "startd probe").contains("HasVMCapsuleQemu = true"));
    assert_eq!(status(&json, "VM_MEMORY"), "fail");
    assert_eq!(status(&json, "LIBVIRT_XML_SCRIPT"), "fail");
    assert!(detail(&json, "LIBVIRT_XML_SCRIPT").contains("name host files"));
    assert_eq!(status(&json, "VM_STATUS_INTERVAL"), "info");

    // The pool's flavour says what this node needs.
    fs::write(&config, "VM_CAPSULE_FLAVOUR = vanilla\n").unwrap();
    let (code, json, text) = doctor(&args, &env);
    assert_eq!(code, 1, "{text}");
    assert_eq!(status(&json, "startd probe"), "fail", "{text}");
    assert_eq!(status(&json, "VM_TYPE"), "info", "{text}");
    fs::write(&config, "VM_CAPSULE_FLAVOUR = vm\n").unwrap();
    let (code, json, text) = doctor(&args, &env);
    assert_eq!(code, 1, "{text}");
    assert_eq!(status(&json, "startd probe"), "info", "{text}");
    assert_eq!(status(&json, "VM_TYPE"), "fail", "{text}");

    let env = [
        ("CONDOR_CONFIG", "/dev/null".to_owned()),
        ("_CONDOR_VM_CAPSULE_QEMU", "/nonexistent/qemu".to_owned()),
    ];
    let (code, json, _) = doctor(&args, &env);
    assert_eq!(code, 1);
    assert_eq!(status(&json, "QEMU"), "fail");
    assert!(detail(&json, "QEMU").contains("VM_CAPSULE_QEMU = /nonexistent/qemu"));
}

/// Network on request: `nat` needs passt, and doctor says so naming the knob.
#[test]
fn doctor_checks_the_network_helper() {
    let t = tempfile::tempdir().unwrap();
    let config = t.path().join("condor_config");
    let args = ["execute", "--config", config.to_str().unwrap()];
    let env = [("CONDOR_CONFIG", "/dev/null".to_owned())];
    fs::write(&config, "VM_CAPSULE_NETWORK = nat\n").unwrap();
    let (_, json, text) = doctor(&args, &env);
    assert_eq!(status(&json, "network"), "ok", "{text}");
    assert!(detail(&json, "network").contains("passt"), "{text}");
    fs::write(
        &config,
        "VM_CAPSULE_NETWORK = nat\nVM_CAPSULE_PASST = /nonexistent/passt\n",
    )
    .unwrap();
    let (code, json, text) = doctor(&args, &env);
    assert_eq!(code, 1, "{text}");
    assert_eq!(status(&json, "network"), "fail", "{text}");
    assert!(
        detail(&json, "network").contains("VM_CAPSULE_PASST = /nonexistent/passt"),
        "{text}"
    );
    fs::write(&config, "").unwrap();
    let (_, json, text) = doctor(&args, &env);
    assert!(detail(&json, "network").starts_with("none"), "{text}");
}

#[test]
fn doctor_runs_the_probe_and_the_libvirt_script_as_htcondor_does() {
    let t = tempfile::tempdir().unwrap();
    let exe = fs::canonicalize(bin("vm-capsule")).unwrap();
    // The first packaged form: links by the commands' names, no arguments.
    let links = t.path().join("links");
    fs::create_dir(&links).unwrap();
    for name in ["probe", "libvirt-xml"] {
        std::os::unix::fs::symlink(&exe, links.join(format!("vm-capsule-{name}"))).unwrap();
    }
    let config = t.path().join("condor_config");
    let run = |text: String| {
        fs::write(&config, format!("VM_TYPE = kvm\nVM_MEMORY = 1024\n{text}")).unwrap();
        let env = [("CONDOR_CONFIG", "/dev/null".to_owned())];
        doctor(&["execute", "--config", config.to_str().unwrap()], &env)
    };
    let (code, json, text) = run(format!(
        "STARTD_CRON_JOBLIST = VMCAPSULE\nSTARTD_CRON_VMCAPSULE_EXECUTABLE = {0}/vm-capsule-probe\nSTARTD_CRON_VMCAPSULE_PERIOD = 10m\nLIBVIRT_XML_SCRIPT = {0}/vm-capsule-libvirt-xml\n",
        links.display()
    ));
    assert_eq!(code, 1, "{text}");
    assert_eq!(status(&json, "startd probe"), "fail", "{text}");
    let probe = detail(&json, "startd probe");
    assert!(
        probe.contains("broken")
            && probe.contains("argv[0] `VMCAPSULE`")
            && probe.contains("exits 2"),
        "{probe}"
    );
    let fix = finding(&json, "startd probe")["fix"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        fix.contains(&format!(
            "STARTD_CRON_VMCAPSULE_EXECUTABLE = {}, STARTD_CRON_VMCAPSULE_ARGS = probe",
            exe.display()
        )),
        "{fix}"
    );
    // The vm-gahp runs a link by its path: that form works.
    assert_eq!(status(&json, "LIBVIRT_XML_SCRIPT"), "ok", "{text}");

    // The shipped form: the program, the command as an argument.
    let (_, json, text) = run(format!(
        "STARTD_CRON_JOBLIST = VMCAPSULE\nSTARTD_CRON_VMCAPSULE_EXECUTABLE = {0}\nSTARTD_CRON_VMCAPSULE_ARGS = probe\nSTARTD_CRON_VMCAPSULE_PERIOD = 10m\nLIBVIRT_XML_SCRIPT = {0}\nLIBVIRT_XML_SCRIPT_ARGS = libvirt-xml\n",
        exe.display()
    ));
    assert_eq!(status(&json, "startd probe"), "ok", "{text}");
    let probe = detail(&json, "startd probe");
    assert!(
        probe.contains("argv[0] `VMCAPSULE` and arguments [probe]")
            && probe.contains("HasVMCapsuleQemu = "),
        "{probe}"
    );
    assert_eq!(status(&json, "LIBVIRT_XML_SCRIPT"), "ok", "{text}");

    // The program without its command: broken both ways, each with the working form.
    let (code, json, text) = run(format!(
        "STARTD_CRON_JOBLIST = VMCAPSULE\nSTARTD_CRON_VMCAPSULE_EXECUTABLE = {0}\nSTARTD_CRON_VMCAPSULE_PERIOD = 10m\nLIBVIRT_XML_SCRIPT = {0}\n",
        exe.display()
    ));
    assert_eq!(code, 1, "{text}");
    assert_eq!(status(&json, "startd probe"), "fail", "{text}");
    assert_eq!(status(&json, "LIBVIRT_XML_SCRIPT"), "fail", "{text}");
    assert!(
        finding(&json, "LIBVIRT_XML_SCRIPT")["fix"]
            .as_str()
            .unwrap()
            .contains("LIBVIRT_XML_SCRIPT_ARGS = libvirt-xml"),
        "{text}"
    );

    // Another command is named, and not run (`demo` would boot a VM).
    let (code, json, text) = run(format!(
        "STARTD_CRON_JOBLIST = VMCAPSULE\nSTARTD_CRON_VMCAPSULE_EXECUTABLE = {0}\nSTARTD_CRON_VMCAPSULE_ARGS = demo\nSTARTD_CRON_VMCAPSULE_PERIOD = 10m\n",
        exe.display()
    ));
    assert_eq!(code, 1, "{text}");
    assert!(
        detail(&json, "startd probe").contains("runs `vm-capsule demo`"),
        "{text}"
    );
}

#[test]
fn doctor_is_not_ready_when_it_cannot_read_the_configuration() {
    let t = tempfile::tempdir().unwrap();
    let gone = t.path().join("no_condor_config");
    // No condor_config_val anywhere (this machine has no HTCondor install).
    let env = [("CONDOR_CONFIG", gone.display().to_string())];
    // A condor_config_val that is found (on PATH) but cannot read CONDOR_CONFIG.
    let tarball = Tarball::new(t.path(), "");
    let path = format!("{}:/usr/bin:/bin", tarball.prefix.join("bin").display());
    let env_tool = [
        ("CONDOR_CONFIG", gone.display().to_string()),
        ("PATH", path),
    ];
    for (env, why) in [
        (&env[..], "condor_config_val not found"),
        (&env_tool[..], "cannot read the configuration"),
    ] {
        for side in ["execute", "both"] {
            let (code, json, text) = doctor(&[side], env);
            assert_eq!(code, 1, "{side}: {text}");
            assert_eq!(json["ok"], false, "{side}: {text}");
            assert!(text.contains("NOT READY"), "{side}: {text}");
            let execute = json["findings"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["side"] == "execute" && f["check"] == "configuration")
                .unwrap_or_else(|| panic!("{side}: no execute-side configuration finding: {text}"));
            assert_eq!(execute["status"], "fail", "{text}");
            assert!(
                execute["detail"].as_str().unwrap().contains(why),
                "{side}: {text}"
            );
        }
    }
}

/// The node policy's five lines as the snippet has them pass; each mistake is named: an
/// expression that does not parse, `VMCapsuleJob` not advertised, a hook that is not ours, no
/// template.
#[test]
fn doctor_checks_the_node_policy() {
    let pool = Pool::new(&crate::vanilla::template("console=ttyS0 quiet panic=-1"));
    let template = pool.root.path().join("template");
    let config = pool.root.path().join("condor_config");
    let good = format!(
        "VM_CAPSULE_JOB = TARGET.Owner =!= \"trusted\"\nVMCapsuleJob = $(VM_CAPSULE_JOB)\nSTARTD_ATTRS = $(STARTD_ATTRS) VMCapsuleJob\nSTARTER_JOB_HOOK_KEYWORD = VMCAPSULE\nVMCAPSULE_HOOK_PREPARE_JOB = {}\nVM_CAPSULE_TEMPLATE = {}\n",
        pool.hooks_dir.join("vm-capsule-prepare-job").display(),
        template.display()
    );
    let env = [("CONDOR_CONFIG", "/dev/null".to_owned())];
    let policy = |text: &str| {
        fs::write(&config, text).unwrap();
        let (_, json, report) = doctor(&["execute", "--config", config.to_str().unwrap()], &env);
        let found: Vec<(String, String)> = json["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["check"] == "node policy")
            .map(|f| {
                (
                    f["status"].as_str().unwrap().to_owned(),
                    f["detail"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert!(!found.is_empty(), "{report}");
        found
    };
    let found = policy(&good);
    assert!(found.iter().all(|(s, _)| s == "ok"), "{found:?}");
    assert!(
        found
            .iter()
            .any(|(_, d)| d.contains("vm-capsule-prepare-job")),
        "{found:?}"
    );
    assert!(found.iter().any(|(_, d)| d.contains("loads")), "{found:?}");
    let broken = [
        (
            good.replace("=!= \"trusted\"", "=!= "),
            "not a ClassAd expression",
        ),
        (
            good.replace("STARTD_ATTRS = $(STARTD_ATTRS) VMCapsuleJob\n", ""),
            "does not advertise VMCapsuleJob",
        ),
        (
            good.replace("vm-capsule-prepare-job", "vm-capsule-translate"),
            "does not run `vm-capsule prepare-job`",
        ),
        (
            good.replace("STARTER_JOB_HOOK_KEYWORD = VMCAPSULE\n", ""),
            "STARTER_JOB_HOOK_KEYWORD is not set",
        ),
        (
            good.replace(&template.display().to_string(), "/nonexistent"),
            "template",
        ),
    ];
    for (text, why) in broken {
        let found = policy(&text);
        assert!(
            found.iter().any(|(s, d)| s == "fail" && d.contains(why)),
            "{why}: {found:?}"
        );
    }
    // Unset: said, not failed.
    let found = policy("VM_TYPE = kvm\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "info", "{found:?}");
}
