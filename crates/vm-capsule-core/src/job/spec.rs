//! `JobSpec`: the vanilla job an ad describes, validated once and used everywhere after.

use std::path::{Path, PathBuf};

use classad::eval::{evaluate_attr, string_attr};
use classad::{ClassAd, Value};
use thiserror::Error;

use super::args::{parse_env_v1, parse_env_v2, split_v1, split_v2, ArgsError};
use super::transfer::{input_items, parse_remaps, split_list, InputItem};
use crate::routed::ATTR_CHECKPOINT;

/// A job ad that cannot be run as a vanilla job in a VM.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum JobError {
    /// A required attribute is missing or has the wrong type.
    #[error("job {job}: attribute {attribute} is {problem}")]
    BadAttribute {
        /// `cluster.proc` or `?` when unknown.
        job: String,
        /// The attribute.
        attribute: &'static str,
        /// What is wrong.
        problem: AttributeProblem,
    },
    /// Arguments or environment that HTCondor would refuse as well.
    #[error("job {job}: {source}")]
    Args {
        /// `cluster.proc`.
        job: String,
        /// The parse error.
        #[source]
        source: ArgsError,
    },
}

/// What is wrong with one attribute of a job ad: the job owner's to fix. The message follows
/// the attribute's name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AttributeProblem {
    /// Not in the ad.
    #[error("missing")]
    Missing,
    /// An empty string.
    #[error("empty")]
    Empty,
    /// An integer outside what HTCondor stores.
    #[error("{value}, out of range")]
    OutOfRange {
        /// The value.
        value: i64,
    },
    /// Something else where an integer belongs.
    #[error("{value}, not an integer")]
    NotAnInteger {
        /// The value as evaluated.
        value: String,
    },
    /// Something else where a string belongs.
    #[error("{value}, not a string")]
    NotAString {
        /// The value as evaluated.
        value: String,
    },
    /// Something else where a boolean belongs.
    #[error("{value}, not true or false")]
    NotABool {
        /// The value as evaluated.
        value: String,
    },
    /// A relative path where an absolute one belongs.
    #[error("{value:?}, not an absolute path")]
    NotAbsolute {
        /// The path.
        value: String,
    },
    /// `Owner` is not usable as a directory name and an account to look up.
    #[error("{value:?}, not a plain user name")]
    NotAUserName {
        /// The name.
        value: String,
    },
    /// A request larger than a VM can be given.
    #[error("{value}, more than the {max} a VM can be given")]
    TooLarge {
        /// The request.
        value: u64,
        /// The most a VM can be given.
        max: u64,
    },
}

/// When outputs come back (`WhenToTransferOutput`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenToTransfer {
    /// `ON_EXIT`: only when the job exits.
    OnExit,
    /// `ON_EXIT_OR_EVICT`: also on eviction (a VM job is not checkpointed; treated as on exit).
    OnExitOrEvict,
}

/// A standard stream file of the job, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFile {
    /// Absolute path on the submit side.
    pub path: PathBuf,
    /// The base name used inside the job's sandbox.
    pub name: String,
}

/// Everything about a vanilla job that the capsule needs, from its ad.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// `ClusterId`.
    pub cluster: i64,
    /// `ProcId`.
    pub proc_id: i64,
    /// `Owner` (the hooks run as this user).
    pub owner: String,
    /// `Iwd`: the job's initial working directory on the submit side (absolute).
    pub iwd: PathBuf,
    /// `Cmd` resolved against `Iwd`.
    pub executable: PathBuf,
    /// `TransferExecutable` (default true): ship the executable, else it must exist in the VM.
    pub transfer_executable: bool,
    /// Arguments, already split (`argv[1..]`).
    pub args: Vec<String>,
    /// Environment in ad order, later duplicates removed.
    pub env: Vec<(String, String)>,
    /// `In`, unless unset or `/dev/null`.
    pub stdin: Option<StreamFile>,
    /// `Out`, unless unset or `/dev/null`.
    pub stdout: Option<StreamFile>,
    /// `Err`, unless unset or `/dev/null`.
    pub stderr: Option<StreamFile>,
    /// `TransferInput`, resolved.
    pub inputs: Vec<InputItem>,
    /// `TransferOutput`; `None` means HTCondor's default rule (new and changed files).
    pub outputs: Option<Vec<String>>,
    /// `TransferOutputRemaps`: sandbox name -> destination (relative to `Iwd` or absolute).
    pub remaps: Vec<(String, String)>,
    /// `WhenToTransferOutput`.
    pub when_to_transfer: WhenToTransfer,
    /// `RequestMemory` evaluated, MiB.
    pub request_memory_mib: Option<u64>,
    /// `RequestCpus` evaluated.
    pub request_cpus: Option<u64>,
    /// `RequestDisk` evaluated, KiB.
    pub request_disk_kib: Option<u64>,
    /// `PreserveRelativePaths`: outputs keep their relative paths instead of base names.
    pub preserve_relative_paths: bool,
    /// Base name of `x509userproxy`, which HTCondor never brings back as an output.
    pub proxy_name: Option<String>,
    /// `VMCapsuleNetwork`: the job asks for a network (`+VMCapsuleNetwork = true`).
    pub network: bool,
    /// `VMCapsuleCheckpoint`: the job asks for (`Some(true)`) or refuses (`Some(false)`)
    /// whole-VM checkpoints; `None` leaves it to the route (`VM_CAPSULE_CHECKPOINT`).
    pub checkpoint: Option<bool>,
}

impl JobError {
    /// The job id (`cluster.proc`) when the ad told it, for a hold.
    pub fn job_id(&self) -> Option<&str> {
        let job = match self {
            JobError::BadAttribute { job, .. } | JobError::Args { job, .. } => job,
        };
        (!job.contains('?')).then_some(job.as_str())
    }

    /// What is wrong, without the job id (for messages that name the job themselves).
    pub fn detail(&self) -> String {
        match self {
            JobError::BadAttribute {
                attribute, problem, ..
            } => format!("attribute {attribute} is {problem}"),
            JobError::Args { source, .. } => source.to_string(),
        }
    }
}

impl JobSpec {
    /// `cluster.proc`, as HTCondor names jobs.
    pub fn id(&self) -> String {
        format!("{}.{}", self.cluster, self.proc_id)
    }

    /// Read a vanilla job from its ad.
    ///
    /// # Errors
    /// [`JobError`] naming the job and the attribute that is missing, mistyped or malformed.
    pub fn from_ad(ad: &ClassAd) -> Result<JobSpec, JobError> {
        let cluster = job_number(ad, "ClusterId").map_err(|problem| JobError::BadAttribute {
            job: "?".to_owned(),
            attribute: "ClusterId",
            problem,
        })?;
        let proc_id = job_number(ad, "ProcId").map_err(|problem| JobError::BadAttribute {
            job: format!("{cluster}.?"),
            attribute: "ProcId",
            problem,
        })?;
        let job = format!("{cluster}.{proc_id}");
        let bad = |attribute: &'static str, problem: AttributeProblem| JobError::BadAttribute {
            job: job.clone(),
            attribute,
            problem,
        };
        let missing = |attribute| bad(attribute, AttributeProblem::Missing);
        let owner = string_attr(ad, "Owner").ok_or_else(|| missing("Owner"))?;
        check_owner(&owner).map_err(|p| bad("Owner", p))?;
        for attribute in STRING_ATTRS {
            if ad.contains(attribute) && string_attr(ad, attribute).is_none() {
                let value = classad::eval::evaluate_attr(ad, attribute);
                if !matches!(value, Value::Undefined) {
                    return Err(bad(
                        attribute,
                        AttributeProblem::NotAString {
                            value: format!("{value:?}"),
                        },
                    ));
                }
            }
        }
        let iwd_text = string_attr(ad, "Iwd").ok_or_else(|| missing("Iwd"))?;
        let iwd = PathBuf::from(&iwd_text);
        if !iwd.is_absolute() {
            return Err(bad(
                "Iwd",
                AttributeProblem::NotAbsolute { value: iwd_text },
            ));
        }
        let cmd = string_attr(ad, "Cmd").ok_or_else(|| missing("Cmd"))?;
        if cmd.is_empty() {
            return Err(bad("Cmd", AttributeProblem::Empty));
        }
        let executable = iwd.join(&cmd);
        let transfer_executable = bool_attr(ad, "TransferExecutable").unwrap_or(true);

        let args_err = |source| JobError::Args {
            job: job.clone(),
            source,
        };
        // `Arguments` (V2) wins over `Args` (V1) when present (`AppendArgsFromClassAd`).
        let args = match (string_attr(ad, "Arguments"), string_attr(ad, "Args")) {
            (Some(v2), _) => split_v2(&v2, "Arguments").map_err(args_err)?,
            (None, Some(v1)) => split_v1(&v1),
            (None, None) => Vec::new(),
        };
        // `Environment` (V2) wins over `Env` (V1) when present (`Env::MergeFrom`).
        let env = match (string_attr(ad, "Environment"), string_attr(ad, "Env")) {
            (Some(v2), _) => parse_env_v2(&v2).map_err(args_err)?,
            (None, Some(v1)) => {
                let delim = string_attr(ad, "EnvDelim").and_then(|d| d.chars().next());
                parse_env_v1(&v1, delim).map_err(args_err)?
            }
            (None, None) => Vec::new(),
        };

        let inputs = string_attr(ad, "TransferInput")
            .map(|t| input_items(&t, &iwd))
            .unwrap_or_default();
        let outputs = string_attr(ad, "TransferOutput").map(|t| split_list(&t));
        let remaps = string_attr(ad, "TransferOutputRemaps")
            .map(|t| parse_remaps(&t))
            .unwrap_or_default();
        let network = wants_network(ad).map_err(|p| bad(NETWORK_ATTR, p))?;
        let checkpoint = wants_checkpoint(ad).map_err(|p| bad(ATTR_CHECKPOINT, p))?;
        Ok(JobSpec {
            network,
            checkpoint,
            cluster,
            proc_id,
            owner,
            stdin: stream(ad, "In", &iwd),
            stdout: stream(ad, "Out", &iwd),
            stderr: stream(ad, "Err", &iwd),
            iwd,
            executable,
            transfer_executable,
            args,
            env,
            inputs,
            outputs,
            remaps,
            when_to_transfer: when_to_transfer(ad),
            request_memory_mib: bounded(ad, "RequestMemory", MAX_REQUEST_MEMORY_MIB, &job)?,
            request_cpus: positive(ad, "RequestCpus"),
            request_disk_kib: positive(ad, "RequestDisk"),
            preserve_relative_paths: bool_attr(ad, "PreserveRelativePaths").unwrap_or(false),
            proxy_name: string_attr(ad, "x509userproxy").and_then(|p| {
                Path::new(&p)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            }),
        })
    }

    /// The executable's name inside the sandbox (HTCondor uses the base name of `Cmd`).
    pub fn executable_name(&self) -> String {
        self.executable.file_name().map_or_else(
            || "executable".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        )
    }
}

/// The job attribute that asks for a network.
pub const NETWORK_ATTR: &str = "VMCapsuleNetwork";

/// `WhenToTransferOutput`.
fn when_to_transfer(ad: &ClassAd) -> WhenToTransfer {
    match string_attr(ad, "WhenToTransferOutput") {
        Some(w) if w.eq_ignore_ascii_case("ON_EXIT_OR_EVICT") => WhenToTransfer::OnExitOrEvict,
        _ => WhenToTransfer::OnExit,
    }
}

/// `VMCapsuleNetwork`: true or false (unset: false).
fn wants_network(ad: &ClassAd) -> Result<bool, AttributeProblem> {
    match evaluate_attr(ad, NETWORK_ATTR) {
        Value::Bool(b) => Ok(b),
        Value::Undefined => Ok(false),
        other => Err(AttributeProblem::NotABool {
            value: format!("{other:?}"),
        }),
    }
}

/// `VMCapsuleCheckpoint`: true or false, or unset (`None`).
fn wants_checkpoint(ad: &ClassAd) -> Result<Option<bool>, AttributeProblem> {
    match evaluate_attr(ad, ATTR_CHECKPOINT) {
        Value::Bool(b) => Ok(Some(b)),
        Value::Undefined => Ok(None),
        other => Err(AttributeProblem::NotABool {
            value: format!("{other:?}"),
        }),
    }
}

fn bool_attr(ad: &ClassAd, name: &str) -> Option<bool> {
    match evaluate_attr(ad, name) {
        Value::Bool(b) => Some(b),
        Value::Integer(i) => Some(i != 0),
        _ => None,
    }
}

/// A request attribute evaluated in the ad: integers, or reals rounded up; others ignored.
fn positive(ad: &ClassAd, name: &str) -> Option<u64> {
    match evaluate_attr(ad, name) {
        Value::Integer(i) => u64::try_from(i).ok().filter(|v| *v > 0),
        Value::Real(r) if r.is_finite() && r > 0.0 => {
            // Sizes are far below 2^53, where this conversion is exact.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let v = r.ceil() as u64;
            Some(v)
        }
        _ => None,
    }
}

/// Largest `RequestMemory` a VM can be given, MiB (`JobVMMemory` is an int in HTCondor).
pub const MAX_REQUEST_MEMORY_MIB: u64 = (i32::MAX as u64) - 1024;

/// `ClusterId`/`ProcId`: a non-negative integer that fits HTCondor's int.
fn job_number(ad: &ClassAd, name: &str) -> Result<i64, AttributeProblem> {
    match classad::eval::evaluate_attr(ad, name) {
        Value::Integer(i) if (0..=i64::from(i32::MAX)).contains(&i) => Ok(i),
        Value::Integer(value) => Err(AttributeProblem::OutOfRange { value }),
        Value::Undefined => Err(AttributeProblem::Missing),
        other => Err(AttributeProblem::NotAnInteger {
            value: format!("{other:?}"),
        }),
    }
}

/// A request that must stay below `max`.
fn bounded(ad: &ClassAd, name: &'static str, max: u64, job: &str) -> Result<Option<u64>, JobError> {
    match positive(ad, name) {
        Some(v) if v > max => Err(JobError::BadAttribute {
            job: job.to_owned(),
            attribute: name,
            problem: AttributeProblem::TooLarge { value: v, max },
        }),
        v => Ok(v),
    }
}

/// `Owner` names a local account: used as a directory name and to look the user up, so it
/// must be a plain, non-empty name.
fn check_owner(owner: &str) -> Result<(), AttributeProblem> {
    let plain = !owner.is_empty()
        && owner.len() <= 256
        && !owner.starts_with(['-', '.'])
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b'$'));
    if plain {
        Ok(())
    } else {
        Err(AttributeProblem::NotAUserName {
            value: owner.to_owned(),
        })
    }
}

/// Attributes that must be strings when present (a number there means a broken ad).
const STRING_ATTRS: [&str; 10] = [
    "TransferInput",
    "TransferOutput",
    "TransferOutputRemaps",
    "In",
    "Out",
    "Err",
    "Arguments",
    "Args",
    "Environment",
    "Env",
];

/// `In`/`Out`/`Err`: `/dev/null` or unset means none; relative names are under `Iwd`.
fn stream(ad: &ClassAd, attr: &str, iwd: &Path) -> Option<StreamFile> {
    let text = string_attr(ad, attr)?;
    if text.is_empty() || text == "/dev/null" {
        return None;
    }
    let path = iwd.join(&text);
    let name = path.file_name().map_or_else(
        || attr.to_ascii_lowercase(),
        |n| n.to_string_lossy().into_owned(),
    );
    Some(StreamFile { path, name })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ad(text: &str) -> ClassAd {
        classad::parse_old_ad(text).unwrap()
    }

    const BASE: &str = "ClusterId = 12\nProcId = 3\nOwner = \"alice\"\nIwd = \"/home/alice/run\"\nCmd = \"job.sh\"\n";

    #[test]
    fn arguments_v2_win_over_v1() {
        let spec = JobSpec::from_ad(&ad(&format!(
            "{BASE}Args = \"x y\"\nArguments = \"one \\\"two\\\" spacey' '''quoted''' 'argument\"\n"
        )))
        .unwrap();
        assert_eq!(
            spec.args,
            vec!["one", "\"two\"", "spacey 'quoted' argument"]
        );
        assert_eq!(spec.executable, PathBuf::from("/home/alice/run/job.sh"));
        assert_eq!(spec.id(), "12.3");
        let v1 = JobSpec::from_ad(&ad(&format!("{BASE}Args = \"x  y\"\n"))).unwrap();
        assert_eq!(v1.args, vec!["x", "y"]);
    }

    #[test]
    fn request_memory_expression_is_evaluated() {
        let spec = JobSpec::from_ad(&ad(&format!(
            "{BASE}ImageSize = 2500\nRequestMemory = ifthenelse(MemoryUsage =!= undefined,MemoryUsage,(ImageSize + 1023) / 1024)\nRequestDisk = DiskUsage\nDiskUsage = 1000\n"
        )))
        .unwrap();
        assert_eq!(spec.request_memory_mib, Some(3));
        assert_eq!(spec.request_disk_kib, Some(1000));
    }

    #[test]
    fn streams_and_missing_owner() {
        let spec = JobSpec::from_ad(&ad(&format!(
            "{BASE}In = \"/dev/null\"\nOut = \"out/o.txt\"\nErr = \"/tmp/e.txt\"\n"
        )))
        .unwrap();
        assert_eq!(spec.stdin, None);
        assert_eq!(
            spec.stdout.unwrap().path,
            PathBuf::from("/home/alice/run/out/o.txt")
        );
        assert_eq!(spec.stderr.unwrap().name, "e.txt");
        let err = JobSpec::from_ad(&ad(
            "ClusterId = 5\nProcId = 0\nIwd = \"/x\"\nCmd = \"a\"\n",
        ))
        .unwrap_err();
        assert_eq!(err.to_string(), "job 5.0: attribute Owner is missing");
        assert_eq!(err.detail(), "attribute Owner is missing");
    }

    #[test]
    fn each_attribute_problem_reads_as_it_always_has() {
        let cases = [
            ("ClusterId = 2147483648\n", "job ?: attribute ClusterId is 2147483648, out of range"),
            ("ClusterId = 1\nProcId = \"x\"\n", "job 1.?: attribute ProcId is String(\"x\"), not an integer"),
            ("ClusterId = 1\nProcId = 0\nOwner = \"-rf\"\n", "job 1.0: attribute Owner is \"-rf\", not a plain user name"),
            ("ClusterId = 1\nProcId = 0\nOwner = \"u\"\nTransferInput = 3\n", "job 1.0: attribute TransferInput is Integer(3), not a string"),
            ("ClusterId = 1\nProcId = 0\nOwner = \"u\"\nIwd = \"run\"\n", "job 1.0: attribute Iwd is \"run\", not an absolute path"),
            ("ClusterId = 1\nProcId = 0\nOwner = \"u\"\nIwd = \"/r\"\nCmd = \"\"\n", "job 1.0: attribute Cmd is empty"),
            ("ClusterId = 1\nProcId = 0\nOwner = \"u\"\nIwd = \"/r\"\nCmd = \"a\"\nRequestMemory = 9999999999\n", "job 1.0: attribute RequestMemory is 9999999999, more than the 2147482623 a VM can be given"),
        ];
        for (text, message) in cases {
            let err = JobSpec::from_ad(&ad(text)).unwrap_err();
            assert_eq!(err.to_string(), message);
            assert!(matches!(err, JobError::BadAttribute { .. }), "{err:?}");
        }
    }

    #[test]
    fn checkpoint_is_a_bool_unset_or_held_naming_the_attribute() {
        let of = |extra: &str| JobSpec::from_ad(&ad(&format!("{BASE}{extra}")));
        assert_eq!(of("").unwrap().checkpoint, None);
        assert_eq!(
            of("VMCapsuleCheckpoint = true\n").unwrap().checkpoint,
            Some(true)
        );
        assert_eq!(
            of("VMCapsuleCheckpoint = false\n").unwrap().checkpoint,
            Some(false)
        );
        // An expression is evaluated in the ad, as HTCondor would.
        assert_eq!(
            of("Big = 3\nVMCapsuleCheckpoint = Big > 2\n")
                .unwrap()
                .checkpoint,
            Some(true)
        );
        for odd in ["\"yes\"", "1"] {
            let err = of(&format!("VMCapsuleCheckpoint = {odd}\n")).unwrap_err();
            assert_eq!(
                err.detail(),
                format!(
                    "attribute VMCapsuleCheckpoint is {}, not true or false",
                    if odd == "1" {
                        "Integer(1)".to_owned()
                    } else {
                        "String(\"yes\")".to_owned()
                    }
                )
            );
            assert_eq!(err.job_id(), Some("12.3"));
        }
    }
}
