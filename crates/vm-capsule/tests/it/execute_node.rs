//! The execute side of the stand-in pool (no startd, starter or VM can run here): the guest
//! agent run in host mode on a data disk, a STAND-IN vanilla execute node with HTCondor's file
//! transfer rules, a STAND-IN Chirp server, and the test guest and templates the boot tests use.

use std::path::{Path, PathBuf};
use std::process::Command;

use classad::ClassAd;

use crate::cmd::run_ok_needs;
use crate::router::bin;

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

impl JobEnd {
    /// Set the exit attributes HTCondor gives a job that ended this way.
    pub fn set_in(&self, ad: &mut ClassAd) {
        match *self {
            JobEnd::Exited(c) => {
                ad.insert("ExitCode", classad::Expr::integer(i64::from(c)));
                ad.insert("ExitBySignal", classad::Expr::boolean(false));
            }
            JobEnd::Signaled(s) => {
                ad.insert("ExitBySignal", classad::Expr::boolean(true));
                ad.insert("ExitSignal", classad::Expr::integer(i64::from(s)));
            }
        }
    }
}

/// A STAND-IN for an HTCondor execute node running a vanilla job with file transfer (no
/// startd/starter can run here): it copies `Cmd` (unless `TransferExecutable = false`: then
/// `Cmd` is a path on the node) and `TransferInput` into a fresh sandbox,
/// runs `Cmd` with `Arguments` there, then brings back `TransferOutput` (or the new and
/// changed top-level files) with `TransferOutputRemaps` and the `Out`/`Err` streams, the way
/// HTCondor's file transfer does. Returns how the process ended.
pub fn vanilla_execute_node(routed: &ClassAd, sandbox: &Path, env: &[(String, String)]) -> JobEnd {
    execute_node_with(routed, sandbox, env, None)
}

/// The stand-in starter's prepare-job hook: `(sandbox, job ad) -> the job ad merged with its
/// output`.
pub type PrepareHook<'a> = dyn Fn(&Path, &ClassAd) -> ClassAd + 'a;

/// [`vanilla_execute_node`] with the starter's prepare-job hook: after the input transfer,
/// `prepare(sandbox, job ad)` returns the job ad the starter then runs (the hook's output
/// merged in): its `Cmd`, `TransferExecutable`, `Arguments` and `Environment`. With a hook,
/// the Chirp stand-in runs as HTCondor 24.0's starter sets its proxy up, before the hook:
/// always, with `set_job_attr` only when the original job has `WantIOProxy`, and delayed
/// updates (`Chirp*` names) always.
pub fn execute_node_with(
    routed: &ClassAd,
    sandbox: &Path,
    env: &[(String, String)],
    prepare: Option<&PrepareHook<'_>>,
) -> JobEnd {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    let text = |n: &str| match classad::eval::evaluate_attr(routed, n) {
        classad::Value::String(s) => Some(s),
        _ => None,
    };
    let iwd = PathBuf::from(text("Iwd").unwrap());
    std::fs::create_dir_all(sandbox).unwrap();
    let cmd = PathBuf::from(text("Cmd").unwrap());
    let transfer_exe =
        classad::eval::evaluate_attr(routed, "TransferExecutable") != classad::Value::Bool(false);
    let exe = if transfer_exe {
        let exe = sandbox.join(cmd.file_name().unwrap());
        std::fs::copy(&cmd, &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        exe
    } else {
        cmd.clone()
    };
    let mut catalog = std::collections::BTreeMap::new();
    let mut placed = Vec::new();
    for entry in text("TransferInput")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if vm_capsule_core::job::transfer::is_url(entry) {
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
            run_ok_needs(
                Command::new("curl")
                    .args(["-fsS", "-o"])
                    .arg(&dest)
                    .arg(entry),
                "the stand-in execute node fetches URLs with curl (.ci/run installs it)",
            );
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
    // The input transfer is done: the prepare-job hook runs, and its ad is what runs.
    let transferred_exe = exe.clone();
    let want_io_proxy =
        classad::eval::evaluate_attr(routed, "WantIOProxy") == classad::Value::Bool(true);
    let prepared = prepare.map_or_else(|| routed.clone(), |p| p(sandbox, routed));
    let prepared_text = |n: &str| match classad::eval::evaluate_attr(&prepared, n) {
        classad::Value::String(s) => Some(s),
        _ => None,
    };
    let exe = if classad::eval::evaluate_attr(&prepared, "TransferExecutable")
        == classad::Value::Bool(false)
    {
        PathBuf::from(prepared_text("Cmd").unwrap())
    } else {
        exe
    };
    let text = prepared_text;
    let args =
        vm_capsule_core::job::args::split_v2(&text("Arguments").unwrap_or_default(), "Arguments")
            .unwrap();
    // The job's own environment, as the starter sets it.
    let mut env: Vec<(String, String)> = env.to_vec();
    env.extend(
        vm_capsule_core::job::args::parse_env_v2(&text("Environment").unwrap_or_default()).unwrap(),
    );
    let chirp = (want_io_proxy || prepare.is_some())
        .then(|| ChirpStandIn::start_with(sandbox, want_io_proxy));
    let stdout = std::fs::File::create(sandbox.join("_condor_stdout")).unwrap();
    let stderr = std::fs::File::create(sandbox.join("_condor_stderr")).unwrap();
    // OsProc::StartJob: argv[0] is `<sandbox>/<basename of Cmd>`, then `Arguments`.
    let status = std::os::unix::process::CommandExt::arg0(&mut Command::new(&exe), &exe)
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
    let remaps = vm_capsule_core::job::transfer::parse_remaps(
        &text("TransferOutputRemaps").unwrap_or_default(),
    );
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
            for name in vm_capsule_core::job::transfer::split_list(&list) {
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
                    || name == transferred_exe.file_name().unwrap()
                    || name == ".job.ad"
                    || name == ".machine.ad"
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
    let out = run_ok_needs(
        Command::new("bash")
            .arg(repo.join("scripts/build-test-guest.sh"))
            .current_dir(&repo),
        "scripts/build-test-guest.sh failed",
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
    /// `updates`: `set_job_attr` is answered (the job has `WantIOProxy`); delayed updates of
    /// `Chirp*` names always are.
    pub fn start_with(sandbox: &Path, updates: bool) -> ChirpStandIn {
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
                    "set_job_attr" | "set_job_attr_delayed"
                        if updates
                            || (cmd == "set_job_attr_delayed" && rest.starts_with("Chirp")) =>
                    {
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
