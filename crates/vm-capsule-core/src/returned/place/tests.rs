#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use tar::EntryType;

use super::*;
use crate::job::JobSpec;

/// A raw member: header with `name` (first 100 bytes), type and data; long names go in a GNU
/// long-name member first.
fn member(name: &[u8], kind: EntryType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // Long names, and names with a NUL (which a header field cannot carry), travel in a GNU
    // long-name member first.
    if name.len() > 100 || (name.contains(&0) && name != b"././@LongLink") {
        out.extend(member(b"././@LongLink", EntryType::GNULongName, name));
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(kind);
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn files(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, data) in entries {
        tar.extend(member(name.as_bytes(), EntryType::Regular, data));
    }
    tar.extend([0u8; 1024]);
    tar
}

fn job(iwd: &Path, extra: &str) -> JobSpec {
    let ad = classad::parse_old_ad(&format!(
        "ClusterId = 3\nProcId = 1\nOwner = \"u\"\nIwd = \"{}\"\nCmd = \"job.sh\"\n{extra}",
        iwd.display()
    ))
    .unwrap();
    JobSpec::from_ad(&ad).unwrap()
}

fn place(iwd: &Path, extra: &str, tar: &[u8]) -> Placement {
    let rules = OutputRules::for_job(&job(iwd, extra)).unwrap();
    place_outputs(tar, &rules, "3.1", &TempRecord::new())
}

fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walk(dir) {
        out.push(e.strip_prefix(dir).unwrap().display().to_string());
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

#[test]
fn hostile_names_from_the_shared_table_do_not_escape() {
    let dir = tempfile::tempdir().unwrap();
    let iwd = dir.path().join("iwd");
    fs::create_dir(&iwd).unwrap();
    let mut tar = Vec::new();
    for name in capsule_manifest::HOSTILE_NAMES {
        tar.extend(member(name, EntryType::Regular, b"x"));
    }
    tar.extend([0u8; 1024]);
    let placed = place(&iwd, "", &tar);
    assert_eq!(placed.files, 0, "{placed:?}");
    assert_eq!(tree(dir.path()), vec!["iwd"]);
    assert!(!Path::new("/tmp/abs-escape").exists());
}

/// Issue 11.1: only what HTCondor itself would bring back is placed.
#[test]
fn undeclared_outputs_are_reported_not_placed() {
    let dir = tempfile::tempdir().unwrap();
    let iwd = dir.path();
    fs::write(iwd.join("job.sh"), "original").unwrap();
    let hostile = files(&[
        (".ssh/authorized_keys", b"attacker key"),
        (".bashrc", b"evil"),
        ("job.sh", b"replaced"),
        ("out.txt", b"real output"),
    ]);
    let named = place(iwd, "TransferOutput = \"out.txt\"\n", &hostile);
    assert_eq!(named.files, 1, "{named:?}");
    assert_eq!(named.problems.len(), 3, "{named:?}");
    assert!(named
        .summary()
        .contains("\".bashrc\" was not placed: transfer_output_files does not name it"));
    assert_eq!(tree(iwd), vec!["job.sh", "out.txt"]);
    assert_eq!(fs::read_to_string(iwd.join("job.sh")).unwrap(), "original");

    // Without transfer_output_files: top-level files only, never the executable.
    let default = place(iwd, "", &hostile);
    assert_eq!(default.files, 2, "{default:?}");
    assert_eq!(tree(iwd), vec![".bashrc", "job.sh", "out.txt"]);
    assert_eq!(fs::read_to_string(iwd.join("job.sh")).unwrap(), "original");
    assert!(!iwd.join(".ssh").exists());
}

#[test]
fn symlinked_directories_and_targets_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let iwd = dir.path().join("iwd");
    let outside = dir.path().join("outside");
    fs::create_dir(&iwd).unwrap();
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, iwd.join("out")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), iwd.join("link.txt")).unwrap();
    let placed = place(
        &iwd,
        "TransferOutput = \"out,link.txt\"\n",
        &files(&[("out/file.txt", b"x"), ("link.txt", b"new")]),
    );
    assert!(!outside.join("file.txt").exists());
    assert!(!outside.join("victim").exists());
    // The symlink itself was replaced by a regular file.
    assert!(fs::symlink_metadata(iwd.join("link.txt"))
        .unwrap()
        .is_file());
    assert_eq!(placed.problems.len(), 1, "{placed:?}");
}

#[test]
fn remaps_named_paths_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let iwd = dir.path().join("iwd");
    fs::create_dir(&iwd).unwrap();
    let abs = dir.path().join("abs");
    fs::create_dir(&abs).unwrap();
    let placed = place(
        &iwd,
        &format!(
            "TransferOutput = \"a.out,b.out,sub/c.txt,outdir\"\nTransferOutputRemaps = \"a.out = results/a.txt;b.out = {}\"\n",
            abs.join("b.txt").display()
        ),
        &files(&[
            ("a.out", b"a"),
            ("b.out", b"b"),
            ("sub/c.txt", b"c"),
            ("outdir/x/y.txt", b"y"),
        ]),
    );
    assert!(placed.problems.is_empty(), "{placed:?}");
    assert_eq!(fs::read(iwd.join("results/a.txt")).unwrap(), b"a");
    assert_eq!(fs::read(abs.join("b.txt")).unwrap(), b"b");
    assert_eq!(fs::read(iwd.join("c.txt")).unwrap(), b"c");
    assert_eq!(fs::read(iwd.join("outdir/x/y.txt")).unwrap(), b"y");
}

/// Issue 11.4 and 11.20: a deep chain of directories is placed in one pass, and a member
/// deeper than the bound leaves nothing behind.
#[test]
fn deep_nesting_is_bounded_and_refused_members_leave_no_directories() {
    let dir = tempfile::tempdir().unwrap();
    let mut tar = Vec::new();
    let mut path = String::from("d");
    for _ in 0..super::fs::MAX_DEPTH - 1 {
        tar.extend(member(path.as_bytes(), EntryType::Directory, b""));
        path.push_str("/d");
    }
    tar.extend(member(
        format!("{path}/f").as_bytes(),
        EntryType::Regular,
        b"deep",
    ));
    tar.extend([0u8; 1024]);
    let ok = place(dir.path(), "TransferOutput = \"d\"\n", &tar);
    assert!(!ok.has_problems(), "{ok:?}");
    assert_eq!(
        fs::read_to_string(dir.path().join(format!("{path}/f"))).unwrap(),
        "deep"
    );

    let other = tempfile::tempdir().unwrap();
    let too_deep = "e/".repeat(super::fs::MAX_DEPTH + 5) + "f";
    let placed = place(
        other.path(),
        "TransferOutput = \"e\"\n",
        &files(&[(too_deep.as_str(), b"x")]),
    );
    assert!(placed.summary().contains("nested more than"), "{placed:?}");
    assert_eq!(tree(other.path()), Vec::<String>::new());
}

#[test]
fn problems_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let placed = place(dir.path(), "TransferOutput = \"only\"\n", &files(&entries));
    assert_eq!(placed.problems.len(), MAX_PROBLEMS);
    assert_eq!(placed.more_problems, 100 - MAX_PROBLEMS as u64);
    assert!(placed.summary().ends_with("and 80 more"));
}
