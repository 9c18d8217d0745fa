//! The job's own usage, as the guest measured it: HTCondor's `RemoteUserCpu` and memory
//! figures of a vanilla-flavour job are the launcher's (QEMU's boot and emulation included),
//! so the launcher publishes the guest's figures on the routed job through Chirp, and
//! finalize carries them over to the original job, which the router does not.
//!
//! The routed job is its owner's to edit (`condor_qedit`), so what finalize reads back is
//! informational: only plain literals of the right type within bounds are copied, the text
//! made safe; anything else is left out and reported.

use capsule_manifest::JobResult;
use classad::{ClassAd, Expr, Literal};

use crate::text::safe_text;

/// CPU seconds the job spent in user mode (it and its waited-for children).
pub const USER_CPU: &str = "VMCapsuleJobUserCpu";
/// CPU seconds the job spent in the kernel.
pub const SYS_CPU: &str = "VMCapsuleJobSysCpu";
/// Seconds from the job's exec to its exit.
pub const WALL_TIME: &str = "VMCapsuleJobWallTime";
/// Largest resident set of the job or a waited-for child, KiB.
pub const PEAK_RSS: &str = "VMCapsulePeakRssKiB";
/// The outcome in words.
pub const RESULT: &str = "VMCapsuleResult";

/// Largest number of seconds accepted back (about 31 years).
const MAX_SECS: f64 = 1e9;
/// Largest peak RSS accepted back, KiB (1 PiB).
const MAX_RSS_KIB: i64 = 1 << 40;
/// Longest outcome text accepted back, in characters.
const MAX_RESULT_CHARS: usize = 200;

/// The job's usage; a field is `None` when it is unknown or was refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobUsage {
    /// [`USER_CPU`].
    pub user_cpu_secs: Option<f64>,
    /// [`SYS_CPU`].
    pub sys_cpu_secs: Option<f64>,
    /// [`WALL_TIME`].
    pub wall_time_secs: Option<f64>,
    /// [`PEAK_RSS`].
    pub peak_rss_kib: Option<i64>,
    /// [`RESULT`].
    pub result: Option<String>,
}

impl JobUsage {
    /// What the guest reported in `result.json`.
    pub fn from_result(result: &JobResult) -> JobUsage {
        JobUsage {
            user_cpu_secs: Some(result.user_cpu_secs),
            sys_cpu_secs: Some(result.system_cpu_secs),
            wall_time_secs: Some(result.wall_time_secs),
            peak_rss_kib: Some(i64::try_from(result.peak_rss_kib).unwrap_or(i64::MAX)),
            result: Some(crate::returned::describe(&result.outcome)),
        }
    }

    /// What a routed ad carries (the launcher's Chirp updates), validated: the names of the
    /// attributes refused, with why.
    pub fn from_routed_ad(ad: &ClassAd) -> (JobUsage, Vec<String>) {
        let mut refused = Vec::new();
        let mut secs = |name: &str| match ad.get(name) {
            None => None,
            Some(Expr::Literal(Literal::Real(v))) if (0.0..=MAX_SECS).contains(v) => Some(*v),
            Some(Expr::Literal(Literal::Integer(v))) => match u32::try_from(*v) {
                Ok(v) if f64::from(v) <= MAX_SECS => Some(f64::from(v)),
                _ => {
                    refused.push(format!(
                        "{name} (not a number of seconds from 0 to {MAX_SECS:e})"
                    ));
                    None
                }
            },
            Some(_) => {
                refused.push(format!(
                    "{name} (not a number of seconds from 0 to {MAX_SECS:e})"
                ));
                None
            }
        };
        let user_cpu_secs = secs(USER_CPU);
        let sys_cpu_secs = secs(SYS_CPU);
        let wall_time_secs = secs(WALL_TIME);
        let peak_rss_kib = match ad.get(PEAK_RSS) {
            None => None,
            Some(Expr::Literal(Literal::Integer(v))) if (0..=MAX_RSS_KIB).contains(v) => Some(*v),
            Some(_) => {
                refused.push(format!(
                    "{PEAK_RSS} (not a whole number of KiB from 0 to {MAX_RSS_KIB})"
                ));
                None
            }
        };
        let result = match ad.get(RESULT) {
            None => None,
            Some(Expr::Literal(Literal::String(s))) => Some(safe_text(s, MAX_RESULT_CHARS)),
            Some(_) => {
                refused.push(format!("{RESULT} (not a string)"));
                None
            }
        };
        let usage = JobUsage {
            user_cpu_secs,
            sys_cpu_secs,
            wall_time_secs,
            peak_rss_kib,
            result,
        };
        (usage, refused)
    }

    /// The attributes, as ClassAd expressions.
    pub fn attributes(&self) -> Vec<(&'static str, Expr)> {
        let mut out = Vec::new();
        let secs = [
            (USER_CPU, self.user_cpu_secs),
            (SYS_CPU, self.sys_cpu_secs),
            (WALL_TIME, self.wall_time_secs),
        ];
        for (name, value) in secs {
            if let Some(v) = value {
                out.push((name, Expr::real(v)));
            }
        }
        if let Some(kib) = self.peak_rss_kib {
            out.push((PEAK_RSS, Expr::integer(kib)));
        }
        if let Some(text) = &self.result {
            out.push((RESULT, Expr::string(text.clone())));
        }
        out
    }

    /// Set the attributes in `ad`.
    pub fn write_to(&self, ad: &mut ClassAd) {
        for (name, expr) in self.attributes() {
            ad.insert(name, expr);
        }
    }

    /// The attributes as `set_job_attr` values (ClassAd expressions in text).
    pub fn chirp_values(&self) -> Vec<(&'static str, String)> {
        self.attributes()
            .into_iter()
            .map(|(name, expr)| {
                let text = match &expr {
                    // Three decimals are all the guest's clock is worth.
                    Expr::Literal(Literal::Real(v)) => format!("{v:.3}"),
                    other => classad::print::expr_to_string(other, classad::Syntax::Old),
                };
                (name, text)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ad(text: &str) -> ClassAd {
        classad::parse_old_ad(text).unwrap()
    }

    #[test]
    fn plain_values_are_copied() {
        let (usage, refused) = JobUsage::from_routed_ad(&ad(
            "VMCapsuleJobUserCpu = 1.5\nVMCapsuleJobSysCpu = 2\nVMCapsuleJobWallTime = 0.25\nVMCapsulePeakRssKiB = 1664\nVMCapsuleResult = \"exited with code 4\"\n",
        ));
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(
            usage,
            JobUsage {
                user_cpu_secs: Some(1.5),
                sys_cpu_secs: Some(2.0),
                wall_time_secs: Some(0.25),
                peak_rss_kib: Some(1664),
                result: Some("exited with code 4".into()),
            }
        );
    }

    /// The routed job is its owner's to edit: wrong types, expressions, negative or huge
    /// numbers and unsafe text do not reach the original.
    #[test]
    fn edited_values_are_refused_or_made_safe() {
        let (usage, refused) = JobUsage::from_routed_ad(&ad(
            "VMCapsuleJobUserCpu = -1.0\nVMCapsuleJobSysCpu = RemoteSysCpu * 1000\nVMCapsuleJobWallTime = 1e300\nVMCapsulePeakRssKiB = 2.5\nVMCapsuleResult = \"ok\\n\\u202eforged\"\n",
        ));
        assert_eq!(usage.user_cpu_secs, None);
        assert_eq!(usage.sys_cpu_secs, None);
        assert_eq!(usage.wall_time_secs, None);
        assert_eq!(usage.peak_rss_kib, None);
        assert_eq!(refused.len(), 4, "{refused:?}");
        let text = usage.result.unwrap();
        assert!(
            !text.contains('\n') && !text.contains('\u{202e}'),
            "{text:?}"
        );
        let (usage, refused) = JobUsage::from_routed_ad(&ad("VMCapsuleResult = 7\n"));
        assert_eq!(usage.result, None);
        assert_eq!(refused, vec!["VMCapsuleResult (not a string)".to_owned()]);
    }

    #[test]
    fn chirp_values_are_classad_text() {
        let usage = JobUsage {
            user_cpu_secs: Some(0.1234),
            peak_rss_kib: Some(9),
            result: Some("killed by signal 9".into()),
            ..JobUsage::default()
        };
        assert_eq!(
            usage.chirp_values(),
            vec![
                (USER_CPU, "0.123".to_owned()),
                (PEAK_RSS, "9".to_owned()),
                (RESULT, "\"killed by signal 9\"".to_owned()),
            ]
        );
    }
}
