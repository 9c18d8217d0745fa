//! `vm-capsule demo`: a vanilla job goes into a VM and comes back, on this machine.
//!
//! Builds (or reuses) the test guest and a template, writes an example vanilla job (a script
//! with arguments, environment, an input and an output file, exiting with code 3), then runs
//! translate -> run -> finalize -> cleanup exactly as the JobRouter and an execute node would,
//! each hook as a separate process fed its ads on stdin.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use capsule_disk::{CreateOptions, DataDisk, ImageFormat};
use classad::{ClassAd, Expr};
use vm_capsule_core::environment::Environment;
use vm_capsule_core::settings::knobs;
use vm_capsule_execute::runner::{run, Accel, RunOptions};

/// Arguments of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Work directory (template, job, scratch); kept afterwards for a look.
    #[arg(long, default_value = "target/vm-capsule-demo")]
    dir: PathBuf,
    /// Seconds before the VM is killed.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

const JOB_SCRIPT: &str = r#"#!/bin/sh
# An ordinary vanilla job: it neither knows nor cares that it runs in a VM.
echo "arguments: $*"
echo "DEMO_GREETING=$DEMO_GREETING"
echo "kernel: $(uname -r), user: $(id -un)"
total=0
while read -r n; do total=$((total + n)); done < numbers.txt
echo "sum of numbers.txt: $total" > summary.txt
echo "summary written" >&2
exit 3
"#;

struct Clock(Instant);

impl Clock {
    fn step(&self, text: &str) {
        println!("[{:6.1} s] {text}", self.0.elapsed().as_secs_f64());
    }
}

/// Run the demo.
pub fn run_demo(args: &DemoArgs, env: &Environment) -> Result<std::process::ExitCode> {
    let clock = Clock(Instant::now());
    let dir = absolute(&args.dir)?;
    clock.step(&format!("vm-capsule demo in {}", dir.display()));
    check_tools(env.path())?;
    let exe = env
        .current_exe
        .as_deref()
        .context("cannot find the vm-capsule binary")?;
    let guest = test_guest(&clock)?;

    let _ = fs::remove_dir_all(&dir);
    let config = write_template(&dir, &guest, &clock)?;
    let (job_dir, job_ad) = write_job(&dir, &clock)?;

    // translate, fed as the JobRouter does: route line, ------, the job ad.
    let stdin = format!(
        "[ Name = \"VMCapsule\"; TargetUniverse = 13 ]\n------\n{}",
        classad::print::ad_to_hook_string(&job_ad)?
    );
    let t_translate = Instant::now();
    let routed_text = hook(exe, "translate", &config, &stdin)?;
    let translate_time = t_translate.elapsed();
    let routed =
        classad::parse_old_ad(&routed_text).context("translate printed an unreadable ad")?;
    fs::write(dir.join("routed.ad"), &routed_text)?;
    clock.step(&format!(
        "translate: VM-universe ad with {} attributes ({} bytes, saved as routed.ad); capsule in {}",
        routed.len(),
        routed_text.len(),
        text(&routed, "Iwd")
    ));

    clock.step("run: booting the VM under QEMU (TCG emulation here: this takes a while)");
    let opts = RunOptions {
        timeout: Some(Duration::from_secs(args.timeout)),
        accel: Accel::Auto,
        in_place: false,
        sandbox_parent: dir.clone(),
        sandbox: None,
        qemu: vm_capsule_execute::qemu::find_qemu(None, env.path())?,
        workdir: None,
        cancel: None,
        tb_size_mib: vm_capsule_core::settings::knobs::TCG_TB_MIB
            .default_number()
            .unwrap_or_default(),
        host_paths: Vec::new(),
    };
    let report = run(&routed, &opts, &mut |m| clock.step(&format!("run: {m}")))?;
    clock.step(&format!(
        "run: guest powered off after {:.1} s; data disk returned; console log {}",
        report.elapsed.as_secs_f64(),
        report.console.display()
    ));
    if let Ok(console) = fs::read_to_string(&report.console) {
        for line in console
            .lines()
            .filter(|l| l.contains("overhead") || l.contains("job ended"))
        {
            clock.step(&format!("  guest: {}", line.trim()));
        }
    }

    // finalize, fed the original (completed as the VM job did) and the routed ad.
    let mut original = job_ad.clone();
    original.insert("JobStatus", Expr::integer(4));
    original.insert("ExitCode", Expr::integer(0));
    let stdin = format!(
        "{}\n------\n{}",
        classad::print::ad_to_hook_string(&original)?,
        routed_text
    );
    let t_finalize = Instant::now();
    let attrs = hook(exe, "finalize", &config, &stdin)?;
    let finalize_time = t_finalize.elapsed();
    clock.step("finalize: attributes for the original job:");
    for line in attrs.lines() {
        println!("             {line}");
    }
    hook(exe, "cleanup", &config, &routed_text)?;
    clock.step("cleanup: scratch dir removed");

    println!("\nThe job's files in {}:", job_dir.display());
    for name in ["analyze.out", "analyze.err", "summary.txt"] {
        let content =
            fs::read_to_string(job_dir.join(name)).unwrap_or_else(|e| format!("(missing: {e})"));
        println!("--- {name}\n{}", content.trim_end());
    }
    let console = fs::read_to_string(&report.console).unwrap_or_default();
    println!("\nWhere the time went:");
    for (what, secs) in time_split(translate_time, report.elapsed, &console, finalize_time) {
        println!("  {what:<48} {secs:8.3} s");
    }
    let exit = classad::parse_old_ad(&attrs)?;
    let code = classad::eval::evaluate_attr(&exit, "ExitCode");
    println!(
        "\nExitCode = {code}: the job exited with 3 inside the VM, and HTCondor records {code}, as if it had run natively."
    );
    if code != classad::Value::Integer(3) {
        bail!("the demo job's exit code did not come back (got {code})");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The demo's wall time by phase. Guest phases come from the agent's uptime stamps and its
/// overhead line on the console; what is left of the VM's wall time is QEMU, firmware and the
/// kernel booting and shutting down.
fn time_split(
    translate: Duration,
    run: Duration,
    console: &str,
    finalize: Duration,
) -> Vec<(&'static str, f64)> {
    let stamp = |needle: &str| {
        console
            .lines()
            .find(|l| l.starts_with("capsule-init [") && l.contains(needle))
            .and_then(|l| {
                l.split('[')
                    .nth(1)?
                    .split(']')
                    .next()?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
    };
    let mut rows = vec![("translate hook", translate.as_secs_f64())];
    let poweroff_ms = console
        .lines()
        .find(|l| l.contains("overhead: job end -> poweroff call"))
        .and_then(|l| {
            l.rsplit("call")
                .next()?
                .trim()
                .trim_end_matches("ms")
                .trim()
                .parse::<f64>()
                .ok()
        });
    if let (Some(start), Some(exec), Some(end), Some(off)) = (
        stamp("started"),
        stamp("starting"),
        stamp("job ended"),
        poweroff_ms,
    ) {
        let inside = end + off / 1000.0 - start;
        rows.push((
            "QEMU, firmware, kernel boot and shutdown",
            run.as_secs_f64() - inside,
        ));
        rows.push(("agent setup (unpack inputs, start the job)", exec - start));
        rows.push(("job", end - exec));
        rows.push((
            "agent teardown (outputs, result, poweroff call)",
            off / 1000.0,
        ));
    } else {
        rows.push(("VM (boot, job, poweroff)", run.as_secs_f64()));
    }
    rows.push(("finalize hook", finalize.as_secs_f64()));
    rows
}

fn text(ad: &classad::ClassAd, name: &str) -> String {
    match classad::eval::evaluate_attr(ad, name) {
        classad::Value::String(s) => s,
        other => other.to_string(),
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// The job ad condor_submit and the schedd would make of analyze.sub.
fn example_job_ad(iwd: &Path, exe: &Path) -> classad::ClassAd {
    let owner = Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "nobody".to_owned());
    let mut ad = classad::ClassAd::new();
    let s = |v: &str| Expr::string(v);
    ad.insert("ClusterId", Expr::integer(1));
    ad.insert("ProcId", Expr::integer(0));
    ad.insert("JobUniverse", Expr::integer(5));
    ad.insert("JobStatus", Expr::integer(1));
    ad.insert("Owner", s(&owner));
    ad.insert("User", s(&format!("{owner}@localhost")));
    ad.insert("Iwd", s(&iwd.display().to_string()));
    ad.insert("Cmd", s(&exe.display().to_string()));
    ad.insert("Arguments", s("--mode fast 'hello world'"));
    ad.insert("Environment", s("DEMO_GREETING=from-the-submit-file"));
    ad.insert("TransferInput", s("numbers.txt"));
    ad.insert("TransferOutput", s("summary.txt"));
    ad.insert("Out", s("analyze.out"));
    ad.insert("Err", s("analyze.err"));
    ad.insert("In", s("/dev/null"));
    ad.insert("ShouldTransferFiles", s("YES"));
    ad.insert("WhenToTransferOutput", s("ON_EXIT"));
    ad.insert("RequestMemory", Expr::integer(128));
    ad.insert("RequestCpus", Expr::integer(1));
    ad.insert("WantJobRouter", Expr::boolean(true));
    ad
}

/// Run our own hook binary `exe` as the router does: stdin written and closed, stdout
/// captured.
fn hook(exe: &Path, name: &str, config: &Path, stdin: &str) -> Result<String> {
    let mut child = Command::new(exe)
        .arg(name)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start the {name} hook"))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the {name} hook failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The template (the test guest booted directly, a qcow2 data disk) and the knobs an admin
/// would set; returns the config file.
fn write_template(dir: &Path, guest: &Path, clock: &Clock) -> Result<PathBuf> {
    let template = dir.join("template/condor_vm_capsule");
    fs::create_dir_all(&template)
        .with_context(|| format!("cannot create {}", template.display()))?;
    fs::copy(guest.join("vmlinuz"), template.join("vmlinuz"))?;
    fs::copy(guest.join("initrd.gz"), template.join("initrd.img"))?;
    fs::write(template.join("cmdline"), "console=ttyS0 quiet panic=-1\n")?;
    DataDisk::create(
        &template.join("data.qcow2"),
        &CreateOptions::new()
            .size(64 << 20)
            .format(ImageFormat::Qcow2),
    )?
    .finish()?;
    // The scratch prefix an admin creates (root-owned, 1777); here it is ours, which the
    // hooks accept for a single-user setup.
    let scratch = dir.join("scratch");
    fs::create_dir_all(&scratch)?;
    // Hooks refuse to run as root; the demo plays the router and the job's owner at once, so
    // run as root it says so with the test knob.
    let mut text = "# knobs as an admin would set them (docs/ADMIN.md)\n".to_owned();
    let set = [
        (knobs::TEMPLATE, dir.join("template")),
        (knobs::SCRATCH_DIR_PREFIX, scratch),
        (knobs::INIT_SCRIPT_PATH, guest.join("capsule-init")),
        (knobs::TRANSLATE_LOG, dir.join("translate.log")),
        (knobs::EXIT_LOG, dir.join("exit.log")),
        (knobs::VM_MEMORY_MB, "256".into()),
    ];
    for (knob, value) in set {
        text.push_str(&format!("{} = {}\n", knob.name, value.display()));
    }
    if rustix::process::geteuid().is_root() {
        text.push_str(&format!(
            "# the demo runs as root and plays the job's owner too\n{} = true\n",
            knobs::TEST_ANY_USER.name
        ));
    }
    let config = dir.join("vm-capsule.conf");
    fs::write(&config, text)?;
    clock.step(&format!(
        "template: {} (test guest kernel + initrd, qcow2 data disk)",
        template.display()
    ));

    Ok(config)
}

/// The example vanilla job: its dir and its ad.
fn write_job(dir: &Path, clock: &Clock) -> Result<(PathBuf, ClassAd)> {
    let job_dir = dir.join("job");
    fs::create_dir_all(&job_dir)?;
    let exe = job_dir.join("analyze.sh");
    fs::write(&exe, JOB_SCRIPT)?;
    fs::write(job_dir.join("numbers.txt"), "1\n2\n3\n4\n5\n")?;
    fs::write(
        job_dir.join("analyze.sub"),
        "# what the user submitted (plus +WantJobRouter = true)\nexecutable = analyze.sh\narguments = \"--mode fast 'hello world'\"\nenvironment = \"DEMO_GREETING=from-the-submit-file\"\ntransfer_input_files = numbers.txt\ntransfer_output_files = summary.txt\noutput = analyze.out\nerror = analyze.err\n+WantJobRouter = true\nqueue\n",
    )?;
    let job_ad = example_job_ad(&job_dir, &exe);
    clock.step(&format!(
        "example vanilla job: {} (exits with code 3)",
        job_dir.join("analyze.sub").display()
    ));

    Ok((job_dir, job_ad))
}

/// Tools the demo needs on `path`, with the install line when one is missing.
fn check_tools(path: Option<&OsStr>) -> Result<()> {
    let missing: Vec<&str> = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("cpio", "cpio"),
        ("dpkg-deb", "dpkg"),
        ("apt-get", "apt"),
    ]
    .iter()
    .filter(|(tool, _)| !on_path(path, tool))
    .map(|(_, pkg)| *pkg)
    .collect();
    let busybox = Path::new("/bin/busybox").exists() || Path::new("/usr/bin/busybox").exists();
    let mut packages = missing;
    if !busybox {
        packages.push("busybox-static");
    }
    if !packages.is_empty() {
        bail!(
            "the demo needs these Debian packages: {}\n  install them with: sudo bash scripts/install-deps.sh demo (it keeps QEMU's packages at one version)",
            packages.join(", ")
        );
    }
    Ok(())
}

fn on_path(path: Option<&OsStr>, tool: &str) -> bool {
    path.is_some_and(|p| std::env::split_paths(p).any(|d| d.join(tool).is_file()))
}

/// The test guest (kernel, initrd, static agent), built once by the repository's script.
fn test_guest(clock: &Clock) -> Result<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = repo.join("scripts/build-test-guest.sh");
    if !script.is_file() {
        bail!(
            "the demo builds its test guest with {} from the source checkout; run it from a clone of vm-capsule",
            script.display()
        );
    }
    clock.step("test guest: building or reusing .cache/test-guest (Debian kernel + busybox + static capsule-init)");
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(&repo)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run scripts/build-test-guest.sh")?;
    if !out.status.success() {
        bail!("building the test guest failed (see above)");
    }
    let paths = String::from_utf8_lossy(&out.stdout);
    let kernel = paths
        .split_whitespace()
        .last()
        .map(PathBuf::from)
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .context("build-test-guest.sh printed no paths")?;
    let dir = fs::canonicalize(&kernel).unwrap_or(kernel);
    clock.step(&format!("test guest: {}", dir.display()));
    Ok(dir)
}
