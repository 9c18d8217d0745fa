//! Run the job as a vanilla job would run on an execute node: its own process group, the
//! unprivileged user, the manifest's argv/env/streams; kill the whole group at the time limit
//! and when the job exits (HTCondor kills the job's leftover family too).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use capsule_manifest::Outcome;
use nix::errno::Errno;
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::{Gid, Pid, Uid};

use crate::users::Account;

/// Everything needed to start the job.
#[derive(Debug)]
pub struct JobSpec<'a> {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Full argv, `argv[0]` included.
    pub argv: &'a [String],
    /// Whole environment.
    pub env: BTreeMap<String, String>,
    /// Directory the job starts in.
    pub cwd: &'a Path,
    /// stdin (`None` = /dev/null), stdout and stderr.
    pub stdin: Option<File>,
    /// Where stdout goes.
    pub stdout: File,
    /// Where stderr goes.
    pub stderr: File,
    /// Drop to this account (`None` = stay the invoking user).
    pub account: Option<&'a Account>,
    /// Wall-time limit.
    pub limit: Option<Duration>,
}

/// What happened to a job that started.
#[derive(Debug)]
pub struct Finished {
    /// Exit code or signal.
    pub outcome: Outcome,
    /// Killed by the time limit.
    pub timed_out: bool,
    /// Instant exec had succeeded.
    pub exec_at: Instant,
    /// Instant the job was seen to end.
    pub ended_at: Instant,
    /// Wall clock at exec.
    pub started_unix: SystemTime,
    /// Wall clock at the end.
    pub ended_unix: SystemTime,
    /// User CPU, seconds.
    pub user_cpu_secs: f64,
    /// System CPU, seconds.
    pub system_cpu_secs: f64,
    /// Peak RSS, KiB.
    pub peak_rss_kib: u64,
    /// Processes of the job's account that had left its process group (setsid) and were
    /// killed after it ended.
    pub escaped_killed: usize,
}

/// Start the job. An `Err` means it never ran (exec failed, bad stdio); the message says why.
pub fn run(spec: JobSpec<'_>) -> Result<Finished> {
    let (argv0, args) = spec.argv.split_first().context("argv is empty")?;
    let mut cmd = Command::new(&spec.program);
    cmd.arg0(argv0)
        .args(args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(spec.cwd)
        .stdin(spec.stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(spec.stdout)
        .stderr(spec.stderr)
        .process_group(0);
    if let Some(account) = spec.account {
        let groups: Vec<Gid> = account.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        let gid = Gid::from_raw(account.gid);
        let uid = Uid::from_raw(account.uid);
        // SAFETY: the closure runs in the forked child before exec. It only makes the
        // setgroups/setgid/setuid system calls through nix, which neither allocate nor take
        // locks (the `groups` vector was built before the fork), so it is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                Ok(())
            });
        }
    }
    let started_unix = SystemTime::now();
    // As pid 1 in a guest, our RUSAGE_CHILDREN already holds everything /init ran before it
    // exec'd us (insmod, busybox): count only what accrues from here on.
    let before = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage")?;
    // std reports a failed exec (ENOENT, EACCES, ENOEXEC) here, through its CLOEXEC pipe.
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot execute {}", spec.program.display()))?;
    let exec_at = Instant::now();
    let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    // Signals the host forwards (the job's soft-kill signal) go to this pid from now on.
    crate::control::job_started(pid);

    let timed_out = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let watchdog = spec.limit.map(|limit| {
        let timed_out = Arc::clone(&timed_out);
        thread::spawn(move || {
            if stop_rx.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
                timed_out.store(true, Ordering::SeqCst);
                // The child is not reaped before the watchdog is joined, so `pid` (= the
                // process group id) cannot have been reused.
                let _ = killpg(pid, Signal::SIGKILL);
            }
        })
    });

    // Wait without reaping: the zombie keeps the pid and process group id reserved.
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waitid on the job"),
        }
    }
    // Before the pid is reaped and can be reused.
    crate::control::job_ended();
    let ended_at = Instant::now();
    let ended_unix = SystemTime::now();
    drop(stop_tx);
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    // Leftover background processes of the job die with it, as on an execute node.
    match killpg(pid, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH | Errno::EPERM) => {}
        Err(e) => return Err(e).context("killing the job's process group"),
    }
    // Processes that left the group with setsid would survive killpg; with a dedicated
    // account, everything running under it belongs to the job (as with HTCondor's slot users).
    let escaped_killed = spec.account.map_or(0, |a| kill_escaped(a.uid, pid));
    let status = child.wait().context("reaping the job")?;
    let outcome = match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited {
            code: u8::try_from(code & 0xff).unwrap_or(u8::MAX),
        },
        (None, Some(sig)) => Outcome::Signaled {
            signal: u8::try_from(sig).unwrap_or(u8::MAX),
            core_dumped: status.core_dumped(),
        },
        (None, None) => anyhow::bail!("the job ended with an unknown status {status:?}"),
    };
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage")?;
    let secs = |tv: nix::sys::time::TimeVal| {
        // CPU seconds fit f64 exactly for any realistic job length
        #[allow(clippy::cast_precision_loss)]
        let s = tv.tv_sec() as f64 + f64::from(i32::try_from(tv.tv_usec()).unwrap_or(0)) / 1e6;
        s
    };
    Ok(Finished {
        outcome,
        timed_out: timed_out.load(Ordering::SeqCst),
        exec_at,
        ended_at,
        started_unix,
        ended_unix,
        user_cpu_secs: micros(secs(usage.user_time()) - secs(before.user_time())),
        system_cpu_secs: micros(secs(usage.system_time()) - secs(before.system_time())),
        peak_rss_kib: u64::try_from(usage.max_rss()).unwrap_or(0),
        escaped_killed,
    })
}

/// A non-negative number of seconds rounded to microseconds (a difference of two rusage
/// readings would otherwise carry float noise into the job's ad).
fn micros(secs: f64) -> f64 {
    (secs.max(0.0) * 1e6).round() / 1e6
}

/// Kill every live process of `uid` outside the job's process group `pgid`; returns how many
/// there were. The kill itself is `kill(-1, SIGKILL)` from a child that has become `uid`: the
/// kernel walks the process list atomically, so a process forking meanwhile cannot escape.
fn kill_escaped(uid: u32, pgid: Pid) -> usize {
    let escaped = escaped_processes(uid, pgid.as_raw());
    if escaped == 0 {
        return 0;
    }
    // SAFETY: between fork and _exit the child only makes the setuid and kill system calls
    // through nix (no allocation, no locks), which is async-signal-safe; the agent runs no
    // other thread at this point (the watchdog was joined).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            if nix::unistd::setuid(Uid::from_raw(uid)).is_ok() {
                let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
            }
            // SAFETY: _exit is async-signal-safe and skips atexit handlers, as a forked child must.
            unsafe { nix::libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let _ = nix::sys::wait::waitpid(child, None);
        }
        Err(e) => crate::log!("cannot fork to kill the job's leftover processes: {e}"),
    }
    // SIGKILL takes effect when the target is next scheduled: give it a moment, then say so
    // if anything is still alive.
    let mut left = escaped;
    for _ in 0..50 {
        left = escaped_processes(uid, pgid.as_raw());
        if left == 0 {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    if left > 0 {
        crate::log!("{left} process(es) of uid {uid} survived SIGKILL");
    }
    escaped
}

/// Count live (not zombie) processes whose real uid is `uid` and whose process group is not
/// `pgid`, from /proc.
fn escaped_processes(uid: u32, pgid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        // Cheap first cut, one stat per process: /proc/<pid> belongs to the effective uid.
        // Kernel threads and root's processes never get their files read.
        .filter(|e| e.metadata().is_ok_and(|m| MetadataExt::uid(&m) == uid))
        .filter(|e| {
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            let real_uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|u| u.parse::<u32>().ok());
            // /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let mut after = stat
                .rsplit_once(')')
                .map_or("", |(_, r)| r)
                .split_whitespace();
            let state = after.next();
            let group = after.nth(1).and_then(|g| g.parse::<i32>().ok());
            real_uid == Some(uid) && state != Some("Z") && group.is_some_and(|g| g != pgid)
        })
        .count()
}
