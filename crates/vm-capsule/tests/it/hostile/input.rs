//! Loose input from the job ad and from the submitter: bytes, owners, sizes.

use super::*;

/// 11.11: a byte that is not UTF-8 costs neither the hold nor the terminate event.
#[test]
fn item_11_a_latin1_byte_in_an_ad() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "latin1", "", 1111);
    let mut text = print_ad(&j.ad).into_bytes();
    text.extend_from_slice(b"Description = \"caf\xe9\"\n");
    let mut stdin = b"[ Name = \"VM capsule\"; TargetUniverse = 13 ]\n------\n".to_vec();
    stdin.extend_from_slice(&text);
    let run = pool.run_hook_bytes("translate", &stdin);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let routed = classad::parse_old_ad(&run.stdout).unwrap();
    let mut fin = text.clone();
    fin.extend_from_slice(b"\n------\n");
    fin.extend_from_slice(print_ad(&routed).as_bytes());
    let run = pool.run_hook_bytes("finalize", &fin);
    assert_eq!(run.code, 0);
    let attrs = classad::parse_old_ad(&run.stdout).unwrap();
    // The disk was never run: finalize says so, it does not go silent.
    assert_eq!(attr(&attrs, "ExitCode"), Value::Integer(125));
}

/// 11.17: loose stdin is refused deliberately (retried, or held with a reason).
#[test]
fn item_17_loose_stdin() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "loose", "", 1117);
    // No route line: the router never sends that; exit non-zero, print nothing.
    let run = pool.run_hook("translate", &print_ad(&j.ad));
    assert_ne!(run.code, 0);
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains("route line"), "{}", run.stderr);
    let cases: [(&str, Expr, &str); 5] = [
        ("ClusterId", Expr::string("12"), "ClusterId"),
        ("ClusterId", Expr::integer(i64::MAX), "out of range"),
        ("TransferInput", Expr::integer(3), "TransferInput"),
        ("RequestMemory", Expr::integer(i64::MAX), "RequestMemory"),
        ("Owner", Expr::string("../../x"), "Owner"),
    ];
    for (name, value, expected) in cases {
        let mut ad = j.ad.clone();
        ad.insert(name, value);
        let run = pool.translate(&ad).unwrap_err();
        assert!(run.stderr.contains(expected), "{name}: {}", run.stderr);
    }
    let mut ad = j.ad.clone();
    ad.remove("ClusterId");
    let run = pool.translate(&ad).unwrap_err();
    assert!(
        run.stderr.contains("ClusterId is missing"),
        "{}",
        run.stderr
    );
    assert!(
        fs::read_dir(pool.root.path().join("scratch"))
            .unwrap()
            .count()
            <= 1
    );
}

/// 11.13: `Owner` that is not a plain name never becomes a path.
#[test]
fn item_13_owner_is_validated() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let j = job(&pool, "owner", "", 1113);
    for owner in ["../../x", "", "a/b", ".."] {
        let mut ad = j.ad.clone();
        ad.insert("Owner", Expr::string(owner));
        let run = pool.translate(&ad).unwrap_err();
        assert!(run.stderr.contains("Owner"), "{owner:?}: {}", run.stderr);
    }
    assert!(!pool.root.path().join("x").exists());
    assert_eq!(
        fs::read_dir(pool.root.path().join("scratch"))
            .unwrap()
            .count(),
        0
    );
}

/// 11.14: the data disk leaves room for outputs even when condor_submit wrote
/// `RequestDisk = DiskUsage` (about the inputs), and grows with what the job asks.
#[test]
fn item_14_data_disk_sizing() {
    let pool = Pool::new(&template(ImageFormat::Qcow2));
    let small = job(&pool, "small", "", 1114);
    let routed = pool.translate(&small.ad).unwrap();
    let bytes = attr(&routed, "VMCapsuleDataDiskBytes")
        .as_integer()
        .unwrap();
    assert!(
        bytes >= 64 << 20,
        "headroom (64 MiB here) is the floor: {bytes}"
    );
    let big = job(&pool, "big", "request_disk = 300 MB", 1124);
    let routed = pool.translate(&big.ad).unwrap();
    let bytes = attr(&routed, "VMCapsuleDataDiskBytes")
        .as_integer()
        .unwrap();
    assert!(bytes >= 300 << 20, "{bytes}");
    let request = attr(&routed, "RequestDisk").as_integer().unwrap();
    assert!(
        request * 1024 >= bytes,
        "the routed job asks for its disks: {request} KiB"
    );
}

/// An input directory with two links to itself (`d/a -> .`, `d/b -> .`): translate holds the
/// job at once, naming the link and the directory it loops to, in the VM universe where it
/// packs the inputs itself. (Before: it walked the 2^64 paths until the hook's watchdog, and
/// again at every router poll.)
#[test]
fn an_input_dir_that_links_to_itself_is_held_at_once() {
    let mut pool = Pool::new(&template(ImageFormat::Qcow2));
    pool.env
        .push(("_CONDOR_VM_CAPSULE_HOOK_TIMEOUT".into(), "15".into()));
    let j = job(&pool, "loop", "transfer_input_files = d", 2061);
    let d = j.iwd.join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), "x").unwrap();
    std::os::unix::fs::symlink(".", d.join("a")).unwrap();
    std::os::unix::fs::symlink(".", d.join("b")).unwrap();
    let started = std::time::Instant::now();
    let run = pool.translate(&j.ad).unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}: {}",
        started.elapsed(),
        run.stderr
    );
    assert!(
        ["a", "b"].iter().any(|l| run.stderr.contains(&format!(
            "{} leads back to {}",
            d.join(l).display(),
            d.display()
        ))) && run.stderr.contains("condor_hold"),
        "{}",
        run.stderr
    );
    assert_eq!(
        fs::read_dir(pool.root.path().join("scratch"))
            .unwrap()
            .flat_map(|owner| fs::read_dir(owner.unwrap().path()).unwrap())
            .filter(|e| !e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.'))
            .count(),
        0,
        "nothing staged"
    );
}
