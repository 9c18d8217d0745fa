//! `vm-capsule ad fmt` / `ad eval` as an admin uses them.

use assert_cmd::Command;
use predicates::prelude::*;

fn vm_capsule() -> Command {
    Command::new(crate::router::bin("vm-capsule"))
}

#[test]
fn fmt_hook_sorts_and_prints_old_syntax() {
    vm_capsule()
        .args(["ad", "fmt", "--hook"])
        .write_stdin("b = TRUE\nA = \"x\\y\"\nC = [ p = 1.5 ]\n")
        .assert()
        .success()
        .stdout("A = \"x\\y\"\nC = [ p = 1.5 ]\nb = true\n");
}

#[test]
fn fmt_new_reads_a_hook_stream() {
    vm_capsule()
        .args(["ad", "fmt", "--new"])
        .write_stdin(
            "[ Name = \"VM\"; TargetUniverse = 13 ]\n------\nCmd = \"/bin/sh\"\r\nArgs = \"a b\"",
        )
        .assert()
        .success()
        .stdout("[ Name = \"VM\"; TargetUniverse = 13 ]\n[ Cmd = \"/bin/sh\"; Args = \"a b\" ]\n");
}

#[test]
fn fmt_hook_refuses_a_newline_in_a_string() {
    vm_capsule()
        .args(["ad", "fmt", "--hook"])
        .write_stdin("[ Note = \"two\\nlines\" ]")
        .assert()
        .failure()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains(
            "attribute Note: string value contains a newline",
        ));
}

#[test]
fn fmt_error_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.ad");
    std::fs::write(
        &path,
        "Cmd = \"/bin/true\"\nRequestMemory = (ImageSize + \n",
    )
    .unwrap();
    vm_capsule()
        .args(["ad", "fmt"])
        .arg(&path)
        .assert()
        .failure()
        .stderr(predicate::str::contains("job.ad: cannot parse"))
        .stderr(predicate::str::contains("line 2, column 30: in attribute RequestMemory: expected an expression, found end of input"));
}

#[test]
fn eval_request_memory_in_a_job_ad() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.ad");
    std::fs::write(
        &path,
        "ImageSize = 4096\nRequestMemory = ifthenelse(MemoryUsage =!= undefined,MemoryUsage,(ImageSize + 1023) / 1024)\n",
    )
    .unwrap();
    vm_capsule()
        .args(["ad", "eval", "RequestMemory * 2"])
        .arg("--ad")
        .arg(&path)
        .assert()
        .success()
        .stdout("8\n");
    vm_capsule()
        .args(["ad", "eval", "strcat(\"a\", 1.5, undefinedthing)"])
        .assert()
        .success()
        .stdout("undefined\n");
}

/// Issue 10: an expression is data, also when it starts with `-` (HTCondor: -7 / 2 is -3).
#[test]
fn eval_accepts_a_leading_hyphen() {
    vm_capsule()
        .args(["ad", "eval", "-7 / 2"])
        .assert()
        .success()
        .stdout("-3\n");
    vm_capsule()
        .args(["ad", "eval", "-x =?= undefined"])
        .assert()
        .success()
        .stdout("true\n");
    // `--` keeps working, and options may still follow the expression.
    vm_capsule()
        .args(["ad", "eval", "--", "-7 % 4"])
        .assert()
        .success()
        .stdout("-3\n");
    let dir = tempfile::tempdir().unwrap();
    let ad = dir.path().join("job.ad");
    std::fs::write(&ad, "RequestMemory = 512\n").unwrap();
    vm_capsule()
        .args(["ad", "eval", "-RequestMemory", "--ad"])
        .arg(&ad)
        .assert()
        .success()
        .stdout("-512\n");
}
