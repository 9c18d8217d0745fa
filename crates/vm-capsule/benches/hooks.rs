//! Benchmark of the hooks, each side by side with its baseline in one run:
//! translate of a small job (target: median under 10 ms, the hook binary as the router runs
//! it), translate of 100 MiB of inputs against `cp -r` of the same inputs (target: at most
//! 1.5x), translate with a 64 MiB and a 4 GiB template OS disk (target: the same time), and
//! finalize of 100 MiB of outputs against `cp -r` (target: at most 1.5x); placing outputs with
//! 1,000 to 10,000 nested entries (target: linear, 10,000 in under 2 s; the first placer was
//! cubic); the vanilla flavour's
//! translate with 1 MiB, 100 MiB and 1 GiB of inputs against a job with no inputs, and against
//! the translate of an earlier build when `VM_CAPSULE_BENCH_BEFORE` names its binary (target:
//! flat, within 2x); the launcher's data disk from 100 MiB of inputs against `cp -r` (≤ 1.2x).
//! Run: `cargo bench -p vm-capsule --bench hooks`; results go to docs/PERFORMANCE.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    missing_docs
)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capsule_disk::{CreateOptions, DataDisk, Image, ImageFormat};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bin(name: &str) -> PathBuf {
    // benches run from target/<triple>/release/deps; the binaries sit one level up.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "build it first: cargo build --release -p vm-capsule -p capsule-guest ({})",
        path.display()
    );
    path
}

struct Setup {
    root: tempfile::TempDir,
    env: Vec<(String, String)>,
}

fn setup(os_size: u64) -> Setup {
    setup_with_agent(os_size, true)
}

fn setup_with_agent(os_size: u64, ship_agent: bool) -> Setup {
    let root = tempfile::tempdir().unwrap();
    let t = root.path().join("template/condor_vm_capsule");
    fs::create_dir_all(&t).unwrap();
    Image::create(&t.join("os.qcow2"), ImageFormat::Qcow2, os_size)
        .unwrap()
        .finish()
        .unwrap();
    let opts = CreateOptions::new()
        .size(64 << 20)
        .format(ImageFormat::Qcow2);
    DataDisk::create(&t.join("data.qcow2"), &opts)
        .unwrap()
        .finish()
        .unwrap();
    fs::create_dir(root.path().join("scratch")).unwrap();
    // Deployed agents are stripped (the release profile keeps line tables: 11 MB vs 1.5 MB).
    let agent = root.path().join("capsule-init");
    let st = Command::new("strip")
        .arg("-o")
        .arg(&agent)
        .arg(bin("capsule-init"))
        .status()
        .unwrap();
    assert!(st.success());
    let env = vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        // The bench plays the job's owner as whoever runs it.
        ("_CONDOR_VM_CAPSULE_TEST_ANY_USER".into(), "true".into()),
        (
            "_CONDOR_VM_CAPSULE_TEMPLATE".into(),
            root.path().join("template").display().to_string(),
        ),
        (
            "_CONDOR_VM_CAPSULE_SCRATCH_DIR_PREFIX".into(),
            root.path().join("scratch").display().to_string(),
        ),
        (
            "_CONDOR_VM_CAPSULE_INIT_SCRIPT_PATH".into(),
            if ship_agent {
                agent.display().to_string()
            } else {
                "none".to_owned()
            },
        ),
    ];
    Setup { root, env }
}

fn job_ad(iwd: &Path, inputs: &str, outputs: Option<&str>) -> String {
    let mut ad = format!(
        "[ Name = \"VM\"; TargetUniverse = 13 ]\n------\nClusterId = 1\nProcId = 0\nOwner = \"bench\"\nIwd = \"{}\"\nCmd = \"{}/job.sh\"\nArguments = \"a b\"\nOut = \"out.txt\"\nRequestMemory = 128\n",
        iwd.display(),
        iwd.display()
    );
    if !inputs.is_empty() {
        ad.push_str(&format!("TransferInput = \"{inputs}\"\n"));
    }
    if let Some(o) = outputs {
        ad.push_str(&format!("TransferOutput = \"{o}\"\n"));
    }
    ad
}

fn run_hook(s: &Setup, hook: &str, stdin: &str) -> (Duration, String) {
    run_hook_of(&bin("vm-capsule"), s, hook, stdin)
}

fn run_hook_of(exe: &Path, s: &Setup, hook: &str, stdin: &str) -> (Duration, String) {
    let start = Instant::now();
    let mut child = Command::new(exe)
        .arg(hook)
        .env_clear()
        .envs(s.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let t = start.elapsed();
    assert!(
        out.status.success(),
        "{} {hook} failed: {}",
        exe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    (t, String::from_utf8(out.stdout).unwrap())
}

/// The job dir a routed ad names (a vanilla routed ad's `Iwd` is the user's own).
fn scratch_of(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("VMCapsuleScratch = "))
        .unwrap();
    PathBuf::from(
        line.trim_start_matches("VMCapsuleScratch = ")
            .trim_matches('"'),
    )
}

fn cp(src: &Path, dst: &Path) -> Duration {
    let _ = fs::remove_dir_all(dst);
    let start = Instant::now();
    let st = Command::new("cp")
        .arg("-r")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    let t = start.elapsed();
    assert!(st.success());
    t
}

fn fill(dir: &Path, total: usize, files: usize) {
    fs::create_dir_all(dir).unwrap();
    let chunk = total / files;
    let data: Vec<u8> = (0..chunk)
        .map(|i| u8::try_from(i * 7 % 251).unwrap())
        .collect();
    for i in 0..files {
        fs::write(dir.join(format!("f{i:03}.bin")), &data).unwrap();
    }
}

fn main() {
    let mut rows = Vec::new();
    // `VM_CAPSULE_BENCH_ONLY=launcher`: only the launcher's data disk, for side-by-side runs
    // of two builds.
    if std::env::var("VM_CAPSULE_BENCH_ONLY").as_deref() == Ok("launcher") {
        launcher_disk(&mut rows);
        for row in rows {
            println!("{row}");
        }
        return;
    }

    // 1. Small job, and template OS disk size independence; then without shipping the agent.
    let mut small = Vec::new();
    for (os_size, ship_agent) in [(64u64 << 20, true), (4 << 30, true), (64 << 20, false)] {
        let s = setup_with_agent(os_size, ship_agent);
        let iwd = s.root.path().join("job");
        fs::create_dir_all(&iwd).unwrap();
        fs::write(iwd.join("job.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::write(iwd.join("in.txt"), "input\n").unwrap();
        let ad = job_ad(&iwd, "in.txt", None);
        let mut times = Vec::new();
        for _ in 0..21 {
            let (t, out) = run_hook(&s, "translate", &ad);
            fs::remove_dir_all(scratch_of(&out)).unwrap();
            times.push(t);
        }
        small.push(median(times));
    }
    rows.push(format!(
        "| translate, small job (hook process, median of 21) | {:.1} ms | target 10 ms | {:.2}× of target |",
        ms(small[0]),
        ms(small[0]) / 10.0
    ));
    rows.push(format!(
        "| translate, small job, agent in the guest image (`VM_CAPSULE_INIT_SCRIPT_PATH = none`) | {:.1} ms | target 10 ms | {:.2}× of target |",
        ms(small[2]),
        ms(small[2]) / 10.0
    ));
    rows.push(format!(
        "| translate, 4 GiB vs 64 MiB template OS disk | {:.1} ms vs {:.1} ms | same | {:.2}× |",
        ms(small[1]),
        ms(small[0]),
        ms(small[1]) / ms(small[0])
    ));

    // 2. 100 MiB of inputs vs cp -r.
    let s = setup(64 << 20);
    let iwd = s.root.path().join("job");
    fill(&iwd.join("inputs"), 100 << 20, 20);
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ncat inputs/* > /dev/null\n").unwrap();
    let ad = job_ad(&iwd, "inputs", None);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..5 {
        let (t, out) = run_hook(&s, "translate", &ad);
        fs::remove_dir_all(scratch_of(&out)).unwrap();
        ours.push(t);
        theirs.push(cp(&iwd.join("inputs"), &s.root.path().join("cp-copy")));
    }
    let (o, c) = (median(ours), median(theirs));
    rows.push(format!(
        "| translate, 100 MiB of inputs vs `cp -r` | {:.0} ms vs {:.0} ms | ≤ 1.5× | {:.2}× |",
        ms(o),
        ms(c),
        ms(o) / ms(c)
    ));

    // 3. Finalize of 100 MiB of outputs vs cp -r.
    let iwd = s.root.path().join("job2");
    fs::create_dir_all(&iwd).unwrap();
    fs::write(
        iwd.join("job.sh"),
        "#!/bin/sh\nmkdir outs\ni=0\nwhile [ $i -lt 20 ]; do head -c 5242880 /dev/urandom > outs/o$i.bin; i=$((i+1)); done\n",
    )
    .unwrap();
    let ad = job_ad(&iwd, "", Some("outs"));
    let (_, routed) = run_hook(&s, "translate", &ad);
    let scratch = scratch_of(&routed);
    let st = Command::new(bin("capsule-init"))
        .arg("--image")
        .arg(scratch.join("data.qcow2"))
        .arg("--scratch")
        .arg(s.root.path().join("exec"))
        .args(["--no-poweroff", "--as-current-user"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let original = ad.split("------\n").nth(1).unwrap();
    let stdin = format!("{original}\n------\n{routed}");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..5 {
        let _ = fs::remove_dir_all(iwd.join("outs"));
        let (t, out) = run_hook(&s, "finalize", &stdin);
        assert!(out.contains("ExitCode = 0"), "{out}");
        ours.push(t);
        theirs.push(cp(&iwd.join("outs"), &s.root.path().join("cp-out")));
    }
    let (o, c) = (median(ours), median(theirs));
    rows.push(format!(
        "| finalize, 100 MiB of outputs vs `cp -r` | {:.0} ms vs {:.0} ms | ≤ 1.5× | {:.2}× |",
        ms(o),
        ms(c),
        ms(o) / ms(c)
    ));

    placement(&mut rows);
    vanilla_inputs(&mut rows);
    launcher_disk(&mut rows);

    println!("| operation | ours vs baseline | goal | ratio |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Issue 11.4: placing outputs with nested directories is linear.
fn placement(rows: &mut Vec<String>) {
    use vm_capsule_core::returned::place::{place_outputs, OutputRules};
    for entries in [1_000usize, 2_000, 10_000] {
        // A chain of directories, each holding files, down to the depth the placer allows.
        let levels = 200.min(entries / 10);
        let per_level = entries / levels - 1;
        let mut tar = tar::Builder::new(Vec::new());
        let mut dir = String::from("d");
        for level in 0..levels {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
            tar.append_data(&mut h, &dir, std::io::empty()).unwrap();
            for f in 0..per_level {
                let mut h = tar::Header::new_gnu();
                h.set_size(1);
                h.set_mode(0o644);
                tar.append_data(&mut h, format!("{dir}/f{level}-{f}"), &b"x"[..])
                    .unwrap();
            }
            dir.push_str("/d");
        }
        let tar = tar.into_inner().unwrap();
        let mut times = Vec::new();
        for _ in 0..3 {
            let iwd = tempfile::tempdir().unwrap();
            let ad = classad::parse_old_ad(&format!(
                "ClusterId = 1\nProcId = 0\nOwner = \"b\"\nIwd = \"{}\"\nCmd = \"job.sh\"\nTransferOutput = \"d\"\n",
                iwd.path().display()
            ))
            .unwrap();
            let rules = OutputRules::for_job(&vm_capsule_core::job::JobSpec::from_ad(&ad).unwrap())
                .unwrap();
            let start = Instant::now();
            let placed = place_outputs(
                tar.as_slice(),
                &rules,
                "1.0",
                &vm_capsule_core::temp_record::TempRecord::new(),
            );
            times.push(start.elapsed());
            assert!(!placed.has_problems(), "{placed:?}");
        }
        let t = median(times);
        rows.push(format!(
            "| place outputs, {entries} entries in {levels} nested dirs (median of 3) | {:.0} ms ({:.1} µs/entry) | 10,000 in < 2 s; was 1,000: 4.4 s, 2,000: 40 s, 10,000: > 15 min | {:.3}× of 2 s |",
            ms(t),
            t.as_secs_f64() * 1e6 / entries as f64,
            t.as_secs_f64() / 2.0
        ));
    }
}

/// Bytes of the files in `dir` that are not hard links to the template (what translate wrote).
fn new_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap())
        .filter(|m| m.nlink() == 1)
        .map(|m| m.len())
        .sum()
}

/// Issue 15: the vanilla flavour's translate does not grow with the inputs.
fn vanilla_inputs(rows: &mut Vec<String>) {
    let s = setup(64 << 20);
    let before = std::env::var_os("VM_CAPSULE_BENCH_BEFORE").map(PathBuf::from);
    let route = |ad: &str| ad.replace("TargetUniverse = 13", "TargetUniverse = 5");
    let empty_iwd = s.root.path().join("empty");
    fs::create_dir_all(&empty_iwd).unwrap();
    fs::write(empty_iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let empty_ad = route(&job_ad(&empty_iwd, "", None));
    for (label, bytes) in [
        ("1 MiB", 1usize << 20),
        ("100 MiB", 100 << 20),
        ("1 GiB", 1 << 30),
    ] {
        let iwd = s.root.path().join(format!("in-{bytes}"));
        fill(&iwd.join("inputs"), bytes, 8);
        fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
        let ad = route(&job_ad(&iwd, "inputs", None));
        let (mut ours, mut none, mut old) = (Vec::new(), Vec::new(), Vec::new());
        let (mut written, mut old_written) = (0, 0);
        for _ in 0..5 {
            let (t, out) = run_hook(&s, "translate", &ad);
            written = new_bytes(&scratch_of(&out));
            fs::remove_dir_all(scratch_of(&out)).unwrap();
            ours.push(t);
            let (t, out) = run_hook(&s, "translate", &empty_ad);
            fs::remove_dir_all(scratch_of(&out)).unwrap();
            none.push(t);
            if let Some(exe) = &before {
                let (t, out) = run_hook_of(exe, &s, "translate", &ad);
                old_written = new_bytes(&scratch_of(&out));
                fs::remove_dir_all(scratch_of(&out)).unwrap();
                old.push(t);
            }
        }
        let (o, n) = (median(ours), median(none));
        let before_text = if old.is_empty() {
            String::from("(no earlier build given)")
        } else {
            format!(
                "before: {:.0} ms, {:.1} MiB written",
                ms(median(old)),
                old_written as f64 / f64::from(1 << 20)
            )
        };
        rows.push(format!(
            "| vanilla translate, {label} of inputs: {:.1} ms, {:.1} KiB written; no inputs: {:.1} ms; {before_text} | flat, ≤ 2× no inputs | {:.2}× |",
            ms(o),
            written as f64 / 1024.0,
            ms(n),
            ms(o) / ms(n)
        ));
    }
}

/// Issue 15: the launcher on the node, the data disk from 100 MiB of inputs HTCondor
/// brought, against `cp -r` of them.
fn launcher_disk(rows: &mut Vec<String>) {
    let s = setup(64 << 20);
    let route = |ad: &str| ad.replace("TargetUniverse = 13", "TargetUniverse = 5");
    let iwd = s.root.path().join("launcher");
    fill(&iwd.join("inputs"), 100 << 20, 20);
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let ad = route(&job_ad(&iwd, "inputs", None));
    let (_, out) = run_hook(&s, "translate", &ad);
    let scratch = scratch_of(&out);
    let sandbox = s.root.path().join("sandbox");
    fs::create_dir_all(&sandbox).unwrap();
    for f in vm_capsule_core::routed::VANILLA_FILES {
        fs::copy(scratch.join(f), sandbox.join(f)).unwrap();
    }
    fs::copy(
        s.root.path().join("capsule-init"),
        sandbox.join("capsule-init"),
    )
    .unwrap();
    fs::copy(iwd.join("job.sh"), sandbox.join("job.sh")).unwrap();
    cp(&iwd.join("inputs"), &sandbox.join("inputs"));
    let capsule = classad::parse_old_ad(
        &fs::read_to_string(sandbox.join(vm_capsule_core::routed::CAPSULE_AD)).unwrap(),
    )
    .unwrap();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let _ = fs::remove_file(sandbox.join("data.qcow2"));
        let start = Instant::now();
        vm_capsule_execute::launcher::sandbox::make_data_disk(&sandbox, &capsule, None).unwrap();
        ours.push(start.elapsed());
        theirs.push(cp(
            &sandbox.join("inputs"),
            &s.root.path().join("cp-launcher"),
        ));
    }
    let (o, c) = (median(ours), median(theirs));
    rows.push(format!(
        "| launcher data disk from 100 MiB of inputs vs `cp -r` | {:.0} ms vs {:.0} ms | ≤ 1.2× | {:.2}× |",
        ms(o),
        ms(c),
        ms(o) / ms(c)
    ));
}
