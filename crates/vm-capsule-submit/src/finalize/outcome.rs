//! The attributes finalize prints for the original job: the guest's real exit status and
//! usage, or the capsule's failure.

use classad::{ClassAd, Expr, Literal};

use vm_capsule_core::returned::{ExitStatus, JobExit};
use vm_capsule_core::text::safe_text;

/// `ExitCode` when the capsule failed ([`vm_capsule_core::exit::CAPSULE_FAILED`]).
pub const EXIT_CAPSULE_FAILED: i64 = vm_capsule_core::exit::CAPSULE_FAILED as i64;
/// `ExitCode` when the job could not be started in the guest ([`vm_capsule_core::exit::NOT_STARTED`]).
pub const EXIT_NOT_STARTED: i64 = vm_capsule_core::exit::NOT_STARTED as i64;
/// Longest `VMCapsuleError`, in characters.
const MAX_ERROR_CHARS: usize = 1000;

/// `ExitCode`/`ExitBySignal`/`ExitSignal` and usage from the job's end.
pub fn exit_attributes(attrs: &mut ClassAd, exit: &JobExit) {
    match &exit.status {
        ExitStatus::Exited(code) => {
            attrs.insert("ExitCode", Expr::integer(i64::from(*code)));
            attrs.insert("ExitBySignal", Expr::boolean(false));
            attrs.insert("ExitSignal", Expr::Literal(Literal::Undefined));
        }
        ExitStatus::Signaled { signal, .. } => {
            attrs.insert("ExitCode", Expr::Literal(Literal::Undefined));
            attrs.insert("ExitBySignal", Expr::boolean(true));
            attrs.insert("ExitSignal", Expr::integer(i64::from(*signal)));
        }
        ExitStatus::NotStarted(why) => {
            attrs.insert("ExitCode", Expr::integer(EXIT_NOT_STARTED));
            attrs.insert("ExitBySignal", Expr::boolean(false));
            attrs.insert("VMCapsuleError", error_text(why));
        }
    }
    if exit.timed_out {
        attrs.insert("VMCapsuleTimedOut", Expr::boolean(true));
    }
    // A usage read from a result always has both figures.
    let cpu = |secs: Option<f64>| Expr::real(secs.unwrap_or_default());
    attrs.insert("RemoteUserCpu", cpu(exit.usage.user_cpu_secs));
    attrs.insert("RemoteSysCpu", cpu(exit.usage.sys_cpu_secs));
    exit.usage.write_to(attrs);
}

/// Mark the job failed by the capsule: `ExitCode = 125` and why, keeping what the job itself
/// exited with in `VMCapsuleJobExitCode`.
pub fn failure_attributes(attrs: &mut ClassAd, reason: &str, status: Option<&ExitStatus>) {
    if let Some(ExitStatus::Exited(code)) = status {
        attrs.insert("VMCapsuleJobExitCode", Expr::integer(i64::from(*code)));
    }
    attrs.insert("ExitCode", Expr::integer(EXIT_CAPSULE_FAILED));
    attrs.insert("ExitBySignal", Expr::boolean(false));
    attrs.insert("ExitSignal", Expr::Literal(Literal::Undefined));
    attrs.insert("VMCapsuleError", error_text(reason));
}

/// `VMCapsuleError` text: safe characters only (it may quote the guest), bounded.
fn error_text(text: &str) -> Expr {
    Expr::string(safe_text(text, MAX_ERROR_CHARS))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Issue 11.19: guest text in `VMCapsuleError` keeps to a safe subset, bounded.
    #[test]
    fn guest_text_in_the_error_is_made_safe() {
        let mut ad = ClassAd::new();
        let hostile = format!("bad\u{2028}line\u{202e}txt{}", "x".repeat(5000));
        failure_attributes(&mut ad, &hostile, None);
        let text = classad::eval::string_attr(&ad, "VMCapsuleError").unwrap();
        assert!(text.starts_with("bad?line?txt"));
        assert!(text.chars().count() <= MAX_ERROR_CHARS + 3);
    }
}
