//! Network on request, vanilla flavour, with real parts: the test makes an execute node and a
//! test host as two network namespaces joined by a veth pair (addresses only in
//! 10.231.0.0/24, inside namespaces the test creates; nothing else is ever addressed), runs
//! the launcher inside the node's namespace, and looks at what the guest reached.
//!
//! Making namespaces needs root (CI runs the suite as root).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::execute_node::{vanilla_execute_node, JobEnd};
use crate::router::{job_ads, Pool};
use crate::vanilla::template;

/// The test host's address (the node's gateway).
pub(crate) const HOST: &str = "10.231.0.1";
/// The node's address.
const NODE: &str = "10.231.0.2";
/// The test host's HTTP server.
pub(crate) const HOST_PORT: u16 = 8931;
/// A server on the node's own loopback, which no guest may reach.
pub(crate) const LOOPBACK_PORT: u16 = 8932;

/// Two namespaces (node, test host) and the servers in them; removed when dropped, also
/// when the test fails.
pub(crate) struct TestNet {
    pub(crate) node: String,
    pub(crate) host: String,
    servers: Vec<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestNet {
    pub(crate) fn new(tag: &str) -> TestNet {
        assert!(
            rustix::process::geteuid().is_root(),
            "network tests make network namespaces and need root (CI runs as root)"
        );
        let pid = std::process::id();
        let net = TestNet {
            node: format!("vmcap-node-{tag}-{pid}"),
            host: format!("vmcap-host-{tag}-{pid}"),
            servers: Vec::new(),
        };
        ip(&["netns", "add", &net.node]);
        ip(&["netns", "add", &net.host]);
        let (a, b) = (format!("vcn{pid}"), format!("vch{pid}"));
        ip(&[
            "link", "add", &a, "netns", &net.node, "type", "veth", "peer", "name", &b, "netns",
            &net.host,
        ]);
        for (ns, dev, addr) in [(&net.node, &a, NODE), (&net.host, &b, HOST)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&["-n", &net.node, "route", "add", "default", "via", HOST]);
        net
    }

    /// An HTTP server on `addr:port` serving `dir`, inside namespace `ns`.
    pub(crate) fn serve(&mut self, ns: &str, addr: &str, port: u16, dir: &Path) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-m", "http.server"])
            .args(["--bind", addr, "--directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.servers.push(child);
        // Ready once it answers from inside its namespace.
        let start = Instant::now();
        loop {
            let ok = Command::new("ip")
                .args(["netns", "exec", ns, "curl", "-fsS", "-o", "/dev/null"])
                .arg(format!("http://{addr}:{port}/"))
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "server {addr}:{port} did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run `f` on a thread that lives in the node's namespace (and so does every process it
    /// starts).
    /// Serve `data.bin` (`mib` MiB that are not all alike: what arrives must be the file,
    /// whole) from the test host, and `NODE-LOOPBACK-SECRET` from the node's 127.0.0.1; both
    /// directories are made under `root`. Returns the file's bytes.
    pub(crate) fn serve_data_and_secret(&mut self, root: &Path, mib: u32) -> Vec<u8> {
        let www = root.join("www");
        fs::create_dir_all(&www).unwrap();
        let payload: Vec<u8> = (0..mib << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        fs::write(www.join("data.bin"), &payload).unwrap();
        self.serve(&self.host.clone(), HOST, HOST_PORT, &www);
        let secret = root.join("secret");
        fs::create_dir_all(&secret).unwrap();
        fs::write(secret.join("index.html"), "NODE-LOOPBACK-SECRET\n").unwrap();
        self.serve(&self.node.clone(), "127.0.0.1", LOOPBACK_PORT, &secret);
        payload
    }

    pub(crate) fn in_node<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/run/netns").join(&self.node);
        std::thread::scope(|s| {
            s.spawn(move || {
                let ns = fs::File::open(&path).unwrap();
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in [&self.node, &self.host] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Translate a job running `script` (with `+VMCapsuleNetwork = true` when `network`) and run
/// it through the launcher in the node's namespace; its end and its `out.txt`/`err.txt`.
fn run_job(
    pool: &Pool,
    net: &TestNet,
    name: &str,
    script: &str,
    network: bool,
    node_env: &[(&str, &str)],
) -> (JobEnd, String, String, PathBuf) {
    let iwd = pool.root.path().join(name);
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), format!("#!/bin/sh\n{script}\n")).unwrap();
    let ask = if network {
        "+VMCapsuleNetwork = true\n"
    } else {
        ""
    };
    let submit = format!(
        "executable = {0}/job.sh\ninitialdir = {0}\noutput = out.txt\nerror = err.txt\n{ask}queue\n",
        iwd.display()
    );
    let ad = job_ads(&[(name.into(), submit, 5)]).remove(0);
    let routed = pool.translate_vanilla(&ad);
    let sandbox = pool.root.path().join(format!("sandbox-{name}"));
    let mut env = vec![(
        "PATH".to_owned(),
        "/usr/bin:/bin:/usr/sbin:/sbin".to_owned(),
    )];
    env.extend(
        node_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let end = net.in_node(|| vanilla_execute_node(&routed, &sandbox, &env));
    let read = |f: &str| fs::read_to_string(iwd.join(f)).unwrap_or_default();
    (end, read("out.txt"), read("err.txt"), sandbox)
}

/// A job that asks for a network downloads a file from the test host (address, route and
/// DHCP from `passt`, through the node's own network), cannot reach a server on the node's
/// 127.0.0.1 (through the gateway address, which slirp and `passt` without `--no-map-gw`
/// map to the node's loopback, nor any other way), and is told the node's DNS server; a job
/// that did not ask has no interface but `lo`; and on a node whose admin did not allow it the
/// launcher refuses before booting, naming the knob.
#[test]
fn network_on_request_reaches_the_test_host_and_not_the_nodes_loopback() {
    let pool = Pool::new(&template("console=ttyS0 quiet panic=-1"));
    let mut net = TestNet::new("req");
    let payload = net.serve_data_and_secret(pool.root.path(), 3);

    let allowed = [("_CONDOR_VM_CAPSULE_NETWORK", "nat")];
    let script = format!(
        "wget -q -O got.bin http://{HOST}:{HOST_PORT}/data.bin && echo fetched\n\
         timeout 10 wget -q -O - http://{HOST}:{HOST_PORT}/ >/dev/null && echo control-reached\n\
         for u in http://{HOST}:{LOOPBACK_PORT}/ http://127.0.0.1:{LOOPBACK_PORT}/ http://10.0.2.2:{LOOPBACK_PORT}/; do\n\
           if timeout 10 wget -q -O - \"$u\" 2>/dev/null; then echo \"REACHED $u\"; else echo \"refused $u\"; fi\n\
         done\n\
         cat /etc/resolv.conf\n\
         ls /sys/class/net"
    );
    let (end, out, err, _) = run_job(&pool, &net, "asks", &script, true, &allowed);
    assert_eq!(end, JobEnd::Exited(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("fetched"), "{out}\n{err}");
    // The probe below reaches what it can reach (busybox's `wget -T` crashes: `timeout` bounds it).
    assert!(out.contains("control-reached"), "{out}\n{err}");
    let got = fs::read(pool.root.path().join("asks/got.bin")).unwrap();
    assert!(
        got == payload,
        "the file arrived changed ({} bytes)",
        got.len()
    );
    assert!(
        !out.contains("NODE-LOOPBACK-SECRET") && !out.contains("REACHED"),
        "{out}"
    );
    assert_eq!(out.matches("refused").count(), 3, "{out}");
    // DNS: the guest is told the node's resolver (passt reads the node's resolv.conf; one
    // on the node's loopback is not passed on).
    let node_dns: Vec<String> = fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.starts_with("127.") && a.parse::<std::net::Ipv4Addr>().is_ok())
        .collect();
    if let Some(first) = node_dns.first() {
        assert!(out.contains(&format!("nameserver {first}")), "{out}");
    }
    assert!(out.contains("eth0"), "{out}");

    // A job that did not ask, on the same node: no interface but lo.
    let (end, out, err, _) = run_job(&pool, &net, "quiet", "ls /sys/class/net", false, &allowed);
    assert_eq!(end, JobEnd::Exited(0), "{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        vec!["lo"],
        "{out}"
    );

    // A node that does not allow it: the launcher fails before any boot, naming the knob.
    let started = Instant::now();
    let (end, _, _, sandbox) = run_job(&pool, &net, "refused", "echo ran", true, &[]);
    assert_eq!(end, JobEnd::Exited(125));
    let err = fs::read_to_string(sandbox.join("_condor_stderr")).unwrap();
    assert!(err.contains("VM_CAPSULE_NETWORK = none"), "{err}");
    assert!(!sandbox.join("console.log").exists(), "a guest was booted");
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Translate carries the request: the vanilla routed job matches only nodes whose probe
/// offers `nat`, its capsule ad (and the VM-universe routed ad) says `JobVMNetworking` with
/// condor_submit's requirement on `VM_Networking`; a job that does not ask says false and
/// requires nothing; a request that is not a boolean is held, naming the attribute.
#[test]
fn translate_carries_the_request_to_the_matching_and_the_capsule() {
    use classad::eval::evaluate_attr;
    use classad::print::expr_to_string;
    use classad::{Syntax, Value};
    let pool = Pool::new(&template("console=ttyS0 quiet panic=-1"));
    let iwd = pool.root.path().join("t");
    fs::create_dir_all(&iwd).unwrap();
    fs::write(iwd.join("job.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let ad_of = |name: &str, extra: &str| {
        let submit = format!(
            "executable = {0}/job.sh\ninitialdir = {0}\n{extra}queue\n",
            iwd.display()
        );
        job_ads(&[(name.into(), submit, 9)]).remove(0)
    };
    let req = |ad: &classad::ClassAd| expr_to_string(ad.get("Requirements").unwrap(), Syntax::New);
    let asks = ad_of("asks", "+VMCapsuleNetwork = true\n");
    let routed = pool.translate_vanilla(&asks);
    assert!(
        req(&routed).contains("TARGET.VMCapsuleNetwork is \"nat\""),
        "{}",
        req(&routed)
    );
    let scratch = match evaluate_attr(&routed, "VMCapsuleScratch") {
        Value::String(s) => PathBuf::from(s),
        other => panic!("{other:?}"),
    };
    let capsule =
        classad::parse_old_ad(&fs::read_to_string(scratch.join("vm-capsule.ad")).unwrap()).unwrap();
    assert_eq!(
        evaluate_attr(&capsule, "JobVMNetworking"),
        Value::Bool(true)
    );
    let vm = pool.translate(&asks).unwrap();
    assert_eq!(evaluate_attr(&vm, "JobVMNetworking"), Value::Bool(true));
    assert_eq!(
        evaluate_attr(&vm, "JobVMNetworkingType"),
        Value::String("nat".into())
    );
    assert!(req(&vm).contains("TARGET.VM_Networking"), "{}", req(&vm));

    let quiet = pool.translate_vanilla(&ad_of("quiet", ""));
    assert!(!req(&quiet).contains("VMCapsuleNetwork"), "{}", req(&quiet));
    let vm = pool.translate(&ad_of("quiet", "")).unwrap();
    assert_eq!(evaluate_attr(&vm, "JobVMNetworking"), Value::Bool(false));
    assert!(!req(&vm).contains("VM_Networking"), "{}", req(&vm));

    let odd = ad_of("odd", "+VMCapsuleNetwork = \"yes\"\n");
    let run = pool.run_hook(
        "translate",
        &format!(
            "[ Name = \"V\"; TargetUniverse = 5 ]\n------\n{}",
            crate::router::print_ad(&odd)
        ),
    );
    assert!(
        run.stderr.contains("VMCapsuleNetwork") && run.stderr.contains("not true or false"),
        "{}",
        run.stderr
    );
}
