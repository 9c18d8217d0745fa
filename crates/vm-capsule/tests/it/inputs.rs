//! Inputs travel the way HTCondor moves files: in the vanilla flavour the routed
//! job hands the user's own entries (local files, `dir/`, URLs) to HTCondor's transfer and the
//! launcher makes the data disk on the node; translate writes no input bytes. The VM universe
//! cannot fetch URLs (HTCondor has no way to hand such files to a VM): it holds them with a
//! hint. URL output remaps go through HTCondor's own transfer in the vanilla flavour and are a
//! clear error in the VM universe.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use classad::eval::{evaluate_attr, string_attr};
use classad::{ClassAd, Value};

use crate::cmd::assert_ok;
use crate::execute_node::{run_capsule, vanilla_execute_node, JobEnd};
use crate::router::{job_ads, print_ad, Pool};

fn template(dir: &Path) {
    crate::execute_node::test_guest_template(dir, "console=ttyS0 quiet panic=-1");
}

/// A web server on 127.0.0.1 serving `dir` (Python's http.server), stopped on drop.
struct WebServer {
    child: Child,
    port: u16,
}

impl WebServer {
    fn serve(dir: &Path) -> WebServer {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return WebServer { child, port };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the web server on 127.0.0.1:{port} did not start");
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn vanilla_route(ad: &ClassAd) -> String {
    format!(
        "[ Name = \"VMCapsuleVanilla\"; TargetUniverse = 5 ]\n------\n{}",
        print_ad(ad)
    )
}

fn setup(root: &Path, name: &str, script: &str) -> PathBuf {
    let iwd = root.join(name);
    fs::create_dir_all(iwd.join("d/sub")).unwrap();
    fs::write(iwd.join("job.sh"), format!("#!/bin/sh\n{script}\n")).unwrap();
    fs::write(iwd.join("local.txt"), "local\n").unwrap();
    fs::write(iwd.join("d/a.txt"), "A\n").unwrap();
    fs::write(iwd.join("d/sub/b.txt"), "B\n").unwrap();
    iwd
}

/// Files under `dir`, job.sh excluded.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = crate::execute_node::files_under(dir);
    files.retain(|(rel, _)| rel != "job.sh");
    files
}

/// Also the launcher installed on the node (`VM_CAPSULE_NODE_LAUNCHER`): neither it
/// nor the agent travels; the node's run with the agent beside them.
#[test]
fn url_and_local_inputs_through_the_vanilla_flavour_match_a_native_run() {
    let mut pool = Pool::new(&template);
    let node_launcher = crate::router::bin("vm-capsule");
    pool.env.push((
        "_CONDOR_VM_CAPSULE_NODE_LAUNCHER".into(),
        node_launcher.display().to_string(),
    ));
    let web = tempfile::tempdir().unwrap();
    fs::write(web.path().join("remote.dat"), "fetched over http\n").unwrap();
    let server = WebServer::serve(web.path());
    let shared = pool.root.path().join("shared-fs");
    fs::create_dir_all(&shared).unwrap();
    fs::write(shared.join("via-file-url.txt"), "fetched by file://\n").unwrap();
    let script = "cat remote.dat via-file-url.txt local.txt a.txt sub/b.txt > result.txt; ls > listing.txt; exit 4";
    let submit = |iwd: &Path| {
        format!(
            "executable = {0}/job.sh\ninitialdir = {0}\ntransfer_input_files = http://127.0.0.1:{1}/remote.dat, file://{2}/via-file-url.txt, local.txt, d/\ntransfer_output_files = result.txt\noutput = out.txt\nqueue\n",
            iwd.display(),
            server.port,
            shared.display()
        )
    };
    let root = pool.root.path().join("users");
    let native_iwd = setup(&root, "native", script);
    let vanilla_iwd = setup(&root, "vanilla", script);
    let ads = job_ads(&[
        ("native".into(), submit(&native_iwd), 301),
        ("vanilla".into(), submit(&vanilla_iwd), 302),
    ]);

    // Natively, on the stand-in execute node.
    let mut native = ads[0].clone();
    native.insert(
        "Cmd",
        classad::Expr::string(native_iwd.join("job.sh").display().to_string()),
    );
    let env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
    let native_end = vanilla_execute_node(&native, &pool.root.path().join("native-sb"), &env);
    assert_eq!(native_end, JobEnd::Exited(4));
    assert_eq!(
        fs::read_to_string(native_iwd.join("result.txt")).unwrap(),
        "fetched over http\nfetched by file://\nlocal\nA\nB\n"
    );

    // Through the capsule: translate ships the entries as written and writes no input bytes.
    let run = pool.run_hook("translate", &vanilla_route(&ads[1]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let routed = classad::parse_old_ad(&run.stdout).unwrap();
    let transfer = string_attr(&routed, "TransferInput").unwrap();
    assert!(
        transfer.contains(&format!("http://127.0.0.1:{}/remote.dat", server.port)),
        "{transfer}"
    );
    assert!(transfer.ends_with("local.txt,d/"), "{transfer}");
    assert!(!transfer.contains("capsule-init"), "{transfer}");
    assert_eq!(
        string_attr(&routed, "Cmd").map(PathBuf::from),
        Some(node_launcher)
    );
    assert_eq!(
        evaluate_attr(&routed, "TransferExecutable"),
        Value::Bool(false)
    );
    let env = vec![
        ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
        ("TMPDIR".to_owned(), pool.root.path().display().to_string()),
    ];
    let end = vanilla_execute_node(&routed, &pool.root.path().join("vanilla-sb"), &env);
    assert_eq!(end, native_end);
    assert_eq!(tree(&vanilla_iwd), tree(&native_iwd));
    // The guest's own usage reached the job ad over Chirp (a stand-in server here).
    let chirp = fs::read_to_string(pool.root.path().join("vanilla-sb.chirp")).unwrap();
    let published = classad::parse_old_ad(&chirp).unwrap();
    assert_eq!(
        string_attr(&published, "VMCapsuleResult").as_deref(),
        Some("exited with code 4"),
        "{chirp}"
    );
    for name in [
        "VMCapsuleJobUserCpu",
        "VMCapsuleJobSysCpu",
        "VMCapsuleJobWallTime",
        "VMCapsulePeakRssKiB",
    ] {
        assert!(published.get(name).is_some(), "{name} missing in {chirp}");
    }
    let mut done = routed.clone();
    done.insert("ExitCode", classad::Expr::integer(4));
    pool.cleanup(&done);
}

/// Translate's own writes do not grow with the inputs in the vanilla flavour.
#[test]
fn vanilla_translate_writes_no_input_bytes() {
    let pool = Pool::new(&template);
    let iwd = setup(&pool.root.path().join("users"), "big", "true");
    fs::write(iwd.join("big.bin"), vec![7u8; 100 << 20]).unwrap();
    let text = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\ntransfer_input_files = big.bin, d/\nqueue\n",
        iwd.display()
    );
    let ad = job_ads(&[("big".into(), text, 303)]).remove(0);
    let run = pool.run_hook("translate", &vanilla_route(&ad));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let routed = classad::parse_old_ad(&run.stdout).unwrap();
    let scratch = PathBuf::from(string_attr(&routed, "VMCapsuleScratch").unwrap());
    // New bytes: files that are not hard links to the template.
    let written: u64 = fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap())
        .filter(|m| std::os::unix::fs::MetadataExt::nlink(m) == 1)
        .map(|m| m.len())
        .sum();
    assert!(written < 1 << 20, "translate wrote {written} bytes");
    let request = evaluate_attr(&routed, "RequestDisk").as_integer().unwrap();
    assert!(
        request > 100 << 10,
        "RequestDisk {request} KiB leaves no room for the inputs"
    );
}

/// The VM universe cannot fetch URLs: the job is held with the way out.
#[test]
fn vm_universe_holds_url_inputs_with_a_hint() {
    let pool = Pool::new(&template);
    let iwd = setup(&pool.root.path().join("users"), "url-vm", "true");
    let text = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\ntransfer_input_files = https://example.org/data.tar.gz\nqueue\n",
        iwd.display()
    );
    let ad = job_ads(&[("url-vm".into(), text, 304)]).remove(0);
    let run = pool.translate(&ad).unwrap_err();
    assert!(
        run.stderr
            .contains("https://example.org/data.tar.gz is a URL"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("vanilla-flavour route"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("cannot be read"), "{}", run.stderr);
}

/// URL output remaps: HTCondor's own transfer in the vanilla flavour; a clear error naming
/// the remap in the VM universe, and never a file called `osdf:` in Iwd.
#[test]
fn url_output_remaps() {
    let pool = Pool::new(&template);
    let iwd = setup(&pool.root.path().join("users"), "remap", "echo r > out.dat");
    let text = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\ntransfer_output_files = out.dat\ntransfer_output_remaps = \"out.dat = osdf:///ospool/u/out.dat\"\nqueue\n",
        iwd.display()
    );
    let ad = job_ads(&[("remap".into(), text, 305)]).remove(0);
    let run = pool.run_hook("translate", &vanilla_route(&ad));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let vanilla = classad::parse_old_ad(&run.stdout).unwrap();
    assert_eq!(
        string_attr(&vanilla, "TransferOutputRemaps").as_deref(),
        Some("out.dat = osdf:///ospool/u/out.dat")
    );
    pool.cleanup(&vanilla);

    let routed = pool.translate(&ad).unwrap();
    let scratch = PathBuf::from(string_attr(&routed, "VMCapsuleScratch").unwrap());
    assert_ok(
        run_capsule(&scratch.join("data.qcow2"), &pool.root.path().join("exec")),
        "capsule-init",
    );
    let (_, attrs) = pool.finalize(&ad, &routed);
    assert_eq!(evaluate_attr(&attrs, "ExitCode"), Value::Integer(125));
    let err = string_attr(&attrs, "VMCapsuleError").unwrap();
    assert!(
        err.contains("osdf:///ospool/u/out.dat") && err.contains("vanilla flavour"),
        "{err}"
    );
    assert!(!iwd.join("osdf:").exists());
    assert!(fs::read_dir(&iwd).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("osdf")));
    pool.cleanup(&routed);
}
