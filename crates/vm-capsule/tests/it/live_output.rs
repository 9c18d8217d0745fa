//! The job's output while it runs, in the vanilla flavour: the STAND-IN starter of
//! `interrupt` runs the launcher with its stdout and stderr on `_condor_stdout` and
//! `_condor_stderr` in the sandbox (the files `condor_tail` reads), the test watches them
//! grow, and at the end they equal a native run's byte for byte. The launcher's memory stays
//! bounded whatever the job prints. Two boots of the test guest under TCG.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use classad::eval::evaluate_attr;
use classad::Value;

use crate::interrupt::{pool, routed_job, StandInStarter};

/// A numbered line on stdout and one on stderr every second, for 20 s.
const TICKER: &str =
    "i=1\nwhile [ $i -le 20 ]; do echo \"line $i\"; echo \"err $i\" >&2; i=$((i+1)); sleep 1; done";

/// What the job prints in the memory test, MiB: the most that stays well under a minute
/// under TCG on a busy 2-core machine (128 MiB: 32 s, 192 MiB: 71 s, 256 MiB: 88 s, the
/// guest writing it being most of it); 1 GiB would take minutes.
const BIG_MIB: u64 = 128;
/// The launcher's peak RSS allowed while it copies [`BIG_MIB`]: about 54 MiB whatever the job
/// prints (its peak is the kernel decompressed for the boot, freed early); a launcher that
/// kept what it streamed (to compare it at the end) peaked at 140 MiB.
const LAUNCHER_MAX_RSS_MIB: u64 = 96;

/// Run `script` natively as the starter would (stdout and stderr to files in `dir`).
fn native(dir: &Path, script: &str) -> Child {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("job.sh"), format!("#!/bin/sh\n{script}\n")).unwrap();
    Command::new("sh")
        .arg("job.sh")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("_condor_stdout")).unwrap())
        .stderr(fs::File::create(dir.join("_condor_stderr")).unwrap())
        .spawn()
        .unwrap()
}

/// Whether two files hold the same bytes (read in pieces: they may be large).
fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut a, mut b) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        let mut m = 0;
        while m < n {
            let k = b.read(&mut y[m..n]).unwrap();
            if k == 0 {
                return false;
            }
            m += k;
        }
        if n == 0 {
            return b.read(&mut y).unwrap() == 0;
        }
        if x[..n] != y[..n] {
            return false;
        }
    }
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// The process's peak RSS so far, KiB (`VmHWM`; `None` once it has exited).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `condor_tail` while the job runs: the slot's stdout and stderr grow at every one of 6
/// samples 2.5 s apart, and at the end both equal a native run's.
#[test]
fn output_shows_while_the_job_runs_and_ends_as_natively() {
    let pool = pool();
    let routed = routed_job(
        &pool,
        "ticker",
        TICKER,
        "output = ticker.out\nerror = ticker.err\nstream_output = true",
        2501,
    );
    // The starter streams the launcher's stdout as it would the job's (here it is a file, as
    // without stream_output: what condor_tail reads).
    assert_eq!(evaluate_attr(&routed, "StreamOut"), Value::Bool(true));
    let starter = StandInStarter::new(&pool, routed, "ticker-sandbox");
    let mut native = native(&pool.root.path().join("ticker-native"), TICKER);
    let mut launcher = starter.start();
    starter.wait_for_the_job(&mut launcher);
    let (out, err) = (
        starter.sandbox.join("_condor_stdout"),
        starter.sandbox.join("_condor_stderr"),
    );
    let mut samples = Vec::new();
    let mut peak = 0;
    for _ in 0..6 {
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            peak = peak.max(peak_rss_kib(launcher.id()).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            launcher.try_wait().unwrap().is_none(),
            "the launcher ended early: {}",
            starter.stderr()
        );
        samples.push((len(&out), len(&err)));
    }
    eprintln!("slot stdout/stderr sizes while the job ran: {samples:?}");
    for pair in samples.windows(2) {
        assert!(
            pair[1].0 > pair[0].0 && pair[1].1 > pair[0].1,
            "the slot's streams did not grow between two samples: {samples:?}"
        );
    }
    let status = starter.finish(&mut launcher);
    assert_eq!(status.code(), Some(0), "{status:?}: {}", starter.stderr());
    assert!(native.wait().unwrap().success());
    let native_dir = pool.root.path().join("ticker-native");
    for name in ["_condor_stdout", "_condor_stderr"] {
        assert_eq!(
            fs::read_to_string(starter.sandbox.join(name)).unwrap(),
            fs::read_to_string(native_dir.join(name)).unwrap(),
            "{name}"
        );
    }
    eprintln!("launcher peak RSS while streaming lines: {peak} KiB");
}

/// A job printing [`BIG_MIB`] MiB: the slot's stdout equals the native run's, the launcher's
/// peak RSS stays under [`LAUNCHER_MAX_RSS_MIB`], and it was streamed (the slot's file grew
/// before the job ended).
#[test]
fn a_job_printing_a_lot_keeps_the_launcher_small() {
    let script = format!(
        "yes 'twenty-nine bytes of output' | head -c {}\necho done >&2",
        BIG_MIB << 20
    );
    let pool = pool();
    // The test guest's scratch is in RAM (its root file system takes half of it).
    let submit = format!(
        "request_memory = {}\nrequest_disk = {}",
        2 * BIG_MIB + 256,
        (BIG_MIB + 128) << 10
    );
    let routed = routed_job(&pool, "big", &script, &submit, 2502);
    let starter = StandInStarter::new(&pool, routed, "big-sandbox");
    let native_dir = pool.root.path().join("big-native");
    let mut native = native(&native_dir, &script);
    let started = Instant::now();
    let mut launcher = starter.start();
    let out = starter.sandbox.join("_condor_stdout");
    let (mut peak, mut grew_while_running, mut job_ended) = (0, 0, false);
    while launcher.try_wait().unwrap().is_none() {
        peak = peak.max(peak_rss_kib(launcher.id()).unwrap_or(0));
        // The agent says so on the console (which the launcher removes at its end).
        job_ended = job_ended
            || fs::read_to_string(starter.sandbox.join("console.log"))
                .unwrap_or_default()
                .contains("job ended");
        if !job_ended {
            grew_while_running = grew_while_running.max(len(&out));
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no end after 600 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = starter.finish(&mut launcher);
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Some(0), "{status:?}: {}", starter.stderr());
    assert!(native.wait().unwrap().success());
    eprintln!(
        "{BIG_MIB} MiB of stdout: {:.1} s, launcher peak RSS {peak} KiB, {grew_while_running} bytes streamed before the job ended",
        elapsed.as_secs_f64()
    );
    assert_eq!(len(&out), BIG_MIB << 20);
    assert!(same_bytes(&out, &native_dir.join("_condor_stdout")));
    assert_eq!(
        fs::read_to_string(starter.sandbox.join("_condor_stderr")).unwrap(),
        "done\n"
    );
    assert!(job_ended, "the console never said the job ended");
    assert!(grew_while_running > 0, "nothing was streamed");
    assert!(peak > 0, "VmHWM never read");
    assert!(
        peak < LAUNCHER_MAX_RSS_MIB << 10,
        "launcher peak RSS {peak} KiB"
    );
}
