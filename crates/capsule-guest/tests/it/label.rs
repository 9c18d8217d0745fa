//! The agent as a systemd unit runs it: the data disk found by its FAT label among
//! other block devices, without udev, and the agent shipped on the data disk taking over from
//! the image's own when it differs.

use std::process::Command;

use capsule_manifest::Outcome;

use crate::harness::script;

#[test]
fn label_finds_the_data_disk_in_any_case() {
    let ran = script("echo hi; exit 3").run_by_label("condordata", None, &[]);
    assert_eq!(
        ran.result.outcome,
        Outcome::Exited { code: 3 },
        "{}",
        ran.log
    );
    assert_eq!(ran.text("stdout"), "hi\n");
    assert!(
        ran.log.contains("data disk labelled condordata: ") && ran.log.contains("/dev/vdb"),
        "{}",
        ran.log
    );
}

#[test]
fn shipped_agent_takes_over_when_it_differs() {
    // A different "agent": a script that says so, then runs the real one with the arguments it
    // was handed (which must name the device found by label).
    let real = env!("CARGO_BIN_EXE_capsule-init");
    let shipped = format!("#!/bin/sh\necho \"shipped agent: $*\" >&2\nexec {real} \"$@\"\n");
    let ran = script("echo from-job").run_by_label(
        "CONDORDATA",
        Some(shipped.as_bytes()),
        &["--shipped-agent"],
    );
    assert_eq!(
        ran.result.outcome,
        Outcome::Exited { code: 0 },
        "{}",
        ran.log
    );
    assert_eq!(ran.text("stdout"), "from-job\n");
    assert!(
        ran.log
            .contains("running the agent shipped on the data disk"),
        "{}",
        ran.log
    );
    assert!(ran.log.contains("shipped agent: --device "), "{}", ran.log);
    assert!(ran.log.contains("/dev/vdb --scratch"), "{}", ran.log);
    assert!(
        ran.log.contains("--no-poweroff --as-current-user"),
        "{}",
        ran.log
    );

    // The same binary on the disk: no hand-over.
    let own = std::fs::read(real).unwrap();
    let ran = script("exit 0").run_by_label("CONDORDATA", Some(&own), &["--shipped-agent"]);
    assert!(
        ran.log.contains("the agent on the data disk is this one"),
        "{}",
        ran.log
    );
}

#[test]
fn a_missing_disk_is_named_with_what_was_seen() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys/vda");
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::write(sys.join("size"), "4096").unwrap();
    std::fs::create_dir_all(dir.path().join("dev")).unwrap();
    std::fs::write(dir.path().join("dev/vda"), vec![0u8; 1 << 20]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_capsule-init"))
        .args(["--label", "CONDORDATA", "--wait", "1", "--no-poweroff"])
        .arg("--sys-block")
        .arg(dir.path().join("sys"))
        .arg("--dev-dir")
        .arg(dir.path().join("dev"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(
            "no data disk labelled CONDORDATA after 1 s; block devices seen: vda (no FAT volume)"
        ),
        "{log}"
    );
}
