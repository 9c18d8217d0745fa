//! Every program HTCondor starts, started from the shipped configuration exactly as HTCondor
//! starts it: the argv[0] it passes, the arguments its knobs give, the environment, user and
//! working directory. What HTCondor 24.0 does, from its source:
//!
//! | program | started by | argv |
//! |---|---|---|
//! | startd probe | `CronJob::StartJobProcess` (cron_job.cpp) | argv[0] = the cron job's NAME, then `STARTD_CRON_<NAME>_ARGS`; as the condor user, cwd the startd's (its LOG directory) unless `_CWD` |
//! | JobRouter hooks | `HookClientMgr::spawn` (NULL args) | argv[0] = the hook's configured path, nothing else; as the job's owner, cwd the router's LOG |
//! | `LIBVIRT_XML_SCRIPT` | `VirshType::CreateVirshConfigFile` (xen_type.linux.cpp) | argv[0] = the configured path, then `LIBVIRT_XML_SCRIPT_ARGS`; as root |
//! | the vanilla launcher | `OsProc::StartJob` (os_proc.cpp) | argv[0] = `<sandbox>/<basename of Cmd>`, then `Arguments`; see `execute_node::vanilla_execute_node` |

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use classad::eval::evaluate_attr;
use classad::Value;

use crate::cmd::{assert_ok, run_ok};
use crate::execute_node::run_capsule;
use crate::ops::{job, kvm_template};
use crate::router::{bin, installed_libexec, installed_root, output_with_stdin, Pool};

/// The configuration file the package ships, naming the programs under test: the installed
/// file (its `/usr/libexec/vm-capsule` moved under an unpacked root), else the one
/// `install-hooks` writes for cargo's build.
pub fn shipped_config(dir: &Path) -> PathBuf {
    let conf = dir.join("50-vm-capsule.conf");
    match installed_root() {
        Some(root) => {
            let text =
                fs::read_to_string(root.join("etc/condor/config.d/50-vm-capsule.conf")).unwrap();
            let libexec = installed_libexec(&root);
            fs::write(
                &conf,
                text.replace("/usr/libexec/vm-capsule", &libexec.display().to_string()),
            )
            .unwrap();
        }
        None => {
            run_ok(
                Command::new(bin("vm-capsule"))
                    .arg("install-hooks")
                    .arg(dir.join("hooks"))
                    .arg("--config-file")
                    .arg(&conf),
            );
        }
    }
    conf
}

/// `name`'s value in `config`, as HTCondor's own configuration reader sees it (the
/// stand-in condor_config_val, tests/condor_config_val.py); `None` when undefined.
pub fn htcondor_param(config: &Path, name: &str) -> Option<String> {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/condor_config_val.py"
        ))
        .arg(name)
        .env("CONDOR_CONFIG", config)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// HTCondor's `ArgList::AppendArgsV1RawOrV2Quoted`: V2 inside double quotes, else V1.
fn htcondor_args(text: &str) -> Vec<String> {
    vm_capsule_core::job::args::split_v1_raw_or_v2_quoted(text, "ARGS").unwrap()
}

/// A directory the unprivileged user a program runs as can enter.
fn open_dir(p: &Path) {
    fs::create_dir_all(p).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The user HTCondor's daemons run programs as (`condor`): `nobody` here, where no HTCondor
/// is installed; none when the tests do not run as root.
fn condor_user(cmd: &mut Command) {
    if rustix::process::geteuid().is_root() {
        cmd.uid(65534).gid(65534);
    }
}

#[test]
fn the_startd_cron_runs_the_shipped_probe_with_argv0_the_job_name() {
    let t = tempfile::tempdir().unwrap();
    open_dir(t.path());
    let conf = shipped_config(t.path());
    let jobs = htcondor_param(&conf, "STARTD_CRON_JOBLIST").unwrap();
    let name = jobs
        .split([' ', ','])
        .find(|j| j.eq_ignore_ascii_case("VMCAPSULE"))
        .unwrap_or_else(|| panic!("no VMCAPSULE in STARTD_CRON_JOBLIST = {jobs}"));
    let exe = htcondor_param(&conf, &format!("STARTD_CRON_{name}_EXECUTABLE")).unwrap();
    let args = htcondor_param(&conf, &format!("STARTD_CRON_{name}_ARGS"))
        .map(|a| htcondor_args(&a))
        .unwrap_or_default();
    assert_eq!(
        htcondor_param(&conf, &format!("STARTD_CRON_{name}_CWD")),
        None
    );
    // No _CWD: the startd's own working directory, its LOG directory.
    let log = t.path().join("log");
    open_dir(&log);
    let mut cmd = Command::new(&exe);
    cmd.arg0(name)
        .args(&args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CONDOR_CONFIG", &conf)
        .current_dir(&log);
    condor_user(&mut cmd);
    let out = assert_ok(
        cmd.output().unwrap(),
        format_args!("the startd runs {exe} with argv[0] = {name} and arguments {args:?}"),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    crate::router::assert_lines_parse_in_htcondor(&text);
    let ad = classad::parse_old_ad(&text).unwrap();
    assert!(
        matches!(evaluate_attr(&ad, "HasVMCapsuleQemu"), Value::Bool(_)),
        "{text}"
    );
    assert_eq!(
        evaluate_attr(&ad, "VMCapsuleVersion"),
        Value::String(env!("CARGO_PKG_VERSION").into())
    );
}

#[test]
fn the_router_runs_the_shipped_hooks_by_their_configured_paths() {
    let t = tempfile::tempdir().unwrap();
    let conf = shipped_config(t.path());
    let keyword = htcondor_param(&conf, "JOB_ROUTER_HOOK_KEYWORD").unwrap();
    let mut dirs = Vec::new();
    for (hook, suffix) in vm_capsule_admin::snippet::HOOKS {
        let knob = format!("{keyword}_{suffix}");
        if hook == vm_capsule_admin::snippet::UNCONFIGURED_HOOK {
            // It would delay every job by a JobRouter polling period.
            assert_eq!(htcondor_param(&conf, &knob), None, "{knob}");
            continue;
        }
        let path = PathBuf::from(htcondor_param(&conf, &knob).unwrap());
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("vm-capsule-{hook}")
        );
        dirs.push(path.parent().unwrap().to_owned());
    }
    dirs.dedup();
    assert_eq!(dirs.len(), 1, "the hooks live in one directory: {dirs:?}");
    // One job through every hook, each started by its configured path with no arguments
    // (`Pool` sets argv[0] to that path, as HookClientMgr::spawn does).
    let mut pool = Pool::new(&kvm_template);
    pool.hooks_dir = dirs.remove(0);
    let ad = job(pool.root.path(), "by-path", "", 901);
    let routed = pool.translate(&ad).unwrap();
    let scratch = PathBuf::from(classad::eval::string_attr(&routed, "Iwd").unwrap());
    let disk = scratch.join(classad::eval::string_attr(&routed, "VMCapsuleDataDisk").unwrap());
    assert_ok(
        run_capsule(&disk, &pool.root.path().join("exec")),
        "capsule-init",
    );
    // The update hook is not configured, but configurations that name it still work.
    let update = pool.run_hook("update", &crate::router::print_ad(&routed));
    assert_eq!((update.code, update.stdout.as_str()), (0, ""));
    let (_, attrs) = pool.finalize(&ad, &routed);
    assert_eq!(evaluate_attr(&attrs, "ExitCode"), Value::Integer(0));
    pool.cleanup(&routed);
    assert!(!scratch.exists());
}

#[test]
fn the_vm_gahp_runs_the_shipped_libvirt_script_with_its_args() {
    let t = tempfile::tempdir().unwrap();
    let conf = shipped_config(t.path());
    let script = htcondor_param(&conf, "LIBVIRT_XML_SCRIPT").unwrap();
    let args = htcondor_param(&conf, "LIBVIRT_XML_SCRIPT_ARGS")
        .map(|a| htcondor_args(&a))
        .unwrap_or_default();
    // Another VM job's attributes: the script must say it is not ours and refuse it (exit 0
    // with a domain libvirt will not create, by default), which proves it ran as
    // `libvirt-xml` and not as a usage error (exit 2).
    let out = output_with_stdin(
        Command::new(&script)
            .arg0(&script)
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CONDOR_CONFIG", &conf),
        b"JobVMType = \"kvm\"\nVMPARAM_vm_Disk = \"os.img:vda:w\"\n",
        "the libvirt script",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{script} {args:?}: {stderr}");
    assert!(stderr.contains("refused: not a vm-capsule job"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("<domain"));
}

#[test]
fn started_with_no_command_the_program_names_argv0_and_the_fix() {
    // What the startd did with the first packaged configuration: the multi-call program by
    // a link, argv[0] = the cron job's name, no arguments.
    let out = Command::new(bin("vm-capsule"))
        .arg0("VMCAPSULE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`VMCAPSULE`") && stderr.contains("STARTD_CRON_VMCAPSULE_ARGS = probe"),
        "{stderr}"
    );
}

/// The routes HTCondor's configuration reader finds in `LOCAL_CONFIG_DIR` = `dir` holding
/// `files`, in order, with the route text of each.
fn routes(dir: &Path, files: &[(&str, String)]) -> Vec<(String, String)> {
    let local = dir.join("config.d");
    let _ = fs::remove_dir_all(&local);
    fs::create_dir_all(&local).unwrap();
    for (name, text) in files {
        fs::write(local.join(name), text).unwrap();
    }
    let top = dir.join("condor_config");
    fs::write(&top, format!("LOCAL_CONFIG_DIR = {}\n", local.display())).unwrap();
    htcondor_param(&top, "JOB_ROUTER_ROUTE_NAMES")
        .unwrap_or_default()
        .split([' ', ','])
        .filter(|n| !n.is_empty())
        .map(|n| {
            let text = htcondor_param(&top, &format!("JOB_ROUTER_ROUTE_{n}")).unwrap_or_default();
            (n.to_owned(), text)
        })
        .collect()
}

#[test]
fn one_submit_line_routes_a_job_to_the_flavour_the_pool_offers() {
    let t = tempfile::tempdir().unwrap();
    let shipped = fs::read_to_string(shipped_config(t.path())).unwrap();
    let universe = |text: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("UNIVERSE "))
            .map(str::to_owned)
    };
    // As shipped: one route, the vanilla flavour, which any node with QEMU runs.
    let found = routes(t.path(), &[("50-vm-capsule.conf", shipped.clone())]);
    assert_eq!(found.len(), 1, "{found:?}");
    let (name, text) = &found[0];
    assert_eq!(name, "VMCapsule_vanilla");
    assert_eq!(universe(text).as_deref(), Some("VANILLA"));
    // The route takes a job whose submit file has the one line, and no other job.
    let requirements = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("REQUIREMENTS "))
        .unwrap();
    let requirements = classad::parse_expr(requirements, classad::Syntax::New).unwrap();
    let root = t.path().join("jobs");
    let one_line = job(&root, "one-line", "+WantJobRouter = true", 903);
    let plain = job(&root, "plain", "", 904);
    assert_eq!(
        classad::eval::evaluate(&requirements, &one_line),
        Value::Bool(true)
    );
    assert_ne!(
        classad::eval::evaluate(&requirements, &plain),
        Value::Bool(true)
    );
    // The admin's one setting, in a file read after the package's.
    let found = routes(
        t.path(),
        &[
            ("50-vm-capsule.conf", shipped.clone()),
            ("99-local.conf", "VM_CAPSULE_FLAVOUR = vm\n".to_owned()),
        ],
    );
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["VMCapsule_vm"]);
    assert_eq!(universe(&found[0].1).as_deref(), Some("VM"));
    // A pool's own route, defined in an earlier file, is kept (and tried first).
    let found = routes(
        t.path(),
        &[
            (
                "10-mine.conf",
                "JOB_ROUTER_ROUTE_NAMES = Mine\nJOB_ROUTER_ROUTE_Mine @=rt\n  UNIVERSE GRID\n  REQUIREMENTS WantMine is true\n@rt\n".to_owned(),
            ),
            ("50-vm-capsule.conf", shipped),
        ],
    );
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Mine", "VMCapsule_vanilla"]);
}
