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

pub fn python_json(args: &[&str], input: &serde_json::Value) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/router.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .env("CONDOR_CONFIG", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed (HTCondor's library plays condor_submit)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "router.py {args:?} failed (is `pip install 'htcondor==24.0.*'` done?): {}",
        String::from_utf8_lossy(&out.stderr)
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
                let out = Command::new(bin("vm-capsule"))
                    .arg("install-hooks")
                    .arg("--print")
                    .arg(&hooks_dir)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
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
        let mut cmd = Command::new(self.hooks_dir.join(format!("vm-capsule-{name}")));
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
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
        let mut child = self.hook_command(name).spawn().unwrap();
        // Written, then closed (`Close_Stdin_Pipe`).
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
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

    /// Finalize: the original (with the mirrored completion) and the completed routed ad.
    pub fn finalize(&self, original: &ClassAd, routed: &ClassAd) -> (HookRun, ClassAd) {
        let mut src = original.clone();
        let mut dest = routed.clone();
        for ad in [&mut src, &mut dest] {
            // The VM job's own completion: the vm-gahp exits 0 whatever the guest did.
            ad.insert("JobStatus", Expr::integer(4));
            ad.insert("ExitCode", Expr::integer(0));
            ad.insert("ExitBySignal", Expr::boolean(false));
        }
        src.insert("Managed", Expr::string("External"));
        let stdin = format!("{}\n------\n{}", print_ad(&src), print_ad(&dest));
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

/// The guest agent binary (installed, or built by `cargo test --workspace`).
pub fn capsule_init() -> PathBuf {
    bin("capsule-init")
}

/// The execute node, host mode: run the guest agent on the data disk file in place.
pub fn run_capsule(disk: &Path, work: &Path) -> std::process::Output {
    Command::new(capsule_init())
        .arg("--image")
        .arg(disk)
        .arg("--scratch")
        .arg(work)
        .args(["--no-poweroff", "--as-current-user"])
        .output()
        .unwrap()
}

/// How a stand-in execute node saw the job end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Exited(i32),
    Signaled(i32),
}

/// A STAND-IN for an HTCondor execute node running a vanilla job with file transfer (no
/// startd/starter can run here): it copies `Cmd` and `TransferInput` into a fresh sandbox,
/// runs `Cmd` with `Arguments` there, then brings back `TransferOutput` (or the new and
/// changed top-level files) with `TransferOutputRemaps` and the `Out`/`Err` streams, the way
/// HTCondor's file transfer does. Returns how the process ended.
pub fn vanilla_execute_node(routed: &ClassAd, sandbox: &Path, env: &[(String, String)]) -> JobEnd {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    let text = |n: &str| match classad::eval::evaluate_attr(routed, n) {
        classad::Value::String(s) => Some(s),
        _ => None,
    };
    let iwd = PathBuf::from(text("Iwd").unwrap());
    std::fs::create_dir_all(sandbox).unwrap();
    let cmd = PathBuf::from(text("Cmd").unwrap());
    let exe = sandbox.join(cmd.file_name().unwrap());
    std::fs::copy(&cmd, &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut catalog = std::collections::BTreeMap::new();
    let mut placed = Vec::new();
    for entry in text("TransferInput")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if vm_capsule::job::transfer::is_url(entry) {
            // STAND-IN for HTCondor's curl_plugin: fetch the URL into the sandbox under the
            // last component of its path.
            let name = entry
                .split(['?', '#'])
                .next()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap();
            let dest = sandbox.join(name);
            let ok = Command::new("curl")
                .args(["-fsS", "-o"])
                .arg(&dest)
                .arg(entry)
                .status()
                .expect("curl is needed by the stand-in execute node (.ci/run installs it)");
            assert!(ok.success(), "the stand-in starter could not fetch {entry}");
            placed.push(dest);
        } else if entry.len() > 1 && entry.ends_with('/') {
            // `dir/`: the directory's contents, not the directory.
            for child in std::fs::read_dir(iwd.join(entry)).unwrap() {
                let child = child.unwrap();
                let dest = sandbox.join(child.file_name());
                copy_tree(&child.path(), &dest);
                placed.push(dest);
            }
        } else {
            let src = iwd.join(entry);
            let dest = sandbox.join(src.file_name().unwrap());
            copy_tree(&src, &dest);
            placed.push(dest);
        }
    }
    for dest in placed {
        let m = std::fs::metadata(&dest).unwrap();
        catalog.insert(
            dest.file_name().unwrap().to_owned(),
            (m.len(), m.modified().unwrap()),
        );
    }
    let args = vm_capsule::job::args::split_v2(&text("Arguments").unwrap_or_default(), "Arguments")
        .unwrap();
    // The job's own environment, as the starter sets it.
    let mut env: Vec<(String, String)> = env.to_vec();
    env.extend(
        vm_capsule::job::args::parse_env_v2(&text("Environment").unwrap_or_default()).unwrap(),
    );
    let chirp = (classad::eval::evaluate_attr(routed, "WantIOProxy") == classad::Value::Bool(true))
        .then(|| ChirpStandIn::start(sandbox));
    let stdout = std::fs::File::create(sandbox.join("_condor_stdout")).unwrap();
    let stderr = std::fs::File::create(sandbox.join("_condor_stderr")).unwrap();
    let status = Command::new(&exe)
        .args(&args)
        .current_dir(sandbox)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(stdout)
        .stderr(stderr)
        .status()
        .unwrap();
    if let Some(chirp) = chirp {
        chirp.finish(sandbox);
    }
    // Output transfer, with the user's remaps.
    let remaps =
        vm_capsule::job::transfer::parse_remaps(&text("TransferOutputRemaps").unwrap_or_default());
    let place = |name: &str, src: &Path| {
        let base = Path::new(name)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let dest = remaps
            .iter()
            .find(|(from, _)| from == name || *from == base)
            .map_or_else(|| iwd.join(&base), |(_, to)| iwd.join(to));
        copy_tree(src, &dest);
    };
    match text("TransferOutput") {
        Some(list) => {
            for name in vm_capsule::job::transfer::split_list(&list) {
                let src = sandbox.join(name.trim_end_matches('/'));
                if src.exists() {
                    place(&name, &src);
                }
            }
        }
        None => {
            for e in std::fs::read_dir(sandbox).unwrap() {
                let e = e.unwrap();
                let name = e.file_name();
                let m = e.metadata().unwrap();
                let skip = !m.is_file()
                    || name == exe.file_name().unwrap()
                    || name == "_condor_stdout"
                    || name == ".chirp.config"
                    || name == "_condor_stderr"
                    || catalog
                        .get(&name)
                        .is_some_and(|(len, t)| *len == m.len() && *t == m.modified().unwrap());
                if !skip {
                    place(&name.to_string_lossy(), &e.path());
                }
            }
        }
    }
    for (attr, file) in [("Out", "_condor_stdout"), ("Err", "_condor_stderr")] {
        if let Some(target) = text(attr).filter(|t| t != "/dev/null") {
            std::fs::copy(sandbox.join(file), iwd.join(target)).unwrap();
        }
    }
    match (status.code(), status.signal()) {
        (Some(c), _) => JobEnd::Exited(c),
        (None, Some(s)) => JobEnd::Signaled(s),
        _ => panic!("unknown end {status:?}"),
    }
}

fn copy_tree(src: &Path, dest: &Path) {
    if src.is_dir() {
        std::fs::create_dir_all(dest).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &dest.join(e.file_name()));
        }
    } else {
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::copy(src, dest).unwrap();
    }
}

/// Every file under `dir` as (path relative to `dir`, contents), sorted.
pub fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Kernel, initrd and static agent of the test guest, built (or reused) by the repo script.
pub fn test_guest() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(repo.join("scripts/build-test-guest.sh"))
        .current_dir(&repo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/build-test-guest.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    PathBuf::from(last).parent().unwrap().to_owned()
}

/// A STAND-IN for the starter's Chirp server (no starter can run here): it writes
/// `.chirp.config` into the sandbox, accepts `cookie` and `set_job_attr` lines as HTCondor's
/// Chirp protocol has them, answers `0`, and records the attributes in
/// `<sandbox>/../<sandbox name>.chirp` (outside the sandbox, so output transfer ignores it).
pub struct ChirpStandIn {
    thread: std::thread::JoinHandle<Vec<(String, String)>>,
    job_ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ChirpStandIn {
    pub fn start(sandbox: &Path) -> ChirpStandIn {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::fs::write(
            sandbox.join(".chirp.config"),
            format!("127.0.0.1 {port} c00kie\n"),
        )
        .unwrap();
        listener.set_nonblocking(false).unwrap();
        let job_ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended = job_ended.clone();
        let thread = std::thread::spawn(move || {
            let mut attrs = Vec::new();
            // One session is all the launcher opens; stop when it ends or after a while.
            listener.set_nonblocking(true).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
            let stream = loop {
                match listener.accept() {
                    Ok((s, _)) => break Some(s),
                    // A job that never connected (its VM failed, say) has no session.
                    Err(_) if ended.load(std::sync::atomic::Ordering::SeqCst) => break None,
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(_) => break None,
                }
            };
            let Some(stream) = stream else { return attrs };
            stream.set_nonblocking(false).unwrap();
            let mut out = stream.try_clone().unwrap();
            let unquote = |w: &str| w.replace("\\ ", " ").replace("\\\\", "\\");
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let (cmd, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                let answer = match cmd {
                    "cookie" if rest == "c00kie" => "0",
                    "set_job_attr" => {
                        // name and value are separated by the first unescaped space
                        let mut split = None;
                        let bytes = rest.as_bytes();
                        for i in 0..bytes.len() {
                            if bytes[i] == b' ' && (i == 0 || bytes[i - 1] != b'\\') {
                                split = Some(i);
                                break;
                            }
                        }
                        let i = split.unwrap_or(rest.len());
                        attrs.push((
                            unquote(&rest[..i]),
                            unquote(rest.get(i + 1..).unwrap_or("")),
                        ));
                        "0"
                    }
                    _ => "-1",
                };
                use std::io::Write;
                out.write_all(format!("{answer}\n").as_bytes()).unwrap();
            }
            attrs
        });
        ChirpStandIn { thread, job_ended }
    }

    /// Wait for the session (the job has ended) and record what was set.
    pub fn finish(self, sandbox: &Path) {
        // The launcher has exited: its connection, if any, is made and closed, so the thread
        // ends.
        self.job_ended
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(attrs) = self.thread.join() {
            let text: String = attrs.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            let name = format!("{}.chirp", sandbox.file_name().unwrap().to_string_lossy());
            std::fs::write(sandbox.parent().unwrap().join(name), text).unwrap();
        }
    }
}

/// A template's data disk: `data.qcow2`, 64 MiB.
pub fn qcow2_data_disk(dir: &Path) {
    use capsule_disk::{CreateOptions, DataDisk, ImageFormat};
    DataDisk::create(
        &dir.join("data.qcow2"),
        &CreateOptions::new()
            .size(64 << 20)
            .format(ImageFormat::Qcow2),
    )
    .unwrap()
    .finish()
    .unwrap();
}

/// A template that boots the test guest directly (`vmlinuz`, `initrd.img`, `cmdline`) with a
/// qcow2 data disk.
pub fn test_guest_template(dir: &Path, cmdline: &str) {
    let guest = test_guest();
    std::fs::copy(guest.join("vmlinuz"), dir.join("vmlinuz")).unwrap();
    std::fs::copy(guest.join("initrd.gz"), dir.join("initrd.img")).unwrap();
    std::fs::write(dir.join("cmdline"), cmdline).unwrap();
    qcow2_data_disk(dir);
}
