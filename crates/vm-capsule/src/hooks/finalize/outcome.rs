//! The attributes finalize prints for the original job: the guest's real exit status and
//! usage, or the capsule's failure.

use capsule_manifest::{JobResult, Outcome, ProblemKind};
use classad::{ClassAd, Expr, Literal};

use crate::text::safe_text;

/// `ExitCode` when the capsule failed ([`crate::exit::CAPSULE_FAILED`]).
pub const EXIT_CAPSULE_FAILED: i64 = crate::exit::CAPSULE_FAILED as i64;
/// `ExitCode` when the job could not be started in the guest ([`crate::exit::NOT_STARTED`]).
pub const EXIT_NOT_STARTED: i64 = crate::exit::NOT_STARTED as i64;
/// Longest `VMCapsuleError`, in characters.
const MAX_ERROR_CHARS: usize = 1000;

/// `ExitCode`/`ExitBySignal`/`ExitSignal` and usage from the guest's result.
pub fn exit_attributes(attrs: &mut ClassAd, result: &JobResult) {
    match result.outcome {
        Outcome::Exited { code } => {
            attrs.insert("ExitCode", Expr::integer(i64::from(code)));
            attrs.insert("ExitBySignal", Expr::boolean(false));
            attrs.insert("ExitSignal", Expr::Literal(Literal::Undefined));
        }
        Outcome::Signaled { signal, .. } => {
            attrs.insert("ExitCode", Expr::Literal(Literal::Undefined));
            attrs.insert("ExitBySignal", Expr::boolean(true));
            attrs.insert("ExitSignal", Expr::integer(i64::from(signal)));
        }
        Outcome::NotStarted => {
            attrs.insert("ExitCode", Expr::integer(EXIT_NOT_STARTED));
            attrs.insert("ExitBySignal", Expr::boolean(false));
            let why = result
                .problem_text(|k| k == ProblemKind::NotStarted)
                .unwrap_or_else(|| "the job could not be started".to_owned());
            attrs.insert("VMCapsuleError", error_text(&why));
        }
    }
    if result.timed_out {
        attrs.insert("VMCapsuleTimedOut", Expr::boolean(true));
    }
    attrs.insert("RemoteUserCpu", Expr::real(result.user_cpu_secs));
    attrs.insert("RemoteSysCpu", Expr::real(result.system_cpu_secs));
    crate::usage::JobUsage::from_result(result).write_to(attrs);
}

/// Mark the job failed by the capsule: `ExitCode = 125` and why, keeping what the job itself
/// exited with in `VMCapsuleJobExitCode`.
pub fn failure_attributes(attrs: &mut ClassAd, reason: &str, result: Option<&JobResult>) {
    if let Some(Outcome::Exited { code }) = result.map(|r| r.outcome) {
        attrs.insert("VMCapsuleJobExitCode", Expr::integer(i64::from(code)));
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

/// The outcome in words.
pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exited { code } => format!("exited with code {code}"),
        Outcome::Signaled {
            signal,
            core_dumped,
        } => {
            format!(
                "killed by signal {signal}{}",
                if *core_dumped { " (core dumped)" } else { "" }
            )
        }
        Outcome::NotStarted => "not started".to_owned(),
    }
}

/// What the agent reports beyond the job's own outcome (a time-limit kill and a job that
/// never started are the outcome, reported as such): `None` when nothing.
pub fn agent_problem(result: &JobResult) -> Option<String> {
    if matches!(result.outcome, Outcome::NotStarted) {
        return None;
    }
    result.problem_text(ProblemKind::is_capsule_failure)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn result(outcome: &str, timed_out: bool, error: Option<&str>) -> JobResult {
        let json = format!(
            r#"{{"schema_version":1,"outcome":{outcome},"timed_out":{timed_out},"error":{},"wall_time_secs":3.0,"user_cpu_secs":0.0,"system_cpu_secs":0.0,"peak_rss_kib":1,"started_at_unix":1.0,"ended_at_unix":4.0,"outputs":[],"missing_outputs":[],"warnings":[],"agent":{{"version":"0.1.0","user":"condor","uid":1000,"setup_secs":0.0}}}}"#,
            error.map_or("null".to_owned(), |e| format!("{e:?}"))
        );
        JobResult::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_time_limit_kill_is_not_a_capsule_failure() {
        let killed = r#"{"kind":"signaled","signal":9,"core_dumped":false}"#;
        let limit = "the job exceeded its wall-time limit and was killed";
        assert_eq!(agent_problem(&result(killed, true, Some(limit))), None);
        let full = "outputs did not fit on the data disk";
        assert_eq!(
            agent_problem(&result(killed, true, Some(&format!("{limit}; {full}")))),
            Some(full.to_owned())
        );
        let exited = r#"{"kind":"exited","code":0}"#;
        assert_eq!(
            agent_problem(&result(exited, false, Some(full))),
            Some(full.to_owned())
        );
        assert_eq!(agent_problem(&result(exited, false, None)), None);
    }

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
