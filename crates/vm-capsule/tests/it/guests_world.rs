//! The real Debian systemd template (`guests`) in the vanilla flavour with everything a job
//! may reach outside its capsule, in one job: the network it asked for (a test host in a
//! network namespace, as in `network`), a read-only host path standing in for `/cvmfs` (as
//! in `host_paths`) and its output while it runs (as in `live_output`). Under systemd the
//! agent is a unit, not init: it must bring the NIC up without fighting the image, find the
//! fw_cfg settings (udev loads `qemu_fw_cfg`, or the agent does) and the virtio-serial port.
//!
//! Boots: 1 (the systemd template under TCG). Needs root (namespaces, the template build).

use std::fs;
use std::time::{Duration, Instant};

use crate::guests::systemd_pool;
use crate::interrupt::{routed_job, StandInStarter};
use crate::network::{TestNet, HOST, HOST_PORT, LOOPBACK_PORT};

/// Numbered lines the job prints, one a second, once its network and share are checked.
const TICKS: u32 = 12;

fn len(path: &std::path::Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// One job on the systemd template: downloads a file from the test host and not from the
/// node's 127.0.0.1, reads the host path and cannot write to it, then prints a line a second;
/// the slot's stdout grows at every sample while it runs and ends as exactly what it printed.
#[test]
fn systemd_template_job_with_network_host_path_and_live_output() {
    let (mut pool, _) = systemd_pool();
    let mut net = TestNet::new("world");
    let payload = net.serve_data_and_secret(pool.root.path(), 1);

    // STAND-IN for /cvmfs on the execute node.
    let share = pool.root.path().join("node").join("cvmfs-stand-in");
    fs::create_dir_all(&share).unwrap();
    fs::write(share.join("hello.txt"), "hello from the node").unwrap();
    let hp = share.display().to_string();
    pool.env
        .push(("_CONDOR_VM_CAPSULE_HOST_PATHS".into(), hp.clone()));

    // The template has busybox (static) but neither wget nor curl: the job uses busybox's.
    let script = format!(
        "busybox wget -q -O got.bin http://{HOST}:{HOST_PORT}/data.bin && echo \"fetched $(sha256sum < got.bin)\"\n\
         for u in http://{HOST}:{LOOPBACK_PORT}/ http://127.0.0.1:{LOOPBACK_PORT}/ http://10.0.2.2:{LOOPBACK_PORT}/; do\n\
           if timeout 10 busybox wget -q -O - \"$u\" 2>/dev/null; then echo \"REACHED $u\"; else echo \"refused $u\"; fi\n\
         done\n\
         echo \"file: $(cat \"$HP/hello.txt\")\"\n\
         if (echo x > \"$HP/new.txt\") 2> err; then echo 'write: allowed'\n\
         elif grep -q 'Read-only file system' err; then echo 'write: EROFS'; else echo \"write: $(cat err)\"; fi\n\
         i=1; while [ $i -le {TICKS} ]; do echo \"line $i\"; i=$((i+1)); sleep 1; done"
    );
    let submit = format!(
        "output = out.txt\nerror = err.txt\nenvironment = \"HP={hp}\"\n+VMCapsuleNetwork = true\n+VMCapsuleHostPaths = \"{hp}\""
    );
    let routed = routed_job(&pool, "world", &script, &submit, 2601);
    let starter = StandInStarter::new(&pool, routed, "world-sandbox");
    let knobs = [
        ("_CONDOR_VM_CAPSULE_NETWORK", "nat"),
        ("_CONDOR_VM_CAPSULE_HOST_PATHS", hp.as_str()),
    ];
    // The launcher (and so passt and QEMU) lives in the node's namespace.
    let started = Instant::now();
    let mut launcher = net.in_node(|| starter.start_with(&knobs));
    let out = starter.sandbox.join("_condor_stdout");
    // The ticking has begun: from here the job prints a line a second for TICKS s.
    // The launcher removes the console log at its end: what it said is kept for the message.
    let mut console = String::new();
    while !fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("line 1\n")
    {
        console = fs::read_to_string(starter.sandbox.join("console.log")).unwrap_or(console);
        assert!(
            launcher.try_wait().unwrap().is_none(),
            "the launcher ended before the job printed line 1: {}\nstdout: {}\nconsole: {console}",
            starter.stderr(),
            fs::read_to_string(&out).unwrap_or_default()
        );
        assert!(
            started.elapsed() < Duration::from_secs(400),
            "no line 1 after 400 s: {}",
            starter.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let boot_to_job = started.elapsed();
    // What the agent said about its devices (for the log of a slow or odd run).
    for l in console.lines().filter(|l| {
        ["devices:", "network:", "control:", "host path"]
            .iter()
            .any(|w| l.contains(w))
    }) {
        eprintln!("console: {l}");
    }
    let mut samples = vec![len(&out)];
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(2000));
        console = fs::read_to_string(starter.sandbox.join("console.log")).unwrap_or(console);
        assert!(
            launcher.try_wait().unwrap().is_none(),
            "the launcher ended early: {}\nconsole: {console}",
            starter.stderr()
        );
        samples.push(len(&out));
    }
    eprintln!(
        "systemd template: launch to the job's line 1 {:.1} s; slot stdout sizes while it ran: {samples:?}",
        boot_to_job.as_secs_f64()
    );
    for pair in samples.windows(2) {
        assert!(
            pair[1] > pair[0],
            "the slot's stdout did not grow between two samples: {samples:?}"
        );
    }
    let status = starter.finish(&mut launcher);
    let stdout = fs::read_to_string(&out).unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}: {}\nstdout: {stdout}",
        starter.stderr()
    );
    let sha = vm_capsule_core::digest::sha256_hex(&payload);
    let mut expected = format!(
        "fetched {sha}  -\n\
         refused http://{HOST}:{LOOPBACK_PORT}/\n\
         refused http://127.0.0.1:{LOOPBACK_PORT}/\n\
         refused http://10.0.2.2:{LOOPBACK_PORT}/\n\
         file: hello from the node\n\
         write: EROFS\n"
    );
    for i in 1..=TICKS {
        expected.push_str(&format!("line {i}\n"));
    }
    assert_eq!(stdout, expected, "stderr: {}", starter.stderr());
    assert!(
        !share.join("new.txt").exists(),
        "the guest wrote to the host path"
    );
}
