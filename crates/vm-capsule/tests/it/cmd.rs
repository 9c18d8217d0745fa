//! Running a command a test needs to succeed: one place that asserts the exit status and puts
//! the command and its stderr in the failure message.

use std::fmt::Display;
use std::process::{Command, Output};

/// Run `cmd`; it must exit 0. Its output.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Output {
    run_ok_needs(cmd, "")
}

/// [`run_ok`], saying what the test needs (a tool, root, a package) when `cmd` cannot start
/// or fails.
#[track_caller]
pub fn run_ok_needs(cmd: &mut Command, needs: &str) -> Output {
    let sep = if needs.is_empty() { "" } else { "; " };
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run {cmd:?}: {e}{sep}{needs}"),
    };
    assert_ok(out, format_args!("{cmd:?}{sep}{needs}"))
}

/// `out` of `what`, which must have exited 0: its stderr is in the failure message.
#[track_caller]
pub fn assert_ok(out: Output, what: impl Display) -> Output {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
