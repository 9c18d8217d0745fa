//! Benchmark of the hooks (issue 5), each side by side with its baseline in one run:
//! translate of a small job (target: median under 10 ms, the hook binary as the router runs
//! it), translate of 100 MiB of inputs against `cp -r` of the same inputs (target: at most
//! 1.5x), translate with a 64 MiB and a 4 GiB template OS disk (target: the same time), and
//! finalize of 100 MiB of outputs against `cp -r` (target: at most 1.5x).
//! Run: `cargo bench -p vm-capsule --bench hooks`; results go to docs/PERFORMANCE.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

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
    // benches run from target/release/deps; the binaries sit one level up.
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
    let start = Instant::now();
    let mut child = Command::new(bin("vm-capsule"))
        .arg(hook)
        .env_clear()
        .envs(s.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
    assert!(out.status.success(), "{hook} failed");
    (t, String::from_utf8(out.stdout).unwrap())
}

fn scratch_of(stdout: &str) -> PathBuf {
    let line = stdout.lines().find(|l| l.starts_with("Iwd = ")).unwrap();
    PathBuf::from(line.trim_start_matches("Iwd = ").trim_matches('"'))
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

    println!("| operation | ours vs baseline | goal | ratio |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
