//! A stand-in JobRouter for host-mode tests (no pool can run here): it writes hook stdin
//! exactly as `JobRouterHookMgr` does (sorted long-format ads, the route line, `------`,
//! stdin closed), runs the hooks by their executable names with no arguments from an
//! unwritable directory with the router's environment, caps stdout at PIPE_BUFFER_MAX, checks
//! every line with HTCondor's own parser, and applies the router's edits to the routed ad
//! (`VanillaToGrid::vanillaToGrid` in HTCondor). The execute node is `capsule-init --image` on the
//! host. Everything else is real.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use classad::{ClassAd, Expr};
use serde_json::json;

use crate::cmd::{assert_ok, run_ok};
use crate::execute_node::capsule_init;

/// The JobRouter reads at most this much of a hook's stdout (`PIPE_BUFFER_MAX`).
pub const PIPE_BUFFER_MAX: usize = 10240;

/// What a hook run produced.
#[derive(Debug)]
pub struct HookRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Everything a test pool needs: hook links, knobs, template, an unwritable cwd.
pub struct Pool {
    pub root: tempfile::TempDir,
    pub hooks_dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Run the hooks as this (uid, gid), as the router runs them as the job's owner.
    pub run_as: Option<(u32, u32)>,
}

/// Run `cmd` with `stdin` written and then closed, and its stdout and stderr captured;
/// `needs` says what to install when it cannot be started.
pub fn output_with_stdin(cmd: &mut Command, stdin: &[u8], needs: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}: {needs}"));
    // A program may decide without reading its stdin and exit first: as for HTCondor, which
    // writes the ad and goes on, a closed pipe is not the test's failure.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

pub fn python_json(args: &[&str], input: &serde_json::Value) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/router.py");
    let out = assert_ok(
        output_with_stdin(
            Command::new("python3")
                .arg(script)
                .args(args)
                .env("CONDOR_CONFIG", "/dev/null"),
            input.to_string().as_bytes(),
            "python3 is needed (HTCondor's library plays condor_submit)",
        ),
        format_args!("router.py {args:?} (is `pip install 'htcondor==24.0.*'` done?)"),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Real job ads for submit descriptions, as condor_submit and the schedd would make them.
pub fn job_ads(jobs: &[(String, String, i64)]) -> Vec<ClassAd> {
    job_ads_of(&current_user(), jobs)
}

/// Job ads as [`job_ads`], submitted by `owner`.
pub fn job_ads_of(owner: &str, jobs: &[(String, String, i64)]) -> Vec<ClassAd> {
    let input: Vec<_> = jobs
        .iter()
        .map(|(name, submit, cluster)| json!({"name": name, "submit": submit, "cluster": cluster, "owner": owner}))
        .collect();
    let out = python_json(&["ads"], &json!(input));
    jobs.iter()
        .map(|(name, _, _)| {
            let text = out[name].as_str().unwrap();
            classad::parse_old_ad(text).unwrap()
        })
        .collect()
}

pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every stdout line must parse alone with HTCondor's old-syntax parser.
pub fn assert_lines_parse_in_htcondor(stdout: &str) {
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors = python_json(&["check"], &json!(lines));
    assert_eq!(errors, json!([]), "HTCondor rejects hook output lines");
}

/// The ad as the router prints it: sorted long format.
pub fn print_ad(ad: &ClassAd) -> String {
    classad::print::ad_to_hook_string(ad).unwrap()
}

/// The repository's root, without `..` (the template build refuses a path with one).
pub fn repo() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The root of an installed package (`VM_CAPSULE_INSTALLED`: `/` after `dpkg -i`, or where
/// the .deb was unpacked): the tests then run the packaged programs and hook links.
pub fn installed_root() -> Option<PathBuf> {
    std::env::var_os("VM_CAPSULE_INSTALLED")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The packaged programs' directory under an installed root.
pub fn installed_libexec(root: &Path) -> PathBuf {
    root.join("usr/libexec/vm-capsule")
}

/// Program `name` (`vm-capsule`, `capsule-init`): the installed one when testing a package,
/// else the one cargo built (`cargo test --workspace` builds both, as scripts/test.sh runs it).
pub fn bin(name: &str) -> PathBuf {
    let path = match installed_root() {
        Some(root) => installed_libexec(&root).join(name),
        None => assert_cmd::cargo::cargo_bin(name),
    };
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --workspace` (scripts/test.sh does)",
        path.display()
    );
    path
}

impl Pool {
    pub fn new(template: &dyn Fn(&Path)) -> Pool {
        let root = tempfile::tempdir().unwrap();
        let hooks_dir = match installed_root() {
            // The package's own hook links.
            Some(installed) => installed_libexec(&installed),
            None => {
                let hooks_dir = root.path().join("hooks");
                run_ok(
                    Command::new(bin("vm-capsule"))
                        .arg("install-hooks")
                        .arg("--print")
                        .arg(&hooks_dir),
                );
                hooks_dir
            }
        };
        let template_root = root.path().join("template");
        std::fs::create_dir_all(template_root.join("condor_vm_capsule")).unwrap();
        template(&template_root.join("condor_vm_capsule"));
        let scratch_prefix = root.path().join("scratch");
        std::fs::create_dir(&scratch_prefix).unwrap();
        // As an admin makes it: root-owned (these tests run as root), mode 1777.
        std::fs::set_permissions(&scratch_prefix, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let cwd = root.path().join("log");
        std::fs::create_dir(&cwd).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cwd, std::fs::Permissions::from_mode(0o555)).unwrap();
        let env = vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("HOME".into(), "/root".into()),
            ("CONDOR_CONFIG".into(), "/dev/null".into()),
            (
                "_CONDOR_VM_CAPSULE_TEMPLATE".into(),
                template_root.display().to_string(),
            ),
            (
                "_CONDOR_VM_CAPSULE_SCRATCH_DIR_PREFIX".into(),
                scratch_prefix.display().to_string(),
            ),
            (
                "_CONDOR_VM_CAPSULE_TRANSLATE_LOG".into(),
                root.path().join("translate.log").display().to_string(),
            ),
            (
                "_CONDOR_VM_CAPSULE_EXIT_LOG".into(),
                root.path().join("exit.log").display().to_string(),
            ),
            ("_CONDOR_VM_CAPSULE_OUTPUT_HEADROOM_MB".into(), "64".into()),
            // These tests run as root and play the job's owner: the hostile suite runs hooks
            // as real unprivileged users without this knob.
            ("_CONDOR_VM_CAPSULE_TEST_ANY_USER".into(), "true".into()),
            (
                "_CONDOR_VM_CAPSULE_INIT_SCRIPT_PATH".into(),
                capsule_init().display().to_string(),
            ),
        ];
        Pool {
            root,
            hooks_dir,
            env,
            cwd,
            run_as: None,
        }
    }

    /// Run hook `name` by its executable name with `stdin`, as the router does.
    pub fn run_hook(&self, name: &str, stdin: &str) -> HookRun {
        self.run_hook_bytes(name, stdin.as_bytes())
    }

    fn hook_command(&self, name: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let path = self.hooks_dir.join(format!("vm-capsule-{name}"));
        let mut cmd = Command::new(&path);
        // HookClientMgr::spawn: argv[0] is the configured path, and there are no arguments.
        cmd.arg0(&path);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// [`Pool::run_hook`] with stdin as raw bytes (ads need not be UTF-8).
    pub fn run_hook_bytes(&self, name: &str, stdin: &[u8]) -> HookRun {
        // Written, then closed (`Close_Stdin_Pipe`).
        let out = output_with_stdin(&mut self.hook_command(name), stdin, "the hook links");
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            stdout.len() <= PIPE_BUFFER_MAX,
            "{name} printed {} bytes, over PIPE_BUFFER_MAX",
            stdout.len()
        );
        assert_eq!(
            std::fs::read_dir(&self.cwd).unwrap().count(),
            0,
            "{name} wrote into its working directory"
        );
        HookRun {
            code: out.status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Start hook `name` with `stdin` written (from a thread) and return it running.
    pub fn spawn_hook(&self, name: &str, stdin: &str) -> std::process::Child {
        let mut child = self.hook_command(name).spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        let text = stdin.to_owned();
        std::thread::spawn(move || {
            let _ = input.write_all(text.as_bytes());
        });
        child
    }

    /// Start hook `name` with `stdin` and `kill -9` it after `delay_ms` (a crash).
    pub fn run_hook_killed(&self, name: &str, stdin: &str, delay_ms: u64) {
        let start = std::time::Instant::now();
        let delay = std::time::Duration::from_millis(delay_ms);
        self.run_hook_killed_when(name, stdin, &|| start.elapsed() >= delay);
    }

    /// Start hook `name` with `stdin` and `kill -9` it as soon as `now` says so (or when it
    /// ends by itself). Returns whether it was still running when killed.
    pub fn run_hook_killed_when(&self, name: &str, stdin: &str, now: &dyn Fn() -> bool) -> bool {
        let mut child = self.hook_command(name).spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        let text = stdin.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(text.as_bytes());
        });
        let mut killed = false;
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if now() {
                killed = child.kill().is_ok();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let _ = child.wait();
        let _ = writer.join();
        killed
    }

    /// Translate `job` by a vanilla-flavour route (`TargetUniverse = 5`), which must succeed;
    /// the routed ad as the hook printed it.
    pub fn translate_vanilla(&self, job: &ClassAd) -> ClassAd {
        let stdin = format!(
            "[ Name = \"V\"; TargetUniverse = 5 ]\n------\n{}",
            print_ad(job)
        );
        let run = self.run_hook("translate", &stdin);
        assert_eq!(run.code, 0, "{}", run.stderr);
        classad::parse_old_ad(&run.stdout).unwrap()
    }

    /// Translate `job`; returns the routed ad after the router's own edits, or the failed run.
    pub fn translate(&self, job: &ClassAd) -> Result<ClassAd, HookRun> {
        let stdin = format!(
            "[ Name = \"VM capsule\"; TargetUniverse = 13 ]\n------\n{}",
            print_ad(job)
        );
        let run = self.run_hook("translate", &stdin);
        if run.code != 0 {
            assert!(
                run.stdout.is_empty(),
                "a failing translate must print nothing"
            );
            return Err(run);
        }
        assert!(
            !run.stdout.is_empty(),
            "translate exited 0 with no output: the router would loop"
        );
        assert_lines_parse_in_htcondor(&run.stdout);
        let mut routed = classad::parse_old_ad(&run.stdout).unwrap();
        // FinishSubmitJob: VanillaToGrid, then the router's bookkeeping, then submit_job.
        // vanillaToGrid with the route's UNIVERSE VM: it keeps our JobUniverse as
        // Remote_JobUniverse, resets status and counters, and deletes identity attributes.
        let universe = routed.get("JobUniverse").cloned();
        if let Some(u) = universe {
            routed.insert("Remote_JobUniverse", u);
        }
        routed.insert("JobUniverse", Expr::integer(13));
        for gone in [
            "ClusterId",
            "ProcId",
            "GlobalJobId",
            "User",
            "OsUser",
            "QDate",
            "UserLog",
        ] {
            routed.remove(gone);
        }
        routed.insert("ExitStatus", Expr::integer(0));
        routed.insert("CompletionDate", Expr::integer(0));
        routed.insert("ExitBySignal", Expr::boolean(false));
        let id = |a: &str| classad::eval::evaluate_attr(job, a).as_integer().unwrap();
        routed.insert("JobStatus", Expr::integer(1));
        routed.insert(
            "RoutedFromJobId",
            Expr::string(format!("{}.{}", id("ClusterId"), id("ProcId"))),
        );
        routed.insert("RoutedBy", Expr::string("jobrouter"));
        routed.insert("RouteName", Expr::string("VM capsule"));
        routed.insert("ClusterId", Expr::integer(id("ClusterId") + 1000));
        routed.insert("ProcId", Expr::integer(0));
        routed.insert(
            "LeaveJobInQueue",
            classad::parse_expr("JobStatus == 4", classad::Syntax::New).unwrap(),
        );
        Ok(routed)
    }

    /// Finalize's stdin as the router writes it: the original (with the mirrored completion)
    /// and the completed routed ad; and the original as finalize's answer updates it.
    pub fn finalize_stdin(original: &ClassAd, routed: &ClassAd) -> (String, ClassAd) {
        let mut src = original.clone();
        let mut dest = routed.clone();
        for ad in [&mut src, &mut dest] {
            // The VM job's own completion: the vm-gahp exits 0 whatever the guest did.
            ad.insert("JobStatus", Expr::integer(4));
            ad.insert("ExitCode", Expr::integer(0));
            ad.insert("ExitBySignal", Expr::boolean(false));
        }
        src.insert("Managed", Expr::string("External"));
        (
            format!("{}\n------\n{}", print_ad(&src), print_ad(&dest)),
            src,
        )
    }

    /// Finalize: the original (with the mirrored completion) and the completed routed ad.
    pub fn finalize(&self, original: &ClassAd, routed: &ClassAd) -> (HookRun, ClassAd) {
        let (stdin, mut src) = Pool::finalize_stdin(original, routed);
        let run = self.run_hook("finalize", &stdin);
        assert_eq!(run.code, 0, "finalize must exit 0: {}", run.stderr);
        assert_lines_parse_in_htcondor(&run.stdout);
        let attrs = classad::parse_old_ad(&run.stdout).unwrap();
        src.update(&attrs);
        (run, src)
    }

    pub fn cleanup(&self, routed: &ClassAd) -> HookRun {
        let run = self.run_hook("cleanup", &print_ad(routed));
        assert_eq!(run.code, 0);
        assert!(run.stdout.is_empty());
        run
    }
}
