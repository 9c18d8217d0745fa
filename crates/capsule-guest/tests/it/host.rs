//! Host-mode runs (no VM): every behaviour of the job runner that a boot would only slow down.

use capsule_disk::ImageFormat;
use capsule_manifest::{EntryKind, Outcome, OutputEntry, OutputRule};

use crate::harness::script;

fn exited(code: u8) -> Outcome {
    Outcome::Exited { code }
}

#[test]
fn argv_is_passed_exactly_with_spaces_quotes_and_empty_strings() {
    let mut c = script(r#"printf '[%s]\n' "$0" "$@""#);
    c.manifest.argv = vec![
        "my-name".into(),
        "a b".into(),
        r#""double" 'single'"#.into(),
        String::new(),
        "  lead and trail  ".into(),
        "back\\slash".into(),
    ];
    let ran = c.run();
    assert_eq!(ran.result.outcome, exited(0), "{}", ran.log);
    // $0 of a script is the script path the kernel ran, so argv[0] shows up via $0 only for
    // binaries; the arguments must come through untouched.
    let out = ran.text("stdout");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[1..],
        [
            "[a b]",
            r#"["double" 'single']"#,
            "[]",
            "[  lead and trail  ]",
            "[back\\slash]"
        ]
    );
}

#[test]
fn environment_is_exactly_the_manifest_plus_scratch_dir() {
    let mut c = script("env | sort");
    c.manifest.env.insert("WITH_EQ".into(), "a=b=c".into());
    c.manifest.env.insert("WITH_SPACE".into(), " x  y ".into());
    c.manifest.env.insert("EMPTY".into(), String::new());
    let ran = c.run();
    let out = ran.text("stdout");
    assert!(out.contains("WITH_EQ=a=b=c\n"), "{out}");
    assert!(out.contains("WITH_SPACE= x  y \n"), "{out}");
    assert!(out.contains("EMPTY=\n"), "{out}");
    let scratch = ran.scratch.join("work");
    assert!(
        out.contains(&format!("_CONDOR_SCRATCH_DIR={}\n", scratch.display())),
        "{out}"
    );
    // nothing leaks in from capsule-init's own environment (sh itself adds PWD, SHLVL, _)
    for line in out.lines() {
        let name = line.split('=').next().unwrap();
        assert!(
            [
                "WITH_EQ",
                "WITH_SPACE",
                "EMPTY",
                "_CONDOR_SCRATCH_DIR",
                "PWD",
                "SHLVL",
                "_",
                "OLDPWD"
            ]
            .contains(&name),
            "unexpected variable {line}"
        );
    }
}

#[test]
fn stdin_from_a_file_and_streams_kept_apart() {
    let mut c = script("cat; echo to-err >&2; echo to-out");
    c.file("in.txt", "line one\nline two\n", 0o644);
    c.manifest.stdin = Some("in.txt".parse().unwrap());
    c.manifest.stdout = "job.out".parse().unwrap();
    c.manifest.stderr = "job.err".parse().unwrap();
    let ran = c.run();
    assert_eq!(ran.text("job.out"), "line one\nline two\nto-out\n");
    assert_eq!(ran.text("job.err"), "to-err\n");
    // without a stdin file the job reads /dev/null
    let ran = script("cat; echo done").run_in_dir();
    assert_eq!(ran.text("stdout"), "done\n");
}

#[test]
fn vmdk_and_qcow2_image_files() {
    for format in [ImageFormat::Vmdk, ImageFormat::Qcow2] {
        let ran = script("echo out > out.txt; echo hello; exit 5").run_image(format);
        assert_eq!(ran.result.outcome, exited(5), "{format}: {}", ran.log);
        assert_eq!(ran.text("stdout"), "hello\n");
        assert_eq!(
            ran.output_tar(),
            [("out.txt".to_owned(), "out\n".to_owned())]
        );
    }
}

#[test]
fn exit_codes_0_1_255() {
    for code in [0u8, 1, 255] {
        let ran = script(&format!("exit {code}")).run();
        assert_eq!(ran.result.outcome, exited(code));
        assert!(ran.result.problems.is_empty());
        assert!(!ran.result.timed_out);
        assert!(ran.result.wall_time_secs > 0.0);
        assert!(ran.result.started_at_unix > 1.6e9);
        assert!(ran.result.peak_rss_kib > 0);
    }
}

#[test]
fn death_by_sigkill_and_sigsegv_is_a_signal() {
    for sig in [9u8, 11] {
        let ran = script(&format!("ulimit -c 0; kill -{sig} $$; sleep 5")).run();
        assert!(
            matches!(ran.result.outcome, Outcome::Signaled { signal, .. } if signal == sig),
            "{:?}",
            ran.result.outcome
        );
        assert!(!ran.result.timed_out);
    }
}

#[test]
fn time_limit_kills_the_whole_process_group() {
    let mut c = script("sleep 300 & echo $! > bg.pid; sleep 300");
    c.manifest.wall_time_limit_secs = Some(1);
    let ran = c.run();
    assert!(ran.result.timed_out);
    assert_eq!(
        ran.result.outcome,
        Outcome::Signaled {
            signal: 9,
            core_dumped: false
        }
    );
    assert!(
        ran.result.wall_time_secs < 30.0,
        "{}",
        ran.result.wall_time_secs
    );
    assert_eq!(
        ran.result.problems.first().map(|p| p.kind),
        Some(capsule_manifest::ProblemKind::TimeLimit)
    );
    assert!(ran
        .result
        .problem_text(|_| true)
        .unwrap_or_default()
        .contains("wall-time limit"));
    // the background child died too (at most a zombie waiting for its new parent)
    let pid = std::fs::read_to_string(ran.scratch.join("work/bg.pid")).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
    if let Ok(stat) = stat {
        let state = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        assert_eq!(state, "Z", "background child still alive: {stat}");
    }
    // outputs are still collected after a timeout
    assert!(ran
        .result
        .outputs
        .iter()
        .any(|o| o.path.as_str() == "bg.pid"));
}

#[test]
fn explicit_transfer_output_with_a_dir() {
    let mut c = script(
        "mkdir -p outdir/sub && echo a > outdir/sub/a.txt && echo bb > outdir/b.txt \
         && echo top > top.txt && echo no > notlisted.txt",
    );
    c.manifest.output = OutputRule::Explicit {
        paths: vec![
            "outdir/".parse().unwrap(),
            "top.txt".parse().unwrap(),
            "missing.txt".parse().unwrap(),
        ],
    };
    // the seed's mounted mode: the data disk as a plain directory
    let ran = c.run_in_dir();
    assert_eq!(ran.result.outcome, exited(0));
    assert_eq!(
        ran.result.outputs,
        [
            OutputEntry {
                path: "outdir".parse().unwrap(),
                kind: EntryKind::Dir,
                size: 5
            },
            OutputEntry {
                path: "top.txt".parse().unwrap(),
                kind: EntryKind::File,
                size: 4
            },
        ]
    );
    assert_eq!(ran.result.missing_outputs, ["missing.txt".parse().unwrap()]);
    let tar = ran.output_tar();
    let names: Vec<&str> = tar.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "outdir/",
            "outdir/b.txt",
            "outdir/sub/",
            "outdir/sub/a.txt",
            "top.txt"
        ]
    );
    assert_eq!(tar[3].1, "a\n");
}

#[test]
fn default_rule_takes_new_and_changed_top_level_files_only() {
    let mut c = script(
        "echo more >> changed.txt; touch -d '2001-01-01' touched.txt; echo new > new.txt; \
         mkdir -p sub && echo x > sub/inner.txt; ln -s /etc/passwd link",
    );
    c.file("unchanged.txt", "same\n", 0o644);
    c.file("changed.txt", "old\n", 0o644);
    c.file("touched.txt", "same size\n", 0o644);
    c.dir("sub");
    let ran = c.run();
    assert_eq!(ran.result.outcome, exited(0), "{}", ran.log);
    let got: Vec<&str> = ran.result.outputs.iter().map(|o| o.path.as_str()).collect();
    assert_eq!(got, ["changed.txt", "new.txt", "touched.txt"]);
    assert!(ran
        .result
        .warnings
        .iter()
        .any(|w| w.contains("\"link\"") && w.contains("symlink")));
    let tar = ran.output_tar();
    assert_eq!(tar[0], ("changed.txt".into(), "old\nmore\n".into()));
}

#[test]
fn explicit_output_through_a_symlink_is_not_followed() {
    let mut c = script("ln -s /etc leak; ln -s /etc/hostname file");
    c.manifest.output = OutputRule::Explicit {
        paths: vec![
            "leak/passwd".parse().unwrap(),
            "leak".parse().unwrap(),
            "file".parse().unwrap(),
        ],
    };
    let ran = c.run();
    assert!(ran.result.outputs.is_empty(), "{:?}", ran.result.outputs);
    assert_eq!(ran.result.warnings.len(), 3, "{:?}", ran.result.warnings);
    assert!(ran.output_tar().is_empty());
}

#[test]
fn a_job_that_cannot_start_is_reported() {
    let mut missing = script("true");
    missing.manifest.executable = "nothere".parse().unwrap();
    let ran = missing.run();
    assert_eq!(ran.result.outcome, Outcome::NotStarted);
    let e = ran.result.problem_text(|_| true).unwrap();
    assert!(
        e.contains("cannot execute") && e.contains("nothere") && e.contains("hint"),
        "{e}"
    );
    // stdout/stderr/output.tar are still written, empty
    assert_eq!(ran.text("stdout"), "");
    assert!(ran.output_tar().is_empty());

    let mut c = script("true");
    c.file("plain.sh", "#!/bin/sh\necho hi\n", 0o644);
    c.manifest.executable = "plain.sh".parse().unwrap();
    let ran = c.run();
    assert_eq!(ran.result.outcome, Outcome::NotStarted);
    let e = ran.result.problem_text(|_| true).unwrap();
    assert!(e.contains("Permission denied") && e.contains("0755"), "{e}");

    let mut c = script("true");
    c.manifest.stdin = Some("no-such-input".parse().unwrap());
    let e = c.run().result.problem_text(|_| true).unwrap();
    assert!(e.contains("stdin file \"no-such-input\""), "{e}");
}

#[test]
fn unknown_schema_version_is_refused_in_result_json() {
    let mut c = script("echo should not run");
    c.raw_manifest =
        Some(r#"{"schema_version": 2, "executable": "job.sh", "argv": ["job.sh"]}"#.into());
    let ran = c.run();
    assert_eq!(ran.result.outcome, Outcome::NotStarted);
    let e = ran.result.problem_text(|_| true).unwrap();
    assert!(e.contains("capsule.json has schema_version 2"), "{e}");
    assert_eq!(ran.text("stdout"), "");
    // the work dir was never populated
    assert!(!ran.scratch.join("work/job.sh").exists());
}

/// Outputs larger than the data disk: the job's real outcome still reaches
/// result.json, with an error naming the full disk, and no partial output.tar is left.
#[test]
fn outputs_that_fill_the_data_disk_still_leave_a_result() {
    let mut c = script("head -c 90000000 /dev/zero > big.bin; echo small; exit 3");
    c.disk_size = 64 << 20;
    let ran = c.run();
    assert_eq!(ran.result.outcome, exited(3), "{}", ran.log);
    let e = ran.result.problem_text(|_| true).unwrap_or_default();
    assert!(
        e.starts_with("outputs did not fit on the data disk (")
            && e.contains(" MiB free; output.tar needs 86 MiB, left empty): increase request_disk"),
        "{e}"
    );
    assert_eq!(
        ran.result.problems[0].kind,
        capsule_manifest::ProblemKind::OutputsDidNotFit
    );
    assert!(ran.result.outputs.is_empty(), "{:?}", ran.result.outputs);
    assert!(ran.output_tar().is_empty());
    // the small stream still arrives
    assert_eq!(ran.text("stdout"), "small\n");
    ran.fsck();
}

/// The same for a stream: stdout too large for the disk keeps the head that fits, with room
/// to spare for result.json; output.tar and stderr arrive whole.
#[test]
fn a_stream_too_large_for_the_data_disk_keeps_its_head() {
    let mut c = script("echo kept > small.txt; head -c 90000000 /dev/zero; echo oops >&2");
    c.disk_size = 64 << 20;
    let ran = c.run();
    assert_eq!(ran.result.outcome, exited(0), "{}", ran.log);
    let e = ran.result.problem_text(|_| true).unwrap_or_default();
    assert!(
        e.contains("; stdout needs 86 MiB, kept its first ")
            && e.ends_with("increase request_disk"),
        "{e}"
    );
    let stdout = std::fs::read(ran.data.join("stdout")).unwrap();
    assert!(stdout.len() > 50 << 20, "{}", stdout.len());
    assert!(stdout.iter().all(|&b| b == 0));
    assert_eq!(ran.text("stderr"), "oops\n");
    assert_eq!(
        ran.output_tar(),
        [("small.txt".to_owned(), "kept\n".to_owned())]
    );
    assert_eq!(ran.result.outputs.len(), 1);
    ran.fsck();
}

/// Outputs that fit to the last cluster leave no room for result.json: they are emptied so
/// that the result still gets written.
#[test]
fn outputs_that_fit_exactly_still_leave_room_for_the_result() {
    // The size is read from an input of fixed width, so probing the disk does not change it.
    let capsule = |n: u64| {
        let mut c = script("head -c $(cat n.txt) /dev/zero > fill.bin; exit 7");
        c.disk_size = 64 << 20;
        c.file("n.txt", &format!("{n:010}"), 0o644);
        c
    };
    let free = capsule(0).free_for_outputs();
    // output.tar = one 512-byte header + the data (a multiple of 512) + 1024 bytes of end
    // marker: exactly the free space, which is whole clusters.
    let ran = capsule(free - 1536).run();
    assert_eq!(ran.result.outcome, exited(7), "{}", ran.log);
    let e = ran.result.problem_text(|_| true).unwrap_or_default();
    assert!(
        e.starts_with("result.json did not fit on the data disk after the outputs (")
            && e.ends_with("they were emptied to make room; increase request_disk"),
        "{e}\n{}",
        ran.log
    );
    assert!(ran.result.outputs.is_empty(), "{:?}", ran.result.outputs);
    assert!(ran.output_tar().is_empty());
    ran.fsck();
}
